"""Before/after ratio of HTTP request rates for two rmeeting source trees, in one run.

    python3 bench/http_hop.py --before /tmp/rmeeting-before --after . [--rounds 5] [--seconds 3]

Starts ``rmeeting serve`` from each tree (``PYTHONPATH=<tree>``), then alternates short rounds
against the two servers (so machine noise hits both alike) in three modes: keep-alive (each of
``--connections`` clients sends GET /healthz again and again on one connection) and a new
connection per request, closed by the server (``Connection: close``) or by the client once
the response is in (a short-lived keep-alive client, as an ``httpx.Client`` per request; the
server sees the end of input between requests). Prints requests/s per round, the median
after/before ratio per mode, and the servers' CPU time per request (from /proc, less sensitive
to a busy machine than rates).
Written for the front door's splice to Hypercorn (docs/benchmarks.md, "HTTP through the front
door"); /healthz is the cheapest route, so its ratio is the worst case of the extra hop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

import trio

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
REQUEST_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def _response_end(buf: bytes | bytearray) -> int | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    return end + 4 + length if len(buf) >= end + 4 + length else None


async def _keep_alive(host: str, port: int, stop: Callable[[], bool]) -> int:
    done = 0
    async with await trio.open_tcp_stream(host, port) as stream:
        buf = bytearray()
        while not stop():
            await stream.send_all(REQUEST)
            while (end := _response_end(buf)) is None:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("server closed a keep-alive connection")
                buf += chunk
            del buf[:end]
            done += 1
    return done


async def _new_connections(
    host: str, port: int, stop: Callable[[], bool], request: bytes = REQUEST_CLOSE
) -> int:
    done = 0
    while not stop():
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(request)
            buf = bytearray()
            while _response_end(buf) is None:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("closed before the response")
                buf += chunk
        if not buf.startswith(b"HTTP/1.1 200"):  # a cap's 503: not a request served
            raise RuntimeError(f"refused: {bytes(buf[:60])!r}")
        done += 1
    return done


async def _client_closes(host: str, port: int, stop: Callable[[], bool]) -> int:
    return await _new_connections(host, port, stop, REQUEST)


MODES = {"keep-alive": _keep_alive, "new connection": _new_connections,
         "client closes": _client_closes}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(url: str, mode: str, connections: int, seconds: float) -> tuple[float, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = trio.current_time() + seconds
    counts: list[int] = []
    client = MODES[mode]

    async def one() -> None:
        counts.append(await client(host, int(port), lambda: trio.current_time() >= deadline))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    return sum(counts) / (trio.current_time() - start), sum(counts)


async def _spawn(tree: str) -> tuple[trio.Process, str]:
    """``rmeeting serve`` from ``tree`` (an absolute path) and the URL it listens on."""
    env = {**os.environ, "PYTHONPATH": tree, "RMEETING_LOG_LEVEL": "warning"}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "rmeeting", "serve", "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive_some(1)
    return proc, line.decode().split("listening on ")[1].strip()


async def main(args: argparse.Namespace) -> None:
    procs: list[trio.Process] = []
    try:
        urls = {}
        for label, tree in (("before", args.before), ("after", args.after)):
            proc, urls[label] = await _spawn(tree)
            procs.append(proc)
        modes = (("keep-alive", args.connections), ("new connection", 4), ("client closes", 4))
        for mode, connections in modes:
            rates: dict[str, list[float]] = {"before": [], "after": []}
            cpu: dict[str, list[float]] = {"before": [], "after": []}  # server µs per request
            for i in range(args.rounds):
                order = ("before", "after") if i % 2 == 0 else ("after", "before")
                for label in order:
                    pid = procs[0 if label == "before" else 1].pid
                    cpu_start = _cpu_seconds(pid)
                    rate, requests = await _round(urls[label], mode, connections, args.seconds)
                    rates[label].append(rate)
                    cpu[label].append((_cpu_seconds(pid) - cpu_start) / requests * 1e6)
            ratios = [a / b for a, b in zip(rates["after"], rates["before"], strict=True)]
            cpu_ratio = statistics.median(cpu["after"]) / statistics.median(cpu["before"])
            print(f"{mode}: before {', '.join(f'{r:.0f}' for r in rates['before'])} req/s; "
                  f"after {', '.join(f'{r:.0f}' for r in rates['after'])} req/s; "
                  f"after/before median {statistics.median(ratios):.2f} "
                  f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); server CPU per request "
                  f"median {statistics.median(cpu['before']):.0f} -> "
                  f"{statistics.median(cpu['after']):.0f} µs (x{cpu_ratio:.2f})", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a source tree (its rmeeting/ is used)")
    parser.add_argument("--after", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    options = parser.parse_args()
    options.before, options.after = os.path.abspath(options.before), os.path.abspath(options.after)
    trio.run(main, options)
