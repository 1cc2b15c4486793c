"""MeetingStore conformance, moderation: members' own flags and the host hand-over (#14)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from rmeeting.stores.base import ControlsChanged, MeetingNotFound

from .test_meeting_store import _meta, _serving


async def test_member_flags_set_unset_and_notify(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    mid = meta.meeting_id
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            before = await meeting_store.controls(mid)
            after = await meeting_store.set_member_controls(
                mid, "m1", {"mic": False, "chat": False}, actor="h1")
            assert after.revision > before.revision
            assert after.members == {"m1": {"mic": False, "chat": False}}
            assert not after.may("m1", "mic") and after.may("m2", "mic")
            event = await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                          and e.member_changed)
            assert isinstance(event, ControlsChanged)
            assert event.member_changed == {"m1": {"mic": (None, False), "chat": (None, False)}}
            assert event.changed == {} and event.actor == "h1"
            assert (await meeting_store.controls(mid)).members == after.members

            # null removes the member's own value: the room decides again
            await meeting_store.set_member_controls(mid, "m1", {"mic": None}, actor="h1")
            event = await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                          and "mic" in e.member_changed.get("m1", {})
                                          and e.member_changed["m1"]["mic"][1] is None)
            now = await meeting_store.controls(mid)
            assert now.members == {"m1": {"chat": False}} and now.may("m1", "mic")
            # true allows it even while the room's flag is off
            await meeting_store.set_controls(mid, {"mic": False}, actor="h1")
            await meeting_store.set_member_controls(mid, "m1", {"mic": True}, actor="h1")
            now = await meeting_store.controls(mid)
            assert now.may("m1", "mic") and not now.may("m2", "mic")
            nursery.cancel_scope.cancel()


async def test_member_flags_are_audited_with_the_member(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    mid = meta.meeting_id
    await meeting_store.set_member_controls(mid, "m1", {"camera": False}, actor="h1")
    await meeting_store.record_audit(mid, "mute", True, False, actor="c1", member="m2")
    trail = await meeting_store.audit(mid)
    mine = [(e.flag, e.old, e.new, e.actor, e.member) for e in trail]
    assert ("camera", True, False, "h1", "m1") in mine
    assert ("mute", True, False, "c1", "m2") in mine
    with pytest.raises(MeetingNotFound):
        await meeting_store.record_audit("nope", "mute", True, False, actor="c1", member="m")


async def test_device_changes_are_dated_by_revision(meeting_store: Any) -> None:
    """A device declared before a switch off counts as off, even once the flag is back on."""
    meta = _meta()
    created = await meeting_store.create(meta, {})
    mid = meta.meeting_id
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            declared = created.revision
            off = await meeting_store.set_controls(mid, {"camera": False}, actor="h")
            await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                  and e.controls.revision == off.revision)
            on = await meeting_store.set_controls(mid, {"camera": True}, actor="h")
            await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                  and e.controls.revision == on.revision)
            now = await meeting_store.controls(mid)
            assert not now.device_on("m1", "camera", True, declared)
            assert now.device_on("m1", "camera", True, now.revision)
            assert now.device_on("m1", "mic", True, declared)  # mic never switched
            # one member's block dates that member's device only
            blocked = await meeting_store.set_member_controls(mid, "m1", {"mic": False},
                                                              actor="h")
            await meeting_store.set_member_controls(mid, "m1", {"mic": None}, actor="h")
            await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                  and e.controls.revision > blocked.revision)
            now = await meeting_store.controls(mid)
            assert not now.device_on("m1", "mic", True, declared)
            assert now.device_on("m2", "mic", True, declared)
            nursery.cancel_scope.cancel()


async def test_hand_over_names_the_host(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    mid = meta.meeting_id
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            await meeting_store.set_member_controls(mid, "m1", {"cohost": True}, actor="h")
            assert (await meeting_store.controls(mid)).is_cohost("m1")
            after = await meeting_store.set_host(mid, "m1", actor="h")
            assert after.host == "m1" and not after.is_cohost("m1")
            event = await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                          and e.host_changed is not None)
            assert isinstance(event, ControlsChanged) and event.host_changed == (None, "m1")
            now = await meeting_store.controls(mid)
            assert now.host == "m1" and not now.is_cohost("m1")
            assert ("host", "m1") in [(e.flag, e.member) for e in await meeting_store.audit(mid)]
            nursery.cancel_scope.cancel()


async def test_bad_member_flags_are_refused(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    for bad in ({}, {"locked": False}, {"mic": "off"}, {"nope": True}):
        with pytest.raises((KeyError, ValueError)):
            await meeting_store.set_member_controls(meta.meeting_id, "m1", bad, actor="h")
    with pytest.raises(ValueError):
        await meeting_store.set_member_controls(meta.meeting_id, "a/b", {"mic": False},
                                                actor="h")
    with pytest.raises(MeetingNotFound):
        await meeting_store.set_member_controls("nope", "m1", {"mic": False}, actor="h")
