"""From the parts' raw measurements to one result: counts, percentiles, the machine, the text.

Everything here is pure (no sockets, no clock), so the counters can be tested on made-up input.
"""

from __future__ import annotations

import math
import os
import platform
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scenarios import Options, PartResult

__all__ = ["analyse_sequence", "format_text", "machine", "percentiles", "summarize"]

NS_PER_MS = 1_000_000
#: the clients count deliveries in slots of this many ns of the monotonic clock
BUCKET_NS = 10_000_000
_CDF_POINTS = 200
_WINDOW_NS = 100_000_000  # throughput timeline resolution in the result


def analyse_sequence(seqs: Iterable[int]) -> tuple[int, int, int]:
    """One member's received sequence numbers -> (distinct, duplicated, out of order).

    A duplicate is a number seen before; out of order is a new number smaller than one already
    seen. What is lost is what was sent and is not among the distinct ones."""
    seqs = list(seqs)
    if seqs == list(range(len(seqs))):  # the usual case, checked at C speed
        return len(seqs), 0, 0
    seen: set[int] = set()
    duplicated = out_of_order = 0
    highest = -1
    for seq in seqs:
        if seq in seen:
            duplicated += 1
            continue
        seen.add(seq)
        if seq < highest:
            out_of_order += 1
        else:
            highest = seq
    return len(seen), duplicated, out_of_order


def percentiles(values: Sequence[int], scale: float = NS_PER_MS) -> dict[str, float]:
    """Nearest-rank p50/p90/p99/max (and min, mean) of sorted ``values``, divided by ``scale``."""
    if not values:
        return {}
    n = len(values)

    def rank(q: float) -> float:
        return round(values[min(n - 1, max(0, math.ceil(q * n) - 1))] / scale, 3)

    return {"min": round(values[0] / scale, 3), "p50": rank(0.50), "p90": rank(0.90),
            "p99": rank(0.99), "max": round(values[-1] / scale, 3),
            "mean": round(sum(values) / n / scale, 3)}


