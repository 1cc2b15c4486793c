"""A server-side WebSocket on a raw non-blocking socket, built for fan-out.

Why not an ASGI or trio-websocket connection: a broadcast here is one pre-encoded frame written to
many sockets, and the cheapest write is a plain non-blocking ``send`` from the shard task
(docs/benchmarks.md). So the shard calls :meth:`WebSocket.send_frame_nowait`, which writes straight
to the kernel when nothing is queued, and otherwise appends to this connection's outbox, which a
writer task drains as the socket becomes writable (the task exists only while there is something
to write, and sends whatever is waiting in one ``send``).

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


class WebSocket:
    """An accepted WebSocket. ``run`` drives it; ``messages`` yields what the client says."""

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
    ) -> None:
        self._sock = sock
        self._ws = ws
        self._max_message = max_message
        self._max_buffer = max_buffer
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        #: the connection's nursery while ``run`` drives it; the writer task is started in it
        #: only while the outbox has something to write (most members, most of the time, have
        #: nothing queued: their frames go straight to the kernel)
        self._nursery: trio.Nursery | None = None
        self._writing = False
        #: the outbox's first entry is the rest of a frame whose start is already sent
        self._head_partial = False
        self._flushed = trio.Event()
        self._flushed.set()
        self._closing = False
        self._aborted = False
        self._closing_event = trio.Event()
        self._reader_done = trio.Event()
        #: bytes read with the handshake, before any frame was parsed
        self._initial = initial
        self.timed_out = False
        self._incoming_send, self._incoming = trio.open_memory_channel[str | BadFrame](16)
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
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        self.frames_sent += 1
        self._flushed = trio.Event() if self._flushed.is_set() else self._flushed
        self._start_writer()

    def _start_writer(self) -> None:
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._write_loop)

    def send_text_nowait(self, payload: bytes) -> bool:
        return self.send_frame_nowait(text_frame(payload))

    def statistics(self) -> dict[str, int]:
        return {"queued_frames": len(self._outbox), "queued_bytes": self._outbox_bytes}

    def _start_close(self, code: int, reason: str) -> None:
        """Drop what is queued and send a close frame next; the writer then ends the socket."""
        if self._closing:
            return
        self._closing = True
        self._closing_event.set()
        self.close_code, self.close_reason = code, reason
        if code == Close.SLOW_CONSUMER:
            # whatever this member has not read is lost to it anyway; free it now, except the
            # rest of a frame already half sent: the close frame may only follow whole frames
            kept = self._outbox[0] if self._outbox and self._head_partial else None
            self._outbox.clear()
            self._outbox_bytes = 0
            if kept is not None:
                self._outbox.append(kept)
                self._outbox_bytes = len(kept)
        try:
            data = self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            data = b""  # the peer closed first; our answer is already out
        if data:
            self._outbox.append(data)
            self._outbox_bytes += len(data)
        self._flushed = trio.Event() if self._flushed.is_set() else self._flushed
        self._start_writer()

    def close_nowait(self, code: int = Close.NORMAL, reason: str = "") -> None:
        self._start_close(code, reason)

    def _abort(self) -> None:
        """The socket is dead: nothing more goes out. The reader is left to end by itself (its
        next read fails or sees the end; ``run`` bounds the wait), so that the messages the
        client sent before it went, already read, still reach the session."""
        self._aborted = True
        self._closing = True
        self._closing_event.set()
        self._outbox.clear()
        self._outbox_bytes = 0
        self._flushed.set()

    async def _write_loop(self) -> None:
        """Drain the outbox as the socket takes it, then end (started again by the next frame
        that has to wait: :meth:`_start_writer`)."""
        try:
            await self._drain_outbox()
        finally:
            self._writing = False

    async def _drain_outbox(self) -> None:
        outbox = self._outbox
        while True:
            if not outbox:
                self._flushed.set()
                return
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
                self._outbox.popleft()
                self._head_partial = False
            else:
                self._outbox[0] = chunk[sent:]
                self._head_partial = True

    # --- reading ------------------------------------------------------------------------

    def messages(self) -> trio.MemoryReceiveChannel[str | BadFrame]:
        """Text messages in order (and BadFrame notes); ``async for`` ends when it closes.

        A channel rather than an async generator, so a session that stops early leaves no
        half-run generator behind."""
        return self._incoming

    async def _read_loop(self, initial: bytes) -> None:
        parts: list[str] = []
        size = 0
        async with self._incoming_send:
            data = initial
            while True:
                if data:
                    self._ws.receive_data(data)
                    self._last_heard = trio.current_time()
                # always drained, even without new data: wsproto may hold events from the
                # bytes that came with the handshake
                for event in self._ws.events():
                    if isinstance(event, TextMessage):
                        # the limit counts bytes as they came (UTF-8), not characters
                        chunk = event.data
                        size += len(chunk) if chunk.isascii() else len(chunk.encode())
                        if size > self._max_message:
                            self._start_close(Close.TOO_BIG, "message too big")
                            return
                        parts.append(chunk)
                        if event.message_finished:
                            text, parts, size = "".join(parts), [], 0
                            await self._incoming_send.send(text or BadFrame("empty"))
                    elif isinstance(event, BytesMessage):
                        # never kept, but bounded like text: a huge one is not read to its end
                        size += len(event.data)
                        if size > self._max_message:
                            self._start_close(Close.TOO_BIG, "message too big")
                            return
                        if event.message_finished:
                            size = 0
                            await self._incoming_send.send(BadFrame("binary"))
                    elif not self._control(event):
                        return
                if self._ws.state is ConnectionState.CLOSED or self._aborted:
                    return
                # the keep-alive is a deadline on this wait, not a task of its own
                with trio.move_on_at(self._next_ping):
                    await trio.lowlevel.wait_readable(self._sock)
                if trio.current_time() >= self._next_ping:
                    self._keepalive()
                    data = b""  # nothing new was read (the socket is read on the next turn)
                    continue
                try:
                    data = self._sock.recv(RECV_CHUNK)
                except BlockingIOError:
                    data = b""
                    continue
                except OSError:
                    self._abort()
                    return
                if not data:
                    self._ws.receive_data(None)
                    self._abort()
                    return

    def _control(self, event: Event) -> bool:
        """Handle a control event; False when the connection is over."""
        if isinstance(event, Ping):
            self._put(self._ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.peer_close_code = event.code
            if not self._closing:
                self._closing = True
                self._closing_event.set()
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

    async def _read_then_close(self) -> None:
        try:
            await self._read_loop(self._initial)
        finally:
            self._reader_done.set()
            if not self._closing:
                self._start_close(Close.NORMAL, "")

    async def run(self, initial: bytes = b"", *, close_timeout: float = 2.0) -> None:
        """Drive the connection until it closes; the socket is closed on return.

        Closing is bounded: once either side starts it, the close frame gets ``close_timeout``
        seconds to go out and the peer as long to answer, then the socket is closed anyway."""
        self._initial = initial or self._initial
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._outbox:  # queued before run started
                    self._start_writer()
                nursery.start_soon(self._read_then_close)
                await self._closing_event.wait()
                with trio.move_on_after(close_timeout):
                    await self._flushed.wait()
                    await self._reader_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._closing = True
            self._closing_event.set()
            self._incoming_send.close()
            try:
                self._sock.close()
            except OSError:  # pragma: no cover - close of a dead socket
                pass

