"""Meetings as the APIs see them: create, join, chat, control, leave, kick, end, export.

Both protocols (the seed's and v1) and the HTTP routes call this one service, so they see one
meeting. It is the only gateway to the stores and the hub: the APIs and the cluster tasks call
its methods, never its ``meetings``, ``members``, ``chat`` or ``hub`` (tests/test_layers.py
keeps it so). The service never writes to a member directly: every change goes to a store, and
what the members learn comes back through the stores' event streams (``on_meeting_event``,
``on_bus_event``) to the hub. That is what keeps one order per meeting, and it is the same path in
embedded and cluster mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import trio

from . import auth
from .closes import Close, LeaveReason
from .config import Config
from .controls import Controls, validate_changes
from .events import (
    BusEvent,
    ChatPosted,
    HubEvent,
    LobbyChanged,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
)
from .hub import Holder, Hub, Subscriber
from .instance_metrics import InstanceMetrics
from .join_tokens import JoinGrant, TokenRefused, verify_join_token
from .lobby import Outcome, Waiters
from .moderation import MODERATOR_ROLES, role_of, view
from .moderator import Moderator
from .stores.base import (
    AttendanceRecord,
    AuditEntry,
    ChatLog,
    ControlsChanged,
    History,
    Knock,
    MeetingEnded,
    MeetingEvent,
    MeetingFull,
    MeetingMeta,
    MeetingNotFound,
    MeetingStore,
    MemberRecord,
    MemberStore,
    Role,
    StoreUnavailable,
    Tombstone,
)
from .webhooks import events as webhook_events

if TYPE_CHECKING:
    from .webhooks import Webhooks

#: ``Subscriber`` is the hub's record of a connection, as the APIs and cluster tasks see it
__all__ = ["JOIN_POLICIES", "Denied", "Joined", "MeetingService", "RateLimiter", "Returning",
           "Subscriber"]

log = logging.getLogger("rmeeting.service")

#: who may join a meeting: anyone with its id; join tokens (and the host key) only; or anyone
#: who knocks and is admitted by the host (docs/integration.md)
JOIN_POLICIES = ("open", "token", "lobby")
#: the ban-list entry of an application user (a join token's ``sub``): never a member id,
#: which is hex
SUB_BAN = "sub:"


class Denied(Exception):
    """A request the rules refuse; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Created:
    meta: MeetingMeta
    controls: Controls
    host_key: str


@dataclass
class Joined:
    record: MemberRecord
    controls: Controls
    sub: Subscriber
    #: v1: the secret part of the reconnect token (None for the seed, whose userUid is the key)
    secret: str | None = None
    #: the meeting's record as the join read it (a welcome needs not read it again)
    meta: MeetingMeta | None = None


@dataclass(frozen=True)
class Returning:
    """A v1 member coming back with its token ``<member_id>.<secret>``, checked."""

    member_id: str
    secret: str
    name: str
    role: Role
    #: the application's user id it first joined with (a join token's), kept across reconnects
    sub: str = ""


@dataclass(frozen=True)
class Ticket:
    """What a redeemed WebSocket ticket stands for: the host key, a reconnect token, or both."""

    host: bool
    member_id: str = ""
    name: str = ""
    role: Role = "member"
    sub: str = ""


#: seconds a WebSocket ticket stays redeemable
TICKET_TTL = 30.0


