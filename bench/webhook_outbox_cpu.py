"""What a webhook event costs the Redis Cluster shard that holds the outbox.

    python bench/webhook_outbox_cpu.py [--events 3000] [--endpoints 1 3] [--plain]

Starts a Redis Cluster of 3 primaries with a replica each (``--plain``: one Redis, for the
ratio) and real receivers on loopback, then for each endpoint count: one instance's sender
(:class:`rmeeting.webhooks.Webhooks` on :class:`RedisOutbox`) emits EVENTS events and delivers
each to every endpoint. Printed per event: the CPU (user + system, from /proc) of the primary of
the ``{wh}`` slot and of the other nodes, less what each spends idle (measured first, over
``--idle`` seconds: the cluster bus, replication pings), and the commands each event took on the
``{wh}`` primary (``INFO commandstats``). CPU time, not wall time, so the figures hold on a
shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import redis
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rmeeting.cluster.processes import RedisServer  # noqa: E402
from rmeeting.cluster.redis_cluster import RedisClusterServer  # noqa: E402
from rmeeting.webhooks.events import WebhookEvent, event_id  # noqa: E402
from rmeeting.webhooks.receiver import Request, serve_receiver  # noqa: E402
from rmeeting.webhooks.redis import RedisOutbox  # noqa: E402
from rmeeting.webhooks.sender import Webhooks  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WH_KEY = "rmeeting:wh:{wh}:dropped"


def cpu_seconds(node: RedisServer) -> float:
    assert node.pid is not None
    fields = Path(f"/proc/{node.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calls(node: RedisServer) -> dict[str, int]:
    stats = redis.Redis(port=node.port).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def run(url: str, events: int, endpoints: int, tag: int) -> None:
    got: list[int] = [0]
    all_delivered = trio.Event()

    async def handle(request: Request) -> int:
        got[0] += 1
        if got[0] >= events * endpoints:
            all_delivered.set()
        return 204

    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(serve_receiver, "127.0.0.1", 0, handle)
                 for _ in range(endpoints)]
        urls = [f"http://127.0.0.1:{port}/hook" for port in ports]
        sender = Webhooks(urls, SECRET, RedisOutbox(url, urls), consumer="bench")
        await nursery.start(sender.serve)
        for n in range(events):
            sender.emit(WebhookEvent(event_id("controls.changed", tag, n), "controls.changed",
                                     1_700_000_000.0 + n, {"meeting_id": "m", "revision": n}))
        with trio.fail_after(600):
            await all_delivered.wait()
        nursery.cancel_scope.cancel()


def idle_rates(nodes: list[RedisServer], seconds: float) -> dict[int, float]:
    """CPU seconds per wall second of each node doing nothing."""
    cpu0, began = {n.port: cpu_seconds(n) for n in nodes}, time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - began
    return {n.port: (cpu_seconds(n) - cpu0[n.port]) / took for n in nodes}


def measure(nodes: list[RedisServer], url: str, events: int, endpoints: int, tag: int,
            holder: RedisServer, idle: dict[int, float]) -> None:
    cpu0, began = {n.port: cpu_seconds(n) for n in nodes}, time.monotonic()
    calls0 = calls(holder)
    trio.run(run, url, events, endpoints, tag)
    took = time.monotonic() - began
    cpu = {n.port: (cpu_seconds(n) - cpu0[n.port] - idle[n.port] * took) / events * 1e6
           for n in nodes}
    done = calls(holder)
    per_event = {k: (v - calls0.get(k, 0)) / events for k, v in done.items()
                 if v - calls0.get(k, 0) > 0 and k not in ("info", "ping")}
    others = [f"{cpu[n.port]:.0f}" for n in nodes if n is not holder]
    print(f"{endpoints} endpoint(s), {events} events: {{wh}} primary {cpu[holder.port]:.0f} us "
          f"per event; the other nodes {', '.join(others)} us; {events / took:.0f} events/s; "
          f"load {os.getloadavg()[0]:.1f}")
    print("  commands per event on it: " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(per_event.items(), key=lambda kv: -kv[1])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--endpoints", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    if args.plain:
        with RedisServer(extra_args=("--appendfsync", "everysec")) as server:
            idle = idle_rates([server], args.idle)
            for i, endpoints in enumerate(args.endpoints):
                measure([server], server.url, args.events, endpoints, i, server, idle)
        return
    with RedisClusterServer() as cluster:
        holder = cluster.primary_of(WH_KEY)
        idle = idle_rates(cluster.nodes, args.idle)
        for i, endpoints in enumerate(args.endpoints):
            measure(cluster.nodes, cluster.url, args.events, endpoints, i, holder, idle)


if __name__ == "__main__":
    main()
