"""HTTP: Hypercorn, through its public API, behind the front door.

The HTTP API is a Quart-Trio app served by ``hypercorn.trio.serve`` on an internal loopback port
(127.0.0.1, port 0), so it keeps Hypercorn's whole HTTP/1.1 handling (keep-alive and its timeout,
``Connection: close``, chunking, read timeouts) and Hypercorn can be upgraded like any library:
nothing here depends on its internals. The front door, having read a connection's first request
head, opens a connection to that port and splices the two byte for byte, both ways, until
either side ends (:meth:`HttpBridge.handle`).

The client's address is carried by the splice itself, not by a header: the front door records
"internal connection from 127.0.0.1:<its port> is client X" before it sends a byte, and
:class:`_FrontDoorApp` (an ASGI wrapper, the only seam) puts X into the request's
``scope["client"]`` (the app reads it as ``request.remote_addr``), and the front door's own
address into ``scope["server"]`` (not the internal port). A header would have to be
stripped from and inserted into every request of a keep-alive connection (re-parsing what is
meant to be spliced) and could be forged on the second request; the table cannot. A request on
the internal port that the front door did not open is refused (403): the port is loopback-only
and exists for the splice, so connection caps and limits cannot be bypassed through it.

The wrapper also holds the head-size limit on every request, whatever Hypercorn's parser
accepted (431; the front door checks the first request's head itself, Hypercorn's parser checks
only heads that arrive in pieces), and a deadline on the whole body (408: Hypercorn's
``read_timeout`` bounds each read, not a trickle). The splice cuts off a client that takes no
response bytes for ``read_timeout`` (Hypercorn itself has no write timeout).

A client that closes (or resets) its side while the connection is idle (no request in the app,
nothing sent since the last response ended) is gone: the splice ends there and frees its slot
and sockets (:class:`_Exchange`), and ends Hypercorn's side with a request of its own that says
``Connection: close`` (:func:`_end_hypercorn_side`). Hypercorn 0.18 would otherwise hold such a
connection, its socket and its task until its keep-alive timeout: it sees the end of input but
waits for its idle timer. A client that half-closes with a request still unanswered gets its
answer first.

A response sent before the app read the request's body to its end (a 413, a 401) says
``Connection: close`` (:func:`_closing`), and Hypercorn closes the connection after it; the
splice then closes the client's side gracefully: it stops sending, and reads and
discards what the client still sends for up to :data:`LINGER` seconds, so the client can read
that response instead of losing it to a reset.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

__all__ = ["HttpBridge"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Address = tuple[str, int]

RECV = 65536
#: seconds the splice keeps reading (and discarding) from a client after Hypercorn closed
LINGER = 2.0
#: seconds Hypercorn gets, on shutdown, for its requests in flight and the app's shutdown
SHUTDOWN_GRACE = 2.0
#: what the splice sends Hypercorn to end a connection whose client is gone (the wrapper answers)
CLOSING_REQUEST = b"GET / HTTP/1.1\r\nHost: -\r\nConnection: close\r\n\r\n"
#: a young-generation collection after this many HTTP connections ended (see HttpBridge.handle)
COLLECT_EVERY = 64


class HttpBridge:
    def __init__(
        self,
        app: Any,
        *,
        keep_alive_timeout: float,
        read_timeout: float,
        max_head_bytes: int,
    ) -> None:
        config = HypercornConfig()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        # Hypercorn announces its (internal) address at info level: only its warnings matter
        errorlog = logging.getLogger("rmeeting.http.hypercorn")
        errorlog.setLevel(logging.WARNING)
        config.errorlog = errorlog
        config.keep_alive_timeout = keep_alive_timeout
        config.read_timeout = read_timeout  # type: ignore[assignment] # float works; typed int
        config.h11_max_incomplete_size = max_head_bytes
        config.graceful_timeout = SHUTDOWN_GRACE / 2
        self._config = config
        #: internal connection -> its exchange (the real client, the front door's address)
        self._peers: dict[Address, _Exchange] = {}
        self._app = _FrontDoorApp(app, self._peers, max_head_bytes, read_timeout)
        self._address: Address | None = None
        #: a client that takes no response bytes for this long is cut off (Hypercorn has no
        #: write timeout, and the splice is where its responses wait)
        self._send_timeout = read_timeout
        self._stop = trio.Event()
        #: HTTP connections ended so far
        self.ended = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run Hypercorn (the app's startup first) until cancelled; then shut it down
        gracefully, bounded by :data:`SHUTDOWN_GRACE`."""
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(self._run_hypercorn)
            host, _, port = binds[0].removeprefix("http://").rpartition(":")
            self._address = (host, int(port))
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._stop.set()  # Hypercorn's own graceful shutdown, shielded below

    async def _run_hypercorn(self, *, task_status: trio.TaskStatus[list[str]]) -> None:
        # shielded, so that a cancelled server still runs the app's shutdown; bounded once asked
        with trio.CancelScope(shield=True) as scope:
            async def stop_when_asked() -> None:
                await self._stop.wait()
                scope.deadline = trio.current_time() + SHUTDOWN_GRACE

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_asked)
                app: Any = self._app  # an ASGI app; Hypercorn's typing names its own types
                binds: list[str] = await nursery.start(partial(
                    hypercorn_serve, app, self._config, shutdown_trigger=self._stop.wait,
                    mode="asgi",
                ))
                task_status.started(binds)

    async def handle(self, conn: socket.socket, head: bytes, client: Address) -> None:
        """Splice ``conn`` (whose first bytes, ``head``, were already read from it) to Hypercorn
        until either side ends; closes ``conn``."""
        assert self._address is not None, "serve() first"
        downstream = trio.socket.from_stdlib_socket(conn)
        raw_upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream = trio.socket.from_stdlib_socket(raw_upstream)
        key: Address | None = None
        try:
            await upstream.connect(self._address)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = upstream.getsockname()
            key = (name[0], name[1])
            local = conn.getsockname()
            exchange = self._peers[key] = _Exchange(client, (local[0], local[1]))
            stalled = False
            async with trio.open_nursery() as nursery:
                exchange.splice = nursery.cancel_scope
                nursery.start_soon(_pump_request, downstream, upstream, head, exchange)
                # Hypercorn ends the exchange: when it closes (Connection: close, keep-alive
                # timeout, an error), so does the client's connection
                try:
                    stalled = not await _copy(upstream, downstream, self._send_timeout,
                                              answers=exchange)
                except OSError:
                    pass  # Hypercorn reset its side: it had closed with input unread
                nursery.cancel_scope.cancel()
            if exchange.gone:
                await _end_hypercorn_side(upstream, raw_upstream, None if stalled else downstream,
                                          exchange, self._send_timeout)
            if not stalled:  # a client that does not read gets no time to read
                await _linger(downstream)
        except OSError:
            pass  # either side went away: nothing to tell anyone
        finally:
            if key is not None:
                del self._peers[key]
            upstream.close()
            downstream.close()
            self.ended += 1
            if self.ended % COLLECT_EVERY == 0:
                # Hypercorn leaves each connection as a reference cycle (its TCPServer and the
                # protocol holding its send method), ~40 objects and ~5 KB that only the cycle
                # collector frees. `rmeeting serve` makes young collections rare (100,000
                # allocations, for fan-out), so an instance taking mostly HTTP piled up ~12 MB
                # of them before one came: the soak's slope (docs/benchmarks.md#soak). Collected
                # here, in proportion to what makes them; a young collection costs ~1 ms.
                gc.collect(0)


