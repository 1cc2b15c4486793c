"""The webhook outbox's conformance suite, run on the memory and the Redis implementation
(a real redis-server, and a real Redis Cluster of 3 primaries with replicas): dedupe by id, one
queue per endpoint, claim / keep / ack, the take-over of a dead consumer's claims, and the
bounded queue's overflow policy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from rmeeting.webhooks.events import WebhookEvent, event_id
from rmeeting.webhooks.memory import MemoryOutbox
from rmeeting.webhooks.outbox import Outbox
from rmeeting.webhooks.redis import RedisOutbox

# the fixtures redis_server and redis_cluster: conftest.py's (one of each for the session)
from ..redis_server import RedisClusterServer, RedisServer

A, B = "http://127.0.0.1:1/a", "http://127.0.0.1:1/b"
REDIS_KINDS = [pytest.param("redis", marks=pytest.mark.redis),
               pytest.param("redis-cluster", marks=pytest.mark.redis)]


def make_outbox(kind: str, request: pytest.FixtureRequest, capacity: int) -> Outbox:
    if kind == "memory":
        return MemoryOutbox([A, B], capacity=capacity)
    server: RedisServer | RedisClusterServer = request.getfixturevalue(
        "redis_cluster" if kind == "redis-cluster" else "redis_server")
    server.flushall()
    return RedisOutbox(server.url, [A, B], capacity=capacity, max_wait=0.2)


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def outbox(request: pytest.FixtureRequest) -> AsyncIterator[Outbox]:
    box = make_outbox(request.param, request, capacity=100)
    yield box
    box.close()


def event(n: int, kind: str = "controls.changed") -> WebhookEvent:
    return WebhookEvent(event_id(kind, "m", n), "controls.changed", 1_700_000_000.0 + n,
                        {"meeting_id": "m", "revision": n, "name": "\u00e9\u4f1a"})


async def claim_all(box: Outbox, endpoint: str, consumer: str, *, reclaim_after: float = 60,
                    wait: float = 0.05) -> list[WebhookEvent]:
    got = await box.claim(endpoint, consumer, count=50, reclaim_after=reclaim_after, wait=wait)
    return [d.event for d in got]


async def test_an_event_is_queued_once_for_every_endpoint(outbox: Outbox) -> None:
    with trio.fail_after(10):
        assert await outbox.enqueue(event(1)) is True
        assert await outbox.enqueue(event(1)) is False  # the same id: another instance's copy
        assert await outbox.enqueue(event(2)) is True
        for endpoint in (A, B):
            assert await outbox.depth(endpoint) == 2
            assert await claim_all(outbox, endpoint, "i1") == [event(1), event(2)]
            assert await claim_all(outbox, endpoint, "i2") == []  # handed out once
        assert outbox.dropped == 0


async def test_ack_removes_and_an_empty_claim_waits_then_returns(outbox: Outbox) -> None:
    with trio.fail_after(10):
        await outbox.enqueue(event(1))
        [delivery] = await outbox.claim(A, "i1", count=5, reclaim_after=60, wait=0.05)
        assert delivery.claims == 1 and delivery.endpoint == A
        await outbox.ack(delivery)
        assert await outbox.depth(A) == 0 and await outbox.depth(B) == 1
        assert await claim_all(outbox, A, "i1", reclaim_after=0) == []

        async def later() -> None:
            await trio.sleep(0.05)
            await outbox.enqueue(event(2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            got = await outbox.claim(A, "i1", count=5, reclaim_after=60, wait=5)
        assert [d.event for d in got] == [event(2)]  # woken by the enqueue


async def test_a_quiet_claim_is_taken_over_and_the_old_owner_learns_it(outbox: Outbox) -> None:
    with trio.fail_after(10):
        await outbox.enqueue(event(1))
        [mine] = await outbox.claim(A, "dead", count=5, reclaim_after=0.2, wait=0.05)
        assert await outbox.keep(mine, "dead") is True
        assert await claim_all(outbox, A, "alive", reclaim_after=0.2) == []  # kept: not idle
        await trio.sleep(0.3)  # the owner went quiet (killed)
        [theirs] = await outbox.claim(A, "alive", count=5, reclaim_after=0.2, wait=0.05)
        assert theirs.event == mine.event and theirs.claims > 1
        assert await outbox.keep(mine, "dead") is False  # it is someone else's now
        assert await outbox.keep(theirs, "alive") is True
        await outbox.ack(theirs)
        assert await outbox.depth(A) == 0


async def test_a_created_event_clears_the_mark_of_the_end_it_names(outbox: Outbox) -> None:
    ended = WebhookEvent(event_id("meeting.ended", "m"), "meeting.ended", 1.0, {})
    created = WebhookEvent(event_id("meeting.created", "m", 2.0), "meeting.created", 2.0, {},
                           clears=ended.id)
    with trio.fail_after(10):
        assert await outbox.enqueue(ended) is True
        assert await outbox.enqueue(ended) is False
        assert await outbox.enqueue(created) is True  # the meeting id is used again
        assert await outbox.enqueue(ended) is True  # so it can end again


@pytest.mark.parametrize("kind", ["memory", *REDIS_KINDS])
async def test_a_full_queue_drops_its_oldest_and_counts_it(
    kind: str, request: pytest.FixtureRequest
) -> None:
    box = make_outbox(kind, request, capacity=3)
    try:
        with trio.fail_after(10):
            for n in range(5):
                await box.enqueue(event(n))
            assert await box.depth(A) == 3
            assert box.dropped == 4  # two per endpoint
            assert await claim_all(box, A, "i1") == [event(2), event(3), event(4)]
    finally:
        box.close()


def test_the_stored_form_reads_back_and_garbage_is_refused() -> None:
    original = event(7)
    assert WebhookEvent.from_json(original.to_json()) == original
    for bad in ('{"id":"x","type":"nope","timestamp":1,"data":{}}',
                '{"id":"x","type":"meeting.ended","timestamp":true,"data":{}}',
                '{"id":1,"type":"meeting.ended","timestamp":1,"data":{}}', "[]", "{"):
        with pytest.raises((ValueError, TypeError, KeyError)):
            WebhookEvent.from_json(bad)

