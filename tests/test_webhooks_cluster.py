"""Webhooks from two instances behind nginx, with real etcd and Redis, to real endpoints on
loopback: each event reaches each endpoint once, not once per instance (an etcdctl flip is seen
by both watches; one of them queues it); a failing endpoint gets what it missed with the same
ids; an instance killed with -9 mid-delivery loses nothing (the other one delivers)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
import trio

from rmeeting.cluster.launcher import LocalCluster
from rmeeting.cluster.processes import free_ports

from .clients import Api, open_v1
from .test_metrics import value
from .test_webhooks import flip, new_meeting
from .webhook_receiver import SECRET, Got, Mode, Receiver

pytestmark = [pytest.mark.cluster, pytest.mark.etcd, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, list[int]]]:
    ports = free_ports(2)  # the endpoints' ports: each test starts its receivers on them
    urls = ",".join(f"http://127.0.0.1:{port}/hook" for port in ports)
    env = {"RMEETING_WEBHOOK_URLS": urls, "RMEETING_WEBHOOK_SECRET": SECRET}
    with LocalCluster(2, env=env) as running:
        yield running, ports


async def etcdctl_put(cluster: LocalCluster, meeting: str, flag: str, value: str) -> None:
    key = f"/rmeeting/meetings/{meeting}/controls/{flag}"
    await trio.run_process(["etcdctl", "--endpoints", cluster.etcd.endpoint, "put", key, value],
                           env={**os.environ, "ETCDCTL_API": "3"}, capture_stdout=True)


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a scrape (labels in any order), 0 if absent (a labelled series appears on
    first use)."""
    try:
        return value(text, name, **labels)
    except AssertionError:
        return 0.0


async def scrapes(cluster: LocalCluster) -> list[str]:
    texts = []
    for instance in cluster.instances:
        async with Api(instance.url) as direct:
            texts.append((await direct.request("GET", "/metrics")).text)
    return texts


def of(receiver: Receiver, meeting: str) -> list[Got]:
    return [g for g in receiver.delivered if g.data.get("meeting_id") == meeting]


async def receivers(nursery: trio.Nursery, ports: list[int], *modes: Mode) -> list[Receiver]:
    started = []
    for port, mode in zip(ports, modes, strict=True):
        receiver = Receiver(port=port, mode=mode)
        await nursery.start(receiver.serve)
        started.append(receiver)
    return started


async def test_each_event_reaches_each_endpoint_once(
    cluster: tuple[LocalCluster, list[int]], nursery: trio.Nursery
) -> None:
    c, ports = cluster
    one, two = await receivers(nursery, ports, "ok", "ok")
    before = await scrapes(c)
    with trio.fail_after(60):
        async with Api(c.url) as api:
            mid, auth = await new_meeting(api)
            key = auth["Authorization"].split()[1]
            async with open_v1(c.url, mid, name="host", host_key=key), \
                    open_v1(c.url, mid, name="ann"):
                async with open_v1(c.url, mid, name="bob"):
                    await etcdctl_put(c, mid, "mic", "false")  # the operator's path
                    for receiver in (one, two):
                        await receiver.wait_for(lambda _, r=receiver: any(
                            g.type == "controls.changed" for g in of(r, mid)))
                await flip(api, mid, auth, controls={"camera": False}, duration=0.5)
                for receiver in (one, two):
                    await receiver.wait_for(lambda _, r=receiver: any(
                        g.data.get("actor") == "timer" for g in of(r, mid)))
            ended = await api.request("DELETE", f"/v1/meetings/{mid}", headers=auth)
            assert ended.status_code in (200, 204)
        expected = {"meeting.created": 1, "member.joined": 3, "member.left": 3,
                    "controls.changed": 3, "meeting.ended": 1}
        for receiver in (one, two):
            await receiver.wait_for(
                lambda _, r=receiver: Counter(g.type for g in of(r, mid)) == expected)
        await trio.sleep(0.5)  # a duplicate would come now, if there were one
        after = await scrapes(c)
    for receiver in (one, two):
        got = of(receiver, mid)
        assert Counter(g.type for g in got) == expected and not receiver.rejected
        assert len({g.id for g in got}) == len(got)  # once per endpoint, not per instance
    assert {g.id for g in of(one, mid)} == {g.id for g in of(two, mid)}
    operator = [g for g in of(one, mid) if g.type == "controls.changed"][0]
    assert operator.data["actor"] == "operator" and operator.data["changed"] == {"mic": False}

    def delta(i: int, kind: str, result: str) -> float:
        labels = {"type": kind, "result": result}
        return (sample(after[i], "rmeeting_webhook_events_total", **labels)
                - sample(before[i], "rmeeting_webhook_events_total", **labels))

    for kind, count in (("controls.changed", 3), ("meeting.ended", 1)):
        # both watches saw every change and tried to queue it; one queue write won each time
        for i in (0, 1):
            assert delta(i, kind, "new") + delta(i, kind, "duplicate") == count, kind
        assert delta(0, kind, "new") + delta(1, kind, "new") == count, kind


