"""``rmeeting cluster``: the one command that runs a local cluster, started as an operator would.

It runs as a subprocess; the test reads the JSON line it prints, uses the cluster through nginx
and each instance, sends SIGINT, and checks that the command exits 0 with every process it
started (etcd, redis-server, nginx and its workers, the instances) gone.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.etcd, pytest.mark.redis]

START_TIMEOUT = 30.0


def _read_ready_line(proc: subprocess.Popen[bytes]) -> tuple[dict[str, Any], str]:
    """The JSON line the command prints once everything is up, and all output before it."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = b""
    while True:
        if proc.poll() is not None:
            seen += proc.stdout.read()
            raise AssertionError(f"rmeeting cluster exited with {proc.returncode}: {seen!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"rmeeting cluster not ready after {START_TIMEOUT}s: {seen!r}")
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            seen += os.read(proc.stdout.fileno(), 65536)
            for line in seen.decode().splitlines(keepends=True):
                if line.startswith("{") and line.endswith("\n"):
                    return json.loads(line), seen.decode()


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _cmdline(pid)
                frontier.append(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("redis_cluster", [False, True], ids=["redis", "redis-cluster"])
def test_cluster_command_starts_serves_and_stops_everything(redis_cluster: bool) -> None:
    mark = uuid.uuid4().hex
    flags = ["--redis-cluster"] if redis_cluster else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmeeting", "cluster", "--instances", "2", "--port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "CLUSTER_CLI_TEST_MARK": mark},
    )
    try:
        info, output = _read_ready_line(proc)
        # the human-readable block names every URL too
        for url in [info["url"], info["etcd"]["endpoint"], info["redis"]["url"]]:
            assert url in output
        assert len(info["instances"]) == 2
        for instance in info["instances"]:
            assert instance["url"] in output

        with httpx.Client(timeout=10) as http:
            created = http.post(f"{info['url']}/CreateMeeting",
                                json={"meeting_name": "cli", "is_video": True})
            assert created.status_code == 200, created.text
            meeting = created.json()["meetingUid"]
            for instance in info["instances"]:
                ready = http.get(f"{instance['url']}/readyz")
                assert ready.status_code == 200, (instance, ready.text)
                # the meeting made through nginx is known to every instance (etcd is shared)
                seen = http.get(f"{instance['url']}/v1/meetings/{meeting}")
                assert seen.status_code == 200, (instance, seen.text)

        # after the requests: nginx's master listens before it has forked its workers
        children = _descendants(proc.pid)
        redis_nodes = info["redis"].get("nodes") or [info["redis"]]
        assert len(redis_nodes) == (6 if redis_cluster else 1)
        # the instances are given every node; each finds out by itself that it is a cluster
        assert info["redis"]["url"] == ",".join(node["url"] for node in redis_nodes)
        named = {
            "etcd": info["etcd"]["pid"],
            **{f"redis-server 127.0.0.1:{node['url'].rsplit(':', 1)[1].split('/')[0]}":
               node["pid"] for node in redis_nodes},
            "nginx": info["nginx"]["pid"],
            **{f"--instance-id {i['name']}": i["pid"] for i in info["instances"]},
        }
        for marker, pid in named.items():
            assert pid in children, f"{marker} (pid {pid}) is not a child of the command"
            assert marker in children[pid], f"pid {pid} is {children[pid]!r}, not {marker}"
        # nginx's workers are there too, and must go with their master
        assert any(
            "nginx: worker" in cmd for pid, cmd in children.items() if pid not in named.values()
        ), children

        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=25)
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert code == 0, stderr
        assert "stopped" in stdout
        # its children were reaped by it, nginx's workers by nginx: none may linger
        deadline = time.monotonic() + 3
        while (left := {p: c for p, c in children.items() if _alive(p)}) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"left running after the command exited: {left}"
        assert not _marked(mark), "a process started by the command is still running"
        assert not Path(info["dir"]).exists(), "the cluster's directory was not removed"
    finally:
        if proc.poll() is None:  # a failed check: stop it the polite way, so it stops its own
            proc.terminate()
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_cluster_command_rejects_bad_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rmeeting", "cluster", "--instances", "0", "--port", "0"],
        capture_output=True, timeout=30,
    )
    assert done.returncode == 2
    assert b"--instances must be at least 1" in done.stderr


def _marked(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (children inherit the environment)."""
    needle = f"CLUSTER_CLI_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0") \
                        and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_cluster_command_stops_everything_when_a_start_fails() -> None:
    # nginx cannot listen on a port that is taken: everything started before it must stop
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mark = uuid.uuid4().hex
        done = subprocess.run(
            [sys.executable, "-m", "rmeeting", "cluster", "--instances", "1", "--port", str(port)],
            capture_output=True, timeout=60, env={**os.environ, "CLUSTER_CLI_TEST_MARK": mark},
        )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "nginx" in stderr
    assert "logs kept in" in stderr
    kept = Path(stderr.rsplit("logs kept in", 1)[1].strip())
    try:
        assert (kept / "i1.log").exists()
        assert not _marked(mark), "processes left running after a failed start"
    finally:
        shutil.rmtree(kept, ignore_errors=True)
