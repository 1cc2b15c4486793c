"""The cluster's outbox: Redis streams shared by every instance.

Keys (``P`` is ``redis_prefix``; every key carries the hash tag ``{wh}`` so that the enqueue
script's keys share one Redis Cluster slot):

===========================  =======  =========================================================
``P:wh:{wh}:q:<endpoint>``   stream   one per endpoint (``<endpoint>``: 16 hex digits of the
                                      URL's sha256); field ``e`` = the event's JSON; consumer
                                      group ``senders``, one consumer per instance (its id)
``P:wh:{wh}:seen:<id>``      string   an enqueued event id, for :data:`DEDUPE_SECONDS`
``P:wh:{wh}:dropped``        string   deliveries trimmed from full streams (a counter)
===========================  =======  =========================================================

``enqueue`` is one Lua script: ``SET seen NX`` and, only if that set it, ``XADD`` to every
endpoint's stream. So of all the instances whose watch saw the same change, exactly one queues
it. Every instance reads every stream with ``XREADGROUP``, so each entry goes to one of them;
``XACK`` + ``XDEL`` once delivered. An entry its consumer has not touched (``keep``) for
``reclaim_after`` seconds is taken over with ``XAUTOCLAIM``: a sender killed with -9 mid-delivery
leaves its entries pending, and another instance delivers them. A stream holds at most
``capacity`` entries; at that size the oldest is trimmed and counted (``dropped``).

The ``redis`` setting means what it means to the stores (``rmeeting.stores.redis_link``): one
URL, or Redis Cluster node URLs comma-separated, the kind detected from the server on the first
call. On a cluster every key above is in the slot of ``{wh}``, so the scripts, ``XREADGROUP``,
``XAUTOCLAIM`` and the ``XACK``+``XDEL`` transaction each run on that slot's primary, and the
whole outbox lives on one shard. A failover of that primary is an outage like a Redis restart:
calls raise ``StoreUnavailable`` (the sender holds its events and retries), and the client
follows ``MOVED`` to the promoted replica, which has the streams, the consumer group and its
pending entries (replicated), so claims resume where they were.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import trio

from ..stores.base import StoreUnavailable
from ..stores.redis_link import RedisLink, is_unavailable
from .events import WebhookEvent
from .outbox import DEDUPE_SECONDS, Delivery

__all__ = ["REDIS_CAPACITY", "RedisOutbox"]

log = logging.getLogger("rmeeting.webhooks")

#: entries one endpoint's stream holds before the oldest is trimmed
REDIS_CAPACITY = 100_000
GROUP = "senders"
#: a command's socket timeout: a Redis that hangs costs one outbox call at most this long
SOCKET_TIMEOUT = 2.0

T = TypeVar("T")

# KEYS: seen, dropped, cleared seen, stream... ARGV: dedupe seconds, event JSON, capacity, clear?
_ENQUEUE = """
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local cap = tonumber(ARGV[3])
for i = 4, #KEYS do
  if redis.call('XLEN', KEYS[i]) >= cap then
    redis.call('INCRBY', KEYS[2], redis.call('XTRIM', KEYS[i], 'MAXLEN', cap - 1))
  end
  redis.call('XADD', KEYS[i], '*', 'e', ARGV[2])
end
return 1
"""

# KEYS: stream. ARGV: group, consumer, entry id. 1 if it was still this consumer's (touched).
_KEEP = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return #got
"""


