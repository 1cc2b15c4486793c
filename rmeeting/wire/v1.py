"""rmeeting's typed JSON WebSocket protocol, version 1 (docs/protocol.md).

Every frame is one JSON object with a ``type``. Server events are encoded once per broadcast
here; what only one member receives (welcome, errors, acks) too.
"""

from __future__ import annotations

from typing import Any

from ..stores.base import BusEvent, ControlsChanged, MeetingEnded
from ._json import dumps

__all__ = ["encode_event", "error", "message"]

_KINDS = {
    "joined": "member_joined",
    "left": "member_left",
    "updated": "member_updated",
}


def message(type_: str, **fields: Any) -> bytes:
    return dumps({"type": type_, **fields})


def error(code: str, message_: str, **fields: Any) -> bytes:
    return dumps({"type": "error", "code": code, "message": message_, **fields})


def encode_event(event: BusEvent | ControlsChanged | MeetingEnded) -> bytes | None:
    if isinstance(event, BusEvent):
        data = event.data
        if event.kind == "chat":
            return dumps({
                "type": "chat",
                "seq": event.seq,
                "ts": event.ts,
                "from": {"id": data["id"], "name": data["name"], "role": data["role"]},
                "text": data["text"],
            })
        kind = _KINDS.get(event.kind)
        if kind is None:
            return None
        member = {k: v for k, v in data.items() if k not in ("reason", "changes", "close")}
        out: dict[str, Any] = {"type": kind, "member": member, "ts": event.ts}
        if "reason" in data:
            out["reason"] = data["reason"]
        if "changes" in data:
            out["changes"] = data["changes"]
        return dumps(out)
    if isinstance(event, ControlsChanged):
        return dumps({
            "type": "controls",
            "controls": event.controls.as_dict(),
            "revision": event.controls.revision,
            "changed": {flag: new for flag, (_old, new) in event.changed.items()},
            "by": event.actor,
            "expires_at": event.expires_at,
        })
    return dumps({"type": "meeting_ended", "reason": event.reason})
