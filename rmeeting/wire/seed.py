"""The seed's (RMeetingControl v0.1) frames, byte-compatible in field names and notice texts.

See ../shared/seed/wire-protocol.md. The seed knows three of rmeeting's flags: ``is_video`` is
``camera``, ``is_mute`` is *not* ``mic``, ``is_change_name`` is ``rename``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..controls import Controls
from ..stores.base import BusEvent, ControlsChanged, MeetingEnded
from ._json import dumps

__all__ = [
    "CONTROL_PREFIX",
    "NOTICE_CHANGED",
    "NOTICE_JOINED",
    "NOTICE_LEFT",
    "SEED_FLAGS",
    "SERVER_NOTICES",
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


def encode_event(event: BusEvent | ControlsChanged | MeetingEnded) -> bytes | None:
    """The seed frame for an event, or None when the seed has nothing to say about it."""
    if isinstance(event, BusEvent):
        data = event.data
        if event.kind == "chat":
            return dumps({"notice": data["text"], "name": data["name"]})
        if event.kind == "joined":
            return dumps({"notice": NOTICE_JOINED, "name": data["name"]})
        if event.kind == "left":
            return dumps({"notice": NOTICE_LEFT, "name": data["name"]})
        if event.kind == "notice":
            code = str(data["code"])
            return dumps({"notice": SERVER_NOTICES.get(code, str(data["message"])), "code": code})
        return None
    if isinstance(event, ControlsChanged):
        out: dict[str, Any] = {"notice": NOTICE_CHANGED}
        for flag, (_old, new) in event.changed.items():
            if flag in _NOTICE_FIELD:
                field, inverted = _NOTICE_FIELD[flag]
                out[field] = (not new) if inverted else new
        return dumps(out) if len(out) > 1 else None
    return dumps({"notice": NOTICE_ENDED, "reason": event.reason})
