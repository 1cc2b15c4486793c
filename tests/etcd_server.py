"""A real etcd for tests: one process on free loopback ports, killed and restarted at will.

Never a mock. The ``etcd`` binary must be installed (the test command installs it); if it is
missing the tests fail loudly rather than skip, so a green run always means a real etcd was used.
"""

from __future__ import annotations

import os

# etcd3 0.12's generated protobuf modules only load with the pure-Python protobuf runtime, and
# the choice is made when protobuf is first imported: set it before anything imports protobuf.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rmeeting.cluster import processes

__all__ = ["EtcdServer", "etcd_server", "running_etcd"]


class EtcdServer(processes.EtcdServer):
    """The launcher's etcd process, plus the real etcdctl for tests to act as an operator."""

    async def etcdctl(self, *args: str) -> str:
        """Run the real etcdctl against this server; returns its stdout, raises on failure."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        with trio.fail_after(15):
            done = await trio.run_process(
                [self._etcdctl, "--endpoints", self.endpoint, "--command-timeout=5s", *args],
                env=env, capture_stdout=True, capture_stderr=True, check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {args} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    async def revision(self) -> int:
        """etcd's current revision."""
        out = await self.etcdctl("get", "--limit=1", "-w", "json", "/")
        return int(json.loads(out)["header"]["revision"])


def running_etcd(base_dir: Path) -> Iterator[EtcdServer]:
    """Start an etcd under ``base_dir`` (on new ports if picked ones were taken meanwhile);
    stop it when the generator closes."""
    server = EtcdServer(base_dir / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test (it starts in well under a second)."""
    yield from running_etcd(tmp_path)
