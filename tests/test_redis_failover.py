"""A Redis Cluster primary killed (``kill -9``) while its meeting's members chat.

Real parts only: a local cluster of two instances over a Redis Cluster of 3 primaries with a
replica each (``cluster-node-timeout`` 1 s), members on both instances, and the primary that
holds the meeting's slot killed mid-chat. What it may cost is what a Redis restart costs today
(tests/test_cluster_faults.py): members are told chat is unavailable and available again, what
they missed is replayed once and in order (or a gap is announced), no acknowledged message is
lost, and chat resumes within the failover time plus a few seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from rmeeting.cluster.launcher import LocalCluster
from rmeeting.cluster.redis_cluster import RedisClusterServer

from .clients import V1, Api, open_seed, open_v1, recv_json, recv_until

pytestmark = [pytest.mark.cluster, pytest.mark.etcd, pytest.mark.redis]

#: after the replica has taken over, chat must work again within this (the relay's backoff is
#: at most 2 s, the cluster client reloads its slot map on the first error)
RESUME_AFTER_FAILOVER = 5.0
#: kill to failover: cluster-node-timeout (1 s) to mark it failed, then the replica's election
FAILOVER_BOUND = 10.0


async def _read_v1(client: V1, into: list[dict[str, Any]]) -> None:
    while True:
        into.append(await client.recv(timeout=120))


async def _read_seed(ws: WebSocketConnection, into: list[dict[str, Any]]) -> None:
    while True:
        into.append(await recv_json(ws, 120))


async def _wait_for(predicate: Any, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_primary_killed_while_members_chat() -> None:
    with LocalCluster(2, redis_cluster=True) as cluster:
        redis = cluster.redis
        assert isinstance(redis, RedisClusterServer)
        one, two = cluster.instances
        async with Api(one.url) as api:
            mid = (await api.request("POST", "/v1/meetings", json={"name": "fo"})).json()["id"]
        doomed = redis.primary_of(f"rmeeting:m:{{{mid}}}:seq")
        with trio.fail_after(90):
            async with open_v1(one.url, mid, name="a") as a, \
                    open_v1(two.url, mid, name="b") as b, open_seed(two.url, mid, "s") as s, \
                    trio.open_nursery() as nursery:
                await recv_until(s, lambda m: "user_uid" in m)
                await a.recv_match(lambda m: m.get("type") == "member_joined"
                                   and m["member"]["name"] == "s", timeout=10)
                b_seen: list[dict[str, Any]] = []
                s_seen: list[dict[str, Any]] = []
                nursery.start_soon(_read_v1, b, b_seen)
                nursery.start_soon(_read_seed, s, s_seen)
                acked: dict[int, str] = {}
                refused = 0

                async def say(text: str) -> bool:
                    nonlocal refused
                    reply = await a.call("chat", text=text)
                    if reply["type"] == "ack":
                        acked[reply["seq"]] = text
                        return True
                    assert reply["type"] == "error" and reply["code"] == "unavailable", reply
                    refused += 1
                    return False

                for i in range(10):
                    assert await say(f"before {i}")
                killed = trio.current_time()
                await trio.to_thread.run_sync(redis.kill, doomed)
                failed_over: list[float] = []

                async def watch_failover() -> None:
                    while True:
                        try:
                            new = await trio.to_thread.run_sync(
                                redis.primary_of, f"rmeeting:m:{{{mid}}}:seq")
                        except RuntimeError:  # no primary for the slot yet
                            new = doomed
                        if new is not doomed:
                            failed_over.append(trio.current_time())
                            return
                        await trio.sleep(0.1)

                nursery.start_soon(watch_failover)
                # the members keep chatting (a message each 0.1 s) until it works again
                i = 0
                while not await say(f"during {i}"):
                    i += 1
                    await trio.sleep(0.1)
                resumed = trio.current_time()
                await _wait_for(lambda: bool(failed_over))
                assert refused > 0, "the kill cost nothing: was the right primary killed?"
                assert failed_over[0] - killed < FAILOVER_BOUND
                assert resumed - failed_over[0] < RESUME_AFTER_FAILOVER, \
                    (resumed - killed, failed_over[0] - killed)
                for j in range(10):
                    assert await say(f"after {j}")

                # every acknowledged message reaches b (live, or replayed after the outage),
                # once and in order, with the outage told before and after
                def b_chat() -> list[tuple[int, str]]:
                    return [(m["seq"], m["text"]) for m in b_seen if m.get("type") == "chat"]

                def b_codes() -> list[str]:
                    return [m["code"] for m in b_seen if m.get("type") == "notice"]

                await _wait_for(lambda: "chat_available" in b_codes()
                                and len(b_chat()) >= len(acked))
                await trio.sleep(0.5)  # a duplicate would come now: give it the chance
                assert b_chat() == sorted(acked.items()), (b_chat(), acked)
                assert b_codes()[:1] == ["chat_unavailable"] and "chat_available" in b_codes()
                assert "chat_gap" not in b_codes()  # history (500 kept) covered the outage
                # a, the sender, heard the same; and the seed member too
                await a.recv_match(lambda m: m.get("code") == "chat_unavailable")
                await a.recv_match(lambda m: m.get("code") == "chat_available")

                def s_texts() -> list[str]:
                    return [m["notice"] for m in s_seen if m.get("name") == "a"]

                await _wait_for(lambda: len(s_texts()) >= len(acked))
                assert s_texts() == [text for _, text in sorted(acked.items())]
                assert [m["code"] for m in s_seen if "code" in m][:1] == ["chat_unavailable"]
                nursery.cancel_scope.cancel()
        # and the history a late joiner gets holds every acknowledged message
        async with open_v1(two.url, mid, name="late") as late:
            kept = [(c["seq"], c["text"]) for c in late.welcome["chat"]]
            assert kept == sorted(acked.items())[-len(kept):] and len(kept) >= 10
