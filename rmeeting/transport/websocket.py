"""A server-side WebSocket on a raw non-blocking socket, built for fan-out.

Why not an ASGI or trio-websocket connection: a broadcast here is one pre-encoded frame written to
many sockets, and the cheapest write is a plain non-blocking ``send`` from the shard task
(docs/benchmarks.md). So the shard calls :meth:`WebSocket.send_frame_nowait`, which writes straight
to the kernel when nothing is queued, and otherwise appends to this connection's outbox, which a
writer task drains as the socket becomes writable (the task exists only while there is something
to write, and sends whatever is waiting in one ``send``).

Memory per member is what bounds a server of idle members (docs/benchmarks.md, "idle"), so a
connection costs one task, the session's own: it reads its messages itself
(:meth:`WebSocket.receive`, with the keep-alive as a deadline on that wait), the writer task is
started in a nursery shared by all connections and only while frames wait, and no event or
channel exists until something waits on it.

Backpressure policy: the outbox holds at most ``max_buffer`` bytes. A member whose outbox would
grow past that is not read by its client; it is closed with code 4008 ("slow consumer") and the
broadcast goes on for everyone else. Nothing ever waits on a slow member.

Incoming frames are parsed by wsproto. No extension is negotiated, so a server frame is a fixed
header plus the payload, the same bytes for every member (:func:`text_frame`).
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from ..closes import Close

__all__ = [
    "BadFrame",
    "WebSocket",
    "text_frame",
    "text_payload",
]

log = logging.getLogger("rmeeting.ws")

RECV_CHUNK = 65536
#: the most bytes of waiting frames the writer joins into one ``send``
SEND_CHUNK = 65536


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame: what the server sends, identical for every member."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def text_payload(frame: bytes) -> bytes:
    """The payload of a frame made by :func:`text_frame` (its inverse)."""
    n = frame[1]
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


@dataclass(frozen=True)
class BadFrame:
    """A frame the client should not have sent; ``kind`` is ``binary`` or ``empty``."""

    kind: str


#: the outbox of every connection that has nothing waiting (most): a deque costs ~600 bytes
#: even empty; it is never appended to (``WebSocket._append`` makes a connection its own)
_NO_FRAMES: deque[bytes] = deque()


class WebSocket:
    """An accepted WebSocket, driven by the task that holds it::

        async with ws.connected():
            async for message in ws.messages():
                ...

    ``connected`` closes the connection on the way out (a close frame, bounded in time);
    ``messages`` (or :meth:`receive`) reads in the calling task. Frames to the member are
    written without waiting (:meth:`send_frame_nowait`), from any task."""

    #: many thousands of these live at once: no per-instance dict
    __slots__ = (
        "_sock",
        "_ws",
        "_max_message",
        "_max_buffer",
        "_ping_interval",
        "_ping_timeout",
        "_close_timeout",
        "_outbox",
        "_outbox_bytes",
        "_writers",
        "_writing",
        "_head_partial",
        "_drained",
        "_closing",
        "_aborted",
        "_socket_closed",
        "_ended",
        "_refused",
        "_close_deadline",
        "_wait",
        "_unparsed",
        "_ready",
        "_parts",
        "_size",
        "timed_out",
        "_last_heard",
        "_next_ping",
        "close_code",
        "close_reason",
        "peer_close_code",
        "frames_sent",
    )

    def __init__(
        self,
        sock: socket.socket,
        ws: Connection,
        *,
        max_message: int,
        max_buffer: int,
        ping_interval: float,
        ping_timeout: float,
        initial: bytes = b"",
        writers: trio.Nursery | None = None,
        close_timeout: float = 2.0,
    ) -> None:
        self._sock = sock
        self._ws = ws
        self._max_message = max_message
        self._max_buffer = max_buffer
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        #: frames waiting for the socket; most of the time none, and the shared empty one
        self._outbox: deque[bytes] = _NO_FRAMES
        self._outbox_bytes = 0
        #: where the writer task runs while the outbox has something to write (most members,
        #: most of the time, have nothing queued: their frames go straight to the kernel); None
        #: until ``connected`` is entered, if not given (then its own nursery)
        self._writers = writers
        self._writing = False
        #: the outbox's first entry is the rest of a frame whose start is already sent
        self._head_partial = False
        #: made by whoever waits for the outbox to empty (the close), set by the writer
        self._drained: trio.Event | None = None
        self._closing = False
        self._aborted = False
        self._socket_closed = False
        #: no more messages will be read (the peer closed, the socket died, or time ran out)
        self._ended = False
        #: a message was refused (too big): the session gets no more, and what still comes
        #: is read and dropped until the peer's close frame
        self._refused = False
        #: once closing, reading (for the peer's close frame) stops at this time
        self._close_deadline = math.inf
        #: the reader's current wait, so that a close started elsewhere can shorten it
        self._wait: trio.CancelScope | None = None
        #: bytes read but not yet given to wsproto (those that came with the handshake)
        self._unparsed = initial
        #: messages parsed and not yet returned; a message being assembled, and its size
        self._ready: list[str | BadFrame] = []
        self._parts: list[str] = []
        self._size = 0
        self.timed_out = False
        self._last_heard = trio.current_time()
        self._next_ping = self._last_heard + ping_interval
        #: the code this side closed with (None while open, or if the peer closed first)
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_close_code: int | None = None
        self.frames_sent = 0

    # --- writing ------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Queue or write one encoded frame without waiting. False if the member is gone."""
        if self._closing:
            return False
        return self._put(frame)

    def _put(self, frame: bytes) -> bool:
        if not self._outbox:
            try:
                sent = self._sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abort()
                return False
            if sent == len(frame):
                self.frames_sent += 1
                return True
            if sent:
                # part of this frame is on the wire: the rest must follow whatever the bound,
                # or the next bytes out (a close frame) would land inside its payload
                self._head_partial = True
                self._queue(frame[sent:])
                return True
        if self._outbox_bytes + len(frame) > self._max_buffer and not self._closing:
            self._start_close(Close.SLOW_CONSUMER, "slow consumer: outgoing queue full")
            return False
        self._queue(frame)
        return True

    def _queue(self, frame: bytes) -> None:
        self._append(frame)
        self.frames_sent += 1
        self._start_writer()

    def _append(self, data: bytes) -> None:
        """Every append to the outbox goes here: the shared empty one is never written."""
        if self._outbox is _NO_FRAMES:
            self._outbox = deque()
        self._outbox.append(data)
        self._outbox_bytes += len(data)

    def _start_writer(self) -> None:
        if self._outbox and not self._writing and self._writers is not None \
                and not self._socket_closed:
            self._writing = True
            self._writers.start_soon(self._write_loop)

    def send_text_nowait(self, payload: bytes) -> bool:
        return self.send_frame_nowait(text_frame(payload))

    def statistics(self) -> dict[str, int]:
        return {"queued_frames": len(self._outbox), "queued_bytes": self._outbox_bytes}

    def _start_close(self, code: int, reason: str) -> None:
        """Drop what is queued and send a close frame next; the writer then ends the socket."""
        if self._closing:
            return
        self._closing = True
        self._set_close_deadline()
        self.close_code, self.close_reason = code, reason
        if code == Close.SLOW_CONSUMER:
            # whatever this member has not read is lost to it anyway; free it now, except the
            # rest of a frame already half sent: the close frame may only follow whole frames
            kept = self._outbox[0] if self._outbox and self._head_partial else None
            self._outbox, self._outbox_bytes = _NO_FRAMES, 0
            if kept is not None:
                self._append(kept)
        try:
            data = self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            data = b""  # the peer closed first; our answer is already out
        if data:
            self._append(data)
        self._start_writer()

    def close_nowait(self, code: int = Close.NORMAL, reason: str = "") -> None:
        self._start_close(code, reason)

    def _set_close_deadline(self) -> None:
        """Closing: the peer has ``close_timeout`` to answer; a reader waiting longer is woken."""
        self._close_deadline = min(self._close_deadline,
                                   trio.current_time() + self._close_timeout)
        if self._wait is not None:
            self._wait.deadline = min(self._wait.deadline, self._close_deadline)

    def _abort(self) -> None:
        """The socket is dead: nothing more goes out. The reader goes on until its next read
        fails or sees the end (bounded by the close deadline), so that the messages the client
        sent before it went, already read, still reach the session."""
        self._aborted = True
        self._closing = True
        self._set_close_deadline()
        self._outbox, self._outbox_bytes = _NO_FRAMES, 0
        if self._drained is not None:
            self._drained.set()

    async def _write_loop(self) -> None:
        """Drain the outbox as the socket takes it, then end (started again by the next frame
        that has to wait: :meth:`_start_writer`). It runs in a nursery shared by every
        connection, so nothing may escape it."""
        try:
            await self._drain_outbox()
        except trio.ClosedResourceError:
            self._abort()  # the connection closed its socket while this waited
        except Exception:  # a bug costs this connection, never the shared nursery
            log.exception("WebSocket writer failed")
            self._abort()
        finally:
            self._writing = False
            if self._drained is not None and (self._aborted or not self._outbox):
                self._drained.set()

    async def _drain_outbox(self) -> None:
        while (outbox := self._outbox) and not self._socket_closed:
            # (read again each turn: a close may have put a new outbox in place meanwhile)
            if len(outbox) > 1 and len(outbox[0]) < SEND_CHUNK:
                # frames already waiting go out in one send (a send costs about the same for
                # one frame or many); whole frames stay whole, so a half-sent head stays the
                # only partial one
                parts, size = [], 0
                while outbox and size < SEND_CHUNK:
                    part = outbox.popleft()
                    parts.append(part)
                    size += len(part)
                outbox.appendleft(b"".join(parts))
            chunk = outbox[0]
            try:
                sent = self._sock.send(chunk)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abort()
                return
            if sent == 0:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            self._outbox_bytes -= sent
            if sent == len(chunk):
                outbox.popleft()
                self._head_partial = False
            else:
                outbox[0] = chunk[sent:]
                self._head_partial = True
        if not self._outbox:
            self._outbox = _NO_FRAMES  # its block of 64 slots goes back

    # --- reading ------------------------------------------------------------------------

    def messages(self) -> WebSocket:
        """``async for message in ws.messages()``: text messages in order (and BadFrame notes),
        read in the calling task, until the connection is over."""
        return self

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | BadFrame:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> str | BadFrame:
        """The next message; ``trio.EndOfChannel`` once no more will come. Pings are answered
        and the keep-alive kept while waiting; call it from one task at a time."""
        while True:
            if self._ready:
                return self._ready.pop(0)
            if self._ended or self._refused:
                raise trio.EndOfChannel
            await self._read_more()

    async def _read_more(self) -> None:
        """Parse what was read; if that made no message, wait for more and read it."""
        if self._unparsed:
            data, self._unparsed = self._unparsed, b""
            self._ws.receive_data(data)
            self._last_heard = trio.current_time()
        # always drained, even without new data: wsproto may hold events from the bytes
        # that came with the handshake
        self._parse_events()
        if self._ready or self._ended:
            return
        if self._ws.state is ConnectionState.CLOSED:
            self._ended = True
            return
        await self._wait_and_read()

    def _parse_events(self) -> None:
        for event in self._ws.events():
            if self._ended:
                continue  # the connection is over: the rest is not looked at
            if self._refused and isinstance(event, TextMessage | BytesMessage):
                continue  # the rest of a refused message, and what follows it: dropped
            if isinstance(event, TextMessage):
                # the limit counts bytes as they came (UTF-8), not characters
                chunk = event.data
                self._size += len(chunk) if chunk.isascii() else len(chunk.encode())
                if self._size > self._max_message:
                    self._too_big()
                    continue
                self._parts.append(chunk)
                if event.message_finished:
                    text = "".join(self._parts)
                    self._parts, self._size = [], 0
                    self._ready.append(text or BadFrame("empty"))
            elif isinstance(event, BytesMessage):
                # never kept, but bounded like text: a huge one is not read to its end
                self._size += len(event.data)
                if self._size > self._max_message:
                    self._too_big()
                    continue
                if event.message_finished:
                    self._size = 0
                    self._ready.append(BadFrame("binary"))
            elif not self._control(event):
                self._ended = True

    def _too_big(self) -> None:
        self._start_close(Close.TOO_BIG, "message too big")
        self._parts, self._size = [], 0
        self._refused = True

    async def _wait_and_read(self) -> None:
        """Wait for bytes (until the next ping is due, or the close deadline), read them."""
        with trio.CancelScope(deadline=min(self._next_ping, self._close_deadline)) as wait:
            self._wait = wait
            try:
                await trio.lowlevel.wait_readable(self._sock)
            except trio.ClosedResourceError:
                self._ended = True
                return
            finally:
                self._wait = None
        now = trio.current_time()
        if now >= self._close_deadline:
            self._ended = True  # the peer did not answer the close in time
            return
        if wait.cancelled_caught:
            if now >= self._next_ping:
                self._keepalive()
            return  # nothing new was read (the socket is read on the next turn)
        try:
            data = self._sock.recv(RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._abort()
            self._ended = True
            return
        if not data:
            self._ws.receive_data(None)
            self._abort()
            self._ended = True
            return
        self._ws.receive_data(data)
        self._last_heard = now

    def _control(self, event: Event) -> bool:
        """Handle a control event; False when the connection is over."""
        if isinstance(event, Ping):
            self._put(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.peer_close_code = event.code
            if not self._closing:
                self._closing = True
                self._set_close_deadline()
                try:
                    self._put(self._ws.send(event.response()))
                except LocalProtocolError:
                    pass
            return False
        elif isinstance(event, Pong):
            pass
        return True

    def _keepalive(self) -> None:
        """Every ``ping_interval``: close a peer not heard from for ``ping_interval +
        ping_timeout`` (it is gone or stuck), else ping it."""
        self._next_ping = trio.current_time() + self._ping_interval
        if self._closing:
            self._next_ping = math.inf  # no more pings; the reader waits for the close
            return
        if trio.current_time() - self._last_heard > self._ping_interval + self._ping_timeout:
            # a close frame is sent if it can be, not awaited
            self._start_close(Close.POLICY, "keep-alive timeout")
            self.timed_out = True
            self._next_ping = math.inf
            return
        self._put(self._ws.send(Ping(b"k")))

    # --- the connection's life ------------------------------------------------------------

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[WebSocket]:
        """Hold the connection open for the block; on the way out, close it: a normal close
        unless one was started, then ``close_timeout`` for the close frame to go out and the
        peer's to come back (messages read meanwhile are dropped), then the socket is closed.
        Cancelled: the socket is closed at once."""
        try:
            if self._writers is None:
                async with trio.open_nursery() as nursery:
                    self._writers = nursery
                    self._start_writer()  # frames queued before: they go now
                    try:
                        yield self
                        await self._finish()
                    finally:
                        nursery.cancel_scope.cancel()
            else:
                yield self
                await self._finish()
        finally:
            self._close_socket()

    async def _finish(self) -> None:
        if not self._closing:
            self._start_close(Close.NORMAL, "")
        with trio.move_on_at(self._close_deadline):
            if self._outbox and not self._aborted:
                self._drained = self._drained or trio.Event()
                self._start_writer()
                await self._drained.wait()
            while not self._ended:  # until the peer's close frame; messages are dropped
                self._ready.clear()
                await self._read_more()

    def _close_socket(self) -> None:
        self._closing = True
        self._socket_closed = True
        self._ended = True
        self._outbox, self._outbox_bytes = _NO_FRAMES, 0
        try:
            trio.lowlevel.notify_closing(self._sock)  # wakes a writer waiting on it
        except (OSError, ValueError):  # pragma: no cover - a socket already closed
            pass
        try:
            self._sock.close()
        except OSError:  # pragma: no cover - close of a dead socket
            pass
