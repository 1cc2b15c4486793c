"""What only the Redis stores can get wrong: several instances on one Redis, outages, garbage.

The shared behaviour is in tests/conformance; everything here runs against a real redis-server
(tests/redis_server.py), a fresh one for the tests that kill it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trio

from rmeeting.closes import LeaveReason
from rmeeting.events import BusEvent, ChatPosted, MemberJoined, MemberLeft
from rmeeting.stores.base import MemberRecord, StoreUnavailable
from rmeeting.stores.redis import RedisChatLog, RedisMemberStore

from .redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """The shared server, emptied."""
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    return server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own, free to be killed."""
    with RedisServer() as server:
        yield server


async def until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


class Sink:
    def __init__(self) -> None:
        self.events: list[BusEvent] = []

    async def __call__(self, event: BusEvent) -> None:
        self.events.append(event)

    def of(self, meeting: str) -> list[BusEvent]:
        return [e for e in self.events if e.meeting_id == meeting]

    async def wait_count(self, meeting: str, n: int) -> list[BusEvent]:
        await until(lambda: len(self.of(meeting)) >= n)
        return self.of(meeting)


class States:
    """Records ``on_relay_state`` calls."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def __call__(self, up: bool) -> None:
        self.seen.append(up)

    async def wait(self, up: bool) -> None:
        await until(lambda: bool(self.seen) and self.seen[-1] == up)


def _chat(meeting: str, text: str, member: str = "s") -> ChatPosted:
    return ChatPosted(meeting, member, member, "member", text)


def _texts(events: list[BusEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, ChatPosted)]


def _member(meeting: str, instance: str = "i1") -> MemberRecord:
    return MemberRecord(
        meeting, uuid.uuid4().hex, "ann", "member", instance, time.time(), "cd" * 32
    )


@pytest.fixture
async def two_logs(url: str) -> AsyncIterator[tuple[RedisChatLog, RedisChatLog]]:
    a, b = RedisChatLog(url), RedisChatLog(url)
    yield a, b
    a.close()
    b.close()


async def test_two_instances_see_one_order(two_logs: tuple[RedisChatLog, RedisChatLog]) -> None:
    meeting = uuid.uuid4().hex
    sinks = Sink(), Sink()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for log, sink in zip(two_logs, sinks, strict=True):
                await nursery.start(log.serve, sink)
                await log.subscribe(meeting)

            async def sender(log: RedisChatLog, name: str) -> None:
                for i in range(25):
                    await log.publish(_chat(meeting, str(i), name))
                    if i % 5 == 0:
                        await log.publish(MemberJoined(meeting, name, name, "member",
                                                       False, False, float(i)))

            async with trio.open_nursery() as senders:
                for n, log in enumerate(two_logs):
                    for name in "abc":
                        senders.start_soon(sender, log, f"{n}{name}")
            total = 6 * (25 + 5)
            got_a, got_b = [await sink.wait_count(meeting, total) for sink in sinks]
            assert got_a == got_b  # the same events in the same order, on both instances
            chats = [e for e in got_a if isinstance(e, ChatPosted)]
            assert [e.seq for e in chats] == list(range(1, 6 * 25 + 1))
            for n in range(2):
                for name in "abc":
                    mine = [e.text for e in chats if e.member_id == f"{n}{name}"]
                    assert mine == [str(i) for i in range(25)]
            nursery.cancel_scope.cancel()


async def test_only_subscribed_meetings_and_unsubscribe(
    two_logs: tuple[RedisChatLog, RedisChatLog], url: str, redis_server: RedisServer  # noqa: F811
) -> None:
    a, b = two_logs
    m1, m2, marker = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    sink_a, sink_b = Sink(), Sink()
    raw = redis_server.client()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve, sink_a)
            await nursery.start(b.serve, sink_b)
            await a.subscribe(m1)
            await a.subscribe(m1)  # counted: two local subscribers
            await a.subscribe(marker)
            await b.subscribe(m2)
            await b.publish(_chat(m1, "one"))
            await a.publish(_chat(m2, "two"))
            await sink_a.wait_count(m1, 1)
            await sink_b.wait_count(m2, 1)
            assert {e.meeting_id for e in sink_a.events} == {m1}
            assert {e.meeting_id for e in sink_b.events} == {m2}

            await a.unsubscribe(m1)  # one subscriber left: still delivered
            await b.publish(_chat(m1, "three"))
            await sink_a.wait_count(m1, 2)

            await a.unsubscribe(m1)  # the last one: no more
            await b.publish(_chat(m1, "four"))
            await b.publish(_chat(marker, "after"))
            await sink_a.wait_count(marker, 1)  # same publisher, later: m1's would be in by now
            assert _texts(sink_a.of(m1)) == ["one", "three"]
            channel = f"rmeeting:c:{{{m1}}}"
            # and Redis no longer sends it to this instance
            await until(lambda: raw.pubsub_numsub(channel) == [(channel.encode(), 0)])
            nursery.cancel_scope.cancel()
    raw.close()


async def test_racing_leaves_on_two_instances(url: str) -> None:
    stores = RedisMemberStore(url), RedisMemberStore(url)
    meeting = uuid.uuid4().hex
    try:
        for _ in range(5):
            member = _member(meeting)
            await stores[0].join(member, max_members=10)
            got: list[MemberRecord | None] = []

            async def leave(store: RedisMemberStore) -> None:
                got.append(await store.leave(meeting, member.member_id, reason="race"))  # noqa: B023

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        for store in stores:
                            nursery.start_soon(leave, store)
            assert [g for g in got if g is not None] == [member]
        assert {e.reason for e in await stores[1].attendance(meeting)} == {"race"}
        assert len(await stores[1].attendance(meeting)) == 5
    finally:
        for store in stores:
            store.close()


async def test_instance_index_stays_exact(url: str, redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisMemberStore(url)
    raw = redis_server.client()
    meeting = uuid.uuid4().hex
    try:
        a, b = _member(meeting, instance="i-a"), _member(meeting, instance="i-a")
        await store.join(a, max_members=10)
        await store.join(b, max_members=10)
        moved = MemberRecord(**{**a.__dict__, "instance_id": "i-b"})
        await store.join(moved, max_members=10)  # a rejoined through another instance
        assert await store.by_instance("i-a") == [b]
        assert await store.by_instance("i-b") == [moved]
        await store.leave(meeting, b.member_id, reason="closed")
        assert raw.scard("rmeeting:i:i-a") == 0  # joins and leaves keep the index exact
        # An entry left behind (an instance died between its two steps) is checked and dropped.
        raw.sadd("rmeeting:i:i-b", f'["{meeting}","{b.member_id}","dead"]')
        assert await store.by_instance("i-b") == [moved]
        assert raw.scard("rmeeting:i:i-b") == 1
        await store.clear_meeting(meeting, reason="ended")
        assert raw.scard("rmeeting:i:i-b") == 0
    finally:
        raw.close()
        store.close()


async def test_redis_restart(own_redis: RedisServer) -> None:
    states = States()
    members = RedisMemberStore(own_redis.url)
    chat = RedisChatLog(own_redis.url, on_relay_state=states)
    meeting = uuid.uuid4().hex
    sink = Sink()
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, sink)
                assert states.seen == [True] and chat.relay_up
                await chat.subscribe(meeting)
                a, b = _member(meeting), _member(meeting)
                await members.join(a, max_members=10)
                await members.join(b, max_members=10)
                await members.leave(meeting, a.member_id, reason="closed")
                for i in range(3):
                    await chat.publish(_chat(meeting, str(i)))
                await sink.wait_count(meeting, 3)
                ledger = await members.attendance(meeting)

                own_redis.kill()
                await states.wait(False)
                assert not await members.ready() and not await chat.ready()
                for call in (
                    lambda: members.join(_member(meeting), max_members=10),
                    lambda: members.roster(meeting),
                    lambda: chat.publish(_chat(meeting, "lost")),
                    lambda: chat.history(meeting, 0, 10),
                    lambda: chat.subscribe(uuid.uuid4().hex),
                ):
                    started = trio.current_time()
                    with pytest.raises(StoreUnavailable):
                        await call()
                    assert trio.current_time() - started < 1.0

                cpu = time.process_time()
                await trio.sleep(1.0)
                assert time.process_time() - cpu < 0.5  # nothing spins while Redis is down

                own_redis.restart()
                await states.wait(True)
                assert states.seen == [True, False, True]
                assert await members.ready() and await chat.ready()
                assert await members.attendance(meeting) == ledger  # the AOF kept the ledger
                assert await members.roster(meeting) == [b]
                await chat.publish(_chat(meeting, "back"))
                got = await sink.wait_count(meeting, 4)  # re-subscribed after the restart
                assert [(e.seq, e.text) for e in got if isinstance(e, ChatPosted)] == [
                    (1, "0"), (2, "1"), (3, "2"), (4, "back")
                ]
                history = await chat.history(meeting, 0, 10)
                assert [e.seq for e in history.events] == [1, 2, 3, 4] and history.complete
                nursery.cancel_scope.cancel()
    finally:
        members.close()
        chat.close()


async def test_cancelling_serve_while_redis_is_down(own_redis: RedisServer) -> None:
    states = States()
    chat = RedisChatLog(own_redis.url, on_relay_state=states)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, Sink())
                own_redis.kill()
                await states.wait(False)
                await trio.sleep(0.5)  # into the backoff
                started = trio.current_time()
                nursery.cancel_scope.cancel()
            assert trio.current_time() - started < 0.5
            # Also when it was down from the start: serve starts (down) and stops promptly.
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, Sink())
                assert not chat.relay_up and not await chat.ready()
                started = trio.current_time()
                nursery.cancel_scope.cancel()
            assert trio.current_time() - started < 0.5
    finally:
        chat.close()


def _raw(meeting: str, kind: str, data: dict[str, Any], seq: int = 0) -> bytes:
    return json.dumps({"meeting_id": meeting, "kind": kind, "data": data, "seq": seq,
                       "ts": 1.5}).encode()


async def test_history_written_before_typed_events_is_read(
    url: str, redis_server: RedisServer  # noqa: F811
) -> None:
    """The history stream's entries as rmeeting wrote them with untyped events."""
    chat = RedisChatLog(url)
    meeting = uuid.uuid4().hex
    raw = redis_server.client()
    old = (b'{"meeting_id":"%s","kind":"chat","ts":1764211871.5,"data":{"id":"u1",'
           b'"name":"Ann \\u00e9","role":"host","text":"from before"},"seq":1}' % meeting.encode())
    try:
        raw.xadd(f"rmeeting:m:{{{meeting}}}:chat", {"e": old}, id="1-0")
        raw.set(f"rmeeting:m:{{{meeting}}}:seq", 1)
        with trio.fail_after(10):
            await chat.publish(MemberLeft(meeting, "u1", "Ann", "host", 1.0, LeaveReason.LEFT))
            new = await chat.publish(_chat(meeting, "after"))
            history = await chat.history(meeting, 0, 10)
        assert list(history.events) == [
            ChatPosted(meeting, "u1", "Ann é", "host", "from before", 1, 1764211871.5), new
        ]
        assert new.seq == 2 and history.last_seq == 2 and history.complete
    finally:
        raw.close()
        chat.close()


