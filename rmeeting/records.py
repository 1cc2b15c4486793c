"""What the stores keep, as the rest of rmeeting reads it: a meeting, a member's presence, an
attendance session, an audit entry. Plain frozen records, shared by the stores, the service, the
hub and the wire encoders (the stores' interfaces are in ``rmeeting.stores.base``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .events import Role

__all__ = ["AttendanceRecord", "AuditEntry", "Knock", "MeetingMeta", "MemberRecord", "Role",
           "Tombstone"]


@dataclass(frozen=True)
class MeetingMeta:
    meeting_id: str
    name: str
    created_at: float
    #: sha256 hex of the host credential; the credential itself is never stored.
    host_key_hash: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    meeting_id: str
    flag: str
    old: bool
    new: bool
    revision: int
    actor: str
    at: float
    #: the member a moderation entry is about (its own flags, a mute, a role), None for the room
    member: str | None = None


@dataclass(frozen=True)
class MemberRecord:
    meeting_id: str
    member_id: str
    name: str
    role: Role
    instance_id: str
    joined_at: float
    #: sha256 hex of the member's reconnect secret (the seed's ``userUid``, or a v1 token).
    key_hash: str
    protocol: Literal["seed", "v1"] = "v1"
    camera: bool = False
    mic: bool = False
    #: the application's user id, from a join token's ``sub`` ("" without one)
    sub: str = ""
    #: the controls revision camera/mic were declared against (``Controls.device_on``)
    media_rev: int = 0
    #: when the member raised its hand (epoch seconds, the store's clock), None if it is down
    hand: float | None = None
    #: the member asks to be allowed to unmute
    ask_unmute: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": self.member_id,
            "name": self.name,
            "role": self.role,
            "camera": self.camera,
            "mic": self.mic,
            "joined_at": self.joined_at,
            "hand": self.hand,
            "ask_unmute": self.ask_unmute,
        }


@dataclass(frozen=True)
class AttendanceRecord:
    """One join-to-leave session of one member; ``left_at`` is None while it is still present."""

    meeting_id: str
    member_id: str
    name: str
    role: Role
    joined_at: float
    key_hash: str
    left_at: float | None = None
    reason: str | None = None
    #: the application's user id, from a join token's ``sub`` ("" without one)
    sub: str = ""


@dataclass(frozen=True)
class Tombstone:
    """An ended meeting, kept until ``purge_at`` so its attendance and audit stay readable.

    Nobody can join or change it; it is not a meeting (``get`` and ``list`` do not see it)."""

    meta: MeetingMeta
    ended_at: float
    #: why it ended: "ended by the host", "empty", "max_duration", "deleted in etcd", ...
    reason: str
    purge_at: float
    audit: Sequence[AuditEntry] = ()


@dataclass(frozen=True)
class Knock:
    """Someone waiting in a meeting's lobby (``join_policy`` lobby): the member id it will have
    once admitted, the name it gave, and since when it waits."""

    meeting_id: str
    member_id: str
    name: str
    since: float