class RedisOutbox:
    """:class:`~rmeeting.webhooks.outbox.Outbox` on Redis streams (cluster mode)."""

    def __init__(self, url: str, endpoints: Sequence[str], *, prefix: str = "rmeeting",
                 capacity: int = REDIS_CAPACITY, max_wait: float = 1.0) -> None:
        # nothing is dialled yet: the first call finds out whether ``url`` is a cluster
        self._link = RedisLink(url, SOCKET_TIMEOUT)
        # blocking reads wait up to max_wait on connections of their own
        self._reader = RedisLink(url, SOCKET_TIMEOUT + max_wait)
        self._max_wait = max_wait
        self._base = f"{prefix}:wh:{{wh}}"
        self._streams = {url: f"{self._base}:q:{_digest(url)}" for url in endpoints}
        self._capacity = capacity
        self._enqueue = self._link.script(_ENQUEUE)
        self._keep = self._link.script(_KEEP)
        self._dropped = 0
        self._groups_ready = False

    @property
    def dropped(self) -> int:
        return self._dropped

    def _seen(self, event_id: str) -> str:
        return f"{self._base}:seen:{event_id}"

    def _ensure_groups(self) -> None:
        client = self._link.client()
        for stream in self._streams.values():
            try:  # from 0: entries queued before any instance read the stream are delivered
                client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    async def enqueue(self, event: WebhookEvent) -> bool:
        keys = [self._seen(event.id), f"{self._base}:dropped",
                self._seen(event.clears or event.id), *self._streams.values()]
        args: list[str | int] = [DEDUPE_SECONDS, event.to_json(), self._capacity,
                "1" if event.clears else "0"]
        return bool(await call(lambda: self._enqueue(keys, args)))

    async def claim(
        self, endpoint: str, consumer: str, *, count: int, reclaim_after: float, wait: float
    ) -> Sequence[Delivery]:
        stream = self._streams[endpoint]
        block = max(1, int(min(wait, self._max_wait) * 1000))

        def run() -> list[Delivery]:
            if not self._groups_ready:
                self._ensure_groups()
            try:
                return self._claim(endpoint, stream, consumer, count, reclaim_after, block)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_groups()  # the stream was deleted (FLUSHALL?): start it again
                return []

        return await call(run)

    def _claim(self, endpoint: str, stream: str, consumer: str, count: int,
               reclaim_after: float, block: int) -> list[Delivery]:
        got: list[Delivery] = []
        reclaimed: Any = self._link.client().xautoclaim(
            stream, GROUP, consumer, min_idle_time=int(reclaim_after * 1000),
            start_id="0-0", count=count)
        for entry_id, fields in reclaimed[1]:
            got.extend(self._delivery(endpoint, stream, entry_id, fields, claims=2))
        if len(got) < count:
            answer: Any = self._reader.client().xreadgroup(
                GROUP, consumer, {stream: ">"}, count=count - len(got),
                block=None if got else block)
            for _name, entries in answer or []:
                for entry_id, fields in entries:
                    got.extend(self._delivery(endpoint, stream, entry_id, fields, claims=1))
        return got

    def _delivery(self, endpoint: str, stream: str, entry_id: Any, fields: Any,
                  claims: int) -> list[Delivery]:
        entry = _text(entry_id)
        try:
            event = WebhookEvent.from_json(fields[b"e"])
        except (ValueError, TypeError, KeyError):
            log.error("dropping an unreadable webhook outbox entry %s of %s", entry, stream)
            self._link.client().xack(stream, GROUP, entry)
            self._link.client().xdel(stream, entry)
            return []
        return [Delivery(endpoint, entry, event, claims)]

    async def keep(self, delivery: Delivery, consumer: str) -> bool:
        stream = self._streams[delivery.endpoint]
        args = [GROUP, consumer, delivery.entry]
        return bool(await call(lambda: self._keep([stream], args)))

    async def ack(self, delivery: Delivery) -> None:
        stream = self._streams[delivery.endpoint]

        def run() -> None:
            # one slot: a MULTI on that slot's primary on a cluster too
            with self._link.client().pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, delivery.entry)
                pipe.xdel(stream, delivery.entry)
                pipe.execute()

        await call(run)

    async def depth(self, endpoint: str) -> int:
        def run() -> tuple[int, int]:
            with self._link.client().pipeline(transaction=False) as pipe:
                pipe.xlen(self._streams[endpoint])
                pipe.get(f"{self._base}:dropped")
                length, dropped = pipe.execute()
            return int(length), int(dropped or 0)

        length, self._dropped = await call(run)
        return length

    def close(self) -> None:
        self._link.close()
        self._reader.close()


def _digest(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def call(fn: Callable[[], T]) -> T:
    """redis-py's sync client in a worker thread (the link has no retries: the sender retries,
    and it must see an outage at once); Redis being away, or a cluster failing over or not
    covering the slot yet, as StoreUnavailable."""
    try:
        return await trio.to_thread.run_sync(fn)
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise
