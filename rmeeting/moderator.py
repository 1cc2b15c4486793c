"""Moderation: what the host and co-hosts do to one member, and what a member asks of them.

The rules (who may do what to whom) live here; the state lives in the stores: members' own
flags and the host after a hand-over in the meeting store (etcd keys beside the room's flags,
so an operator can do the same with ``etcdctl``), raised hands and asks to unmute in the member
store. Every action is one store write and one event; each is audited with who did it.

Who may do what (docs/protocol.md, Moderation):

* the host: everything below, and roles (promote/demote co-hosts, hand the host role over);
* a co-host: mute or stop one member's camera, set one member's flags, lower hands, answer
  asks to unmute, and the room's flags and kicks (not end the meeting, nor roles);
* nobody moderates the host, a co-host does not moderate another co-host, and nobody
  moderates themself (they have ``media``, ``raise_hand``, ... for that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import auth
from .controls import Controls, UnknownFlag, validate_member_changes
from .events import MemberUpdated, Role
from .moderation import MODERATOR_ROLES, role_of
from .stores.base import MeetingNotFound, MemberRecord

if TYPE_CHECKING:
    from .service import Joined, MeetingService, RateLimiter

__all__ = ["Actor", "Moderator"]

#: the flags a moderator may set for one member (``cohost`` goes through :meth:`set_role`)
RESTRICTABLE = ("camera", "mic", "rename", "chat")


@dataclass(frozen=True)
class Actor:
    """Who asks: a member (``member_id``), or the bearer of the host key (``member_id`` None)."""

    role: Role
    member_id: str | None = None

    @property
    def label(self) -> str:
        """How the audit and the events name it."""
        return self.member_id or "host"


def _denied(code: str, message: str) -> Exception:
    # the service owns Denied and holds a Moderator: imported here, not at the top, so that
    # neither module needs the other to be loaded first
    from .service import Denied

    return Denied(code, message)


class Moderator:
    def __init__(self, service: MeetingService) -> None:
        self.service = service

    # --- who asks -------------------------------------------------------------------------

    async def session_actor(self, joined: Joined, *, fresh: bool = True) -> Actor:
        """The member as it is now: ``fresh`` reads the store (a promotion or demotion made
        through another instance counts at once); else this instance's copy of the controls
        (no round trip; a role change counts here once its watch has seen it, in ms)."""
        meeting_id = joined.record.meeting_id
        if fresh:
            controls = await self.service.controls(meeting_id)
        else:
            controls = await self.service.current_controls(meeting_id)
        return Actor(self.service.role(joined, controls), joined.record.member_id)

    async def bearer_actor(self, meeting_id: str, key: str | None) -> Actor:
        """HTTP: the host key (until a hand-over), or a member's token of a host or co-host."""
        if key is None:
            raise _denied("unauthorized", "this route needs Authorization: Bearer <host_key> "
                          "or a host's or co-host's member token")
        meta = await self.service.require_meeting(meeting_id)
        controls = await self.service.controls(meeting_id)
        if controls.host is None and auth.secret_matches(key, meta.host_key_hash):
            return Actor("host")
        if "." in key:
            back = await self.service.resolve_token(meeting_id, key)
            return Actor(role_of(back.member_id, back.role, controls), back.member_id)
        raise _denied("not_host", "only the meeting's host may do this")

    @staticmethod
    def require(actor: Actor, *, host_only: bool = False) -> None:
        if actor.role not in MODERATOR_ROLES:
            raise _denied("not_host", "only the host or a co-host may do this")
        if host_only and actor.role != "host":
            raise _denied("not_host", "only the meeting's host may do this")

    async def _target(
        self, meeting_id: str, actor: Actor, member_id: str, *, present: bool = True
    ) -> tuple[MemberRecord | None, Controls]:
        """The member acted upon: present (or, with ``present=False``, at least once
        attended), neither the actor nor the host, nor a co-host when a co-host acts. Spends
        one of the meeting's control changes (``meeting_control_rate``)."""
        self.service.spend_control(meeting_id)
        if not member_id or len(member_id) > 128 or "/" in member_id:
            raise _denied("member_not_found", "no member with that id in this meeting")
        if member_id == actor.member_id:
            raise _denied("bad_request", "that is not something to do to yourself")
        service = self.service
        controls = await service.controls(meeting_id)
        record = await service.members.get(meeting_id, member_id)
        joined_as: Role = "member"
        if record is not None:
            joined_as = record.role
        else:
            sessions = [a for a in await service.members.attendance(meeting_id)
                        if a.member_id == member_id]
            if present or not sessions:
                raise _denied("member_not_found", "no member with that id in this meeting")
            joined_as = sessions[-1].role
        role = role_of(member_id, joined_as, controls)
        if role == "host":
            raise _denied("not_allowed", "the host cannot be moderated")
        if role == "cohost" and actor.role != "host":
            raise _denied("not_allowed", "only the host moderates a co-host")
        return record, controls

    async def _audit(self, meeting_id: str, flag: str, old: bool, new: bool, actor: Actor,
                     member_id: str) -> None:
        try:
            await self.service.meetings.record_audit(
                meeting_id, flag, old, new, actor=actor.label, member=member_id)
        except MeetingNotFound as exc:
            raise _denied("meeting_not_found", "no such meeting") from exc

    # --- a moderator's actions ------------------------------------------------------------

    async def turn_off(
        self, meeting_id: str, actor: Actor, member_id: str, device: Literal["camera", "mic"]
    ) -> MemberRecord:
        """Mute one member, or turn its camera off: it may turn it on again (unless a flag
        says otherwise)."""
        self.require(actor)
        record, controls = await self._target(meeting_id, actor, member_id)
        assert record is not None
        was = controls.device_on(member_id, device, getattr(record, device), record.media_rev)
        updated = await self.service.members.update(meeting_id, member_id, {device: False})
        if updated is None:
            raise _denied("member_not_found", "no member with that id in this meeting")
        await self.service.chat.publish(MemberUpdated.of(updated, {device: False}, actor.label))
        await self._audit(meeting_id, "mute" if device == "mic" else "stop_camera",
                          was, False, actor, member_id)
        return updated

    async def set_flags(
        self, meeting_id: str, actor: Actor, member_id: str, changes: Mapping[str, object]
    ) -> Controls:
        """Forbid (False), allow even while the room's flag is off (True), or leave to the room
        (None) one member's camera, mic, rename or chat."""
        self.require(actor)
        try:
            valid = validate_member_changes(changes)
        except (KeyError, ValueError) as exc:
            raise _denied("bad_controls", str(exc).strip("'\"")) from exc
        if set(valid) - set(RESTRICTABLE):
            raise _denied("bad_controls", f"a member's flags are {', '.join(RESTRICTABLE)}")
        await self._target(meeting_id, actor, member_id, present=False)
        return await self._write_flags(meeting_id, member_id, valid, actor)

    async def _write_flags(self, meeting_id: str, member_id: str,
                           changes: Mapping[str, bool | None], actor: Actor) -> Controls:
        try:
            return await self.service.meetings.set_member_controls(
                meeting_id, member_id, changes, actor=actor.label)
        except MeetingNotFound as exc:
            raise _denied("meeting_not_found", "no such meeting") from exc
        except (UnknownFlag, ValueError) as exc:
            raise _denied("bad_controls", str(exc).strip("'\"")) from exc

    async def set_role(
        self, meeting_id: str, actor: Actor, member_id: str, role: str
    ) -> Controls:
        """Promote to co-host, or demote to member (host only)."""
        self.require(actor, host_only=True)
        if role not in ("cohost", "member"):
            raise _denied("bad_request", "role must be cohost or member (see hand_over)")
        await self._target(meeting_id, actor, member_id, present=False)
        return await self._write_flags(meeting_id, member_id, {"cohost": role == "cohost"},
                                       actor)

    async def hand_over(self, meeting_id: str, actor: Actor, member_id: str) -> Controls:
        """Make a present v1 member the host; the old host (and its key) is host no more."""
        self.require(actor, host_only=True)
        record, _ = await self._target(meeting_id, actor, member_id)
        assert record is not None
        if record.protocol != "v1":
            raise _denied("bad_request", "the host role goes to a member of the v1 protocol")
        try:
            return await self.service.meetings.set_host(meeting_id, member_id, actor=actor.label)
        except MeetingNotFound as exc:
            raise _denied("meeting_not_found", "no such meeting") from exc

    async def lower_hand(self, meeting_id: str, actor: Actor, member_id: str) -> bool:
        """Lower one member's hand; False if it was not raised."""
        self.require(actor)
        record, _ = await self._target(meeting_id, actor, member_id)
        assert record is not None
        if record.hand is None:
            return False
        updated = await self.service.members.update(meeting_id, member_id, {"hand": False})
        if updated is None:
            return False
        await self.service.chat.publish(MemberUpdated.of(updated, {"hand": None}, actor.label))
        await self._audit(meeting_id, "hand", True, False, actor, member_id)
        return True

    async def lower_all_hands(self, meeting_id: str, actor: Actor) -> Sequence[str]:
        """Lower every raised hand; the ids of those that were up, in the order raised."""
        self.require(actor)
        await self.service.require_meeting(meeting_id)
        lowered = await self.service.members.lower_hands(meeting_id)
        for record in lowered:
            await self.service.chat.publish(MemberUpdated.of(
                record, {"hand": None}, actor.label))
            await self._audit(meeting_id, "hand", True, False, actor, record.member_id)
        return [r.member_id for r in lowered]

    async def answer_unmute(
        self, meeting_id: str, actor: Actor, member_id: str, allow: bool
    ) -> MemberRecord:
        """Allow (the member may unmute: its block is lifted, and while the room's mic is off
        it is allowed anyway) or deny an ask to unmute."""
        self.require(actor)
        record, controls = await self._target(meeting_id, actor, member_id)
        assert record is not None
        if not record.ask_unmute:
            raise _denied("no_request", "that member has not asked to unmute")
        if allow and not controls.may(member_id, "mic"):
            # lifting a block is enough while the room's mic is on; else an explicit allow
            await self._write_flags(meeting_id, member_id,
                                    {"mic": None if controls["mic"] else True}, actor)
        updated = await self.service.members.update(meeting_id, member_id,
                                                    {"ask_unmute": False})
        if updated is None:
            raise _denied("member_not_found", "no member with that id in this meeting")
        await self.service.chat.publish(MemberUpdated.of(
            updated, {"ask_unmute": False}, actor.label))
        await self._audit(meeting_id, "unmute_allowed", False, allow, actor, member_id)
        return updated

    # --- a member's own -------------------------------------------------------------------

    async def _own(self, joined: Joined, changes: Mapping[str, object],
                   told: Mapping[str, str | bool | float | None],
                   limiter: RateLimiter) -> MemberRecord:
        if not limiter.allow():
            raise _denied("rate_limited", "too many hand raises or asks; slow down")
        record = joined.record
        updated = await self.service.members.update(record.meeting_id, record.member_id, changes)
        if updated is None:
            raise _denied("not_member", "you are not in this meeting")
        shown = {k: (updated.hand if k == "hand" else v) for k, v in told.items()}
        await self.service.chat.publish(MemberUpdated.of(updated, shown))
        return updated

    async def raise_hand(self, joined: Joined, up: bool, limiter: RateLimiter) -> MemberRecord:
        return await self._own(joined, {"hand": up}, {"hand": None}, limiter)

    async def ask_unmute(self, joined: Joined, ask: bool, limiter: RateLimiter) -> MemberRecord:
        """Ask (or stop asking) to be allowed to unmute: only while the member may not."""
        if ask:  # as the store has it: a switch made through another instance counts at once
            controls = await self.service.controls(joined.record.meeting_id)
            if controls.may(joined.record.member_id, "mic"):
                raise _denied("not_needed", "you may unmute already")
        return await self._own(joined, {"ask_unmute": ask}, {"ask_unmute": ask}, limiter)
