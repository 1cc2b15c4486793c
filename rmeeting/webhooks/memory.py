"""The embedded mode's outbox: in this process's memory, bounded.

Not durable: what is queued is lost if the process stops (an embedded instance has no peer to
take over). Each endpoint's queue holds at most ``capacity`` deliveries; when an event arrives at
a full queue, the oldest delivery (waiting or in progress) is dropped and counted in
``dropped`` (``rmeeting_webhook_dropped_total{where="outbox"}``). So "at least once" holds here
only while an endpoint is less than ``capacity`` events behind; docs/integration.md says so.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .events import WebhookEvent
from .outbox import DEDUPE_SECONDS, Delivery

__all__ = ["MEMORY_CAPACITY", "MemoryOutbox"]

#: deliveries one endpoint's queue holds in memory before the oldest is dropped
MEMORY_CAPACITY = 10_000


@dataclass
class _Entry:
    event: WebhookEvent
    claims: int = 0
    consumer: str = ""
    touched: float = 0.0  # trio time of the last claim or keep


class _Queue:
    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry] = OrderedDict()  # entry id -> entry, oldest first
        self.fresh: OrderedDict[str, None] = OrderedDict()  # never handed out, oldest first
        self.claimed: OrderedDict[str, None] = OrderedDict()  # handed out, least touched first
        self.wakeup = trio.Event()


class MemoryOutbox:
    """:class:`~rmeeting.webhooks.outbox.Outbox` in memory (the embedded mode)."""

    def __init__(self, endpoints: Sequence[str], *, capacity: int = MEMORY_CAPACITY) -> None:
        self._queues = {url: _Queue() for url in endpoints}
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()  # event id -> trio time first seen
        self._ids = itertools.count(1)
        self._dropped = 0

    @property
    def dropped(self) -> int:
        return self._dropped

    async def enqueue(self, event: WebhookEvent) -> bool:
        now = trio.current_time()
        while self._seen and next(iter(self._seen.values())) < now - DEDUPE_SECONDS:
            self._seen.popitem(last=False)
        if event.clears is not None:
            self._seen.pop(event.clears, None)
        if event.id in self._seen:
            return False
        self._seen[event.id] = now
        for queue in self._queues.values():
            while len(queue.entries) >= self._capacity:
                oldest, _ = queue.entries.popitem(last=False)
                queue.fresh.pop(oldest, None)
                queue.claimed.pop(oldest, None)
                self._dropped += 1
            entry = str(next(self._ids))
            queue.entries[entry] = _Entry(event)
            queue.fresh[entry] = None
            queue.wakeup.set()
        return True

    async def claim(
        self, endpoint: str, consumer: str, *, count: int, reclaim_after: float, wait: float
    ) -> Sequence[Delivery]:
        queue = self._queues[endpoint]
        got = self._take(endpoint, queue, consumer, count, reclaim_after)
        if not got and wait > 0:
            with trio.move_on_after(wait):
                await queue.wakeup.wait()
            got = self._take(endpoint, queue, consumer, count, reclaim_after)
        await trio.lowlevel.checkpoint()
        return got

    def _take(self, endpoint: str, queue: _Queue, consumer: str, count: int,
              reclaim_after: float) -> list[Delivery]:
        now = trio.current_time()
        got: list[Delivery] = []
        for entry_id in list(queue.claimed):  # least recently touched first: stop at a fresh one
            entry = queue.entries[entry_id]
            if len(got) >= count or now - entry.touched < reclaim_after:
                break
            got.append(self._hand_out(endpoint, queue, entry_id, entry, consumer, now))
        while len(got) < count and queue.fresh:
            entry_id, _ = queue.fresh.popitem(last=False)
            got.append(self._hand_out(endpoint, queue, entry_id, queue.entries[entry_id],
                                      consumer, now))
        if not queue.fresh:
            queue.wakeup = trio.Event()
        return got

    @staticmethod
    def _hand_out(endpoint: str, queue: _Queue, entry_id: str, entry: _Entry, consumer: str,
                  now: float) -> Delivery:
        entry.claims += 1
        entry.consumer, entry.touched = consumer, now
        queue.claimed[entry_id] = None
        queue.claimed.move_to_end(entry_id)
        return Delivery(endpoint, entry_id, entry.event, entry.claims)

    async def keep(self, delivery: Delivery, consumer: str) -> bool:
        await trio.lowlevel.checkpoint()
        queue = self._queues[delivery.endpoint]
        entry = queue.entries.get(delivery.entry)
        if entry is None or entry.consumer != consumer:
            return False
        entry.touched = trio.current_time()
        queue.claimed.move_to_end(delivery.entry)
        return True

    async def ack(self, delivery: Delivery) -> None:
        await trio.lowlevel.checkpoint()
        queue = self._queues[delivery.endpoint]
        queue.entries.pop(delivery.entry, None)
        queue.fresh.pop(delivery.entry, None)
        queue.claimed.pop(delivery.entry, None)

    async def depth(self, endpoint: str) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._queues[endpoint].entries)

    def close(self) -> None:
        pass
