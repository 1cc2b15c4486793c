"""MeetingStore conformance: every implementation keeps these promises."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from rmeeting.controls import DEFAULTS
from rmeeting.stores.base import (
    ControlsChanged,
    MeetingEnded,
    MeetingEvent,
    MeetingMeta,
    MeetingNotFound,
    RevisionConflict,
)

from .conftest import AUDIT_LIMIT


def _meta(name: str = "standup") -> MeetingMeta:
    return MeetingMeta(uuid.uuid4().hex, name, time.time(), "ab" * 32)


class Events:
    def __init__(self) -> None:
        self.items: list[MeetingEvent] = []
        self._changed = trio.Event()

    async def __call__(self, event: MeetingEvent) -> None:
        self.items.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Any, timeout: float = 5) -> MeetingEvent:
        with trio.fail_after(timeout):
            while True:
                for item in self.items:
                    if predicate(item):
                        return item
                await self._changed.wait()


async def _serving(nursery: trio.Nursery, store: Any) -> Events:
    events = Events()
    await nursery.start(store.serve_events, events)
    return events


async def test_create_get_list_and_defaults(meeting_store: Any) -> None:
    meta = _meta()
    controls = await meeting_store.create(meta, {"camera": False})
    assert controls.as_dict() == {**DEFAULTS, "camera": False}
    assert controls.revision > 0
    got = await meeting_store.get(meta.meeting_id)
    assert got is not None and got.name == "standup" and got.host_key_hash == meta.host_key_hash
    assert meta.meeting_id in {m.meeting_id for m in await meeting_store.list()}
    assert await meeting_store.get("no-such-meeting") is None
    with pytest.raises(MeetingNotFound):
        await meeting_store.controls("no-such-meeting")


async def test_record_and_controls_are_read_together(meeting_store: Any) -> None:
    meta = _meta("all-hands")
    created = await meeting_store.create(meta, {"chat": False})
    snap = await meeting_store.record_and_controls(meta.meeting_id)
    assert snap is not None
    got, controls = snap
    assert got.name == "all-hands" and got.host_key_hash == meta.host_key_hash
    assert controls == created and not controls["chat"]
    changed = await meeting_store.set_controls(meta.meeting_id, {"locked": True}, actor="t")
    snap = await meeting_store.record_and_controls(meta.meeting_id)
    assert snap is not None and snap[1] == changed and snap[1]["locked"]
    assert await meeting_store.record_and_controls("no-such-meeting") is None
    await meeting_store.end(meta.meeting_id, reason="done")
    assert await meeting_store.record_and_controls(meta.meeting_id) is None


async def test_set_controls_bumps_revision_and_notifies(meeting_store: Any) -> None:
    meta = _meta()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            first = await meeting_store.create(meta, {})
            after = await meeting_store.set_controls(
                meta.meeting_id, {"mic": False}, actor="host-1"
            )
            assert after["mic"] is False and after.revision > first.revision
            event = await events.wait_for(
                lambda e: isinstance(e, ControlsChanged) and e.meeting_id == meta.meeting_id
            )
            assert isinstance(event, ControlsChanged)
            assert event.changed == {"mic": (True, False)}
            assert event.actor == "host-1"
            assert event.controls.revision == after.revision
            assert (await meeting_store.controls(meta.meeting_id)).revision == after.revision
            nursery.cancel_scope.cancel()


async def test_revisions_only_grow(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    seen = []
    for i in range(5):
        c = await meeting_store.set_controls(meta.meeting_id, {"camera": i % 2 == 0}, actor="h")
        seen.append(c.revision)
    assert seen == sorted(seen) and len(set(seen)) == 5


async def test_compare_and_set(meeting_store: Any) -> None:
    meta = _meta()
    start = await meeting_store.create(meta, {})
    won = await meeting_store.set_controls(
        meta.meeting_id, {"chat": False}, actor="a", expected_revision=start.revision
    )
    with pytest.raises(RevisionConflict):
        await meeting_store.set_controls(
            meta.meeting_id, {"chat": True}, actor="b", expected_revision=start.revision
        )
    assert (await meeting_store.controls(meta.meeting_id))["chat"] is False
    await meeting_store.set_controls(
        meta.meeting_id, {"chat": True}, actor="b", expected_revision=won.revision
    )
    assert (await meeting_store.controls(meta.meeting_id))["chat"] is True


async def test_concurrent_compare_and_set_has_one_winner(meeting_store: Any) -> None:
    meta = _meta()
    start = await meeting_store.create(meta, {})
    outcomes: list[str] = []

    async def attempt(value: bool) -> None:
        try:
            await meeting_store.set_controls(
                meta.meeting_id, {"locked": value}, actor=str(value),
                expected_revision=start.revision,
            )
            outcomes.append("won")
        except RevisionConflict:
            outcomes.append("lost")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(attempt, i % 2 == 0)
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]


async def test_audit_records_each_change(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    c1 = await meeting_store.set_controls(meta.meeting_id, {"camera": False}, actor="h1")
    c2 = await meeting_store.set_controls(
        meta.meeting_id, {"camera": True, "mic": False}, actor="h2"
    )
    trail = await meeting_store.audit(meta.meeting_id)
    got = sorted((e.flag, e.old, e.new, e.revision, e.actor) for e in trail)
    assert got == sorted([
        ("camera", True, False, c1.revision, "h1"),
        ("camera", False, True, c2.revision, "h2"),
        ("mic", True, False, c2.revision, "h2"),
    ])


async def test_audit_keeps_the_newest_records_only(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    revisions = []
    for i in range(AUDIT_LIMIT + 5):
        changed = await meeting_store.set_controls(
            meta.meeting_id, {"chat": i % 2 == 1}, actor=f"h{i}")
        revisions.append(changed.revision)
    trail = await meeting_store.audit(meta.meeting_id)
    # the oldest were dropped; the newest are all there, in order
    assert [e.revision for e in trail] == revisions[-AUDIT_LIMIT:]
    assert [e.actor for e in trail] == [f"h{i}" for i in range(5, AUDIT_LIMIT + 5)]


async def test_count_is_the_number_of_meetings_without_reading_them(meeting_store: Any) -> None:
    metas = [_meta() for _ in range(3)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            for meta in metas:
                await meeting_store.create(meta, {})
            await meeting_store.end(metas[0].meeting_id, reason="done")
            # the watch handles changes in order: once this one is seen, so are those before
            await meeting_store.set_controls(metas[2].meeting_id, {"chat": False}, actor="h")
            await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                  and e.meeting_id == metas[2].meeting_id)

            async def no_full_read() -> None:
                raise AssertionError("count() must not list every meeting")

            meeting_store.list = no_full_read
            assert await meeting_store.count() == 2
            nursery.cancel_scope.cancel()


async def test_end_meeting_notifies_and_forgets(meeting_store: Any) -> None:
    meta = _meta()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            await meeting_store.create(meta, {})
            assert await meeting_store.end(meta.meeting_id, reason="host ended") is True
            assert await meeting_store.end(meta.meeting_id, reason="again") is False
            await events.wait_for(
                lambda e: isinstance(e, MeetingEnded) and e.meeting_id == meta.meeting_id
            )
            assert await meeting_store.get(meta.meeting_id) is None
            with pytest.raises(MeetingNotFound):
                await meeting_store.set_controls(meta.meeting_id, {"mic": False}, actor="h")
            nursery.cancel_scope.cancel()


async def test_timed_change_returns_to_default(
    meeting_store: Any, store_clock: MockClock | None
) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            await meeting_store.create(meta, {})
            start = trio.current_time()
            await meeting_store.set_controls(meta.meeting_id, {"mic": False}, actor="h", ttl=1)
            assert (await meeting_store.controls(meta.meeting_id))["mic"] is False
            back = await events.wait_for(
                lambda e: isinstance(e, ControlsChanged) and e.changed.get("mic") == (False, True),
                timeout=15,
            )
            assert isinstance(back, ControlsChanged)
            if store_clock is not None:  # on virtual time: back at the ttl, not before or after
                assert 1.0 <= trio.current_time() - start < 1.0001
            assert (await meeting_store.controls(meta.meeting_id))["mic"] is True
            nursery.cancel_scope.cancel()


async def test_later_change_cancels_timer(
    meeting_store: Any, store_clock: MockClock | None
) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await _serving(nursery, meeting_store)
            await meeting_store.create(meta, {})
            await meeting_store.set_controls(meta.meeting_id, {"mic": False}, actor="h", ttl=1)
            await meeting_store.set_controls(meta.meeting_id, {"mic": False}, actor="h")
            await trio.sleep(3)
            assert (await meeting_store.controls(meta.meeting_id))["mic"] is False
            nursery.cancel_scope.cancel()


# --- ends, tombstones and tickets (issue #12) --------------------------------------------------


async def test_racing_ends_have_one_winner_and_leave_one_tombstone(meeting_store: Any) -> None:
    meta = _meta("lifecycle")
    await meeting_store.create(meta, {})
    await meeting_store.set_controls(meta.meeting_id, {"camera": False}, actor="h1")
    results: dict[str, bool] = {}

    async def end(reason: str) -> None:
        results[reason] = await meeting_store.end(meta.meeting_id, reason=reason, retention=60)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(end, f"reason {i}")
    winners = [reason for reason, won in results.items() if won]
    assert len(results) == 6 and len(winners) == 1
    grave = await meeting_store.tombstone(meta.meeting_id)
    assert grave is not None and grave.reason == winners[0]
    assert grave.meta.name == "lifecycle" and grave.meta.host_key_hash == meta.host_key_hash
    assert [(e.flag, e.old, e.new, e.actor) for e in grave.audit] == [
        ("camera", True, False, "h1")]
    assert time.time() - 5 < grave.ended_at <= time.time() < grave.purge_at
    # a tombstone is not a meeting
    assert await meeting_store.get(meta.meeting_id) is None
    assert meta.meeting_id not in {m.meeting_id for m in await meeting_store.list()}
    assert meta.meeting_id not in {m.meeting_id for m in await meeting_store.snapshot()}
    assert await meeting_store.end(meta.meeting_id, reason="again", retention=60) is False


async def test_tombstone_lasts_the_retention_only(meeting_store: Any) -> None:
    kept, unkept = _meta(), _meta()
    for meta in (kept, unkept):
        await meeting_store.create(meta, {})
    assert await meeting_store.end(kept.meeting_id, reason="r", retention=1.5)
    assert await meeting_store.end(unkept.meeting_id, reason="r") is True
    assert await meeting_store.tombstone(unkept.meeting_id) is None  # no retention, no tombstone
    assert await meeting_store.tombstone(kept.meeting_id) is not None
    with trio.fail_after(10):
        while await meeting_store.tombstone(kept.meeting_id) is not None:
            await trio.sleep(0.1)
    due = await meeting_store.purge_due()
    # memory hands the ids over to be purged; etcd's lease purges the tombstone by itself
    assert kept.meeting_id in due or not due
    assert await meeting_store.tombstone(kept.meeting_id) is None


async def test_tickets_are_single_use_and_short_lived(meeting_store: Any) -> None:
    await meeting_store.put_ticket("h1", {"meeting_id": "m", "host": True}, 30)
    taken: list[Any] = []

    async def take() -> None:
        taken.append(await meeting_store.take_ticket("h1"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(take)
        assert [t for t in taken if t is not None] == [{"meeting_id": "m", "host": True}]
        assert await meeting_store.take_ticket("never-issued") is None
        await meeting_store.put_ticket("h2", {"meeting_id": "m"}, 0.5)
        await trio.sleep(0.7)
        assert await meeting_store.take_ticket("h2") is None


async def test_update_meta_merges_extra(meeting_store: Any) -> None:
    meta = _meta()
    await meeting_store.create(meta, {})
    updated = await meeting_store.update_meta(meta.meeting_id, {"join_policy": "lobby"})
    assert updated.extra == {"join_policy": "lobby"} and updated.name == meta.name
    got = await meeting_store.get(meta.meeting_id)
    assert got is not None and got.extra == {"join_policy": "lobby"}
    assert (await meeting_store.controls(meta.meeting_id))["camera"] is True
    with pytest.raises(MeetingNotFound):
        await meeting_store.update_meta("no-such-meeting", {"join_policy": "open"})


async def test_a_change_that_changes_nothing_keeps_the_revision(meeting_store: Any) -> None:
    """A no-op change (flags set to the values they have, no timer) writes nothing: it answers
    with the revision a read of the controls carries, and the last event told, so the ack and
    the PATCH's ETag name a revision a GET and an event carry (the etcd store once returned
    etcd's global revision of a write that no event reported, issue #10)."""
    meta = _meta()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            events = await _serving(nursery, meeting_store)
            await meeting_store.create(meta, {"mic": False})
            changed = await meeting_store.set_controls(meta.meeting_id, {"mic": True}, actor="h")
            told = await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                         and e.meeting_id == meta.meeting_id)
            assert isinstance(told, ControlsChanged)
            assert told.controls.revision == changed.revision
            for change in ({"mic": True}, {"mic": True, "camera": DEFAULTS["camera"]}):
                same = await meeting_store.set_controls(meta.meeting_id, change, actor="h")
                read = await meeting_store.controls(meta.meeting_id)
                assert same.revision == read.revision == changed.revision
                assert same.as_dict() == read.as_dict() == {**DEFAULTS, "mic": True}
            # a change that does change something is still told, with the revision it returns
            later = await meeting_store.set_controls(meta.meeting_id, {"mic": False}, actor="h")
            assert later.revision > changed.revision
            await events.wait_for(lambda e: isinstance(e, ControlsChanged)
                                  and e.controls.revision == later.revision)
            nursery.cancel_scope.cancel()
