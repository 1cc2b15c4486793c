"""``RedisChatLog``: chat history, sequence numbers and the relay between instances (keys in
``rmeeting.stores.redis``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..events import ChatPosted, LobbyChanged, MemberJoined, MemberLeft, MemberUpdated, stamped
from . import _event_json
from ._redis_common import SOCKET_TIMEOUT, Keys, call, connect, dumps, ping
from ._redis_relay import PubSubRelay
from .base import BusEvent, History, StoreUnavailable

__all__ = ["RedisChatLog"]

# KEYS: seq, chat stream. ARGV: channel, event JSON up to its final seq value, chat?, limit.
# One script: seq order, history order and publish order are the same order. On a Redis Cluster
# the channel is a shard channel of the meeting's slot (same hash tag as the keys, so the script
# touches one slot) and SPUBLISH reaches only that shard's nodes, where a PUBLISH would be
# broadcast to every node of the cluster.
_PUBLISH = """
local seq = 0
if ARGV[3] == '1' then seq = redis.call('INCR', KEYS[1]) end
local event = ARGV[2] .. seq .. '}'
if seq > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'e', event)
end
redis.call('PUBLISH', ARGV[1], event)
return seq
"""
_SPUBLISH = _PUBLISH.replace("'PUBLISH'", "'SPUBLISH'")


_B = TypeVar("_B", ChatPosted, MemberJoined, MemberLeft, MemberUpdated, LobbyChanged)


def _event(raw: bytes | str) -> BusEvent:
    """Decode one published or stored event (format: ``_event_json``); ValueError, TypeError
    or KeyError if malformed."""
    obj = json.loads(raw)
    meeting_id, kind, data, seq, ts = (
        obj["meeting_id"], obj["kind"], obj["data"], obj["seq"], obj["ts"]
    )
    if not (isinstance(meeting_id, str) and isinstance(kind, str) and isinstance(data, dict)):
        raise TypeError("meeting_id, kind or data of the wrong type")
    if type(seq) is not int or seq < 0 or isinstance(ts, bool) or not isinstance(ts, int | float):
        raise TypeError("seq or ts of the wrong type")
    return _event_json.decode(meeting_id, kind, data, seq, float(ts))


def _chat(raw: bytes) -> ChatPosted:
    event = _event(raw)
    if not isinstance(event, ChatPosted):
        raise ValueError("a history entry that is not chat")
    return event


def _as_dict(fields: Any) -> Any:
    return dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields


class _Subscription:
    def __init__(self) -> None:
        self.refs = 1
        self.confirmed = trio.Event()
        self.failed = False


class RedisChatLog:
    """``ChatLog`` on Redis: history in a bounded stream per meeting, the relay over pub/sub.

    ``publish`` numbers, stores and publishes in one script, so every instance receives one
    meeting's events in one order, seq order. ``subscribe``/``unsubscribe`` are counted per
    meeting: this instance SUBSCRIBEs on the first and UNSUBSCRIBEs on the last, and
    ``subscribe`` returns only once Redis confirmed (without a running ``serve`` it just records
    the wish, and ``serve`` subscribes before it reports started). After ``unsubscribe`` no more
    events of that meeting reach the handler.

    Relay outages: ``on_relay_state(up)`` is called (in the Trio thread, must not block) each time
    the relay's pub/sub connection goes down or comes back (``relay_up`` holds the current state).
    Events published while it was down are missed by this instance: on ``True`` after a
    ``False``, the owner should resync (e.g. fetch chat since the last seq with ``history``).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rmeeting",
        history_limit: int = 500,
        clock: Callable[[], float] = time.time,
        on_relay_state: Callable[[bool], None] | None = None,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self._link = connect(url, socket_timeout)
        self._keys = Keys(prefix)
        self._limit = history_limit
        self._clock = clock
        self._publish = self._link.script(_PUBLISH)
        self._spublish = self._link.script(_SPUBLISH)
        self._subs: dict[str, _Subscription] = {}
        self._relay = PubSubRelay(
            self._link, self._keys.relay(uuid.uuid4().hex).encode(), self._decode,
            on_relay_state,
        )

    @property
    def relay_up(self) -> bool:
        """True while ``serve`` runs with its pub/sub connection up and subscribed."""
        return self._relay.up

    @property
    def malformed(self) -> int:
        """How many undecodable messages the relay skipped."""
        return self._relay.malformed

    def close(self) -> None:
        """Release the connections (idempotent); cancel ``serve`` first."""
        self._link.close()

    async def aclose(self) -> None:
        self.close()

    async def publish(self, event: _B) -> _B:
        meeting_id = event.meeting_id
        kind, data = _event_json.encode(event)
        ts = self._clock()
        head = (
            f'{{"meeting_id":{dumps(meeting_id)},"kind":{dumps(kind)},"ts":{dumps(ts)},'
            f'"data":{dumps(data)},"seq":'
        )
        chat = isinstance(event, ChatPosted)
        keys = [self._keys.meeting(meeting_id, "seq"), self._keys.meeting(meeting_id, "chat")]
        args = [self._keys.channel(meeting_id), head, "1" if chat else "0", self._limit]

        def work() -> Any:
            self._link.client()  # sharded or not: known once connected
            script = self._spublish if self._link.cluster else self._publish
            return script(keys, args)

        seq = await call(work)
        return stamped(event, seq=int(seq), ts=ts)

    async def history(self, meeting_id: str, after_seq: int, limit: int) -> History:
        limit = max(limit, 0)
        stream = self._keys.meeting(meeting_id, "chat")

        def work() -> list[Any]:
            # One transaction: last_seq and the entries come from the same moment.
            # (on a cluster both keys share the meeting's slot, so MULTI/EXEC still works)
            pipe = self._link.client().pipeline(transaction=True)
            pipe.get(self._keys.meeting(meeting_id, "seq"))
            pipe.xrange(stream, count=1)
            pipe.xrevrange(stream, min=str(max(after_seq, 0) + 1), count=limit + 1)
            result: list[Any] = pipe.execute()
            # the cluster's MULTI/EXEC hands stream entries back unparsed: [id, [field, value]]
            return [result[0], *([(i, _as_dict(f)) for i, f in r] for r in result[1:])]

        raw_last, oldest, newest = await call(work)
        last = int(raw_last or 0)
        oldest_kept = int(oldest[0][0].split(b"-")[0]) if oldest else last + 1  # id <seq>-0
        complete = after_seq >= last or oldest_kept <= after_seq + 1
        if len(newest) > limit:
            newest = newest[:limit]
            complete = False
        events = [_chat(fields[b"e"]) for _, fields in reversed(newest)]
        return History(events, last, complete)

    async def subscribe(self, meeting_id: str) -> None:
        sub = self._subs.get(meeting_id)
        if sub is None:
            sub = self._subs[meeting_id] = _Subscription()
            try:
                await self._relay.add(self._keys.channel(meeting_id).encode())
            except BaseException:
                sub.failed = True
                sub.confirmed.set()
                self._release(meeting_id, sub)
                raise
            sub.confirmed.set()
            return
        sub.refs += 1
        try:
            await sub.confirmed.wait()  # the first subscriber's SUBSCRIBE may still be on its way
            if sub.failed:
                raise StoreUnavailable("the subscription failed")
        except BaseException:
            self._release(meeting_id, sub)
            raise

    async def unsubscribe(self, meeting_id: str) -> None:
        sub = self._subs.get(meeting_id)
        if sub is not None:
            self._release(meeting_id, sub)

    def _release(self, meeting_id: str, sub: _Subscription) -> None:
        sub.refs -= 1
        if sub.refs <= 0 and self._subs.get(meeting_id) is sub:
            del self._subs[meeting_id]
            self._relay.remove(self._keys.channel(meeting_id).encode())

    async def drop(self, meeting_id: str) -> None:
        keys = [self._keys.meeting(meeting_id, k) for k in ("seq", "chat")]
        await call(lambda: self._link.client().delete(*keys))

    async def serve(
        self,
        handler: Callable[[BusEvent], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the relay until cancelled: ``await handler(event)`` for each event of a
        subscribed meeting, in order. Started once the listener made its first connection
        attempt; a Redis outage never ends it (see ``on_relay_state``). Stops, thread and
        connection included, promptly when cancelled."""

        async def deliver(event: BusEvent) -> None:
            if event.meeting_id in self._subs:  # not if unsubscribed while it was in flight
                await handler(event)

        await self._relay.serve(deliver, task_status=task_status)

    async def ready(self) -> bool:
        """True when Redis answers PING and, while ``serve`` runs, the relay is up."""
        if self._relay.serving and not self._relay.up:
            return False
        return await ping(self._link)

    def _decode(self, channel: bytes, payload: bytes) -> BusEvent:
        event = _event(payload)
        if self._keys.channel(event.meeting_id).encode() != channel:
            raise ValueError("meeting_id does not match the channel")
        return event
