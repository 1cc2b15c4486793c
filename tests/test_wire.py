"""The wire encoders on their own (sans-io: events in, bytes out; no server).

The seed's frames are checked byte for byte against the seed's wire protocol (compact JSON,
non-ASCII as UTF-8, the seed's field names, order and notice texts); v1's against
docs/protocol.md. The events are made by the few helpers just below, the only lines that know
how an event is built."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from rmeeting.closes import Close, LeaveReason
from rmeeting.controls import Controls
from rmeeting.events import (
    ChatPosted,
    ControlsChanged,
    MeetingEnded,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Notice,
)
from rmeeting.records import MeetingMeta, MemberRecord
from rmeeting.wire import seed, v1
from rmeeting.wire._json import dumps

# --- events, as the stores hand them out -----------------------------------------------------


def chat_event(text: str, name: str = "ann", seq: int = 3, ts: float = 12.5) -> ChatPosted:
    return ChatPosted("m1", "u1", name, "member", text, seq=seq, ts=ts)


def joined_event(name: str = "ann") -> MemberJoined:
    return MemberJoined("m1", "u1", name, "member", False, True, 10.0, ts=12.5)


def left_event(name: str = "ann", reason: LeaveReason = LeaveReason.CLOSED,
               close: tuple[Close, str] | None = None) -> MemberLeft:
    return MemberLeft("m1", "u1", name, "member", 10.0, reason, close, ts=12.5)


def updated_event(**changes: str | bool) -> MemberUpdated:
    return MemberUpdated("m1", "u1", "ann", "member", False, True, 10.0, changes, ts=12.5)


def notice_event(code: str, message: str) -> Notice:
    return Notice("m1", code, message, ts=12.5)


def controls_event(actor: str = "u1", expires_at: float | None = None,
                   **changed: tuple[bool, bool]) -> ControlsChanged:
    values = {flag: new for flag, (_old, new) in changed.items()}
    return ControlsChanged("m1", Controls.from_partial(values, 42), changed, actor, expires_at)


def ended_event(reason: str) -> MeetingEnded:
    return MeetingEnded("m1", reason)


# --- the seed, byte for byte ---------------------------------------------------------------


def test_seed_join_and_leave_notices() -> None:
    assert seed.encode_event(joined_event("张三")) == \
        '{"notice":"有成员加入会议室","name":"张三"}'.encode()
    assert seed.encode_event(left_event("bob")) == \
        '{"notice":"有成员离开会议室","name":"bob"}'.encode()
    # the seed never announced renames or camera/mic changes
    assert seed.encode_event(updated_event(name="ann")) is None


@pytest.mark.parametrize("text", ["hi", "", "你好 👋", 'a "quoted" \\ back', "line\nbreak\t",
                                  "<script>&amp;</script>", "特殊消息9{}", "x" * 2000])
def test_seed_chat_is_the_text_as_sent(text: str) -> None:
    frame = seed.encode_event(chat_event(text, name="ann"))
    assert frame == b'{"notice":' + json.dumps(text, ensure_ascii=False).encode() + \
        b',"name":"ann"}'
    assert frame is not None and json.loads(frame) == {"notice": text, "name": "ann"}


def test_seed_room_state_field_order_and_the_inverted_mute() -> None:
    controls = Controls.from_partial({"mic": False, "camera": True, "rename": False}, 1)
    assert seed.room_state(controls, "uid-1") == \
        b'{"is_mute":true,"is_change_name":false,"is_video":true,"user_uid":"uid-1"}'
    assert seed.room_state(Controls(), "u") == \
        b'{"is_mute":false,"is_change_name":true,"is_video":true,"user_uid":"u"}'


def test_seed_control_change_notices() -> None:
    changed = "会议室状态发送变更"
    assert seed.encode_event(controls_event(mic=(True, False))) == \
        f'{{"notice":"{changed}","isMute":true}}'.encode()
    assert seed.encode_event(controls_event(camera=(True, False))) == \
        f'{{"notice":"{changed}","isVideo":false}}'.encode()
    assert seed.encode_event(controls_event(rename=(False, True))) == \
        f'{{"notice":"{changed}","isChangeName":true}}'.encode()
    both = seed.encode_event(controls_event(mic=(False, True), camera=(False, True)))
    assert both is not None and json.loads(both) == \
        {"notice": changed, "isMute": False, "isVideo": True}
    # flags the seed never knew: nothing to tell its clients
    assert seed.encode_event(controls_event(locked=(False, True))) is None
    assert seed.encode_event(controls_event(chat=(True, False))) is None


def test_seed_flag_table_matches_the_control_frames() -> None:
    assert seed.CONTROL_PREFIX == "特殊消息" and len(seed.CONTROL_PREFIX.encode()) == 12
    assert seed.SEED_FLAGS["1"] == ("isMute", "mic", True)
    assert seed.SEED_FLAGS["2"] == ("isVideo", "camera", False)


def test_seed_server_notices_end_and_errors() -> None:
    assert seed.encode_event(notice_event("chat_unavailable", "chat is down")) == \
        '{"notice":"聊天暂时不可用，消息不会送达","code":"chat_unavailable"}'.encode()
    assert seed.encode_event(notice_event("new_code", "something")) == \
        b'{"notice":"something","code":"new_code"}'
    assert seed.encode_event(ended_event("ended by the host")) == \
        '{"notice":"会议已结束","reason":"ended by the host"}'.encode()
    assert seed.error("bad frame") == b'{"error":"bad frame"}'


# --- v1 ---------------------------------------------------------------------------------------


def _decoded(frame: bytes | None) -> dict[str, Any]:
    assert frame is not None
    data: dict[str, Any] = json.loads(frame)
    assert frame == dumps(data)  # compact UTF-8, as every frame
    return data


def test_v1_chat_frame() -> None:
    assert _decoded(v1.encode_event(chat_event("你好", seq=7, ts=3.25))) == {
        "type": "chat", "seq": 7, "ts": 3.25,
        "from": {"id": "u1", "name": "ann", "role": "member"}, "text": "你好",
    }


def test_v1_member_frames() -> None:
    member = {"id": "u1", "name": "ann", "role": "member", "camera": False, "mic": True,
              "joined_at": 10.0}
    # a new presence: no hand up, no ask to unmute (the roster's fields, #14)
    assert _decoded(v1.encode_event(joined_event())) == {
        "type": "member_joined", "member": {**member, "hand": None, "ask_unmute": False},
        "ts": 12.5}
    left = _decoded(v1.encode_event(left_event(reason=LeaveReason.KICKED,
                                               close=(Close.KICKED, "removed by the host"))))
    assert left == {"type": "member_left", "ts": 12.5, "reason": "kicked",
                    "member": {"id": "u1", "name": "ann", "role": "member", "joined_at": 10.0}}
    assert _decoded(v1.encode_event(updated_event(name="ann"))) == \
        {"type": "member_updated", "member": member, "ts": 12.5, "changes": {"name": "ann"}}


def test_v1_controls_end_and_notice_frames() -> None:
    frame = _decoded(v1.encode_event(controls_event("u9", 99.0, mic=(True, False))))
    assert frame == {
        "type": "controls",
        "controls": {"camera": True, "mic": False, "rename": True, "chat": True,
                     "locked": False},
        "revision": 42, "changed": {"mic": False}, "by": "u9", "expires_at": 99.0,
    }
    assert list(frame["controls"]) == ["camera", "mic", "rename", "chat", "locked"]
    assert _decoded(v1.encode_event(ended_event("host"))) == \
        {"type": "meeting_ended", "reason": "host"}
    assert _decoded(v1.encode_event(notice_event("chat_gap", "lost some"))) == \
        {"type": "notice", "code": "chat_gap", "message": "lost some", "ts": 12.5}


def test_v1_replies_echo_the_id_only_when_given() -> None:
    assert v1.ack(None) == b'{"type":"ack"}'
    assert v1.ack(5) == b'{"type":"ack","id":5}'
    assert v1.ack("a", "pong") == b'{"type":"pong","id":"a"}'
    assert _decoded(v1.error("rate_limited", "slow down", reply_to=2, retry_after=0.5)) == {
        "type": "error", "code": "rate_limited", "message": "slow down", "retry_after": 0.5,
        "id": 2}
    assert b'"id"' not in v1.error("bad_frame", "not JSON")


def test_json_is_compact_utf8() -> None:
    assert dumps({"a": [1, 2.5, None, True], "b": "é"}) == \
        b'{"a":[1,2.5,null,true],"b":"\xc3\xa9"}'


# --- the v1 welcome's roster entries, encoded once per member while it stays -----------------


def _record(meeting_id: str, member_id: str, name: str) -> MemberRecord:
    return MemberRecord(meeting_id, member_id, name, "member", "i1", 1.0, "h")


def _welcome_roster(meeting_id: str, roster: list[MemberRecord]) -> list[dict[str, Any]]:
    frame = v1.welcome(you=roster[-1], token="t", meta=MeetingMeta(meeting_id, "m", 1.0, "h"),
                       controls=Controls(), roster=roster, last_seq=0, recent=None)
    got: list[dict[str, Any]] = json.loads(frame)["roster"]
    return got


def test_welcome_roster_is_current_and_the_cache_keeps_no_one_who_left() -> None:
    """A meeting with churn (the soak's: members come and go all day) must not grow what the
    encoder keeps: only the current roster of each recent meeting is cached."""
    meeting_id = "churn-" + str(id(object()))
    stayers = [_record(meeting_id, f"s{i}", f"stayer {i}") for i in range(3)]
    for i in range(200):
        roster = [*stayers, _record(meeting_id, f"c{i}", f"churner {i}")]
        got = _welcome_roster(meeting_id, roster)
        assert got == [r.public() for r in roster]
        assert len(v1._rosters[meeting_id]) == 4
    # a renamed member is a new record: its entry is made again, not served stale
    renamed = [*stayers[:2], dataclasses.replace(stayers[2], name="new name")]
    assert _welcome_roster(meeting_id, renamed)[2]["name"] == "new name"


def test_the_cache_keeps_the_rosters_of_a_bounded_number_of_meetings() -> None:
    for i in range(v1.ROSTER_MEETINGS + 50):
        meeting_id = f"many-{i}"
        _welcome_roster(meeting_id, [_record(meeting_id, "a", "a")])
    assert len(v1._rosters) == v1.ROSTER_MEETINGS