class _Exchange:
    """One spliced connection, as the splice and the ASGI wrapper both see it: who the client
    is, and whether it is idle (no request in the app, no byte sent since the last response
    ended): a client that closes its side then is gone, not waiting for an answer."""

    __slots__ = ("client", "server", "active", "body_pending", "sent", "sent_at_last_end",
                 "gone", "eof_sent", "sending", "splice", "_idle")

    def __init__(self, client: Address, server: Address) -> None:
        self.client = client
        self.server = server
        #: requests in the app now; whether the app still waits for a body
        self.active = 0
        self.body_pending = False
        #: chunks of the client's bytes handed to Hypercorn, and how many when a request ended
        self.sent = 0
        self.sent_at_last_end = 0
        #: the client closed its side and every request it sent was answered
        self.gone = False
        #: Hypercorn was told the end of input (the client closed with a request unanswered)
        self.eof_sent = False
        #: an answer's chunk is being passed on to the client (not to be cut)
        self.sending = False
        #: the splice's copying, both ways: cancelled once the client is gone (between chunks)
        self.splice: trio.CancelScope | None = None
        self._idle: trio.Event | None = None

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.sent == self.sent_at_last_end

    def request_started(self) -> None:
        self.active += 1

    def request_ended(self) -> None:
        self.active -= 1
        self.sent_at_last_end = self.sent
        if self._idle is not None and self.idle:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until no request is in the app and every byte sent was part of an answered one."""
        while not self.idle:
            self._idle = trio.Event()
            await self._idle.wait()


async def _send_all(sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def _copy(
    src: trio.socket.SocketType, dst: trio.socket.SocketType, send_timeout: float = math.inf,
    *, counter: _Exchange | None = None, answers: _Exchange | None = None,
) -> bool:
    """Copy until ``src`` ends (True) or a send to ``dst`` waited ``send_timeout`` (False).
    ``counter``: the client's side, chunks counted; ``answers``: Hypercorn's side, which ends
    (True) when the client is gone, between chunks, never inside one."""
    while True:
        data = await src.recv(RECV)
        if not data:
            return True
        if answers is not None:
            answers.sending = True
        with trio.move_on_after(send_timeout):
            await _send_all(dst, data)
            if counter is not None:  # after the send: a request it holds is not yet answered
                counter.sent += 1
            if answers is not None:
                answers.sending = False
                if answers.gone:
                    return True
            continue
        return False


async def _linger(sock: trio.socket.SocketType) -> None:
    """Half-close, then discard what the client still sends until it closes or LINGER ends."""
    sock.shutdown(socket.SHUT_WR)
    with trio.move_on_after(LINGER):
        while await sock.recv(RECV):
            pass


async def _pump_request(
    downstream: trio.socket.SocketType, upstream: trio.socket.SocketType, head: bytes,
    exchange: _Exchange,
) -> None:
    try:
        await _send_all(upstream, head)
        exchange.sent += 1
        await _copy(downstream, upstream, counter=exchange)
    except OSError:
        pass  # a reset: the client is gone just as after an end of input (below)
    # The client sent its last byte. Hypercorn would see the end of input, answer what it was
    # sent and then hold the connection until its keep-alive timeout (it does not act on the
    # end of input between requests): told only when a request's body is still unread (it needs
    # the end to finish reading its body); otherwise, and once it is answered, the client is gone.
    # (If Hypercorn is the one gone, the splice ends on its side and cancels this.)
    if exchange.body_pending:  # Hypercorn is to be told: the body it waits for will not come
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)
        exchange.eof_sent = True
    await exchange.wait_idle()
    exchange.gone = True
    if not exchange.sending:  # else the copy ends itself once that chunk is passed on
        assert exchange.splice is not None
        exchange.splice.cancel()


async def _end_hypercorn_side(
    upstream: trio.socket.SocketType, raw_upstream: socket.socket,
    downstream: trio.socket.SocketType | None, exchange: _Exchange, send_timeout: float,
) -> None:
    """The client is gone with every request answered: pass on what Hypercorn already wrote
    (the last answer ended before the request did, so it is all here, unread; not to a client
    that stopped reading), then make Hypercorn close its side now with a request of the
    splice's own that says ``Connection: close`` (answered by the wrapper, never the app;
    the answer is read and dropped until Hypercorn closes). Hypercorn's idle connection would
    otherwise wait for its keep-alive timeout, and only a request stops that timer: on a
    malformed one Hypercorn closes the socket but its connection task still waits it out."""
    with trio.move_on_after(send_timeout):
        while True:
            try:
                data = raw_upstream.recv(RECV)
            except BlockingIOError:
                break
            if not data:
                return  # Hypercorn closed on its own
            if downstream is not None:
                try:
                    await _send_all(downstream, data)
                except OSError:  # the client reset: the rest is dropped, Hypercorn still told
                    downstream = None
    if exchange.eof_sent:
        return
    with contextlib.suppress(OSError), trio.move_on_after(LINGER):
        await _send_all(upstream, CLOSING_REQUEST)
        # until Hypercorn closed: closed under its answer, it would take an error path that
        # leaves its connection task waiting for the keep-alive timer after all
        while await upstream.recv(RECV):
            pass


class _FrontDoorApp:
    """The ASGI wrapper between Hypercorn and the app (see the module docstring)."""

    def __init__(
        self, app: Any, peers: dict[Address, _Exchange], max_head_bytes: int,
        body_timeout: float,
    ) -> None:
        self._app = app
        self._peers = peers
        self._max_head = max_head_bytes
        self._body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._app(scope, receive, send)
            return  # a WebSocket through the internal port: the front door never sends one
        client = scope.get("client")
        exchange = self._peers.get((client[0], client[1])) if client else None
        if exchange is None:
            await _answer(send, 403, b'{"error":"the internal port serves the front door only"}')
            return
        if exchange.gone:  # the splice's CLOSING_REQUEST: the client is gone, nobody reads this
            await _answer(send, 204, b"")
            return
        exchange.request_started()
        try:
            await self._serve(exchange, scope, receive, send)
        finally:
            exchange.request_ended()

    async def _serve(self, exchange: _Exchange, scope: Scope, receive: Receive,
                     send: Send) -> None:
        if _head_size(scope) > self._max_head:
            await _answer(send, 431, b'{"error":"request head too large"}')
            return
        # the app sees the real client, and the address the client reached (not the internal
        # port): a link built from the request (join_url) names the port clients use
        scope = {**scope, "client": exchange.client, "server": exchange.server}
        if not _has_body(scope):
            await self._app(scope, receive, partial(_send_shielded_end, send))
            return
        exchange.body_pending = True
        try:
            await _BodyDeadline(self._body_timeout, receive, send, exchange).run(self._app, scope)
        finally:
            exchange.body_pending = False


class _BodyDeadline:
    """A request body must arrive whole within ``timeout`` seconds of its head.

    Hypercorn's ``read_timeout`` bounds each read; a client trickling a byte at a time would
    hold the connection for ever. Past the deadline the client gets 408 and the connection is
    closed; the app is told the client went away (it never saw a response it did not send)."""

    def __init__(self, timeout: float, receive: Receive, send: Send,
                 exchange: _Exchange) -> None:
        self._exchange = exchange
        self._deadline = trio.current_time() + timeout
        self._receive = receive
        self._send = send
        self._body_done = False
        self._app_responded = False
        self._timed_out = False

    async def run(self, app: Any, scope: Scope) -> None:
        await app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self._body_done:
            return await self._receive()  # only the disconnect is left: no deadline on it
        with trio.move_on_at(self._deadline):
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self._body_done = True
                self._exchange.body_pending = False
            return message
        self._body_done = True
        if not self._app_responded:
            self._timed_out = True
            await _answer(partial(_send_shielded_end, self._send), 408,
                          b'{"error":"request body not received in time"}')
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self._timed_out:
            return  # the 408 went out instead of whatever the app says now
        if message["type"] == "http.response.start":
            self._app_responded = True
            if not self._body_done:
                message = _closing(message)
        await _send_shielded_end(self._send, message)


def _closing(start: Message) -> Message:
    """``start`` with ``Connection: close``: the response of a request whose body was not read.

    Hypercorn keeps such a connection only if the body happens to arrive before the response
    ends, and otherwise closes it without a word, so a keep-alive client would send its next
    request into a closed socket (issue #10). Said in the response, the close is announced."""
    headers = [(name, value) for name, value in start.get("headers", [])
               if name.lower() != b"connection"]
    return {**start, "headers": [*headers, (b"connection", b"close")]}


async def _send_shielded_end(send: Send, message: Message) -> None:
    """Pass the message on; the response's last one shielded from cancellation.

    Hypercorn closes the connection (``Connection: close``, a body left unread) from inside
    this call, and Quart-Trio cancels its request nursery as soon as the client disconnects,
    which Hypercorn tells it from inside that same close: unshielded, the close is cancelled
    half-way and the connection stays open until a timeout (issue #10, item 5)."""
    if message["type"] == "http.response.body" and not message.get("more_body", False):
        with trio.CancelScope(shield=True):
            await send(message)
    else:
        await send(message)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def _head_size(scope: Scope) -> int:
    """The request head's size in bytes as sent, give or take the spaces Hypercorn dropped."""
    size = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 14
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
