"""The webhook events: their types, their ids, and the JSON body every endpoint receives.

An event's id (the ``webhook-id`` header) is derived from what happened, never drawn at random,
wherever the same happening can be seen by several instances: every instance's etcd watch sees a
control change, so each builds the same ``controls.changed`` id from the meeting and the etcd
revision, and the outbox keeps only the first (see ``rmeeting.webhooks.outbox``). The id stays the
same across retries; receivers dedupe by it and order by the body's ``timestamp``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from ..stores.base import ControlsChanged, MeetingEnded, MeetingMeta, MemberRecord

__all__ = [
    "EVENT_TYPES",
    "LOBBY_TYPES",
    "EventType",
    "LobbyType",
    "WebhookEvent",
    "controls_changed",
    "event_id",
    "lobby_event",
    "meeting_created",
    "meeting_ended",
    "member_joined",
    "member_left",
]

EventType = Literal[
    "meeting.created",
    "meeting.ended",
    "member.joined",
    "member.left",
    "controls.changed",
    # the lobby's (a member waits to be let in; the host admits or refuses it)
    "member.waiting",
    "member.admitted",
    "member.refused",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
LobbyType = Literal["member.waiting", "member.admitted", "member.refused"]
LOBBY_TYPES: tuple[LobbyType, ...] = get_args(LobbyType)


def event_id(kind: str, *parts: object) -> str:
    """``msg_`` + 32 hex digits of a hash of what identifies the happening."""
    text = "\x1f".join([kind, *(repr(p) for p in parts)])
    return "msg_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: EventType
    #: epoch seconds when it happened (the body carries it as RFC 3339 UTC)
    timestamp: float
    data: Mapping[str, Any]
    #: the id of an event whose dedupe mark this one clears: a meeting created again under the
    #: same id must be able to end again (its ``meeting.ended`` id is the same)
    clears: str | None = field(default=None, compare=False)

    def body(self) -> str:
        """The POST body, the Standard Webhooks payload: ``{"type", "timestamp", "data"}``."""
        stamp = datetime.fromtimestamp(self.timestamp, UTC).isoformat().replace("+00:00", "Z")
        # ASCII: a lone surrogate in a member's name stays an escape, never unencodable bytes
        return json.dumps({"type": self.type, "timestamp": stamp, "data": self.data},
                          separators=(",", ":"), allow_nan=False)

    def to_json(self) -> str:
        """What the outbox stores (``from_json`` reads it back)."""
        return json.dumps({"id": self.id, "type": self.type, "timestamp": self.timestamp,
                           "data": self.data}, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> WebhookEvent:
        """ValueError, TypeError or KeyError if it is not what ``to_json`` wrote."""
        obj = json.loads(raw)
        kind, stamp, data, ident = obj["type"], obj["timestamp"], obj["data"], obj["id"]
        if kind not in EVENT_TYPES or not isinstance(data, dict) or not isinstance(ident, str):
            raise TypeError("not a webhook event")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            raise TypeError("timestamp must be a number")
        return cls(ident, kind, float(stamp), data)


# --- one builder per happening -------------------------------------------------------------------


def meeting_created(meta: MeetingMeta) -> WebhookEvent:
    return WebhookEvent(
        event_id("meeting.created", meta.meeting_id, meta.created_at), "meeting.created",
        meta.created_at, {"meeting_id": meta.meeting_id, "name": meta.name},
        clears=_ended_id(meta.meeting_id),
    )


def _ended_id(meeting_id: str) -> str:
    return event_id("meeting.ended", meeting_id)


def meeting_ended(event: MeetingEnded, *, at: float | None = None) -> WebhookEvent:
    # every instance's watch sees the end: one id per meeting (cleared when it is created again)
    return WebhookEvent(_ended_id(event.meeting_id), "meeting.ended",
                        time.time() if at is None else at,
                        {"meeting_id": event.meeting_id, "reason": event.reason})


def member_joined(record: MemberRecord) -> WebhookEvent:
    # joined_at names the presence: unique per join of a member
    return WebhookEvent(
        event_id("member.joined", record.meeting_id, record.member_id, record.joined_at),
        "member.joined", record.joined_at,
        {"meeting_id": record.meeting_id, "member": _member(record)},
    )


def member_left(record: MemberRecord, reason: str, *, at: float | None = None) -> WebhookEvent:
    # one leave per presence, whichever path (socket, kick, clean-up) announces it
    return WebhookEvent(
        event_id("member.left", record.meeting_id, record.member_id, record.joined_at),
        "member.left", time.time() if at is None else at,
        {"meeting_id": record.meeting_id, "member": _member(record), "reason": reason},
    )


def _member(record: MemberRecord) -> dict[str, Any]:
    member = {"id": record.member_id, "name": record.name, "role": record.role,
              "joined_at": record.joined_at}
    if record.sub:  # the application's user id, from the member's join token
        member["sub"] = record.sub
    return member


def controls_changed(event: ControlsChanged, *, at: float | None = None) -> WebhookEvent:
    # the revision orders a meeting's changes: every instance's watch builds the same id
    when = event.written_at or event.received_at or (time.time() if at is None else at)
    return WebhookEvent(
        event_id("controls.changed", event.meeting_id, event.controls.revision),
        "controls.changed", when,
        {
            "meeting_id": event.meeting_id,
            "controls": event.controls.as_dict(),
            "changed": {flag: new for flag, (_old, new) in event.changed.items()},
            "actor": event.actor,
            "revision": event.controls.revision,
            "expires_at": event.expires_at,
        },
    )


def lobby_event(
    kind: LobbyType,
    meeting_id: str,
    member_id: str,
    data: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    at: float | None = None,
) -> WebhookEvent:
    """``member.waiting`` / ``member.admitted`` / ``member.refused``. ``key`` names the happening
    (e.g. the waiting request's id) when several instances may report it; without one, the
    event gets a fresh id and must be emitted by one instance only."""
    if kind not in LOBBY_TYPES:
        raise ValueError(f"not a lobby event: {kind!r}")
    ident = event_id(kind, meeting_id, member_id, key if key is not None else uuid.uuid4().hex)
    body = {"meeting_id": meeting_id, "member_id": member_id, **(data or {})}
    return WebhookEvent(ident, kind, time.time() if at is None else at, body)
