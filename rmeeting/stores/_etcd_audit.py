"""Who writes the audit record of a change that every instance observed, and when.

A change nobody recorded while making it (an operator's ``etcdctl put``, a member flag's lease
running out) reaches every instance through its watch. Its record is created only if absent (the
key names the revision and the flag), so any number of writers keep exactly one, but each write
is a transaction through etcd's log, fsync included: with K instances, K of them per change.

So one instance writes it: the one :attr:`ObservedAudits.writes_now` names for the change (the
cluster's liveness picks one of the live instances per change; alone, an instance names itself).
The others check ``CHECK_AFTER`` seconds later with a serializable read (no write through the
log; one per meeting for all the changes that queued meanwhile) and write what is missing. The
record stays best effort as it was, and now survives the chosen writer dying or being cut off
right after the change. Both run after the change was fanned out, in their own tasks (the
members first, then the record).

Overflow policy: each queue holds ``BUFFER`` writes; when full, the watch waits (a burst of
operator flips slows this instance's watch, it never loses a record).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import etcd3.etcdrpc as rpc
import grpc  # type: ignore[import-untyped]
import trio

from ._etcd_cache import Keys
from .base import StoreUnavailable
from .etcd_client import Connection, prefix_end

__all__ = ["BUFFER", "CHECK_AFTER", "AuditWrite", "ObservedAudits"]

log = logging.getLogger("rmeeting.stores.etcd")

#: writes (or checks) waiting for their task
BUFFER = 1024
#: seconds after a change an instance that was not chosen to record it checks that it was
CHECK_AFTER = 1.0
#: one create-if-absent transaction of a change's records
AuditWrite = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class _Check:
    due: float
    meeting_id: str
    revision: int
    #: how many records the change makes (its flags, room and members)
    records: int
    writes: Sequence[AuditWrite]


class ObservedAudits:
    """The records of observed changes: written now by the chosen instance, checked later by
    the others (module docstring). Until :meth:`serve` runs, every write is made at once."""

    def __init__(self, conn: Connection, keys: Keys, *, check_after: float = CHECK_AFTER) -> None:
        self._conn = conn
        self._keys = keys
        #: seconds after a change that a check of its records is made
        self.check_after = check_after
        #: whether this instance writes the record of the change named ``"<meeting>/<revision>"``
        self.writes_now: Callable[[str], bool] = lambda change: True
        #: changes checked later (this instance was not the one), and those of them whose
        #: records a check found missing and wrote
        self.checks = self.fallback_writes = 0
        #: reads the checks made (one per meeting per batch)
        self.reads = 0
        self._now: trio.MemorySendChannel[AuditWrite] | None = None
        self._later: trio.MemorySendChannel[_Check] | None = None
        self._closing = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write and check until :meth:`close`, then finish what is queued (the checks at
        once) and return."""
        now, now_out = trio.open_memory_channel[AuditWrite](BUFFER)
        later, later_out = trio.open_memory_channel[_Check](BUFFER)
        self._closing = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, now_out)
                nursery.start_soon(self._check, later_out)
                self._now, self._later = now, later
                task_status.started()
        finally:
            self._now = self._later = None

    def close(self) -> None:
        """No more records: what is queued is written, the checks without waiting."""
        self._closing = True
        for channel in (self._now, self._later):
            if channel is not None:
                channel.close()
        self._now = self._later = None

    async def record(
        self, meeting_id: str, revision: int, records: int, writes: Sequence[AuditWrite]
    ) -> None:
        """The change's records: written soon if this instance is the one, else checked."""
        if self._now is None or self._later is None:
            for write in writes:
                await write()
        elif self.writes_now(f"{meeting_id}/{revision}"):
            for write in writes:
                await self._now.send(write)
        else:
            due = trio.current_time() + self.check_after
            await self._later.send(_Check(due, meeting_id, revision, records, writes))

    async def _write(self, writes: trio.MemoryReceiveChannel[AuditWrite]) -> None:
        async with writes:
            async for write in writes:
                await write()

    async def _check(self, checks: trio.MemoryReceiveChannel[_Check]) -> None:
        async with checks:
            async for check in checks:
                batch = [check]  # and what queued meanwhile: in a burst, one read per meeting
                while True:
                    try:
                        batch.append(checks.receive_nowait())
                    except trio.WouldBlock:
                        break
                if not self._closing:  # in the order made: the last is due last
                    await trio.sleep_until(batch[-1].due)
                by_meeting: dict[str, list[_Check]] = {}
                for item in batch:
                    by_meeting.setdefault(item.meeting_id, []).append(item)
                for meeting_id, items in by_meeting.items():
                    written = await self._written(meeting_id, items)
                    for item in items:
                        self.checks += 1
                        if written.get(item.revision, 0) < item.records:
                            self.fallback_writes += 1
                            for write in item.writes:
                                await write()

    async def _written(self, meeting_id: str, checks: list[_Check]) -> dict[int, int]:
        """How many records each checked revision of the meeting has, in one serializable read
        (no write to the log). If etcd cannot say, none: the writes are create-if-absent."""
        trail = self._keys.audit(meeting_id)
        low = min(c.revision for c in checks)
        high = max(c.revision for c in checks)
        self.reads += 1
        try:
            response = await self._conn.kv("Range", rpc.RangeRequest(
                key=self._keys.audit(meeting_id, f"{low:020d}-"),
                range_end=prefix_end(self._keys.audit(meeting_id, f"{high:020d}-")),
                keys_only=True, serializable=True,
            ))
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.warning("meeting %s: audit of revisions %d to %d not checked: %s",
                        meeting_id, low, high, exc)
            return {}
        written: dict[int, int] = {}
        for kv in response.kvs:
            revision = kv.key[len(trail):].split(b"-", 1)[0]
            if revision.isdigit():
                written[int(revision)] = written.get(int(revision), 0) + 1
        return written