async def test_garbage_on_a_meeting_channel_is_skipped(
    url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    chat = RedisChatLog(url)
    meeting, other = uuid.uuid4().hex, uuid.uuid4().hex
    channel = f"rmeeting:c:{{{meeting}}}"
    raw = redis_server.client()
    sink = Sink()
    garbage: list[Any] = [
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'{"meeting_id": "x"}',
        b'{"meeting_id": "%s", "kind": "chat", "data": [], "seq": 1, "ts": 0}' % meeting.encode(),
        b'{"meeting_id": "%s", "kind": "chat", "data": {}, "seq": 1, "ts": 0}' % other.encode(),
        # well-formed JSON, but not an event rmeeting ever writes
        _raw(meeting, "typing", {"id": "s"}),
        _raw(meeting, "chat", {"id": "s", "name": "s", "role": "admin", "text": "x"}, seq=1),
        _raw(meeting, "chat", {"id": "s", "name": "s", "role": "member", "text": 5}, seq=1),
        _raw(meeting, "chat", {"id": "s", "name": "s", "role": "member", "text": "x"}),
        _raw(meeting, "left", {"id": "s", "name": "s", "role": "member", "joined_at": 1,
                               "reason": "bored"}),
        _raw(meeting, "left", {"id": "s", "name": "s", "role": "member", "joined_at": 1,
                               "reason": "kicked", "close": [4999, "x"]}),
        _raw(meeting, "joined", {"id": "s", "name": "s", "role": "member", "joined_at": "1",
                                 "camera": False, "mic": False}),
        _raw(meeting, "updated", {"id": "s", "name": "s", "role": "member", "joined_at": 1,
                                  "camera": False, "mic": False, "changes": {"role": "host"}}),
    ]
    try:
        with trio.fail_after(10), caplog.at_level(logging.WARNING):
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, sink)
                await chat.subscribe(meeting)
                for payload in garbage:
                    raw.publish(channel, payload)
                await chat.publish(_chat(meeting, "fine"))
                got = await sink.wait_count(meeting, 1)
                assert _texts(got) == ["fine"] and len(got) == 1
                assert chat.malformed == len(garbage) and chat.relay_up
                assert sum("malformed" in r.getMessage() for r in caplog.records) == len(garbage)
                nursery.cancel_scope.cancel()
    finally:
        raw.close()
        chat.close()


