"""``rmeeting bench soak``, short: nothing lost, no error, and the report sees what it claims to.

The documented 30-minute run on three instances is in docs/benchmarks.md; these runs are a few
seconds, so they say nothing about leaks (RSS and fds are only checked to be sampled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmeeting.bench import main as bench_main
from rmeeting.bench.soak import SoakOptions, _Meeting, _report, _Run, format_soak, scan_logs


def _soak(tmp_path: Path, *where: str) -> dict[str, object]:
    out = tmp_path / "soak.json"
    code = bench_main(["soak", *where, "--duration", "6", "--sample", "0.5", "-n", "5",
                       "--meetings", "2", "--json", str(out)])
    result: dict[str, object] = json.loads(out.read_text())
    assert code == 0, format_soak(result)
    return result


def _assert_clean(result: dict[str, object], processes: int) -> None:
    assert result["lost"] == 0 and result["flips_missed"] == 0, result
    assert result["log_errors"] == 0 and result["client_problems"] == 0, result
    assert isinstance(result["chats_acked"], int) and result["chats_acked"] > 20
    assert isinstance(result["flips_acked"], int) and result["flips_acked"] >= 2
    assert isinstance(result["joins"], int) and result["joins"] > 2 * 5  # churners came back
    assert result["joins"] == result["leaves"]
    procs = result["processes"]
    assert isinstance(procs, list) and len(procs) == processes
    assert all(p["samples"] >= 4 and p["rss_kib_end"] > 0 and p["fds_end"] > 0 for p in procs)


@pytest.mark.timeout(120)
def test_a_short_soak_on_one_server(tmp_path: Path) -> None:
    _assert_clean(_soak(tmp_path, "--spawn"), 1)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_short_soak_on_a_two_instance_cluster(tmp_path: Path) -> None:
    """Members of one meeting on both instances: every acked chat crosses Redis to all."""
    _assert_clean(_soak(tmp_path, "--cluster", "2"), 2)


def test_the_report_counts_a_lost_chat_and_a_missed_flip() -> None:
    """The soak's verdict can fail: an acked chat a stayer never saw is lost, a stayer behind
    the last acked flip missed it."""
    run = _Run(SoakOptions(urls=("http://127.0.0.1:1",), duration=1))
    m = _Meeting(0, "m", "k", acked={"0:a:1", "0:a:2"}, last_flip=(9, False))
    m.seen = {"host0": {"0:a:1", "0:a:2"}, "stay0-0": {"0:a:1"}, "stay0-1": {"0:a:1", "0:a:2"}}
    m.revision_seen = {"host0": 9, "stay0-0": 8}
    m.camera_seen = {"stay0-1": True}
    run.meetings.append(m)
    result = _report(run)
    assert result["lost"] == 1 and result["lost_by_member"] == {"stay0-0": 1}
    assert result["flips_missed"] == 2  # stay0-0 (v1, revision 8) and stay0-1 (seed, camera on)
    assert "FAILED" in format_soak(result)


def test_log_scan_finds_errors_in_json_and_text_logs(tmp_path: Path) -> None:
    log = tmp_path / "i1.log"
    log.write_text('{"level": "info", "msg": "listening"}\n'
                   '{"level": "error", "msg": "shard 7 failed on event"}\n'
                   "warning rmeeting.x: slow\n"
                   "error   rmeeting.v1: v1 frame failed\n"
                   "Traceback (most recent call last):\n")
    found = scan_logs([str(log)])
    assert len(found) == 3 and "shard 7" in found[0]
    assert scan_logs([str(tmp_path / "missing.log")])[0].endswith("No such file or directory: "
                                                                  f"'{tmp_path}/missing.log'")

