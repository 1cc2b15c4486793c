"""The hub: this instance's members, grouped by meeting, fanned out by K shard tasks.

A meeting hashes (crc32) to one shard, and everything for that meeting (attach, detach, chat,
joins, control changes) passes through that shard's channel, so one meeting's events reach its
members in one order. Fan-out never waits on a member: frames are written without blocking
(:meth:`Outlet.send_frame_nowait`), so a shard's time goes to encoding and syscalls only, and one
meeting cannot hold another up behind a slow client.

Each event is encoded once per protocol present in the meeting, never once per member, by the
encoders the hub is given (:class:`Encoder`; the wire modules own every byte format).

Overflow policy of a shard's inbox: bounded (``inbox_size``); a producer waits when it is full.
Producers are the store event tasks and joining/leaving sessions, so a saturated shard slows
the intake of new events, never drops one.

Coalescing: when the shard wakes it takes every op already waiting in its inbox (at most
``MAX_BATCH``), and the frames one member gets from them go out in one ``send`` (the frames one
after the other, each complete): in a join storm a member gets the notices of many joins for the
price of one write. No timer ever waits for a batch to form. Before it takes a batch the shard
lets the scheduler run a round (``GROW_TICKS``): if ops came in meanwhile, the tasks making
them are running right now (a join storm, a burst of chat), and it lets them run another round,
as long as the rounds bring more, up to ``GROW_TICKS`` rounds or a full batch. A lone op costs
two rounds of the scheduler (microseconds on an idle instance), so latency at low rates does not
move; under a storm, each member gets one write for many joins instead of one for two or three.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, assert_never

import trio

from .closes import Close
from .controls import Controls
from .events import (
    ChatPosted,
    ControlsChanged,
    HubEvent,
    LobbyChanged,
    MeetingEnded,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Notice,
)
from .moderation import view_event
from .records import MemberRecord

__all__ = ["MAX_BATCH", "Encoder", "Holder", "Hub", "Outlet", "Subscriber"]

log = logging.getLogger("rmeeting.hub")

#: ops a shard takes from its inbox in one go (what is already there, never waited for); their
#: frames are written per member in one ``send``. Bounds the bytes held per member meanwhile.
MAX_BATCH = 64
#: rounds of the scheduler a shard lets run before taking a batch, while each brings more ops
#: (see the module's docstring); measured in docs/benchmarks.md ("Round two, fourth pass")
GROW_TICKS = 16


class Encoder(Protocol):
    """One protocol's byte format, as the hub needs it (``rmeeting.wire.encoders()``)."""

    def frame(self, event: HubEvent) -> bytes | None:
        """The whole frame to write to every member of this protocol; None: nothing to say."""
        ...

    def own_join_frame(self, controls: Controls, user_uid: str) -> bytes | None:
        """A frame for the member alone, right after its own join reached it, and when its own
        flags change (``controls`` as they apply to it: ``Controls.for_member``; None: none)."""
        ...

    def roster_frame(self, events: Sequence[MemberJoined | MemberLeft]) -> bytes | None:
        """One frame for several joins and leaves of one meeting, in order, found waiting
        together in a shard; None: this protocol says each on its own (the seed's)."""
        ...


