"""What the stores keep, as the rest of rmeeting reads it: a meeting, a member's presence, an
attendance session, an audit entry. Plain frozen records, shared by the stores, the service, the
hub and the wire encoders (the stores' interfaces are in ``rmeeting.stores.base``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .events import Role

__all__ = ["AttendanceRecord", "AuditEntry", "MeetingMeta", "MemberRecord", "Role"]


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
