"""Members' own flags and the host key in etcd, written by an operator with etcdctl (#14).

The same parsing rules as the room's flags: any accepted spelling, invalid values logged,
counted and ignored (the last valid value holds), a deleted key restores the default (the room
decides), and a compacted watch resyncs them from a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .etcd_server import EtcdServer, running_etcd
from .test_etcd_store import PREFIX, CuttableLink, _meta, serving

pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


async def test_operator_restricts_one_member(etcd: EtcdServer) -> None:
    meta = _meta()
    with trio.fail_after(20):
        async with serving(etcd) as (store, events):
            await store.create(meta, {})
            home = f"{PREFIX}/{meta.meeting_id}/members/m1"
            await etcd.etcdctl("put", f"{home}/mic", " OFF ")
            event = await events.next_change(meta.meeting_id)
            assert event.actor == "operator" and event.changed == {}
            assert event.member_changed == {"m1": {"mic": (None, False)}}
            controls = await store.controls(meta.meeting_id)
            assert not controls.may("m1", "mic") and controls.may("m2", "mic")
            assert controls.revision == event.controls.revision
            # garbage and unknown member flags: logged, counted, ignored
            await etcd.etcdctl("put", f"{home}/mic", "perhaps")
            await etcd.etcdctl("put", f"{home}/video", "true")
            await etcd.etcdctl("put", f"{home}/chat", "no")
            event = await events.next_change(meta.meeting_id)
            assert event.member_changed == {"m1": {"chat": (None, False)}}
            assert events.items == []
            assert store.invalid_values == 1 and store.unknown_keys == 1
            assert not (await store.controls(meta.meeting_id)).may("m1", "mic")
            # promoted by hand, then deleting the key restores the default
            await etcd.etcdctl("put", f"{home}/cohost", "yes")
            assert (await events.next_change(meta.meeting_id)).controls.is_cohost("m1")
            await etcd.etcdctl("del", f"{home}/mic")
            event = await events.next_change(meta.meeting_id)
            assert event.member_changed == {"m1": {"mic": (False, None)}}
            assert event.controls.may("m1", "mic")
            trail = [(e.flag, e.old, e.new, e.actor, e.member)
                     for e in await store.audit(meta.meeting_id)]
            assert ("mic", True, False, "operator", "m1") in trail
            assert ("chat", True, False, "operator", "m1") in trail


async def test_host_key_by_hand_and_a_resync(etcd: EtcdServer) -> None:
    meta = _meta()
    link = CuttableLink(etcd.client_port)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(link.serve)
            async with serving(etcd, endpoint=link.endpoint) as (store, events):
                await store.create(meta, {})
                home = f"{PREFIX}/{meta.meeting_id}"
                await etcd.etcdctl("put", f"{home}/host", "m7")
                event = await events.next_change(meta.meeting_id)
                assert event.host_changed == (None, "m7") and event.controls.host == "m7"
                await etcd.etcdctl("put", f"{home}/host", "not/a member")  # ignored, counted
                await etcd.etcdctl("put", f"{home}/members/m1/camera", "false")
                event = await events.next_change(meta.meeting_id)
                assert event.host_changed is None and event.controls.host == "m7"
                assert store.invalid_values == 1
                link.cut()  # cut off: changes pile up, then the log is compacted
                while await store.ready():
                    await trio.sleep(0.05)
                await etcd.etcdctl("del", f"{home}/members/m1/camera")
                await etcd.etcdctl("put", f"{home}/members/m2/rename", "0")
                await etcd.etcdctl("put", f"{home}/host", "m2")
                await etcd.etcdctl("compact", str(await etcd.revision()))
                link.restore()
                event = await events.next_change(meta.meeting_id)
                assert event.actor == "snapshot" and event.host_changed == ("m7", "m2")
                assert event.member_changed == {"m1": {"camera": (False, None)},
                                                "m2": {"rename": (None, False)}}
                assert (await store.controls(meta.meeting_id)).members == {
                    "m2": {"rename": False}}
            nursery.cancel_scope.cancel()
