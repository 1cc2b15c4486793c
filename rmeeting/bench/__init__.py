"""``rmeeting bench``: a load generator for rmeeting (or any server speaking its protocols).

Scenarios: ``fanout`` (N members, one sender, M messages: latency, deliveries/s, lost, duplicated,
out of order), ``join`` (joins per second), ``idle`` (server memory per idle member), ``flip`` (a
control change until the last member is told: from the host's connection, the v1 API or a put
straight into etcd), ``soak`` (members joining and leaving, chat and flips for ``--duration``
seconds: lost messages, errors in the logs, RSS and fds of every server process over time;
:mod:`.soak`). Against one server (``--url``, ``--spawn``) or several instances
(``--urls``, or ``--cluster K``: a local cluster started for the run). See docs/benchmarks.md for
the measured numbers.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scenarios import Options

__all__ = ["add_arguments", "main", "run_from_args"]

#: per-scenario defaults for the options that differ
_DEFAULT_MEMBERS = {"fanout": 100, "join": 1000, "idle": 1000, "flip": 100, "soak": 10}
_DEFAULT_ROOM = {"fanout": 0, "join": 0, "idle": 100, "flip": 0, "soak": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=("fanout", "join", "idle", "flip", "soak"),
                        help="fanout: one sender to N members; join: joins per second; idle: "
                        "server memory per idle member; flip: a control change to N members; "
                        "soak: joins, leaves, chat and flips for --duration seconds, watching "
                        "for lost messages, errors and growing RSS/fds")
    where = parser.add_argument_group(
        "the server (exactly one of --url, --urls, --spawn, --cluster)")
    where.add_argument("--url", help="the server to load, http://HOST:PORT")
    where.add_argument("--urls", metavar="URL1,URL2,...",
                       help="several instances of one cluster: member i connects to the "
                       "(i mod count)-th; meetings are created and the API called on the first")
    where.add_argument("--spawn", action="store_true",
                       help="start `python -m rmeeting serve --bind 127.0.0.1:0` for the run")
    where.add_argument("--cluster", type=int, metavar="K",
                       help="start a local cluster (etcd, Redis, K instances, nginx) for the run "
                       "and spread the members over the instances; stopped at the end")
    where.add_argument("--nginx", action="store_true",
                       help="with --cluster: members connect through the cluster's nginx instead "
                       "of to the instances directly")
    where.add_argument("--server-pid", metavar="PID[,PID...]",
                       help="with --url/--urls: read these processes' memory and CPU from /proc "
                       "(added up)")
    where.add_argument("--protocol", default="seed", choices=("seed", "v1", "socketio"),
                       help="the wire protocol the members speak (default seed; socketio: the "
                       "comparison peer bench/socketio_peer.py, fanout/join/idle only)")
    where.add_argument("--etcd", metavar="URL",
                       help="flip --via etcd: the cluster's etcd (given by --cluster)")
    where.add_argument("--etcd-prefix", default="/rmeeting",
                       help="the servers' etcd key prefix (default /rmeeting)")
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
    load.add_argument("--via", choices=("member", "api", "etcd"), default="member",
                      help="flip: the host's control frame on its connection (default), "
                      "PATCH /v1/meetings/{id}/controls with the host key, or a put of "
                      "<prefix>/meetings/<id>/controls/mic straight into etcd")
    load.add_argument("--flag", choices=("mic", "camera"), default="mic",
                      help="flip: the room flag switched off and on (default mic)")
    load.add_argument("--devices-on", action="store_true",
                      help="flip (v1): every member turns its camera and mic on before the "
                      "flips, so a switch off has devices to turn off; frames per member are "
                      "counted per flip")
    load.add_argument("--hold", type=float, default=0.0,
                      help="idle: seconds to stay connected after joining (default 0)")
    load.add_argument("--procs", type=int, default=1,
                      help="client processes, each with its share of the members (default 1)")
    load.add_argument("--duration", type=float, default=45.0,
                      help="cap on the whole run in seconds (default 45)")
    load.add_argument("--drain", type=float, default=3.0,
                      help="fanout: give up after this many seconds without a delivery (3)")
    soak = parser.add_argument_group("soak (-n is the members per meeting, default 10)")
    soak.add_argument("--meetings", type=int, default=4, help="soak: meetings (default 4)")
    soak.add_argument("--sample", type=float, default=5.0,
                      help="soak: seconds between two samples of RSS and fds (default 5)")
    soak.add_argument("--warmup", type=float,
                      help="soak: growth is measured from this second on (default: a fifth of "
                      "--duration, at most 60)")
    soak.add_argument("--server-log", metavar="PATH[,PATH...]",
                      help="soak with --url/--urls: the servers' logs to scan for errors")
    out = parser.add_argument_group("the results")
    out.add_argument("--json", metavar="PATH", help="write the results as JSON")
    out.add_argument("--png", metavar="PATH",
                     help="draw a latency CDF and throughput plot (needs matplotlib)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out.add_argument("--compare", metavar="KEY=A,B",
                     help="run the scenario with KEY=A and KEY=B in turns (--rounds times) and "
                     "print B/A for each figure; KEY: protocol, room-size, members, via, "
                     "concurrency, or tree (a source directory for the spawned servers, e.g. "
                     "tree=/path/to/main,.)")
    out.add_argument("--rounds", type=int, default=3,
                     help="--compare: rounds of A then B (default 3)")


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _usage_error(args: argparse.Namespace) -> str | None:
    sources = [bool(args.url), bool(args.urls), bool(args.spawn), args.cluster is not None]
    if sum(sources) != 1:
        return "give exactly one of --url, --urls, --spawn and --cluster"
    if args.cluster is not None and args.cluster < 1:
        return "--cluster needs at least 1 instance"
    if args.nginx and args.cluster is None:
        return "--nginx goes with --cluster"
    if args.via != "member" and args.scenario != "flip":
        return "--via is for the flip scenario"
    if (args.devices_on or args.flag != "mic") and args.scenario != "flip":
        return "--flag and --devices-on are for the flip scenario"
    if args.devices_on and args.protocol != "v1":
        return "--devices-on needs --protocol v1 (the seed's members declare no devices)"
    if args.via == "etcd" and not (args.etcd or args.cluster):
        return "flip --via etcd needs --etcd URL (or --cluster K, which has one)"
    if args.protocol == "socketio" and (args.scenario == "flip" or args.cluster is not None):
        return "the socketio protocol is for a socket.io peer: fanout, join or idle with --url"
    if args.server_pid and not (args.url or args.urls):
        return "--server-pid goes with --url or --urls"
    return None


def _pids(text: str | None) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()] if text else []


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def run_from_args(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the bench the parsed ``args`` ask for; ``argv`` is recorded as the command line."""
    from .report import format_text

    problem = _usage_error(args)
    if problem is None:
        try:
            _pids(args.server_pid)
        except ValueError:
            problem = f"--server-pid: not a list of numbers: {args.server_pid!r}"
    if problem is not None:
        print(f"rmeeting bench: {problem}", file=sys.stderr)
        return 2
    if args.scenario == "soak":
        from .soak_cli import run_soak_from_args

        return run_soak_from_args(args, argv, _pids(args.server_pid))
    opts = _options(args)
    numbers = (opts.members, args.messages, args.size, args.concurrency, args.procs, args.flips)
    if min(numbers) < 1 or args.duration <= 0 or args.rate < 0 or opts.room_size < 0:
        print("rmeeting bench: counts must be at least 1, --duration positive",
              file=sys.stderr)
        return 2
    members = opts.members
    _raise_fd_limit(members + 1024)
    command = shlex.join(["rmeeting", *argv])
    if args.compare:
        return _compare(args, command)
    result, failure = _run_once(args, opts, command)
    if result is None:
        print(f"rmeeting bench: {failure}", file=sys.stderr)
        return 1
    print(format_text(result))
    return _write_outputs(args, result)


