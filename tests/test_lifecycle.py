"""Meetings end by themselves (empty_timeout, max_duration), stay tombstones for the retention,
then every trace is purged: embedded (in-process, short settings) and on a cluster (two
instances on real etcd and Redis, behind nginx), including the exactly-once end with two
instances racing and a deadline that falls while the instances are down.

Time is the subject here, but it is the wall clock of separate processes: the settings are a
second or two and every wait is a bounded poll of the public API.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from rmeeting.cluster.launcher import LocalCluster
from rmeeting.lifecycle import sweep_interval
from rmeeting.server import RunningServer, serve_rmeeting

from .clients import V1, Api, open_seed, open_v1, recv_until
from .conftest import make_config

KEY = "lifecycle-test-key-0123456789abcdef-0"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def _create(api: Api, name: str = "lc") -> tuple[str, str]:
    made = await api.request("POST", "/v1/meetings", json={"name": name})
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["host_key"]


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.05)


async def _ended(api: Api, mid: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def check() -> bool:
        got = await api.request("GET", f"/v1/meetings/{mid}")
        found.update(got.json())
        return got.status_code == 200 and bool(got.json().get("ended"))

    await _wait_for(check, 15)
    return found


def test_sweep_interval_follows_the_shortest_deadline() -> None:
    assert sweep_interval(300, 0, 604800) == 5.0
    assert sweep_interval(2, 0, 604800) == 0.5
    assert sweep_interval(0.4, 0, 0) == 0.2
    assert sweep_interval(0, 0, 0) == 5.0


# --- embedded -------------------------------------------------------------------------------


async def test_empty_meetings_end_by_themselves(nursery: trio.Nursery) -> None:
    server: RunningServer = await nursery.start(serve_rmeeting, make_config(
        empty_timeout=1.0, api_keys=(KEY,)))
    async with Api(server.url) as api:
        never_joined, _ = await _create(api, "never joined")
        attended, host_key = await _create(api, "attended")
        with trio.fail_after(20):
            async with open_v1(server.url, attended, name="ann"):
                tomb = await _ended(api, never_joined)
                assert tomb["ended_reason"] == "empty"
                # while someone is in it, it does not end, however long
                await trio.sleep(1.5)
                live = (await api.request("GET", f"/v1/meetings/{attended}")).json()
                assert live["ended"] is False
            tomb = await _ended(api, attended)
            assert tomb["ended_reason"] == "empty"
            rows = (await api.request("GET", f"/v1/meetings/{attended}/attendance",
                                      headers={"Authorization": f"Bearer {host_key}"})).json()
            left_at = rows["sessions"][0]["left_at"]
            # at least empty_timeout after the last member left (ISO strings sort by time)
            assert tomb["ended_at"] > left_at


async def test_max_duration_tells_the_members_why(nursery: trio.Nursery) -> None:
    server: RunningServer = await nursery.start(serve_rmeeting, make_config(
        max_duration=1.5, empty_timeout=0))
    async with Api(server.url) as api:
        mid, _ = await _create(api)
        made = await api.request("POST", "/CreateMeeting", json={"meeting_name": "seed"})
        seed_mid = made.json()["meetingUid"]
        with trio.fail_after(20):
            async with open_v1(server.url, mid, name="ann") as ann, \
                    open_seed(server.url, seed_mid, "bob") as bob:
                assert (await ann.recv_type("meeting_ended", timeout=10)) == {
                    "type": "meeting_ended", "reason": "max_duration"}
                assert await ann.closed_code() == 4000
                ended = await recv_until(bob, lambda m: "reason" in m, timeout=10)
                assert ended == {"notice": "会议已结束", "reason": "max_duration"}
            assert (await _ended(api, mid))["ended_reason"] == "max_duration"


async def test_retention_purges_every_trace(nursery: trio.Nursery) -> None:
    """Issue #10 item 10: an ended meeting's ledger and ban list no longer stay forever."""
    server: RunningServer = await nursery.start(serve_rmeeting, make_config(
        retention=1.5, api_keys=(KEY,)))
    service = server.service
    async with Api(server.url) as api:
        mid, host_key = await _create(api)
        with trio.fail_after(20):
            async with open_v1(server.url, mid, name="ann") as ann, \
                    open_v1(server.url, mid, name="bob") as bob:
                kicked = await api.request("DELETE", f"/v1/meetings/{mid}/members/{bob.me['id']}",
                                           headers={"Authorization": f"Bearer {host_key}"})
                assert kicked.status_code == 200
                ended = await api.request("DELETE", f"/v1/meetings/{mid}", headers=AUTH)
                assert ended.status_code == 200
                await ann.closed_code()
            # during the retention: readable, and the ban still holds
            rows = await api.request("GET", f"/v1/meetings/{mid}/attendance", headers=AUTH)
            assert {s["name"] for s in rows.json()["sessions"]} == {"ann", "bob"}
            assert await service.members.is_banned(mid, bob.me["id"])

            async def purged() -> bool:
                got = await api.request("GET", f"/v1/meetings/{mid}")
                return got.status_code == 404

            await _wait_for(purged, 10)
            gone = await api.request("GET", f"/v1/meetings/{mid}/attendance", headers=AUTH)
            assert gone.status_code == 404
            await _wait_for(lambda: _nothing_left(server, mid, bob.me["id"]), 5)


