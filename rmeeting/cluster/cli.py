"""``rmeeting cluster``: a whole cluster on this machine, without Docker.

Starts etcd, Redis (AOF on; with ``--redis-cluster`` a Redis Cluster of 3 primaries and 3
replicas), N instances and nginx in front of them with :class:`LocalCluster`,
prints where each one listens, then waits for Ctrl-C, SIGTERM or SIGHUP and stops them all (the
instances first, drained, then nginx, Redis and etcd). Everything also stops when a start fails or
when etcd, Redis or nginx dies; an instance that dies is reported and the others carry on, as a
cluster should (``kill -9`` one to watch the others clean up after it).

Output, on stdout: a human-readable block, then one JSON line (the only line starting with
``{``) for scripts::

    {"url": NGINX_URL, "nginx": {"url", "pid"}, "etcd": {"endpoint", "pid"},
     "redis": {"url", "pid", "nodes": [{"url", "pid"}, ...] (a Redis Cluster only)},
     "instances": [{"name", "url", "pid"}, ...], "dir": LOG_DIR}

Exit status: 0 when stopped by a signal, 1 when something failed (the logs are then kept and
their directory named), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .launcher import LocalCluster
from .processes import RedisServer
from .redis_cluster import RedisClusterServer

__all__ = ["add_arguments", "run", "run_from_args"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_INTERVAL = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instances", type=int, default=3, metavar="N",
                        help="rmeeting instances behind nginx (default 3)")
    parser.add_argument("--port", type=int, default=8080, metavar="P",
                        help="nginx's port on 127.0.0.1 (default 8080; 0 picks a free port)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="a Redis Cluster (3 primaries, 3 replicas) instead of one Redis")


def run_from_args(args: argparse.Namespace) -> int:
    return run(instances=args.instances, port=args.port, redis_cluster=args.redis_cluster)


class _Stop(Exception):
    """A stop was asked for (a signal) while starting: leave the start-up sequence."""


def _pid(server: object) -> int | None:
    """The pid of a launcher server process (etcd, Redis, nginx keep their Popen private)."""
    for attr in ("_process", "_proc"):
        proc = getattr(server, attr, None)
        if isinstance(proc, subprocess.Popen):
            return proc.pid
    return None


def _alive(server: object) -> bool:
    if isinstance(server, RedisClusterServer):
        return server.running  # every node (a node killed on purpose is the cluster's business)
    for attr in ("_process", "_proc"):
        proc = getattr(server, attr, None)
        if isinstance(proc, subprocess.Popen):
            return proc.poll() is None
    return False


def _describe(cluster: LocalCluster) -> dict[str, Any]:
    return {
        "url": cluster.url,
        "nginx": {"url": cluster.nginx.url, "pid": _pid(cluster.nginx)},
        "etcd": {"endpoint": cluster.etcd.endpoint, "pid": _pid(cluster.etcd)},
        "redis": _describe_redis(cluster.redis),
        "instances": [{"name": i.name, "url": i.url, "pid": i.pid} for i in cluster.instances],
        "dir": str(cluster.dir),
    }


def _describe_redis(redis: RedisServer | RedisClusterServer) -> dict[str, Any]:
    if isinstance(redis, RedisClusterServer):
        return {"url": redis.url, "pid": None,
                "nodes": [{"url": node.url, "pid": node.pid} for node in redis.nodes]}
    return {"url": redis.url, "pid": _pid(redis)}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(instances: int = 3, port: int = 8080, redis_cluster: bool = False) -> int:
    """Start the cluster, print its URLs, wait for a signal, stop it all; the exit status."""
    if instances < 1:
        _say("rmeeting cluster: --instances must be at least 1")
        return 2
    if not 0 <= port <= 65535:
        _say("rmeeting cluster: --port must be between 0 and 65535")
        return 2

    stop_signal: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only note it: raising here could interrupt a Popen half-way and orphan its child.
        # The start-up sequence and the wait loop check it between steps.
        if not stop_signal:
            _say(f"rmeeting cluster: {signal.Signals(signum).name}, stopping everything")
        stop_signal.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    directory = Path(tempfile.mkdtemp(prefix="rmeeting-cluster-"))
    cluster: LocalCluster | None = None
    failed = True
    try:
        cluster = LocalCluster(instances, port=port, directory=directory,
                               redis_cluster=redis_cluster)

        def step() -> None:
            if stop_signal:
                raise _Stop

        # LocalCluster.start's sequence, one step at a time so a signal is seen between steps
        step()
        cluster.etcd.start()
        step()
        cluster.redis.start()
        for i in range(instances):
            step()
            cluster.add_instance(f"i{i + 1}")
        step()
        cluster.nginx.start([inst.port for inst in cluster.instances])
        step()
        _announce(cluster)
        failed = _wait(cluster, stop_signal)
    except _Stop:
        failed = False
    except Exception as exc:  # any failure: say it, then stop everything
        _say(f"rmeeting cluster: {exc}")
    finally:
        # a second Ctrl-C must not cut the clean-up short and leave children behind
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if cluster is not None:
            cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        if any(directory.iterdir()):
            _say(f"rmeeting cluster: stopped after a failure; logs kept in {directory}")
        else:
            directory.rmdir()
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    print("rmeeting cluster: stopped", flush=True)
    return 0


def _announce(cluster: LocalCluster) -> None:
    lines = [
        f"rmeeting cluster: {len(cluster.instances)} instances behind nginx, all on loopback",
        f"  nginx     {cluster.url}    <- clients go here (round-robin, WebSocket upgrade)",
    ]
    lines += [f"  {inst.name:<9} {inst.url}" for inst in cluster.instances]
    lines += [
        f"  etcd      {cluster.etcd.endpoint}    "
        f"(etcdctl --endpoints {cluster.etcd.endpoint} get --prefix /rmeeting/)",
        f"  redis     {cluster.redis.url}"
        + (f"    (a Redis Cluster of {len(cluster.redis.nodes)} nodes)"
           if isinstance(cluster.redis, RedisClusterServer) else ""),
        f"  logs      {cluster.dir}",
        "Ctrl-C stops them all.",
    ]
    print("\n".join(lines), flush=True)
    print(json.dumps(_describe(cluster)), flush=True)


def _wait(cluster: LocalCluster, stop_signal: list[int]) -> bool:
    """Wait for a stop signal (False) or the death of etcd, Redis or nginx (True)."""
    lost: set[str] = set()
    while not stop_signal:
        time.sleep(POLL_INTERVAL)
        if stop_signal:
            break
        for name, server in (("etcd", cluster.etcd), ("redis", cluster.redis),
                             ("nginx", cluster.nginx)):
            if not _alive(server):
                _say(f"rmeeting cluster: {name} exited; stopping everything")
                return True
        for inst in cluster.instances:
            if inst.name not in lost and not inst.running:
                lost.add(inst.name)
                _say(f"rmeeting cluster: instance {inst.name} exited; the others carry on "
                     f"(its log: {inst.log_path})")
    return False