def _options(args: argparse.Namespace) -> Options:
    from .scenarios import Options

    members = _DEFAULT_MEMBERS[args.scenario] if args.members is None else args.members
    room = _DEFAULT_ROOM[args.scenario] if args.room_size is None else args.room_size
    urls = tuple(u.strip() for u in (args.urls or "").split(",") if u.strip())
    return Options(
        scenario=args.scenario, url=urls[0] if urls else args.url or "", urls=urls,
        protocol=args.protocol, members=members,
        messages=args.messages, rate=args.rate, size=args.size, room_size=room,
        concurrency=args.concurrency, flips=args.flips, gap=args.gap, procs=args.procs,
        duration=args.duration, drain=args.drain, hold=args.hold, via=args.via,
        etcd=args.etcd or "", etcd_prefix=args.etcd_prefix, flag=args.flag,
        devices_on=args.devices_on,
    )


def _compare(args: argparse.Namespace, command: str) -> int:
    from .compare import parse_compare, run_compare

    try:
        compare = parse_compare(args.compare)
    except ValueError as exc:
        print(f"rmeeting bench: {exc}", file=sys.stderr)
        return 2
    if compare.key == "tree" and not (args.spawn or args.cluster is not None):
        print("rmeeting bench: --compare tree=… needs --spawn or --cluster", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("rmeeting bench: --rounds must be at least 1", file=sys.stderr)
        return 2

    def once(variant: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
        return _run_once(variant, _options(variant), command)

    try:
        table, runs = run_compare(args, compare, args.rounds, once, command=command)
    except RuntimeError as exc:
        print(f"rmeeting bench: {exc}", file=sys.stderr)
        return 1
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"compare": vars(compare), "table": table,
             "rounds": [{"A": a, "B": b} for a, b in runs]}, indent=1) + "\n",
            encoding="utf-8")
    return 0


