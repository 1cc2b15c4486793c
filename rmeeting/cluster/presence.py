"""Keeping the member store true to the connections instances really hold.

Two repairs, used by the liveness task (:mod:`rmeeting.cluster.liveness`) and the chat relay
watch (:mod:`rmeeting.cluster.relay_watch`):

- :meth:`Presence.reconcile`, for this instance: a connection whose presence the store has lost
  (a Redis that came back without its data, or survivors that took this instance for dead while
  it was cut off from etcd) is registered again, with a fresh ``joined_at``, and announced; a
  presence the store names for this instance but no connection here holds (a leave that failed
  while Redis was down, or a previous run under the same instance id) leaves.
- :meth:`Presence.end_lost`, for another instance that is gone: each of its presences leaves
  with reason ``instance lost``, so the ledger closes the session and the others are told.

Every leave names its presence by ``joined_at``, so a member that meanwhile reconnected
somewhere else is never ended by a repair.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import replace

import trio

from ..closes import Close, LeaveReason
from ..service import MeetingService, Subscriber
from ..stores.base import MeetingFull

__all__ = ["LOST", "Presence"]

log = logging.getLogger("rmeeting.cluster")

#: the attendance reason of a presence ended because its instance died
LOST = LeaveReason.INSTANCE_LOST


class Presence:
    """Repairs of the member store for one instance (see the module docstring)."""

    def __init__(self, service: MeetingService, *, started_at: float | None = None) -> None:
        self.service = service
        #: presences of this instance id that joined before this are from an earlier run
        self.started_at = time.time() if started_at is None else started_at
        self._lock = trio.Lock()  # one reconcile at a time: they would race each other's joins

    @property
    def instance_id(self) -> str:
        return self.service.instance_id

    async def reconcile(self) -> None:
        """Make the member store agree with this instance's connections; raises
        StoreUnavailable (the caller retries later)."""
        async with self._lock:
            await self._rejoin_missing()
            await self._end_unheld()

    async def end_lost(self, instance_id: str, *, before: float) -> int:
        """Every presence through ``instance_id`` that joined before ``before`` (when it was
        found gone: a later one is a new run of the same id) leaves as ``instance lost``."""
        ended = 0
        for record in await self.service.presences_through(instance_id):
            if record.joined_at > before:
                continue
            left = await self.service.leave(
                record.meeting_id, record.member_id, LOST,
                instance_id=instance_id, joined_at=record.joined_at,
            )
            ended += left is not None
        return ended

    async def _rejoin_missing(self) -> None:
        service = self.service
        by_meeting: dict[str, list[Subscriber]] = defaultdict(list)
        for sub in service.connections():
            if sub.registered and sub.record is not None and not (sub.gone or sub.evicted):
                by_meeting[sub.meeting_id].append(sub)
        for meeting_id, subs in by_meeting.items():
            present = {r.member_id for r in await service.present(meeting_id)}
            missing = [s for s in subs if s.member_id not in present]
            if not missing or await service.find_meeting(meeting_id) is None:
                continue  # nothing lost, or the meeting ended (its sockets are being closed)
            for sub in missing:
                await self._rejoin(sub)

    async def _rejoin(self, sub: Subscriber) -> None:
        service = self.service
        assert sub.record is not None
        if sub.gone or sub.evicted:
            return
        if await service.presence(sub.meeting_id, sub.member_id) is not None:
            return  # back meanwhile (it reconnected): that presence stands
        # a fresh joined_at: a survivor cleaning this instance up ends only older presences
        record = replace(sub.record, joined_at=time.time(), instance_id=self.instance_id)
        try:
            await service.register_again(sub, record)
        except MeetingFull:
            log.warning("member %s could not be registered again: meeting %s is full",
                        sub.member_id, sub.meeting_id)
            # a connection that could not be registered again (the meeting filled up)
            sub.outlet.close_nowait(Close.TRY_AGAIN, "the meeting is full; try again")
            return
        log.info("member %s of meeting %s registered again", sub.member_id, sub.meeting_id)
        if sub.gone:  # its session ended while it was being registered: it leaves after all
            await service.leave(sub.meeting_id, sub.member_id, LeaveReason.CLOSED,
                                instance_id=self.instance_id, joined_at=record.joined_at)

    async def _end_unheld(self) -> None:
        service = self.service
        records = await service.presences_through(self.instance_id)
        # Read after the records: attach lists a connection here before the store hears of it,
        # and detach comes after the session's own leave, so a presence read above whose
        # connection is not listed now has no connection left anywhere.
        held = {(s.meeting_id, s.member_id) for s in service.connections()}
        for record in records:
            if (record.meeting_id, record.member_id) in held:
                continue
            reason = LOST if record.joined_at < self.started_at else LeaveReason.CLOSED
            left = await service.leave(record.meeting_id, record.member_id, reason,
                                       instance_id=self.instance_id, joined_at=record.joined_at)
            if left is not None:
                log.info("member %s of meeting %s had no connection here: left (%s)",
                         record.member_id, record.meeting_id, reason)
