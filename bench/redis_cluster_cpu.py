"""CPU per chat message and per join, process by process, on N instances over a Redis Cluster.

    python bench/redis_cluster_cpu.py [--instances 5] [--joins 1000] [--room 10]
                                      [--messages 3000] [--rate 300] [--json PATH] [--plain]

Starts ``LocalCluster(N, redis_cluster=True)`` (etcd, a Redis Cluster of 3 primaries with a
replica each, N instances, nginx; with ``--plain`` one Redis instead, for the ratio), then
runs ``rmeeting bench`` against the instances directly (``--urls``: member i on instance
i mod N) three times:

- ``join -n JOINS --room-size ROOM``: JOINS members join JOINS/ROOM meetings, spread over every
  instance and (by the meetings' hash tags) every shard, then leave;
- ``fanout -n N``: one member per instance, MESSAGES chat messages from member 0 (instance 1);
- ``fanout -n 20N``: the same with 20 members per instance.

Each process's CPU time (user + system, from /proc) is read before and after each run, less what
it spends idle (measured first, over ``--idle`` seconds), and divided by the operations: joins,
or chat messages. CPU time, not wall time: the figures hold on a machine shared with other work
(the load average is printed). The two fanout runs tell an instance's cost per message apart
from its cost per delivery. Redis's per-node ``commandstats`` say which primary carried the
meeting and count the commands per operation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from rmeeting.bench.runner import bench_limits
from rmeeting.cluster.launcher import LocalCluster
from rmeeting.cluster.processes import RedisServer
from rmeeting.cluster.redis_cluster import RedisClusterServer

TICK = os.sysconf("SC_CLK_TCK")
#: seconds waited after each bench run before the CPU is read again (idle time is subtracted)
SETTLE = 3.0


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree(pid: int) -> list[int]:
    kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [pid, *[k for kid in kids for k in tree(kid)]]


class Processes:
    """Named process groups and their CPU seconds."""

    def __init__(self, cluster: LocalCluster, nodes: dict[str, int]) -> None:
        assert cluster.nginx._proc is not None and cluster.etcd._process is not None
        self.groups: dict[str, list[int]] = {
            **{i.name: [i.pid] for i in cluster.instances if i.pid},
            **{name: [pid] for name, pid in nodes.items()},
            "etcd": [cluster.etcd._process.pid],
            "nginx": tree(cluster.nginx._proc.pid),
        }

    def read(self) -> dict[str, float]:
        return {name: sum(cpu(p) for p in pids) for name, pids in self.groups.items()}


def node_clients(server: RedisClusterServer | Any) -> dict[str, redis.Redis]:
    if not isinstance(server, RedisClusterServer):
        return {"redis": redis.Redis(port=server.port)}
    out = {}
    for node in server.nodes:
        role = "p" if "role:master" in server.command(node, "info", "replication") else "r"
        out[f"redis-{role}{node.port}"] = redis.Redis(port=node.port)
    return out


def commands(clients: dict[str, redis.Redis]) -> dict[str, dict[str, int]]:
    return {name: {k.removeprefix("cmdstat_"): v["calls"]
                   for k, v in client.info("commandstats").items()}
            for name, client in clients.items()}


def bench(urls: list[str], *args: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "rmeeting", "bench", *args,
                        "--urls", ",".join(urls), "-q", "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
        return result


def measure(procs: Processes, clients: dict[str, redis.Redis], idle: dict[str, float],
            run: Any) -> tuple[dict[str, float], dict[str, dict[str, int]], dict[str, Any]]:
    for client in clients.values():
        client.config_resetstat()
    before, t0 = procs.read(), time.monotonic()
    result = run()
    time.sleep(SETTLE)  # the leaves of members the bench closed as it ended are still landing
    after, wall = procs.read(), time.monotonic() - t0
    spent = {k: max(after[k] - before[k] - idle[k] * wall, 0.0) for k in after}
    return spent, commands(clients), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--joins", type=int, default=1000)
    parser.add_argument("--room", type=int, default=10)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--plain", action="store_true", help="one Redis, not a Redis Cluster")
    args = parser.parse_args()
    n = args.instances
    report: dict[str, Any] = {"load_before": os.getloadavg(), "instances": n,
                              "redis": "plain" if args.plain else "cluster"}
    env = bench_limits(max(args.joins, 20 * n))
    with LocalCluster(n, env=env, redis_cluster=not args.plain) as cluster:
        if isinstance(cluster.redis, RedisServer):  # fsync each second, as compose runs it
            with redis.Redis(port=cluster.redis.port) as plain:
                plain.config_set("appendfsync", "everysec")
        clients = node_clients(cluster.redis)
        nodes = {name: c.info("server")["process_id"] for name, c in clients.items()}
        procs = Processes(cluster, nodes)
        urls = [i.url for i in cluster.instances]
        time.sleep(2)  # let start-up settle
        first, t0 = procs.read(), time.monotonic()
        time.sleep(args.idle)
        last, wall = procs.read(), time.monotonic() - t0
        idle = {k: (last[k] - first[k]) / wall for k in last}
        report["idle_cpu_share"] = idle

        runs = {
            "join": (args.joins, lambda: bench(
                urls, "join", "-n", str(args.joins), "--room-size", str(args.room))),
            "chat_1_per_instance": (args.messages, lambda: bench(
                urls, "fanout", "-n", str(n), "-m", str(args.messages),
                "--rate", str(args.rate))),
            "chat_20_per_instance": (args.messages, lambda: bench(
                urls, "fanout", "-n", str(20 * n), "-m", str(args.messages),
                "--rate", str(args.rate))),
        }
        for name, (ops, run) in runs.items():
            spent, calls, result = measure(procs, clients, idle, run)
            per_op_us = {k: round(v / ops * 1e6, 1) for k, v in spent.items()}
            # on the primaries only: replicas apply the same writes (as MULTI/EXEC)
            primaries = [v for k, v in calls.items() if not k.startswith("redis-r")]
            total = {c: sum(node.get(c, 0) for node in primaries)
                     for node in primaries for c in node}
            report[name] = {"ops": ops, "cpu_s": spent, "cpu_us_per_op": per_op_us,
                            "redis_calls_per_op": {c: round(v / ops, 2) for c, v in
                                                   sorted(total.items(), key=lambda kv: -kv[1])
                                                   if v / ops >= 0.05},
                            "evalsha_by_node": {k: v.get("evalsha", 0)
                                                for k, v in calls.items()},
                            "bench": {k: result.get(k) for k in ("throughput", "latency_ms",
                                                                 "lost", "refused")}}
            print(f"{name}: {ops} ops; CPU µs per op: " + ", ".join(
                f"{k} {v}" for k, v in per_op_us.items()), flush=True)
            print(f"  Redis calls per op: {report[name]['redis_calls_per_op']}", flush=True)
        for client in clients.values():
            client.close()
    report["load_after"] = os.getloadavg()
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
