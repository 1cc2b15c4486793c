"""What the Redis stores share: the client's settings, the thread hop, key names."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import StoreUnavailable

__all__ = ["SOCKET_TIMEOUT", "Keys", "call", "connect", "dumps", "ping"]

T = TypeVar("T")

#: Every command's socket timeout: a Redis that hangs costs a store call at most this long.
SOCKET_TIMEOUT = 2.0


def connect(url: str, timeout: float) -> redis.Redis:
    # No retries: a down Redis must surface as StoreUnavailable at once, and a retried script
    # is not idempotent (a publish would go out twice). A pooled connection that died while
    # idle is still replaced on checkout, so the first call after a restart works.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )


async def call(fn: Callable[[], T]) -> T:
    """Run one store call's blocking Redis work in a worker thread."""
    try:
        return await trio.to_thread.run_sync(fn)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError included
        raise StoreUnavailable(f"redis: {exc}") from exc


async def ping(client: redis.Redis) -> bool:
    try:
        return bool(await trio.to_thread.run_sync(client.ping))
    except redis.RedisError:
        return False


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Keys:
    """Key and channel names; the layout is documented in ``rmeeting.stores.redis``."""

    prefix: str

    def meeting(self, meeting_id: str, name: str) -> str:
        return f"{self.prefix}:m:{{{meeting_id}}}:{name}"

    def members(self, meeting_id: str) -> list[str]:
        """KEYS of the member scripts: roster, open, ledger."""
        return [self.meeting(meeting_id, k) for k in ("roster", "open", "ledger")]

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:i:{instance_id}"

    def channel(self, meeting_id: str) -> str:
        return f"{self.prefix}:c:{{{meeting_id}}}"

    def relay(self, relay_id: str) -> str:
        return f"{self.prefix}:relay:{relay_id}"
