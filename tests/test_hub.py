"""The hub on its own, with recording outlets: order, once-per-protocol encoding, stale drops."""

from __future__ import annotations

import json

import trio

from rmeeting.controls import Controls
from rmeeting.hub import Hub, Subscriber
from rmeeting.stores.base import BusEvent, ControlsChanged


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


def _chat(meeting: str, seq: int) -> BusEvent:
    return BusEvent(meeting, "chat", {"id": "s", "name": "s", "role": "member", "text": str(seq)},
                    seq, 0.0)


async def test_frames_in_order_then_the_close() -> None:
    hub = Hub(shards=1)
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
            await hub.deliver(BusEvent("m", "left", {"id": "u", "name": "u", "role": "member",
                                                     "reason": "kicked", "close": [4003, "x"]}))
            while outlet.closed is None:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [m.get("seq") for m in outlet.texts()][:6] == [1, 2, 3, 4, 5, 6]
    assert outlet.closed == (4003, "x")


async def test_encoded_once_per_protocol_and_stale_controls_dropped() -> None:
    hub = Hub(shards=2)
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
