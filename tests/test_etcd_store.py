"""The etcd MeetingStore beyond the conformance suite: operators, outages, several instances.

Every test runs against a real etcd (tests/etcd.py) and changes it with the real etcdctl.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from rmeeting.controls import DEFAULTS
from rmeeting.stores.base import (
    ControlsChanged,
    MeetingEnded,
    MeetingMeta,
    RevisionConflict,
    StoreUnavailable,
)
from rmeeting.stores.etcd import EtcdMeetingStore, open_etcd_meeting_store

from .conformance.test_meeting_store import Events as ConformanceEvents
from .etcd_server import EtcdServer, running_etcd

pytestmark = pytest.mark.etcd

PREFIX = "/rmeeting/meetings"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test (as ``etcd_server`` in tests/etcd.py)."""
    yield from running_etcd(tmp_path)


class Events(ConformanceEvents):
    """The conformance suite's recording handler, plus taking changes one at a time."""

    async def next_change(self, meeting_id: str, timeout: float = 5) -> ControlsChanged:
        """The first ControlsChanged of that meeting not taken yet (taking it)."""
        event = await self.wait_for(
            lambda e: isinstance(e, ControlsChanged) and e.meeting_id == meeting_id, timeout
        )
        self.items.remove(event)
        assert isinstance(event, ControlsChanged)
        return event


def _meta() -> MeetingMeta:
    return MeetingMeta(uuid.uuid4().hex, "standup", time.time(), "ab" * 32)


@asynccontextmanager
async def serving(
    etcd: EtcdServer, timeout: float = 2.0, endpoint: str | None = None
) -> AsyncIterator[tuple[EtcdMeetingStore, Events]]:
    """A store on ``etcd`` (through ``endpoint``, if given) whose serve_events runs for the
    block."""
    endpoints = [endpoint or etcd.endpoint]
    async with open_etcd_meeting_store(endpoints, timeout=timeout) as store:
        events = Events()
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve_events, events)
            yield store, events
            nursery.cancel_scope.cancel()


