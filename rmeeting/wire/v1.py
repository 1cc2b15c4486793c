"""rmeeting's typed JSON WebSocket protocol, version 1 (docs/protocol.md).

Every frame is one JSON object with a ``type``. Server events are encoded once per broadcast
here; what only one member receives (welcome, errors, acks) too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..controls import Controls
from ..stores.base import BusEvent, ControlsChanged, MeetingEnded, MeetingMeta, MemberRecord
from ._json import dumps

__all__ = ["ack", "chat", "encode_event", "error", "message", "welcome"]

_KINDS = {
    "joined": "member_joined",
    "left": "member_left",
    "updated": "member_updated",
}


def message(type_: str, **fields: Any) -> bytes:
    return dumps({"type": type_, **fields})


def error(code: str, message_: str, *, reply_to: Any = None, **fields: Any) -> bytes:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message_, **fields}
    if reply_to is not None:
        out["id"] = reply_to
    return dumps(out)


def ack(reply_to: Any, type_: str = "ack", **fields: Any) -> bytes:
    """The answer to a client frame; ``id`` echoes the frame's own, when it had one."""
    out: dict[str, Any] = {"type": type_, **fields}
    if reply_to is not None:
        out["id"] = reply_to
    return dumps(out)


def chat(event: BusEvent) -> dict[str, Any]:
    """A chat event as a JSON object: the live frame, and an item of a welcome's history."""
    data = event.data
    return {
        "type": "chat",
        "seq": event.seq,
        "ts": event.ts,
        "from": {"id": data["id"], "name": data["name"], "role": data["role"]},
        "text": data["text"],
    }


def welcome(
    *,
    you: MemberRecord,
    token: str,
    meta: MeetingMeta,
    controls: Controls,
    roster: Iterable[MemberRecord],
    last_seq: int,
    recent: Iterable[BusEvent] | None,
    missed: Iterable[BusEvent] | None = None,
    gap: bool = False,
    resumed: bool = False,
) -> bytes:
    """The first frame a member gets: the meeting as it stands, and its own identity.

    ``recent`` on a plain join; ``missed`` (and ``gap``) when the client said what it last saw."""
    out: dict[str, Any] = {
        "type": "welcome",
        "you": you.public(),
        "token": token,
        "meeting": {"id": meta.meeting_id, "name": meta.name, "created_at": meta.created_at},
        "controls": controls.as_dict(),
        "revision": controls.revision,
        "roster": [r.public() for r in roster],
        "last_seq": last_seq,
        "resumed": resumed,
    }
    if recent is not None:
        out["chat"] = [chat(e) for e in recent]
    if missed is not None:
        out["missed"] = [chat(e) for e in missed]
        out["gap"] = gap
    return dumps(out)


def encode_event(event: BusEvent | ControlsChanged | MeetingEnded) -> bytes | None:
    if isinstance(event, BusEvent):
        data = event.data
        if event.kind == "chat":
            return dumps(chat(event))
        if event.kind == "notice":  # from this instance, not a member: {code, message, ...}
            return dumps({"type": "notice", **data, "ts": event.ts})
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
