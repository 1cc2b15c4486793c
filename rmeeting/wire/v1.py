"""rmeeting's typed JSON WebSocket protocol, version 1 (docs/protocol.md).

Every frame is one JSON object with a ``type``. Server events are encoded once per broadcast
here; what only one member receives (welcome, errors, acks) too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
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
from ..records import Knock, MeetingMeta, MemberRecord
from ..transport.websocket import text_frame
from ._json import dumps

__all__ = ["ENCODER", "V1Encoder", "ack", "chat", "encode_event", "error", "member", "message",
           "welcome"]


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


def chat(event: ChatPosted) -> dict[str, Any]:
    """A chat event as a JSON object: the live frame, and an item of a welcome's history."""
    return {
        "type": "chat",
        "seq": event.seq,
        "ts": event.ts,
        "from": {"id": event.member_id, "name": event.name, "role": event.role},
        "text": event.text,
    }


def welcome(
    *,
    you: MemberRecord,
    token: str,
    meta: MeetingMeta,
    controls: Controls,
    roster: Iterable[MemberRecord],
    last_seq: int,
    recent: Iterable[ChatPosted] | None,
    missed: Iterable[ChatPosted] | None = None,
    gap: bool = False,
    resumed: bool = False,
    lobby: Iterable[Knock] | None = None,
) -> bytes:
    """The first frame a member gets: the meeting as it stands, and its own identity.

    ``recent`` on a plain join; ``missed`` (and ``gap``) when the client said what it last saw."""
    out: dict[str, Any] = {
        "type": "welcome",
        "you": member(you, controls),
        "token": token,
        "meeting": {"id": meta.meeting_id, "name": meta.name, "created_at": meta.created_at},
        "controls": controls.as_dict(),
        "revision": controls.revision,
        "roster": [],  # spliced in below, each member's JSON made once (_roster_json)
        "member_controls": member_controls(controls),
        "host": controls.host,
        "last_seq": last_seq,
        "resumed": resumed,
    }
    if recent is not None:
        out["chat"] = [chat(e) for e in recent]
    if missed is not None:
        out["missed"] = [chat(e) for e in missed]
        out["gap"] = gap
    if lobby is not None:  # hosts and co-hosts: who waits to be let in
        out["lobby"] = [{"id": k.member_id, "name": k.name, "since": k.since} for k in lobby]
    out["meeting"]["join_policy"] = meta.extra.get("join_policy", "open")
    # `"roster":[]` occurs once: inside a JSON string every quote is escaped (\")
    members = _roster_json(meta.meeting_id, roster)
    return dumps(out).replace(b'"roster":[]', b'"roster":[' + members + b"]", 1)


#: meetings whose members' roster entries are kept encoded (the most recently welcomed ones)
ROSTER_MEETINGS = 256
#: by meeting, by member: the record and its roster entry's JSON
_rosters: OrderedDict[str, dict[str, tuple[MemberRecord, bytes]]] = OrderedDict()


def _roster_json(meeting_id: str, roster: Iterable[MemberRecord]) -> bytes:
    """The roster's entries (:func:`member`), each encoded once while its member is in the
    meeting: a join storm into a meeting of N builds N welcomes of up to N members each.

    A welcome's roster is the whole meeting, so whoever is not in it any more is dropped here:
    what is kept is the current roster of the last :data:`ROSTER_MEETINGS` meetings that
    welcomed someone, never the members who left (a meeting with churn does not grow it; a
    cache by record did, by every member ever seen, up to its bound: docs/benchmarks.md#soak)."""
    kept = _rosters.pop(meeting_id, None) or {}
    fresh: dict[str, tuple[MemberRecord, bytes]] = {}
    parts = []
    for record in roster:
        hit = kept.get(record.member_id)
        if hit is None or (hit[0] is not record and hit[0] != record):
            hit = (record, dumps(record.public()))
        fresh[record.member_id] = hit
        parts.append(hit[1])
    _rosters[meeting_id] = fresh
    if len(_rosters) > ROSTER_MEETINGS:
        _rosters.popitem(last=False)
    return b",".join(parts)


def member(record: MemberRecord, controls: Controls) -> dict[str, Any]:
    """A roster entry (``record`` as :func:`rmeeting.moderation.view` shows it)."""
    return record.public()


def member_controls(controls: Controls) -> dict[str, dict[str, bool]]:
    """Members' own flags, by member id (``cohost`` shows as the member's role instead)."""
    out = {m: {f: v for f, v in flags.items() if f != "cohost"}
           for m, flags in controls.members.items()}
    return {m: flags for m, flags in out.items() if flags}


def encode_event(event: HubEvent) -> bytes | None:
    """The v1 frame's payload for an event (v1 has something to say about every one)."""
    match event:
        case ChatPosted():
            return dumps(chat(event))
        case MemberJoined():  # a new presence: no hand up, no ask
            joined = {**_member(event), "hand": None, "ask_unmute": False}
            return dumps({"type": "member_joined", "member": joined, "ts": event.ts})
        case MemberUpdated():
            updated: dict[str, Any] = {"type": "member_updated", "member": _member(event),
                                       "ts": event.ts, "changes": dict(event.changes)}
            if event.by is not None:
                updated["by"] = event.by
            return dumps(updated)
        case MemberLeft():
            member = {"id": event.member_id, "name": event.name, "role": event.role,
                      "joined_at": event.joined_at}
            return dumps({"type": "member_left", "member": member, "ts": event.ts,
                          "reason": str(event.reason)})
        case LobbyChanged():  # the hub sends it to hosts and co-hosts only
            return dumps({"type": "lobby", "state": event.state,
                          "member": {"id": event.member_id, "name": event.name},
                          "ts": event.ts})
        case Notice():  # from this instance, not a member
            return dumps({"type": "notice", "code": event.code, "message": event.message,
                          "ts": event.ts})
        case ControlsChanged():
            # a device flag in ``changed`` switched off means every member's device is off;
            # ``members``/``host``: members' own flags and the host after a hand-over
            out: dict[str, Any] = {
                "type": "controls",
                "controls": event.controls.as_dict(),
                "revision": event.controls.revision,
                "changed": {flag: new for flag, (_old, new) in event.changed.items()},
                "by": event.actor,
                "expires_at": event.expires_at,
            }
            if event.member_changed:
                out["members"] = {m: {f: new for f, (_old, new) in flags.items()}
                                  for m, flags in event.member_changed.items()}
            if event.host_changed is not None:
                out["host"] = event.host_changed[1]
            return dumps(out)
        case MeetingEnded():
            return dumps({"type": "meeting_ended", "reason": event.reason})
        case _:
            assert_never(event)


def _member(event: MemberJoined | MemberUpdated) -> dict[str, Any]:
    """The member as ``MemberRecord.public`` shows it."""
    return {"id": event.member_id, "name": event.name, "role": event.role,
            "camera": event.camera, "mic": event.mic, "joined_at": event.joined_at}


class V1Encoder:
    """The hub's encoder for v1 members (``rmeeting.hub.Encoder``)."""

    def frame(self, event: HubEvent) -> bytes | None:
        payload = encode_event(event)
        return None if payload is None else text_frame(payload)

    def own_join_frame(self, controls: Controls, user_uid: str) -> bytes | None:
        return None  # the welcome already said it all

    def roster_frame(self, events: Sequence[MemberJoined | MemberLeft]) -> bytes | None:
        """``{"type":"members_changed","events":[…]}``: each event as its own frame would be."""
        parts = [encode_event(event) or b"" for event in events]
        return text_frame(b'{"type":"members_changed","events":[' + b",".join(parts) + b"]}")


ENCODER = V1Encoder()