async def _nothing_left(server: RunningServer, mid: str, banned: str) -> bool:
    service = server.service
    return (await service.members.attendance(mid) == []
            and not await service.members.is_banned(mid, banned)
            and (await service.chat.history(mid, 0, 10)).last_seq == 0
            and await service.meetings.tombstone(mid) is None)


# --- a cluster of two instances -------------------------------------------------------------

CLUSTER_ENV = {"RMEETING_API_KEYS": KEY, "RMEETING_EMPTY_TIMEOUT": "1.5",
               "RMEETING_MAX_DURATION": "8", "RMEETING_RETENTION": "6"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two instances; the tests using it are marked ``cluster``."""
    with LocalCluster(2, env=CLUSTER_ENV) as running:
        yield running


async def _until_closed(member: V1, timeout: float) -> tuple[list[dict[str, Any]], int]:
    """Every frame until the server closes, and its close code."""
    from trio_websocket import ConnectionClosed

    frames = []
    with trio.fail_after(timeout):
        try:
            while True:
                frames.append(json.loads(await member.ws.get_message()))
        except ConnectionClosed as closed:
            assert closed.reason is not None
            return frames, int(closed.reason.code)


def _ends_logged(cluster: LocalCluster, mid: str) -> list[str]:
    """The instances that logged ending the meeting by itself."""
    out = []
    for instance in cluster.instances:
        for line in instance.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "meeting ended by itself" and entry.get("meeting") == mid:
                out.append(instance.name)
    return out


async def _logged(cluster: LocalCluster, mid: str) -> None:
    async def check() -> bool:
        return bool(_ends_logged(cluster, mid))

    await _wait_for(check, 10)


def _etcdctl(cluster: LocalCluster, *args: str) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(["etcdctl", "--endpoints", cluster.etcd.endpoint, *args], env=env,
                          capture_output=True, text=True, check=True).stdout


def _redis_keys(cluster: LocalCluster, mid: str) -> list[str]:
    port = cluster.redis.url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["redis-cli", "-p", port, "--scan", "--pattern", f"*{mid}*"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.cluster
async def test_two_instances_end_each_meeting_exactly_once(cluster: LocalCluster) -> None:
    i1, i2 = cluster.instances
    async with Api(cluster.url) as api:
        with trio.fail_after(40):
            empty, _ = await _create(api, "empty")
            full, _ = await _create(api, "full")
            # one member on each instance: both sweeps see the deadline, one ends it
            async with open_v1(i1.url, full, name="on-i1") as a, \
                    open_v1(i2.url, full, name="on-i2") as b:
                assert (await _ended(api, empty))["ended_reason"] == "empty"
                for member in (a, b):
                    frames, code = await _until_closed(member, 15)
                    # told once, never twice, then closed
                    assert [f for f in frames if f["type"] == "meeting_ended"] == [
                        {"type": "meeting_ended", "reason": "max_duration"}]
                    assert code == 4000
            assert (await _ended(api, full))["ended_reason"] == "max_duration"
            # the winner logs once its end's clean-up is done: wait for it, then for a second
            await _logged(cluster, empty)
            await _logged(cluster, full)
            await trio.sleep(1)
    assert len(_ends_logged(cluster, empty)) == 1
    assert len(_ends_logged(cluster, full)) == 1


@pytest.mark.cluster
async def test_a_deadline_that_falls_while_the_instances_are_down(
    cluster: LocalCluster,
) -> None:
    i1, i2 = cluster.instances
    async with Api(cluster.url) as api:
        with trio.fail_after(60):
            mid, _ = await _create(api, "restart")
            # i2 restarts across the deadline: i1 ends it, once
            i2.stop(timeout=10)
            assert (await _ended(api, mid))["ended_reason"] == "empty"
            i2.start()
            # every instance down when the deadline falls: the first one back ends it
            other, _ = await _create(api, "all down")
            i1.stop(timeout=10)
            i2.stop(timeout=10)
            await trio.sleep(2.5)
            i2.start()
            async with Api(i2.url) as direct:
                assert (await _ended(direct, other))["ended_reason"] == "empty"
            i1.start()  # back on its port: nginx finds it there
            await _logged(cluster, mid)
            await _logged(cluster, other)
    assert _ends_logged(cluster, mid) == ["i1"]
    assert _ends_logged(cluster, other) == ["i2"]


@pytest.mark.cluster
async def test_the_tombstone_and_its_purge_in_etcd_and_redis(cluster: LocalCluster) -> None:
    async with Api(cluster.url) as api:
        with trio.fail_after(40):
            mid, host_key = await _create(api, "purge")
            host = {"Authorization": f"Bearer {host_key}"}
            async with open_v1(cluster.url, mid, name="ann") as ann, \
                    open_v1(cluster.url, mid, name="bob") as bob:
                await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=host,
                                  json={"controls": {"mic": False}})
                await api.request("DELETE", f"/v1/meetings/{mid}/members/{bob.me['id']}",
                                  headers=host)
                await ann.send(type="chat", text="hello")
                await ann.recv_type("chat")
                assert (await api.request("DELETE", f"/v1/meetings/{mid}", headers=host)
                        ).status_code == 200
                await ann.closed_code()
            tomb = _etcdctl(cluster, "get", f"/rmeeting/ended/{mid}", "--print-value-only")
            assert json.loads(tomb)["reason"] == "ended by the host"
            assert "/rmeeting/meetings/" + mid not in _etcdctl(
                cluster, "get", "--prefix", "--keys-only", "/rmeeting/meetings/")
            audit = (await api.request("GET", f"/v1/meetings/{mid}/audit", headers=AUTH)).json()
            assert [(e["flag"], e["new"]) for e in audit["entries"]] == [("mic", False)]
            assert _redis_keys(cluster, mid)  # the ledger and ban list, until the retention

            async def purged() -> bool:
                return (not _etcdctl(cluster, "get", f"/rmeeting/ended/{mid}")
                        and not _redis_keys(cluster, mid))

            await _wait_for(purged, 20)  # etcd's lease and Redis's TTL, no instance needed
            assert (await api.request("GET", f"/v1/meetings/{mid}")).status_code == 404


@pytest.mark.cluster
async def test_deleting_the_prefix_by_hand_still_ends_the_meeting(cluster: LocalCluster) -> None:
    async with Api(cluster.url) as api:
        with trio.fail_after(30):
            mid, _ = await _create(api, "operator")
            async with open_v1(cluster.url, mid, name="ann") as ann:
                _etcdctl(cluster, "del", "--prefix", f"/rmeeting/meetings/{mid}/")
                ended = await ann.recv_type("meeting_ended", timeout=10)
                assert ended["reason"] == "deleted in etcd"
                assert await ann.closed_code() == 4000
            tomb = await _ended(api, mid)
            assert tomb["ended_reason"] == "deleted in etcd"
            rows = await api.request("GET", f"/v1/meetings/{mid}/attendance", headers=AUTH)
            assert [s["name"] for s in rows.json()["sessions"]] == ["ann"]
            async with open_v1(cluster.url, mid, name="late", expect_welcome=False) as late:
                assert (await late.recv())["code"] == "meeting_ended"
