"""The chat log's events as JSON, for the Redis relay (pub/sub) and the history streams.

The format is the one rmeeting has always written, ``{"meeting_id", "kind", "ts", "data",
"seq"}`` with ``kind`` one of ``chat``, ``joined``, ``left``, ``updated``, so history written
before the events were typed stays readable and instances of either kind can share a Redis
during a rolling upgrade. Everything read back is checked field by field: whoever can publish
to the relay's channels is not trusted, and what does not decode is a ``ValueError`` (the relay
skips it and counts it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_never

from ..closes import Close, LeaveReason
from ..events import (
    BusEvent,
    ChatPosted,
    LobbyChanged,
    LobbyState,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Role,
)

__all__ = ["decode", "encode"]


def encode(event: BusEvent) -> tuple[str, dict[str, Any]]:
    """``(kind, data)`` of an event; its meeting, seq and ts travel beside them."""
    match event:
        case ChatPosted():
            return "chat", {"id": event.member_id, "name": event.name, "role": event.role,
                            "text": event.text}
        case MemberJoined():
            return "joined", _member(event)
        case MemberUpdated():
            updated = {**_member(event), "changes": dict(event.changes)}
            if event.by is not None:
                updated["by"] = event.by
            return "updated", updated
        case MemberLeft():
            data: dict[str, Any] = {"id": event.member_id, "name": event.name,
                                    "role": event.role, "reason": str(event.reason),
                                    "joined_at": event.joined_at}
            if event.close is not None:
                data["close"] = [int(event.close[0]), event.close[1]]
            return "left", data
        case LobbyChanged():
            return "lobby", {"id": event.member_id, "name": event.name, "state": event.state}
        case _:
            assert_never(event)


def _member(event: MemberJoined | MemberUpdated) -> dict[str, Any]:
    return {"id": event.member_id, "name": event.name, "role": event.role,
            "camera": event.camera, "mic": event.mic, "joined_at": event.joined_at,
            "media_rev": event.media_rev}


def decode(meeting_id: str, kind: str, data: Mapping[str, Any], seq: int, ts: float) -> BusEvent:
    """The event ``encode`` made; ValueError if any field is missing or of the wrong type."""
    try:
        if kind == "chat":
            if seq < 1:
                raise ValueError("chat without a seq")
            return ChatPosted(meeting_id, _str(data, "id"), _str(data, "name"), _role(data),
                              _str(data, "text"), seq, ts)
        if seq:
            raise ValueError(f"{kind} with a seq")
        if kind == "joined":
            return MemberJoined(meeting_id, _str(data, "id"), _str(data, "name"), _role(data),
                                _bool(data, "camera"), _bool(data, "mic"),
                                _float(data, "joined_at"), ts, _rev(data))
        if kind == "updated":
            by = data.get("by")
            if by is not None and not isinstance(by, str):
                raise ValueError("by is not a string")
            return MemberUpdated(meeting_id, _str(data, "id"), _str(data, "name"), _role(data),
                                 _bool(data, "camera"), _bool(data, "mic"),
                                 _float(data, "joined_at"), _changes(data), ts, _rev(data), by)
        if kind == "lobby":
            return LobbyChanged(meeting_id, _str(data, "id"), _str(data, "name"),
                                _lobby_state(data), ts)
        if kind == "left":
            return MemberLeft(meeting_id, _str(data, "id"), _str(data, "name"), _role(data),
                              _float(data, "joined_at"), LeaveReason(_str(data, "reason")),
                              _close(data), ts)
    except KeyError as exc:
        raise ValueError(f"{kind} event without {exc}") from None
    raise ValueError(f"unknown event kind {kind!r}")


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} is not a boolean")
    return value


def _float(data: Mapping[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} is not a number")
    return float(value)


def _rev(data: Mapping[str, Any]) -> int:
    """``media_rev``: absent in events of older instances (0: declared before any switch)."""
    value = data.get("media_rev", 0)
    if type(value) is not int or value < 0:
        raise ValueError("media_rev is not a revision")
    return value


def _role(data: Mapping[str, Any]) -> Role:
    role = data["role"]
    if role == "host":
        return "host"
    if role == "cohost":
        return "cohost"
    if role == "member":
        return "member"
    raise ValueError("role is not host, cohost nor member")


def _lobby_state(data: Mapping[str, Any]) -> LobbyState:
    state = data["state"]
    for known in ("waiting", "admitted", "refused", "left"):
        if state == known:
            return known
    raise ValueError("state is not a lobby state")


def _changes(data: Mapping[str, Any]) -> dict[str, str | bool | float | None]:
    changes = data["changes"]
    if not isinstance(changes, dict):
        raise ValueError("changes is not an object")
    out: dict[str, str | bool | float | None] = {}
    for key, value in changes.items():
        if key == "name" and isinstance(value, str) or \
                key in ("camera", "mic", "ask_unmute") and isinstance(value, bool) or \
                key == "hand" and (value is None or type(value) in (int, float)):
            out[key] = value
        else:
            raise ValueError(f"changes.{key} is not a change a member can make")
    return out


def _close(data: Mapping[str, Any]) -> tuple[Close, str] | None:
    if "close" not in data:
        return None
    close = data["close"]
    if not (isinstance(close, list) and len(close) == 2 and type(close[0]) is int
            and isinstance(close[1], str)):
        raise ValueError("close is not [code, reason]")
    return Close(close[0]), close[1]
