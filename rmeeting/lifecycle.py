"""Meetings end by themselves (``empty_timeout``, ``max_duration``); tombstones are purged.

Every instance runs the same sweep over the meetings it knows (etcd's watch cache: no round
trip). Whichever instance notices a deadline first ends the meeting; the end is the store's one
compare-and-delete (:meth:`MeetingStore.end`), so in a cluster it happens exactly once and the
others' attempts find nothing to end. Nothing of the deadlines lives only in an instance's
memory: ``created_at`` is in the meeting's meta, "empty since" is read from the attendance
ledger, so an instance that restarts (or a cluster that was down when a deadline fell) ends the
meeting on its first sweep.

A join racing an expiry (between the sweep's roster read and the end) is ended with the meeting:
its member is told ``meeting_ended`` with reason ``empty``, like the members of any ended
meeting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from .service import MeetingService
from .stores.base import MeetingMeta, StoreUnavailable

__all__ = ["REASON_EMPTY", "REASON_MAX_DURATION", "Lifecycle", "sweep_interval"]

log = logging.getLogger("rmeeting.lifecycle")

REASON_EMPTY = "empty"
REASON_MAX_DURATION = "max_duration"
#: the sweep runs at a quarter of the shortest deadline, between these bounds (seconds)
SWEEP_MIN, SWEEP_MAX = 0.2, 5.0


def sweep_interval(empty_timeout: float, max_duration: float, retention: float) -> float:
    spans = [s for s in (empty_timeout, max_duration, retention) if s > 0]
    return min(SWEEP_MAX, max(SWEEP_MIN, min(spans) / 4)) if spans else SWEEP_MAX


class Lifecycle:
    """The sweep of one instance; ``serve`` runs it until cancelled."""

    def __init__(self, service: MeetingService, *, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self._clock = clock
        config = service.config
        self.interval = sweep_interval(config.empty_timeout, config.max_duration,
                                       config.retention)
        #: meeting -> not worth looking at its roster before then (it cannot have been empty
        #: for empty_timeout sooner): one store read per meeting per empty_timeout at most
        self._next_check: dict[str, float] = {}
        #: meetings this instance ended, for the tests and the log
        self.ended = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:  # the next sweep tries again
                log.warning("lifecycle sweep: a store is unavailable: %s", exc)
            except Exception:  # supervised here: a bug costs one sweep, never the deadlines
                log.exception("lifecycle sweep failed")
            await trio.sleep(self.interval)

    async def sweep(self) -> None:
        service = self.service
        now = self._clock()
        live = set()
        for meta in await service.meetings.snapshot():
            live.add(meta.meeting_id)
            reason = await self._due(meta, now)
            if reason is not None and await service.end_meeting(meta.meeting_id, reason=reason):
                self.ended += 1
                log.info("meeting ended by itself",
                         extra={"meeting": meta.meeting_id, "reason": reason})
        for meeting_id in set(self._next_check) - live:
            del self._next_check[meeting_id]
        for meeting_id in await service.meetings.purge_due():
            await service.members.purge(meeting_id)
            await service.chat.drop(meeting_id)
            log.info("meeting purged", extra={"meeting": meeting_id})

    async def _due(self, meta: MeetingMeta, now: float) -> str | None:
        config, meeting_id = self.service.config, meta.meeting_id
        if config.max_duration and now >= meta.created_at + config.max_duration:
            return REASON_MAX_DURATION
        if not config.empty_timeout or now < self._next_check.get(meeting_id, 0.0):
            return None
        if self.service.hub.has_meeting(meeting_id) or \
                await self.service.members.roster(meeting_id):
            # not empty now: it cannot have been empty for empty_timeout before now + that
            self._next_check[meeting_id] = now + config.empty_timeout
            return None
        ledger = await self.service.members.attendance(meeting_id)
        empty_since = max([meta.created_at] + [a.left_at for a in ledger if a.left_at])
        if now >= empty_since + config.empty_timeout:
            return REASON_EMPTY
        self._next_check[meeting_id] = empty_since + config.empty_timeout
        return None
