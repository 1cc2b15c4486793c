"""The three store interfaces, and the records and events they hand back.

Each interface has a memory implementation (embedded mode) and a real one (etcd for meetings and
controls, Redis for members and chat), and every implementation passes the same conformance suite
(``tests/conformance``). Stores know nothing of connections: what they have to tell the server
(a control changed, a meeting ended, a chat event arrived) they hand to one async handler, as
the typed events of :mod:`rmeeting.events`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from ..controls import Controls
from ..events import (
    BusEvent,
    ChatPosted,
    ControlsChanged,
    LobbyChanged,
    MeetingEnded,
    MeetingEvent,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Role,
)
from ..records import (
    AttendanceRecord,
    AuditEntry,
    Knock,
    MeetingMeta,
    MemberRecord,
    Tombstone,
)

__all__ = [
    "AttendanceRecord",
    "AuditEntry",
    "BusEvent",
    "ChatLog",
    "ControlsChanged",
    "History",
    "MeetingEnded",
    "MeetingEvent",
    "MeetingFull",
    "MeetingMeta",
    "MeetingNotFound",
    "MeetingStore",
    "MemberRecord",
    "MemberStore",
    "RevisionConflict",
    "Role",
    "StoreUnavailable",
    "Knock",
    "Tombstone",
]

#: the events are defined in rmeeting.events; these names are kept here for the stores' users
_B = TypeVar("_B", ChatPosted, MemberJoined, MemberLeft, MemberUpdated, LobbyChanged)


class MeetingNotFound(LookupError):
    """No meeting with that id (never created, or ended)."""


class RevisionConflict(Exception):
    """A compare-and-set change whose expected revision is no longer current."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"expected revision {expected}, current is {current}")
        self.expected = expected
        self.current = current


class MeetingFull(Exception):
    """The meeting already has its maximum number of members."""


class StoreUnavailable(Exception):
    """The backing service (etcd, Redis) did not answer in time; the caller may retry later."""


# --- meetings and controls -------------------------------------------------------------------


