"""``rmeeting bench soak``: the servers to soak (given, spawned or a local cluster), the run,
and its report (:mod:`.soak`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_soak_from_args"]


def _machine() -> dict[str, Any]:
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            mem = next((line.split(":", 1)[1].strip() for line in meminfo
                        if line.startswith("MemTotal:")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "memory": mem,
            "python": platform.python_version()}


def run_soak_from_args(args: argparse.Namespace, argv: Sequence[str],
                       server_pids: list[int]) -> int:
    import trio

    from .runner import BenchCluster, BenchError, SpawnedServer
    from .soak import SoakOptions, format_soak, run_soak

    members = 10 if args.members is None else args.members
    if members < 2 or args.meetings < 1 or args.duration <= 0 or args.sample <= 0:
        print("rmeeting bench: soak needs -n >= 2, --meetings >= 1, positive --duration and "
              "--sample", file=sys.stderr)
        return 2
    total = members * args.meetings + args.meetings
    spawned = SpawnedServer(total) if args.spawn else None
    cluster = BenchCluster(args.cluster, total, through_nginx=args.nginx) \
        if args.cluster is not None else None
    urls = tuple(u.strip() for u in (args.urls or args.url or "").split(",") if u.strip())
    logs = tuple(p for p in (args.server_log or "").split(",") if p)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    load_before = os.getloadavg()
    try:
        if spawned is not None:
            urls = (spawned.start(),)
            server_pids, logs = [spawned.pid], (spawned.log.name,)
        if cluster is not None:
            cluster.start()
            urls, server_pids = cluster.urls, cluster.pids
            logs = tuple(str(i.log_path) for i in cluster.cluster.instances)
        opts = SoakOptions(urls=urls, duration=args.duration, meetings=args.meetings,
                           members=members, sample=args.sample, warmup=warmup,
                           pids=tuple(server_pids), logs=logs)
        result = trio.run(run_soak, opts)
    except (BenchError, OSError) as exc:
        print(f"rmeeting bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if spawned is not None:
            spawned.stop()
        if cluster is not None:
            cluster.stop()
    result.update(command=shlex.join(["rmeeting", *argv]), machine=_machine(),
                  load_before=list(load_before), load_after=list(os.getloadavg()))
    print(format_soak(result))
    print(f"  load average {load_before[0]:.2f} before, {result['load_after'][0]:.2f} after; "
          f"{result['machine']['cpus']} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    ok = result["lost"] == 0 and result["flips_missed"] == 0 and result["log_errors"] == 0 \
        and result["client_problems"] == 0
    return 0 if ok else 1