class Outlet(Protocol):
    """Where a member's frames go (a :class:`rmeeting.transport.websocket.WebSocket`)."""

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Write ``frame``: one or more whole encoded frames, back to back (the hub joins a
        member's frames of one batch into one write)."""
        ...

    def close_nowait(self, code: int = Close.NORMAL, reason: str = "") -> None: ...


class Holder(Protocol):
    """Takes a member's frames, with the event each one encodes, instead of its outlet (the v1
    welcome holds what arrives while it is being put together)."""

    def hold(self, event: HubEvent, frame: bytes) -> None: ...


@dataclass(eq=False)
class Subscriber:
    """One member's connection, as the hub sees it."""

    meeting_id: str
    member_id: str
    protocol: str
    outlet: Outlet
    #: seed: the member's userUid, for its encoder's frame after its own join (the room state)
    user_uid: str = ""
    #: v1: chat up to this seq was in the welcome snapshot; later copies are skipped
    skip_chat_upto: int = 0
    #: while set, the member's event frames go here instead of to ``outlet``
    held: Holder | None = None
    #: set when the server ended this presence (leave via API, kick, replaced, meeting ended),
    #: so the session does not record a second leave for it
    evicted: bool = False
    #: this presence as the member store has it (its ``joined_at`` tells it from a newer
    #: presence of the same member); ``registered`` once the store has it, ``gone`` once the
    #: session is over. The liveness code re-registers presences the store has lost.
    record: MemberRecord | None = None
    registered: bool = False
    gone: bool = False
    _awaiting_join: bool = field(default=True, repr=False)


# --- what a shard's inbox carries ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attach:
    sub: Subscriber
    controls: Controls


@dataclass(frozen=True, slots=True)
class _Detach:
    sub: Subscriber


@dataclass(frozen=True, slots=True)
class _Deliver:
    event: HubEvent


@dataclass(frozen=True, slots=True)
class _CloseAll:
    code: Close
    reason: str


@dataclass(frozen=True, slots=True)
class _SetSeq:
    meeting_id: str
    seq: int


_ShardOp = _Attach | _Detach | _Deliver | _CloseAll | _SetSeq


def _roster_event(op: _ShardOp, meeting_id: str | None) -> MemberJoined | MemberLeft | None:
    """The op's join or leave (one that closes nobody), if of ``meeting_id`` (None: any)."""
    if not isinstance(op, _Deliver):
        return None
    event = op.event
    if isinstance(event, MemberJoined) or (isinstance(event, MemberLeft) and event.close is None):
        if meeting_id is None or event.meeting_id == meeting_id:
            return event
    return None


def _roster_run(batch: Sequence[_ShardOp], start: int) -> list[MemberJoined | MemberLeft]:
    """Two or more joins/leaves of one meeting, one after the other in ``batch`` from
    ``start`` (nothing else of any meeting between them); else []."""
    first = _roster_event(batch[start], None)
    if first is None:
        return []
    run = [first]
    for op in batch[start + 1:]:
        event = _roster_event(op, first.meeting_id)
        if event is None:
            break
        run.append(event)
    return run if len(run) > 1 else []


class _Meeting:
    __slots__ = ("by_protocol", "controls", "holding", "last_seq", "since")

    def __init__(self, controls: Controls, protocols: Iterable[str]) -> None:
        self.by_protocol: dict[str, dict[str, Subscriber]] = {p: {} for p in protocols}
        self.controls = controls
        #: the last chat seq fanned out: chat at or below it is a copy (a relay catch-up after
        #: an outage re-delivers from history) and is dropped
        self.last_seq = 0
        #: since when (epoch seconds) this instance has members of it
        self.since = time.time()
        #: some member may have ``held`` set: the fan-out checks each member only then (set on
        #: attach, cleared by the fan-out once it finds none), so the common case costs nothing
        self.holding = False

    def __len__(self) -> int:
        return sum(len(m) for m in self.by_protocol.values())

    def find(self, member_id: str) -> Subscriber | None:
        for members in self.by_protocol.values():
            sub = members.get(member_id)
            if sub is not None:
                return sub
        return None


class _Shard:
    def __init__(
        self,
        index: int,
        inbox_size: int,
        on_change: Callable[[int], None],
        encoders: Mapping[str, Encoder],
    ) -> None:
        self.index = index
        self._on_change = on_change
        self._encoders = encoders
        self.meetings: dict[str, _Meeting] = {}
        self.send, self.receive = trio.open_memory_channel[_ShardOp](inbox_size)
        self.delivered = 0
        #: wake-ups, ops taken in batches of more than one, frames that shared a write
        self.batches = self.batched_ops = self.coalesced = 0
        #: scheduler rounds the shard let run because its inbox was still growing
        self.grow_ticks = 0
        #: frames that said several joins/leaves at once (``Encoder.roster_frame``)
        self.roster_frames = 0
        #: during a batch: each member's frames, written once the batch is done
        self._pending: dict[Subscriber, list[bytes]] | None = None
        #: called after a control change was fanned out (the propagation metric)
        self.on_controls: Callable[[ControlsChanged], None] | None = None

    async def run(self) -> None:
        async for op in self.receive:
            await self._let_batch_grow()
            batch = [op]
            while len(batch) < MAX_BATCH:  # what is already waiting, never more
                try:
                    batch.append(self.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self.batches += 1
            if len(batch) == 1:
                self._apply(op)
                continue
            self.batched_ops += len(batch)
            # no checkpoint from here to the flush: no other task writes to a member meanwhile
            self._pending = {}
            try:
                i = 0
                while i < len(batch):
                    run = _roster_run(batch, i)
                    if run:
                        self._roster(run)
                        i += len(run)
                    else:
                        self._apply(batch[i])
                        i += 1
            finally:
                pending, self._pending = self._pending, None
                for sub, frames in pending.items():
                    self._write(sub, frames)

    async def _let_batch_grow(self) -> None:
        """Let the tasks already making ops run, one scheduler round at a time, while each
        round adds to the inbox (at most ``GROW_TICKS`` rounds, or until a batch is full)."""
        waiting = self.receive.statistics().current_buffer_used
        quiet = 0
        for _ in range(GROW_TICKS):
            if waiting + 1 >= MAX_BATCH:
                return
            await trio.lowlevel.cancel_shielded_checkpoint()
            now = self.receive.statistics().current_buffer_used
            if now > waiting:
                waiting, quiet = now, 0
                self.grow_ticks += 1
                continue
            # Trio runs a round's tasks in one order or its reverse, at random: a producer
            # that ran just before this check in one round may run just after it in the next,
            # so one round without news is not yet the end of a storm; two are
            quiet += 1
            if quiet == 2:
                return

    def _apply(self, op: _ShardOp) -> None:
        try:
            match op:
                case _Deliver(event):
                    self._event(event)
                case _Attach(sub, controls):
                    self._attach(sub, controls)
                case _Detach(sub):
                    self._detach(sub)
                case _CloseAll(code, reason):
                    self._close_all(code, reason)
                case _SetSeq(meeting_id, seq):
                    meeting = self.meetings.get(meeting_id)
                    if meeting is not None:
                        meeting.last_seq = seq
                case _:
                    assert_never(op)
        except Exception:  # one bad event must not take the shard (and its meetings) down
            log.exception("shard %d failed on %r", self.index, op)

    def _write(self, sub: Subscriber, frames: list[bytes]) -> None:
        if len(frames) > 1:
            self.coalesced += len(frames) - 1
        sub.outlet.send_frame_nowait(frames[0] if len(frames) == 1 else b"".join(frames))

    def _send(self, sub: Subscriber, frame: bytes) -> None:
        """Write ``frame`` to the member now, or (in a batch) after the batch's other frames
        for it, in one write."""
        pending = self._pending
        if pending is None:
            sub.outlet.send_frame_nowait(frame)
            return
        frames = pending.get(sub)
        if frames is None:
            pending[sub] = [frame]
        else:
            frames.append(frame)

    def _close(self, sub: Subscriber, code: Close, reason: str) -> None:
        """Close the member's connection after what the batch already has for it."""
        if self._pending is not None:
            frames = self._pending.pop(sub, None)
            if frames is not None:
                self._write(sub, frames)
        sub.outlet.close_nowait(code, reason)

    def _attach(self, sub: Subscriber, controls: Controls) -> None:
        meeting = self.meetings.get(sub.meeting_id)
        if meeting is None:
            meeting = self.meetings[sub.meeting_id] = _Meeting(controls, self._encoders)
        elif controls.revision > meeting.controls.revision:
            meeting.controls = controls
        old = meeting.by_protocol[sub.protocol].get(sub.member_id)
        if old is not None and old is not sub:
            old.evicted = True
            self._close(old, Close.REPLACED, "replaced by a newer connection")
        else:
            self._on_change(+1)
        meeting.by_protocol[sub.protocol][sub.member_id] = sub
        if sub.held is not None:
            meeting.holding = True

    def _detach(self, sub: Subscriber) -> None:
        meeting = self.meetings.get(sub.meeting_id)
        if meeting is None:
            return
        members = meeting.by_protocol[sub.protocol]
        if members.get(sub.member_id) is sub:
            del members[sub.member_id]
            self._on_change(-1)
        if not len(meeting):
            del self.meetings[sub.meeting_id]

    def _roster(self, events: list[MemberJoined | MemberLeft]) -> None:
        """Joins and leaves of one meeting, found together: one frame for the protocols that
        have one (``Encoder.roster_frame``), each event on its own for the others."""
        try:
            meeting = self.meetings.get(events[0].meeting_id)
            if meeting is None:
                return
            # as _event shows a join: roles and devices as the flags now say
            viewed = [view_event(e, meeting.controls) if isinstance(e, MemberJoined) else e
                      for e in events]
            combined: dict[str, bytes] = {}
            for protocol, members in meeting.by_protocol.items():
                frame = self._encoders[protocol].roster_frame(viewed) if members else None
                if frame is not None:
                    combined[protocol] = frame
            for event in events:  # the other protocols, and what follows a join or a leave
                self._event(event, skip=combined)
            events = viewed
            for protocol, frame in combined.items():
                members = meeting.by_protocol[protocol]
                self.delivered += len(members) * len(events)
                self.roster_frames += 1
                singles: list[bytes | None] = [None] * len(events)
                for sub in members.values():
                    if sub.held is None:
                        self._send(sub, frame)
                        continue
                    for k, event in enumerate(events):  # a welcome being made filters each
                        single = singles[k]
                        if single is None:
                            single = singles[k] = self._encoders[protocol].frame(event) or b""
                        if single:
                            sub.held.hold(event, single)
        except Exception:  # as in _apply: the shard goes on
            log.exception("shard %d failed on roster changes of %s", self.index,
                          events[0].meeting_id)

    def _event(self, event: HubEvent, skip: Mapping[str, bytes] | None = None) -> None:
        meeting = self.meetings.get(event.meeting_id)
        if meeting is None:
            return
        seq = 0
        if isinstance(event, ChatPosted):
            seq = event.seq
            if seq <= meeting.last_seq:
                return  # a copy (a relay catch-up re-delivers from history)
            meeting.last_seq = seq
        elif isinstance(event, ControlsChanged):
            if event.controls.revision < meeting.controls.revision:
                return  # older than what members already have (a late duplicate)
            meeting.controls = event.controls
        elif isinstance(event, MemberJoined):
            # roles and devices as the flags now say (a switch since it was published shows)
            event = view_event(event, meeting.controls)
        elif isinstance(event, MemberUpdated):
            event = view_event(event, meeting.controls)
        holding = False
        for protocol, members in meeting.by_protocol.items():
            if not members or (skip and protocol in skip):
                continue
            frame = self._encoders[protocol].frame(event)
            if frame is None:
                continue
            pending = self._pending
            lobby_only = isinstance(event, LobbyChanged)  # the hosts' (and co-hosts') business
            if not meeting.holding and pending is None:
                for sub in members.values():
                    if seq and sub.skip_chat_upto >= seq:
                        continue
                    if lobby_only and not _moderates(sub):
                        continue
                    sub.outlet.send_frame_nowait(frame)
            elif not meeting.holding and pending is not None:
                for sub in members.values():
                    if seq and sub.skip_chat_upto >= seq:
                        continue
                    if lobby_only and not _moderates(sub):
                        continue
                    frames = pending.get(sub)
                    if frames is None:
                        pending[sub] = [frame]
                    else:
                        frames.append(frame)
            else:
                for sub in members.values():
                    if seq and sub.skip_chat_upto >= seq:
                        continue
                    if lobby_only and not _moderates(sub):
                        continue
                    if sub.held is None:
                        self._send(sub, frame)
                    else:
                        holding = True
                        sub.held.hold(event, frame)
            self.delivered += len(members)
        if meeting.holding and not holding:
            meeting.holding = any(sub.held is not None for members in meeting.by_protocol.values()
                                  for sub in members.values())
        match event:
            case MemberJoined():
                self._after_join(meeting, event)
            case MemberLeft():
                self._after_leave(meeting, event)
            case MeetingEnded():
                self._close_meeting(event.meeting_id, meeting, Close.MEETING_ENDED,
                                    "meeting ended")
            case ControlsChanged():
                self._tell_members_own(meeting, event)
                if self.on_controls is not None:
                    self.on_controls(event)
            case ChatPosted() | MemberUpdated() | Notice() | LobbyChanged():
                pass
            case _:
                assert_never(event)

    def _after_join(self, meeting: _Meeting, event: MemberJoined) -> None:
        sub = meeting.find(event.member_id)
        if sub is None or not sub._awaiting_join:
            return
        sub._awaiting_join = False
        frame = self._encoders[sub.protocol].own_join_frame(
            meeting.controls.for_member(sub.member_id), sub.user_uid)
        if frame is not None:
            self._send(sub, frame)

    def _tell_members_own(self, meeting: _Meeting, event: ControlsChanged) -> None:
        """Members whose own flags changed get the frame their protocol has for the flags as
        they apply to them (the seed's room state; v1 said it all in the event)."""
        for member_id in event.member_changed:
            sub = meeting.find(member_id)
            if sub is None:
                continue
            frame = self._encoders[sub.protocol].own_join_frame(
                event.controls.for_member(member_id), sub.user_uid)
            if frame is not None:
                self._send(sub, frame)

    def _after_leave(self, meeting: _Meeting, event: MemberLeft) -> None:
        if event.close is None:
            return
        sub = meeting.find(event.member_id)
        if sub is None:
            return
        if sub.record is not None and sub.record.joined_at != event.joined_at:
            return  # a newer presence of the member (it reconnected here): not this one
        code, reason = event.close
        sub.evicted = True
        self._close(sub, code, reason)

    def _close_meeting(self, meeting_id: str, meeting: _Meeting, code: Close, reason: str) -> None:
        for members in meeting.by_protocol.values():
            for sub in members.values():
                sub.evicted = True
                self._close(sub, code, reason)
        if self.meetings.pop(meeting_id, None) is not None:
            # their detach will find no meeting: count them out now, or a drain waits forever
            self._on_change(-len(meeting))

    def _close_all(self, code: Close, reason: str) -> None:
        for meeting in self.meetings.values():
            for members in meeting.by_protocol.values():
                for sub in members.values():
                    self._close(sub, code, reason)


def _moderates(sub: Subscriber) -> bool:
    return sub.record is not None and sub.record.role in ("host", "cohost")


class Hub:
    def __init__(
        self,
        shards: int = 8,
        *,
        encoders: Mapping[str, Encoder],
        inbox_size: int = 4096,
        on_controls_delivered: Callable[[ControlsChanged], None] | None = None,
    ) -> None:
        """``encoders``: by the ``protocol`` of a :class:`Subscriber`, each protocol's frames."""
        if shards < 1:
            raise ValueError("need at least one shard")
        self._shards = [_Shard(i, inbox_size, self._count, encoders) for i in range(shards)]
        for shard in self._shards:
            shard.on_controls = on_controls_delivered
        #: times a producer found a shard's inbox full and had to wait
        self.inbox_full = 0
        self._members = 0
        self._empty = trio.Event()
        self._empty.set()
        #: every attached connection, from attach until detach, kept here in the caller's task
        #: (not in a shard) so that it is current the moment attach returns
        self._local: set[Subscriber] = set()

    def _count(self, delta: int) -> None:
        self._members += delta
        if self._members == 0:
            self._empty.set()
        elif self._empty.is_set():
            self._empty = trio.Event()

    async def wait_empty(self) -> None:
        """Return once no member is attached (used by the graceful drain)."""
        while self._members:
            await self._empty.wait()

    def _shard(self, meeting_id: str) -> _Shard:
        return self._shards[zlib.crc32(meeting_id.encode()) % len(self._shards)]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for shard in self._shards:
                nursery.start_soon(shard.run)
            task_status.started()

    async def _put(self, shard: _Shard, item: _ShardOp) -> None:
        """``shard.send.send(item)``, counting the times it has to wait."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            shard.send.send_nowait(item)
        except trio.WouldBlock:
            self.inbox_full += 1  # the inbox's overflow policy: wait (module docstring)
            await shard.send.send(item)
        else:
            # what MemorySendChannel.send does after queueing: yield, but never cancel a sent item
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def attach(self, sub: Subscriber, controls: Controls) -> None:
        self._local.add(sub)
        await self._put(self._shard(sub.meeting_id), _Attach(sub, controls))

    async def detach(self, sub: Subscriber) -> None:
        self._local.discard(sub)
        await self._put(self._shard(sub.meeting_id), _Detach(sub))

    async def deliver(self, event: HubEvent) -> None:
        """Queue ``event`` for its meeting's shard. When the inbox has room this returns
        without yielding (it is a checkpoint only if cancelled or full): a producer handing on
        several events it already holds (a bus or a watch draining its queue) puts them all in
        before the shard runs, and the shard writes them to each member in one ``send``. Its
        own loop must checkpoint (a channel's ``receive`` does)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        shard = self._shard(event.meeting_id)
        try:
            shard.send.send_nowait(_Deliver(event))
        except trio.WouldBlock:
            self.inbox_full += 1  # the inbox's overflow policy: wait (module docstring)
            await shard.send.send(_Deliver(event))

    async def close_all(self, code: Close, reason: str) -> None:
        for shard in self._shards:
            await self._put(shard, _CloseAll(code, reason))

    async def set_last_seq(self, meeting_id: str, seq: int) -> None:
        """Set the meeting's last delivered chat seq (in order with its events); only for a
        chat log that restarted its numbering (a Redis that lost its data)."""
        await self._put(self._shard(meeting_id), _SetSeq(meeting_id, seq))

    def controls_of(self, meeting_id: str) -> Controls | None:
        """The controls this instance's members of the meeting were last told (None if it has
        none): what the chat check uses, so no store round trip is paid per message."""
        meeting = self._shard(meeting_id).meetings.get(meeting_id)
        return meeting.controls if meeting is not None else None

    def has_meeting(self, meeting_id: str) -> bool:
        return meeting_id in self._shard(meeting_id).meetings

    def subscribers(self) -> list[Subscriber]:
        """This instance's attached connections, now."""
        return list(self._local)

    def meeting_ids(self) -> list[str]:
        """The meetings this instance has members of, now."""
        return sorted({sub.meeting_id for sub in self._local})

    def chat_position(self, meeting_id: str) -> tuple[int, float]:
        """(the last chat seq fanned out to the meeting's members here, 0 if none yet; since
        when this instance has members of it)."""
        meeting = self._shard(meeting_id).meetings.get(meeting_id)
        if meeting is None:
            return 0, time.time()
        return meeting.last_seq, meeting.since

    def statistics(self) -> dict[str, int]:
        return {
            "shards": len(self._shards),
            "meetings": sum(len(s.meetings) for s in self._shards),
            "members": self._members,
            "deliveries": sum(s.delivered for s in self._shards),
            "queued": sum(s.send.statistics().current_buffer_used for s in self._shards),
            "inbox_full": self.inbox_full,
            "wakeups": sum(s.batches for s in self._shards),
            "batched_ops": sum(s.batched_ops for s in self._shards),
            "coalesced_frames": sum(s.coalesced for s in self._shards),
            "roster_frames": sum(s.roster_frames for s in self._shards),
            "grow_ticks": sum(s.grow_ticks for s in self._shards),
        }
