"""One conformance suite per store interface, run against every implementation.

Each fixture below yields a fresh store of one implementation: memory, and the etcd and Redis
ones against real servers started by tests/etcd_server.py and tests/redis_server.py (a plain Redis
and a Redis Cluster of 3 primaries with replicas; a missing
binary fails the run; it never skips).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from trio.testing import MockClock

from rmeeting.stores.etcd import open_etcd_meeting_store
from rmeeting.stores.memory import MemoryChatLog, MemoryMeetingStore, MemoryMemberStore
from rmeeting.stores.redis import RedisChatLog, RedisMemberStore

from ..etcd_server import EtcdServer
from ..redis_server import RedisClusterServer, RedisServer

# the real servers' params carry their tier's marker (tests/_tiers.py)
MEETING_STORES = ["memory", pytest.param("etcd", marks=pytest.mark.etcd)]
#: audit records kept per meeting by the stores under test (small, so the bound is tested)
AUDIT_LIMIT = 8
MEMBER_STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis),
                 pytest.param("redis-cluster", marks=pytest.mark.redis)]
CHAT_LOGS = MEMBER_STORES


def _redis_url(request: pytest.FixtureRequest) -> str:
    """A clean Redis of the kind the test's parameter names: the plain server or the cluster."""
    server: RedisServer | RedisClusterServer = request.getfixturevalue(
        "redis_cluster" if request.param == "redis-cluster" else "redis_server")
    server.flushall()
    return server.url


@pytest.fixture(params=MEETING_STORES)
async def meeting_store(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryMeetingStore(audit_limit=AUDIT_LIMIT)
    elif request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")  # a fresh etcd per test
        async with open_etcd_meeting_store(
            [etcd.endpoint], audit_limit=AUDIT_LIMIT
        ) as etcd_meetings:
            yield etcd_meetings


@pytest.fixture
def store_clock(request: pytest.FixtureRequest) -> MockClock | None:
    """Virtual time for a test of timers, where the store allows it: the memory store's timers
    run on Trio's clock, so its timed tests take no real second and can check the exact moment
    (pytest-trio runs a test on the clock it is given). The etcd store's timers are etcd leases,
    on etcd's clock: real time there (None: Trio's own clock)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("meeting_store") == "memory":
        return MockClock(autojump_threshold=0)
    return None


@pytest.fixture(params=MEMBER_STORES)
async def member_store(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryMemberStore()
    else:
        redis_members = RedisMemberStore(_redis_url(request))
        yield redis_members
        redis_members.close()


@pytest.fixture(params=CHAT_LOGS)
async def chat_log(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryChatLog(history_limit=50)
    else:
        redis_chat = RedisChatLog(_redis_url(request), history_limit=50)
        yield redis_chat
        redis_chat.close()
