"""What the bench says and listens for, one small adapter per wire protocol.

The bench's members never decode JSON on the hot path. An adapter gives the client:

- ``join_path``: where a member opens its WebSocket;
- ``chat``: the payload of a chat frame carrying a text the bench wrote (``#b<seq>.<ns>.xx…``);
- ``chat_re``: a bytes pattern matched at the start of each incoming text frame, whose two groups
  are the bench's sequence number and send time; a frame it matches is one delivery;
- ``kinds``: payload prefixes of the few other frames the bench cares about (``welcome``: the
  join is confirmed; ``control``: a control change reached the member; ``error``), tried in
  order on frames that are not chat;
- ``create_meeting`` / ``control``: how a meeting is made and how its host flips a control.

The seed protocol (``../shared/seed/wire-protocol.md``) is the one spoken today. A v1 adapter
(``/v1/meetings/{id}/ws``, JSON frames whose first key is ``"type"``) fits the same shape:
``chat_re`` on ``{"type":"chat",…"text":"#b…``, ``kinds`` on ``{"type":"welcome"`` and
``{"type":"controls"``, and it registers itself in :data:`PROTOCOLS`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

__all__ = ["PROTOCOLS", "Meeting", "Seed", "WireProtocol", "chat_text", "get_protocol"]

#: the marker the bench puts at the start of every chat text it sends
CHAT_MARK = "#b"


def chat_text(seq: int, sent_ns: int, size: int) -> str:
    """``#b<seq>.<sent_ns>.`` padded with ``x`` to ``size`` characters (never cut short)."""
    head = f"{CHAT_MARK}{seq}.{sent_ns}."
    return head + "x" * (size - len(head))


@dataclass(frozen=True)
class Meeting:
    meeting_id: str
    #: the host's credential (the seed's manager userUid)
    host_key: str


class WireProtocol(Protocol):
    name: str
    chat_re: re.Pattern[bytes]
    kinds: tuple[tuple[bytes, str], ...]

    def create_request(self, name: str) -> tuple[str, str, dict[str, Any]]:
        """(method, path, JSON body) that creates a meeting."""
        ...

    def created(self, body: dict[str, Any]) -> Meeting: ...

    def join_path(self, meeting: Meeting, name: str, *, host: bool) -> str: ...

    def chat(self, text: str) -> bytes: ...

    def control(self, meeting: Meeting, value: bool) -> bytes:
        """The frame the host sends to set the room's flag to ``value`` (a change each time
        the value alternates)."""
        ...


class Seed:
    """RMeetingControl's protocol: ``POST /CreateMeeting``, ``GET /AddMeeting``, plain chat."""

    name: str = "seed"
    chat_re: re.Pattern[bytes] = re.compile(rb'\{"notice":"#b(\d+)\.(\d+)\.')
    kinds: tuple[tuple[bytes, str], ...] = (
        (b'{"is_mute":', "welcome"),  # the room state a member receives after joining
        ('{"notice":"会议室状态发送变更"'.encode(), "control"),
        (b'{"error":', "error"),
    )

    def create_request(self, name: str) -> tuple[str, str, dict[str, Any]]:
        return "POST", "/CreateMeeting", {"meeting_name": name, "is_mute": False,
                                          "is_video": True}

    def created(self, body: dict[str, Any]) -> Meeting:
        return Meeting(str(body["meetingUid"]), str(body["userUid"]))

    def join_path(self, meeting: Meeting, name: str, *, host: bool) -> str:
        query = {"username": name, "meetingUid": meeting.meeting_id}
        if host:
            query["userUid"] = meeting.host_key
        return "/AddMeeting?" + urlencode(query)

    def chat(self, text: str) -> bytes:
        return text.encode()

    def control(self, meeting: Meeting, value: bool) -> bytes:
        body = {"isMute": value, "userUid": meeting.host_key, "meetingUid": meeting.meeting_id}
        return ("特殊消息1" + json.dumps(body, separators=(",", ":"))).encode()


PROTOCOLS: dict[str, WireProtocol] = {"seed": Seed()}


def get_protocol(name: str) -> WireProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
