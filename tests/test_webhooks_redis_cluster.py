"""The webhook outbox on a real Redis Cluster (3 primaries with a replica each).

Where it lives (every key on the primary of the ``{wh}`` slot, found from any one node's URL;
checked on the failover test's fresh cluster before the kill);
two instances behind nginx configured with the cluster's node URLs deliver each event once per
endpoint, as on one Redis (tests/test_webhooks_cluster.py's test, run on the cluster); and what
a ``kill -9`` of that primary costs while events are queued, some of them held by a consumer
that dies with it: the outbox reports unavailable, the sender holds and retries, and after the
replica's promotion every event reaches a real receiver exactly once (nothing that was
acknowledged before the kill comes again, nothing queued is lost).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
import trio

from rmeeting.cluster.launcher import LocalCluster
from rmeeting.cluster.processes import RedisServer, free_ports
from rmeeting.cluster.redis_cluster import RedisClusterServer
from rmeeting.webhooks.events import WebhookEvent, event_id
from rmeeting.webhooks.redis import RedisOutbox
from rmeeting.webhooks.sender import RetryPolicy, Webhooks

from .test_webhooks_cluster import (
    test_each_event_reaches_each_endpoint_once as each_event_reaches_each_endpoint_once,
)
from .webhook_receiver import SECRET, Receiver

pytestmark = [pytest.mark.redis]

#: any key of the outbox: they all carry the hash tag {wh}, one slot
WH_KEY = "rmeeting:wh:{wh}:dropped"
#: the live sender's take-over time of a quiet claim (short: the dead consumer's claims are taken
#: over after the failover, not before the kill)
RECLAIM_AFTER = 3.0
#: kill to promotion: cluster-node-timeout (1 s) to mark it failed, then the replica's election
FAILOVER_BOUND = 10.0
#: promotion to every event delivered
RESUME_AFTER_PROMOTION = 8.0


def event(n: int) -> WebhookEvent:
    return WebhookEvent(event_id("controls.changed", "m", n), "controls.changed",
                        1_700_000_000.0 + n, {"meeting_id": "m", "revision": n})


def _keys(cluster: RedisClusterServer, node: RedisServer) -> set[str]:
    return set(cluster.command(node, "--scan").split())


async def _lives_on_the_wh_primary_found_from_one_node_url(
    redis_cluster: RedisClusterServer,
) -> None:
    """On a fresh cluster: an outbox given one node's URL works, and its keys are all on the
    primary of the ``{wh}`` slot."""
    primary = redis_cluster.primary_of(WH_KEY)
    # one node's URL, and not the one that serves the slot: the client finds the rest
    other = next(n for n in redis_cluster.nodes if n is not primary)
    url = "http://127.0.0.1:1/hook"
    box = RedisOutbox(other.url, [url], max_wait=0.2)
    try:
        assert await box.enqueue(event(1000)) is True
        assert await box.enqueue(event(1000)) is False
        [delivery] = await box.claim(url, "i1", count=5, reclaim_after=60, wait=0.05)
        assert delivery.event == event(1000)
        assert await box.keep(delivery, "i1") is True
        await box.ack(delivery)
        assert await box.depth(url) == 0
    finally:
        box.close()
    here = _keys(redis_cluster, primary)
    assert any(k.startswith("rmeeting:wh:{wh}:q:") for k in here), here
    assert any(k.startswith("rmeeting:wh:{wh}:seen:") for k in here), here
    for node in redis_cluster.nodes:
        if node is not primary and "role:master" in redis_cluster.command(
                node, "info", "replication"):
            assert not _keys(redis_cluster, node), node.port


@pytest.mark.cluster
@pytest.mark.etcd
async def test_two_instances_on_a_redis_cluster_deliver_each_event_once(
    nursery: trio.Nursery,
) -> None:
    ports = free_ports(2)
    urls = ",".join(f"http://127.0.0.1:{port}/hook" for port in ports)
    env = {"RMEETING_WEBHOOK_URLS": urls, "RMEETING_WEBHOOK_SECRET": SECRET}
    with trio.fail_after(60):
        cluster = LocalCluster(2, env=env, redis_cluster=True)
        await trio.to_thread.run_sync(cluster.start)
    try:
        assert isinstance(cluster.redis, RedisClusterServer)
        await each_event_reaches_each_endpoint_once((cluster, ports), nursery)
        outbox = cluster.redis.primary_of(WH_KEY)
        assert any(k.startswith("rmeeting:wh:{wh}:q:") for k in _keys(cluster.redis, outbox))
    finally:
        await trio.to_thread.run_sync(cluster.stop)


def _replica_in_sync(cluster: RedisClusterServer, primary: RedisServer) -> bool:
    """Has the primary's replica received everything it wrote so far?"""
    info = cluster.command(primary, "info", "replication")
    written = re.search(r"master_repl_offset:(\d+)", info)
    replicas = re.findall(r"slave\d+:.*?state=online,offset=(\d+)", info)
    if written is None or not replicas:
        return False
    return all(int(r) == int(written[1]) for r in replicas)


