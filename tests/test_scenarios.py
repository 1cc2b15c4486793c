"""One scenario suite, three deployments: an embedded instance, and 3 instances behind nginx on
one Redis and on a Redis Cluster (3 primaries with a replica each).

Each scenario speaks only to the public URL (HTTP and WebSocket), as clients do. Behind nginx's
round-robin, the members of one meeting land on different instances, so every scenario here is
also a cross-instance test in the cluster run. Control flips go through etcdctl in the cluster
(the operator's path) and through the API in the embedded run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from rmeeting.cluster.launcher import Instance, LocalCluster

from .clients import Api, open_seed, open_v1, recv_json, recv_until

JOINED, LEFT, CHANGED = "有成员加入会议室", "有成员离开会议室", "会议室状态发送变更"


@dataclass
class Target:
    kind: str
    url: str
    instance_urls: list[str] = field(default_factory=list)
    etcd: str = ""

    async def flip(self, api: Api, meeting: str, host_key: str, flag: str, value: bool) -> None:
        if self.kind == "cluster":
            key = f"/rmeeting/meetings/{meeting}/controls/{flag}"
            env = {**os.environ, "ETCDCTL_API": "3"}
            await trio.run_process(
                ["etcdctl", "--endpoints", self.etcd, "put", key, "true" if value else "false"],
                env=env, capture_stdout=True,
            )
        else:
            response = await api.request(
                "PATCH", f"/v1/meetings/{meeting}/controls",
                json={"controls": {flag: value}}, headers={"Authorization": f"Bearer {host_key}"},
            )
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module",
                params=["embedded", pytest.param("cluster", marks=pytest.mark.cluster),
                        pytest.param("redis-cluster", marks=pytest.mark.cluster)])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param in ("cluster", "redis-cluster"):
        with LocalCluster(3, redis_cluster=request.param == "redis-cluster") as cluster:
            yield Target("cluster", cluster.url, [i.url for i in cluster.instances],
                         cluster.etcd.endpoint)
        return
    directory = Path(tempfile.mkdtemp(prefix="rmeeting-embedded-"))
    instance = Instance("embedded", "", "", directory / "embedded.log")
    instance.start()
    try:
        yield Target("embedded", instance.url, [instance.url])
    finally:
        instance.stop(timeout=10)


@asynccontextmanager
async def seed_in(url: str, meeting: str, name: str, uid: str | None = None) -> AsyncIterator[Any]:
    """A seed member that has joined: its room state came, so it hears whoever joins next (the
    WebSocket handshake alone does not mean the join is done)."""
    async with open_seed(url, meeting, name, uid) as ws:
        await recv_until(ws, lambda m: "user_uid" in m)
        yield ws


async def _meeting(api: Api) -> tuple[str, str]:
    created = await api.create_seed_meeting(meeting_name="scenario")
    return created["meetingUid"], created["userUid"]


async def test_joins_and_one_chat_order_across_instances(target: Target) -> None:
    async with Api(target.url) as api:
        mid, _host = await _meeting(api)
    names = ["m1", "m2", "m3", "m4"]
    with trio.fail_after(30):
        async with seed_in(target.url, mid, "m1") as m1, seed_in(target.url, mid, "m2") as m2, \
                seed_in(target.url, mid, "m3") as m3, seed_in(target.url, mid, "m4") as m4, \
                open_v1(target.url, mid, name="v1") as v1:
            seeds = [m1, m2, m3, m4]
            for ws in seeds:
                await recv_until(ws, lambda m: m.get("name") == "v1" and m["notice"] == JOINED)

            async def send(ws: Any, name: str) -> None:
                for i in range(20):
                    await ws.send_message(f"{name}:{i}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, m1, "m1")
                nursery.start_soon(send, m3, "m3")
                await v1.send(type="chat", text="v1:0")

            async def seed_order(ws: Any) -> list[str]:
                got: list[str] = []
                while len(got) < 41:
                    msg = await recv_json(ws, 10)
                    if msg.get("notice", "").split(":")[0] in ("m1", "m3", "v1"):
                        got.append(msg["notice"])
                return got

            orders = [await seed_order(ws) for ws in seeds]
            v1_order: list[str] = []
            while len(v1_order) < 41:
                v1_order.append((await v1.recv_type("chat", timeout=10))["text"])
    assert all(order == orders[0] for order in orders) and v1_order == orders[0]
    for sender in ("m1", "m3"):
        assert [t for t in orders[0] if t.startswith(sender + ":")] == [
            f"{sender}:{i}" for i in range(20)]
    assert names  # every member joined through the same public URL


async def test_controls_flip_reaches_everyone(target: Target) -> None:
    async with Api(target.url) as api:
        mid, host = await _meeting(api)
        with trio.fail_after(20):
            async with seed_in(target.url, mid, "a") as a, seed_in(target.url, mid, "b") as b, \
                    open_v1(target.url, mid, name="c") as c:
                for ws in (a, b):
                    await recv_until(ws, lambda m: m.get("name") == "c")
                await target.flip(api, mid, host, "mic", False)
                for ws in (a, b):
                    assert await recv_until(ws, lambda m: m.get("notice") == CHANGED) == {
                        "notice": CHANGED, "isMute": True}
                event = await c.recv_type("controls")
                assert event["controls"]["mic"] is False and event["changed"] == {"mic": False}
                assert event["by"] == ("operator" if target.kind == "cluster" else event["by"])
                await target.flip(api, mid, host, "camera", True)
                for ws in (a, b):
                    assert (await recv_until(ws, lambda m: m.get("notice") == CHANGED))[
                        "isVideo"] is True


async def test_export_is_the_same_from_every_instance(target: Target) -> None:
    async with Api(target.url) as api:
        mid, host = await _meeting(api)
        with trio.fail_after(20):
            async with open_seed(target.url, mid, "host", host) as h:
                await recv_until(h, lambda m: "user_uid" in m)
                for name in ("x", "y", "z"):
                    async with open_seed(target.url, mid, name) as ws:
                        await recv_until(ws, lambda m: "user_uid" in m)
                    await recv_until(
                        h, lambda m, n=name: m.get("notice") == LEFT and m["name"] == n)
                async with seed_in(target.url, mid, "w"):
                    await recv_until(h, lambda m: m.get("notice") == JOINED and m["name"] == "w")
                    for url in target.instance_urls:
                        async with Api(url) as direct:
                            got = await direct.request(
                                "GET", "/Export", params={"userUid": host, "meetingUid": mid})
                            # the people in the meeting now; x, y and z have left
                            assert got.json() == {"attendee": ["host", "w"]}, url


async def test_leave_kick_and_end(target: Target) -> None:
    async with Api(target.url) as api:
        created = (await api.request("POST", "/v1/meetings", json={"name": "lke"})).json()
        mid, key = created["id"], created["host_key"]
        auth = {"Authorization": f"Bearer {key}"}
        with trio.fail_after(30):
            async with seed_in(target.url, mid, "stay") as stay, \
                    seed_in(target.url, mid, "leaver", "leaver-uid-9c4e2a7f"), \
                    open_v1(target.url, mid, name="kicked") as kicked:
                await recv_until(stay, lambda m: m.get("name") == "kicked")
                # the leave may land on another instance than the leaver's socket
                left = await api.request("PUT", "/LeaveMeeting", json={
                    "username": "leaver", "meetingUid": mid, "userUid": "leaver-uid-9c4e2a7f"})
                assert left.status_code == 200
                assert await recv_until(stay, lambda m: m.get("notice") == LEFT) == {
                    "notice": LEFT, "name": "leaver"}
                kick = await api.request(
                    "DELETE", f"/v1/meetings/{mid}/members/{kicked.me['id']}", headers=auth)
                assert kick.status_code == 200, kick.text
                assert await kicked.closed_code(10) == 4003
                assert (await recv_until(stay, lambda m: m.get("notice") == LEFT))["name"] == \
                    "kicked"
                ended = await api.request("DELETE", f"/v1/meetings/{mid}", headers=auth)
                assert ended.status_code in (200, 204)
                assert "notice" in await recv_until(stay, lambda m: "reason" in m)
                from trio_websocket import ConnectionClosed

                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await stay.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 4000


@pytest.mark.cluster
def test_local_cluster_processes_are_gone_after_stop() -> None:
    with LocalCluster(1) as cluster:
        pids = [i.pid for i in cluster.instances]
        assert all(pids)
    for pid in pids:
        assert pid is not None
        result = subprocess.run(["kill", "-0", str(pid)], capture_output=True)
        assert result.returncode != 0, f"instance {pid} still running"
