"""Shared fixtures: an embedded rmeeting on a free port, and clients that talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from rmeeting.config import Config
from rmeeting.server import RunningServer, serve_rmeeting

from .clients import Api


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
