"""What only a Redis Cluster can get wrong: telling it from a plain Redis, one subscription
connection per shard node, scans over every primary, slot moves, garbage on a shard channel.

Against the real Redis Cluster of tests/redis_server.py (3 primaries with a replica each) and the
plain server beside it. The shared store behaviour runs on the cluster in tests/conformance; a
primary killed under chat load is tests/test_redis_failover.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import pytest
import trio

from rmeeting.cluster.processes import RedisServer as Node
from rmeeting.events import ChatPosted
from rmeeting.stores.base import BusEvent, MemberRecord, StoreUnavailable
from rmeeting.stores.redis import RedisChatLog, RedisMemberStore

from .redis_server import RedisClusterServer, RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:  # noqa: F811
    redis_cluster.flushall()
    return redis_cluster


def _chat(meeting: str, text: str) -> ChatPosted:
    return ChatPosted(meeting, "m1", "ann", "member", text)


class Sink:
    """The chat the log delivers (every event here is chat)."""

    def __init__(self) -> None:
        self.events: list[ChatPosted] = []

    async def __call__(self, event: BusEvent) -> None:
        assert isinstance(event, ChatPosted)
        self.events.append(event)

    async def wait_for(self, predicate: Callable[[list[ChatPosted]], bool]) -> None:
        with trio.fail_after(10):
            while not predicate(self.events):
                await trio.sleep(0.01)


def _channel(meeting: str) -> str:
    return f"rmeeting:c:{{{meeting}}}"


def _primaries(cluster: RedisClusterServer) -> list[Node]:
    return [n for n in cluster.nodes
            if n.running and "role:master" in cluster.command(n, "info", "replication")]


def _meetings_on_every_primary(
    cluster: RedisClusterServer, per_node: int = 2
) -> dict[int, list[str]]:
    """Meeting ids, ``per_node`` whose slot each primary holds (by port)."""
    found: dict[int, list[str]] = {n.port: [] for n in _primaries(cluster)}
    while any(len(ids) < per_node for ids in found.values()):
        meeting = uuid.uuid4().hex
        port = cluster.primary_of(_channel(meeting)).port
        if len(found[port]) < per_node:
            found[port].append(meeting)
    return found


def _sharded_clients(cluster: RedisClusterServer, node: Node) -> list[int]:
    """The shard subscription counts of the connections to ``node`` that hold any."""
    counts = []
    for line in cluster.command(node, "client", "list").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if int(fields.get("ssub", "0")) > 0:
            counts.append(int(fields["ssub"]))
    return counts


async def test_the_server_says_whether_it_is_a_cluster(
    cluster: RedisClusterServer, redis_server: RedisServer  # noqa: F811
) -> None:
    plain, replica_url = RedisChatLog(redis_server.url), None
    for node in cluster.nodes:
        if "role:slave" in cluster.command(node, "info", "replication"):
            replica_url = node.url
    assert replica_url is not None
    # any one node will do, a replica too: the client finds the primaries by itself
    sharded = RedisChatLog(replica_url)
    listed = RedisChatLog(f"redis://127.0.0.1:1/0, {replica_url}")  # the first is down
    wrong = RedisMemberStore(f"{redis_server.url},{redis_server.url}")
    try:
        with trio.fail_after(10):
            for log, is_cluster in ((plain, False), (sharded, True), (listed, True)):
                await log.publish(_chat("m1", "hi"))
                assert log._link.cluster is is_cluster
                assert (await log.history("m1", 0, 10)).events[-1].text == "hi"
            # several URLs that are no cluster: refused, plainly, never half-used
            with pytest.raises(StoreUnavailable, match="not a Redis Cluster node"):
                await wrong.roster("m1")
            assert not await wrong.ready()
        with pytest.raises(ValueError):
            RedisChatLog("http://127.0.0.1:6379")
    finally:
        for store in (plain, sharded, listed, wrong):
            store.close()


async def test_one_connection_per_shard_node_and_only_while_needed(
    cluster: RedisClusterServer,
) -> None:
    by_node = _meetings_on_every_primary(cluster)
    chat, sink = RedisChatLog(cluster.url), Sink()
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, sink)
                for meetings in by_node.values():
                    for meeting in meetings:
                        await chat.subscribe(meeting)
                nodes = {n.port: n for n in cluster.nodes}
                for port in by_node:
                    assert _sharded_clients(cluster, nodes[port]) == [2], port
                for meetings in by_node.values():
                    for meeting in meetings:
                        await chat.publish(_chat(meeting, meeting))
                await sink.wait_for(lambda got: len(got) == 6)
                assert sorted(e.text for e in sink.events) == sorted(
                    m for ms in by_node.values() for m in ms)
                # the last meeting of a node gone: its connection closes
                emptied, *_ = by_node
                for meeting in by_node[emptied]:
                    await chat.unsubscribe(meeting)
                while _sharded_clients(cluster, nodes[emptied]):
                    await trio.sleep(0.02)
                assert all(_sharded_clients(cluster, nodes[p]) == [2] for p in by_node
                           if p != emptied)
                nursery.cancel_scope.cancel()
    finally:
        chat.close()


async def test_instances_are_found_on_every_primary(cluster: RedisClusterServer) -> None:
    store = RedisMemberStore(cluster.url)
    names = [f"inst-{i}" for i in range(12)]
    homes = {cluster.primary_of(f"rmeeting:i:{name}").port for name in names}
    assert len(homes) == 3  # the index keys are spread over the three primaries
    try:
        with trio.fail_after(10):
            for name in names:
                meeting = uuid.uuid4().hex
                member = MemberRecord(meeting, uuid.uuid4().hex, "ann", "member", name,
                                      time.time(), "cd" * 32)
                await store.join(member, max_members=10)
                assert await store.by_instance(name) == [member]
            assert await store.instances() == sorted(names)
    finally:
        store.close()


def _move_slot(cluster: RedisClusterServer, key: str, to: Node) -> None:
    """Migrate ``key``'s slot, keys and all, to the primary ``to``, as redis-cli's reshard does."""
    source = cluster.primary_of(key)
    slot = cluster.command(source, "cluster", "keyslot", key).strip()
    source_id = cluster.command(source, "cluster", "myid").strip()
    target_id = cluster.command(to, "cluster", "myid").strip()
    cluster.command(to, "cluster", "setslot", slot, "importing", source_id)
    cluster.command(source, "cluster", "setslot", slot, "migrating", target_id)
    while keys := cluster.command(source, "cluster", "getkeysinslot", slot, "100").split():
        cluster.command(source, "migrate", "127.0.0.1", str(to.port), "", "0", "5000",
                        "keys", *keys)
    for node in _primaries(cluster):
        cluster.command(node, "cluster", "setslot", slot, "node", target_id)


async def test_a_slot_moved_under_a_subscription_is_followed(
    cluster: RedisClusterServer,
) -> None:
    meeting = uuid.uuid4().hex
    states: list[bool] = []
    chat, sink = RedisChatLog(cluster.url, on_relay_state=states.append), Sink()
    other = RedisChatLog(cluster.url)  # another instance, publishing
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, sink)
                await chat.subscribe(meeting)
                await other.publish(_chat(meeting, "before"))
                await sink.wait_for(lambda got: len(got) == 1)
                source = cluster.primary_of(_channel(meeting))
                target = next(n for n in _primaries(cluster) if n is not source)
                await trio.to_thread.run_sync(_move_slot, cluster, _channel(meeting), target)
                # Redis drops the subscription; the relay reports it and subscribes anew
                while states[-1:] != [True] or len(states) < 3:
                    await trio.sleep(0.02)
                assert states[:3] == [True, False, True]
                assert _sharded_clients(cluster, target) == [1]
                assert _sharded_clients(cluster, source) == []
                # the other instance's stale slot map is corrected by MOVED, seq and all
                after = await other.publish(_chat(meeting, "after"))
                assert after.seq == 2
                await sink.wait_for(lambda got: len(got) == 2)
                assert [e.text for e in sink.events] == ["before", "after"]
                assert [e.seq for e in (await chat.history(meeting, 0, 10)).events] == [1, 2]
                nursery.cancel_scope.cancel()
    finally:
        chat.close()
        other.close()


async def test_garbage_on_a_shard_channel_is_skipped(
    cluster: RedisClusterServer, caplog: pytest.LogCaptureFixture
) -> None:
    meeting = uuid.uuid4().hex
    chat, sink = RedisChatLog(cluster.url), Sink()
    primary = cluster.primary_of(_channel(meeting))
    try:
        with trio.fail_after(10), caplog.at_level(logging.WARNING):
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve, sink)
                await chat.subscribe(meeting)
                for payload in ("not json", "[1, 2]", '{"meeting_id": "x"}'):
                    cluster.command(primary, "spublish", _channel(meeting), payload)
                await chat.publish(_chat(meeting, "fine"))
                await sink.wait_for(lambda got: len(got) == 1)
                assert sink.events[0].text == "fine"
                assert chat.malformed == 3 and chat.relay_up
                nursery.cancel_scope.cancel()
    finally:
        chat.close()