class RateLimiter:
    """A token bucket: ``rate`` per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = trio.current_time()

    def allow(self) -> bool:
        now = trio.current_time()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class MeetingService:
    def __init__(
        self,
        config: Config,
        *,
        meetings: MeetingStore,
        members: MemberStore,
        chat: ChatLog,
        hub: Hub,
        instance_id: str,
        metrics: InstanceMetrics | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self.config = config
        self.meetings = meetings
        self.members = members
        self.chat = chat
        self.hub = hub
        self.instance_id = instance_id
        self.accepting = True
        self.metrics = metrics or InstanceMetrics()
        #: meeting id -> its budget of control changes on this instance (dropped when it ends)
        self._control_limits: dict[str, RateLimiter] = {}
        self.webhooks = webhooks
        # hashed like host keys: the keys themselves are compared only as hashes
        self._api_key_hashes = [auth.hash_secret(k) for k in config.api_keys]
        #: knockers waiting on this instance (join_policy lobby)
        self.waiters = Waiters()
        #: what the host and co-hosts do to one member, and members' hands and asks
        self.moderator = Moderator(self)

    # --- events from the stores, to the hub ---------------------------------------------

    async def on_meeting_event(self, event: MeetingEvent) -> None:
        self.metrics.on_meeting_event(event)
        if isinstance(event, MeetingEnded):
            self._control_limits.pop(event.meeting_id, None)
        self._webhook_for_meeting_event(event)
        await self.hub.deliver(event)
        if isinstance(event, MeetingEnded):
            self.waiters.end_meeting(event.meeting_id)
            # every instance (whoever ended it, an operator included): the ledger and bans go
            # when the retention does; idempotent, so N instances doing it is harmless
            try:
                await self._retire(event.meeting_id)
            except StoreUnavailable as exc:
                log.warning("meeting %s: retention not set: %s", event.meeting_id, exc)

    async def _retire(self, meeting_id: str) -> None:
        if self.config.retention > 0:
            await self.members.retire(meeting_id, keep=self.config.retention)
        else:
            await self.members.purge(meeting_id)
            await self.chat.drop(meeting_id)

    # --- credentials --------------------------------------------------------------------

    def is_api_key(self, key: str | None) -> bool:
        if not key:
            return False
        # every key compared (a list, not a short-cutting any()), each in constant time
        return any([auth.secret_matches(key, h) for h in self._api_key_hashes])

    def join_grant(self, meeting_id: str, access_token: str) -> JoinGrant:
        """A join token checked (signature, expiry, meeting, claims), or Denied with its
        ``token_*`` code."""
        try:
            return verify_join_token(access_token, meeting_id, self.config.api_keys,
                                     max_name_chars=self.config.max_name_chars)
        except TokenRefused as refused:
            raise Denied(refused.code, refused.message) from refused

    async def on_bus_event(self, event: BusEvent) -> None:
        self.metrics.on_bus_event(event)
        if isinstance(event, LobbyChanged) and event.state in ("admitted", "refused"):
            self.waiters.decide(event.meeting_id, event.member_id, event.state)
        await self.hub.deliver(event)

    # --- meetings -----------------------------------------------------------------------

    async def create_meeting(
        self,
        name: str,
        controls: Mapping[str, bool] | None = None,
        *,
        host_key: str | None = None,
        meeting_id: str | None = None,
        join_policy: str = "open",
    ) -> Created:
        if await self.meetings.count() >= self.config.max_meetings:
            raise Denied("too_many_meetings", "this server has its maximum number of meetings")
        try:
            initial = validate_changes(controls) if controls else {}
        except (KeyError, ValueError) as exc:
            raise Denied("bad_controls", str(exc).strip("'\"")) from exc
        if join_policy not in JOIN_POLICIES:
            raise Denied("bad_request", "join_policy must be open, token or lobby")
        host_key = host_key or auth.new_secret()
        meta = MeetingMeta(
            meeting_id=meeting_id or _uuid(),
            name=name[: self.config.max_name_chars * 4],
            created_at=time.time(),
            host_key_hash=auth.hash_secret(host_key),
            extra={"join_policy": join_policy} if join_policy != "open" else {},
        )
        created = await self.meetings.create(meta, initial)
        log.info("meeting created", extra={"meeting": meta.meeting_id})
        self._webhook(webhook_events.meeting_created, meta)
        return Created(meta, created, host_key)

    async def require_meeting(self, meeting_id: str) -> MeetingMeta:
        meta = await self.meetings.get(meeting_id)
        if meta is None:
            if await self.meetings.tombstone(meeting_id) is not None:
                raise Denied("meeting_ended", "the meeting has ended")
            raise Denied("meeting_not_found", "no such meeting")
        return meta

    async def live_or_ended(self, meeting_id: str) -> MeetingMeta | Tombstone:
        meta = await self.meetings.get(meeting_id)
        if meta is not None:
            return meta
        grave = await self.meetings.tombstone(meeting_id)
        if grave is None:
            raise Denied("meeting_not_found", "no such meeting")
        return grave

    async def require_reader(self, meeting_id: str, key: str | None) -> MeetingMeta | Tombstone:
        """The meeting or its tombstone, for its host or an API key (attendance, audit)."""
        found = await self.live_or_ended(meeting_id)
        meta = found.meta if isinstance(found, Tombstone) else found
        host = auth.secret_matches(key, meta.host_key_hash)
        if not host and not self.is_api_key(key):
            raise Denied("not_host", "only the meeting's host (or an API key) may do this")
        return found

    async def set_join_policy(self, meeting_id: str, policy: str) -> MeetingMeta:
        if policy not in JOIN_POLICIES:
            raise Denied("bad_request", "join_policy must be open, token or lobby")
        before = await self.require_meeting(meeting_id)
        try:
            meta = await self.meetings.update_meta(meeting_id, {"join_policy": policy})
        except MeetingNotFound as exc:
            raise Denied("meeting_not_found", "no such meeting") from exc
        if before.extra.get("join_policy") == "lobby" and policy == "open":
            await self.decide(meeting_id, None, admit=True)  # no lobby: nobody waits
        log.info("join policy changed", extra={"meeting": meeting_id, "policy": policy})
        return meta

    async def is_host(self, meeting_id: str, key: str | None) -> bool:
        """Whether ``key`` makes its bearer the host: the host key, until the host role was
        handed over; from then on only the host member's token ``<member_id>.<secret>``."""
        meta = await self.meetings.get(meeting_id)
        if meta is None:
            return False
        try:
            controls = await self.meetings.controls(meeting_id)
        except MeetingNotFound:
            return False
        if controls.host is None:
            return auth.secret_matches(key, meta.host_key_hash)
        member_id, dot, secret = (key or "").partition(".")
        if not dot or member_id != controls.host:
            auth.secret_matches(secret, "0" * 64)  # the same time either way
            return False
        try:
            await self.resolve_token(meeting_id, key or "")
        except Denied:
            return False
        return True

    async def require_host(self, meeting_id: str, key: str | None) -> MeetingMeta:
        meta = await self.require_meeting(meeting_id)
        if not await self.is_host(meeting_id, key):
            raise Denied("not_host", "only the meeting's host may do this")
        return meta

    async def current_controls(self, meeting_id: str) -> Controls:
        """The controls as this instance's members were last told (no store round trip when
        it has members of the meeting), else read from the store."""
        controls = self.hub.controls_of(meeting_id)
        if controls is None:
            controls = await self.controls(meeting_id)
        return controls

    def role(self, joined: Joined, controls: Controls) -> Role:
        """The member's role now (a hand-over or a promotion changes it mid-session)."""
        return role_of(joined.record.member_id, joined.record.role, controls)

    async def set_controls(
        self,
        meeting_id: str,
        changes: Mapping[str, Any],
        *,
        actor: str,
        expected_revision: int | None = None,
        ttl: float | None = None,
    ) -> Controls:
        try:
            valid = validate_changes(changes)
        except (KeyError, ValueError) as exc:
            raise Denied("bad_controls", str(exc).strip("'\"")) from exc
        if ttl is not None and not 0 < ttl <= 86400:
            raise Denied("bad_controls", "duration must be between 0 and 86400 seconds")
        self.spend_control(meeting_id)
        try:
            controls = await self.meetings.set_controls(
                meeting_id, valid, actor=actor, expected_revision=expected_revision, ttl=ttl
            )
        except MeetingNotFound as exc:
            raise Denied("meeting_not_found", "no such meeting") from exc
        # a device flag switched off turns every member's device off by itself: readers
        # compute devices from the flags (rmeeting.moderation), so nothing is written per member
        return controls

    def spend_control(self, meeting_id: str) -> None:
        """One control change of this meeting's budget, whoever asks (HTTP, v1, seed): a host
        key shared too widely must not flood every member and the audit trail."""
        limiter = self._control_limits.get(meeting_id)
        if limiter is None:
            limiter = self._control_limits[meeting_id] = RateLimiter(
                self.config.meeting_control_rate, self.config.meeting_control_burst)
        if not limiter.allow():
            raise Denied("rate_limited", "too many control changes in this meeting; slow down")

    async def end_meeting(self, meeting_id: str, *, reason: str = "ended by the host") -> bool:
        """End it (once, whoever races: the store's end is one compare-and-delete) and leave
        its tombstone for ``retention`` seconds; True for the one caller that ended it."""
        ended = await self.meetings.end(meeting_id, reason=reason,
                                        retention=self.config.retention)
        if ended:
            cleared = await self.members.clear_meeting(
                meeting_id, reason=LeaveReason.MEETING_ENDED
            )
            for record in cleared:
                self._webhook(webhook_events.member_left, record, LeaveReason.MEETING_ENDED)
            # the ledger is kept (until the retention passes) for the attendance; chat is dropped
            await self.chat.drop(meeting_id)
            await self._retire(meeting_id)
        return ended

    async def attendance(self, meeting_id: str) -> Sequence[AttendanceRecord]:
        return await self.members.attendance(meeting_id)

    async def list_meetings(self) -> Sequence[MeetingMeta]:
        return await self.meetings.list()

    async def find_meeting(self, meeting_id: str) -> MeetingMeta | None:
        return await self.meetings.get(meeting_id)

    async def present(self, meeting_id: str) -> Sequence[MemberRecord]:
        """The roster, without checking that the meeting exists (an ended one has none)."""
        return await self.members.roster(meeting_id)

    async def chat_history(self, meeting_id: str, after_seq: int, limit: int) -> History:
        return await self.chat.history(meeting_id, after_seq, limit)

    async def controls(self, meeting_id: str) -> Controls:
        try:
            return await self.meetings.controls(meeting_id)
        except MeetingNotFound as exc:
            raise Denied("meeting_not_found", "no such meeting") from exc

    async def roster(self, meeting_id: str) -> Sequence[MemberRecord]:
        """The members as everyone sees them: roles and devices under the current flags."""
        controls = await self.controls(meeting_id)
        return [view(r, controls) for r in await self.members.roster(meeting_id)]

    async def audit(self, meeting_id: str) -> Sequence[AuditEntry]:
        try:
            return await self.meetings.audit(meeting_id)
        except MeetingNotFound as exc:
            raise Denied("meeting_not_found", "no such meeting") from exc

    # --- the lobby (join_policy lobby) ----------------------------------------------------

    async def knock(self, meeting_id: str, name: str) -> Knock:
        """Wait in the lobby: the hosts and co-hosts see the knock. Call :meth:`await_decision`
        next, and :meth:`leave_lobby` in any case once done waiting."""
        meta = await self.require_meeting(meeting_id)
        if meta.extra.get("join_policy") != "lobby":
            raise Denied("bad_request", "this meeting has no lobby")
        knock = Knock(meeting_id, auth.new_id(),
                      name.strip()[: self.config.max_name_chars] or "guest", time.time())
        # listen before knocking: the decision may come from any instance, at once
        self.waiters.add(meeting_id, knock.member_id)
        await self.chat.subscribe(meeting_id)
        try:
            await self.members.knock(knock)
            await self.chat.publish(LobbyChanged(meeting_id, knock.member_id, knock.name,
                                                 "waiting"))
        except BaseException:
            await self.leave_lobby(knock)
            raise
        self._lobby_hook("member.waiting", knock)
        return knock

    async def await_decision(self, knock: Knock) -> Outcome:
        return await self.waiters.wait(knock.meeting_id, knock.member_id)

    async def leave_lobby(self, knock: Knock) -> None:
        """Done waiting (decided, or the knocker went away): if the knock is still in the
        lobby, it leaves it and the hosts see it go."""
        with trio.CancelScope(shield=True):
            self.waiters.remove(knock.meeting_id, knock.member_id)
            await self.chat.unsubscribe(knock.meeting_id)
            try:
                if await self.members.take_knock(knock.meeting_id, knock.member_id):
                    await self.chat.publish(LobbyChanged(knock.meeting_id, knock.member_id,
                                                         knock.name, "left"))
            except StoreUnavailable:
                log.warning("meeting %s: a knock could not leave the lobby", knock.meeting_id)

    async def lobby(self, meeting_id: str) -> Sequence[Knock]:
        return await self.members.waiting(meeting_id)

    async def decide(self, meeting_id: str, member_ids: Sequence[str] | None, *,
                     admit: bool) -> list[Knock]:
        """Admit or refuse knocks (all of them with None): each is decided once, whoever
        (host, co-host, on any instance) decides it too; the decided ones."""
        await self.require_meeting(meeting_id)
        if member_ids is None:
            member_ids = [k.member_id for k in await self.members.waiting(meeting_id)]
        decided = []
        for member_id in member_ids:
            knock = await self.members.take_knock(meeting_id, member_id)
            if knock is None:
                continue  # decided by someone else, or gone
            state: Literal["admitted", "refused"] = "admitted" if admit else "refused"
            await self.chat.publish(LobbyChanged(meeting_id, member_id, knock.name, state))
            self._lobby_hook("member.admitted" if admit else "member.refused", knock)
            decided.append(knock)
        return decided

    def _lobby_hook(self, kind: webhook_events.LobbyType, knock: Knock) -> None:
        """The one call site of the lobby's webhooks: each happening is reported once, by the
        instance where it happened (the knock's, or the decision's: ``take_knock`` lets one
        decider through), under a key naming it."""
        try:
            self.notify_lobby(kind, knock.meeting_id, knock.member_id,
                              {"name": knock.name, "since": knock.since},
                              key=f"{knock.member_id}:{kind}")
        except Exception:  # a webhook must never break the lobby
            log.exception("lobby webhook not emitted", extra={"meeting": knock.meeting_id})

    # --- members ------------------------------------------------------------------------

    async def join(
        self,
        meeting_id: str,
        *,
        name: str,
        protocol: Literal["seed", "v1"],
        outlet: Any,
        role: Role = "member",
        member_id: str | None = None,
        key: str | None = None,
        returning: bool = False,
        user_uid: str = "",
        holder: Holder | None = None,
        host_key: str | None = None,
        grant: JoinGrant | None = None,
        admitted: bool = False,
        app_sub: str = "",
    ) -> Joined:
        """Register a member and attach its connection; everyone learns ``member_joined``.

        ``key`` is the member's secret (the seed's userUid, or the secret of a v1 token);
        ``returning`` members (a valid token) may join a locked meeting. With ``holder``, the
        hub hands it the member's frames (``Subscriber.held``) until it is cleared. ``grant`` is
        a checked join token (its ``sub`` is recorded and may be banned); ``admitted``: let in
        from the lobby by the host; ``app_sub``: a returning member's application user id. With
        ``host_key``, the member joins as the host if it is the meeting's host credential
        (checked on the record the join reads anyway: no read of its own)."""
        if not self.accepting:
            raise Denied("draining", "this server is shutting down; reconnect")
        snapshot = await self.meetings.record_and_controls(meeting_id)  # one round trip
        if snapshot is None:
            await self.require_meeting(meeting_id)  # says why: ended, or never was
            raise Denied("meeting_not_found", "no such meeting")  # gone in between
        meta, controls = snapshot
        if host_key is not None and auth.secret_matches(host_key, meta.host_key_hash):
            role = "host"
        policy = meta.extra.get("join_policy", "open")
        if role != "host" and not returning and grant is None and not admitted:
            if policy == "token":
                raise Denied("token_required", "this meeting admits only members with a join "
                             "token (access_token)")
            if policy == "lobby":
                raise Denied("lobby", "this meeting has a waiting room: knock first")
        user_sub = grant.sub if grant is not None else app_sub
        if user_sub and await self.members.is_banned(meeting_id, SUB_BAN + user_sub):
            raise Denied("kicked", "you were removed from this meeting")
        if controls["locked"] and role != "host" and not returning:
            raise Denied("locked", "the meeting is locked: no new members may join")
        name = name.strip()[: self.config.max_name_chars] or "guest"
        secret = None
        if key is None:
            key = secret = auth.new_secret()
        record = MemberRecord(
            meeting_id=meeting_id,
            member_id=member_id or auth.new_id(),
            name=name,
            role=role,
            instance_id=self.instance_id,
            joined_at=time.time(),
            key_hash=auth.hash_secret(key),
            protocol=protocol,
            sub=user_sub,
        )
        if await self.members.is_banned(meeting_id, record.member_id):
            raise Denied("kicked", "you were removed from this meeting")
        sub = Subscriber(meeting_id, record.member_id, protocol, outlet, user_uid=user_uid,
                         record=record, held=holder)
        # listen before announcing: the member must see its own join and all that follows
        await self.chat.subscribe(meeting_id)
        await self.hub.attach(sub, controls)
        try:
            previous = await self.members.get(meeting_id, record.member_id)
            if previous is not None:
                # the instance holding the old socket (maybe this one) closes it
                await self._announce_left(
                    previous, LeaveReason.REPLACED,
                    close=(Close.REPLACED, "replaced by a newer connection"),
                )
            await self.members.join(record, max_members=self.config.max_members)
            sub.registered = True
            await self.chat.publish(MemberJoined.of(record))
            self._webhook(webhook_events.member_joined, record)
        except MeetingFull as exc:
            await self._unlisten(sub)
            raise Denied("meeting_full", "the meeting is full") from exc
        except BaseException:
            await self._unlisten(sub)
            raise
        return Joined(record, controls, sub, secret, meta)

    async def _unlisten(self, sub: Subscriber) -> None:
        with trio.CancelScope(shield=True):
            await self.hub.detach(sub)
            await self.chat.unsubscribe(sub.meeting_id)

    async def disconnected(self, joined: Joined, reason: LeaveReason) -> None:
        """The member's connection is over: leave (once), stop listening for it."""
        self.metrics.on_disconnected(reason)
        joined.sub.gone = True
        presence = joined.sub.record or joined.record
        with trio.CancelScope(shield=True):
            try:
                if not joined.sub.evicted:
                    # only this presence: the member may already be back, here or elsewhere
                    await self.leave(joined.record.meeting_id, joined.record.member_id, reason,
                                     instance_id=self.instance_id, joined_at=presence.joined_at)
            except Exception:
                log.exception("leave failed", extra={"meeting": joined.record.meeting_id})
            finally:
                await self._unlisten(joined.sub)

    async def leave(
        self,
        meeting_id: str,
        member_id: str,
        reason: LeaveReason,
        *,
        close: tuple[Close, str] | None = None,
        instance_id: str | None = None,
        joined_at: float | None = None,
    ) -> MemberRecord | None:
        record = await self.members.leave(
            meeting_id, member_id, reason=reason, instance_id=instance_id, joined_at=joined_at
        )
        if record is not None:
            await self._announce_left(record, reason, close=close)
        return record

    async def _announce_left(
        self, record: MemberRecord, reason: LeaveReason, *, close: tuple[Close, str] | None
    ) -> None:
        # the event names the presence (joined_at), so that a newer one of the member is not
        # closed
        await self.chat.publish(MemberLeft.of(record, reason, close))
        self._webhook(webhook_events.member_left, record, reason)

    async def leave_by_key(self, meeting_id: str, key: str) -> list[MemberRecord]:
        """The seed's LeaveMeeting: every presence of the member holding ``key`` leaves."""
        gone = []
        for record in await self.members.roster(meeting_id):
            if auth.secret_matches(key, record.key_hash):
                left = await self.leave(
                    meeting_id, record.member_id, LeaveReason.LEFT,
                    close=(Close.LEFT, "left the meeting"),
                )
                if left is not None:
                    gone.append(left)
        return gone

    # --- webhooks (rmeeting/webhooks): one non-blocking call per event ----------------------
    # Joins, leaves and creations are emitted by the instance that makes them; control changes
    # and ends by every instance whose watch sees them (the outbox keeps one per event id).

    def _webhook_for_meeting_event(self, event: MeetingEvent) -> None:
        if isinstance(event, ControlsChanged):
            self._webhook(webhook_events.controls_changed, event)
        elif isinstance(event, MeetingEnded):
            self._webhook(webhook_events.meeting_ended, event)

    def _webhook(self, build: Callable[..., webhook_events.WebhookEvent], *args: Any) -> None:
        if self.webhooks is None:  # built only when someone listens
            return
        try:
            self.webhooks.emit(build(*args))
        except Exception:  # a webhook must never break the meeting's own path
            log.exception("webhook event not built")

    def notify_lobby(
        self,
        kind: webhook_events.LobbyType,
        meeting_id: str,
        member_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """The lobby's webhook: ``member.waiting``, ``member.admitted`` or ``member.refused``.
        Never waits. ``key`` names the happening if several instances may report it (else
        emit it from one instance only)."""
        if self.webhooks is not None:
            self.webhooks.emit(
                webhook_events.lobby_event(kind, meeting_id, member_id, data, key=key))

    async def resolve_token(self, meeting_id: str, token: str) -> Returning:
        """Check a v1 reconnect token against the member's latest record.

        The member may be present (a second device, or a socket not yet seen dead) or gone: its
        attendance sessions keep the secret's hash, so a reconnect works after any leave except
        a kick."""
        member_id, dot, secret = token.partition(".")
        if not dot or not member_id or not secret:
            raise Denied("bad_token", "malformed token")
        await self.require_meeting(meeting_id)
        present = await self.members.get(meeting_id, member_id)
        known: MemberRecord | AttendanceRecord | None = present
        if known is None:
            sessions = [a for a in await self.members.attendance(meeting_id)
                        if a.member_id == member_id]
            known = sessions[-1] if sessions else None
        # compare even when nothing is known, so the answer takes the same time either way
        if not auth.secret_matches(secret, known.key_hash if known else "0" * 64) or not known:
            raise Denied("bad_token", "the token is not valid for this meeting")
        # only the token's holder learns that it was kicked
        if await self.members.is_banned(meeting_id, member_id):
            raise Denied("kicked", "you were removed from this meeting")
        if present is not None and present.protocol != "v1":
            raise Denied("bad_token", "that member is connected with the seed protocol")
        return Returning(member_id, secret, known.name, known.role, known.sub)

    async def issue_ticket(self, meeting_id: str, credential: str,
                           token: str | None = None) -> str:
        """A single-use ticket for the WebSocket, in exchange for the host key and/or a
        reconnect token presented over HTTP (so that neither has to be in a URL). It holds
        no secret: who it stands for, and for TICKET_TTL seconds."""
        host, back = False, None
        if "." in credential:  # host keys are url-safe base64 or uuids: never a dot
            back = await self.resolve_token(meeting_id, credential)
        else:
            await self.require_host(meeting_id, credential)
            host = True
            if token:
                back = await self.resolve_token(meeting_id, token)
        payload: dict[str, Any] = {"meeting_id": meeting_id, "host": host}
        if back is not None:
            payload |= {"member_id": back.member_id, "name": back.name, "role": back.role,
                        "sub": back.sub}
        ticket = auth.new_secret()
        await self.meetings.put_ticket(auth.hash_secret(ticket), payload, TICKET_TTL)
        return ticket

    async def redeem_ticket(self, meeting_id: str, ticket: str) -> Ticket:
        payload = await self.meetings.take_ticket(auth.hash_secret(ticket))
        if payload is None or payload.get("meeting_id") != meeting_id:
            raise Denied("bad_ticket", "the ticket is unknown, used, expired or for another "
                         "meeting")
        role = payload.get("role")
        return Ticket(bool(payload.get("host")), str(payload.get("member_id") or ""),
                      str(payload.get("name") or ""),
                      role if role in ("host", "cohost", "member") else "member",
                      str(payload.get("sub") or ""))

    async def remove_member(self, meeting_id: str, member_id: str) -> MemberRecord | None:
        """The host's kick: refused for an id that never attended (so no stray bans); the
        record if it was present, None if it had already gone (its token is banned anyway)."""
        await self.require_meeting(meeting_id)
        if not any(a.member_id == member_id for a in await self.members.attendance(meeting_id)):
            raise Denied("member_not_found", "no member with that id in this meeting")
        return await self.kick(meeting_id, member_id)

    async def kick(self, meeting_id: str, member_id: str) -> MemberRecord | None:
        """Ban the member's reconnect token and, when it came with a join token's ``sub``, the
        application's user too: a new token for the same user cannot bring it back."""
        present = await self.members.get(meeting_id, member_id)
        sub = present.sub if present is not None else next(
            (a.sub for a in reversed(await self.members.attendance(meeting_id))
             if a.member_id == member_id), "")
        if sub:
            await self.members.ban(meeting_id, SUB_BAN + sub)
        await self.members.ban(meeting_id, member_id)
        return await self.leave(
            meeting_id, member_id, LeaveReason.KICKED, close=(Close.KICKED, "removed by the host")
        )

    async def chat_message(
        self, joined: Joined, text: str, limiter: RateLimiter
    ) -> ChatPosted:
        record = joined.record
        if not text.strip():
            raise Denied("empty", "empty message")
        if len(text) > self.config.max_chat_chars:
            raise Denied("too_long", f"chat is limited to {self.config.max_chat_chars} characters")
        # the hub's copy is what the members were last told, kept current by the store's
        # event stream; a store read per message would cost a round trip in cluster mode
        controls = self.hub.controls_of(record.meeting_id)
        if controls is None:
            controls = await self.meetings.controls(record.meeting_id)
        role = self.role(joined, controls)
        if role not in MODERATOR_ROLES and not controls.may(record.member_id, "chat"):
            if not controls["chat"]:
                raise Denied("chat_disabled", "the host has turned chat off")
            raise Denied("chat_disabled", "the host does not allow you to chat")
        if not limiter.allow():
            raise Denied("rate_limited", "too many messages; slow down")
        # the sender's name: only its own session renames it, and keeps joined.record current
        event = await self.chat.publish(
            ChatPosted(record.meeting_id, record.member_id, record.name, role, text)
        )
        self.metrics.chat_in.inc()
        return event

    async def update_member(
        self, joined: Joined, changes: Mapping[str, Any]
    ) -> MemberRecord:
        """Rename, or declare camera/mic state; the flags are checked here."""
        record = joined.record
        if not changes:
            raise Denied("bad_request", "nothing to change")
        clean: dict[str, Any] = {}
        controls = await self.meetings.controls(record.meeting_id)
        me = record.member_id
        for key, value in changes.items():
            if key == "name":
                if not isinstance(value, str) or not value.strip():
                    raise Denied("bad_request", "name must be a non-empty string")
                if self.role(joined, controls) not in MODERATOR_ROLES and not controls.may(
                        me, "rename"):
                    raise Denied("rename_disabled", "the host does not allow renaming")
                clean["name"] = value.strip()[: self.config.max_name_chars]
            elif key in ("camera", "mic"):
                if not isinstance(value, bool):
                    raise Denied("bad_request", f"{key} must be true or false")
                if value and not controls.may(me, key):
                    raise Denied(f"{key}_disabled", f"the host does not allow the {key} now")
                clean[key] = value
            else:
                raise Denied("bad_request", f"cannot change {key!r}")
        if "camera" in clean or "mic" in clean:
            # declared against these controls: the other device as it is now (a switch may
            # have turned it off since it was declared), both stamped with this revision
            current = await self.members.get(record.meeting_id, me)
            if current is not None:
                for device in ("camera", "mic"):
                    clean.setdefault(device, controls.device_on(
                        me, device, getattr(current, device), current.media_rev))
            clean["media_rev"] = controls.revision
        updated = await self.members.update(record.meeting_id, me, clean)
        if updated is None:
            raise Denied("not_member", "you are not in this meeting")
        joined.record = replace(record, name=updated.name)
        if joined.sub.record is not None and joined.sub.record.joined_at == updated.joined_at:
            joined.sub.record = updated  # still this presence (not a newer one elsewhere)
        told = {k: v for k, v in clean.items() if k in changes}
        await self.chat.publish(MemberUpdated.of(updated, told))
        return view(updated, controls)

    # --- this instance and its presences (for the cluster tasks) ------------------------

    def connections(self) -> list[Subscriber]:
        """This instance's attached connections, now."""
        return self.hub.subscribers()

    def local_meeting_ids(self) -> list[str]:
        """The meetings this instance has members of, now."""
        return self.hub.meeting_ids()

    def chat_position(self, meeting_id: str) -> tuple[int, float]:
        """The last chat seq this instance's members of the meeting got, and since when the
        instance has members of it (``Hub.chat_position``)."""
        return self.hub.chat_position(meeting_id)

    async def deliver_here(self, event: HubEvent) -> None:
        """Hand ``event`` to this instance's members only, not through a store: for what only
        this instance knows (its relay's state) or fetched for itself (chat it missed)."""
        await self.hub.deliver(event)

    async def restart_chat_numbering(self, meeting_id: str) -> None:
        """The chat log numbers from 1 again (a Redis that lost its data): forget the seq."""
        await self.hub.set_last_seq(meeting_id, 0)

    async def presence(self, meeting_id: str, member_id: str) -> MemberRecord | None:
        return await self.members.get(meeting_id, member_id)

    async def presences_through(self, instance_id: str) -> Sequence[MemberRecord]:
        return await self.members.by_instance(instance_id)

    async def instances_with_presences(self) -> Sequence[str]:
        """A superset of the instances holding presences (``MemberStore.instances``)."""
        return await self.members.instances()

    async def register_again(self, sub: Subscriber, record: MemberRecord) -> None:
        """Put back a presence the member store lost, as ``record`` (its connection ``sub`` is
        still here), and announce it; raises MeetingFull."""
        await self.members.join(record, max_members=self.config.max_members)
        sub.record = record
        await self.chat.publish(MemberJoined.of(record))


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())