class MeetingStore(Protocol):
    """Meetings and their control flags (memory, or etcd in cluster mode)."""

    async def create(self, meta: MeetingMeta, controls: Mapping[str, bool]) -> Controls: ...

    async def get(self, meeting_id: str) -> MeetingMeta | None: ...

    async def list(self) -> Sequence[MeetingMeta]: ...

    async def count(self) -> int:
        """How many meetings exist, in O(1) (``create`` checks ``max_meetings`` with it): from
        what the store keeps in memory, so in cluster mode as of the last change its watch saw."""
        ...

    async def end(self, meeting_id: str, *, reason: str, retention: float = 0.0) -> bool:
        """Delete the meeting; True for exactly one caller if it existed, however many race
        (instances, timers). Every instance learns MeetingEnded. With ``retention`` > 0 the same
        atomic step leaves a :class:`Tombstone` (meta, reason, audit) for that many seconds."""
        ...

    async def tombstone(self, meeting_id: str) -> Tombstone | None:
        """The ended meeting, while its retention lasts (else None)."""
        ...

    async def purge_due(self) -> Sequence[str]:
        """Forget the tombstones whose retention passed; their ids (for the member store and
        chat log to forget too). A store whose backend expires them itself may return them
        late or not at all: the member store and chat log then expire on their own."""
        ...

    async def snapshot(self) -> Sequence[MeetingMeta]:
        """The live meetings as this instance knows them now, without a round trip where the
        store keeps them current (etcd's watch); for the lifecycle sweep."""
        ...

    async def put_ticket(self, ticket_hash: str, payload: Mapping[str, Any], ttl: float) -> None:
        """Keep a WebSocket ticket (by the hash of its secret) for ``ttl`` seconds."""
        ...

    async def take_ticket(self, ticket_hash: str) -> Mapping[str, Any] | None:
        """The ticket's payload, once: of racing callers (on any instance) one gets it."""
        ...

    async def update_meta(self, meeting_id: str, extra: Mapping[str, Any]) -> MeetingMeta:
        """Merge ``extra`` into the meeting's ``meta.extra`` (its join policy); raises
        MeetingNotFound."""
        ...

    async def controls(self, meeting_id: str) -> Controls:
        """The current flags; raises MeetingNotFound."""
        ...

    async def record_and_controls(self, meeting_id: str) -> tuple[MeetingMeta, Controls] | None:
        """The meeting's record and its current flags, read together in one round trip (what
        a join needs); None if there is no such meeting."""
        ...

    async def set_controls(
        self,
        meeting_id: str,
        changes: Mapping[str, bool],
        *,
        actor: str,
        expected_revision: int | None = None,
        ttl: float | None = None,
    ) -> Controls:
        """Apply changes atomically; with ``expected_revision``, only if it is still current
        (else RevisionConflict). With ``ttl`` seconds, the changed flags return to their defaults
        when it runs out. Returns the controls after the change. Listeners learn of it through
        ``serve_events``, never from this call's caller."""
        ...

    async def set_member_controls(
        self, meeting_id: str, member_id: str, changes: Mapping[str, bool | None], *, actor: str
    ) -> Controls:
        """Set (True/False) or unset (None) flags of one member (``MEMBER_FLAGS``), atomically;
        audited as ``may`` values (the member's own, else the room's) per flag. Listeners learn
        of it as a ``ControlsChanged`` with ``member_changed``."""
        ...

    async def set_host(self, meeting_id: str, member_id: str, *, actor: str) -> Controls:
        """Make ``member_id`` the host (its ``cohost`` flag is dropped): from now on the host is
        that member, and the host key alone no longer makes its bearer host. Audited."""
        ...

    async def record_audit(
        self, meeting_id: str, flag: str, old: bool, new: bool, *, actor: str, member: str
    ) -> None:
        """Add a moderation entry that is no flag change (a mute, a lowered hand, an answer to
        an ask to unmute). Raises MeetingNotFound."""
        ...

    async def audit(self, meeting_id: str) -> Sequence[AuditEntry]:
        """The meeting's control changes, oldest first: at most the store's ``audit_limit``
        newest (older ones are dropped as new ones are recorded)."""
        ...

    async def serve_events(
        self,
        handler: Callable[[MeetingEvent], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled, handing every change of any meeting to ``handler`` in order."""
        ...

    async def ready(self) -> bool: ...


# --- membership and attendance ---------------------------------------------------------------


class MemberStore(Protocol):
    """Live roster and the attendance ledger (memory, or Redis in cluster mode)."""

    async def join(self, record: MemberRecord, *, max_members: int) -> None:
        """Add to the roster and open an attendance session; MeetingFull when ``max_members``
        members are present (hosts do not count, and a host is never refused: it always has a
        seat).
        Joining again with a present member id replaces the old presence (its session closes
        with reason ``replaced``)."""
        ...

    async def leave(
        self,
        meeting_id: str,
        member_id: str,
        *,
        reason: str,
        instance_id: str | None = None,
        joined_at: float | None = None,
    ) -> MemberRecord | None:
        """Remove and close its attendance session. Exactly one caller gets the record back;
        the rest get None, so a leave is announced once however many paths race to it.
        With ``instance_id``, only a presence through that instance leaves: a member who
        already reconnected elsewhere (a drain's 1012) is not ended by its old instance.
        With ``joined_at`` (a ``MemberRecord.joined_at``, unique per presence), only that very
        presence leaves: a newer one of the same member, on any instance, is left alone."""
        ...

    async def get(self, meeting_id: str, member_id: str) -> MemberRecord | None: ...

    async def roster(self, meeting_id: str) -> Sequence[MemberRecord]: ...

    async def update(
        self, meeting_id: str, member_id: str, changes: Mapping[str, Any]
    ) -> MemberRecord | None:
        """Change ``name``, ``camera``, ``mic``, ``media_rev``, ``role``, ``ask_unmute`` or
        ``hand`` of a present member; None if it is not there. ``hand``: True raises it (the
        store stamps it with its clock; raising a raised hand keeps its place), False lowers it.
        """
        ...

    async def lower_hands(self, meeting_id: str) -> Sequence[MemberRecord]:
        """Lower every raised hand of the meeting; returns the members whose hand was up."""
        ...

    async def attendance(self, meeting_id: str) -> Sequence[AttendanceRecord]: ...

    async def ban(self, meeting_id: str, member_id: str) -> None: ...

    async def is_banned(self, meeting_id: str, member_id: str) -> bool: ...

    async def by_instance(self, instance_id: str) -> Sequence[MemberRecord]: ...

    async def instances(self) -> Sequence[str]:
        """Ids of the instances that may hold present members (a superset: ``by_instance``
        decides). It finds the members of an instance that died while nobody was watching."""
        ...

    async def clear_meeting(self, meeting_id: str, *, reason: str) -> Sequence[MemberRecord]:
        """Everyone leaves (meeting ended); returns who was present. The ledger is kept."""
        ...

    async def knock(self, knock: Knock) -> None:
        """Put ``knock`` in the meeting's lobby (every instance sees the same lobby)."""
        ...

    async def waiting(self, meeting_id: str) -> Sequence[Knock]:
        """The lobby, oldest knock first."""
        ...

    async def take_knock(self, meeting_id: str, member_id: str) -> Knock | None:
        """Take a knock out of the lobby (admitted, refused, or gone): exactly one of racing
        callers, on any instance, gets it; the rest get None."""
        ...

    async def retire(self, meeting_id: str, *, keep: float) -> None:
        """The meeting ended: its ledger and bans are forgotten ``keep`` seconds from now
        (Redis expires the keys itself), or at :meth:`purge`, whichever comes first."""
        ...

    async def purge(self, meeting_id: str) -> None:
        """Forget every trace of the meeting (roster, ledger, bans) now."""
        ...

    async def ready(self) -> bool: ...


# --- chat history and the relay --------------------------------------------------------------


@dataclass(frozen=True)
class History:
    events: Sequence[ChatPosted]
    #: the last chat seq the meeting has (0 if none).
    last_seq: int
    #: False if some chat after the requested seq is no longer kept.
    complete: bool


class ChatLog(Protocol):
    """The meeting's ordered event stream: chat history plus the relay between instances."""

    async def publish(self, event: _B) -> _B:
        """Append (chat gets the next seq and is kept in history) and deliver to every
        subscribed instance; all of them see one meeting's events in one order. Returns the
        event as published: stamped with its time and, for chat, its seq."""
        ...

    async def history(self, meeting_id: str, after_seq: int, limit: int) -> History:
        """Chat with seq > after_seq, oldest first, at most ``limit`` (the newest ones)."""
        ...

    async def subscribe(self, meeting_id: str) -> None: ...

    async def unsubscribe(self, meeting_id: str) -> None: ...

    async def drop(self, meeting_id: str) -> None:
        """Forget the meeting's history (meeting ended)."""
        ...

    async def serve(
        self,
        handler: Callable[[BusEvent], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...

    async def ready(self) -> bool: ...
