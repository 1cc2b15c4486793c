"""``rmeeting bench … --compare KEY=A,B``: two variants in turns, and the ratio of their figures.

A tiny real comparison proves the variants really differ (each run is made with its own value)
and the table is printed; made-up results prove the ratios are B over A, per round, with the
median, and that a lost delivery is reported instead of hidden behind a ratio.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rmeeting.bench import main as bench_main
from rmeeting.bench.compare import Compare, figures, format_comparison, parse_compare

ROOT = Path(__file__).resolve().parents[1]


def test_two_protocols_in_turns_on_spawned_servers(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.json"
    code = bench_main(["fanout", "--spawn", "-n", "4", "-m", "10", "-q", "--duration", "30",
                       "--compare", "protocol=seed,v1", "--rounds", "2", "--json", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["compare"] == {"key": "protocol", "a": "seed", "b": "v1"}
    assert len(saved["rounds"]) == 2
    for pair in saved["rounds"]:
        assert pair["A"]["protocol"] == "seed" and pair["B"]["protocol"] == "v1"
        for result in (pair["A"], pair["B"]):
            assert result["lost"] == 0 and result["deliveries"] == 40
    text = capsys.readouterr().out
    assert "--compare protocol: A=seed  B=v1  (2 rounds" in text
    assert "deliveries/s" in text and "B/A" in text and "load average" in text


def test_two_source_trees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tree=A,B: each spawned server runs from its own tree, whatever the working directory
    (B is a copy of this tree that leaves a mark when it is imported)."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "rmeeting", copy / "rmeeting",
                    ignore=shutil.ignore_patterns("__pycache__"))
    mark = tmp_path / "imported"
    init = copy / "rmeeting" / "__init__.py"
    init.write_text(init.read_text() + f"\nopen({str(mark)!r}, 'a').write('x')\n")
    out = tmp_path / "trees.json"
    code = bench_main(["join", "--spawn", "-n", "5", "-q", "--duration", "30",
                       "--compare", f"tree={ROOT},{copy}", "--rounds", "1", "--json", str(out)])
    assert code == 0
    pair = json.loads(out.read_text())["rounds"][0]
    for result, tree in ((pair["A"], ROOT), (pair["B"], copy)):
        assert result["joined"] == 5
        assert f"PYTHONPATH={tree}" in result["server"]["command"]
    assert mark.read_text() == "x"  # B's server, once; A's did not import the copy
    assert "joins/s" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["protocol", "protocol=seed", "protocol=seed,v1,x",
                                  "color=a,b", "members=10,many", "tree=/nonexistent,/"])
def test_bad_compare_options_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_compare(text)
    assert bench_main(["fanout", "--spawn", "--compare", text]) == 2


def test_tree_needs_a_spawned_server() -> None:
    assert bench_main(["fanout", "--url", "http://127.0.0.1:1",
                       "--compare", f"tree={ROOT},{ROOT}"]) == 2


def _fanout(per_s: float, cpu: float, lost: int = 0) -> dict[str, Any]:
    return {"scenario": "fanout", "deliveries_per_s": per_s, "deliveries": 1000,
            "latency_ms": {"p99": 2.0}, "lost": lost, "machine": {"nproc": 2, "cpu": "x"},
            "server": {"measured_cpu_s": cpu, "measured_wall_s": 1.0}}


def test_ratios_are_b_over_a_per_round_with_their_median() -> None:
    runs = [(_fanout(100.0, 0.010), _fanout(150.0, 0.005)),
            (_fanout(100.0, 0.010), _fanout(120.0, 0.010)),
            (_fanout(200.0, 0.010), _fanout(400.0, 0.020, lost=3))]
    runs[1][0]["timed_out"] = True
    assert figures(runs[0][1])["server µs/delivery"] == pytest.approx(5.0)
    text = format_comparison("fanout", Compare("protocol", "seed", "v1"), runs,
                             loadavg=(1.0, 2.0, 3.0))
    assert "B/A 1.50, 1.20, 2.00  median 1.50  (higher is better)" in text
    assert "B/A 0.50, 1.00, 2.00  median 1.00  (lower is better)" in text
    assert "note: round 3 B: lost 3" in text
    assert "note: round 2 A: the --duration cap ended the run early" in text
    assert "load average    1.00 2.00 3.00" in text
