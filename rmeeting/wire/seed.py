"""The seed's (RMeetingControl v0.1) frames, byte-compatible in field names and notice texts.

See ../shared/seed/wire-protocol.md. The seed knows three of rmeeting's flags: ``is_video`` is
``camera``, ``is_mute`` is *not* ``mic``, ``is_change_name`` is ``rename``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, assert_never

from ..controls import Controls
from ..events import (
    ChatPosted,
    ControlsChanged,
    HubEvent,
    LobbyChanged,
    MeetingEnded,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Notice,
)
from ..transport.websocket import text_frame
from ._json import dumps

__all__ = [
    "CONTROL_PREFIX",
    "ENCODER",
    "NOTICE_CHANGED",
    "NOTICE_JOINED",
    "NOTICE_LEFT",
    "SEED_FLAGS",
    "SERVER_NOTICES",
    "SeedEncoder",
    "encode_event",
    "error",
    "room_state",
]

NOTICE_JOINED = "有成员加入会议室"
NOTICE_LEFT = "有成员离开会议室"
NOTICE_CHANGED = "会议室状态发送变更"
NOTICE_ENDED = "会议已结束"
#: a server notice (``notice`` events): code -> text; the frame also carries the code
SERVER_NOTICES: Mapping[str, str] = {
    "chat_unavailable": "聊天暂时不可用，消息不会送达",
    "chat_available": "聊天已恢复",
    "chat_gap": "部分聊天消息未能恢复",
}
#: a control frame starts with these four characters, then one digit, then a JSON object
CONTROL_PREFIX = "特殊消息"

#: control-frame digit -> (JSON field, rmeeting flag, does true mean the flag is off?)
SEED_FLAGS: Mapping[str, tuple[str, str, bool]] = {
    "1": ("isMute", "mic", True),
    "2": ("isVideo", "camera", False),
    "3": ("isChangeName", "rename", False),
}
_NOTICE_FIELD = {flag: (field, inverted) for field, flag, inverted in SEED_FLAGS.values()}


def room_state(controls: Controls, user_uid: str) -> bytes:
    return dumps({
        "is_mute": not controls["mic"],
        "is_change_name": controls["rename"],
        "is_video": controls["camera"],
        "user_uid": user_uid,
    })


def error(message: str) -> bytes:
    return dumps({"error": message})


def encode_event(event: HubEvent) -> bytes | None:
    """The seed frame's payload for an event, or None when the seed has nothing to say."""
    match event:
        case ChatPosted():
            return dumps({"notice": event.text, "name": event.name})
        case MemberJoined():
            return dumps({"notice": NOTICE_JOINED, "name": event.name})
        case MemberLeft():
            return dumps({"notice": NOTICE_LEFT, "name": event.name})
        case MemberUpdated():
            return None  # the seed never announced renames or camera/mic changes
        case LobbyChanged():
            return None  # the seed has no lobby: a seed host admits nobody (docs/protocol.md)
        case Notice():
            code = event.code
            return dumps({"notice": SERVER_NOTICES.get(code, event.message), "code": code})
        case ControlsChanged():
            out: dict[str, Any] = {"notice": NOTICE_CHANGED}
            for flag, (_old, new) in event.changed.items():
                if flag in _NOTICE_FIELD:
                    field, inverted = _NOTICE_FIELD[flag]
                    out[field] = (not new) if inverted else new
            return dumps(out) if len(out) > 1 else None
        case MeetingEnded():
            return dumps({"notice": NOTICE_ENDED, "reason": event.reason})
        case _:
            assert_never(event)


class SeedEncoder:
    """The hub's encoder for seed members (``rmeeting.hub.Encoder``)."""

    def frame(self, event: HubEvent) -> bytes | None:
        payload = encode_event(event)
        return None if payload is None else text_frame(payload)

    def own_join_frame(self, controls: Controls, user_uid: str) -> bytes | None:
        # the seed's quirk: right after its own join notice, a member gets the room state
        return text_frame(room_state(controls, user_uid))

    def roster_frame(self, events: Sequence[MemberJoined | MemberLeft]) -> bytes | None:
        return None  # the seed's clients know one notice per join or leave, nothing else


ENCODER = SeedEncoder()
