"""MemberStore conformance, moderation: raised hands and asks to unmute are membership (#14)."""

from __future__ import annotations

import uuid
from typing import Any

from .test_member_store import _member


async def test_hands_keep_the_order_raised(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    ann, bob, cid = (_member(meeting, n) for n in ("ann", "bob", "cid"))
    for record in (ann, bob, cid):
        await member_store.join(record, max_members=10)
    first = await member_store.update(meeting, bob.member_id, {"hand": True})
    second = await member_store.update(meeting, ann.member_id, {"hand": True})
    assert first.hand is not None and second.hand is not None and first.hand <= second.hand
    again = await member_store.update(meeting, bob.member_id, {"hand": True})
    assert again.hand == first.hand  # raising a raised hand keeps its place
    roster = {r.member_id: r for r in await member_store.roster(meeting)}
    assert roster[cid.member_id].hand is None and roster[bob.member_id].hand == first.hand

    lowered = await member_store.update(meeting, bob.member_id, {"hand": False})
    assert lowered.hand is None
    await member_store.update(meeting, cid.member_id, {"hand": True})
    gone = await member_store.lower_hands(meeting)
    assert [r.member_id for r in gone] == [ann.member_id, cid.member_id]
    assert all(r.hand is None for r in await member_store.roster(meeting))
    assert await member_store.lower_hands(meeting) == []


async def test_asks_roles_and_media_rev_are_kept(member_store: Any) -> None:
    meeting = uuid.uuid4().hex
    ann = _member(meeting, "ann")
    await member_store.join(ann, max_members=10)
    updated = await member_store.update(meeting, ann.member_id, {
        "ask_unmute": True, "media_rev": 42, "camera": True, "role": "cohost"})
    assert updated.ask_unmute and updated.media_rev == 42 and updated.role == "cohost"
    got = await member_store.get(meeting, ann.member_id)
    assert got == updated
    assert await member_store.update(meeting, "nobody", {"hand": True}) is None
