"""The scenarios, as one process's part of a run: its members, its measurements.

A run is split into ``procs`` parts (members ``first``..``stop`` each). Parts meet at named
barriers (:class:`Sync`): "joined" before the measured phase starts, and one per control flip, so
a part in another process starts sending only when every member everywhere is in. Member 0 (in
part 0) is the fanout sender and the flip host; part 0 also makes the flips that do not come from
the host's connection (``via`` ``api``: the v1 HTTP API; ``etcd``: a put straight into etcd).
Member ``i`` connects to ``urls[i % len(urls)]`` (several instances of a cluster, round-robin).
Every wait is bounded (``duration`` overall).
"""

from __future__ import annotations

import os
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from .client import OP_TEXT, HandshakeError, Member, Poller, Target, connect_ws, http_json
from .protocol import Meeting, WireProtocol, chat_text, get_protocol
from .report import analyse_sequence

__all__ = ["FLIP_VIA", "SCENARIOS", "FlipFailed", "Options", "PartResult", "PartSpec", "Sync",
           "run_part"]

SCENARIOS = ("fanout", "join", "idle", "flip")
#: where a flip comes from: the host's own connection, the v1 HTTP API, or a put into etcd
FLIP_VIA = ("member", "api", "etcd")
#: the flags the flips may toggle (default mic; the seed's isMute is ``not mic``)
FLIP_FLAGS = ("mic", "camera")
#: how long one member may take to be confirmed, and one flip to reach everyone
JOIN_TIMEOUT = 10.0
FLIP_TIMEOUT = 5.0
#: after everyone joined, the join notices (N² of them in one meeting) must be out of the way
#: before the measured phase: wait until nothing has arrived for SETTLE s (at most SETTLE_MAX s)
SETTLE = 0.3
SETTLE_MAX = 20.0


