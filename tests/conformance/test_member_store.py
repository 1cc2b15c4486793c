"""MemberStore conformance: roster, attendance ledger, bans."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import trio

from rmeeting.stores.base import MeetingFull, MemberRecord


def _member(meeting: str, name: str = "ann", *, instance: str = "i1", **kw: Any) -> MemberRecord:
    return MemberRecord(
        meeting, uuid.uuid4().hex, name, kw.pop("role", "member"), instance, time.time(),
        "cd" * 32, **kw,
    )


async def test_join_roster_leave_once(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a, b = _member(meeting, "ann"), _member(meeting, "bob", role="host")
    await member_store.join(a, max_members=10)
    await member_store.join(b, max_members=10)
    assert [m.member_id for m in await member_store.roster(meeting)] == [a.member_id, b.member_id]
    assert await member_store.get(meeting, b.member_id) == b
    left = [await member_store.leave(meeting, a.member_id, reason="closed") for _ in range(3)]
    assert left[0] == a and left[1:] == [None, None]
    assert [m.member_id for m in await member_store.roster(meeting)] == [b.member_id]


async def test_concurrent_leaves_announce_once(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a = _member(meeting)
    await member_store.join(a, max_members=10)
    got: list[object] = []

    async def leave() -> None:
        got.append(await member_store.leave(meeting, a.member_id, reason="race"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(leave)
    assert [g for g in got if g is not None] == [a]


async def test_max_members(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    await member_store.join(_member(meeting), max_members=2)
    await member_store.join(_member(meeting), max_members=2)
    with pytest.raises(MeetingFull):
        await member_store.join(_member(meeting), max_members=2)
    assert len(await member_store.roster(meeting)) == 2


async def test_the_host_always_has_a_seat(member_store: Any) -> None:
    # strangers with the link fill the meeting: the host still gets in, and is not counted
    meeting = uuid.uuid4().hex
    await member_store.join(_member(meeting), max_members=2)
    await member_store.join(_member(meeting), max_members=2)
    await member_store.join(_member(meeting, "boss", role="host"), max_members=2)
    await member_store.join(_member(meeting, "boss2", role="host"), max_members=2)
    assert len(await member_store.roster(meeting)) == 4
    with pytest.raises(MeetingFull):
        await member_store.join(_member(meeting), max_members=2)
    # hosts present do not take members' seats either
    other = uuid.uuid4().hex
    await member_store.join(_member(other, "boss", role="host"), max_members=1)
    await member_store.join(_member(other), max_members=1)
    with pytest.raises(MeetingFull):
        await member_store.join(_member(other), max_members=1)


async def test_attendance_keeps_every_session(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a = _member(meeting, "ann")
    await member_store.join(a, max_members=10)
    await member_store.update(meeting, a.member_id, {"name": "ann b"})
    await member_store.leave(meeting, a.member_id, reason="closed")
    await member_store.join(a, max_members=10)
    ledger = await member_store.attendance(meeting)
    assert [(e.member_id, e.reason) for e in ledger] == [
        (a.member_id, "closed"), (a.member_id, None)
    ]
    assert ledger[0].left_at is not None and ledger[0].left_at >= ledger[0].joined_at
    assert ledger[0].name == "ann b"
    assert ledger[1].left_at is None
    assert ledger[0].key_hash == a.key_hash


async def test_rejoin_while_present_replaces(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a = _member(meeting)
    await member_store.join(a, max_members=1)
    await member_store.join(a, max_members=1)
    assert len(await member_store.roster(meeting)) == 1
    reasons = [e.reason for e in await member_store.attendance(meeting)]
    assert reasons == ["replaced", None]


async def test_update_only_present_members(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a = _member(meeting)
    await member_store.join(a, max_members=10)
    updated = await member_store.update(meeting, a.member_id, {"camera": True, "mic": True})
    assert updated is not None and updated.camera and updated.mic
    assert (await member_store.get(meeting, a.member_id)) == updated
    assert await member_store.update(meeting, "nobody", {"camera": True}) is None


async def test_bans(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    assert await member_store.is_banned(meeting, "m1") is False
    await member_store.ban(meeting, "m1")
    assert await member_store.is_banned(meeting, "m1") is True
    assert await member_store.is_banned(uuid.uuid4().hex, "m1") is False


async def test_by_instance_and_clear(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a = _member(meeting, instance="inst-a-" + meeting)
    b = _member(meeting, instance="inst-b-" + meeting)
    await member_store.join(a, max_members=10)
    await member_store.join(b, max_members=10)
    assert [m.member_id for m in await member_store.by_instance(a.instance_id)] == [a.member_id]
    cleared = await member_store.clear_meeting(meeting, reason="ended")
    assert {m.member_id for m in cleared} == {a.member_id, b.member_id}
    assert await member_store.roster(meeting) == []
    assert {e.reason for e in await member_store.attendance(meeting)} == {"ended"}


async def test_leave_by_an_instance_the_member_moved_from(member_store: Any) -> None:
    """A member drained off i1 reconnects through i2 before i1 records its leave: i1's late
    leave must not end the presence on i2 (the rolling restart relies on it)."""
    meeting = uuid.uuid4().hex
    on_i1 = _member(meeting, instance="i1")
    await member_store.join(on_i1, max_members=10)
    on_i2 = MemberRecord(meeting, on_i1.member_id, on_i1.name, "member", "i2", time.time(),
                         on_i1.key_hash)
    await member_store.join(on_i2, max_members=10)  # replaces the presence through i1
    assert await member_store.leave(meeting, on_i1.member_id, reason="server shutdown",
                                    instance_id="i1") is None
    assert await member_store.get(meeting, on_i1.member_id) == on_i2
    sessions = await member_store.attendance(meeting)
    assert [(s.reason, s.left_at is None) for s in sessions] == [("replaced", False), (None, True)]
    left = await member_store.leave(meeting, on_i1.member_id, reason="closed", instance_id="i2")
    assert left == on_i2 and await member_store.roster(meeting) == []


async def test_leave_of_one_presence_keeps_a_newer_one(member_store: Any) -> None:
    """A member reconnects (a newer presence, even through the same instance); the old socket's
    leave names its own presence by joined_at and must not end the new one."""
    meeting = uuid.uuid4().hex
    old = _member(meeting)
    await member_store.join(old, max_members=10)
    new = MemberRecord(meeting, old.member_id, old.name, "member", old.instance_id,
                       old.joined_at + 0.000123, old.key_hash)
    await member_store.join(new, max_members=10)
    assert await member_store.leave(meeting, old.member_id, reason="closed",
                                    joined_at=old.joined_at) is None
    assert await member_store.get(meeting, old.member_id) == new
    left = await member_store.leave(meeting, new.member_id, reason="closed",
                                    joined_at=new.joined_at)
    assert left == new and await member_store.roster(meeting) == []
    assert [s.reason for s in await member_store.attendance(meeting)] == ["replaced", "closed"]


async def test_instances_names_those_with_present_members(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    a = _member(meeting, instance="inst-a-" + meeting)
    b = _member(meeting, instance="inst-b-" + meeting)
    await member_store.join(a, max_members=10)
    await member_store.join(b, max_members=10)
    assert {a.instance_id, b.instance_id} <= set(await member_store.instances())
    await member_store.leave(meeting, a.member_id, reason="closed")
    assert a.instance_id not in await member_store.instances()
    assert b.instance_id in await member_store.instances()


async def test_retire_keeps_then_purge_forgets_everything(member_store: Any) -> None:
    meeting, other = uuid.uuid4().hex, uuid.uuid4().hex
    a, b = _member(meeting, "ann", sub="app-user-1"), _member(other, "bob")
    await member_store.join(a, max_members=10)
    await member_store.join(b, max_members=10)
    await member_store.ban(meeting, "m1")
    await member_store.clear_meeting(meeting, reason="meeting ended")
    await member_store.retire(meeting, keep=60)
    # readable while retained (the attendance of an ended meeting), the sub carried along
    sessions = await member_store.attendance(meeting)
    assert [(s.name, s.sub, s.reason) for s in sessions] == [
        ("ann", "app-user-1", "meeting ended")]
    assert await member_store.is_banned(meeting, "m1") is True
    await member_store.purge(meeting)
    assert await member_store.attendance(meeting) == []
    assert await member_store.is_banned(meeting, "m1") is False
    assert await member_store.roster(meeting) == []
    # nothing of another meeting goes with it
    assert [m.member_id for m in await member_store.roster(other)] == [b.member_id]


async def test_the_lobby_hands_each_knock_out_once(member_store: Any) -> None:
    from rmeeting.stores.base import Knock

    meeting = uuid.uuid4().hex
    now = time.time()
    knocks = [Knock(meeting, f"k{i}", f"guest {i}", now + i) for i in range(3)]
    for knock in reversed(knocks):
        await member_store.knock(knock)
    assert await member_store.waiting(meeting) == knocks  # oldest first
    taken: list[Any] = []

    async def take() -> None:
        taken.append(await member_store.take_knock(meeting, "k1"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(take)
    assert [t for t in taken if t is not None] == [knocks[1]]
    assert await member_store.waiting(meeting) == [knocks[0], knocks[2]]
    await member_store.purge(meeting)
    assert await member_store.waiting(meeting) == []
