"""Side by side (issue 6): the same fan-out, the same client, three servers, one go.

    python bench/compare.py [--members 100,1000] [--messages 1000,200] [--runs 3]
                            [--servers embedded,cluster,socketio] [--json PATH]

For each member count N (with its message count M), each run, and each server, one
``rmeeting bench fanout -n N -m M`` (one sender, everyone in one room, unthrottled, ~100-byte
messages, the bench's raw-socket client in one process):

- ``embedded``: ``rmeeting bench fanout --spawn``: one rmeeting process, in-memory stores;
- ``cluster``: ``rmeeting bench fanout --cluster 2 --nginx``: a local cluster (etcd, Redis,
  2 instances, nginx) started for the run; every member, the sender too, connects through nginx;
- ``socketio``: ``bench/socketio_peer.py`` (python-socketio on aiohttp with ``AsyncRedisManager``,
  a fresh process per run, against a Redis this script starts on a free port), loaded with
  ``rmeeting bench fanout --protocol socketio --url …`` (the bench's own Engine.IO/Socket.IO
  adapter, the same raw-socket client).

The servers take turns within a run (embedded, cluster, socketio, then again), so a change in
the machine's load spreads over all of them. Prints one Markdown table (median deliveries/s and
the spread over the runs, loss/duplication/reordering, latency, server CPU, load average) and the
ratio of rmeeting to socketio, and writes every run's full result to ``--json``.

Needs python-socketio and aiohttp (``pip install 'rmeeting[compare]'``), and redis-server, etcd
and nginx on PATH (the local cluster's); it says which is missing and exits with status 2.
Every server it starts is on loopback and stopped at the end; every run is bounded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "bench" / "socketio_peer.py"
SERVERS = ("embedded", "cluster", "socketio")
#: the bench's own cap on one run, and the margin this script allows around it
RUN_DURATION = 150.0
RUN_MARGIN = 90.0


def missing_requirements(servers: list[str]) -> list[str]:
    missing = []
    if "socketio" in servers:
        for module, package in (("socketio", "python-socketio"), ("aiohttp", "aiohttp")):
            if importlib.util.find_spec(module) is None:
                missing.append(f"the Python package {package} "
                               "(pip install 'rmeeting[compare]')")
    binaries = {"redis-server"} if "socketio" in servers else set()
    if "cluster" in servers:
        binaries |= {"redis-server", "etcd", "nginx"}
    for binary in sorted(binaries):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            missing.append(f"the program {binary}")
    return missing


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Peer:
    """``bench/socketio_peer.py`` as a child process, on a free port."""

    def __init__(self, redis_url: str, log: Path) -> None:
        self.log = open(log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), "--redis", redis_url, "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        self.url = ""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 20
            while not self.url:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    self.stop()
                    raise RuntimeError(f"the socket.io peer did not start; see {log}")
                line = self.proc.stdout.readline()
                if not line:
                    self.stop()
                    raise RuntimeError(f"the socket.io peer exited at start; see {log}")
                if line.startswith("socketio peer listening on "):
                    self.url = line.rsplit(" ", 1)[1].strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def bench(args: list[str], out: Path) -> dict[str, Any]:
    """One ``rmeeting bench`` run; its JSON result, or a failure record."""
    command = [sys.executable, "-m", "rmeeting", "bench", *args, "-q", "--json", str(out),
               "--duration", str(RUN_DURATION)]
    load = load_average()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                              timeout=RUN_DURATION + RUN_MARGIN)
    except subprocess.TimeoutExpired:
        return {"failed": "timed out", "args": args, "load_before": load}
    if done.returncode != 0 or not out.exists():
        return {"failed": (done.stderr or done.stdout)[-2000:], "args": args,
                "load_before": load}
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    result["load_before"] = load
    return result


def run_one(
    server: str, members: int, messages: int, work: Path, redis_url: str
) -> dict[str, Any]:
    common = ["fanout", "-n", str(members), "-m", str(messages)]
    out = work / f"{server}-{members}.json"
    if server == "embedded":
        return bench([*common, "--spawn"], out)
    if server == "cluster":
        return bench([*common, "--cluster", "2", "--nginx"], out)
    peer = Peer(redis_url, work / "socketio-peer.log")
    try:
        return bench([*common, "--protocol", "socketio", "--url", peer.url,
                      "--server-pid", str(peer.pid)], out)
    finally:
        peer.stop()


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    return (f"**{med / 1000:,.1f}k** ({min(values) / 1000:,.1f}–{max(values) / 1000:,.1f}k)"
            if len(values) > 1 else f"**{med / 1000:,.1f}k**")


def _cpu(result: dict[str, Any]) -> float | None:
    server = result.get("server") or {}
    wall = server.get("measured_wall_s") or 0
    cpu = server.get("measured_cpu_s")
    return round(100 * cpu / wall) if cpu is not None and wall else None


def table(results: list[dict[str, Any]], sizes: list[tuple[int, int]],
          servers: list[str]) -> str:
    lines = [
        "| server | members × messages | deliveries/s: median (min–max) | runs ok | "
        "lost / dup / out of order | latency p50 / p99 ms (median run) | server CPU % | "
        "load avg (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    medians: dict[tuple[str, int], float] = {}
    for members, messages in sizes:
        for server in servers:
            mine = [r for r in results if r["compare"] == (server, members)]
            ok = [r for r in mine if "failed" not in r and r.get("deliveries_per_s")]
            rates = [float(r["deliveries_per_s"]) for r in ok]
            if rates:
                medians[(server, members)] = statistics.median(rates)
            faults = "/".join(str(sum(int(r.get(k, 0)) for r in ok))
                              for k in ("lost", "duplicated", "out_of_order"))
            middle = sorted(ok, key=lambda r: float(r["deliveries_per_s"]))
            mid = middle[len(middle) // 2] if middle else {}
            lat = mid.get("latency_ms") or {}
            latency = f"{lat.get('p50', 0):,.0f} / {lat.get('p99', 0):,.0f}" if lat else "—"
            cpus = [c for c in map(_cpu, ok) if c is not None]
            cpu = f"{min(cpus)}–{max(cpus)}" if cpus else "—"
            loads = [r["load_before"][0] for r in mine if r.get("load_before")]
            load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "—"
            lines.append(f"| {server} | {members} × {messages} | {_spread(rates)} | "
                         f"{len(ok)}/{len(mine)} | {faults} | {latency} | {cpu} | {load} |")
    lines.append("")
    for members, _ in sizes:
        base = medians.get(("socketio", members))
        for server in ("embedded", "cluster"):
            if base and (server, members) in medians:
                lines.append(f"- {members} members: rmeeting {server} / socketio = "
                             f"{medians[(server, members)] / base:.1f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="100,1000", help="member counts (default 100,1000)")
    parser.add_argument("--messages", default="1000,200",
                        help="messages for each member count (default 1000,200)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"which servers (default {','.join(SERVERS)})")
    parser.add_argument("--json", metavar="PATH", help="write every run's result here")
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    try:
        members = [int(n) for n in args.members.split(",")]
        messages = [int(m) for m in args.messages.split(",")]
    except ValueError:
        parser.error("--members and --messages are comma-separated numbers")
    if unknown or not servers or len(members) != len(messages) or args.runs < 1 \
            or min(members + messages) < 1:
        parser.error("--servers from embedded,cluster,socketio; as many --messages as "
                     "--members; counts of at least 1")
    missing = missing_requirements(servers)
    if missing:
        print("bench/compare.py cannot run: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from rmeeting.bench.report import machine
    from rmeeting.cluster.processes import RedisServer

    sizes = list(zip(members, messages, strict=True))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    host = machine()
    with tempfile.TemporaryDirectory(prefix="rmeeting-compare-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis") if "socketio" in servers else None
        try:
            if redis is not None:
                redis.start()
            for run in range(args.runs):
                for n, m in sizes:
                    for server in servers:
                        print(f"run {run + 1}/{args.runs}: {server}, {n} members × {m} "
                              f"messages (load {load_average()[0]})", file=sys.stderr,
                              flush=True)
                        result = run_one(server, n, m, work, redis.url if redis else "")
                        result["compare"] = (server, n)
                        result["run"] = run + 1
                        results.append(result)
                        if "failed" in result:
                            print(f"  failed: {result['failed'][-500:]}", file=sys.stderr)
                        else:
                            print(f"  {result['deliveries_per_s'] or 0:,.0f} deliveries/s, lost "
                                  f"{result['lost']}, out of order {result['out_of_order']}",
                                  file=sys.stderr, flush=True)
        finally:
            if redis is not None:
                redis.stop()
    text = table(results, sizes, servers)
    print(text)
    print(f"\nmachine: {host['nproc']} × {host['cpu']}, {host['memory_gib']} GiB, "
          f"{host['python']}, {host['os']}; {time.monotonic() - started:.0f} s in all; "
          f"load average at the end {load_average()}")
    for server in servers:
        first = next((r for r in results if r["compare"][0] == server and "command" in r), None)
        if first is not None:
            print(f"{server}: {first['command']}")
    if args.json:
        for r in results:
            r.pop("cdf", None)
            r.pop("timeline", None)
        Path(args.json).write_text(json.dumps(
            {"machine": host, "sizes": sizes, "servers": servers, "runs": results,
             "table": text}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
