"""Running a bench: the server (given or spawned), the parts (in this process or in K others),
their barriers, the progress line, and the server's memory and CPU from ``/proc``."""

from __future__ import annotations

import multiprocessing
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, TextIO

import trio

from .client import Target, http_json
from .protocol import Meeting, get_protocol
from .scenarios import Options, PartResult, PartSpec, run_part

__all__ = ["BenchCluster", "BenchError", "SpawnedServer", "bench_limits", "run_bench",
           "server_stats", "servers_stats"]

#: how long the idle scenario lets the server settle before reading its memory
IDLE_SETTLE = 1.0


class BenchError(Exception):
    pass


def servers_stats(pids: Sequence[int]) -> dict[str, float]:
    """:func:`server_stats` of several processes, added up (the instances of a cluster)."""
    out: dict[str, float] = {}
    for pid in pids:
        for key, value in server_stats(pid).items():
            out[key] = out.get(key, 0) + value
    return out


def server_stats(pid: int) -> dict[str, float]:
    """The process's resident memory (KiB, from /proc/PID/status) and CPU time (s)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    out["rss_kib"] = int(line.split()[1])
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return out


def bench_limits(members: int) -> dict[str, str]:
    """The server's limits that would refuse the bench's load (20 chat messages/s per member,
    1000 members per meeting, control changes a few per second, 1000 connections per client
    address), raised; those the environment already sets are left alone."""
    defaults = {
        "RMEETING_CHAT_RATE": "1000000",
        "RMEETING_CHAT_BURST": "1000000",
        "RMEETING_CONTROL_RATE": "1000000",
        "RMEETING_CONTROL_BURST": "1000000",
        "RMEETING_MEETING_CONTROL_RATE": "1000000",
        "RMEETING_MEETING_CONTROL_BURST": "1000000",
        "RMEETING_MAX_MEMBERS": str(max(1000, members + 16)),
        "RMEETING_MAX_MEETINGS": str(max(10000, members + 16)),
        # every bench member comes from one loopback address
        "RMEETING_MAX_CONNECTIONS": str(max(10000, members + 64)),
        "RMEETING_MAX_CONNECTIONS_PER_IP": "0",
    }
    return {k: v for k, v in defaults.items() if k not in os.environ}


class SpawnedServer:
    """``python -m rmeeting serve --bind 127.0.0.1:0`` for the length of a run, with
    :func:`bench_limits`."""

    def __init__(self, members: int) -> None:
        self.env = bench_limits(members)
        self.argv = [sys.executable, "-m", "rmeeting", "serve", "--bind", "127.0.0.1:0"]
        self.log = tempfile.NamedTemporaryFile(
            prefix="rmeeting-bench-server-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        self.url = ""

    @property
    def command(self) -> str:
        return " ".join([*(f"{k}={v}" for k, v in self.env.items()), "python", *self.argv[1:]])

    def start(self, timeout: float = 30.0) -> str:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, **self.env},
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not self.url:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    self.stop()
                    raise BenchError(f"the server did not start in {timeout:.0f} s; "
                                     f"its log: {self.log.name}")
                line = self.proc.stdout.readline()
                if not line:
                    self.stop()
                    raise BenchError(f"the server exited at start; its log: {self.log.name}")
                if line.startswith("rmeeting listening on "):
                    self.url = line.split(" on ", 1)[1].strip()
        self._drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
        self._drain.start()  # keep the pipe drained
        return self.url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a graceful drain
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._drain is not None:
            self._drain.join(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def _child_pid(server: object) -> int | None:
    """The pid of a launcher child (etcd, Redis and nginx keep their Popen to themselves)."""
    for attr in ("_process", "_proc"):
        proc = getattr(server, attr, None)
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:
            return proc.pid
    return None


class BenchCluster:
    """A :class:`~rmeeting.cluster.launcher.LocalCluster` of ``size`` instances (etcd, Redis,
    nginx) for the length of a run, with :func:`bench_limits` in every instance's environment.

    The members connect to the instances' own URLs, round-robin (member 0, the fanout sender,
    on the first), or all through nginx with ``through_nginx``."""

    def __init__(self, size: int, members: int, *, through_nginx: bool = False) -> None:
        self.size = size
        self.env = bench_limits(members)
        self.through_nginx = through_nginx
        self.cluster: Any = None

    def start(self) -> None:
        from ..cluster.launcher import LocalCluster

        try:
            self.cluster = LocalCluster(self.size, env=self.env).start()
        except (RuntimeError, OSError) as exc:
            raise BenchError(f"the local cluster did not start: {exc}") from exc

    @property
    def urls(self) -> tuple[str, ...]:
        if self.through_nginx:
            return (str(self.cluster.url),)
        return tuple(str(i.url) for i in self.cluster.instances)

    @property
    def etcd(self) -> str:
        return str(self.cluster.etcd.endpoint)

    @property
    def pids(self) -> list[int]:
        return [int(i.pid) for i in self.cluster.instances if i.pid]

    @property
    def helpers(self) -> dict[str, int]:
        out = {}
        for name in ("etcd", "redis", "nginx"):
            pid = _child_pid(getattr(self.cluster, name))
            if pid:
                out[name] = pid
        return out

    def facts(self) -> dict[str, Any]:
        c = self.cluster
        return {"instances": [{"name": i.name, "url": i.url, "pid": i.pid} for i in c.instances],
                "nginx": c.url, "through_nginx": self.through_nginx,
                "etcd": c.etcd.endpoint, "redis": c.redis.url,
                "env": " ".join(f"{k}={v}" for k, v in self.env.items())}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


@dataclass
class Coordinator:
    """Counts parts at each barrier and releases them together (after ``on_barrier``)."""

    parts: int
    on_barrier: Callable[[str], Awaitable[None]] | None = None
    progress: dict[int, tuple[str, int]] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)
    _released: dict[str, trio.Event] = field(default_factory=dict)

    async def reached(self, name: str) -> None:
        released = self._released.setdefault(name, trio.Event())
        self._count[name] = self._count.get(name, 0) + 1
        if self._count[name] == self.parts:
            if self.on_barrier is not None:
                await self.on_barrier(name)
            released.set()
        await released.wait()


@dataclass
class LocalSync:
    coordinator: Coordinator
    index: int = 0

    async def barrier(self, name: str) -> None:
        await self.coordinator.reached(name)

    def progress(self, phase: str, done: int) -> None:
        self.coordinator.progress[self.index] = (phase, done)


@dataclass
class _PipeSync:
    conn: Connection

    async def barrier(self, name: str) -> None:
        self.conn.send(("barrier", name))
        reply = await trio.to_thread.run_sync(self.conn.recv, abandon_on_cancel=True)
        if reply != ("go", name):
            raise BenchError(f"out of step: waited for {name!r}, got {reply!r}")

    def progress(self, phase: str, done: int) -> None:
        self.conn.send(("progress", phase, done))


def _worker(spec: PartSpec, conn: Connection) -> None:
    """The entry of a part in its own process."""
    try:
        result = trio.run(run_part, spec, _PipeSync(conn))
        conn.send(("result", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _run_workers(specs: list[PartSpec], coordinator: Coordinator) -> list[PartResult]:
    context = multiprocessing.get_context("spawn")  # no fork of a running Trio loop
    results: dict[int, PartResult] = {}
    procs = []
    try:
        async with trio.open_nursery() as nursery:
            for spec in specs:
                ours, theirs = context.Pipe()
                proc = context.Process(target=_worker, args=(spec, theirs), daemon=True)
                proc.start()
                theirs.close()
                procs.append(proc)
                nursery.start_soon(_serve_worker, spec.index, ours, coordinator, results)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
    return [results[i] for i in sorted(results)]


async def _serve_worker(
    index: int, conn: Connection, coordinator: Coordinator, results: dict[int, PartResult]
) -> None:
    async def release(name: str) -> None:
        await coordinator.reached(name)
        conn.send(("go", name))

    async with trio.open_nursery() as nursery:
        while True:
            try:
                message = await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
            except EOFError:
                raise BenchError(f"bench process {index} died") from None
            if message[0] == "progress":
                coordinator.progress[index] = (message[1], message[2])
            elif message[0] == "barrier":
                nursery.start_soon(release, message[1])
            elif message[0] == "result":
                results[index] = message[1]
                conn.close()
                return
            else:
                raise BenchError(f"bench process {index} failed:\n{message[1]}")


def _totals(opts: Options) -> Mapping[str, int]:
    return {"joining": opts.members, "holding": opts.members,
            "delivering": opts.members * opts.messages, "flipping": opts.flips}


async def _show_progress(coordinator: Coordinator, opts: Options, out: TextIO) -> None:
    tty = out.isatty()
    started = time.monotonic()
    last_line = 0.0
    previous = (0.0, 0)
    while True:
        await trio.sleep(0.25)
        now = time.monotonic()
        states = list(coordinator.progress.values())
        if not states:
            continue
        phase = states[0][0]
        done = sum(d for p, d in states if p == phase)
        total = _totals(opts).get(phase, 0)
        rate = (done - previous[1]) / (now - previous[0]) if previous[0] and done >= previous[1] \
            else 0.0
        previous = (now, done)
        width = 30
        filled = int(width * done / total) if total else 0
        text = (f"{opts.scenario}: {phase} [{'#' * filled}{'.' * (width - filled)}] "
                f"{done:,}/{total:,} {rate:,.0f}/s {now - started:.1f}s")
        if tty:
            out.write("\r" + text + "\x1b[K")
            out.flush()
        elif now - last_line >= 5.0:
            out.write(text + "\n")
            out.flush()
            last_line = now


def split(opts: Options, meetings: tuple[Meeting, ...]) -> list[PartSpec]:
    procs = max(1, min(opts.procs, opts.members))
    bounds = [opts.members * i // procs for i in range(procs + 1)]
    return [PartSpec(replace(opts, procs=procs), i, bounds[i], bounds[i + 1], meetings)
            for i in range(procs)]


async def run_bench(
    opts: Options, *, server_pid: int | None = None, progress: TextIO | None = None,
    server_pids: Sequence[int] = (), helper_pids: Mapping[str, int] | None = None,
) -> tuple[list[PartResult], dict[str, Any]]:
    """Create the meetings, run the parts, read the server; (parts' results, server facts).

    The server's memory and CPU are those of ``server_pid`` and ``server_pids`` added up (the
    instances of a cluster); ``helper_pids`` (etcd, Redis, nginx, …) are reported one by one."""
    target = await Target.resolve(opts.url)
    protocol = get_protocol(opts.protocol)
    if opts.scenario == "flip" and opts.via == "member" and not protocol.controls:
        raise BenchError(f"the {protocol.name} protocol has no controls to flip")
    meetings = []
    for n in range(opts.meetings):
        method, path, body = protocol.create_request(f"bench {opts.scenario} {n}")
        status, answer = await http_json(target, method, path, body)
        if status not in (200, 201) or not isinstance(answer, dict):
            raise BenchError(f"{method} {path} answered {status}: {answer}")
        meetings.append(protocol.created(answer))
    pids = ([server_pid] if server_pid else []) + [p for p in server_pids if p != server_pid]
    helpers = dict(helper_pids or {})
    server: dict[str, Any] = {"pid": server_pid if len(pids) <= 1 else pids}
    before = servers_stats(pids) if pids else {}
    helpers_before = {name: server_stats(pid) for name, pid in helpers.items()}
    marks: dict[str, tuple[float, dict[str, float]]] = {}
    helper_marks: dict[str, dict[str, dict[str, float]]] = {}

    async def on_barrier(name: str) -> None:
        if not pids:
            return
        if name == "joined" and opts.scenario == "idle":
            await trio.sleep(IDLE_SETTLE)
        if name in ("start", "joined", "settled", "done"):
            marks[name] = (time.monotonic(), servers_stats(pids))
            helper_marks[name] = {n: server_stats(pid) for n, pid in helpers.items()}

    specs = split(opts, tuple(meetings))
    coordinator = Coordinator(len(specs), on_barrier)
    async with trio.open_nursery() as nursery:
        if progress is not None:
            nursery.start_soon(_show_progress, coordinator, opts, progress)
        if len(specs) == 1:
            parts = [await run_part(specs[0], LocalSync(coordinator))]
        else:
            parts = await _run_workers(specs, coordinator)
        nursery.cancel_scope.cancel()
    if progress is not None and progress.isatty():
        progress.write("\r\x1b[K")
    if pids:
        _server_facts(server, before, marks, opts, sum(p.joined for p in parts))
    if helpers:
        server["helpers"] = _helper_facts(helpers, helpers_before, helper_marks, opts)
    return parts, server


def _helper_facts(
    helpers: Mapping[str, int],
    before: Mapping[str, Mapping[str, float]],
    marks: Mapping[str, Mapping[str, Mapping[str, float]]],
    opts: Options,
) -> dict[str, dict[str, Any]]:
    """Each helper process's CPU time in the measured phase and its RSS at the end."""
    start = marks.get("start") or marks.get("settled") or marks.get("joined") or before
    end = marks.get("joined") if opts.scenario == "idle" else marks.get("done")
    out: dict[str, dict[str, Any]] = {}
    for name, pid in helpers.items():
        facts: dict[str, Any] = {"pid": pid}
        first, last = start.get(name, {}), (end or {}).get(name, {})
        if "cpu_s" in first and "cpu_s" in last:
            facts["measured_cpu_s"] = round(last["cpu_s"] - first["cpu_s"], 3)
        if "rss_kib" in last:
            facts["rss_kib_end"] = last["rss_kib"]
        out[name] = facts
    return out


def _server_facts(
    server: dict[str, Any],
    before: Mapping[str, float],
    marks: Mapping[str, tuple[float, Mapping[str, float]]],
    opts: Options,
    joined: int,
) -> None:
    start = marks.get("start") or marks.get("settled") or marks.get("joined")
    end = marks.get("joined") if opts.scenario == "idle" else marks.get("done")
    server["rss_kib_start"] = before.get("rss_kib")
    if end is not None:
        server["rss_kib_end"] = end[1].get("rss_kib")
    if start is not None and end is not None and "cpu_s" in end[1] and "cpu_s" in start[1]:
        server["measured_cpu_s"] = round(end[1]["cpu_s"] - start[1]["cpu_s"], 3)
        server["measured_wall_s"] = round(end[0] - start[0], 3)
    if opts.scenario == "idle" and joined and "joined" in marks and before.get("rss_kib"):
        server["rss_kib_joined"] = marks["joined"][1].get("rss_kib")
        grown = marks["joined"][1].get("rss_kib", 0) - before["rss_kib"]
        server["rss_per_member_bytes"] = round(grown * 1024 / joined)
