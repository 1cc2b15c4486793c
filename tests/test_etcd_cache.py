"""The etcd meeting cache on its own (sans-io: key changes in, events out; no etcd started).

What the watcher makes of one revision's key changes, and of a fresh snapshot after a compacted
watch: the event every instance fans out, who it names as the actor, what is counted as a
hand-written mistake. The same cases run end to end against a real etcd in test_etcd_store.py;
here each one is exact and instant. Events are read by their fields only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmeeting.controls import DEFAULTS, InvalidControlValue, parse_flag_value
from rmeeting.stores._etcd_cache import ENDED_IN_ETCD, Keys, MeetingCache, Read
from rmeeting.stores.base import MeetingNotFound
from rmeeting.stores.etcd_client import Change

KEYS = Keys("/rmeeting")
META = json.dumps({"name": "standup", "created_at": 1.5, "host_key_hash": "ab"}).encode()


def put(sub: str, value: bytes, mod: int, lease: int = 0, meeting: str = "m1") -> Change:
    return Change(False, KEYS.home(meeting, sub), value, mod, lease)


def delete(sub: str, mod: int, meeting: str = "m1") -> Change:
    return Change(True, KEYS.home(meeting, sub), b"", mod, 0)


@dataclass
class KV:
    """A key as a range read returns it (what ``replace`` is given)."""

    key: bytes
    value: bytes
    mod_revision: int
    lease: int = 0


def apply(cache: MeetingCache, meeting: str, revision: int,
          changes: list[Change]) -> tuple[Any, bool]:
    """``cache.apply``, its event read by its fields (whichever class it is)."""
    return cache.apply(meeting, revision, changes)


def created(revision: int = 10) -> MeetingCache:
    cache = MeetingCache(KEYS)
    event, audit = apply(cache, "m1", revision, [put("meta", META, revision)])
    assert event is None and audit is False  # a creation is not a change
    return cache


def test_keys_layout_and_refused_ids() -> None:
    assert KEYS.meta("m1") == b"/rmeeting/meetings/m1/meta"
    assert KEYS.flag("m1", "mic") == b"/rmeeting/meetings/m1/controls/mic"
    assert KEYS.actor("m1") == b"/rmeeting/meetings/m1/actor"
    assert KEYS.end_marker("m1") == b"/rmeeting/meetings/m1"
    assert Keys("/p/").root == b"/p/meetings/"
    assert KEYS.split(b"/rmeeting/meetings/m1/controls/mic") == ("m1", "controls/mic")
    assert KEYS.split(b"/rmeeting/meetings/m1") == ("m1", None)
    assert KEYS.split(b"/rmeeting/meetings/m\xff/meta") == ("m\ufffd", "meta")
    for bad in ("", "a/b", "/"):
        with pytest.raises(MeetingNotFound):
            KEYS.meta(bad)


def test_an_operator_put_is_a_change_to_audit() -> None:
    cache = created()
    event, audit = apply(cache, "m1", 11, [put("controls/mic", b"false", 11)])
    assert event is not None and audit is True
    assert event.actor == "operator" and event.changed == {"mic": (True, False)}
    assert event.controls["mic"] is False and event.controls.revision == 11
    # the same value again changes nothing: no event
    assert apply(cache, "m1", 12, [put("controls/mic", b" FALSE\n", 12)]) == (None, False)


def test_a_write_with_its_actor_key_names_the_writer() -> None:
    cache = created()
    actor = json.dumps({"actor": "host-1", "expires_at": 99.0, "at": 50.25}).encode()
    event, audit = apply(cache, "m1", 11, [put("controls/camera", b"false", 11, lease=7),
                                          put("actor", actor, 11)])
    assert event is not None and audit is False  # set_controls audits its own writes
    assert event.actor == "host-1" and event.expires_at == 99.0 and event.written_at == 50.25
    # an actor key that is not JSON, or names nobody: the change still counts, as an operator's
    event, _ = apply(cache, "m1", 12, [put("controls/chat", b"0", 12), put("actor", b"{", 12)])
    assert event is not None and event.actor == "operator" and event.expires_at is None


def test_an_invalid_value_keeps_the_last_valid_one_and_is_counted() -> None:
    cache = created()
    apply(cache, "m1", 11, [put("controls/mic", b"off", 11)])
    for revision, junk in enumerate((b"maybe", b"\xff\xfe", b"", b"1" * 5000), start=12):
        assert apply(cache, "m1", revision, [put("controls/mic", junk, revision)]) == (None, False)
    assert cache.invalid_values == 4
    assert cache.meetings["m1"].values["mic"] is False


def test_unknown_flags_and_other_keys_are_ignored() -> None:
    cache = created()
    assert apply(cache, "m1", 11, [put("controls/volume", b"true", 11)]) == (None, False)
    assert apply(cache, "m1", 12, [put("audit/x", b"{}", 12), put("other", b"1", 12)]) \
        == (None, False)
    assert cache.unknown_keys == 1 and cache.invalid_values == 0
    assert cache.meetings["m1"].values == dict(DEFAULTS)


def test_deleted_flags_return_to_the_default_by_timer_or_operator() -> None:
    cache = created()
    apply(cache, "m1", 11, [put("controls/mic", b"false", 11, lease=5),
                           put("controls/camera", b"false", 11)])
    event, audit = apply(cache, "m1", 12, [delete("controls/mic", 12)])
    assert event is not None and event.actor == "timer" and audit is True
    assert event.changed == {"mic": (False, True)} and event.controls.revision == 12
    event, _ = apply(cache, "m1", 13, [delete("controls/camera", 13)])
    assert event is not None and event.actor == "operator"


def test_the_end_of_a_meeting_and_its_reason() -> None:
    cache = created()
    marker = Change(False, KEYS.end_marker("m1"), b'{"reason": "host ended"}', 11, 0)
    event, audit = apply(cache, "m1", 11, [marker, delete("meta", 11)])
    assert event is not None and event.reason == "host ended" and audit is False
    assert "m1" not in cache.meetings
    # deleted with etcdctl (no marker): a reason still; a meeting nobody knew: nothing
    cache = created()
    event, _ = apply(cache, "m1", 11, [delete("meta", 11)])
    assert event is not None and event.reason == ENDED_IN_ETCD
    assert apply(cache, "m1", 12, [delete("meta", 12)]) == (None, False)


def test_keys_of_an_unknown_meeting_make_no_event() -> None:
    cache = MeetingCache(KEYS)
    assert apply(cache, "m1", 5, [put("controls/mic", b"false", 5)]) == (None, False)
    assert cache.meetings == {}


def test_a_hand_written_meta_still_means_the_meeting_exists() -> None:
    cache = MeetingCache(KEYS)
    apply(cache, "m1", 5, [put("meta", b"not json", 5)])
    assert cache.meetings["m1"].meta.name == "" and cache.meetings["m1"].meta.created_at == 0.0


def test_a_snapshot_tells_what_changed_while_unwatched() -> None:
    cache = created()
    apply(cache, "m1", 11, [put("controls/mic", b"false", 11)])
    apply(cache, "m2", 12, [put("meta", META, 12, meeting="m2")])
    snapshot: list[Any] = [
        KV(KEYS.meta("m1"), META, 10),
        KV(KEYS.flag("m1", "camera"), b"false", 20),  # an operator's put meanwhile
        KV(KEYS.flag("m1", "chat"), b"garbage", 21),  # hand-written junk: the default stays
        # mic's key was deleted meanwhile: back to the default, at no known revision
        # m2's keys are gone: it ended
    ]
    events, audits = cache.replace(30, snapshot)
    by_meeting: dict[str, Any] = {e.meeting_id: e for e in events}
    assert set(by_meeting) == {"m1", "m2"}
    m1 = by_meeting["m1"]
    assert m1.actor == "snapshot"
    assert m1.changed == {"camera": (True, False), "mic": (False, True)}
    assert by_meeting["m2"].reason == ENDED_IN_ETCD
    assert audits == [("m1", 20, {"camera": (True, False)})]  # the put, at its own revision
    assert cache.invalid_values == 1 and cache.meetings["m1"].revision == 30
    # the same snapshot again: nothing new, the junk not counted twice
    assert cache.replace(31, snapshot) == ([], [])
    assert cache.invalid_values == 1 and cache.meetings["m1"].revision == 30


def test_direct_reads_agree_with_the_watcher() -> None:
    cache = created()
    apply(cache, "m1", 11, [put("controls/mic", b"false", 11)])
    read = Read(40)
    read.absorb("meta", KV(KEYS.meta("m1"), META, 10))
    read.absorb("controls/mic", KV(KEYS.flag("m1", "mic"), b"false", 11))
    assert cache.revision("m1", read) == 11 and cache.values("m1", read)["mic"] is False
    # a key the watcher has not seen yet: the read's own last change
    read.absorb("controls/camera", KV(KEYS.flag("m1", "camera"), b"bad", 41))
    assert cache.revision("m1", read) == 41
    assert cache.values("m1", read)["camera"] is True  # invalid: the last valid (the default)
    assert cache.invalid_values == 0  # counted by the watcher only


# --- any sequence of hand-written puts and deletes: the cache agrees with a plain model -------

SPELLINGS = [b"true", b"false", b" On ", b"NO\n", b"1", b"0"]
OPS = st.tuples(
    st.sampled_from([*DEFAULTS, "bogus"]),
    st.one_of(st.none(), st.sampled_from(SPELLINGS), st.binary(max_size=12)),  # None: delete
)


@settings(database=None, deadline=None, max_examples=300)
@given(st.lists(OPS, max_size=30))
def test_any_operator_history(ops: list[tuple[str, bytes | None]]) -> None:
    cache = created()
    model, invalid, unknown = dict(DEFAULTS), 0, 0
    for revision, (flag, value) in enumerate(ops, start=11):
        change = delete(f"controls/{flag}", revision) if value is None else \
            put(f"controls/{flag}", value, revision)
        before = dict(model)
        if flag not in DEFAULTS:
            unknown += value is not None
        elif value is None:
            model[flag] = DEFAULTS[flag]
        else:
            try:
                model[flag] = parse_flag_value(value)
            except InvalidControlValue:
                invalid += 1
        event, _ = apply(cache, "m1", revision, [change])
        changed = {f: (before[f], model[f]) for f in DEFAULTS if before[f] != model[f]}
        assert (event.changed if event is not None else {}) == changed
        assert cache.meetings["m1"].values == model
    assert (cache.invalid_values, cache.unknown_keys) == (invalid, unknown)
