"""``rmeeting bench … --compare KEY=A,B``: two variants of one run, alternately, and their ratio.

The machine the bench runs on is shared and its load moves by the minute, so an absolute number
says little; two variants measured in turns within one session, A B A B …, see the same load and
their ratio does. KEY is one of :data:`KEYS`: an option of the run (``protocol``, ``room-size``,
``members``, ``via``, ``concurrency``), or ``tree``: the source tree (a directory put first on
the spawned servers' ``PYTHONPATH``, e.g. a checkout of main beside a working branch), so that a
change is measured against what it changes.

Pure parts (parsing the option, picking the headline figures, the table) are apart from running
the variants, so they can be tested on made-up results.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KEYS", "Compare", "figures", "format_comparison", "parse_compare", "run_compare"]

#: ``--compare`` keys -> the argparse destination they set (``tree``: none, see module doc)
KEYS: dict[str, str] = {
    "protocol": "protocol",
    "room-size": "room_size",
    "members": "members",
    "via": "via",
    "concurrency": "concurrency",
    "tree": "",
}
_INTS = {"room_size", "members", "concurrency"}


@dataclass(frozen=True)
class Compare:
    key: str
    a: str
    b: str


def parse_compare(text: str) -> Compare:
    """``KEY=A,B`` -> :class:`Compare`; ValueError with a sentence that says what is wrong."""
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or key not in KEYS:
        raise ValueError(f"--compare wants KEY=A,B with KEY one of {', '.join(KEYS)}")
    parts = [v.strip() for v in values.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError("--compare wants exactly two values: KEY=A,B")
    dest = KEYS[key]
    if dest in _INTS and not all(p.isdigit() for p in parts):
        raise ValueError(f"--compare {key}: the values must be whole numbers")
    if key == "tree":
        for path in parts:
            if not os.path.isdir(os.path.join(path, "rmeeting")):
                raise ValueError(f"--compare tree: {path} has no rmeeting package")
        parts = [os.path.abspath(p) for p in parts]
    return Compare(key, parts[0], parts[1])


def variant_args(args: argparse.Namespace, compare: Compare, value: str) -> argparse.Namespace:
    """``args`` with the compared option set to ``value`` (``tree``: the servers' source)."""
    out = argparse.Namespace(**vars(args))
    out.compare = None
    dest = KEYS[compare.key]
    if dest:
        setattr(out, dest, int(value) if dest in _INTS else value)
    else:
        out.server_pythonpath = value
    return out


#: per scenario: (the figure's key in :func:`figures`, True if higher is better)
HEADLINES: dict[str, list[tuple[str, bool]]] = {
    "fanout": [("deliveries/s", True), ("server µs/delivery", False), ("latency p99 ms", False)],
    "join": [("joins/s", True), ("join p99 ms", False), ("server CPU s", False)],
    "idle": [("KiB/member", False), ("joins/s", True)],
    "flip": [("last told p99 ms", False), ("last told p50 ms", False)],
}


def figures(result: Mapping[str, Any]) -> dict[str, float]:
    """The figures of one run that a comparison sets side by side (absent ones left out)."""
    out: dict[str, float] = {}
    server = result.get("server") or {}
    cpu = server.get("measured_cpu_s")
    if result.get("joins_per_s"):
        out["joins/s"] = float(result["joins_per_s"])
    if result.get("join_latency_ms"):
        out["join p99 ms"] = float(result["join_latency_ms"]["p99"])
    if cpu is not None:
        out["server CPU s"] = float(cpu)
    if result.get("deliveries_per_s"):
        out["deliveries/s"] = float(result["deliveries_per_s"])
        if cpu is not None and result.get("deliveries"):
            out["server µs/delivery"] = 1e6 * float(cpu) / float(result["deliveries"])
    if result.get("latency_ms"):
        out["latency p99 ms"] = float(result["latency_ms"]["p99"])
    if server.get("rss_per_member_bytes") is not None:
        out["KiB/member"] = float(server["rss_per_member_bytes"]) / 1024
    if result.get("last_told_ms"):
        out["last told p99 ms"] = float(result["last_told_ms"]["p99"])
        out["last told p50 ms"] = float(result["last_told_ms"]["p50"])
    return out


def _loss(result: Mapping[str, Any]) -> str:
    """What went wrong in a run, in a few words ('' if nothing)."""
    bad = []
    if result.get("lost"):
        bad.append(f"lost {result['lost']}")
    if result.get("duplicated") or result.get("out_of_order"):
        bad.append("duplicated/out of order")
    if result.get("join_errors"):
        bad.append("join errors")
    if result.get("flips_incomplete"):
        bad.append(f"{result['flips_incomplete']} flips incomplete")
    if result.get("closed_by_server"):
        bad.append("closed by the server: " + ", ".join(
            f"{n}× {code}" for code, n in result["closed_by_server"].items()))
    if result.get("timed_out"):
        bad.append("the --duration cap ended the run early (raise it)")
    return ", ".join(bad)


def format_comparison(
    scenario: str, compare: Compare, runs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    *, loadavg: Sequence[float] = (), command: str = "",
) -> str:
    """The table: each figure for A and B in each round, B/A per round and its median."""
    names = {"A": compare.a, "B": compare.b}
    lines = [f"rmeeting bench {scenario} --compare {compare.key}: A={names['A']}  "
             f"B={names['B']}  ({len(runs)} rounds, A and B in turns)"]
    for name, higher in HEADLINES[scenario]:
        ratios: list[float] = []
        cells = []
        for a_result, b_result in runs:
            a, b = figures(a_result).get(name), figures(b_result).get(name)
            cells.append(f"{_num(a)} / {_num(b)}")
            if a and b is not None:
                ratios.append(b / a)
        if not ratios:
            continue
        better = "higher" if higher else "lower"
        lines.append(f"  {name:<20} A / B: {'; '.join(cells)}")
        lines.append(f"  {'':<20} B/A {', '.join(f'{r:.2f}' for r in ratios)}  "
                     f"median {statistics.median(ratios):.2f}  ({better} is better)")
    for i, (a_result, b_result) in enumerate(runs, 1):
        for label, result in (("A", a_result), ("B", b_result)):
            problem = _loss(result)
            if problem:
                lines.append(f"  note: round {i} {label}: {problem}")
    if runs:
        m = runs[0][0].get("machine") or {}
        lines.append(f"  machine         {m.get('nproc')} × {m.get('cpu')}, "
                     f"{m.get('python')}")
        shares = []
        for label, idx in (("A", 0), ("B", 1)):
            pcts = [_share(r[idx]) for r in runs]
            shares.append(f"{label} " + ", ".join(p for p in pcts if p))
        lines.append(f"  server CPU      {'; '.join(shares)}  (% of a core, per round)")
    if loadavg:
        lines.append(f"  load average    {' '.join(f'{x:.2f}' for x in loadavg)} (at the start)")
    if command:
        lines.append(f"  command         {command}")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def _share(result: Mapping[str, Any]) -> str:
    server = result.get("server") or {}
    wall = server.get("measured_wall_s") or 0
    cpu = server.get("measured_cpu_s")
    return f"{100 * cpu / wall:.0f}" if wall and cpu is not None else ""


def run_compare(
    args: argparse.Namespace,
    compare: Compare,
    rounds: int,
    run_once: Callable[[argparse.Namespace], tuple[dict[str, Any] | None, str]],
    *,
    command: str = "",
) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Run A then B, ``rounds`` times; the table, and the results per round. A failed run ends
    the comparison with the failure (a ratio over a broken run would mislead)."""
    loadavg = os.getloadavg()
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _ in range(rounds):
        pair = []
        for value in (compare.a, compare.b):
            result, failure = run_once(variant_args(args, compare, value))
            if result is None:
                raise RuntimeError(f"{compare.key}={value}: {failure}")
            pair.append(result)
        runs.append((pair[0], pair[1]))
    table = format_comparison(args.scenario, compare, runs, loadavg=loadavg, command=command)
    return table, runs
