"""What the bench says and listens for, one small adapter per wire protocol.

The bench's members never decode JSON on the hot path. An adapter gives the client:

- ``join_path``: where a member opens its WebSocket;
- ``chat``: the payload of a chat frame carrying a text the bench wrote (``#b<seq>.<ns>.xx…``);
- ``chat_re``: a bytes pattern matched at the start of each incoming text frame, whose two groups
  are the bench's sequence number and send time; a frame it matches is one delivery;
- ``kinds``: payload prefixes of the few other frames the bench cares about (``welcome``: the
  join is confirmed; ``control``: a control change reached the member; ``joined``: another
  member's join notice, counted only; ``joined_many``: a frame of several, whose joins are
  counted; ``ping``: answered at once with ``pong``; ``error``), tried in order on frames that
  are not chat (the commonest first);
- ``hello``: what a member sends right after the handshake (nothing for rmeeting's protocols);
- ``create_request`` / ``control``: how a meeting is made and how its host flips a control from
  its own connection.

Three adapters, in :data:`PROTOCOLS`:

- ``seed``: RMeetingControl's protocol (``../shared/seed/wire-protocol.md``);
- ``v1``: rmeeting's typed JSON protocol (``/v1/meetings/{id}/ws``, docs/protocol.md);
- ``socketio``: Socket.IO v5 over Engine.IO v4, WebSocket transport only, against the
  comparison peer ``bench/socketio_peer.py`` (a room per meeting, ``chat`` events emitted to the
  room). Not a general Socket.IO client: just what the fan-out comparison needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

__all__ = ["PROTOCOLS", "Meeting", "Seed", "SocketIO", "V1", "WireProtocol", "chat_text",
           "get_protocol"]

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
    #: sent by every member right after the WebSocket handshake (b"": nothing)
    hello: bytes
    #: the answer to a frame of kind ``ping``
    pong: bytes
    #: whether ``control`` works (the host can flip a flag from its connection)
    controls: bool

    def create_request(self, name: str) -> tuple[str, str, dict[str, Any]]:
        """(method, path, JSON body) that creates a meeting."""
        ...

    def created(self, body: dict[str, Any]) -> Meeting: ...

    def join_path(self, meeting: Meeting, name: str, *, host: bool) -> str: ...

    def chat(self, text: str) -> bytes: ...

    def control(self, meeting: Meeting, value: bool, flag: str = "mic") -> bytes:
        """The frame the host sends to switch the room's ``flag`` off (``value`` True) or on
        (a change each time the value alternates)."""
        ...

    def devices_on(self) -> bytes:
        """The frame a member sends to declare its camera and mic on (v1 only)."""
        ...


class Seed:
    """RMeetingControl's protocol: ``POST /CreateMeeting``, ``GET /AddMeeting``, plain chat."""

    name: str = "seed"
    hello: bytes = b""
    pong: bytes = b""
    controls: bool = True
    chat_re: re.Pattern[bytes] = re.compile(rb'\{"notice":"#b(\d+)\.(\d+)\.')
    kinds: tuple[tuple[bytes, str], ...] = (
        # the commonest first: a join storm into a meeting of N is ~N²/2 join notices
        ('{"notice":"有成员加入会议室"'.encode(), "joined"),
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

    def devices_on(self) -> bytes:
        raise ValueError("the seed's members cannot declare devices: use --protocol v1")

    def control(self, meeting: Meeting, value: bool, flag: str = "mic") -> bytes:
        # value is "off": the seed's isMute=value, isVideo=not value
        digit, field = ("1", "isMute") if flag == "mic" else ("2", "isVideo")
        body: dict[str, Any] = {field: value if flag == "mic" else not value,
                                "userUid": meeting.host_key, "meetingUid": meeting.meeting_id}
        return (f"特殊消息{digit}" + json.dumps(body, separators=(",", ":"))).encode()


class V1:
    """rmeeting's v1 protocol: ``POST /v1/meetings``, ``/v1/meetings/{id}/ws``, typed frames.

    A chat event is ``{"type":"chat","seq":…,"ts":…,"from":{…},"text":"#b…"}``; the pattern
    skips to the first ``"text":"`` after the type (the sender's name is the bench's own ``m<i>``,
    which holds no quote)."""

    name: str = "v1"
    hello: bytes = b""
    pong: bytes = b""
    controls: bool = True
    chat_re: re.Pattern[bytes] = re.compile(
        rb'\{"type":"chat",[^{]*\{[^}]*\},"text":"#b(\d+)\.(\d+)\.')
    kinds: tuple[tuple[bytes, str], ...] = (
        (b'{"type":"members_changed"', "joined_many"),  # several joins/leaves in one frame
        (b'{"type":"member_joined"', "joined"),
        (b'{"type":"welcome"', "welcome"),
        (b'{"type":"controls"', "control"),
        (b'{"type":"error"', "error"),
    )

    def create_request(self, name: str) -> tuple[str, str, dict[str, Any]]:
        return "POST", "/v1/meetings", {"name": name}

    def created(self, body: dict[str, Any]) -> Meeting:
        return Meeting(str(body["id"]), str(body["host_key"]))

    def join_path(self, meeting: Meeting, name: str, *, host: bool) -> str:
        query = {"name": name}
        if host:
            query["host_key"] = meeting.host_key
        return f"/v1/meetings/{meeting.meeting_id}/ws?" + urlencode(query)

    def chat(self, text: str) -> bytes:
        return json.dumps({"type": "chat", "text": text}, separators=(",", ":")).encode()

    def control(self, meeting: Meeting, value: bool, flag: str = "mic") -> bytes:
        # the seed's isMute=value is mic=not value: both adapters flip the same flag the same way
        body = {"type": "set_controls", "controls": {flag: not value}}
        return json.dumps(body, separators=(",", ":")).encode()

    def devices_on(self) -> bytes:
        """The member declares its camera and mic on (flip ``--devices-on``)."""
        return b'{"type":"media","camera":true,"mic":true}'


class SocketIO:
    """Socket.IO v5 over Engine.IO v4 on a WebSocket, as ``bench/socketio_peer.py`` serves it.

    ``GET /socket.io/?EIO=4&transport=websocket&room=…&name=…``: the server opens with
    ``0{"sid":…}``; the member sends ``40`` (connect to ``/``) at once; the peer's connect handler
    puts it in the room named in the query, then answers ``40{"sid":…}`` (the join is confirmed).
    Chat is ``42["chat","<text>"]`` both ways. Engine.IO pings (``2``) are answered (``3``).
    A room is made with ``POST /rooms`` on the peer."""

    name: str = "socketio"
    hello: bytes = b"40"
    pong: bytes = b"3"
    controls: bool = False
    chat_re: re.Pattern[bytes] = re.compile(rb'42\["chat","#b(\d+)\.(\d+)\.')
    kinds: tuple[tuple[bytes, str], ...] = (
        (b"40", "welcome"),
        (b"2", "ping"),
        (b"44", "error"),  # CONNECT_ERROR
        (b"41", "error"),  # DISCONNECT from the server
    )

    def create_request(self, name: str) -> tuple[str, str, dict[str, Any]]:
        return "POST", "/rooms", {"name": name}

    def created(self, body: dict[str, Any]) -> Meeting:
        return Meeting(str(body["room"]), "")

    def join_path(self, meeting: Meeting, name: str, *, host: bool) -> str:
        query = {"EIO": "4", "transport": "websocket", "room": meeting.meeting_id, "name": name}
        return "/socket.io/?" + urlencode(query)

    def chat(self, text: str) -> bytes:
        return b'42["chat",' + json.dumps(text).encode() + b"]"

    def control(self, meeting: Meeting, value: bool, flag: str = "mic") -> bytes:
        raise ValueError("the socketio adapter has no controls: it measures fan-out only")

    def devices_on(self) -> bytes:
        raise ValueError("the socketio adapter has no devices")


PROTOCOLS: dict[str, WireProtocol] = {"seed": Seed(), "v1": V1(), "socketio": SocketIO()}


def get_protocol(name: str) -> WireProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
