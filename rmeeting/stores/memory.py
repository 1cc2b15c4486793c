"""In-memory stores for the embedded mode: one process, nothing shared, nothing persisted.

They keep the same promises as the etcd and Redis stores (the conformance suite checks both), so
the server code above them cannot tell which it runs on.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import trio

from ..closes import LeaveReason
from ..controls import DEFAULTS, Controls, validate_member_changes
from ..events import ChatPosted, LobbyChanged, MemberJoined, MemberLeft, MemberUpdated, stamped
from .base import (
    AttendanceRecord,
    AuditEntry,
    BusEvent,
    ControlsChanged,
    History,
    Knock,
    MeetingEnded,
    MeetingEvent,
    MeetingFull,
    MeetingMeta,
    MeetingNotFound,
    MemberRecord,
    RevisionConflict,
    Tombstone,
)

__all__ = ["MemoryChatLog", "MemoryMeetingStore", "MemoryMemberStore", "updated_fields"]

#: Events waiting for the handler. When full, writers wait: a change is never dropped.
EVENT_BUFFER = 1024

_B = TypeVar("_B", ChatPosted, MemberJoined, MemberLeft, MemberUpdated, LobbyChanged)


class _Expiry:
    """A timed change: these flags of this meeting go back to their defaults at ``deadline``."""

    def __init__(self, meeting_id: str, flags: set[str], deadline: float) -> None:
        self.meeting_id = meeting_id
        self.flags = flags
        self.deadline = deadline


class MemoryMeetingStore:
    def __init__(self, *, clock: Callable[[], float] = time.time, audit_limit: int = 1000) -> None:
        self._clock = clock
        self._audit_limit = audit_limit
        self._meta: dict[str, MeetingMeta] = {}
        self._values: dict[str, dict[str, bool]] = {}
        self._revision: dict[str, int] = {}
        self._audit: dict[str, deque[AuditEntry]] = defaultdict(
            lambda: deque(maxlen=self._audit_limit))  # full: the oldest entry is dropped
        # (meeting, flag) -> the timed change that still owns the flag's value
        self._timers: dict[tuple[str, str], _Expiry] = {}
        # members' own flags, the host after a hand-over, and when flags last changed value
        self._members: dict[str, dict[str, dict[str, bool]]] = defaultdict(dict)
        self._host: dict[str, str] = {}
        self._changed_at: dict[str, dict[str, int]] = defaultdict(dict)
        self._member_changed_at: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        self._counter = itertools.count(1)
        self._send, self._receive = trio.open_memory_channel[MeetingEvent | _Expiry](EVENT_BUFFER)
        self._tombstones: dict[str, Tombstone] = {}
        self._tickets: dict[str, tuple[float, Mapping[str, Any]]] = {}

    async def create(self, meta: MeetingMeta, controls: Mapping[str, bool]) -> Controls:
        if meta.meeting_id in self._meta:
            raise ValueError(f"meeting {meta.meeting_id} exists")
        self._meta[meta.meeting_id] = meta
        self._values[meta.meeting_id] = dict(controls)
        self._revision[meta.meeting_id] = next(self._counter)
        return self._controls(meta.meeting_id)

    async def get(self, meeting_id: str) -> MeetingMeta | None:
        return self._meta.get(meeting_id)

    async def list(self) -> Sequence[MeetingMeta]:
        return list(self._meta.values())

    async def count(self) -> int:
        return len(self._meta)

    async def end(self, meeting_id: str, *, reason: str, retention: float = 0.0) -> bool:
        meta = self._meta.pop(meeting_id, None)
        if meta is None:
            return False
        self._values.pop(meeting_id, None)
        self._revision.pop(meeting_id, None)
        audit = list(self._audit.pop(meeting_id, ()))
        for kept in (self._members, self._host, self._changed_at, self._member_changed_at):
            kept.pop(meeting_id, None)
        for key in [k for k in self._timers if k[0] == meeting_id]:
            del self._timers[key]
        if retention > 0:  # no checkpoint since the pop: the end and its tombstone are one step
            now = self._clock()
            self._tombstones[meeting_id] = Tombstone(meta, now, reason, now + retention, audit)
        await self._send.send(MeetingEnded(meeting_id, reason))
        return True

    async def tombstone(self, meeting_id: str) -> Tombstone | None:
        found = self._tombstones.get(meeting_id)
        return found if found is not None and found.purge_at > self._clock() else None

    async def purge_due(self) -> Sequence[str]:
        now = self._clock()
        due = [m for m, t in self._tombstones.items() if t.purge_at <= now]
        for meeting_id in due:
            del self._tombstones[meeting_id]
        return due

    async def snapshot(self) -> Sequence[MeetingMeta]:
        return list(self._meta.values())

    async def put_ticket(self, ticket_hash: str, payload: Mapping[str, Any], ttl: float) -> None:
        now = self._clock()
        for stale in [h for h, (until, _) in self._tickets.items() if until <= now]:
            del self._tickets[stale]  # unused tickets go with the next one issued
        self._tickets[ticket_hash] = (now + ttl, dict(payload))

    async def take_ticket(self, ticket_hash: str) -> Mapping[str, Any] | None:
        until, payload = self._tickets.pop(ticket_hash, (0.0, {}))
        return payload if until > self._clock() else None

    async def update_meta(self, meeting_id: str, extra: Mapping[str, Any]) -> MeetingMeta:
        meta = self._meta.get(meeting_id)
        if meta is None:
            raise MeetingNotFound(meeting_id)
        meta = self._meta[meeting_id] = replace(meta, extra={**meta.extra, **extra})
        return meta

    def _controls(self, meeting_id: str) -> Controls:
        room = Controls.from_partial(self._values[meeting_id], self._revision[meeting_id])
        return replace(
            room,
            members={m: dict(f) for m, f in self._members.get(meeting_id, {}).items() if f},
            host=self._host.get(meeting_id),
            changed_at=dict(self._changed_at.get(meeting_id, {})),
            member_changed_at={m: dict(f) for m, f in
                               self._member_changed_at.get(meeting_id, {}).items()},
        )

    async def controls(self, meeting_id: str) -> Controls:
        if meeting_id not in self._meta:
            raise MeetingNotFound(meeting_id)
        return self._controls(meeting_id)

    async def record_and_controls(self, meeting_id: str) -> tuple[MeetingMeta, Controls] | None:
        meta = self._meta.get(meeting_id)
        return None if meta is None else (meta, self._controls(meeting_id))

    async def set_controls(
        self,
        meeting_id: str,
        changes: Mapping[str, bool],
        *,
        actor: str,
        expected_revision: int | None = None,
        ttl: float | None = None,
    ) -> Controls:
        if meeting_id not in self._meta:
            raise MeetingNotFound(meeting_id)
        current = self._controls(meeting_id)
        if expected_revision is not None and expected_revision != current.revision:
            raise RevisionConflict(expected_revision, current.revision)
        if ttl is None and expected_revision is None and all(
            current[f] == v and (meeting_id, f) not in self._timers for f, v in changes.items()
        ):
            return current  # nothing changes: no revision that no event would carry
        await self._apply(meeting_id, changes, actor, ttl)
        return self._controls(meeting_id)

    async def _apply(
        self, meeting_id: str, changes: Mapping[str, bool], actor: str, ttl: float | None
    ) -> None:
        values = self._values[meeting_id]
        before = Controls.from_partial(values, 0)
        revision = next(self._counter)
        values.update(changes)
        self._revision[meeting_id] = revision
        after = self._controls(meeting_id)
        changed = {f: (before[f], after[f]) for f in changes if before[f] != after[f]}
        now = self._clock()
        for flag, (old, new) in changed.items():
            self._changed_at[meeting_id][flag] = revision
            self._audit[meeting_id].append(
                AuditEntry(meeting_id, flag, old, new, revision, actor, now)
            )
        after = self._controls(meeting_id)
        for flag in changes:  # a later change of a flag takes it off any earlier timer
            self._timers.pop((meeting_id, flag), None)
        expires_at = None
        if ttl is not None:
            expires_at = now + ttl
            expiry = _Expiry(meeting_id, set(changes), trio.current_time() + ttl)
            for flag in changes:
                self._timers[(meeting_id, flag)] = expiry
            await self._send.send(expiry)
        await self._send.send(
            ControlsChanged(meeting_id, after, changed, actor, expires_at, written_at=now)
        )

    async def _expire(self, expiry: _Expiry) -> None:
        await trio.sleep_until(expiry.deadline)
        owned = {f for f in expiry.flags if self._timers.get((expiry.meeting_id, f)) is expiry}
        if owned and expiry.meeting_id in self._meta:
            await self._apply(expiry.meeting_id, {f: DEFAULTS[f] for f in owned}, "timer", None)

    async def set_member_controls(
        self, meeting_id: str, member_id: str, changes: Mapping[str, bool | None], *, actor: str
    ) -> Controls:
        valid = validate_member_changes(changes)
        if meeting_id not in self._meta:
            raise MeetingNotFound(meeting_id)
        if not member_id or "/" in member_id:
            raise ValueError(f"invalid member id {member_id!r}")
        before = self._controls(meeting_id)
        own = self._members[meeting_id].setdefault(member_id, {})
        old_own = dict(own)
        for flag, value in valid.items():
            if value is None:
                own.pop(flag, None)
            else:
                own[flag] = value
        revision = next(self._counter)
        self._revision[meeting_id] = revision
        changed = {f: (old_own.get(f), own.get(f)) for f in valid if old_own.get(f) != own.get(f)}
        now = self._clock()
        after = self._controls(meeting_id)
        for flag in changed:
            self._member_changed_at[meeting_id].setdefault(member_id, {})[flag] = revision
            self._audit[meeting_id].append(AuditEntry(
                meeting_id, flag, _may(before, member_id, flag), _may(after, member_id, flag),
                revision, actor, now, member_id))
        after = self._controls(meeting_id)
        await self._send.send(ControlsChanged(
            meeting_id, after, {}, actor, written_at=now,
            member_changed={member_id: changed} if changed else {},
        ))
        return after

    async def set_host(self, meeting_id: str, member_id: str, *, actor: str) -> Controls:
        if meeting_id not in self._meta:
            raise MeetingNotFound(meeting_id)
        if not member_id or "/" in member_id:
            raise ValueError(f"invalid member id {member_id!r}")
        old = self._host.get(meeting_id)
        own = self._members[meeting_id].setdefault(member_id, {})
        was_cohost = own.pop("cohost", None)
        self._host[meeting_id] = member_id
        revision = next(self._counter)
        self._revision[meeting_id] = revision
        now = self._clock()
        self._audit[meeting_id].append(
            AuditEntry(meeting_id, "host", False, True, revision, actor, now, member_id))
        after = self._controls(meeting_id)
        await self._send.send(ControlsChanged(
            meeting_id, after, {}, actor, written_at=now, host_changed=(old, member_id),
            member_changed={member_id: {"cohost": (was_cohost, None)}} if was_cohost else {},
        ))
        return after

    async def record_audit(
        self, meeting_id: str, flag: str, old: bool, new: bool, *, actor: str, member: str
    ) -> None:
        if meeting_id not in self._meta:
            raise MeetingNotFound(meeting_id)
        self._audit[meeting_id].append(AuditEntry(
            meeting_id, flag, old, new, self._revision[meeting_id], actor, self._clock(), member))

    async def audit(self, meeting_id: str) -> Sequence[AuditEntry]:
        if meeting_id not in self._meta:
            raise MeetingNotFound(meeting_id)
        return list(self._audit[meeting_id])

    async def serve_events(
        self,
        handler: Callable[[MeetingEvent], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for item in self._receive:
                if isinstance(item, _Expiry):
                    nursery.start_soon(self._expire, item)
                else:
                    await handler(item)

    async def ready(self) -> bool:
        return True


def _may(controls: Controls, member_id: str, flag: str) -> bool:
    """What the audit records of a member flag: may it (``cohost``: is it one)?"""
    if flag == "cohost":
        return controls.is_cohost(member_id)
    return controls.may(member_id, flag)


class MemoryMemberStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._present: dict[str, dict[str, MemberRecord]] = defaultdict(dict)
        self._ledger: dict[str, list[AttendanceRecord]] = defaultdict(list)
        self._banned: dict[str, set[str]] = defaultdict(set)
        self._lobby: dict[str, dict[str, Knock]] = defaultdict(dict)

    async def join(self, record: MemberRecord, *, max_members: int) -> None:
        present = self._present[record.meeting_id]
        if record.member_id in present:
            await self.leave(record.meeting_id, record.member_id, reason=LeaveReason.REPLACED)
        elif record.role != "host" and len(present) >= max_members and sum(
            r.role != "host" for r in present.values()
        ) >= max_members:  # the host always has a seat: max_members counts members
            raise MeetingFull(record.meeting_id)
        present[record.member_id] = record
        self._ledger[record.meeting_id].append(
            AttendanceRecord(
                record.meeting_id,
                record.member_id,
                record.name,
                record.role,
                record.joined_at,
                record.key_hash,
                sub=record.sub,
            )
        )

    async def leave(
        self,
        meeting_id: str,
        member_id: str,
        *,
        reason: str,
        instance_id: str | None = None,
        joined_at: float | None = None,
    ) -> MemberRecord | None:
        present = self._present.get(meeting_id, {})
        record = present.get(member_id)
        if record is None or (instance_id is not None and record.instance_id != instance_id):
            return None
        if joined_at is not None and record.joined_at != joined_at:
            return None  # a newer presence of the same member: not this leave's to end
        del present[member_id]
        self._close_session(record, reason)
        return record

    def _close_session(self, record: MemberRecord, reason: str) -> None:
        ledger = self._ledger.get(record.meeting_id, [])  # [] once purged: nothing to close
        for i in range(len(ledger) - 1, -1, -1):
            entry = ledger[i]
            if entry.member_id == record.member_id and entry.left_at is None:
                ledger[i] = replace(entry, name=record.name, left_at=self._clock(), reason=reason)
                return

    async def get(self, meeting_id: str, member_id: str) -> MemberRecord | None:
        return self._present.get(meeting_id, {}).get(member_id)

    async def roster(self, meeting_id: str) -> Sequence[MemberRecord]:
        return sorted(self._present.get(meeting_id, {}).values(), key=lambda r: r.joined_at)

    async def update(
        self, meeting_id: str, member_id: str, changes: Mapping[str, Any]
    ) -> MemberRecord | None:
        present = self._present.get(meeting_id, {})
        record = present.get(member_id)
        if record is None:
            return None
        record = replace(record, **updated_fields(record, changes, self._clock))
        present[member_id] = record
        return record

    async def lower_hands(self, meeting_id: str) -> Sequence[MemberRecord]:
        present = self._present.get(meeting_id, {})
        raised = [r for r in present.values() if r.hand is not None]
        for record in raised:
            present[record.member_id] = replace(record, hand=None)
        return sorted(raised, key=lambda r: r.hand or 0.0)

    async def attendance(self, meeting_id: str) -> Sequence[AttendanceRecord]:
        return list(self._ledger.get(meeting_id, []))

    async def ban(self, meeting_id: str, member_id: str) -> None:
        self._banned[meeting_id].add(member_id)

    async def is_banned(self, meeting_id: str, member_id: str) -> bool:
        return member_id in self._banned.get(meeting_id, ())

    async def by_instance(self, instance_id: str) -> Sequence[MemberRecord]:
        return [
            r for members in self._present.values() for r in members.values()
            if r.instance_id == instance_id
        ]

    async def instances(self) -> Sequence[str]:
        return sorted({r.instance_id for members in self._present.values()
                       for r in members.values()})

    async def clear_meeting(self, meeting_id: str, *, reason: str) -> Sequence[MemberRecord]:
        present = self._present.pop(meeting_id, {})
        for record in present.values():
            self._close_session(record, reason)
        return list(present.values())

    async def knock(self, knock: Knock) -> None:
        self._lobby[knock.meeting_id][knock.member_id] = knock

    async def waiting(self, meeting_id: str) -> Sequence[Knock]:
        return sorted(self._lobby.get(meeting_id, {}).values(), key=lambda k: k.since)

    async def take_knock(self, meeting_id: str, member_id: str) -> Knock | None:
        lobby = self._lobby.get(meeting_id, {})
        knock = lobby.pop(member_id, None)
        if not lobby:
            self._lobby.pop(meeting_id, None)
        return knock

    async def retire(self, meeting_id: str, *, keep: float) -> None:
        # Nothing expires memory by itself: the lifecycle sweep purges with the meeting store's
        # tombstone (purge_due), which keeps the same deadline.
        if keep <= 0:
            await self.purge(meeting_id)

    async def purge(self, meeting_id: str) -> None:
        self._present.pop(meeting_id, None)
        self._ledger.pop(meeting_id, None)
        self._banned.pop(meeting_id, None)
        self._lobby.pop(meeting_id, None)

    async def ready(self) -> bool:
        return True


#: what ``MemberStore.update`` may change
UPDATABLE = ("name", "camera", "mic", "media_rev", "role", "ask_unmute")


def updated_fields(
    record: MemberRecord, changes: Mapping[str, Any], clock: Callable[[], float]
) -> dict[str, Any]:
    """The fields of ``record`` that ``changes`` sets; ``hand``: True raises (keeping the place
    of a hand already up), False lowers. Shared with the Redis store."""
    out = {k: v for k, v in changes.items() if k in UPDATABLE}
    if "hand" in changes:
        out["hand"] = (record.hand or clock()) if changes["hand"] else None
    return out


class MemoryChatLog:
    def __init__(self, *, history_limit: int = 500, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._limit = history_limit
        self._seq: dict[str, int] = defaultdict(int)
        self._history: dict[str, deque[ChatPosted]] = {}
        self._subscribed: dict[str, int] = defaultdict(int)
        self._send, self._receive = trio.open_memory_channel[BusEvent](EVENT_BUFFER)

    async def publish(self, event: _B) -> _B:
        await trio.lowlevel.checkpoint_if_cancelled()  # before the seq is taken, never after
        meeting_id = event.meeting_id
        seq = 0
        if isinstance(event, ChatPosted):
            self._seq[meeting_id] += 1
            seq = self._seq[meeting_id]
        event = stamped(event, seq=seq, ts=self._clock())
        if isinstance(event, ChatPosted):
            history = self._history.setdefault(meeting_id, deque(maxlen=self._limit))
            history.append(event)
        if self._subscribed.get(meeting_id):
            # No checkpoint between taking the seq and queueing: queue order is seq order.
            # With room in the queue, no yield at all: a session handing on the many chat
            # messages of one read queues them all before the bus runs, and the hub writes
            # them to each member in one send (a full queue waits; its waiters are FIFO, so
            # the order holds then too).
            try:
                self._send.send_nowait(event)
            except trio.WouldBlock:
                await self._send.send(event)
        return event

    async def history(self, meeting_id: str, after_seq: int, limit: int) -> History:
        kept = self._history.get(meeting_id, deque())
        last = self._seq.get(meeting_id, 0)
        wanted = [e for e in kept if e.seq > after_seq]
        oldest_kept = kept[0].seq if kept else last + 1
        complete = after_seq >= last or oldest_kept <= after_seq + 1
        if len(wanted) > limit:
            wanted = wanted[-limit:]
            complete = False
        return History(wanted, last, complete)

    async def subscribe(self, meeting_id: str) -> None:
        self._subscribed[meeting_id] += 1

    async def unsubscribe(self, meeting_id: str) -> None:
        if self._subscribed.get(meeting_id, 0) <= 1:
            self._subscribed.pop(meeting_id, None)
        else:
            self._subscribed[meeting_id] -= 1

    async def drop(self, meeting_id: str) -> None:
        self._history.pop(meeting_id, None)
        self._seq.pop(meeting_id, None)

    async def serve(
        self,
        handler: Callable[[BusEvent], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async for event in self._receive:
            await handler(event)
            # and whatever else is already queued, in the same step: the hub then writes the
            # frames of many joins (a join storm) to each member at once (rmeeting/hub.py)
            while True:
                try:
                    event = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                await handler(event)

    async def ready(self) -> bool:
        return True
