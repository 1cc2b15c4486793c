"""Faults *during load*: kill -9 an instance, kill the etcd leader of a 3-member etcd, restart
Redis, while members chat and the host flips controls the whole time.

What must hold, whatever was hit (issue #10): every chat that was acknowledged reaches every
member present throughout, once and in seq order, and is in the history a new member is given;
every acknowledged control change is what the controls read afterwards and what every member
was told last; members of a dead instance are gone within the lease (and nobody else is taken
for dead); the meeting stays joinable. Refusals (``unavailable``) while a store is down are
allowed: they are not acknowledgements.

tests/test_cluster_faults.py has the same faults one message at a time (notices, readiness,
ledger, the clean-up claim); this module adds the load and the bookkeeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from rmeeting.bench.soak import scan_logs
from rmeeting.cluster.launcher import Instance, LocalCluster
from rmeeting.cluster.processes import RedisServer, free_ports

from .clients import V1, Api, open_seed, open_v1, recv_json, recv_until

pytestmark = [pytest.mark.cluster, pytest.mark.etcd, pytest.mark.redis,
              pytest.mark.timeout(150)]

#: the default instance_ttl (5 s) plus the survivors' poll and the clean-up (as in
#: tests/test_cluster_faults.py)
LOST_WITHIN = 15.0
CHAT_GAP = 0.05  # seconds between two chats of one sender
FLIP_GAP = 0.25  # seconds between two flips of the host


@dataclass
class Ledger:
    """What was acknowledged, and what each observer saw."""

    acked: dict[str, int] = field(default_factory=dict)  # text -> seq
    refused: int = 0
    flips: list[tuple[int, bool]] = field(default_factory=list)  # (revision, camera), acked
    seen: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # v1: (seq, text)
    seed_seen: dict[str, list[str]] = field(default_factory=dict)
    controls_seen: dict[str, tuple[int, bool]] = field(default_factory=dict)
    seed_camera: dict[str, bool] = field(default_factory=dict)
    lost_members: list[tuple[str, str]] = field(default_factory=list)  # (observer, member id)
    problems: list[str] = field(default_factory=list)

    def last_flip(self) -> tuple[int, bool]:
        return max(self.flips) if self.flips else (0, True)


async def _meeting(url: str) -> tuple[str, str]:
    async with Api(url) as api:
        created = (await api.request("POST", "/v1/meetings", json={"name": "chaos"})).json()
    return str(created["id"]), str(created["host_key"])


async def _sender(client: V1, name: str, ledger: Ledger, stop: trio.Event,
                  *, may_die: bool = False) -> None:
    n = 0
    try:
        while not stop.is_set():
            n += 1
            text = f"{name}:{n}"
            reply = await client.call("chat", text=text)
            if reply["type"] == "ack":
                ledger.acked[text] = int(reply["seq"])
            elif reply.get("code") == "unavailable":
                ledger.refused += 1
            else:
                ledger.problems.append(f"{name}: {reply}")
            await trio.sleep(CHAT_GAP)
    except (ConnectionClosed, trio.TooSlowError):
        if not may_die:
            raise


async def _flipper(host: V1, ledger: Ledger, stop: trio.Event) -> None:
    camera = True
    while not stop.is_set():
        camera = not camera
        reply = await host.call("set_controls", controls={"camera": camera})
        if reply["type"] == "ack":
            ledger.flips.append((int(reply["revision"]), bool(reply["controls"]["camera"])))
        elif reply.get("code") == "unavailable":
            ledger.refused += 1
        else:
            ledger.problems.append(f"flip: {reply}")
        await trio.sleep(FLIP_GAP)


async def _observe(client: V1, name: str, ledger: Ledger) -> None:
    """Every chat and controls event of a member present throughout (until cancelled)."""
    ledger.seen[name] = []
    ledger.controls_seen[name] = (int(client.welcome["revision"]),
                                  bool(client.welcome["controls"]["camera"]))
    while True:
        msg = await client.recv(timeout=120)
        if msg["type"] == "chat":
            ledger.seen[name].append((int(msg["seq"]), str(msg["text"])))
        elif msg["type"] == "controls" and msg["revision"] > ledger.controls_seen[name][0]:
            ledger.controls_seen[name] = (int(msg["revision"]), bool(msg["controls"]["camera"]))
        elif msg["type"] == "member_left" and msg["reason"] == "instance lost":
            ledger.lost_members.append((name, str(msg["member"]["id"])))


async def _observe_seed(ws: WebSocketConnection, name: str, ledger: Ledger) -> None:
    ledger.seed_seen[name] = []
    while True:
        msg = await recv_json(ws, timeout=120)
        if "isVideo" in msg:
            ledger.seed_camera[name] = bool(msg["isVideo"])
        elif "notice" in msg and "name" in msg:
            ledger.seed_seen[name].append(str(msg["notice"]))
        elif "user_uid" in msg:
            ledger.seed_camera[name] = bool(msg["is_video"])


@asynccontextmanager
async def _seed_in(url: str, meeting: str, name: str) -> AsyncIterator[WebSocketConnection]:
    async with open_seed(url, meeting, name) as ws:
        state = await recv_until(ws, lambda m: "user_uid" in m)
        assert "is_video" in state
        yield ws


async def _get(url: str, path: str, host_key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {host_key}"} if host_key else {}
    async with Api(url) as api:
        response = await api.request("GET", path, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _wait_ready(urls: list[str], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        for url in urls:
            while True:
                async with Api(url) as api:
                    if (await api.request("GET", "/readyz")).status_code == 200:
                        break
                await trio.sleep(0.2)


async def _check(ledger: Ledger, url: str, meeting: str, host_key: str) -> None:
    """Nothing acknowledged lost, nothing twice, controls as acknowledged, still joinable."""
    assert not ledger.problems, ledger.problems
    assert len(ledger.acked) > 20, "too little load to say anything"
    for name, seen in ledger.seen.items():
        texts = [t for _s, t in seen]
        missing = sorted(set(ledger.acked) - set(texts))
        assert not missing, f"{name} never got {len(missing)} acked chats: {missing[:5]}"
        seqs = [s for s, _t in seen]
        assert seqs == sorted(set(seqs)), f"{name}: chat repeated or out of order"
        assert all(ledger.acked[t] == s for s, t in seen if t in ledger.acked), name
    for name, notices in ledger.seed_seen.items():
        missing = sorted(set(ledger.acked) - set(notices))
        assert not missing, f"seed {name} never got {len(missing)} acked chats: {missing[:5]}"
    revision, camera = ledger.last_flip()
    assert revision, "no flip was acknowledged"
    controls = await _get(url, f"/v1/meetings/{meeting}/controls")
    assert controls["controls"]["camera"] is camera and controls["revision"] >= revision
    for name, (seen_revision, seen_camera) in ledger.controls_seen.items():
        assert seen_revision >= revision and seen_camera is camera, (name, seen_revision)
    for name, seen_camera in ledger.seed_camera.items():
        assert seen_camera is camera, f"seed {name} was last told camera={seen_camera}"
    # the history a newcomer gets holds every acked chat (the meeting keeps 500 by default)
    async with open_v1(url, meeting, name="newcomer", last_seq=0) as newcomer:
        history = {c["text"] for c in newcomer.welcome["missed"]}
        assert not set(ledger.acked) - history, "acked chat missing from the history"
        assert newcomer.welcome["controls"]["camera"] is camera
    sessions = (await _get(url, f"/v1/meetings/{meeting}/attendance", host_key))["sessions"]
    assert any(s["name"] == "newcomer" for s in sessions)


def _assert_no_errors_logged(instances: list[Instance]) -> None:
    """A fault is logged as a warning (it is expected); an ERROR is a bug."""
    errors = scan_logs([str(i.log_path) for i in instances])
    assert not errors, "\n".join(errors[:10])


async def _drain_then_cancel(nursery: trio.Nursery, stop: trio.Event, seconds: float) -> None:
    stop.set()
    await trio.sleep(seconds)  # the last acked chats and flips reach everyone
    nursery.cancel_scope.cancel()


async def test_kill_9_an_instance_under_load() -> None:
    with LocalCluster(3) as cluster:
        doomed, one, two = cluster.instances
        mid, key = await _meeting(one.url)
        ledger, stop = Ledger(), trio.Event()
        with trio.fail_after(90):
            async with open_v1(one.url, mid, name="host", host_key=key) as host, \
                    open_v1(one.url, mid, name="obs1") as obs1, \
                    open_v1(two.url, mid, name="obs2") as obs2, \
                    _seed_in(two.url, mid, "seedobs") as seed_obs, \
                    open_v1(one.url, mid, name="s1") as s1, \
                    open_v1(two.url, mid, name="s2") as s2, \
                    open_v1(doomed.url, mid, name="s-doomed") as s_doomed, \
                    open_v1(doomed.url, mid, name="idle-doomed") as idle_doomed:
                doomed_ids = {s_doomed.me["id"], idle_doomed.me["id"]}
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_observe, obs1, "obs1", ledger)
                    nursery.start_soon(_observe, obs2, "obs2", ledger)
                    nursery.start_soon(_observe_seed, seed_obs, "seedobs", ledger)
                    nursery.start_soon(_sender, s1, "s1", ledger, stop)
                    nursery.start_soon(_sender, s2, "s2", ledger, stop)
                    nursery.start_soon(partial(_sender, s_doomed, "s-doomed", ledger, stop,
                                               may_die=True))
                    nursery.start_soon(_flipper, host, ledger, stop)
                    await trio.sleep(2)
                    killed_at = trio.current_time()
                    await trio.to_thread.run_sync(doomed.kill)
                    with trio.fail_after(LOST_WITHIN):  # the ghosts go within the lease
                        while {m for obs, m in ledger.lost_members if obs == "obs2"} != doomed_ids:
                            await trio.sleep(0.1)
                    gone_after = trio.current_time() - killed_at
                    roster = await _get(two.url, f"/v1/meetings/{mid}/members")
                    assert not doomed_ids & {m["id"] for m in roster["members"]}
                    await trio.sleep(2)  # load goes on after the clean-up
                    await _drain_then_cancel(nursery, stop, 2)
                assert gone_after < LOST_WITHIN
                for observer in ("obs1", "obs2"):  # each told once of each
                    assert sorted(m for obs, m in ledger.lost_members if obs == observer) == \
                        sorted(doomed_ids), ledger.lost_members
                await _check(ledger, one.url, mid, key)
        _assert_no_errors_logged([one, two])


# --- a 3-member etcd ---------------------------------------------------------------------------

@dataclass
class EtcdTrio:
    """Three etcd members on loopback, each a process the test can kill."""

    directory: Path
    clients: list[int]
    peers: list[int]
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.clients]

    def start(self) -> None:
        binary = shutil.which("etcd")
        assert binary, "etcd is not installed (scripts/install-test-deps installs it)"
        cluster = ",".join(f"etcd{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(self.peers))
        for i, (client, peer) in enumerate(zip(self.clients, self.peers, strict=True)):
            with open(self.directory / f"etcd{i + 1}.log", "wb") as log:
                self.procs.append(subprocess.Popen([
                    binary, "--name", f"etcd{i + 1}",
                    "--data-dir", str(self.directory / f"etcd{i + 1}"),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", cluster, "--initial-cluster-token", "chaos",
                    "--initial-cluster-state", "new",
                    "--heartbeat-interval", "100", "--election-timeout", "1000",
                ], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
        deadline = time.monotonic() + 20
        while self.leader() is None:
            assert time.monotonic() < deadline, "the 3-member etcd elected no leader"
            time.sleep(0.2)

    def status(self) -> list[dict[str, Any]]:
        """``etcdctl endpoint status`` of the members that answer."""
        done = subprocess.run(
            ["etcdctl", "--endpoints", ",".join(self.endpoints), "--command-timeout=2s",
             "endpoint", "status", "-w", "json"],
            capture_output=True, timeout=15, env={**os.environ, "ETCDCTL_API": "3"})
        try:
            out: list[dict[str, Any]] = json.loads(done.stdout or b"[]")
        except ValueError:
            return []
        return out

    def leader(self) -> int | None:
        """The index of the leader (by ``etcdctl endpoint status``), if there is one."""
        for entry in self.status():
            status = entry["Status"]
            # no leader (an election): etcdctl leaves the field out
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return self.endpoints.index(entry["Endpoint"])
        return None

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        self.procs[index] = None

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.kill()
                proc.wait(5)


@contextmanager
def _etcd_trio_cluster(instances: int) -> Iterator[tuple[EtcdTrio, list[Instance]]]:
    directory = Path(tempfile.mkdtemp(prefix="rmeeting-chaos-"))
    ports = free_ports(6)
    etcd = EtcdTrio(directory, ports[:3], ports[3:])
    redis = RedisServer(directory / "redis")
    started: list[Instance] = []
    try:
        etcd.start()
        redis.start()
        for i in range(instances):
            instance = Instance(f"i{i + 1}", ",".join(etcd.endpoints), redis.url,
                                directory / f"i{i + 1}.log")
            instance.start()
            started.append(instance)
        yield etcd, started
    finally:
        for instance in started:
            instance.stop(timeout=5) if instance.running else instance.kill()
        redis.stop()
        etcd.stop()
        if not os.environ.get("CHAOS_KEEP_LOGS"):  # set it to read the logs of a failure
            shutil.rmtree(directory, ignore_errors=True)


async def test_kill_the_etcd_leader_under_load() -> None:
    with _etcd_trio_cluster(2) as (etcd, (one, two)):
        mid, key = await _meeting(one.url)
        ledger, stop = Ledger(), trio.Event()
        with trio.fail_after(90):
            async with open_v1(one.url, mid, name="host", host_key=key) as host, \
                    open_v1(one.url, mid, name="obs1") as obs1, \
                    open_v1(two.url, mid, name="obs2") as obs2, \
                    _seed_in(two.url, mid, "seedobs") as seed_obs, \
                    open_v1(one.url, mid, name="s1") as s1, \
                    open_v1(two.url, mid, name="s2") as s2:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_observe, obs1, "obs1", ledger)
                    nursery.start_soon(_observe, obs2, "obs2", ledger)
                    nursery.start_soon(_observe_seed, seed_obs, "seedobs", ledger)
                    nursery.start_soon(_sender, s1, "s1", ledger, stop)
                    nursery.start_soon(_sender, s2, "s2", ledger, stop)
                    nursery.start_soon(_flipper, host, ledger, stop)
                    await trio.sleep(2)
                    leader = await trio.to_thread.run_sync(etcd.leader)
                    assert leader is not None
                    flips_before = len(ledger.flips)
                    await trio.to_thread.run_sync(etcd.kill, leader)
                    with trio.fail_after(20):  # a new leader, and flips acked again
                        while await trio.to_thread.run_sync(etcd.leader) is None:
                            await trio.sleep(0.2)
                        while len(ledger.flips) < flips_before + 4:
                            await trio.sleep(0.1)
                    await trio.sleep(2)
                    await _drain_then_cancel(nursery, stop, 3)
                await _wait_ready([one.url, two.url])
                assert not ledger.lost_members, "a leader change took an instance for dead"
                roster = await _get(two.url, f"/v1/meetings/{mid}/members")
                assert {m["name"] for m in roster["members"]} >= {
                    "host", "obs1", "obs2", "seedobs", "s1", "s2"}
                _assert_no_errors_logged([one, two])
                await _check(ledger, two.url, mid, key)


async def test_restart_redis_under_load() -> None:
    with LocalCluster(2) as cluster:
        assert isinstance(cluster.redis, RedisServer)  # one plain Redis, restarted in place
        redis = cluster.redis
        one, two = cluster.instances
        mid, key = await _meeting(one.url)
        ledger, stop = Ledger(), trio.Event()
        with trio.fail_after(90):
            async with open_v1(one.url, mid, name="host", host_key=key) as host, \
                    open_v1(one.url, mid, name="obs1") as obs1, \
                    open_v1(two.url, mid, name="obs2") as obs2, \
                    _seed_in(one.url, mid, "seedobs") as seed_obs, \
                    open_v1(one.url, mid, name="s1") as s1, \
                    open_v1(two.url, mid, name="s2") as s2:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_observe, obs1, "obs1", ledger)
                    nursery.start_soon(_observe, obs2, "obs2", ledger)
                    nursery.start_soon(_observe_seed, seed_obs, "seedobs", ledger)
                    nursery.start_soon(_sender, s1, "s1", ledger, stop)
                    nursery.start_soon(_sender, s2, "s2", ledger, stop)
                    nursery.start_soon(_flipper, host, ledger, stop)
                    await trio.sleep(2)
                    await trio.to_thread.run_sync(redis.kill)
                    await trio.sleep(2)  # the load goes on against a Redis that is gone
                    await trio.to_thread.run_sync(redis.restart)
                    await _wait_ready([one.url, two.url])
                    acked_at_restart = len(ledger.acked)
                    with trio.fail_after(20):  # chat is acked again
                        while len(ledger.acked) < acked_at_restart + 20:
                            await trio.sleep(0.1)
                    await _drain_then_cancel(nursery, stop, 3)
                assert ledger.refused > 0, "the outage was never noticed"
                assert not ledger.lost_members
                await _check(ledger, one.url, mid, key)
        _assert_no_errors_logged([one, two])
