"""An operator's change (an ``etcdctl put``) is observed by every instance and recorded by one:
the others check a moment later and write only what is missing (``stores/_etcd_audit.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rmeeting.stores.etcd import EtcdMeetingStore

from .etcd_server import EtcdServer, running_etcd
from .test_etcd_store import PREFIX, _meta, audit_of, serving

pytestmark = pytest.mark.etcd

CHANGES = 4


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


async def _flip_and_wait(
    etcd: EtcdServer, stores: list[EtcdMeetingStore], check_after: float = 0.2
) -> str:
    """Make CHANGES operator puts of one meeting's mic; wait until every store made its
    checks (or would have); returns the meeting id."""
    meta = _meta()
    await stores[0].create(meta, {})
    for store in stores:
        store.observed_audits.check_after = check_after
    for k in range(CHANGES):
        await etcd.etcdctl("put", f"{PREFIX}/{meta.meeting_id}/controls/mic",
                           "off" if k % 2 == 0 else "on")
    await audit_of(stores[0], meta.meeting_id, CHANGES)
    while sum(s.observed_audits.checks for s in stores) < CHANGES * sum(
            not s.observed_audits.writes_now("") for s in stores):
        await trio.sleep(0.02)
    return meta.meeting_id


async def test_one_instance_records_each_change_the_other_only_checks(etcd: EtcdServer) -> None:
    with trio.fail_after(20):
        async with serving(etcd) as (chosen, _), serving(etcd) as (other, _):
            chosen.observed_audits.writes_now = lambda change: True
            other.observed_audits.writes_now = lambda change: False
            # the puts come faster than a check is due: the checks that queue meanwhile share
            # one read
            meeting_id = await _flip_and_wait(etcd, [chosen, other], check_after=1.5)
            trail = list(await other.audit(meeting_id))
    assert [(e.flag, e.new, e.actor) for e in trail] == [
        ("mic", k % 2 == 1, "operator") for k in range(CHANGES)]
    assert other.observed_audits.checks == CHANGES
    assert other.observed_audits.fallback_writes == 0  # found them written: wrote nothing
    assert 1 <= other.observed_audits.reads < CHANGES
    assert chosen.observed_audits.checks == 0


async def test_a_change_the_chosen_instance_did_not_record_is_recorded_by_a_check(
    etcd: EtcdServer,
) -> None:
    # nobody writes at once: as when the chosen instance died right after the change
    with trio.fail_after(20):
        async with serving(etcd) as (first, _), serving(etcd) as (second, _):
            for store in (first, second):
                store.observed_audits.writes_now = lambda change: False
            meeting_id = await _flip_and_wait(etcd, [first, second])
            trail = list(await first.audit(meeting_id))
    assert len(trail) == CHANGES  # each once, whoever's check came first
    assert [e.revision for e in trail] == sorted({e.revision for e in trail})
    assert first.observed_audits.fallback_writes + second.observed_audits.fallback_writes \
        >= CHANGES


def test_every_instance_names_the_same_one_and_each_gets_a_share() -> None:
    from rmeeting.cluster.liveness import chosen_instance  # noqa: PLC0415 - the cluster extra

    live = {"i1", "i2", "i3"}
    keys = [f"meeting/{revision}" for revision in range(300)]
    chosen = {key: chosen_instance(live, key) for key in keys}
    assert all(chosen_instance(sorted(live, reverse=True), key) == chosen[key] for key in keys)
    shares = {name: list(chosen.values()).count(name) for name in live}
    assert all(60 < share < 140 for share in shares.values()), shares
    # one goes: only the changes it had move, to the two that stay
    after = {key: chosen_instance(live - {"i2"}, key) for key in keys}
    assert all(after[key] == chosen[key] for key in keys if chosen[key] != "i2")
