"""The hub on its own, with recording outlets: order, once-per-protocol encoding, stale drops."""

from __future__ import annotations

import json

import trio

from rmeeting import wire
from rmeeting.closes import Close, LeaveReason
from rmeeting.controls import Controls
from rmeeting.events import ChatPosted, ControlsChanged, HubEvent, MemberJoined, MemberLeft
from rmeeting.hub import Hub, Subscriber
from rmeeting.stores.base import MemberRecord


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send_frame_nowait(self, frame: bytes) -> bool:
        self.writes.append(frame)
        return True

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def texts(self) -> list[dict[str, object]]:
        """Split what was written back into frames (server frames: 0x81 + length)."""
        data = b"".join(self.writes)
        out = []
        while data:
            n = data[1]
            start = 2
            if n == 126:
                n, start = int.from_bytes(data[2:4], "big"), 4
            out.append(json.loads(data[start:start + n]))
            data = data[start + n:]
        return out


def _chat(meeting: str, seq: int) -> ChatPosted:
    return ChatPosted(meeting, "s", "s", "member", str(seq), seq, 0.0)


async def test_frames_in_order_then_the_close() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    outlet = Recorder()
    sub = Subscriber("m", "u", "v1", outlet)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(sub, Controls())
            for seq in (1, 2, 3):
                await hub.deliver(_chat("m", seq))
                await trio.sleep(0.01)
            assert len(outlet.writes) == 3
            # a backlog that ends with a leave that closes the member: frames first, then close
            for seq in (4, 5, 6):
                await hub.deliver(_chat("m", seq))
            await hub.deliver(MemberLeft("m", "u", "u", "member", 0.0, LeaveReason.KICKED,
                                         (Close.KICKED, "x")))
            while outlet.closed is None:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [m.get("seq") for m in outlet.texts()][:6] == [1, 2, 3, 4, 5, 6]
    assert outlet.closed == (4003, "x")


async def test_encoded_once_per_protocol_and_stale_controls_dropped() -> None:
    hub = Hub(shards=2, encoders=wire.encoders())
    seed, v1 = Recorder(), Recorder()
    await hub.attach(Subscriber("m", "a", "seed", seed), Controls())
    await hub.attach(Subscriber("m", "b", "v1", v1), Controls())
    newer = Controls.from_partial({"mic": False}, 10)
    older = Controls.from_partial({"mic": True}, 5)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.deliver(ControlsChanged("m", newer, {"mic": (True, False)}, "h"))
            await hub.deliver(ControlsChanged("m", older, {"mic": (False, True)}, "h"))
            await hub.deliver(_chat("m", 1))
            await hub.deliver(_chat("m", 1))  # a copy (e.g. relay catch-up): dropped
            while len(v1.texts()) < 2 or len(seed.texts()) < 2:
                await trio.sleep(0.01)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert seed.texts() == [{"notice": "会议室状态发送变更", "isMute": True},
                            {"notice": "1", "name": "s"}]
    assert [m["type"] for m in v1.texts()] == ["controls", "chat"]
    assert hub.controls_of("m") == newer


async def test_the_seed_encoder_sends_the_room_state_after_the_own_join_only() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    seed, v1 = Recorder(), Recorder()
    controls = Controls.from_partial({"mic": False}, 3)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(Subscriber("m", "a", "seed", seed, user_uid="uid-a"), controls)
            await hub.attach(Subscriber("m", "b", "v1", v1), controls)
            for member in ("a", "b", "a"):  # a's second join (another presence): no state again
                await hub.deliver(MemberJoined("m", member, member, "member", False, False, 1.0))
            while len(v1.texts()) < 3:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    state = {"is_mute": True, "is_change_name": True, "is_video": True, "user_uid": "uid-a"}
    joined = {"notice": "有成员加入会议室", "name": "a"}
    assert seed.texts() == [joined, state, {"notice": "有成员加入会议室", "name": "b"}, joined]
    assert [m["type"] for m in v1.texts()] == ["member_joined"] * 3


async def test_a_leave_closes_only_the_presence_it_names() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    old, new = Recorder(), Recorder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            record = MemberRecord("m", "u", "u", "member", "i", 2.0, "k")
            await hub.attach(Subscriber("m", "u", "v1", new, record=record), Controls())
            # the leave of the member's earlier presence (joined_at 1.0) reaches the new one
            await hub.deliver(MemberLeft("m", "u", "u", "member", 1.0, LeaveReason.REPLACED,
                                         (Close.REPLACED, "replaced")))
            await hub.deliver(MemberLeft("m", "u", "u", "member", 2.0, LeaveReason.KICKED,
                                         (Close.KICKED, "removed")))
            while new.closed is None:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert new.closed == (Close.KICKED, "removed") and old.closed is None


class Holding:
    def __init__(self) -> None:
        self.held: list[tuple[HubEvent, bytes]] = []

    def hold(self, event: HubEvent, frame: bytes) -> None:
        self.held.append((event, frame))


async def test_a_held_member_gets_events_with_their_frames_until_released() -> None:
    hub = Hub(shards=1, encoders=wire.encoders())
    outlet, holder, other = Recorder(), Holding(), Recorder()
    sub = Subscriber("m", "u", "v1", outlet, held=holder)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.attach(Subscriber("m", "o", "v1", other), Controls())
            await hub.attach(sub, Controls())
            await hub.deliver(_chat("m", 1))
            while len(other.writes) < 1:
                await trio.sleep(0.01)
            assert [event for event, _frame in holder.held] == [_chat("m", 1)]
            assert outlet.writes == [] and holder.held[0][1] == other.writes[0]
            sub.held = None  # released (the v1 welcome's gate does this)
            await hub.deliver(_chat("m", 2))
            while len(other.writes) < 2:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert len(holder.held) == 1 and outlet.writes == other.writes[1:]
