"""One conformance suite per store interface, run against every implementation.

Each fixture below yields a fresh store of one implementation. The memory stores always run; the
etcd and Redis ones join here when their real servers are available (see tests/servers.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rmeeting.stores.memory import MemoryChatLog, MemoryMeetingStore, MemoryMemberStore

MEETING_STORES = ["memory"]
MEMBER_STORES = ["memory"]
CHAT_LOGS = ["memory"]


@pytest.fixture(params=MEETING_STORES)
async def meeting_store(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryMeetingStore()


@pytest.fixture(params=MEMBER_STORES)
async def member_store(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryMemberStore()


@pytest.fixture(params=CHAT_LOGS)
async def chat_log(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryChatLog(history_limit=50)
