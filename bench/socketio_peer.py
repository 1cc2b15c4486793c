"""The peer of the side-by-side fan-out comparison: python-socketio with its Redis manager.

What a team would otherwise pick for "one message to a room of members, several processes":
an aiohttp application with a ``socketio.AsyncServer`` whose ``client_manager`` is an
``AsyncRedisManager``, so every emit to a room goes through Redis pub/sub (also when the room's
members are all on this process: the manager publishes and delivers what comes back). Defaults
everywhere else (``async_handlers=True``, the default JSON module, default ping interval).

The protocol, as ``rmeeting bench --protocol socketio`` speaks it:

- ``POST /rooms`` -> ``{"room": "<id>"}`` (rooms need no creating in socket.io; this is the
  bench's "create a meeting");
- ``GET /socket.io/?EIO=4&transport=websocket&room=<id>&name=<name>``: the connect handler puts
  the client in the room named in the query; the connect ack ``40{"sid":…}`` follows;
- a ``chat`` event with a text is emitted to the sender's room as a ``chat`` event, the sender
  included (as rmeeting's chat is).

Run: ``python bench/socketio_peer.py --redis redis://127.0.0.1:6379/0 --port 0``; it prints
``socketio peer listening on http://127.0.0.1:PORT`` once it accepts connections and stops on
SIGTERM or SIGINT. Needs ``pip install python-socketio aiohttp`` (``pip install
'rmeeting[compare]'``); without them it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import uuid
from typing import Any
from urllib.parse import parse_qs

MISSING = ("the socket.io peer needs python-socketio and aiohttp, which are not installed: "
           "pip install 'rmeeting[compare]' (or pip install python-socketio aiohttp)")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(host: str, port: int, redis_url: str) -> None:
    import socketio
    from aiohttp import web

    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)
    app = web.Application()
    sio.attach(app)
    rooms: dict[str, str] = {}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        room = parse_qs(environ.get("QUERY_STRING", "")).get("room", [""])[0]
        if not room:
            return False
        rooms[sid] = room
        await sio.enter_room(sid, room)
        return True

    @sio.event
    async def disconnect(sid: str, *reason: Any) -> None:
        rooms.pop(sid, None)

    @sio.on("chat")
    async def chat(sid: str, text: Any) -> None:
        room = rooms.get(sid)
        if room is not None:
            await sio.emit("chat", text, room=room)

    async def create_room(request: web.Request) -> web.Response:
        return web.json_response({"room": uuid.uuid4().hex})

    app.router.add_post("/rooms", create_room)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"socketio peer listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="only loopback addresses make sense")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB for the manager")
    args = parser.parse_args(argv)
    try:
        import aiohttp  # noqa: F401
        import socketio  # noqa: F401
    except ImportError:
        print(MISSING, file=sys.stderr)
        return 2
    _raise_fd_limit()
    asyncio.run(serve(args.host, args.port, args.redis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
