"""A real Redis Cluster on loopback: N primaries with a replica each, killable node by node.

``redis-server --cluster-enabled yes`` per node (a :class:`RedisServer` each, in a directory of
its own for its ``nodes.conf`` and append-only file), then ``redis-cli --cluster create
--cluster-replicas 1``, then a wait until every node reports ``cluster_state:ok``, knows every
other node and every replica's link to its primary is up. ``rmeeting cluster --redis-cluster``,
the tests and the benchmarks all run this one, so they run what an operator would.

``cluster-node-timeout`` is short (1 s by default) so a killed primary's replica takes over
within about 2 s: the failover tests wait for that. Only ``redis-cli`` is needed, not redis-py.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .processes import RedisServer

__all__ = ["RedisClusterServer"]

READY_DEADLINE = 30.0


def _cli() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        raise RuntimeError("redis-cli is not installed: a Redis Cluster needs it to be created")
    return path


class RedisClusterServer:
    """``primaries`` × (1 + ``replicas``) redis-server processes forming one Redis Cluster."""

    def __init__(self, directory: Path | None = None, *, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="rmeeting-redis-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.primaries = primaries
        self.replicas = replicas
        self._cli = _cli()
        self.nodes = [
            RedisServer(self.dir / f"node{i}", (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / f"node{i}" / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                # the cluster's durability is its replicas; fsync each second as compose runs it
                "--appendfsync", "everysec",
            ))
            for i in range(primaries * (1 + replicas))
        ]
        self._killed: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The ``redis`` setting: every node, comma-separated (any one would do; the others are
        there for when that one is down as an instance starts)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def running(self) -> bool:
        """True while every node that was not killed on purpose runs (see ``kill``)."""
        return all(node.running for node in self.nodes if node not in self._killed)

    def start(self) -> RedisClusterServer:
        try:
            for node in self.nodes:
                node.start()
            self._run(self._cli, "--cluster", "create",
                      *(f"127.0.0.1:{node.port}" for node in self.nodes),
                      "--cluster-replicas", str(self.replicas), "--cluster-yes")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, deadline: float = READY_DEADLINE) -> None:
        """Until every running node says ``cluster_state:ok``, sees all the others, and every
        running replica is in sync with its primary."""
        until = time.monotonic() + deadline
        while True:
            if all(self._node_ready(node) for node in self.nodes if node.running):
                return
            if time.monotonic() > until:
                raise RuntimeError(f"the Redis Cluster was not ready within {deadline} s; "
                                   f"logs in {self.dir}")
            time.sleep(0.1)

    def _node_ready(self, node: RedisServer) -> bool:
        info = self.command(node, "cluster", "info")
        if "cluster_state:ok" not in info:
            return False
        known = self.command(node, "cluster", "nodes").strip().splitlines()
        if len(known) < len(self.nodes):
            return False
        replication = self.command(node, "info", "replication")
        return "role:master" in replication or "master_link_status:up" in replication

    def command(self, node: RedisServer, *args: str) -> str:
        """``redis-cli`` against one node; its output ("" if the node does not answer)."""
        done = subprocess.run([self._cli, "-p", str(node.port), *args], capture_output=True,
                              timeout=10, stdin=subprocess.DEVNULL)
        return done.stdout.decode(errors="replace") if done.returncode == 0 else ""

    def primary_of(self, key: str) -> RedisServer:
        """The running node that is now the primary of ``key``'s slot."""
        for node in self.nodes:
            if not node.running:
                continue
            slot = int(self.command(node, "cluster", "keyslot", key).strip())
            for line in self.command(node, "cluster", "nodes").splitlines():
                fields = line.split()
                if len(fields) < 8 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                for span in fields[8:]:
                    first, _, last = span.partition("-")
                    if first.isdigit() and int(first) <= slot <= int(last or first):
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no primary serves the slot of {key!r}")

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node (its replica takes over after ``cluster-node-timeout``)."""
        self._killed.append(node)
        node.kill()

    def flushall(self) -> None:
        for node in self.nodes:
            if node.running and "role:master" in self.command(node, "info", "replication"):
                self.command(node, "flushall")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed: "
                               f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}")
