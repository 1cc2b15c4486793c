"""The pure parts of moderation: devices and roles from the flags, and the hub applying them."""

from __future__ import annotations

from dataclasses import replace

import trio
from trio.testing import wait_all_tasks_blocked

from rmeeting import wire
from rmeeting.controls import Controls
from rmeeting.events import ControlsChanged, MemberJoined, MemberUpdated
from rmeeting.hub import Hub, Subscriber
from rmeeting.moderation import role_of, view, view_event
from rmeeting.stores.base import MemberRecord

from .test_hub import Recorder


def _controls(**kw: object) -> Controls:
    return replace(Controls(), **kw)  # type: ignore[arg-type]


def test_a_device_is_on_only_if_declared_allowed_and_not_switched_off_since() -> None:
    c = _controls(revision=10, changed_at={"camera": 5})
    assert c.device_on("m", "camera", True, 5) and c.device_on("m", "camera", True, 9)
    assert not c.device_on("m", "camera", True, 4)  # declared before the switch
    assert not c.device_on("m", "camera", False, 9)
    off = replace(c, values={**c.values, "camera": False})
    assert not off.device_on("m", "camera", True, 9)
    # one member's own flag: false blocks it, true allows it while the room's is off
    blocked = replace(c, members={"m": {"mic": False}}, member_changed_at={"m": {"mic": 8}})
    assert not blocked.device_on("m", "mic", True, 9) and blocked.device_on("x", "mic", True, 0)
    allowed = replace(off, members={"m": {"camera": True}}, member_changed_at={"m": {"camera": 7}})
    assert allowed.device_on("m", "camera", True, 7) and not allowed.device_on("m", "camera",
                                                                                 True, 6)


def test_roles_follow_the_flags_and_the_hand_over() -> None:
    c = Controls()
    assert role_of("h", "host", c) == "host" and role_of("m", "member", c) == "member"
    assert role_of("t", "cohost", c) == "cohost"  # joined as one (a join token)
    promoted = _controls(members={"m": {"cohost": True}, "t": {"cohost": False}})
    assert role_of("m", "member", promoted) == "cohost"
    assert role_of("t", "cohost", promoted) == "member"  # demoted
    handed = _controls(host="m")
    assert role_of("m", "member", handed) == "host"
    assert role_of("h", "host", handed) == "member"  # the key's bearer is host no more


def test_view_of_a_record_and_of_an_event() -> None:
    record = MemberRecord("mt", "m", "ann", "member", "i", 1.0, "00", camera=True, mic=True,
                          media_rev=3)
    switched = _controls(values={**Controls().values, "mic": False}, changed_at={"mic": 4})
    seen = view(record, switched)
    assert seen.camera and not seen.mic and seen.role == "member"
    event = MemberUpdated.of(record, {"mic": True, "name": "ann"})
    shown = view_event(event, switched)
    assert shown.changes == {"mic": False, "name": "ann"} and not shown.mic and shown.camera
    joined = MemberJoined.of(record)
    assert view_event(joined, Controls()) is joined  # nothing to change: the same event
    # nor a new record: a v1 welcome views the whole roster, N²/2 of these in a join storm
    assert view(record, Controls()) is record


async def test_the_hub_shows_devices_as_the_latest_controls_say() -> None:
    """A member event published before a switch but fanned out after it shows the device off;
    the switch itself is one frame per member."""
    hub = Hub(shards=1, encoders=wire.encoders())
    outlets = [Recorder() for _ in range(3)]
    record = MemberRecord("mt", "m0", "ann", "member", "i", 1.0, "00", camera=True,
                          media_rev=1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            start = _controls(revision=1)
            for i, outlet in enumerate(outlets):
                await hub.attach(Subscriber("mt", f"m{i}", "v1", outlet), start)
            off = _controls(revision=2, values={**start.values, "camera": False},
                            changed_at={"camera": 2})
            await hub.deliver(ControlsChanged("mt", off, {"camera": (True, False)}, "h"))
            await wait_all_tasks_blocked()
            assert [len(o.writes) for o in outlets] == [1, 1, 1]
            await hub.deliver(MemberUpdated.of(record, {"camera": True}))
            await wait_all_tasks_blocked()
            late = outlets[1].texts()[-1]
            assert late["type"] == "member_updated" and late["changes"] == {"camera": False}
            back_on = _controls(revision=3, changed_at={"camera": 3})
            await hub.deliver(ControlsChanged("mt", back_on, {"camera": (False, True)}, "h"))
            await hub.deliver(MemberJoined.of(record))
            await wait_all_tasks_blocked()
            joined = outlets[2].texts()[-1]["member"]
            assert isinstance(joined, dict) and joined["camera"] is False  # declared at 1 < 3
            nursery.cancel_scope.cancel()
