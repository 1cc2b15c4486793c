"""``rmeeting``: the command line. ``rmeeting serve`` runs an instance; ``rmeeting bench``
loads one."""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Sequence

import trio

from .config import Config, ConfigError, load_config

__all__ = ["main"]

#: ``gc.set_threshold`` for ``rmeeting serve``: rare young collections, CPython's own rule for
#: full ones (see ``_serve``)
GC_THRESHOLDS = (100_000, 50, 10)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmeeting",
        description="rmeeting: a control plane for online meetings.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run an instance (embedded by default; cluster mode with --etcd and --redis)",
        description="Run an rmeeting instance. Settings come from defaults, then --config "
        "(TOML), then RMEETING_* environment variables, then these flags.",
    )
    serve.add_argument("--bind", help="HOST:PORT to listen on (default 127.0.0.1:8080; port 0 "
                       "picks a free port)")
    serve.add_argument("--config", help="a TOML config file")
    serve.add_argument("--etcd", help="etcd endpoints, comma separated (cluster mode)")
    serve.add_argument("--redis", help="Redis URL, e.g. redis://127.0.0.1:6379/0 (cluster mode); "
                       "or Redis Cluster node URLs, comma separated (detected from the server)")
    serve.add_argument("--instance-id", help="this instance's id in the cluster")
    serve.add_argument("--shards", type=int, help="fan-out shards (default 8)")
    serve.add_argument("--log-format", choices=("auto", "json", "text"))
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    from .bench import add_arguments as add_bench_arguments

    bench = sub.add_parser(
        "bench",
        help="load a server: fanout, join, idle or flip (docs/benchmarks.md)",
        description="Load an rmeeting server (--url, or --spawn one) and report latency, "
        "throughput, losses and memory.",
    )
    add_bench_arguments(bench)
    from .cluster.cli import add_arguments as add_cluster_arguments

    cluster = sub.add_parser(
        "cluster",
        help="start etcd, Redis, N instances and nginx on this machine (no Docker needed)",
        description="Start a local cluster on loopback: etcd, Redis (AOF), N rmeeting instances "
        "and nginx in front of them; print their URLs; stop them all on Ctrl-C or SIGTERM.",
    )
    add_cluster_arguments(cluster)
    from .ops import add_commands as add_ops_commands

    add_ops_commands(sub)  # meetings, controls, attendance, chat (docs/operations.md)
    from .webhooks.cli import add_arguments as add_webhooks_arguments

    webhooks = sub.add_parser(
        "webhooks",
        help="listen: a local receiver printing verified webhooks; secret: make a secret",
        description="Webhooks tools (docs/integration.md).",
    )
    add_webhooks_arguments(webhooks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench":
        from .bench import run_from_args

        return run_from_args(args, sys.argv[1:] if argv is None else list(argv))
    if args.command == "cluster":
        from .cluster.cli import run_from_args as run_cluster

        return run_cluster(args)
    if args.command == "webhooks":
        from .webhooks.cli import run_from_args as run_webhooks

        return run_webhooks(args)
    if getattr(args, "ops", None) is not None:
        from .ops import run as run_ops

        return run_ops(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _missing_cluster_modules(config: Config) -> str:
    """The top-level package the cluster's stores fail to import for want of, or ""."""
    import importlib

    wanted = (["rmeeting.stores.etcd"] if config.etcd else []) + (
        ["rmeeting.stores.redis"] if config.redis else [])
    for module in wanted:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            return (exc.name or "a package").partition(".")[0]
    return ""


def _serve(args: argparse.Namespace) -> int:
    from ._logging import setup_logging
    from .server import RunningServer, serve_rmeeting

    overrides = {
        "bind": args.bind,
        "etcd": args.etcd,
        "redis": args.redis,
        "instance_id": args.instance_id,
        "shards": args.shards,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    try:
        config = load_config(file=args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"rmeeting: {exc}", file=sys.stderr)
        return 2
    missing = _missing_cluster_modules(config)
    if missing:
        print(f"rmeeting: cluster mode (--etcd/--redis) needs the package {missing!r}, which is "
              f"not installed: reinstall rmeeting with its dependencies (pip install -e .), "
              f"or pip install {missing}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)

    async def run() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:

            async def server(task_status: trio.TaskStatus[RunningServer]) -> None:
                await serve_rmeeting(config, shutdown=shutdown, task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: stop waiting for signals

            running = await nursery.start(server)
            # Start-up objects live for the whole run: keep them out of every collection.
            # With many members the allocation rate is high and the default thresholds run
            # full collections that stall fan-out for 50-150 ms (docs/benchmarks.md). The
            # third threshold stays CPython's 10, so that a full collection still comes once
            # the long-lived objects grew by a quarter (CPython's own rule). Young collections
            # are rare at 100,000: the cycle each HTTP connection leaves in Hypercorn is
            # collected by the HTTP bridge itself (every 64 connections, http_bridge.py;
            # docs/benchmarks.md#soak).
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            print(f"rmeeting listening on {running.url}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if shutdown.is_set():
                        nursery.cancel_scope.cancel()  # a second signal: stop now
                    shutdown.set()  # the first: drain gracefully

    try:
        trio.run(run)
    except OSError as exc:
        print(f"rmeeting: {exc}", file=sys.stderr)
        return 1
    return 0
