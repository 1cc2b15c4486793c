"""Webhooks: every meeting event, signed the Standard Webhooks way, POSTed to each endpoint in
``webhook_urls`` at least once, and once per endpoint however many instances saw it.

- ``events``: the event types, their deterministic ids, the body;
- ``outbox``: the queue's Protocol; ``memory`` (embedded) and ``redis`` (cluster) implement it;
- ``sender``: :class:`Webhooks`, the service's non-blocking ``emit`` and the delivery tasks;
- ``receiver``: a small verifying receiver (``rmeeting webhooks listen``).

docs/integration.md tells an application how to receive them.
"""

from __future__ import annotations

import logging

from ..config import Config
from .events import EVENT_TYPES, LOBBY_TYPES, EventType, WebhookEvent, lobby_event
from .outbox import Delivery, Outbox
from .sender import RetryPolicy, Webhooks

__all__ = [
    "EVENT_TYPES",
    "LOBBY_TYPES",
    "Delivery",
    "EventType",
    "Outbox",
    "RetryPolicy",
    "WebhookEvent",
    "Webhooks",
    "lobby_event",
    "make_webhooks",
]


def make_webhooks(config: Config, instance_id: str) -> Webhooks | None:
    """The instance's sender, or None without ``webhook_urls``. With Redis configured the outbox
    is shared through Redis (cluster), else it is in memory (embedded)."""
    if not config.webhook_urls:
        return None
    # httpx logs every request at INFO: one line per delivery. The sender logs what matters
    # (failures, give-ups) itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    outbox: Outbox
    if config.redis:
        from .redis import RedisOutbox  # noqa: PLC0415 - needs the cluster extra (redis)

        outbox = RedisOutbox(config.redis, config.webhook_urls, prefix=config.redis_prefix)
    else:
        from .memory import MemoryOutbox  # noqa: PLC0415

        outbox = MemoryOutbox(config.webhook_urls)
    return Webhooks(config.webhook_urls, config.webhook_secret, outbox, consumer=instance_id,
                    user_agent=f"rmeeting-webhooks (instance {instance_id})")
