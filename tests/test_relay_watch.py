"""The chat relay watch: what members hear while the relay is down, and the chat they missed,
delivered once and in order when it is back (the cluster test restarts a real Redis; this one
makes the relay miss messages on purpose, which a real outage does only by chance). The chat log
is the memory one, the Redis one on a real Redis, and the Redis one on a real Redis Cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from rmeeting import wire
from rmeeting.closes import LeaveReason
from rmeeting.cluster.presence import Presence
from rmeeting.cluster.relay_watch import ChatRelayWatch
from rmeeting.config import Config
from rmeeting.events import ChatPosted
from rmeeting.hub import Hub
from rmeeting.service import MeetingService
from rmeeting.stores.base import ChatLog
from rmeeting.stores.memory import MemoryChatLog, MemoryMeetingStore, MemoryMemberStore
from rmeeting.stores.redis import RedisChatLog

from .conftest import make_config
from .redis_server import RedisClusterServer, RedisServer


class MakeChat:
    """Chat logs of one kind: memory, or Redis (plain or a cluster) on a real server."""

    def __init__(self, server: RedisServer | RedisClusterServer | None) -> None:
        self.server = server
        self.made: list[RedisChatLog] = []

    def __call__(self, history_limit: int) -> ChatLog:
        if self.server is None:
            return MemoryChatLog(history_limit=history_limit)
        self.made.append(RedisChatLog(self.server.url, history_limit=history_limit))
        return self.made[-1]

    async def unsubscribe(self, chat: ChatLog, meeting_id: str) -> None:
        """``chat.unsubscribe``, and on Redis wait until Redis itself no longer sends this
        instance the meeting's messages (an UNSUBSCRIBE goes out asynchronously): only then
        is what is published next really missed, as in an outage."""
        await chat.unsubscribe(meeting_id)
        if self.server is None:
            return
        channel = f"rmeeting:c:{{{meeting_id}}}"
        with trio.fail_after(5):
            while await trio.to_thread.run_sync(self._subscribers, channel):
                await trio.sleep(0.02)

    def _subscribers(self, channel: str) -> int:
        if isinstance(self.server, RedisClusterServer):
            return sum(int(self.server.command(node, "pubsub", "shardnumsub", channel).split()[-1])
                       for node in self.server.nodes if node.running)
        assert self.server is not None
        client = self.server.client()
        try:
            return int(client.pubsub_numsub(channel)[0][1])
        finally:
            client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("redis-cluster", marks=pytest.mark.redis)])
def make_chat(request: pytest.FixtureRequest) -> Iterator[MakeChat]:
    if request.param == "memory":
        yield MakeChat(None)
        return
    server: RedisServer | RedisClusterServer = request.getfixturevalue(
        "redis_cluster" if request.param == "redis-cluster" else "redis_server")
    server.flushall()
    maker = MakeChat(server)
    yield maker
    for chat in maker.made:
        chat.close()


class Outlet:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send_frame_nowait(self, frame: bytes) -> bool:
        # one write may hold several whole frames (the hub coalesces what waits)
        while frame:
            head, n = {126: (4, int.from_bytes(frame[2:4], "big")),
                       127: (10, int.from_bytes(frame[2:10], "big"))}.get(frame[1], (2, frame[1]))
            self.frames.append(json.loads(frame[head:head + n]))
            frame = frame[head + n:]
        return True

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        self.frames.append({"closed": code})

    def seen(self) -> list[str]:
        """Chat texts and notice codes, in order."""
        return [f["text"] if f.get("type") == "chat" else f["code"]
                for f in self.frames if f.get("type") in ("chat", "notice")]


async def _wired(
    nursery: trio.Nursery, chat: ChatLog, config: Config
) -> tuple[MeetingService, ChatRelayWatch]:
    """A service on memory stores but ``chat``, whose chat log reaches the hub through the
    relay watch."""
    hub = Hub(2, encoders=wire.encoders())
    service = MeetingService(config, meetings=MemoryMeetingStore(), members=MemoryMemberStore(),
                             chat=chat, hub=hub, instance_id="i1")
    watch = ChatRelayWatch()
    await nursery.start(hub.serve)
    await nursery.start(watch.serve, service, Presence(service))
    await nursery.start(chat.serve, watch.gate(service.on_bus_event))
    return service, watch


async def test_outage_is_told_and_missed_chat_caught_up_once(
    nursery: trio.Nursery, make_chat: MakeChat
) -> None:
    chat = make_chat(500)
    service, watch = await _wired(nursery, chat, make_config())
    mid = (await service.create_meeting("m")).meta.meeting_id
    outlet = Outlet()
    joined = await service.join(mid, name="ann", protocol="v1", outlet=outlet)

    async def say(text: str) -> None:
        await chat.publish(ChatPosted(mid, "x", "bob", "member", text))

    async def until(expected: list[str]) -> None:
        with trio.move_on_after(5):
            while outlet.seen() != expected:
                await trio.sleep(0.01)
        assert outlet.seen() == expected, outlet.frames

    await say("one")
    await until(["one"])
    watch.on_relay_state(False)
    await until(["one", "chat_unavailable"])
    # what another instance published while this one's relay was away: in history, not relayed
    await make_chat.unsubscribe(chat, mid)
    await say("two")
    await say("three")
    await chat.subscribe(mid)
    watch.on_relay_state(True)
    await say("four")  # live: it waits for the catch-up (or is in it, and then dropped)
    with trio.fail_after(5):
        while "chat_available" not in outlet.seen() or "four" not in outlet.seen():
            await trio.sleep(0.01)
    # a copy of something already delivered (a catch-up racing the relay) is dropped
    await service.hub.deliver((await chat.history(mid, 2, 1)).events[0])
    await say("five")
    with trio.fail_after(5):
        while "five" not in outlet.seen():
            await trio.sleep(0.01)
    seen = outlet.seen()
    assert [s for s in seen if not s.startswith("chat_")] == ["one", "two", "three", "four", "five"]
    assert seen.index("one") < seen.index("chat_unavailable") < seen.index("two")
    assert seen.index("three") < seen.index("chat_available")
    assert [f["seq"] for f in outlet.frames if f.get("type") == "chat"] == [1, 2, 3, 4, 5]
    await service.disconnected(joined, LeaveReason.CLOSED)


async def test_what_history_no_longer_holds_is_told_as_a_gap(
    nursery: trio.Nursery, make_chat: MakeChat
) -> None:
    chat = make_chat(2)
    service, watch = await _wired(nursery, chat, make_config(history_limit=2, welcome_history=2))
    mid = (await service.create_meeting("m")).meta.meeting_id
    outlet = Outlet()
    await service.join(mid, name="ann", protocol="seed", outlet=outlet)

    async def count(key: str, n: int) -> None:
        with trio.fail_after(5):
            while len([f for f in outlet.frames if key in f]) < n:
                await trio.sleep(0.01)

    await chat.publish(ChatPosted(mid, "x", "bob", "member", "a"))
    await count("notice", 2)  # the join, "a"
    watch.on_relay_state(False)
    await count("code", 1)
    await make_chat.unsubscribe(chat, mid)
    for text in ("b", "c", "d"):
        await chat.publish(ChatPosted(mid, "x", "bob", "member", text))
    await chat.subscribe(mid)
    watch.on_relay_state(True)
    await count("code", 3)
    notices = [f["notice"] for f in outlet.frames if "notice" in f]
    # the seed's frames: "b" is gone from history (limit 2), so the members are told so
    assert notices[-6:] == ["a", "聊天暂时不可用，消息不会送达", "c", "d", "部分聊天消息未能恢复",
                            "聊天已恢复"]