def _run_once(
    args: argparse.Namespace, opts: Options, command: str
) -> tuple[dict[str, Any] | None, str]:
    """One run: (its result, "") or (None, why it failed)."""
    import trio

    from .report import summarize
    from .runner import BenchCluster, BenchError, SpawnedServer, run_bench

    members = opts.members
    server_pids = _pids(args.server_pid)
    pythonpath = getattr(args, "server_pythonpath", None)
    spawned = SpawnedServer(members, pythonpath=pythonpath) if args.spawn else None
    cluster = BenchCluster(args.cluster, members, through_nginx=args.nginx,
                           pythonpath=pythonpath) if args.cluster is not None else None
    helpers: dict[str, int] = {}
    facts: dict[str, Any] = {}
    failure = ""
    try:
        if spawned is not None:
            opts = replace(opts, url=spawned.start())
            server_pids = [spawned.pid]
        if cluster is not None:
            cluster.start()
            opts = replace(opts, url=cluster.urls[0], urls=cluster.urls,
                           etcd=opts.etcd or cluster.etcd)
            server_pids, helpers = cluster.pids, cluster.helpers
        progress = None if args.quiet else sys.stderr
        parts, server = trio.run(lambda: run_bench(
            opts, server_pids=server_pids, helper_pids=helpers, progress=progress))
    except Exception as exc:  # only the expected kinds are reported; anything else is raised
        expected = (BenchError, OSError, ValueError, trio.TooSlowError)
        leaves = _leaves(exc)
        if not all(isinstance(leaf, expected) for leaf in leaves):
            raise
        failure = "; ".join(str(leaf) for leaf in leaves)
    finally:
        if spawned is not None:
            spawned.stop()
        if cluster is not None and cluster.cluster is not None:
            facts = cluster.facts()
            cluster.stop()
    if failure:
        return None, failure
    if spawned is not None:
        server.update(spawned=True, command=spawned.command, log=spawned.log.name)
    if cluster is not None:
        server.update(cluster=facts)
    return summarize(opts, parts, server=server, command=command), ""


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
