"""``rmeeting bench``: a load generator for rmeeting (or any server speaking its protocols).

Scenarios: ``fanout`` (N members, one sender, M messages: latency, deliveries/s, lost, duplicated,
out of order), ``join`` (joins per second), ``idle`` (server memory per idle member), ``flip`` (a
control change until the last member is told). See docs/benchmarks.md for the measured numbers.

The package is split by concern: :mod:`.protocol` (what is said, per wire protocol),
:mod:`.client` (raw sockets, one epoll), :mod:`.scenarios` (one process's part of a run),
:mod:`.runner` (server, processes, barriers, progress), :mod:`.report` and :mod:`.plot`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "main", "run_from_args"]

#: per-scenario defaults for the options that differ
_DEFAULT_MEMBERS = {"fanout": 100, "join": 1000, "idle": 1000, "flip": 100}
_DEFAULT_ROOM = {"fanout": 0, "join": 0, "idle": 100, "flip": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=("fanout", "join", "idle", "flip"),
                        help="fanout: one sender to N members; join: joins per second; idle: "
                        "server memory per idle member; flip: a control change to N members")
    where = parser.add_argument_group("the server")
    where.add_argument("--url", help="the server to load, http://HOST:PORT")
    where.add_argument("--spawn", action="store_true",
                       help="start `python -m rmeeting serve --bind 127.0.0.1:0` for the run")
    where.add_argument("--server-pid", type=int,
                       help="with --url: read this process's memory and CPU from /proc")
    where.add_argument("--protocol", default="seed", choices=("seed",),
                       help="the wire protocol the members speak (default seed)")
    load = parser.add_argument_group("the load")
    load.add_argument("-n", "--members", type=int,
                      help="members (default: fanout/flip 100, join/idle 1000)")
    load.add_argument("-m", "--messages", type=int, default=200,
                      help="fanout: chat messages sent (default 200)")
    load.add_argument("--rate", type=float, default=0.0,
                      help="fanout: messages per second (default 0: unthrottled)")
    load.add_argument("--size", type=int, default=75,
                      help="fanout: characters of chat text (default 75: ~100-byte frames)")
    load.add_argument("--room-size", type=int,
                      help="members per meeting (default: all in one; idle: 100)")
    load.add_argument("--concurrency", type=int, default=100,
                      help="connections being opened at once (default 100)")
    load.add_argument("--flips", type=int, default=200, help="flip: changes made (default 200)")
    load.add_argument("--gap", type=float, default=0.005,
                      help="flip: seconds between two changes (default 0.005)")
    load.add_argument("--hold", type=float, default=0.0,
                      help="idle: seconds to stay connected after joining (default 0)")
    load.add_argument("--procs", type=int, default=1,
                      help="client processes, each with its share of the members (default 1)")
    load.add_argument("--duration", type=float, default=45.0,
                      help="cap on the whole run in seconds (default 45)")
    load.add_argument("--drain", type=float, default=3.0,
                      help="fanout: give up after this many seconds without a delivery (3)")
    out = parser.add_argument_group("the results")
    out.add_argument("--json", metavar="PATH", help="write the results as JSON")
    out.add_argument("--png", metavar="PATH",
                     help="draw a latency CDF and throughput plot (needs matplotlib)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run_from_args(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the bench the parsed ``args`` ask for; ``argv`` is recorded as the command line."""
    import trio

    from .report import format_text, summarize
    from .runner import BenchError, SpawnedServer, run_bench
    from .scenarios import Options

    if bool(args.url) == bool(args.spawn):
        print("rmeeting bench: give exactly one of --url and --spawn", file=sys.stderr)
        return 2
    members = _DEFAULT_MEMBERS[args.scenario] if args.members is None else args.members
    room = _DEFAULT_ROOM[args.scenario] if args.room_size is None else args.room_size
    numbers = (members, args.messages, args.size, args.concurrency, args.procs, args.flips)
    if min(numbers) < 1 or args.duration <= 0 or args.rate < 0 or room < 0:
        print("rmeeting bench: counts must be at least 1, --duration positive",
              file=sys.stderr)
        return 2
    opts = Options(
        scenario=args.scenario, url=args.url or "", protocol=args.protocol, members=members,
        messages=args.messages, rate=args.rate, size=args.size, room_size=room,
        concurrency=args.concurrency, flips=args.flips, gap=args.gap, procs=args.procs,
        duration=args.duration, drain=args.drain, hold=args.hold,
    )
    _raise_fd_limit(members + 1024)
    command = shlex.join(["rmeeting", *argv])
    spawned = SpawnedServer(members) if args.spawn else None
    try:
        if spawned is not None:
            opts = replace(opts, url=spawned.start())
        pid = spawned.pid if spawned is not None else args.server_pid
        progress = None if args.quiet else sys.stderr
        parts, server = trio.run(lambda: run_bench(opts, server_pid=pid, progress=progress))
    except (BenchError, OSError, ValueError, trio.TooSlowError) as exc:
        print(f"rmeeting bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if spawned is not None:
            spawned.stop()
    if spawned is not None:
        server.update(spawned=True, command=spawned.command, log=spawned.log.name)
    result = summarize(opts, parts, server=server, command=command)
    print(format_text(result))
    return _write_outputs(args, result)


def _write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.png:
        from .plot import PlotUnavailable, write_png

        try:
            write_png(result, args.png)
        except PlotUnavailable as exc:
            print(f"rmeeting bench: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``rmeeting bench …`` without the rest of the CLI (for tests and ``python -m``)."""
    parser = argparse.ArgumentParser(prog="rmeeting bench", description=__doc__)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_from_args(parser.parse_args(argv), ["bench", *argv])
