"""The hub's coalescing: ops already waiting in a shard's inbox are taken together, and each
member's frames from them go out in one write, in order; a lone event is written at once, and a
member closed in a batch gets its frames before the close."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from rmeeting import wire
from rmeeting.closes import Close, LeaveReason
from rmeeting.controls import Controls
from rmeeting.events import ChatPosted, MemberJoined, MemberLeft
from rmeeting.hub import MAX_BATCH, Hub, Subscriber
from rmeeting.records import MemberRecord

from .test_hub import Recorder


class Log(Recorder):
    """A recorder that also keeps writes and closes in one order; like a WebSocket, it takes
    nothing once closed."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[str] = []

    def send_frame_nowait(self, frame: bytes) -> bool:
        if self.closed is not None:
            return False
        self.actions.append("write")
        return super().send_frame_nowait(frame)

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        self.actions.append("close")
        super().close_nowait(code, reason)


def _chat(seq: int) -> ChatPosted:
    return ChatPosted("m", "s", "s", "member", f"text {seq}", seq, 0.0)


def _joined(member_id: str) -> MemberJoined:
    return MemberJoined.of(MemberRecord("m", member_id, member_id, "member", "i", 1.0, "h"))


async def test_a_backlog_goes_out_in_one_write_per_member_in_order() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    seed, v1 = Log(), Log()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(Subscriber("m", "a", "seed", seed), Controls())
            await hub.attach(Subscriber("m", "b", "v1", v1), Controls())
            await trio.testing.wait_all_tasks_blocked()
            # deliver() does not yield while the inbox has room: all five wait for the shard
            for seq in range(1, 6):
                await hub.deliver(_chat(seq))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    for outlet in (seed, v1):
        assert outlet.actions == ["write"]
    assert [m["seq"] for m in v1.texts()] == [1, 2, 3, 4, 5]
    assert len(seed.texts()) == 5
    assert hub.statistics()["coalesced_frames"] == 2 * 4


@asynccontextmanager
async def _one_v1_member() -> AsyncIterator[tuple[Hub, Log]]:
    """A served hub of one shard with one v1 member attached, everything settled."""
    hub = Hub(shards=1, encoders=wire.encoders())
    outlet = Log()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await hub.attach(Subscriber("m", "a", "v1", outlet), Controls())
        await trio.testing.wait_all_tasks_blocked()
        yield hub, outlet
        nursery.cancel_scope.cancel()


async def test_a_lone_event_is_written_at_once_and_alone() -> None:
    with trio.fail_after(5):
        async with _one_v1_member() as (hub, outlet):
            for seq in (1, 2, 3):
                await hub.deliver(_chat(seq))
                # nothing else is waiting: written before the shard sleeps again, no timer
                await trio.testing.wait_all_tasks_blocked()
                assert len(outlet.writes) == seq
    assert [m["seq"] for m in outlet.texts()] == [1, 2, 3]
    assert hub.statistics()["coalesced_frames"] == 0


async def test_a_lone_event_waits_for_no_timer() -> None:
    # two scheduler rounds to see that nothing else is coming, then written: no clock moves
    with trio.fail_after(5):
        async with _one_v1_member() as (hub, outlet):
            await hub.deliver(_chat(1))
            for _ in range(4):
                await trio.lowlevel.checkpoint()
            assert len(outlet.writes) == 1
    assert hub.statistics()["grow_ticks"] == 0


async def test_ops_that_keep_coming_round_after_round_are_taken_together() -> None:
    # a storm: the tasks making ops are running; one arrives per scheduler round
    with trio.fail_after(5):
        async with _one_v1_member() as (hub, outlet):
            for seq in range(1, 11):
                await hub.deliver(_chat(seq))
                await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked()
    assert [m["seq"] for m in outlet.texts()] == list(range(1, 11))
    assert len(outlet.writes) <= 2, outlet.actions
    assert hub.statistics()["grow_ticks"] >= 5


