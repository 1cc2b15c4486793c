"""The outbox: where events wait for their endpoints, shared by every instance in a cluster.

One queue per endpoint. :meth:`Outbox.enqueue` puts an event in every endpoint's queue, unless an
event with the same id was enqueued in the last :data:`DEDUPE_SECONDS` (another instance saw the
same happening first). Senders :meth:`~Outbox.claim` deliveries under their consumer name, keep
them claimed while they retry (:meth:`~Outbox.keep`), and :meth:`~Outbox.ack` them when done.
A delivery whose consumer went quiet (an instance killed mid-delivery) for ``reclaim_after``
seconds is handed out again by ``claim``, to any consumer: nothing is lost with its sender.

Two implementations pass one conformance suite (``tests/test_webhooks_outbox.py``):
:class:`~rmeeting.webhooks.memory.MemoryOutbox` (embedded) and
:class:`~rmeeting.webhooks.redis.RedisOutbox` (cluster: Redis streams, one consumer group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .events import WebhookEvent

__all__ = ["DEDUPE_SECONDS", "Delivery", "Outbox"]

#: how long an event id is remembered: far longer than the spread between instances' watches
#: (milliseconds; minutes for a watch that resumes after an etcd partition), short enough that
#: the marks of a busy cluster stay small in Redis
DEDUPE_SECONDS = 3600


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one endpoint."""

    endpoint: str
    #: the outbox's handle of this delivery (a stream entry id in Redis)
    entry: str
    event: WebhookEvent
    #: how many times it was handed out, this time included (more than 1: reclaimed)
    claims: int = 1


class Outbox(Protocol):
    async def enqueue(self, event: WebhookEvent) -> bool:
        """Queue for every endpoint; False (and nothing queued) if the id was already seen."""
        ...

    async def claim(
        self, endpoint: str, consumer: str, *, count: int, reclaim_after: float, wait: float
    ) -> Sequence[Delivery]:
        """Up to ``count`` deliveries: first those idle (not kept, not acked) for
        ``reclaim_after`` seconds, whoever claimed them, then new ones; waits up to ``wait``
        seconds when there is none."""
        ...

    async def keep(self, delivery: Delivery, consumer: str) -> bool:
        """Still working on it: reset its idle time. False if it is no longer this consumer's
        (reclaimed by another, or trimmed): stop, the other one delivers it."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """Done with it (delivered, or given up): it leaves the queue."""
        ...

    async def depth(self, endpoint: str) -> int:
        """Deliveries not acked yet (waiting or in progress)."""
        ...

    @property
    def dropped(self) -> int:
        """Deliveries dropped because a queue was full (its oldest went), as last known."""
        ...

    def close(self) -> None: ...
