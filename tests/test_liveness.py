"""Liveness against a real etcd, in one process: instances here are Liveness tasks over services
that share memory member stores, so a death, a lost lease and an orphan can be staged exactly.
(tests/test_cluster_faults.py kills real instance processes.)"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rmeeting import wire
from rmeeting.closes import LeaveReason
from rmeeting.cluster.liveness import Liveness
from rmeeting.cluster.presence import Presence
from rmeeting.hub import Hub
from rmeeting.service import MeetingService
from rmeeting.stores.base import MeetingMeta, MemberRecord
from rmeeting.stores.memory import MemoryChatLog, MemoryMeetingStore, MemoryMemberStore

from .conftest import make_config
from .etcd_server import EtcdServer, running_etcd

pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test."""
    yield from running_etcd(tmp_path)


class Stores:
    def __init__(self) -> None:
        self.meetings = MemoryMeetingStore()
        self.members = MemoryMemberStore()
        self.chat = MemoryChatLog()


class CountingPresence(Presence):
    cleanups: list[tuple[str, str]] = []

    async def end_lost(self, instance_id: str, *, before: float) -> int:
        self.cleanups.append((self.instance_id, instance_id))
        return await super().end_lost(instance_id, before=before)


class Frozen(CountingPresence):
    """An instance about to die: it no longer repairs its own presences."""

    async def reconcile(self) -> None:
        pass


def _service(etcd: EtcdServer, stores: Stores, instance_id: str) -> MeetingService:
    config = make_config(etcd=(etcd.endpoint,), instance_id=instance_id, instance_ttl=1)
    return MeetingService(config, meetings=stores.meetings, members=stores.members,
                          chat=stores.chat, hub=Hub(1, encoders=wire.encoders()),
                          instance_id=instance_id)


def _record(meeting: str, instance: str, joined_at: float | None = None) -> MemberRecord:
    return MemberRecord(meeting, uuid.uuid4().hex[:16], "ann", "member", instance,
                        time.time() if joined_at is None else joined_at, "cd" * 32)


async def _start(nursery: trio.Nursery, service: MeetingService,
                 presence: Presence | None = None) -> tuple[Liveness, trio.CancelScope]:
    liveness = Liveness(service.config, presence or CountingPresence(service))
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await liveness.serve(task_status=task_status)

    await nursery.start(run)
    return liveness, scope


async def _until(check: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.1)


async def test_a_dead_instance_is_cleaned_up_by_exactly_one(
    nursery: trio.Nursery, etcd: EtcdServer
) -> None:
    stores = Stores()
    CountingPresence.cleanups = []
    meeting = "m1"
    await stores.meetings.create(MeetingMeta(meeting, "m", time.time(), "00" * 32), {})
    doomed = [_record(meeting, "dead"), _record(meeting, "dead")]
    for record in doomed:
        await stores.members.join(record, max_members=10)
    dead_service = _service(etcd, stores, "dead")
    dead, dead_scope = await _start(nursery, dead_service, Frozen(dead_service))
    for name in ("s1", "s2"):
        await _start(nursery, _service(etcd, stores, name))
    await trio.sleep(1.5)  # everyone has seen everyone
    dead._lease = 0  # so it does not revoke: it dies as a kill -9 would, its lease runs out
    dead_scope.cancel()

    async def cleaned() -> bool:
        return not await stores.members.by_instance("dead")

    await _until(cleaned)
    await trio.sleep(1.5)  # time for a second clean-up, if there were to be one
    assert [lost for _, lost in CountingPresence.cleanups] == ["dead"]
    sessions = await stores.members.attendance(meeting)
    assert [s.reason for s in sessions] == ["instance lost", "instance lost"]
    claim = json.loads((await etcd.etcdctl(
        "get", "--print-value-only", "/rmeeting/cleanup/dead")).strip())
    assert claim["done"] is True and claim["by"] == CountingPresence.cleanups[0][0]


async def test_a_lost_lease_registers_again_with_the_members(
    nursery: trio.Nursery, etcd: EtcdServer
) -> None:
    stores = Stores()
    service = _service(etcd, stores, "solo")
    await nursery.start(service.hub.serve)
    meeting = (await service.create_meeting("m")).meta.meeting_id
    joined = await service.join(meeting, name="ann", protocol="v1", outlet=_Outlet())
    liveness, _ = await _start(nursery, service, Presence(service))
    await trio.sleep(0.5)  # its startup sweep is over: the next one is 30 s away
    first_lease = liveness._lease
    # cut off long enough for the others to remove its member, and for its lease to go
    await stores.members.leave(meeting, joined.record.member_id, reason="instance lost")
    await etcd.etcdctl("lease", "revoke", f"{first_lease:x}")

    async def back() -> bool:
        present = await stores.members.get(meeting, joined.record.member_id) is not None
        return present and liveness._lease != first_lease

    await _until(back, 5)
    assert liveness._lease != first_lease
    again = await stores.members.get(meeting, joined.record.member_id)
    assert again is not None and again.joined_at > joined.record.joined_at
    assert joined.sub.record == again  # its own leave will name the new presence
    assert "solo" in await etcd.etcdctl("get", "--keys-only", "/rmeeting/instances/solo")
    await service.disconnected(joined, LeaveReason.CLOSED)
    assert await stores.members.roster(meeting) == []


async def test_the_startup_sweep_ends_orphans_and_an_earlier_run(
    nursery: trio.Nursery, etcd: EtcdServer
) -> None:
    stores = Stores()
    orphan = _record("m1", "ghost")  # its instance died while nobody was watching
    earlier = _record("m1", "me", joined_at=time.time() - 60)  # this id's previous run
    for record in (orphan, earlier):
        await stores.members.join(record, max_members=10)
    await _start(nursery, _service(etcd, stores, "me"))

    async def swept() -> bool:
        return await stores.members.roster("m1") == []

    await _until(swept, 5)
    reasons = {s.member_id: s.reason for s in await stores.members.attendance("m1")}
    assert reasons == {orphan.member_id: "instance lost", earlier.member_id: "instance lost"}


class _Outlet:
    def send_frame_nowait(self, frame: bytes) -> bool:
        return True

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        pass

