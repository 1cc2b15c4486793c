"""A real ``redis-server`` for the tests: a free loopback port, AOF on, killable and restartable;
and a real Redis Cluster (3 primaries, 3 replicas) beside it.

Never a mock, and never the system Redis on 6379: every server here is a child process on a port
picked at start, with its data in a temporary directory. ``restart()`` keeps the port and the
directory, so what was fsynced to the append-only file before a ``kill()`` comes back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rmeeting.cluster.processes import RedisServer
from rmeeting.cluster.redis_cluster import RedisClusterServer

__all__ = ["RedisClusterServer", "RedisServer", "redis_cluster", "redis_server"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session; users call ``flushall()`` for a clean slate."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """One Redis Cluster for the session (it takes seconds to form): 3 primaries with a replica
    each, ``cluster-node-timeout`` 1 s. Users call ``flushall()``; tests that kill nodes start a
    cluster of their own."""
    with RedisClusterServer() as cluster:
        yield cluster