def _cdf(values: Sequence[int]) -> list[list[float]]:
    n = len(values)
    if not n:
        return []
    step = max(1, n // _CDF_POINTS)
    points = [[round(values[i] / NS_PER_MS, 3), round((i + 1) / n, 5)] for i in range(0, n, step)]
    points.append([round(values[-1] / NS_PER_MS, 3), 1.0])
    return points


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_gib": None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
                    break
    except OSError:
        pass
    return info


def summarize(
    options: Options,
    parts: Sequence[PartResult],
    *,
    server: Mapping[str, Any] | None = None,
    command: str = "",
    host: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the parts into the result that is printed and written as JSON."""
    opts = options
    joined = sum(p.joined for p in parts)
    join_errors: Counter[str] = Counter()
    close_codes: Counter[int] = Counter()
    for p in parts:
        join_errors.update(p.join_errors)
        close_codes.update(p.close_codes)
    out: dict[str, Any] = {
        "scenario": opts.scenario,
        "protocol": opts.protocol,
        "url": opts.url,
        "urls": list(opts.member_urls),
        "command": command,
        "options": asdict(opts),
        "machine": dict(host) if host is not None else machine(),
        "server": dict(server or {}),
        "members": opts.members,
        "joined": joined,
        "join_errors": dict(join_errors),
        "closed_by_server": {str(code): n for code, n in sorted(close_codes.items())},
        "disconnected": sum(p.disconnected for p in parts),
        "errors": sum(p.errors for p in parts),
        "error_samples": [s for p in parts for s in p.error_samples][:5],
        "timed_out": any(p.timed_out for p in parts),
        "client_cpu_s": round(sum(p.cpu_s for p in parts), 3),
        "client_measured_cpu_s": round(sum(p.measured_cpu_s for p in parts), 3),
        "measured_wall_s": round(max((p.measured_wall_s for p in parts), default=0.0), 3),
    }
    join_ns = sorted(v for p in parts for v in p.join_ns)
    first = min((p.join_first_ns for p in parts if p.join_first_ns), default=0)
    last = max((p.join_last_ns for p in parts), default=0)
    out["join_latency_ms"] = percentiles(join_ns)
    out["joins_per_s"] = round(joined / ((last - first) / 1e9), 1) if last > first else None
    if opts.scenario == "join":
        out["cdf"] = _cdf(join_ns)
    if opts.scenario == "fanout":
        out.update(_fanout(opts, parts, joined))
    elif opts.scenario == "flip":
        out.update(_flip(opts, parts))
    return out


def _fanout(opts: Options, parts: Sequence[PartResult], joined: int) -> dict[str, Any]:
    sent = sum(p.sent for p in parts)
    deliveries = sum(p.deliveries for p in parts)
    first_send = min((p.first_send_ns for p in parts if p.first_send_ns), default=0)
    last_send = max((p.last_send_ns for p in parts), default=0)
    last_recv = max((p.last_recv_ns for p in parts), default=0)
    latencies = sorted(v for p in parts for v in p.latencies)
    span = (last_recv - first_send) / 1e9 if last_recv > first_send else 0.0
    windows: Counter[int] = Counter()
    for p in parts:
        for slot, count in p.timeline.items():
            windows[max(0, slot * BUCKET_NS - first_send) // _WINDOW_NS] += count
    return {
        "messages": opts.messages,
        "rate": opts.rate or "unthrottled",
        "sent": sent,
        "refused": sum(p.refused for p in parts),
        "expected_deliveries": joined * sent,
        "deliveries": deliveries,
        "lost": joined * sent - sum(p.distinct for p in parts),
        "duplicated": sum(p.duplicated for p in parts),
        "out_of_order": sum(p.out_of_order for p in parts),
        "duration_s": round(span, 3),
        "send_rate": round(sent / ((last_send - first_send) / 1e9), 1)
        if last_send > first_send else None,
        "deliveries_per_s": round(deliveries / span, 1) if span else None,
        "latency_ms": percentiles(latencies),
        "cdf": _cdf(latencies),
        "timeline": [[round(w * _WINDOW_NS / 1e9, 2), count * 1e9 / _WINDOW_NS]
                     for w, count in sorted(windows.items())],
    }


def _flip(opts: Options, parts: Sequence[PartResult]) -> dict[str, Any]:
    sent = [t for p in parts for t in p.flip_sent_ns]
    acked = [t for p in parts for t in p.flip_acked_ns]
    told = [times for p in parts for times in p.flip_told_ns]
    last: list[int] = []
    first: list[int] = []
    every: list[int] = []
    incomplete = 0
    for k, t0 in enumerate(sent):
        arrivals = [times[k] - t0 for times in told if len(times) > k]
        every.extend(arrivals)
        if len(arrivals) < len(told):
            incomplete += 1
        if arrivals:
            last.append(max(arrivals))
            first.append(min(arrivals))
    read = [times for p in parts for times in p.flip_read_ns]
    last_read = sorted(max((times[k] - t0 for times in read if len(times) > k), default=0)
                       for k, t0 in enumerate(sent))
    write = sorted(a - t0 for t0, a in zip(sent, acked, strict=False))
    last.sort()
    first.sort()
    every.sort()
    frames = [sum(f) for f in zip(*(p.flip_frames for p in parts), strict=False)]
    first_arrivals = [times[0] - sent[0] for times in told if times] if sent else []
    last_of_first = max(first_arrivals, default=0)
    most = [max(f) for f in zip(*(p.flip_frames_max for p in parts), strict=False)]
    members = max(1, len(told))
    return {
        "via": opts.via,
        "flag": opts.flag,
        "devices_on": opts.devices_on,
        #: text frames per member for each flip (the first switches the flag off), on average,
        #: and the most any member got
        "frames_per_member": [round(f / members, 3) for f in frames],
        #: the first flip's last-told latency (with --devices-on, the only one that had devices
        #: to turn off: the others compare with it in the same run)
        "first_flip_last_told_ms": round(last_of_first / 1e6, 3) if last_of_first else None,
        "frames_per_member_max": most,
        "flips": len(sent),
        "flips_incomplete": incomplete,
        "told_per_flip": len(told),
        #: when the last member had it in its socket (the kernel's receive stamp)
        "last_told_ms": percentiles(last),
        #: when the bench's one reader had read it from the last member's socket
        "last_read_ms": percentiles(last_read) if any(read) else None,
        "first_told_ms": percentiles(first),
        "each_told_ms": percentiles(every),
        "write_ms": percentiles(write),
        "cdf": _cdf(last),
    }


def _line(name: str, text: str) -> str:
    return f"  {name:<16}{text}"


def _ms(stats: Mapping[str, float]) -> str:
    if not stats:
        return "-"
    return "  ".join(f"{k} {stats[k]:.2f}" for k in ("p50", "p90", "p99", "max"))


def format_text(result: Mapping[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    r = result
    urls = r.get("urls") or [r["url"]]
    where = r["url"] if len(urls) < 2 else f"{len(urls)} instances ({', '.join(urls)})"
    lines = [f"rmeeting bench {r['scenario']} ({r['protocol']} protocol) against {where}"]
    joined = f"{r['joined']} of {r['members']}"
    if r["join_errors"]:
        joined += "  failed: " + ", ".join(f"{n}× {why}" for why, n in r["join_errors"].items())
    lines.append(_line("members joined", joined))
    if r["scenario"] in ("join", "idle") and r.get("joins_per_s"):
        lines.append(_line("joins/s", f"{r['joins_per_s']:,.0f}"))
        lines.append(_line("join ms", _ms(r["join_latency_ms"])))
    if r["scenario"] == "fanout":
        lines.append(_line("messages", f"{r['sent']} sent of {r['messages']}, rate {r['rate']}"
                           + (f" (achieved {r['send_rate']:,.0f}/s)" if r["send_rate"] else "")
                           + (f", {r['refused']} refused by the server" if r["refused"] else "")))
        lines.append(_line("deliveries", f"{r['deliveries']:,} of {r['expected_deliveries']:,}  "
                           f"lost {r['lost']}  duplicated {r['duplicated']}  "
                           f"out of order {r['out_of_order']}"))
        if r["deliveries_per_s"]:
            lines.append(_line("throughput", f"{r['deliveries_per_s']:,.0f} deliveries/s "
                               f"({r['duration_s']:.2f} s, first send to last receipt)"))
        lines.append(_line("latency ms", _ms(r["latency_ms"])))
    if r["scenario"] == "flip":
        via = {"member": "the host's connection", "api": "PATCH /v1/…/controls",
               "etcd": "a put into etcd"}.get(r.get("via", "member"), r.get("via"))
        lines.append(_line("flips", f"{r['flips']} to {r['told_per_flip']} members, "
                           f"{r['flips_incomplete']} incomplete; made by {via}"))
        lines.append(_line("last told ms", _ms(r["last_told_ms"])))
        if r.get("last_read_ms"):
            lines.append(_line("last read ms", _ms(r["last_read_ms"]) + "  (told: in the "
                               "member's socket; read: when the bench's reader got to it)"))
        if r.get("frames_per_member"):
            devices = " with every device on" if r.get("devices_on") else ""
            lines.append(_line("frames/member", f"{r['flag']} off{devices}: mean "
                               f"{r['frames_per_member'][0]} (most {r['frames_per_member_max'][0]})"
                               f"; every flip: max mean {max(r['frames_per_member'])}, "
                               f"most {max(r['frames_per_member_max'])}"))
            lines.append(_line("first flip ms", f"last told {r['first_flip_last_told_ms']} "
                               "(the others: last told ms above)"))
        lines.append(_line("each told ms", _ms(r["each_told_ms"])))
        if r.get("first_told_ms"):
            lines.append(_line("first told ms", _ms(r["first_told_ms"])))
        if r.get("write_ms"):
            lines.append(_line("write ms", _ms(r["write_ms"]) + "  (until the write was "
                               "acknowledged)"))
    server = r.get("server") or {}
    if r["scenario"] == "idle" and server.get("rss_per_member_bytes") is not None:
        lines.append(_line("server memory", (
            f"RSS {server['rss_kib_start'] / 1024:.1f} MiB before, "
            f"{server['rss_kib_joined'] / 1024:.1f} MiB with {r['joined']} idle members: "
            f"{server['rss_per_member_bytes'] / 1024:.1f} KiB per member")))
    wall = server.get("measured_wall_s") or 0
    if server.get("measured_cpu_s") is not None and wall:
        lines.append(_line("server CPU", f"{server['measured_cpu_s']:.2f} s in the measured "
                           f"{wall:.2f} s ({100 * server['measured_cpu_s'] / wall:.0f} % of a "
                           f"core), RSS {server.get('rss_kib_end', 0) / 1024:.1f} MiB"))
    helpers = server.get("helpers") or {}
    if wall and helpers:
        lines.append(_line("helpers CPU", ", ".join(
            f"{name} {100 * facts['measured_cpu_s'] / wall:.0f} %"
            for name, facts in helpers.items() if facts.get("measured_cpu_s") is not None)))
    if r["measured_wall_s"]:
        lines.append(_line("client CPU", (
            f"{r['client_measured_cpu_s']:.2f} s in the measured {r['measured_wall_s']:.2f} s "
            f"({100 * r['client_measured_cpu_s'] / r['measured_wall_s']:.0f} % of a core; "
            f"{r['client_cpu_s']:.2f} s in all)")))
    problems = []
    if r["closed_by_server"]:
        problems.append("closed by the server: " + ", ".join(
            f"{n}× {code}" for code, n in r["closed_by_server"].items()))
    if r["errors"]:
        problems.append(f"{r['errors']} error frames, e.g. {r['error_samples'][:1]}")
    if r["timed_out"]:
        problems.append("the --duration cap ended the run early")
    for problem in problems:
        lines.append(_line("note", problem))
    m = r["machine"]
    lines.append(_line("machine", f"{m['nproc']} × {m['cpu']}, {m['memory_gib']} GiB, "
                       f"{m['python']}, {m['os']}"))
    if r["command"]:
        lines.append(_line("command", r["command"]))
    return "\n".join(lines)
