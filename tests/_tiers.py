"""The test tiers: which tests start a server, marked by what they use, and held to it.

A test that starts etcd, redis-server, nginx (a local cluster) or a browser carries the marker of
that server, so that ``pytest -m "not etcd and not redis and not cluster and not browser"`` (the
fast tier, see the README) starts none. Two mechanisms keep that true without anyone remembering:

- ``mark_by_fixtures`` (run at collection) marks every test by the server fixtures it uses,
  directly or through other fixtures: ``etcd_server`` → ``etcd``, ``redis_server`` → ``redis``,
  ``browser`` → ``browser``; and a ``cluster`` test is also ``etcd`` and ``redis`` (a cluster
  always runs both).
- ``GuardedPopen`` replaces ``subprocess.Popen`` for the session (trio and asyncio spawn through
  it too): a test that spawns one of those binaries without the marker fails at once, naming the
  marker it lacks, instead of quietly slowing the fast tier.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

__all__ = [
    "BINARY_MARKERS",
    "FAST_TIER",
    "SERVER_FIXTURES",
    "SERVER_MARKERS",
    "GuardedPopen",
    "UnmarkedServerError",
    "install_guard",
    "mark_by_fixtures",
    "marker_for_command",
    "markers_for_fixtures",
    "set_current_test",
]

SERVER_MARKERS = ("etcd", "redis", "cluster", "browser")
FAST_TIER = " and ".join(f"not {marker}" for marker in SERVER_MARKERS)

# a fixture that starts a server → the markers of the tests that use it
SERVER_FIXTURES: dict[str, tuple[str, ...]] = {
    "etcd_server": ("etcd",),
    "redis_server": ("redis",),
    "redis_cluster": ("redis",),
    "browser": ("browser",),
}
# a marker that implies others: a local cluster runs etcd and Redis behind nginx
IMPLIED_MARKERS: dict[str, tuple[str, ...]] = {"cluster": ("etcd", "redis")}
# a spawned program (its file name) → the marker a test needs to spawn it
BINARY_MARKERS: dict[str, str] = {
    "etcd": "etcd",
    "redis-server": "redis",
    "redis-cli": "redis",
    "nginx": "cluster",
    "chromium": "browser",
    "chromium-browser": "browser",
}


class UnmarkedServerError(RuntimeError):
    """A test started a server without the marker that keeps it out of the fast tier."""


def markers_for_fixtures(fixturenames: Iterable[str]) -> set[str]:
    """The server markers that a test using these fixtures (the whole closure) must carry."""
    markers: set[str] = set()
    for name in fixturenames:
        markers.update(SERVER_FIXTURES.get(name, ()))
    return markers


def marker_for_command(args: Any) -> str | None:
    """The marker needed to spawn ``args`` (a Popen argument), or None for an ordinary program.

    Playwright's driver (a ``node`` inside the playwright package) counts as the browser."""
    if isinstance(args, str | bytes | os.PathLike):
        program = os.fsdecode(args).split()[0] if os.fsdecode(args).strip() else ""
    elif isinstance(args, Sequence) and args:
        program = os.fsdecode(args[0])
    else:
        return None
    if f"{os.sep}playwright{os.sep}" in program:
        return "browser"
    return BINARY_MARKERS.get(os.path.basename(program))


def mark_by_fixtures(items: Iterable[pytest.Item]) -> None:
    """Add the server markers each collected test needs (see the module's docstring)."""
    for item in items:
        needed = markers_for_fixtures(getattr(item, "fixturenames", ()))
        present = {mark.name for mark in item.iter_markers()}
        for marker in present | needed:
            needed.update(IMPLIED_MARKERS.get(marker, ()))
        for marker in sorted(needed - present):
            item.add_marker(getattr(pytest.mark, marker))


_current: pytest.Item | None = None


def set_current_test(item: pytest.Item | None) -> None:
    """The test now being set up, run or torn down (None between tests: no check then)."""
    global _current
    _current = item


def _check(args: Any) -> None:
    item = _current
    marker = marker_for_command(args)
    if item is None or marker is None:
        return
    if item.get_closest_marker(marker) is None:
        raise UnmarkedServerError(
            f"{item.nodeid} spawns {args!r}, a server of the {marker!r} tier, but is not marked "
            f"@pytest.mark.{marker}: mark it (or use the fixture that marks it) so that the "
            f"fast tier (-m {FAST_TIER!r}) stays free of servers"
        )


class GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` that refuses to start a server the current test is not marked for."""

    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        _check(args)
        super().__init__(args, *rest, **kwargs)


def install_guard() -> None:
    """Route every spawn of the session through ``GuardedPopen`` (a subclass: isinstance holds)."""
    subprocess.Popen = GuardedPopen  # type: ignore[misc]
