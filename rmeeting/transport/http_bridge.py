"""Hands an HTTP connection, whose request head the front door already read, to Hypercorn.

The HTTP API is a Quart-Trio app served by Hypercorn's own connection handler, so it keeps
Hypercorn's HTTP/1.1 handling (keep-alive, chunking, limits); only the WebSockets on the hot path
bypass it. The head bytes already read are replayed in front of the socket's stream.
This uses Hypercorn 0.18's trio ``TCPServer`` and ``Lifespan`` (pinned in pyproject.toml).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

__all__ = ["HttpBridge"]


class _ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket  # Hypercorn reads the peer and local address from it

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class HttpBridge:
    def __init__(self, app: Any, *, read_timeout: float = 60.0) -> None:
        config = HypercornConfig()
        config.accesslog = None
        config.errorlog = logging.getLogger("rmeeting.http")
        config.read_timeout = int(read_timeout)
        config.keep_alive_timeout = 15
        self._config = config
        self._app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self._context = WorkerContext(None)
        self._state: dict[str, Any] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app's lifespan (startup, then shutdown when cancelled)."""
        lifespan = Lifespan(self._app, self._config, self._state)
        async with trio.open_nursery() as nursery:
            await nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await lifespan.wait_for_shutdown()
                nursery.cancel_scope.cancel()

    async def handle(self, sock: socket.socket, head: bytes) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        server = TCPServer(
            self._app,
            self._config,
            self._context,
            ConnectionState(self._state.copy()),
            _ReplayStream(stream, head),  # type: ignore[arg-type]
        )
        try:
            await server.run()
        finally:
            # Hypercorn's own close awaits, so a cancelled connection (server stopping) would
            # leave the socket open: close it here without waiting.
            sock.close()
