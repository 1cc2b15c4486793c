"""The one listening port: WebSocket routes go to rmeeting's raw WebSockets, the rest to HTTP.

The seed's clients expect the HTTP API and the WebSocket on one port, and the hot path must not
pay the ASGI cost per delivery (docs/architecture.md), so the front door reads each connection's
first request head itself and parses it once (:mod:`.head`): an upgrade to a WebSocket route is
answered here (wsproto then drives the frames), anything else is spliced, head and all, to
Hypercorn (:mod:`.http_bridge`).

Limits held here (docs/security.md, "Limits"): connection caps in all and per client address
(over a cap: 503 and close, before anything is read), the first head's size (checked after every
read: 431) and the time it may take to arrive (408 and close).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection

from .accept import ConnectionCaps, raise_fd_limit, serve_accept
from .head import HeadTooLarge, RequestHead, find_head_end, parse_head
from .http_bridge import HttpBridge
from .websocket import WebSocket

__all__ = ["FrontDoor", "FrontDoorLimits", "Handshake", "WsLimits", "WsRoute"]

log = logging.getLogger("rmeeting.frontdoor")

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: seconds a refused or answered-and-closed connection gets to read its answer
LINGER = 1.0
#: file descriptors kept free for everything that is not a client connection (stores, files)
FD_RESERVE = 256


@dataclass
class WsLimits:
    max_message: int = 65536
    max_buffer: int = 1 << 20
    ping_interval: float = 10.0
    ping_timeout: float = 20.0


@dataclass
class FrontDoorLimits:
    max_connections: int = 10000
    max_connections_per_ip: int = 1000
    max_head_bytes: int = 16384
    head_timeout: float = 10.0


@dataclass
class Handshake:
    """A WebSocket upgrade request, not yet answered."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    _sock: socket.socket
    _key: str
    _rest: bytes
    _limits: WsLimits
    params: dict[str, str] = field(default_factory=dict)
    #: the client's address (host, port) as the front door accepted it
    client: tuple[str, int] = ("", 0)
    #: where the WebSocket's writer runs when frames wait (shared by all connections)
    _writers: trio.Nursery | None = None

    def accept(self) -> WebSocket:
        accept = base64.b64encode(hashlib.sha1(self._key.encode() + _WS_GUID).digest())
        self._sock.send(  # a few hundred bytes: fits the socket's empty buffer
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        limits = self._limits
        return WebSocket(
            self._sock,
            Connection(ConnectionType.SERVER),
            max_message=limits.max_message,
            max_buffer=limits.max_buffer,
            ping_interval=limits.ping_interval,
            ping_timeout=limits.ping_timeout,
            initial=self._rest,  # frames that came with the handshake
            writers=self._writers,
        )

    def reject(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        _send_response(self._sock, status, body, content_type)


#: given a path, the handler for a WebSocket there (with the path's parameters), or None
WsRoute = Callable[[str], tuple[Callable[[Handshake], Awaitable[None]], dict[str, str]] | None]


class FrontDoor:
    def __init__(
        self,
        http: HttpBridge,
        ws_route: WsRoute,
        limits: WsLimits,
        door: FrontDoorLimits | None = None,
    ) -> None:
        self._http = http
        self._ws_route = ws_route
        self._limits = limits
        self._door = door or FrontDoorLimits()
        self.caps = ConnectionCaps(self._door.max_connections, self._door.max_connections_per_ip)

    @property
    def connections(self) -> int:
        return self.caps.open

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # a WebSocket holds one descriptor, an HTTP connection three (client, splice,
        # Hypercorn's side): ask for room for the worst case, warn below the best one
        limit = raise_fd_limit(3 * self._door.max_connections + FD_RESERVE)
        if self._door.max_connections and limit < self._door.max_connections + FD_RESERVE:
            log.warning("open-files limit %d is too low for max_connections=%d: raise "
                        "ulimit -n or lower max_connections", limit, self._door.max_connections)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(1024)
            listener.setblocking(False)
            async with trio.open_nursery() as nursery:
                task_status.started(listener.getsockname()[:2])

                def on_connection(conn: socket.socket, client: tuple[str, int]) -> None:
                    refused = self.caps.acquire(client[0])
                    if refused is None:
                        nursery.start_soon(self._handle, conn, client, nursery)
                    else:
                        nursery.start_soon(_refuse, conn, refused)

                await serve_accept(listener, on_connection)
        finally:
            listener.close()

    async def _handle(
        self, conn: socket.socket, client: tuple[str, int], writers: trio.Nursery
    ) -> None:
        try:
            read = await _read_head(conn, self._door)
            if read is None:
                await _linger(conn)
                return
            buf, end = read
            head = parse_head(buf[:end])
            found = None
            if head is not None and head.wants_websocket:
                found = self._ws_route(head.path)
            if found is None:
                # everything else, including what the parse refused, is Hypercorn's to answer
                await self._http.handle(conn, buf, client)
                return
            assert head is not None
            handshake = _handshake(head, conn, buf[end:], self._limits, found[1], client)
            del read, buf, head  # not kept for the connection's life
            if handshake is None:
                await _linger(conn)
                return
            handshake._writers = writers
            await found[0](handshake)
        except OSError:
            pass
        except Exception:  # a bug costs this connection, never the listener or other members
            log.exception("connection handler failed")
        finally:
            self.caps.release(client[0])
            conn.close()  # mostly closed already (by the WebSocket or the splice): then a no-op


def _handshake(
    head: RequestHead,
    conn: socket.socket,
    rest: bytes,
    limits: WsLimits,
    params: dict[str, str],
    client: tuple[str, int],
) -> Handshake | None:
    """The upgrade as a Handshake, or None once it was answered as the error it is."""
    key = head.header("sec-websocket-key")
    if head.header("sec-websocket-version") != "13":
        _send_response(conn, 426, b'{"error":"WebSocket version 13 required"}',
                       extra=b"Sec-WebSocket-Version: 13\r\n")
        return None
    if key is None or not _valid_key(key):
        _send_response(conn, 400, b'{"error":"bad Sec-WebSocket-Key"}')
        return None
    return Handshake(head.path, head.query(), head.header_dict(), conn, key, rest, limits,
                     params, client)


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error
        return False


async def _read_head(conn: socket.socket, door: FrontDoorLimits) -> tuple[bytes, int] | None:
    """What was read up to the end of the first request head and past it, with the head's
    length; None (the connection answered as need be) if it never came whole."""
    buf = b""
    with trio.move_on_after(door.head_timeout):
        while True:
            await trio.lowlevel.wait_readable(conn)
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            buf += chunk
            try:
                end = find_head_end(buf, door.max_head_bytes)
            except HeadTooLarge:
                _send_response(conn, 431, b'{"error":"request head too large"}')
                return None
            if end is not None:
                return buf, end
    if buf:  # a client that sent nothing at all gets no answer: it may be a port probe
        _send_response(conn, 408, b'{"error":"request head not received in time"}')
    return None


async def _refuse(conn: socket.socket, reason: str) -> None:
    """Answer 503 without reading the request, and close: cheap, and bounded in time."""
    try:
        _send_response(conn, 503, b'{"error":"%s"}' % reason.encode(),
                       extra=b"Retry-After: 1\r\n")
        await _linger(conn)
    finally:
        conn.close()


async def _linger(conn: socket.socket) -> None:
    """Stop sending, then read and drop what the client still sends until it closes or
    :data:`LINGER` passes: closing with unread input would reset the connection, and a reset
    can destroy the answer just sent before the client reads it."""
    try:
        conn.shutdown(socket.SHUT_WR)
        with trio.move_on_after(LINGER):
            while True:
                await trio.lowlevel.wait_readable(conn)
                try:
                    if not conn.recv(65536):
                        return
                except BlockingIOError:
                    continue
    except OSError:
        pass


def _send_response(
    conn: socket.socket, status: int, body: bytes, content_type: str = "application/json",
    extra: bytes = b"",
) -> None:
    """A whole response with ``Connection: close``, written without waiting (a few hundred
    bytes into an empty socket buffer); the caller closes."""
    reason = HTTPStatus(status).phrase.encode()
    data = (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (status, reason, content_type.encode(), len(body),
                                              extra)) + body
    try:
        conn.send(data)
    except OSError:
        pass
