"""The domain events: the one currency between the stores, the service and the hub.

Frozen dataclasses, each saying one thing that happened to one meeting. The stores hand them
out (the meeting store: :class:`ControlsChanged`, :class:`MeetingEnded`; the chat log, which
orders a meeting's stream between instances: :data:`BusEvent`), the service passes them on, the
hub fans them out, and each wire module encodes them with a ``match`` ending in
``assert_never``: an event that some protocol does not encode is a mypy error, never a silent
drop. How they travel between instances (JSON over Redis) is the chat log's business
(``rmeeting.stores._event_json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeVar

from .closes import Close, LeaveReason
from .controls import Controls

__all__ = [
    "BusEvent",
    "ChatPosted",
    "ControlsChanged",
    "HubEvent",
    "LobbyChanged",
    "LobbyState",
    "MeetingEnded",
    "MeetingEvent",
    "MemberJoined",
    "MemberLeft",
    "MemberUpdated",
    "Notice",
    "Role",
    "stamped",
]

#: ``cohost``: promoted by the host (or named by a join token): may do what the host does except
#: end the meeting, change roles and hand the host role over (docs/protocol.md, Moderation)
Role = Literal["host", "cohost", "member"]


class _Member(Protocol):
    """What the member events are made from (a ``MemberRecord``)."""

    @property
    def meeting_id(self) -> str: ...
    @property
    def member_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> Role: ...
    @property
    def camera(self) -> bool: ...
    @property
    def mic(self) -> bool: ...
    @property
    def joined_at(self) -> float: ...
    @property
    def media_rev(self) -> int: ...


# --- the chat log's events: ordered per meeting, relayed between instances -------------------
# ``ts`` is stamped by the chat log when it publishes (epoch seconds); ``seq`` numbers chat.


@dataclass(frozen=True, slots=True)
class ChatPosted:
    meeting_id: str
    member_id: str
    name: str
    role: Role
    text: str
    #: the meeting's chat sequence number (1, 2, ...), given by the chat log
    seq: int = 0
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class MemberJoined:
    meeting_id: str
    member_id: str
    name: str
    role: Role
    camera: bool
    mic: bool
    #: names this presence of the member (a reconnect is a new one)
    joined_at: float
    ts: float = 0.0
    #: the controls revision the camera/mic were declared against (``Controls.device_on``)
    media_rev: int = 0

    @classmethod
    def of(cls, member: _Member) -> MemberJoined:
        return cls(member.meeting_id, member.member_id, member.name, member.role,
                   member.camera, member.mic, member.joined_at, media_rev=member.media_rev)


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A rename, a camera/mic change (declared by the member, or turned off for it by the host or
    a co-host), a hand raised or lowered, an ask to unmute made or answered (roles change with the
    controls: :class:`ControlsChanged`)."""

    meeting_id: str
    member_id: str
    name: str
    role: Role
    camera: bool
    mic: bool
    joined_at: float
    #: what changed: ``name`` (str), ``camera``/``mic`` (bool), ``hand`` (when it was raised,
    #: epoch seconds, or None: lowered), ``ask_unmute`` (bool)
    changes: Mapping[str, str | bool | float | None]
    ts: float = 0.0
    media_rev: int = 0
    #: who made the change when it was not the member itself (a host's or co-host's id)
    by: str | None = None

    @classmethod
    def of(cls, member: _Member, changes: Mapping[str, str | bool | float | None],
           by: str | None = None) -> MemberUpdated:
        return cls(member.meeting_id, member.member_id, member.name, member.role,
                   member.camera, member.mic, member.joined_at, dict(changes),
                   media_rev=member.media_rev, by=by)


@dataclass(frozen=True, slots=True)
class MemberLeft:
    meeting_id: str
    member_id: str
    name: str
    role: Role
    #: the presence that ended: a newer presence of the same member is not closed by this
    joined_at: float
    reason: LeaveReason
    #: when the server ended the presence: the close its connection gets (wherever it is)
    close: tuple[Close, str] | None = None
    ts: float = 0.0

    @classmethod
    def of(cls, member: _Member, reason: LeaveReason,
           close: tuple[Close, str] | None = None) -> MemberLeft:
        return cls(member.meeting_id, member.member_id, member.name, member.role,
                   member.joined_at, reason, close)


#: ``waiting``: knocked; ``admitted``/``refused``: decided by the host or a co-host; ``left``: the
#: knocker went away before a decision
LobbyState = Literal["waiting", "admitted", "refused", "left"]


@dataclass(frozen=True, slots=True)
class LobbyChanged:
    """The lobby of a meeting whose ``join_policy`` is ``lobby`` (docs/protocol.md): someone
    knocked, or its knock was decided or withdrawn. The hosts and co-hosts see it (their
    admit/refuse list); the knocker's own instance learns the decision from it, wherever the
    host who made it is connected."""

    meeting_id: str
    #: the member id the knocker gets once admitted
    member_id: str
    name: str
    state: LobbyState
    ts: float = 0.0


#: what the chat log carries: one order per meeting on every instance
BusEvent = ChatPosted | MemberJoined | MemberLeft | MemberUpdated | LobbyChanged

_B = TypeVar("_B", ChatPosted, MemberJoined, MemberLeft, MemberUpdated, LobbyChanged)


def stamped(event: _B, *, seq: int, ts: float) -> _B:
    """``event`` as the chat log published it: its time, and for chat its seq."""
    if isinstance(event, ChatPosted):
        return replace(event, seq=seq, ts=ts)
    return replace(event, ts=ts)


# --- from this instance only ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A server notice to this instance's members of a meeting (the chat relay's state)."""

    meeting_id: str
    #: ``chat_unavailable``, ``chat_available``, ``chat_gap`` (docs/protocol.md)
    code: str
    message: str
    ts: float = 0.0


# --- the meeting store's events ---------------------------------------------------------------


@dataclass(frozen=True)
class ControlsChanged:
    """One change of a meeting's flags, as every instance sees it."""

    meeting_id: str
    controls: Controls
    #: flag -> (old, new), only flags whose value really changed.
    changed: Mapping[str, tuple[bool, bool]]
    #: who changed it: a member id, ``"operator"`` (etcdctl), ``"timer"`` (a timed change ran out)
    #: or ``"snapshot"`` (a resync after a lost watch).
    actor: str
    #: when the change returns to the default, for a timed change.
    expires_at: float | None = None
    #: epoch seconds when the change was written, if the writer recorded it (API writes), and
    #: when this instance's watch received it: for the propagation metrics, not part of equality
    written_at: float | None = field(default=None, compare=False)
    received_at: float | None = field(default=None, compare=False)
    #: members' own flags that changed: member id -> flag -> (old, new), None meaning unset
    member_changed: Mapping[str, Mapping[str, tuple[bool | None, bool | None]]] = field(
        default_factory=dict)
    #: (old, new) member id of the host after a hand-over, if it changed
    host_changed: tuple[str | None, str | None] | None = None


@dataclass(frozen=True)
class MeetingEnded:
    meeting_id: str
    #: free text, shown to the members (e.g. "ended by the host")
    reason: str


MeetingEvent = ControlsChanged | MeetingEnded

#: everything the hub fans out
HubEvent = BusEvent | Notice | MeetingEvent