async def _wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(predicate):
            await trio.sleep(0.05)


async def test_the_wh_primary_killed_while_events_are_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rmeeting.webhooks")
    with trio.fail_after(60):
        cluster = RedisClusterServer()
        await trio.to_thread.run_sync(cluster.start)
        try:
            await _lives_on_the_wh_primary_found_from_one_node_url(cluster)
            await _kill_while_queued(cluster)
        finally:
            await trio.to_thread.run_sync(cluster.stop)
    outages = [r for r in caplog.records if "webhook outbox unavailable" in r.getMessage()]
    assert outages, "the kill cost nothing: was the {wh} slot's primary killed?"
    # every failure during the failover was reported as the outbox being away, none as a bug
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def _watch_promotion(cluster: RedisClusterServer, doomed: RedisServer,
                           promoted: list[float]) -> None:
    while True:
        try:
            now = await trio.to_thread.run_sync(cluster.primary_of, WH_KEY)
        except RuntimeError:  # no primary serves the slot yet
            now = doomed
        if now is not doomed:
            promoted.append(trio.current_time())
            return
        await trio.sleep(0.1)


async def _kill_while_queued(cluster: RedisClusterServer) -> None:
    receiver = Receiver()
    doomed = cluster.primary_of(WH_KEY)
    everything = {event(n).id for n in range(40)}
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = receiver.url
        # 30 events queued; a consumer that will die with the primary holds 10 of them, and keeps
        # its claims fresh until then
        dying = RedisOutbox(cluster.url, [url], max_wait=0.2)
        for n in range(30):
            assert await dying.enqueue(event(n))
        held = await dying.claim(url, "dying", count=10, reclaim_after=60, wait=0.05)
        assert len(held) == 10

        async def keep_fresh() -> None:
            while True:
                for delivery in held:
                    assert await dying.keep(delivery, "dying")
                await trio.sleep(0.2)

        keeping = trio.CancelScope()

        async def keep_until_cancelled() -> None:
            with keeping:
                await keep_fresh()

        nursery.start_soon(keep_until_cancelled)
        policy = RetryPolicy(first_delay=0.2, max_delay=1.0, timeout=2.0,
                             reclaim_after=RECLAIM_AFTER)
        outbox = RedisOutbox(cluster.url, [url], max_wait=0.5)
        sender = Webhooks([url], SECRET, outbox, consumer="alive", policy=policy)
        await nursery.start(sender.serve)
        await receiver.wait_for(lambda got: len(got) >= 20)
        # the 20 are acknowledged (gone from the stream); only the held 10 remain
        with trio.fail_after(10):
            while await outbox.depth(url) != 10:
                await trio.sleep(0.05)
        keeping.cancel()
        await _wait_until(lambda: _replica_in_sync(cluster, doomed), 10)
        await trio.to_thread.run_sync(cluster.kill, doomed)
        killed = trio.current_time()
        promoted: list[float] = []
        nursery.start_soon(_watch_promotion, cluster, doomed, promoted)
        before = set(receiver.ids())
        assert before == everything - {d.event.id for d in held} - {event(n).id
                                                                     for n in range(30, 40)}
        # emitted during the outage: the sender holds them until the outbox is back
        for n in range(30, 40):
            sender.emit(event(n))
        await receiver.wait_for(lambda got: len(got) >= 40, timeout=40)
        resumed = trio.current_time()
        with trio.fail_after(FAILOVER_BOUND):
            while not promoted:
                await trio.sleep(0.05)
        assert promoted[0] - killed < FAILOVER_BOUND
        # the claim loop retries each second, the enqueuer backs off to 5 s at most
        assert resumed - promoted[0] < RESUME_AFTER_PROMOTION, (promoted[0] - killed,
                                                               resumed - killed)
        with trio.fail_after(10):
            while await outbox.depth(url) != 0:  # every delivery acknowledged
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # a second delivery of anything would come now
        assert sorted(receiver.ids()) == sorted(everything), receiver.dump()
        assert sender.stats.delivered == 40 and receiver.rejected == []
        dying.close()
        nursery.cancel_scope.cancel()