async def test_subscribed_before_serve_and_handler_errors_end_serve(url: str) -> None:
    chat = RedisChatLog(url)
    meeting = uuid.uuid4().hex

    async def failing(event: BusEvent) -> None:
        raise ValueError(event.meeting_id)

    try:
        with trio.fail_after(10):
            await chat.subscribe(meeting)  # only recorded: serve subscribes before it starts
            with pytest.raises(BaseExceptionGroup) as caught:
                async with trio.open_nursery() as nursery:
                    await nursery.start(chat.serve, failing)
                    await chat.publish(_chat(meeting, "boom"))
            # a failing handler ends serve (the owner supervises it), thread and all
            assert caught.value.subgroup(ValueError) is not None
            assert not chat.relay_up
    finally:
        chat.close()


async def test_an_ended_meeting_expires_from_redis_by_itself(url: str) -> None:
    """Issue #10 item 10: an ended meeting's ledger and bans do not stay forever. ``retire``
    gives every key of the meeting a TTL, so Redis purges them even if no instance runs then."""
    import redis as redis_client

    members, chat = RedisMemberStore(url), RedisChatLog(url, history_limit=10)
    raw = redis_client.Redis.from_url(url)
    meeting = uuid.uuid4().hex
    try:
        record = MemberRecord(meeting, "m1", "ann", "member", "i1", time.time(), "cd" * 32)
        await members.join(record, max_members=10)
        await members.ban(meeting, "m2")
        await chat.publish(ChatPosted(meeting, "m1", "ann", "member", "hi"))
        await members.clear_meeting(meeting, reason="meeting ended")
        keys = {k.decode() if isinstance(k, bytes) else k for k in raw.keys(f"*{meeting}*")}
        assert {k.rsplit(":", 1)[1] for k in keys} >= {"ledger", "banned", "seq", "chat"}
        await members.retire(meeting, keep=0.5)
        assert all(0 < raw.pttl(k) <= 500 for k in keys)
        assert len(await members.attendance(meeting)) == 1  # readable while retained
        with trio.fail_after(5):
            while raw.keys(f"*{meeting}*"):
                await trio.sleep(0.1)
        assert await members.attendance(meeting) == []
        assert await members.is_banned(meeting, "m2") is False
    finally:
        members.close()
        chat.close()
        raw.close()
