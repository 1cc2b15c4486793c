"""What members are told while the chat relay (Redis pub/sub) is down, and what they get back.

The Redis chat log reports its relay's state (``RedisChatLog(on_relay_state=...)``). While it is
down, chat can neither be sent nor received here, and ``/readyz`` says 503 (the chat log's
``ready``). This module:

- tells every meeting this instance serves, at once and without Redis (straight to the hub),
  that chat is unavailable: v1 ``{"type": "notice", "code": "chat_unavailable", ...}``, the seed
  a ``notice``; and, when the relay is back, ``chat_available``;
- catches up the chat published while this instance was not listening (other instances reach
  Redis before this relay has re-subscribed): for each meeting, ``ChatLog.history`` after the
  last seq the hub delivered, handed to the hub before any live event of the new connection (the
  hub drops what it already delivered). What history no longer holds is announced as a
  ``chat_gap`` notice, never silently missing;
- reconciles this instance's presences (:meth:`Presence.reconcile`), in case Redis came back
  without them.

Joins, leaves and renames missed during the outage are not replayed: a client that needs the
exact roster reads it again (v1: ``GET /v1/meetings/{id}/members``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ..events import BusEvent, Notice
from ..service import MeetingService
from ..stores.base import StoreUnavailable
from .presence import Presence

__all__ = ["ChatRelayWatch"]

log = logging.getLogger("rmeeting.cluster")

NOTICES = {
    "chat_unavailable": "chat is unavailable: messages cannot be sent or received right now",
    "chat_available": "chat is available again",
    "chat_gap": "some chat messages sent during the outage could not be recovered",
}

Handler = Callable[[BusEvent], Awaitable[None]]


class ChatRelayWatch:
    """Give :meth:`on_relay_state` to the Redis chat log, run :meth:`serve`, and hand the chat
    log's events through :meth:`gate`."""

    def __init__(self) -> None:
        self._up: bool | None = None
        self._changed = trio.Event()
        self._catch_up = False  # the relay came back: history first, then live events
        self._told_down = False
        self._lock = trio.Lock()
        self._service: MeetingService | None = None
        self._presence: Presence | None = None

    @property
    def service(self) -> MeetingService:
        assert self._service is not None, "serve() is not running"
        return self._service

    def on_relay_state(self, up: bool) -> None:
        """The chat log's callback (Trio thread, must not block)."""
        self._up = up
        if up:
            # Set before the relay hands over any event of its new connection (the chat log
            # calls this first), so the gate below catches up before the first live event.
            self._catch_up = True
        self._changed.set()

    def gate(self, handler: Handler) -> Handler:
        """``handler``, preceded by the catch-up when the relay has just come back."""

        async def deliver(event: BusEvent) -> None:
            # also while a catch-up runs (``serve`` started it, and it already cleared the
            # flag): a live event delivered before it ends would make the hub drop the older
            # events the catch-up is about to deliver
            if self._catch_up or self._lock.locked():
                await self._caught_up()
            await handler(event)

        return deliver

    async def serve(
        self,
        service: MeetingService,
        presence: Presence,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._service, self._presence = service, presence
        task_status.started()
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            if self._up is False and not self._told_down:
                self._told_down = True
                log.warning("chat relay down: telling %d meeting(s)",
                            len(service.local_meeting_ids()))
                for meeting_id in service.local_meeting_ids():
                    await self._notice(meeting_id, "chat_unavailable")
            elif self._up:
                await self._caught_up()
                try:
                    await presence.reconcile()
                except StoreUnavailable as exc:
                    log.warning("presences not reconciled after the outage (%s)", exc)

    async def _caught_up(self) -> None:
        async with self._lock:
            if not self._catch_up:
                return  # the other path (gate or serve) did it meanwhile
            self._catch_up = False
            meetings = self.service.local_meeting_ids()
            failed = False
            for meeting_id in meetings:
                if not failed:
                    try:
                        await self._catch_up_meeting(meeting_id)
                    except StoreUnavailable as exc:
                        # Redis went again: do not hold live events; say plainly what is lost
                        log.warning("chat catch-up failed (%s)", exc)
                        failed = True
                if failed:
                    await self._notice(meeting_id, "chat_gap")
            if self._told_down and self._up:
                self._told_down = False
                for meeting_id in meetings:
                    await self._notice(meeting_id, "chat_available")

    async def _catch_up_meeting(self, meeting_id: str) -> None:
        service = self.service
        after, since = service.chat_position(meeting_id)
        history = await service.chat_history(meeting_id, after, service.config.history_limit)
        events = list(history.events)
        gap = not history.complete
        if history.last_seq < after:
            # the log numbers from 1 again (a Redis that lost its data): start over from it
            await service.restart_chat_numbering(meeting_id)
            history = await service.chat_history(meeting_id, 0, service.config.history_limit)
            events, gap = list(history.events), True
        elif after == 0:
            # nothing delivered here yet: only what was sent since the meeting came here, and
            # a gap only if history lost some of that (its oldest is already newer than since)
            gap = gap and (not events or events[0].ts >= since)
            events = [e for e in events if e.ts >= since]
        for event in events:
            await service.deliver_here(event)
        if events:
            log.info("meeting %s: %d chat message(s) caught up", meeting_id, len(events))
        if gap:
            await self._notice(meeting_id, "chat_gap")

    async def _notice(self, meeting_id: str, code: str) -> None:
        await self.service.deliver_here(Notice(meeting_id, code, NOTICES[code], time.time()))