async def test_operator_put_is_applied_attributed_and_audited(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (store, events):
            await store.create(meta, {})
            key = f"{PREFIX}/{meta.meeting_id}/controls/camera"
            expected = []
            value = True
            for spelling in ["false", " TRUE ", "off", "1", "No", "yes"]:
                await etcd.etcdctl("put", key, spelling)
                event = await events.next_change(meta.meeting_id)
                assert event.actor == "operator"
                assert event.changed == {"camera": (value, not value)}
                assert event.controls["camera"] is (not value)
                expected.append(("camera", value, not value, event.controls.revision, "operator"))
                value = not value
            assert (await store.controls(meta.meeting_id))["camera"] is True
            trail = await store.audit(meta.meeting_id)
            assert [(e.flag, e.old, e.new, e.revision, e.actor) for e in trail] == expected
            assert store.invalid_values == 0


async def test_invalid_values_are_counted_and_ignored(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (store, events):
            await store.create(meta, {"mic": False})
            home = f"{PREFIX}/{meta.meeting_id}"
            await etcd.etcdctl("put", f"{home}/controls/mic", "maybe")
            await etcd.etcdctl("put", f"{home}/controls/mic", "")
            await etcd.etcdctl("put", f"{home}/controls/video", "true")  # no such flag
            # controls() never returns garbage: the last valid value stands.
            assert (await store.controls(meta.meeting_id))["mic"] is False
            # A valid change afterwards works, and is the only event: nothing for the others.
            await etcd.etcdctl("put", f"{home}/controls/chat", "false")
            event = await events.next_change(meta.meeting_id)
            assert event.changed == {"chat": (True, False)}
            assert event.controls["mic"] is False
            assert events.items == []
            assert store.invalid_values == 2
            assert store.unknown_keys == 1
            await etcd.etcdctl("put", f"{home}/controls/mic", "yes")
            event = await events.next_change(meta.meeting_id)
            assert event.changed == {"mic": (False, True)}
            # A store that never saw a valid value reads the default, not garbage.
            await etcd.etcdctl("put", f"{home}/controls/locked", "maybe")
            async with open_etcd_meeting_store([etcd.endpoint]) as fresh:
                assert (await fresh.controls(meta.meeting_id)).as_dict() == {
                    **DEFAULTS, "chat": False
                }


async def test_deleting_keys_restores_defaults_and_ends(etcd: EtcdServer) -> None:
    meta, other = _meta(), _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (store, events):
            await store.create(meta, {})
            await store.create(other, {})
            await store.set_controls(meta.meeting_id, {"mic": False}, actor="host")
            assert (await events.next_change(meta.meeting_id)).actor == "host"
            home = f"{PREFIX}/{meta.meeting_id}"
            await etcd.etcdctl("del", f"{home}/controls/mic")
            event = await events.next_change(meta.meeting_id)
            assert event.changed == {"mic": (False, True)} and event.actor == "operator"
            assert (await store.controls(meta.meeting_id)).revision == event.controls.revision
            trail = await store.audit(meta.meeting_id)
            assert [(e.flag, e.old, e.new, e.actor) for e in trail] == [
                ("mic", True, False, "host"), ("mic", False, True, "operator"),
            ]

            await etcd.etcdctl("del", "--prefix", f"{home}/")
            await etcd.etcdctl("del", f"{PREFIX}/{other.meeting_id}/meta")
            for gone in (meta, other):
                ended = await events.wait_for(
                    lambda e, m=gone: isinstance(e, MeetingEnded) and e.meeting_id == m.meeting_id
                )
                assert ended == MeetingEnded(gone.meeting_id, "deleted in etcd")
            await etcd.etcdctl("del", "--prefix", f"{home}/")  # nothing left to end
            await trio.sleep(0.2)
            assert [type(e) for e in events.items] == [MeetingEnded, MeetingEnded]
            assert await store.get(meta.meeting_id) is None


async def test_watch_survives_etcd_restart(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(30):
        async with serving(etcd, timeout=1.0) as (store, events):
            await store.create(meta, {})
            assert await store.ready()
            etcd.kill()
            with trio.fail_after(5):
                while await store.ready():
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            etcd.start()  # same ports, same data
            await etcd.etcdctl("put", f"{PREFIX}/{meta.meeting_id}/controls/camera", "0")
            event = await events.next_change(meta.meeting_id, timeout=10)
            assert event.changed == {"camera": (True, False)} and event.actor == "operator"
            with trio.fail_after(10):
                while not await store.ready():
                    await trio.sleep(0.05)
            # Resumed from the last revision + 1: nothing before the outage came twice.
            assert events.items == []


class CuttableLink:
    """A loopback TCP relay to etcd that can be cut: the store's network, unplugged and
    plugged back in (etcd and etcdctl carry on meanwhile)."""

    def __init__(self, port: int) -> None:
        self._target = port
        self.port = 0
        self._cut = False
        self._open: set[trio.CancelScope] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._relay, listeners, task_status=task_status)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            if self._cut:
                return
            with trio.CancelScope() as scope:
                self._open.add(scope)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self._target)
                    async with upstream, trio.open_nursery() as nursery:
                        for src, dst in ((client, upstream), (upstream, client)):
                            nursery.start_soon(self._pump, src, dst, nursery.cancel_scope)
                finally:
                    self._open.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream,
                    both: trio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send_all(chunk)
        except trio.BrokenResourceError:
            pass
        both.cancel()

    def cut(self) -> None:
        self._cut = True
        for scope in self._open:
            scope.cancel()

    def restore(self) -> None:
        self._cut = False


async def test_compacted_watch_resyncs_from_a_snapshot(etcd: EtcdServer) -> None:
    kept, gone = _meta(), _meta()
    link = CuttableLink(etcd.client_port)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(link.serve)
            async with serving(etcd, endpoint=link.endpoint) as (store, events):
                for meta in (kept, gone):  # and wait until the watcher has seen both
                    await store.create(meta, {})
                    await store.set_controls(meta.meeting_id, {"chat": False}, actor="host")
                    await events.next_change(meta.meeting_id)
                link.cut()  # cut off from etcd: changes pile up unseen
                while await store.ready():
                    await trio.sleep(0.05)
                home = f"{PREFIX}/{kept.meeting_id}"
                await etcd.etcdctl("put", f"{home}/controls/camera", "false")
                await etcd.etcdctl("put", f"{home}/controls/mic", "off")
                await etcd.etcdctl("del", "--prefix", f"{PREFIX}/{gone.meeting_id}/")
                await etcd.etcdctl("compact", str(await etcd.revision()))
                assert events.items == []
                link.restore()
                event = await events.next_change(kept.meeting_id)
                assert event.actor == "snapshot"
                assert event.changed == {"camera": (True, False), "mic": (True, False)}
                current = await store.controls(kept.meeting_id)
                assert current.revision == event.controls.revision
                await events.wait_for(
                    lambda e: isinstance(e, MeetingEnded) and e.meeting_id == gone.meeting_id
                )
                trail = await store.audit(kept.meeting_id)
                assert [(e.flag, e.new, e.actor) for e in trail] == [
                    ("chat", False, "host"), ("camera", False, "operator"),
                    ("mic", False, "operator"),
                ]
                # And the watch goes on from the snapshot.
                await etcd.etcdctl("put", f"{home}/controls/camera", "true")
                event = await events.next_change(kept.meeting_id)
                assert event.changed == {"camera": (False, True)} and event.actor == "operator"
            nursery.cancel_scope.cancel()


async def test_timed_change_expires_without_the_instance_that_set_it(
    etcd: EtcdServer,
) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (b, events):
            async with open_etcd_meeting_store([etcd.endpoint]) as a:
                await a.create(meta, {})
                before = time.time()
                await a.set_controls(meta.meeting_id, {"mic": False}, actor="host", ttl=1)
            # ``a`` is closed: only etcd's lease can bring the default back.
            timed = await events.next_change(meta.meeting_id)
            assert timed.actor == "host" and timed.changed == {"mic": (True, False)}
            assert timed.expires_at is not None and timed.expires_at >= before + 1
            back = await events.next_change(meta.meeting_id, timeout=15)
            assert back.actor == "timer" and back.changed == {"mic": (False, True)}
            assert (await b.controls(meta.meeting_id))["mic"] is True
            trail = await b.audit(meta.meeting_id)
            assert [(e.flag, e.new, e.actor) for e in trail] == [
                ("mic", False, "host"), ("mic", True, "timer"),
            ]


async def test_compare_and_set_race_between_instances(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with open_etcd_meeting_store([etcd.endpoint]) as a, \
                open_etcd_meeting_store([etcd.endpoint]) as b:
            revision = (await a.create(meta, {})).revision
            outcomes: list[str] = []

            async def attempt(store: EtcdMeetingStore, rev: int, value: bool) -> None:
                try:
                    await store.set_controls(
                        meta.meeting_id, {"locked": value}, actor="x", expected_revision=rev
                    )
                    outcomes.append("won")
                except RevisionConflict:
                    outcomes.append("lost")

            for round_ in range(5):
                outcomes.clear()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(attempt, a, revision, round_ % 2 == 0)
                    nursery.start_soon(attempt, b, revision, round_ % 2 == 0)
                assert sorted(outcomes) == ["lost", "won"]
                revision = (await b.controls(meta.meeting_id)).revision


async def test_changes_reach_every_instance(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (a, a_events), serving(etcd) as (b, b_events):
            await a.create(meta, {})
            done = await a.set_controls(meta.meeting_id, {"chat": False}, actor="host-1")
            for events in (a_events, b_events):
                event = await events.next_change(meta.meeting_id)
                assert event.actor == "host-1" and event.changed == {"chat": (True, False)}
                assert event.controls.revision == done.revision
            assert (await b.controls(meta.meeting_id)).revision == done.revision
            assert await a.end(meta.meeting_id, reason="host ended")
            for events in (a_events, b_events):
                ended = await events.wait_for(lambda e: isinstance(e, MeetingEnded))
                assert ended == MeetingEnded(meta.meeting_id, "host ended")


async def test_cancel_while_etcd_is_down_is_prompt_and_idle(etcd: EtcdServer) -> None:
    def watch_threads() -> int:
        return sum(t.name == "rmeeting-etcd-watch" for t in threading.enumerate())

    with trio.fail_after(20):
        async with open_etcd_meeting_store([etcd.endpoint], timeout=1.0) as store:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.serve_events, Events())
                etcd.kill()
                await trio.sleep(0.3)
                # While etcd is down the watch waits in grpc's backoff: no thread spins.
                cpu = time.process_time()
                await trio.sleep(1.0)
                assert time.process_time() - cpu < 0.5
                assert not await store.ready()
                cancelled_at = trio.current_time()
                nursery.cancel_scope.cancel()
            assert trio.current_time() - cancelled_at < 3
            with trio.fail_after(3):
                while watch_threads():
                    await trio.sleep(0.05)


async def test_calls_while_etcd_is_down_fail_within_the_timeout(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with open_etcd_meeting_store([etcd.endpoint], timeout=1.0) as store:
            await store.create(meta, {})
            etcd.kill()
            for call in (
                lambda: store.controls(meta.meeting_id),
                lambda: store.set_controls(meta.meeting_id, {"mic": False}, actor="h"),
                lambda: store.get(meta.meeting_id),
            ):
                started = trio.current_time()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert trio.current_time() - started < 1.5
            assert not await store.ready()
            etcd.start()
            with trio.fail_after(10):
                while not await store.ready():
                    await trio.sleep(0.05)
            assert (await store.controls(meta.meeting_id))["mic"] is True


async def test_create_ignores_keys_left_without_a_meeting(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (store, events):
            # An operator's flag for a meeting that does not exist: ignored, and swept by create.
            await etcd.etcdctl("put", f"{PREFIX}/{meta.meeting_id}/controls/mic", "false")
            controls = await store.create(meta, {"chat": False})
            assert controls.as_dict() == {**DEFAULTS, "chat": False}
            assert (await store.controls(meta.meeting_id)).as_dict() == controls.as_dict()
            with pytest.raises(ValueError):
                await store.create(meta, {})
            await trio.sleep(0.2)
            assert events.items == []


async def test_fails_over_to_a_reachable_endpoint(etcd: EtcdServer) -> None:
    meta = _meta()
    dead = "http://127.0.0.1:1"  # nothing listens there: connection refused at once
    with trio.fail_after(20):
        async with open_etcd_meeting_store([dead, etcd.endpoint], timeout=2.0) as store:
            events = Events()
            async with trio.open_nursery() as nursery:
                await nursery.start(store.serve_events, events)
                await store.create(meta, {})
                await store.set_controls(meta.meeting_id, {"rename": False}, actor="host")
                event = await events.next_change(meta.meeting_id)
                assert event.changed == {"rename": (True, False)}
                assert await store.ready()
                nursery.cancel_scope.cancel()
