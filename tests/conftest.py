"""Shared fixtures: an embedded rmeeting on a free port, and clients that talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest
import trio

from rmeeting.config import Config
from rmeeting.server import RunningServer, serve_rmeeting

from . import _tiers
from .clients import Api

# the session's servers, registered once here: a fixture imported into several modules would be
# a fixture of each, and each would start its own "session" server (a Redis Cluster is 6 nodes)
from .etcd_server import etcd_server  # noqa: F401
from .redis_server import redis_cluster, redis_server  # noqa: F401

# --- the tiers (tests/_tiers.py): servers only in marked tests ----------------------------------

def pytest_configure(config: pytest.Config) -> None:
    _tiers.install_guard()


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _tiers.mark_by_fixtures(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _tiers.set_current_test(item)
    try:
        return (yield)
    finally:
        _tiers.set_current_test(None)


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = {"bind": "127.0.0.1:0", "shutdown_grace": 2.0, "log_format": "text"}
    base.update(overrides)
    return Config(**base).validate()


@pytest.fixture
def server_config() -> Config:
    return make_config()


@pytest.fixture
async def server(nursery: trio.Nursery, server_config: Config) -> AsyncIterator[RunningServer]:
    running: RunningServer = await nursery.start(serve_rmeeting, server_config)
    yield running
    running.shutdown.set()


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[Api]:
    async with Api(server.url) as client:
        yield client
