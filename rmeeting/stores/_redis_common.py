"""What the Redis stores share: the connection (to one Redis or a Redis Cluster, whichever the
server turns out to be), the thread hop, key names."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import trio
from trio.lowlevel import RunVar

from .base import StoreUnavailable
from .redis_link import Client, RedisLink, is_unavailable

__all__ = ["SOCKET_TIMEOUT", "Client", "Keys", "RedisLink", "call", "connect", "dumps", "ping"]

T = TypeVar("T")

#: Every command's socket timeout: a Redis that hangs costs a store call at most this long.
SOCKET_TIMEOUT = 2.0


def connect(url: str, timeout: float) -> RedisLink:
    """The link to ``url``: one Redis URL, or any node(s) of a Redis Cluster, comma-separated.
    Nothing is dialled yet: the first call finds out which it is (see ``redis_link``)."""
    return RedisLink(url, timeout)


#: Worker threads for store calls, per Trio run. Few and reused: with Trio's default (40 shared
#: by everything) a burst of calls makes new threads, which exit after 10 s idle, and each new
#: thread grows the allocator's heap a little (docs/benchmarks.md#soak). Store calls never
#: block in Redis (no BLPOP/XREAD BLOCK here), so a small pool only queues them briefly.
STORE_THREADS = 16
_store_threads: RunVar[trio.CapacityLimiter] = RunVar("rmeeting_redis_store_threads")


def _limiter() -> trio.CapacityLimiter:
    try:
        return _store_threads.get()
    except LookupError:
        limiter = trio.CapacityLimiter(STORE_THREADS)
        _store_threads.set(limiter)
        return limiter


async def call(fn: Callable[[], T]) -> T:
    """Run one store call's blocking Redis work in a worker thread (at most STORE_THREADS)."""
    try:
        return await trio.to_thread.run_sync(fn, limiter=_limiter())
    except Exception as exc:
        # a refused, timed-out or still-loading Redis; a cluster failing over or not covering
        # the slot yet: all "try again later", none a bug
        if is_unavailable(exc):
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise


async def ping(link: RedisLink) -> bool:
    try:
        return await trio.to_thread.run_sync(link.ping, limiter=_limiter())
    except Exception as exc:
        if is_unavailable(exc) or isinstance(exc, redis.RedisError):
            return False
        raise


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
