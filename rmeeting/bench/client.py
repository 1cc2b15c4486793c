"""A lean WebSocket client for many members: raw non-blocking sockets, one epoll per process.

trio-websocket costs a task, a wsproto parser and a channel per connection; a thousand of them on
one core would measure the client, not the server. Here every member is a plain socket and a few
slots (:class:`Member`). A :class:`Poller` registers them all in one ``select.epoll`` and waits on
that epoll's own descriptor with ``trio.lowlevel.wait_readable``, so one Trio wake-up serves every
member that has data, with one ``recv`` each, and every complete frame in that buffer is parsed in
one pass (:meth:`Poller.feed`). Chat frames are recognised by the protocol's pattern at the start
of the payload; nothing is JSON-decoded on that path.

With ``arrival_stamps`` (the flip scenario), each ``recv`` also takes the kernel's receive time
stamp of what it read (``SO_TIMESTAMPNS``): when the frame reached the member's socket, which
is when a member with a reader of its own would have it, whatever this one reader is busy with.
A control notice is timed by it (``Member.controls``) and by when this reader got to it
(``Member.controls_read``). Linux turns receive stamps on a moment after the first socket asks
(a deferred switch); what arrives before that is stamped when read, so the flips start only
after the members joined and settled.

Server frames are unmasked; client frames are masked (RFC 6455 5.3) with a random key drawn once
per connection. Where there is no epoll (not Linux), each member gets a reader task instead.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import select
import socket
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

from .protocol import WireProtocol
from .report import BUCKET_NS

__all__ = ["HandshakeError", "Member", "Poller", "Target", "connect_ws", "http_json"]

RECV_SIZE = 1 << 18
#: Linux's SO_TIMESTAMPNS (the socket module does not name it); its control message has the
#: same number and carries a struct timespec of CLOCK_REALTIME
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_ANC_SIZE = socket.CMSG_SPACE(16)
MAX_HEAD = 65536
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server did not switch to WebSocket; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status


@dataclass(frozen=True)
class Target:
    """The server under test: where to connect, and the Host header to send."""

    host: str
    port: int
    family: int
    sockaddr: tuple[Any, ...]

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    async def resolve(cls, url: str) -> Target:
        parts = urlsplit(url if "//" in url else "http://" + url)
        if parts.scheme not in ("http", "ws"):
            raise ValueError(f"only http:// and ws:// URLs are supported, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        port = parts.port or 80
        infos = await trio.socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        family, _type, _proto, _name, sockaddr = infos[0]
        return cls(parts.hostname, port, int(family), tuple(sockaddr))


async def http_json(
    target: Target, method: str, path: str, body: Any = None, *, timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP/1.1 request with a JSON body, ``Connection: close``; (status, decoded JSON)."""
    data = b"" if body is None else json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"{method} {path} HTTP/1.1\r\nHost: {target.authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode()
    raw = b""
    eof = False
    with trio.move_on_after(timeout):
        sock = trio.socket.socket(target.family, socket.SOCK_STREAM)
        await sock.connect(target.sockaddr)
        async with trio.SocketStream(sock) as stream:
            await stream.send_all(head + data)
            while not _complete(raw):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    eof = True
                    break
                raw += chunk
    if not (_complete(raw) or (eof and raw.startswith(b"HTTP/") and b"\r\n\r\n" in raw)):
        raise OSError(f"{method} {path}: no complete answer from {target.authority} "
                      f"in {timeout:.0f} s")
    status_line, _, rest = raw.partition(b"\r\n")
    answer_head, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in answer_head.lower():
        payload = _dechunk(payload)
    try:
        return status, json.loads(payload) if payload.strip() else None
    except ValueError:
        return status, payload.decode("utf-8", "replace")


