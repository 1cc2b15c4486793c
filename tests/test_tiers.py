"""The fast tier (README, "Tests"): its selection holds no test that starts a server, and a test
that starts one without its marker fails instead of slowing the fast tier down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ._tiers import FAST_TIER, GuardedPopen, UnmarkedServerError, marker_for_command

ROOT = Path(__file__).resolve().parent.parent

# tests that start a real server, one per way of starting one: a fixture (etcd_server,
# redis_server, browser), a fixture's param (the conformance suites, the scenario target), a
# module's marker, or a LocalCluster / RedisServer made in the test's body
SERVER_TESTS = [
    "tests/test_etcd_store.py::",
    "tests/test_redis_store.py::",
    "tests/test_liveness.py::",
    "tests/test_etcd_configs.py::",
    "tests/test_cluster_faults.py::",
    "tests/test_cluster_cli.py::",
    "tests/test_rolling_restart.py::test_rolling_restart_loses_no_member_message_or_session",
    "tests/test_console.py::test_console_two_members_and_a_host",
    "tests/test_console.py::test_console_shows_an_operator_change_on_two_instances",
    "tests/test_metrics.py::test_etcd_watch_metrics",
    "tests/test_scenarios.py::test_local_cluster_processes_are_gone_after_stop",
    "tests/test_compose.py::test_redis_keeps_an_append_only_file_like_the_launchers",
    "tests/test_bench.py::test_flip_via_etcd_on_a_two_instance_cluster",
    "tests/conformance/test_meeting_store.py::test_compare_and_set[etcd]",
    "tests/conformance/test_member_store.py::test_max_members[redis]",
    "tests/conformance/test_chat_log.py::test_drop_forgets_history[redis]",
    "tests/test_scenarios.py::test_controls_flip_reaches_everyone[cluster]",
]
# and some that start none, which the fast tier must keep
FAST_TESTS = [
    "tests/conformance/test_meeting_store.py::test_compare_and_set[memory]",
    "tests/test_scenarios.py::test_controls_flip_reaches_everyone[embedded]",
    "tests/test_console.py::test_console_pages_and_assets_are_served",
    "tests/test_hub.py::",
]


def _collect_fast_tier() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", FAST_TIER],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


def _matching(ids: set[str], pattern: str) -> set[str]:
    return {i for i in ids if i == pattern or (pattern.endswith("::") and i.startswith(pattern))}


def _exists(pattern: str) -> bool:
    """Whether the test (or module) a pattern names is there at all: a renamed test must not
    pass the check below by no longer matching anything."""
    path, _, name = pattern.partition("::")
    source = ROOT / path
    return source.is_file() and (not name or f"def {name.split('[')[0]}(" in source.read_text())


async def test_the_fast_selection_holds_no_server_test() -> None:
    for pattern in SERVER_TESTS + FAST_TESTS:
        assert _exists(pattern), f"{pattern} is gone: renamed?"
    with trio.fail_after(150):
        fast = await trio.to_thread.run_sync(_collect_fast_tier)
    for pattern in SERVER_TESTS:
        assert not _matching(fast, pattern), f"the fast tier runs {pattern}, which starts a server"
    for pattern in FAST_TESTS:
        assert _matching(fast, pattern), f"the fast tier lost {pattern}"
    assert len(fast) > 150


def test_server_programs_need_their_marker() -> None:
    assert marker_for_command(["/usr/bin/etcd", "--name", "x"]) == "etcd"
    assert marker_for_command(["redis-server", "--port", "1"]) == "redis"
    assert marker_for_command("nginx -c /tmp/nginx.conf") == "cluster"
    assert marker_for_command([Path("/usr/bin/chromium")]) == "browser"
    assert marker_for_command(["/venv/site-packages/playwright/driver/node", "cli.js"]) == "browser"
    assert marker_for_command([sys.executable, "-m", "rmeeting", "serve"]) is None
    assert marker_for_command(["etcdctl", "get", "/"]) is None  # a client, not a server
    assert marker_for_command([]) is None


def test_an_unmarked_test_cannot_start_a_server() -> None:
    """This test is in the fast tier: the guard stops it before redis-server even starts."""
    assert subprocess.Popen is GuardedPopen
    with pytest.raises(UnmarkedServerError, match=r"not marked @pytest.mark.redis"):
        subprocess.Popen(["redis-server", "--version"], stdout=subprocess.DEVNULL)
    # an ordinary program still runs
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0


@pytest.mark.redis
def test_a_marked_test_may_start_one() -> None:
    done = subprocess.run(["redis-server", "--version"], capture_output=True, timeout=30)
    assert done.returncode == 0 and b"Redis server" in done.stdout