async def test_a_member_closed_in_a_batch_gets_its_frames_first() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    gone, stays = Log(), Log()
    record = MemberRecord("m", "g", "g", "member", "i", 1.0, "h")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(Subscriber("m", "g", "v1", gone, record=record), Controls())
            await hub.attach(Subscriber("m", "s", "v1", stays), Controls())
            await trio.testing.wait_all_tasks_blocked()
            await hub.deliver(_chat(1))
            await hub.deliver(_chat(2))
            await hub.deliver(MemberLeft.of(record, LeaveReason.KICKED, (Close.KICKED, "out")))
            await hub.deliver(_chat(3))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert gone.actions == ["write", "close"] and gone.closed == (Close.KICKED, "out")
    assert [m.get("seq") for m in gone.texts()] == [1, 2, None]
    assert stays.actions == ["write"]
    assert [m["type"] for m in stays.texts()] == ["chat", "chat", "member_left", "chat"]


async def test_a_member_attached_mid_batch_gets_only_what_follows() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    early, late = Log(), Log()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(Subscriber("m", "e", "seed", early), Controls())
            await trio.testing.wait_all_tasks_blocked()
            await hub.deliver(_joined("x"))
            await hub.attach(Subscriber("m", "l", "seed", late), Controls())  # yields: put first
            await hub.deliver(_joined("y"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(early.texts()) == 2 and len(late.texts()) == 1


async def test_a_batch_is_bounded() -> None:
    hub = Hub(shards=1, encoders=wire.encoders(), inbox_size=4 * MAX_BATCH)
    outlet = Log()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(Subscriber("m", "a", "v1", outlet), Controls())
            await trio.testing.wait_all_tasks_blocked()
            for seq in range(1, 2 * MAX_BATCH + 1):
                await hub.deliver(_chat(seq))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(outlet.writes) == 2
    assert [m["seq"] for m in outlet.texts()] == list(range(1, 2 * MAX_BATCH + 1))


async def test_a_welcome_and_what_was_held_behind_it_go_out_in_one_write() -> None:
    from typing import Any, cast

    from rmeeting.api.v1_ws import _Gate
    from rmeeting.service import Joined

    class Socket(Log):
        closing = False

    ws = Socket()
    gate = _Gate(cast(Any, ws), limit=1 << 20)
    record = MemberRecord("m", "me", "me", "member", "i", 1.0, "h")
    sub = Subscriber("m", "me", "v1", ws, held=gate, record=record)
    encoder = wire.encoders()["v1"]
    for event in (_joined("x"), _chat(7), _joined("y"), _chat(9)):
        frame = encoder.frame(event)
        assert frame is not None
        gate.hold(event, frame)
    gate.release(Joined(record, Controls(), sub), b'{"type":"welcome"}',
                 keep=lambda e: not (isinstance(e, ChatPosted) and e.seq <= 7))
    assert ws.actions == ["write"] and sub.held is None
    assert [m["type"] for m in ws.texts()] == ["welcome", "member_joined", "member_joined",
                                                "chat"]


def test_the_welcome_roster_is_each_member_as_public_shows_it() -> None:
    """The roster is spliced from per-member JSON made once; names that look like the splice
    point, quotes and non-ASCII come out exactly."""
    import json

    from rmeeting.records import MeetingMeta
    from rmeeting.wire import v1

    tricky = ['"roster":[]', 'a"b\\c', "Zoë 李", "]}{"]
    roster = [MemberRecord("m", f"id{i}", name, "member", "i", float(i), "h", camera=i % 2 == 0)
              for i, name in enumerate(tricky)]
    meta = MeetingMeta("m", '"roster":[] all-hands', 1.0, "h")
    for members in (roster, roster[:1], []):
        frame = v1.welcome(you=roster[0], token="t", meta=meta, controls=Controls(),
                           roster=members, last_seq=0, recent=[])
        body = json.loads(frame)
        assert body["roster"] == [r.public() for r in members]
        assert body["meeting"]["name"] == meta.name and body["you"] == roster[0].public()
