"""Who writes the audit record of a change that every instance observed, and when.

A change nobody recorded while making it (an operator's ``etcdctl put``, a member flag's lease
running out) reaches every instance through its watch. Its record is created only if absent (the
key names the revision and the flag), so any number of writers keep exactly one, but each write
is a transaction through etcd's log, fsync included: with K instances, K of them per change.

So one instance writes it: the one :attr:`ObservedAudits.writes_now` names for the change (the
cluster's liveness picks one of the live instances per change; alone, an instance names itself).
The others check ``CHECK_AFTER`` seconds later with one serializable read (no write through the
log) and write what is still missing. The record stays best effort as it was, and now survives
the chosen writer dying or being cut off right after the change. Both run after the change was
fanned out, in their own tasks (the members first, then the record).

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
            async for check in checks:  # in the order made, so each is due after the last
                if not self._closing:
                    await trio.sleep_until(check.due)
                self.checks += 1
                if await self._written(check) < check.records:
                    self.fallback_writes += 1
                    for write in check.writes:
                        await write()

    async def _written(self, check: _Check) -> int:
        """How many of the change's records exist (a serializable read: no write to the log).
        If etcd cannot say, none: the writes are create-if-absent."""
        first = self._keys.audit(check.meeting_id, f"{check.revision:020d}-")
        try:
            response = await self._conn.kv("Range", rpc.RangeRequest(
                key=first, range_end=prefix_end(first), count_only=True, serializable=True,
            ))
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.warning("meeting %s: audit of revision %d not checked: %s",
                        check.meeting_id, check.revision, exc)
            return 0
        return int(response.count)
