"""The one listening port: WebSocket routes go to rmeeting's raw WebSockets, the rest to HTTP.

The seed's clients expect the HTTP API and the WebSocket on one port, and the hot path must not
pay the ASGI cost per delivery (docs/architecture.md), so the front door reads each connection's
request head itself: an upgrade to a WebSocket route is accepted here with wsproto, anything else
is handed, head and all, to Hypercorn (:mod:`.http_bridge`).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from .http_bridge import HttpBridge
from .websocket import WebSocket

__all__ = ["FrontDoor", "Handshake", "WsRoute"]

log = logging.getLogger("rmeeting.frontdoor")

MAX_HEAD = 16384
HEAD_TIMEOUT = 10.0


@dataclass
class WsLimits:
    max_message: int = 65536
    max_buffer: int = 1 << 20
    ping_interval: float = 10.0
    ping_timeout: float = 20.0


@dataclass
class Handshake:
    """A WebSocket upgrade request, not yet answered."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    _sock: socket.socket
    _ws: WSConnection
    _limits: WsLimits
    params: dict[str, str] = field(default_factory=dict)

    def accept(self) -> WebSocket:
        self._sock.send(self._ws.send(AcceptConnection()))  # a few hundred bytes: fits the buffer
        limits = self._limits
        return WebSocket(
            self._sock,
            self._ws,
            max_message=limits.max_message,
            max_buffer=limits.max_buffer,
            ping_interval=limits.ping_interval,
            ping_timeout=limits.ping_timeout,
        )

    def reject(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        headers = [(b"content-type", content_type.encode()),
                   (b"content-length", str(len(body)).encode())]
        data = self._ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self._ws.send(RejectData(data=body, body_finished=True))
        try:
            self._sock.send(data)
        except OSError:
            pass


#: given a path, the handler for a WebSocket there (with the path's parameters), or None
WsRoute = Callable[[str], tuple[Callable[[Handshake], Awaitable[None]], dict[str, str]] | None]


class FrontDoor:
    def __init__(self, http: HttpBridge, ws_route: WsRoute, limits: WsLimits) -> None:
        self._http = http
        self._ws_route = ws_route
        self._limits = limits
        self.connections = 0

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(1024)
            listener.setblocking(False)
            async with trio.open_nursery() as nursery:
                task_status.started(listener.getsockname()[:2])
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    try:
                        conn, _addr = listener.accept()
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.error("accept failed: %s; pausing", exc)
                            await trio.sleep(0.1)
                            continue
                        raise
                    conn.setblocking(False)
                    if family != socket.AF_UNIX:
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(self._handle, conn)
        finally:
            listener.close()

    async def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        handed_off = False
        try:
            head = await _read_head(conn)
            if head is None:
                return
            target = _websocket_target(head)
            found = self._ws_route(urlsplit(target).path) if target else None
            if found is None:
                handed_off = True
                await self._http.handle(conn, head)
                return
            handler, params = found
            ws = WSConnection(ConnectionType.SERVER)
            try:
                ws.receive_data(head)
                request = next(ws.events())
            except (RemoteProtocolError, StopIteration):
                conn.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                return
            assert isinstance(request, Request)
            url = urlsplit(request.target)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            headers = {}
            for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            handshake = Handshake(url.path, query, headers, conn, ws, self._limits, params)
            handed_off = True
            await handler(handshake)
        except OSError:
            pass
        except Exception:  # a bug costs this connection, never the listener or other members
            log.exception("connection handler failed")
        finally:
            self.connections -= 1
            if not handed_off:
                conn.close()


async def _read_head(conn: socket.socket) -> bytes | None:
    """Bytes up to the end of the request head (and whatever came after it), or None."""
    buf = b""
    with trio.move_on_after(HEAD_TIMEOUT):
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                conn.send(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                          b"content-length: 0\r\nconnection: close\r\n\r\n")
                return None
            await trio.lowlevel.wait_readable(conn)
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            buf += chunk
        return buf
    return None


def _websocket_target(head: bytes) -> str | None:
    """The request target when the head asks for a WebSocket upgrade with GET."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        return None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return parts[1].decode("latin-1")
    return None