async def test_a_failing_endpoint_gets_what_it_missed_with_the_same_ids(
    cluster: tuple[LocalCluster, list[int]], nursery: trio.Nursery
) -> None:
    c, ports = cluster
    failing, healthy = await receivers(nursery, ports, "fail", "ok")
    with trio.fail_after(60):
        async with Api(c.url) as api:
            mid, _auth = await new_meeting(api)
            for flag in ("mic", "chat"):
                await etcdctl_put(c, mid, flag, "off")
            await healthy.wait_for(lambda _: len(of(healthy, mid)) == 3)
            while True:  # each of the 3 tried at least twice, and refused
                tried = Counter(g.id for g in failing.attempts if g.data["meeting_id"] == mid)
                if len(tried) == 3 and min(tried.values()) >= 2:
                    break
                await trio.sleep(0.05)
            assert of(failing, mid) == []
            failing.set_mode("ok")
            await failing.wait_for(lambda _: len(of(failing, mid)) >= 3)
    assert {g.id for g in of(failing, mid)} == set(tried) == {g.id for g in of(healthy, mid)}


async def test_the_leaves_of_a_graceful_stop_are_delivered(
    cluster: tuple[LocalCluster, list[int]], nursery: trio.Nursery
) -> None:
    c, ports = cluster
    one, _two = await receivers(nursery, ports, "ok", "ok")
    stopping = c.instances[1]
    with trio.fail_after(60):
        async with Api(c.url) as api:
            mid, _auth = await new_meeting(api)
        async with open_v1(stopping.url, mid, name="carol") as carol:
            await trio.to_thread.run_sync(stopping.stop)  # SIGTERM: drain, then exit
            assert await carol.closed_code(10) == 1012
        left = await one.wait_for(lambda _: any(g.type == "member.left" for g in of(one, mid)))
        await trio.to_thread.run_sync(stopping.start)  # back, for the next test
    assert [g.data["reason"] for g in left if g.type == "member.left" and
            g.data["meeting_id"] == mid] == ["server shutdown"]


async def test_a_sender_killed_mid_delivery_loses_nothing(
    cluster: tuple[LocalCluster, list[int]], nursery: trio.Nursery
) -> None:
    c, ports = cluster
    hanging, healthy = await receivers(nursery, ports, "hang", "ok")
    victim, survivor = c.instances
    with trio.fail_after(90):
        async with Api(c.url) as api:
            mid, auth = await new_meeting(api)
            key = auth["Authorization"].split()[1]
            async with open_v1(c.url, mid, name="host", host_key=key) as host, \
                    open_v1(c.url, mid, name="bob") as bob:
                flips = 0
                # until the victim holds a delivery the endpoint has not answered
                while not [g for g in hanging.attempts if f"instance {victim.name}" in
                           g.user_agent and g.data["meeting_id"] == mid]:
                    flips += 1
                    await etcdctl_put(c, mid, "mic", "false" if flips % 2 else "true")
                    await trio.sleep(0.05)
                # the meeting goes on meanwhile: chat crosses instances as usual
                await bob.send(type="chat", text="still here")
                assert (await host.recv_type("chat"))["text"] == "still here"
            held = {g.id for g in hanging.attempts
                    if f"instance {victim.name}" in g.user_agent and g.data["meeting_id"] == mid}
            # created, 2 joins, the flips, 2 leaves: the healthy endpoint has them all
            await healthy.wait_for(lambda _: len(of(healthy, mid)) == flips + 5)
            everything = {g.id for g in of(healthy, mid)}
            victim.kill()  # SIGKILL, mid-delivery
            hanging.set_mode("ok")
            await hanging.wait_for(lambda _: {g.id for g in of(hanging, mid) if
                                              victim.name not in g.user_agent} == everything,
                                   timeout=60)
    by_survivor = {g.id for g in of(hanging, mid) if f"instance {survivor.name}" in g.user_agent}
    assert held and held <= everything == by_survivor
