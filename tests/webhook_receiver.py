"""A real webhook endpoint for the tests: an HTTP server on loopback (rmeeting's own receiver)
that verifies every request with the ``standardwebhooks`` library and records it.

Its ``mode`` says how it answers: ``ok`` (204), ``fail`` (500) or ``hang`` (no answer until the
mode changes, as a dead endpoint that accepts connections and never replies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import trio
from standardwebhooks import Webhook

from rmeeting.webhooks.receiver import Request, serve_receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Mode = Literal["ok", "fail", "hang"]


@dataclass(frozen=True)
class Got:
    id: str
    type: str
    timestamp: str
    data: dict[str, Any]
    signed_at: int
    user_agent: str


@dataclass
class Receiver:
    secret: str = SECRET
    mode: Mode = "ok"
    port: int = 0
    #: every request that verified, in arrival order, whatever was answered
    attempts: list[Got] = field(default_factory=list)
    #: the deliveries answered with a 2xx, in arrival order
    delivered: list[Got] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async def started(task_status: trio.TaskStatus[int]) -> None:
            await serve_receiver("127.0.0.1", self.port, self.handle, task_status=task_status)

        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(started)
            task_status.started()

    async def handle(self, request: Request) -> int:
        try:
            payload = Webhook(self.secret).verify(request.body.decode(), request.headers)
        except Exception as exc:  # noqa: BLE001 - a test endpoint records any failure
            self.rejected.append(repr(exc))
            return 400
        assert set(payload) == {"type", "timestamp", "data"}, payload
        got = Got(request.headers["webhook-id"], payload["type"], payload["timestamp"],
                  payload["data"], int(request.headers["webhook-timestamp"]),
                  request.headers.get("user-agent", ""))
        self.attempts.append(got)
        while self.mode == "hang":
            await self._changed.wait()
        if self.mode == "fail":
            return 500
        self.delivered.append(got)
        return 204

    def of(self, kind: str) -> list[Got]:
        return [g for g in self.delivered if g.type == kind]

    async def wait_for(self, predicate: Any, timeout: float = 20) -> list[Got]:
        """Until ``predicate(delivered)`` holds; the deliveries then."""
        with trio.fail_after(timeout):
            while not predicate(self.delivered):
                await trio.sleep(0.02)
        return self.delivered

    def ids(self) -> list[str]:
        return [g.id for g in self.delivered]

    def dump(self) -> str:
        return json.dumps([(g.type, g.id) for g in self.delivered])
