"""Graceful drain: an instance that stops says where to go, and a rolling restart loses nothing.

The cluster test restarts every instance of a 3-instance cluster in turn (SIGTERM, then start on
the same port, so nginx's upstream stays valid) while v1 and seed members chat through nginx.
v1 members come back with their token and last chat seq after the 1012 close, seed members
rejoin with their userUid. In the end every v1 member has seen every chat message exactly once,
nothing anyone sent is missing or doubled, everyone is present once, and each member's attendance
is a chain of sessions closed by the restarts plus the one open now.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from rmeeting.cluster.launcher import LocalCluster
from rmeeting.server import RunningServer

from .clients import Api, open_raw_ws, open_seed, open_v1, recv_json
from .conftest import make_config

#: how a drained member may have left an instance: closed by the drain, or replaced by its own
#: reconnection elsewhere before the draining instance recorded the leave
DRAIN_REASONS = {"server shutdown", "replaced"}
SEND_EVERY = 0.1


@dataclass
class Member:
    """A member that keeps chatting and keeps coming back (state kept across connections)."""

    name: str
    protocol: str
    token: str | None = None
    member_id: str = ""
    #: v1: seq -> text, every chat seen (asserted never twice)
    seen: dict[int, str] = field(default_factory=dict)
    #: texts whose frame went out on a live connection (the server must publish them)
    sent: list[str] = field(default_factory=list)
    #: texts to send on the next connection (their send found the connection closed)
    queued: list[str] = field(default_factory=list)
    joins: int = 0
    drained: int = 0
    counter: int = 0

    def next_text(self) -> str:
        if self.queued:
            return self.queued.pop(0)
        self.counter += 1
        return f"{self.name}-{self.counter}"

    def saw(self, seq: int, text: str) -> None:
        assert seq not in self.seen, f"{self.name} got chat {seq} twice"
        self.seen[seq] = text


async def _keep_sending(member: Member, send: Any, stop: trio.Event) -> None:
    while not stop.is_set():
        text = member.next_text()
        try:
            await send(text)
        except ConnectionClosed:
            member.queued.insert(0, text)  # never left this client: send it again later
            return
        member.sent.append(text)
        await trio.sleep(SEND_EVERY)


async def _v1_connection(url: str, mid: str, m: Member, stop: trio.Event) -> None:
    query: dict[str, Any] = {"name": m.name}
    if m.token:
        query.update(token=m.token, last_seq=max(m.seen, default=0))
    async with open_v1(url, mid, expect_welcome=False, **query) as client:
        welcome = await recv_json(client.ws, 10)
        if welcome["type"] == "error":
            assert welcome["code"] in ("draining", "unavailable"), welcome
            return  # closed 1012/1013 next; try again
        assert welcome["type"] == "welcome" and not welcome.get("gap"), welcome
        if m.token:
            assert welcome["resumed"] and welcome["you"]["id"] == m.member_id
        m.token, m.member_id = welcome["token"], welcome["you"]["id"]
        m.joins += 1
        for chat in welcome.get("missed") or welcome.get("chat") or []:
            m.saw(chat["seq"], chat["text"])

        async def send(text: str) -> None:
            await client.send(type="chat", text=text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_sending, m, send, stop)
            try:
                while True:
                    frame = json.loads(await client.ws.get_message())
                    if frame["type"] == "chat":
                        m.saw(frame["seq"], frame["text"])
                    assert frame["type"] != "error", frame
            except ConnectionClosed as closed:
                nursery.cancel_scope.cancel()
                assert closed.reason is not None and closed.reason.code == 1012, closed.reason
                m.drained += 1


async def _seed_connection(url: str, mid: str, m: Member, stop: trio.Event) -> None:
    async with open_seed(url, mid, m.name, f"uid-{m.name}") as ws:
        while "user_uid" not in (first := await recv_json(ws, 10)):
            assert "error" not in first or "shutting down" in first["error"], first
        m.joins += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_sending, m, ws.send_message, stop)
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed as closed:
                nursery.cancel_scope.cancel()
                assert closed.reason is not None and closed.reason.code == 1012, closed.reason
                m.drained += 1


async def _stay(url: str, mid: str, m: Member, stop: trio.Event, done: trio.Event) -> None:
    """Connect, and connect again after every drain, until ``done``."""
    connect = _v1_connection if m.protocol == "v1" else _seed_connection
    while not done.is_set():
        try:
            await connect(url, mid, m, stop)
        except ConnectionClosed as closed:  # refused before the welcome (draining)
            assert closed.reason is not None and closed.reason.code in (1012, 1013), closed
        except (HandshakeError, OSError):
            pass  # nginx found no instance for a moment
        await trio.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        yield running


@pytest.mark.cluster
async def test_rolling_restart_loses_no_member_message_or_session(cluster: LocalCluster) -> None:
    v1 = [Member(f"v{i}", "v1") for i in range(4)]
    seeds = [Member(f"s{i}", "seed") for i in range(2)]
    stop, done = trio.Event(), trio.Event()
    with trio.fail_after(60):
        async with Api(cluster.url) as api:
            created = (await api.request("POST", "/v1/meetings", json={"name": "rolling"})).json()
            mid, host = created["id"], {"Authorization": f"Bearer {created['host_key']}"}
            async with trio.open_nursery() as nursery:
                for m in v1 + seeds:
                    nursery.start_soon(_stay, cluster.url, mid, m, stop, done)
                while any(m.joins == 0 for m in v1 + seeds):
                    await trio.sleep(0.05)
                for instance in cluster.instances:
                    await trio.sleep(1.0)  # chat flows through every instance meanwhile
                    assert await trio.to_thread.run_sync(instance.stop) == 0, instance.name
                    await trio.to_thread.run_sync(instance.start)
                await trio.sleep(1.0)
                stop.set()
                await _settle(v1)
                roster = (await api.request("GET", f"/v1/meetings/{mid}/members")).json()
                sessions = (await api.request(
                    "GET", f"/v1/meetings/{mid}/attendance", headers=host)).json()["sessions"]
                done.set()
                nursery.cancel_scope.cancel()

    assert sum(m.drained for m in v1 + seeds) >= 3, "the restarts drained members"
    log = v1[0].seen
    last = max(log)
    for m in v1:  # every chat, exactly once (saw() refused repeats), in one numbering
        assert m.seen == log, f"{m.name} has a different chat log"
    assert sorted(log) == list(range(1, last + 1)), "no seq is missing"
    texts = list(log.values())
    assert len(texts) == len(set(texts)), "nothing was published twice"
    for m in v1 + seeds:
        assert set(m.sent) <= set(texts), f"chat of {m.name} was lost"

    present = [(r["name"], r["id"]) for r in roster["members"]]
    assert sorted(n for n, _ in present) == sorted(m.name for m in v1 + seeds), present
    assert {m.member_id for m in v1} <= {i for _, i in present}
    for m in v1 + seeds:
        own = [s for s in sessions if s["name"] == m.name]
        assert len(own) >= m.joins and own[-1]["left_at"] is None, (m.name, own)
        assert all(s["left_at"] is not None and s["reason"] in DRAIN_REASONS
                   for s in own[:-1]), (m.name, own)
    assert len(sessions) == sum(len([s for s in sessions if s["name"] == m.name])
                                for m in v1 + seeds), "no stray session"


async def _settle(members: list[Member]) -> None:
    """Wait until every member has the same, complete-looking log (the last chat has landed)."""
    while True:
        logs = [m.seen for m in members]
        if all(log == logs[0] for log in logs) and logs[0]:
            await trio.sleep(0.5)
            if all(m.seen == logs[0] for m in members):
                return
        await trio.sleep(0.05)


async def test_drain_refuses_joins_and_reports_not_ready(nursery: trio.Nursery) -> None:
    """While a member that does not answer holds the drain open: /readyz is 503, a join is
    refused with 1012, /metrics says draining; embedded mode closes members with 1001."""
    running: RunningServer = await nursery.start(_serve, make_config(shutdown_grace=3.0))
    async with Api(running.url) as api:
        created = (await api.request("POST", "/v1/meetings", json={"name": "drain"})).json()
        mid = created["id"]
        with trio.fail_after(15):
            stuck = await open_raw_ws(running.url, f"/v1/meetings/{mid}/ws?name=stuck")
            async with open_v1(running.url, mid, name="ann") as ann:
                while running.hub.statistics()["members"] < 2:
                    await trio.sleep(0.01)
                running.shutdown.set()
                assert await ann.closed_code() == 1001
            # the stuck member never answers the close: the drain waits for it
            assert (await api.request("GET", "/readyz")).status_code == 503
            assert "rmeeting_draining 1" in (await api.request("GET", "/metrics")).text
            async with open_v1(running.url, mid, expect_welcome=False, name="late") as late:
                assert (await late.recv())["code"] == "draining"
                assert await late.closed_code() == 1012
            await stuck.aclose()


async def _serve(config: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from rmeeting.server import serve_rmeeting

    await serve_rmeeting(config, task_status=task_status)