@dataclass(frozen=True)
class Options:
    scenario: str
    #: where meetings are created, the API is called and member 0 connects
    url: str = ""
    #: where the members connect, round-robin by index (empty: all to ``url``)
    urls: tuple[str, ...] = ()
    protocol: str = "seed"
    members: int = 100
    messages: int = 200
    #: chat messages per second; 0 sends as fast as the socket takes them
    rate: float = 0.0
    #: characters of chat text (75: frames of about 100 bytes)
    size: int = 75
    #: members per meeting (0: all in one)
    room_size: int = 0
    #: connections being opened at once (all parts together)
    concurrency: int = 100
    flips: int = 200
    #: pause between two flips (s)
    gap: float = 0.005
    procs: int = 1
    #: the cap on the whole run (s)
    duration: float = 45.0
    #: how long to wait for more deliveries once none has arrived (s)
    drain: float = 3.0
    #: idle: how long to keep the members connected once joined (s)
    hold: float = 0.0
    use_epoll: bool = True
    #: flip: where each change comes from (see FLIP_VIA)
    via: str = "member"
    #: flip --via etcd: the endpoint(s), comma-separated, and the server's key prefix
    etcd: str = ""
    etcd_prefix: str = "/rmeeting"
    #: flip: the flag toggled (FLIP_FLAGS); with ``devices_on`` (v1), every member declares its
    #: camera and mic on before the flips: what a switch costs when devices are on
    flag: str = "mic"
    devices_on: bool = False

    @property
    def member_urls(self) -> tuple[str, ...]:
        return self.urls or (self.url,)

    def room_of(self, index: int) -> int:
        return index // self.room_size if self.room_size else 0

    @property
    def meetings(self) -> int:
        return -(-self.members // self.room_size) if self.room_size else 1


@dataclass(frozen=True)
class PartSpec:
    options: Options
    index: int
    first: int
    stop: int
    meetings: tuple[Meeting, ...]


@dataclass
class PartResult:
    index: int
    members: int = 0
    joined: int = 0
    join_errors: Counter[str] = field(default_factory=Counter)
    join_ns: array[int] = field(default_factory=lambda: array("q"))
    join_first_ns: int = 0
    join_last_ns: int = 0
    deliveries: int = 0
    distinct: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    timeline: dict[int, int] = field(default_factory=dict)
    sent: int = 0
    first_send_ns: int = 0
    last_send_ns: int = 0
    last_recv_ns: int = 0
    refused: int = 0
    flip_sent_ns: list[int] = field(default_factory=list)
    #: when each flip's write was acknowledged (etcd's put or the API answered; the host's frame
    #: was in its socket)
    flip_acked_ns: list[int] = field(default_factory=list)
    flip_told_ns: list[list[int]] = field(default_factory=list)
    #: per member, when the bench's reader read each notice (``flip_told_ns``: when it arrived)
    flip_read_ns: list[list[int]] = field(default_factory=list)
    #: per flip: the text frames this part's members received in all, and the most one got
    flip_frames: list[int] = field(default_factory=list)
    flip_frames_max: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    close_codes: Counter[int] = field(default_factory=Counter)
    disconnected: int = 0
    timed_out: bool = False
    cpu_s: float = 0.0
    #: this process's CPU time and the wall time of the measured phase
    measured_cpu_s: float = 0.0
    measured_wall_s: float = 0.0


class Sync(Protocol):
    async def barrier(self, name: str) -> None:
        """Return once every part has reached ``name``."""
        ...

    def progress(self, phase: str, done: int) -> None: ...


class _Part:
    def __init__(
        self, spec: PartSpec, sync: Sync, target: Target, members_at: list[Target]
    ) -> None:
        self.spec = spec
        self.opts = spec.options
        self.sync = sync
        #: where the API is called
        self.target = target
        #: member i connects to members_at[i % len(members_at)]
        self.targets = members_at
        self.protocol: WireProtocol = get_protocol(self.opts.protocol)
        self.poller = Poller(self.protocol, use_epoll=self.opts.use_epoll,
                             arrival_stamps=self.opts.scenario == "flip")
        self.result = PartResult(spec.index, members=spec.stop - spec.first)
        self.members: list[Member] = []
        self.phase = "joining"
        self.done = 0
        self._finished = False
        self._marks: list[tuple[float, float]] = []

    def mark(self) -> None:
        """Call at the start and at the end of the measured phase."""
        self._marks.append((time.process_time(), time.monotonic()))
        if len(self._marks) == 2:
            (cpu0, wall0), (cpu1, wall1) = self._marks
            self.result.measured_cpu_s = cpu1 - cpu0
            self.result.measured_wall_s = wall1 - wall0

    def meeting_of(self, index: int) -> Meeting:
        return self.spec.meetings[self.opts.room_of(index)]

    @property
    def joined(self) -> list[Member]:
        return [m for m in self.members if m.t_joined and not m.closed]

    def member(self, index: int) -> Member | None:
        return next((m for m in self.joined if m.index == index), None)

    async def open_members(self) -> None:
        """Open this part's members, ``concurrency`` (this part's share) at a time."""
        limit = trio.Semaphore(max(1, self.opts.concurrency // self.opts.procs))
        result = self.result

        async def one(index: int) -> None:
            async with limit:
                host = self.opts.scenario == "flip" and self.opts.via == "member" and index == 0
                path = self.protocol.join_path(self.meeting_of(index), f"m{index}", host=host)
                target = self.targets[index % len(self.targets)]
                started = time.monotonic_ns()
                try:
                    with trio.fail_after(JOIN_TIMEOUT):
                        sock, leftover = await connect_ws(target, path)
                except (OSError, HandshakeError, trio.TooSlowError) as exc:
                    result.join_errors[_reason(exc)] += 1
                    return
                member = Member(index, sock)
                member.t_start = started
                self.members.append(member)
                if self.protocol.hello:
                    member.write_nowait(member.frame(OP_TEXT, self.protocol.hello))
                self.poller.add(member, leftover)
                with trio.move_on_after(JOIN_TIMEOUT):
                    await member.joined.wait()
                if member.t_joined:
                    self.done += 1
                else:
                    why = member.error_text or (
                        f"closed {member.close_code}" if member.closed else "no confirmation")
                    result.join_errors[why] += 1

        async with trio.open_nursery() as nursery:
            for index in range(self.spec.first, self.spec.stop):
                nursery.start_soon(one, index)
        ok = [m for m in self.members if m.t_joined]
        result.joined = len(ok)
        result.join_ns = array("q", (m.t_joined - m.t_start for m in ok))
        if ok:
            result.join_first_ns = min(m.t_start for m in ok)
            result.join_last_ns = max(m.t_joined for m in ok)

    async def settle(self, name: str = "settled") -> None:
        """Until no byte has arrived for SETTLE seconds, then wait for the other parts at the
        barrier ``name`` (one name per call)."""
        with trio.move_on_after(SETTLE_MAX):
            last, since = -1, time.monotonic()
            while time.monotonic() - since < SETTLE:
                if self.poller.received != last:
                    last, since = self.poller.received, time.monotonic()
                await trio.sleep(0.02)
        await self.sync.barrier(name)

    async def wait_until(self, reached: Callable[[], bool], quiet_for: float) -> None:
        """Until ``reached()``, or nothing has arrived for ``quiet_for`` seconds."""
        last_seen, last_count = time.monotonic(), -1
        while not reached():
            count = self.poller.chats + self.poller.controls
            if count != last_count:
                last_seen, last_count = time.monotonic(), count
            elif time.monotonic() - last_seen > quiet_for:
                return
            await trio.sleep(0.005)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        result = self.result
        for member in self.members:
            result.deliveries += len(member.seqs)
            distinct, duplicated, out_of_order = analyse_sequence(member.seqs)
            result.distinct += distinct
            result.duplicated += duplicated
            result.out_of_order += out_of_order
            result.latencies.extend(member.lat)
            result.errors += member.errors
            if member.error_text and len(result.error_samples) < 5:
                result.error_samples.append(member.error_text)
            if member.close_code is not None and not member.leaving:
                result.close_codes[member.close_code] += 1
        result.timeline = dict(self.poller.timeline)
        result.last_recv_ns = self.poller.last_chat_ns
        result.disconnected = self.poller.disconnected
        for member in self.members:
            self.poller.close(member)


async def _fanout(part: _Part) -> None:
    opts, result = part.opts, part.result
    await part.open_members()
    await part.sync.barrier("joined")
    await part.settle()
    part.phase, part.done = "delivering", 0
    part.mark()
    joined = part.joined
    expected = len(joined) * opts.messages
    sender = part.member(0)
    # a quiet spell shorter than two sending intervals is not the end of the run
    quiet = max(opts.drain, 2.0 / opts.rate) if opts.rate > 0 else opts.drain

    async def send() -> None:
        assert sender is not None
        frame_of, chat = sender.frame, part.protocol.chat
        errors_before = sender.errors
        start = trio.current_time()
        result.first_send_ns = time.monotonic_ns()
        for seq in range(opts.messages):
            if opts.rate > 0:
                await trio.sleep_until(start + seq / opts.rate)
            now = time.monotonic_ns()
            await sender.send(frame_of(0x1, chat(chat_text(seq, now, opts.size))))
            result.sent += 1
            result.last_send_ns = now
            if sender.closed:
                break
            if seq % 100 == 99:  # unthrottled: the socket's buffer is the only limit
                await trio.lowlevel.checkpoint()
        await part.wait_until(lambda: part.poller.chats >= expected, quiet)
        result.refused = sender.errors - errors_before

    async with trio.open_nursery() as nursery:
        if sender is not None:
            nursery.start_soon(send)

        def reached() -> bool:
            part.done = part.poller.chats
            return part.poller.chats >= expected

        await part.wait_until(reached, quiet)
        if sender is None:
            nursery.cancel_scope.cancel()
    part.mark()
    await part.sync.barrier("done")


async def _join(part: _Part) -> None:
    await part.sync.barrier("start")
    part.mark()
    await part.open_members()
    part.mark()
    await part.sync.barrier("done")


async def _idle(part: _Part) -> None:
    await part.sync.barrier("start")
    part.mark()
    await part.open_members()
    part.mark()
    part.phase = "holding"
    await part.sync.barrier("joined")  # the server's memory is read here
    await trio.sleep(part.opts.hold)
    await part.sync.barrier("done")


class FlipFailed(OSError):
    """A change could not be made: the run stops (the next one would not be a change)."""


class _Flipper(Protocol):
    async def flip(self, mute: bool) -> tuple[int, int] | None:
        """Make one change (``mute``: the seed's isMute, so the flag ``mic`` is ``not mute``);
        the monotonic ns taken just before it was written and when the write was acknowledged,
        or None if there is no host to make it (it left). Raises :class:`FlipFailed` if the
        server or etcd refused it."""
        ...

    async def aclose(self) -> None: ...


class _HostFlipper:
    """The host's own connection: the protocol's control frame."""

    def __init__(self, part: _Part) -> None:
        self.part = part
        self.host = part.member(0)
        self.meeting = part.meeting_of(0)

    async def flip(self, mute: bool) -> tuple[int, int] | None:
        host = self.host
        if host is None or host.closed:
            return None
        sent = time.monotonic_ns()
        frame = self.part.protocol.control(self.meeting, mute, self.part.opts.flag)
        await host.send(host.frame(OP_TEXT, frame))
        return sent, time.monotonic_ns()

    async def aclose(self) -> None:
        pass


class _ApiFlipper:
    """``PATCH /v1/meetings/{id}/controls`` with the host key as Bearer, one connection each."""

    def __init__(self, part: _Part) -> None:
        self.part = part
        self.meeting = part.meeting_of(0)

    async def flip(self, mute: bool) -> tuple[int, int] | None:
        meeting = self.meeting
        sent = time.monotonic_ns()
        try:
            status, answer = await http_json(
                self.part.target, "PATCH", f"/v1/meetings/{meeting.meeting_id}/controls",
                {"controls": {self.part.opts.flag: not mute}}, timeout=FLIP_TIMEOUT,
                headers={"Authorization": f"Bearer {meeting.host_key}"})
        except OSError as exc:
            status, answer = 0, str(exc)
        acked = time.monotonic_ns()
        if status != 200:
            raise FlipFailed(f"PATCH controls answered {status}: {answer}"[:300])
        return sent, acked

    async def aclose(self) -> None:
        pass


class _EtcdFlipper:
    """A put of ``<prefix>/meetings/<id>/controls/mic`` = ``true|false`` with the etcd3 client
    (synchronous gRPC), in a worker thread; the time is taken in that thread just before it."""

    def __init__(self, part: _Part) -> None:
        opts = part.opts
        if not opts.etcd:
            raise ValueError("flip --via etcd needs the etcd endpoint (--etcd or --cluster)")
        self.part = part
        self.key = (f"{opts.etcd_prefix.rstrip('/')}/meetings/{part.meeting_of(0).meeting_id}"
                    f"/controls/{opts.flag}")
        self.endpoint = opts.etcd.split(",")[0].strip()
        self.client: Any = None
        self.limiter = trio.CapacityLimiter(1)

    def _connect(self) -> Any:
        # etcd3 0.12's generated protobuf modules load only with the pure-Python runtime
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        import etcd3

        parts = urlsplit(self.endpoint if "://" in self.endpoint else "http://" + self.endpoint)
        if not parts.hostname:
            raise ValueError(f"no host in the etcd endpoint {self.endpoint!r}")
        client = etcd3.client(parts.hostname, parts.port or 2379, timeout=FLIP_TIMEOUT)
        client.get(self.key)  # fails here, not at the first flip, if etcd is not there
        return client

    def _put(self, value: str) -> tuple[int, int]:
        sent = time.monotonic_ns()
        self.client.put(self.key, value)
        return sent, time.monotonic_ns()

    async def flip(self, mute: bool) -> tuple[int, int] | None:
        try:
            if self.client is None:
                self.client = await trio.to_thread.run_sync(self._connect, limiter=self.limiter)
            return await trio.to_thread.run_sync(
                self._put, "false" if mute else "true", limiter=self.limiter)
        except (ImportError, ValueError):
            raise
        except Exception as exc:  # grpc and etcd3 errors have no common base
            raise FlipFailed(f"etcd put {self.key} at {self.endpoint}: "
                             f"{type(exc).__name__}: {exc}"[:300]) from exc

    async def aclose(self) -> None:
        if self.client is not None:
            await trio.to_thread.run_sync(self.client.close, limiter=self.limiter)
            self.client = None


_FLIPPERS: dict[str, Callable[[_Part], _Flipper]] = {
    "member": _HostFlipper, "api": _ApiFlipper, "etcd": _EtcdFlipper,
}


async def _flip(part: _Part) -> None:
    opts, result = part.opts, part.result
    await part.open_members()
    await part.sync.barrier("joined")
    await part.settle()
    if opts.devices_on:  # every member's camera and mic on: N² member_updated, then quiet
        part.phase = "devices on"
        before = sum(m.frames for m in part.joined)
        for member in part.joined:
            member.write_nowait(member.frame(OP_TEXT, part.protocol.devices_on()))
        # each member is told of every member's change (and acked its own): wait for them all
        want = before + len(part.joined) * (opts.members + 1)
        with trio.move_on_after(opts.duration / 2):
            # the poller counts frames as they come; no event fires per frame (it would cost)
            while sum(m.frames for m in part.joined) < want:  # noqa: ASYNC110
                await trio.sleep(0.05)
        await part.settle("devices on")
    part.phase, part.done = "flipping", 0
    # part 0 makes the changes; the others only count what reaches their members
    flipper = _FLIPPERS[opts.via](part) if part.spec.index == 0 else None
    part.mark()
    joined = part.joined
    try:
        for flip in range(opts.flips):
            told = trio.Event()
            want = len(joined) * (flip + 1)

            def counted(told: trio.Event = told, want: int = want) -> None:
                if part.poller.controls >= want:
                    told.set()

            part.poller.on_control = counted
            counted()
            frames_before = [m.frames for m in joined]
            made = await flipper.flip(flip % 2 == 0) if flipper is not None else None
            if made is not None:
                result.flip_sent_ns.append(made[0])
                result.flip_acked_ns.append(made[1])
            with trio.move_on_after(FLIP_TIMEOUT):
                await told.wait()
            if opts.devices_on:  # what else the change costs arrives after it: let it come
                await part.settle(f"settled {flip}")
            got = [m.frames - before for m, before in zip(joined, frames_before, strict=True)]
            result.flip_frames.append(sum(got))
            result.flip_frames_max.append(max(got, default=0))
            await part.sync.barrier(f"flip {flip}")
            part.done = flip + 1
            await trio.sleep(opts.gap)
    finally:
        if flipper is not None:
            with trio.CancelScope(shield=True):
                await flipper.aclose()
    part.mark()
    result.flip_told_ns = [m.controls for m in joined]
    result.flip_read_ns = [m.controls_read for m in joined]
    await part.sync.barrier("done")


_RUN: dict[str, Callable[[_Part], Awaitable[None]]] = {
    "fanout": _fanout, "join": _join, "idle": _idle, "flip": _flip,
}


async def run_part(spec: PartSpec, sync: Sync) -> PartResult:
    """Run one part of a scenario against ``spec.options.url``; bounded by ``duration``."""
    cpu_start = time.process_time()
    targets = [await Target.resolve(url) for url in spec.options.member_urls]
    part = _Part(spec, sync, await Target.resolve(spec.options.url), targets)
    try:
        with trio.move_on_after(spec.options.duration) as cap:
            async with trio.open_nursery() as nursery:
                await nursery.start(part.poller.run)

                async def report() -> None:
                    while True:
                        sync.progress(part.phase, part.done)
                        await trio.sleep(0.2)

                nursery.start_soon(report)
                await _RUN[spec.options.scenario](part)
                sync.progress(part.phase, part.done)
                part.finish()
                nursery.cancel_scope.cancel()
    finally:  # a run that failed leaves no connection open
        for member in part.members:
            part.poller.close(member)
    if cap.cancelled_caught:
        part.result.timed_out = True
        part.finish()
    part.result.cpu_s = time.process_time() - cpu_start
    return part.result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "handshake timed out"
    if isinstance(exc, HandshakeError):
        return str(exc)[:200]
    return f"{type(exc).__name__}: {exc}"[:200]