def _complete(raw: bytes) -> bool:
    """Whether ``raw`` holds a whole HTTP answer (by Content-Length or the last chunk)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or not raw.startswith(b"HTTP/"):
        return False
    headers = raw[:end].lower()
    found = re.search(rb"\r\ncontent-length:\s*(\d+)", headers)
    if found:
        return len(raw) - end - 4 >= int(found[1])
    if b"transfer-encoding: chunked" in headers:
        return raw.endswith(b"0\r\n\r\n")
    return False  # delimited by the end of the connection


def _dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while True:
        line_end = data.find(b"\r\n", i)
        if line_end < 0:
            break
        size = int(data[i:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(data[line_end + 2:line_end + 2 + size])
        i = line_end + 4 + size
    return b"".join(out)


async def connect_ws(target: Target, path: str) -> tuple[socket.socket, bytes]:
    """Open a WebSocket: (the connected non-blocking socket, bytes that came after the head)."""
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(target.sockaddr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        if err:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        key = base64.b64encode(os.urandom(16))
        sock.send(  # a few hundred bytes into an empty buffer
            f"GET {path} HTTP/1.1\r\nHost: {target.authority}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                raise HandshakeError(0, "answer head too long")
            await trio.lowlevel.wait_readable(sock)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise HandshakeError(0, "connection closed during the handshake")
            buf += chunk
        head, rest = buf[:end], buf[end + 4:]
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if status != 101:
            raise HandshakeError(status, rest[:200].decode("utf-8", "replace") or "refused")
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        if accept.lower() not in head.lower():
            raise HandshakeError(status, "bad Sec-WebSocket-Accept")
        return sock, rest
    except BaseException:
        sock.close()
        raise


class Member:
    """One connection and what it received: chat sequence numbers and their latencies (ns)."""

    __slots__ = ("index", "sock", "fd", "mask", "_key", "pending", "out", "seqs", "lat",
                 "t_start", "t_joined", "joined", "controls", "errors", "error_text",
                 "close_code", "closed", "leaving", "frames", "controls_read")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.mask = os.urandom(4)
        self._key = self.mask * 1024  # the mask repeated, sliced for each payload
        self.pending: bytes | bytearray = b""
        self.out = b""
        self.seqs = array("q")
        self.lat = array("q")
        self.t_start = 0
        self.t_joined = 0
        self.joined = trio.Event()
        #: when each control-change notice arrived (ns, monotonic), in order: at the socket
        #: (the kernel's stamp) with ``arrival_stamps``, else when it was read
        self.controls: list[int] = []
        #: when this process read each of them
        self.controls_read: list[int] = []
        self.errors = 0
        self.error_text = ""
        self.close_code: int | None = None
        self.closed = False
        self.leaving = False
        #: text frames received (every kind): what one change costs each member
        self.frames = 0

    def frame(self, opcode: int, payload: bytes | bytearray) -> bytes:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
        key = self._key if n <= len(self._key) else self.mask * (n // 4 + 1)
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key[:n], "little"))
        return head + self.mask + masked.to_bytes(n, "little")

    def write_nowait(self, data: bytes) -> None:
        """Send what the kernel takes now; the rest waits, in order, in ``out``."""
        self.out += data
        self.flush()

    def flush(self) -> None:
        if self.closed or not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.out = b""
            return
        self.out = self.out[sent:]

    async def send(self, data: bytes) -> None:
        """Send a frame, waiting for the socket as needed (the sender's and host's path)."""
        self.write_nowait(data)
        while self.out and not self.closed:
            await trio.lowlevel.wait_writable(self.sock)
            self.flush()


class Poller:
    """Reads every registered member; counts chat deliveries and notices as they arrive."""

    def __init__(
        self, protocol: WireProtocol, *, use_epoll: bool = True, arrival_stamps: bool = False
    ) -> None:
        self._match = protocol.chat_re.match
        self._kinds = protocol.kinds
        self._pong = protocol.pong
        self.members: dict[int, Member] = {}
        self._epoll = select.epoll() if use_epoll and hasattr(select, "epoll") else None
        self._nursery: trio.Nursery | None = None
        #: where every recv lands; what arrived is copied out (only its own length)
        self._buf = bytearray(RECV_SIZE)
        #: bytes read, all members together
        self.received = 0
        self.chats = 0
        self.last_chat_ns = 0
        #: deliveries per BUCKET_NS slot of the monotonic clock
        self.timeline: dict[int, int] = {}
        self.controls = 0
        self.on_control: Callable[[], None] | None = None
        #: other members' join notices seen (all members together)
        self.join_notices = 0
        #: members whose connection ended without the bench closing it
        self.disconnected = 0
        self._stamps = arrival_stamps and hasattr(socket.socket, "recvmsg_into")
        #: the kernel's receive time of what the last recv read (monotonic ns; 0: none)
        self._arrived = 0
        #: CLOCK_REALTIME minus CLOCK_MONOTONIC, to put the kernel's stamps on the bench's clock
        self._realtime_offset = time.time_ns() - time.monotonic_ns()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            epoll = self._epoll
            if epoll is None:
                await trio.sleep_forever()
                return
            members, feed, clock = self.members, self.feed, time.monotonic_ns
            buf = self._buf
            try:
                while True:
                    await trio.lowlevel.wait_readable(epoll)
                    for fd, _events in epoll.poll(0):
                        member = members.get(fd)
                        if member is None:
                            continue
                        try:
                            n = self._recv(member.sock, buf)
                        except BlockingIOError:
                            continue
                        except OSError:
                            n = 0
                        if not n:
                            self._eof(member)
                            continue
                        self.received += n
                        if member.out:
                            member.flush()
                        feed(member, buf[:n], clock())
            finally:
                epoll.close()

    def add(self, member: Member, leftover: bytes) -> None:
        self.members[member.fd] = member
        if self._stamps:
            member.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if leftover:
            self.feed(member, leftover, time.monotonic_ns())
        if member.closed:
            return
        if self._epoll is not None:
            self._epoll.register(member.fd, select.EPOLLIN)
        else:
            assert self._nursery is not None, "Poller.run first"
            self._nursery.start_soon(self._reader, member)

    async def _reader(self, member: Member) -> None:
        try:
            while not member.closed:
                await trio.lowlevel.wait_readable(member.sock)
                self._read(member)
        except trio.ClosedResourceError:
            pass

    def close(self, member: Member, *, code: int = 1000) -> None:
        """End a member's connection (a close frame if it can go, then the socket)."""
        if member.closed:
            return
        member.leaving = True
        member.write_nowait(member.frame(OP_CLOSE, struct.pack("!H", code)))
        self._drop(member)

    def _drop(self, member: Member) -> None:
        member.closed = True
        member.joined.set()
        self.members.pop(member.fd, None)
        if self._epoll is not None:
            try:
                self._epoll.unregister(member.fd)
            except (OSError, ValueError):
                pass
        else:
            trio.lowlevel.notify_closing(member.sock)
        member.sock.close()

    def _recv(self, sock: socket.socket, buf: bytearray) -> int:
        if not self._stamps:
            return sock.recv_into(buf)
        n, ancillary, _flags, _address = sock.recvmsg_into([buf], _ANC_SIZE)
        self._arrived = 0
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                self._arrived = seconds * 1_000_000_000 + nanoseconds - self._realtime_offset
        return n

    def _read(self, member: Member) -> None:
        try:
            n = self._recv(member.sock, self._buf)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self._eof(member)
            return
        self.received += n
        if member.out:
            member.flush()
        self.feed(member, self._buf[:n], time.monotonic_ns())

    def _eof(self, member: Member) -> None:
        if not member.leaving:
            self.disconnected += 1
        self._drop(member)

    def feed(self, member: Member, data: bytes | bytearray, now: int) -> None:
        """Parse every complete frame in what arrived; keep a partial one for next time."""
        buf = member.pending + data if member.pending else data
        n = len(buf)
        i = got = 0
        match = self._match
        seqs, lat = member.seqs, member.lat
        while n - i >= 2:
            size = buf[i + 1]
            if size < 126:
                start = i + 2
            elif size == 126:
                start = i + 4
                if start > n:
                    break
                size = int.from_bytes(buf[i + 2:start], "big")
            elif size == 127:
                start = i + 10
                if start > n:
                    break
                size = int.from_bytes(buf[i + 2:start], "big")
            else:  # a masked frame from the server: a protocol error
                member.error_text = "the server sent a masked frame"
                member.errors += 1
                self._drop(member)
                return
            end = start + size
            if end > n:
                break
            opcode = buf[i] & 0x0F
            if opcode == OP_TEXT:
                member.frames += 1
                found = match(buf, start, end)
                if found is not None:
                    seqs.append(int(found[1]))
                    lat.append(now - int(found[2]))
                    got += 1
                else:
                    self._notice(member, buf, start, end, now)
            elif opcode >= OP_CLOSE:
                self._control_frame(member, opcode, buf[start:end])
                if member.closed:
                    return
            i = end
        member.pending = buf[i:] if i < n else b""
        if got:
            self.chats += got
            self.last_chat_ns = now
            slot = now // BUCKET_NS
            self.timeline[slot] = self.timeline.get(slot, 0) + got

    def _notice(
        self, member: Member, buf: bytes | bytearray, start: int, end: int, now: int
    ) -> None:
        for prefix, kind in self._kinds:
            if buf.startswith(prefix, start):
                if kind == "joined":  # the commonest: first
                    self.join_notices += 1
                elif kind == "welcome":
                    if not member.t_joined:
                        member.t_joined = now
                        member.joined.set()
                elif kind == "control":
                    member.controls.append(self._arrived or now)
                    member.controls_read.append(now)
                    self.controls += 1
                    if self.on_control is not None:
                        self.on_control()
                elif kind == "joined_many":  # a v1 members_changed: joins (and leaves)
                    self.join_notices += max(1, buf.count(b'"member_joined"', start, end))
                elif kind == "ping":
                    member.write_nowait(member.frame(OP_TEXT, self._pong))
                elif kind == "error":
                    member.errors += 1
                    member.error_text = buf[start:min(end, start + 300)].decode("utf-8", "replace")
                return

    def _control_frame(self, member: Member, opcode: int, payload: bytes | bytearray) -> None:
        if opcode == OP_PING:
            member.write_nowait(member.frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            member.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not member.leaving:
                self.disconnected += 1
                member.leaving = True
                member.write_nowait(member.frame(OP_CLOSE, payload[:2]))
            self._drop(member)
