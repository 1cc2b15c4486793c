"""The v1 WebSocket protocol: one member's session at ``/v1/meetings/{id}/ws`` (docs/protocol.md).

Query parameters: ``name``; ``token`` (come back as the same member); ``last_seq`` (the last chat
seq this client saw: the welcome then carries exactly what it missed, or says there is a gap);
``host_key`` (or ``Authorization: Bearer <host_key>``) to join as the host; ``access_token`` (a
join token: name and role from its claims); ``ticket`` (single-use, from
``POST /v1/meetings/{id}/tickets``). With ``auth=frame`` none of the secrets is in the URL: the
client's first frame is ``{"type": "auth", ...}`` carrying them (docs/protocol.md).

Every client frame is a JSON object with a ``type`` and an optional ``id`` echoed in the answer
(``ack``, ``pong`` or ``error``). A bad frame gets an ``error`` and the connection stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from .. import auth
from ..closes import Close
from ..events import ChatPosted, ControlsChanged, HubEvent, MemberJoined, MemberLeft
from ..lobby import Outcome
from ..moderation import view
from ..moderator import Actor
from ..service import Denied, Joined, MeetingService, RateLimiter
from ..stores.base import RevisionConflict, StoreUnavailable
from ..transport.frontdoor import Handshake
from ..transport.websocket import BadFrame, WebSocket, text_frame
from ..wire import BadInput, decode, readable_id, v1
from .seed import DENIED_CLOSE_CODES, leave_reason

__all__ = ["v1_session"]

log = logging.getLogger("rmeeting.v1")

#: why a join was refused -> close code; the seed's, plus a store outage (try again later)
CLOSE_CODES = {**DENIED_CLOSE_CODES, "unavailable": Close.TRY_AGAIN,
               "bad_ticket": Close.BAD_TOKEN}
MAX_ID_CHARS = 128
#: seconds a client that said ``auth=frame`` has to send its first frame
AUTH_FRAME_TIMEOUT = 10.0
#: the secrets a client may present, in the query or in its first (``auth``) frame
_CREDENTIALS = ("name", "host_key", "token", "access_token", "ticket", "last_seq")
#: seconds the welcome waits for the member's own join to come back through the hub
OWN_JOIN_TIMEOUT = 2.0


class _Gate:
    """Holds the member's event frames while its welcome is being put together.

    The member is attached to the hub *before* the snapshot is read, so nothing published after
    the snapshot can be missed; what the hub sends meanwhile is handed here (with its event:
    ``Subscriber.held``), then released after the welcome minus what the welcome already shows
    (chat up to its seq, controls up to its revision, the member's own join). The snapshot is
    read once the member's own join has come through the hub, so what was in flight before it
    is held (and filtered) too. Bounded like the outbox: past it, a slow consumer."""

    def __init__(self, ws: WebSocket, limit: int) -> None:
        self.ws = ws
        self.member_id = ""
        self.own_join = trio.Event()
        self._limit = limit
        self._held: list[tuple[HubEvent, bytes]] = []
        self._bytes = 0

    def hold(self, event: HubEvent, frame: bytes) -> None:
        if self.ws.closing:
            self.own_join.set()  # nothing more to wait for
            return
        self._bytes += len(frame)
        if self._bytes > self._limit:
            self.ws.close_nowait(Close.SLOW_CONSUMER, "slow consumer: outgoing queue full")
            self.own_join.set()
            return
        self._held.append((event, frame))
        self._check(event)

    def expect(self, member_id: str) -> None:
        """Watch for this member's own join (it may already be held)."""
        self.member_id = member_id
        for event, _frame in self._held:
            self._check(event)

    def _check(self, event: HubEvent) -> None:
        if isinstance(event, MemberJoined) and event.member_id == self.member_id:
            self.own_join.set()

    def release(self, joined: Joined, first: bytes, keep: Callable[[HubEvent], bool]) -> None:
        """Send ``first``, then what was held and ``keep`` accepts; from now on the hub writes
        to the member's socket itself."""
        held, self._held = self._held, []
        joined.sub.held = None
        # all in one write: in a join storm a welcome may have hundreds of joins behind it
        frames = [text_frame(first), *(frame for event, frame in held if keep(event))]
        self.ws.send_frame_nowait(b"".join(frames))


def _refuse(ws: WebSocket, code: str, message: str) -> None:
    ws.send_text_nowait(v1.error(code, message))
    ws.close_nowait(CLOSE_CODES.get(code, Close.BAD_REQUEST), message)


async def v1_session(service: MeetingService, hs: Handshake) -> None:
    """One v1 client, from the upgrade to its leave."""
    ws = hs.accept()
    async with ws.connected():
        try:
            await _session(service, hs, ws)
        except Exception:  # a bug must cost this member its connection, not the front door
            log.exception("v1 session failed", extra={"meeting": hs.params["meeting_id"]})
            ws.close_nowait(Close.INTERNAL, "internal error")


@dataclass
class _Credentials:
    name: str = ""
    host_key: str | None = None
    token: str | None = None
    access_token: str | None = None
    ticket: str | None = None
    last_seq: str | None = None


async def _credentials(hs: Handshake, ws: WebSocket) -> _Credentials:
    """From the query (and the Authorization header), or, with ``auth=frame``, from the first
    frame, so that no secret has to be in a URL (where proxies and browsers log it)."""
    if hs.query.get("auth") != "frame":
        found = _Credentials(**{k: hs.query.get(k) or None for k in _CREDENTIALS[1:]},
                             name=hs.query.get("name", ""))
        found.host_key = found.host_key or auth.bearer(hs.headers.get("authorization", ""))
        return found
    with trio.move_on_after(AUTH_FRAME_TIMEOUT):
        message = await ws.messages().receive()
        frame = _decode(message)
        if frame.get("type") != "auth":
            raise Denied("bad_request", "with auth=frame the first frame must be "
                         '{"type": "auth", ...}')
        body = _fields(frame, optional={k: "a string" for k in _CREDENTIALS[:-1]}
                       | {"last_seq": "an integer"})
        last_seq = body.pop("last_seq", None)
        return _Credentials(**body, last_seq=None if last_seq is None else str(last_seq))
    raise Denied("bad_request", f"no auth frame within {AUTH_FRAME_TIMEOUT:g} seconds")


async def _session(service: MeetingService, hs: Handshake, ws: WebSocket) -> None:
    gate = _Gate(ws, service.config.outbox_bytes)
    try:
        creds = await _credentials(hs, ws)
        last_seq = _last_seq(creds.last_seq)
        joined, token, resumed = await _join(service, hs.params["meeting_id"], creds, gate)
    except Denied as denied:
        _refuse(ws, denied.code, denied.message)
        return
    except StoreUnavailable:
        _refuse(ws, "unavailable", "a store is unavailable; reconnect later")
        return
    try:
        await _welcome(service, joined, token, resumed, last_seq, gate)
        await _serve_frames(service, ws, joined)
    except Denied as denied:  # the meeting ended while the welcome was being read
        _refuse(ws, denied.code, denied.message)
    except StoreUnavailable:
        _refuse(ws, "unavailable", "a store is unavailable; reconnect later")
    finally:
        await service.disconnected(joined, leave_reason(ws, not service.accepting))


def _last_seq(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise Denied("bad_request", "last_seq must be a non-negative integer")
    return int(raw)


async def _join(
    service: MeetingService, meeting_id: str, creds: _Credentials, gate: _Gate
) -> tuple[Joined, str, bool]:
    """Join as a new member, or as the token's member; ``host_key`` makes either the host; an
    ``access_token`` (join token) gives the name and role; a ``ticket`` stands for a host key
    and/or a reconnect token presented over HTTP."""
    name = creds.name
    is_host = False
    if creds.host_key:
        # a wrong key is refused, not demoted
        await service.require_host(meeting_id, creds.host_key)
        is_host = True
    token = creds.token
    if creds.ticket:
        redeemed = await service.redeem_ticket(meeting_id, creds.ticket)
        is_host = is_host or redeemed.host
        if redeemed.member_id:  # a reconnect: a fresh secret, so a fresh token in the welcome
            joined = await service.join(
                meeting_id, name=redeemed.name, protocol="v1", outlet=gate.ws, holder=gate,
                role="host" if is_host else redeemed.role, member_id=redeemed.member_id,
                returning=True, app_sub=redeemed.sub,
            )
            assert joined.secret is not None
            return joined, f"{joined.record.member_id}.{joined.secret}", True
    if creds.access_token and not token:
        grant = service.join_grant(meeting_id, creds.access_token)
        joined = await service.join(
            meeting_id, name=grant.name, protocol="v1", outlet=gate.ws, holder=gate,
            role="host" if is_host else grant.role, grant=grant,
        )
        assert joined.secret is not None
        return joined, f"{joined.record.member_id}.{joined.secret}", False
    if token:
        back = await service.resolve_token(meeting_id, token)
        # back under its own name: a new one in the query would get round the rename flag
        joined = await service.join(
            meeting_id, name=back.name, protocol="v1", outlet=gate.ws, holder=gate,
            role="host" if is_host else back.role,
            member_id=back.member_id, key=back.secret, returning=True, app_sub=back.sub,
        )
        return joined, token, True
    try:
        joined = await service.join(
            meeting_id, name=name, protocol="v1", outlet=gate.ws, holder=gate,
            role="host" if is_host else "member",
        )
    except Denied as denied:
        if denied.code != "lobby":
            raise
        joined = await _wait_in_lobby(service, meeting_id, name, gate)
    assert joined.secret is not None  # a new member always gets a fresh secret
    return joined, f"{joined.record.member_id}.{joined.secret}", False


async def _wait_in_lobby(
    service: MeetingService, meeting_id: str, name: str, gate: _Gate
) -> Joined:
    """Knock, say so, and wait (answering pings) until the host decides, the meeting ends or
    the knocker goes away; then join, or refuse with a clear code."""
    ws = gate.ws
    knock = await service.knock(meeting_id, name)
    ws.send_text_nowait(v1.message(
        "waiting", member_id=knock.member_id, name=knock.name,
        message="the meeting has a waiting room: the host will let you in"))
    outcome: Outcome | None = None
    try:
        async with trio.open_nursery() as nursery:

            async def decision() -> None:
                nonlocal outcome
                outcome = await service.await_decision(knock)
                nursery.cancel_scope.cancel()

            async def meanwhile() -> None:
                async for message in ws.messages():
                    frame: dict[str, Any] = {}
                    try:
                        frame = _decode(message)
                        if frame.get("type") == "ping":
                            ws.send_text_nowait(v1.ack(frame.get("id"), "pong"))
                            continue
                        raise Denied("in_lobby", "you are in the waiting room: wait to be let in")
                    except Denied as denied:
                        ws.send_text_nowait(v1.error(denied.code, denied.message,
                                                     reply_to=_reply_to(frame, denied)))
                nursery.cancel_scope.cancel()  # the knocker went away

            nursery.start_soon(decision)
            nursery.start_soon(meanwhile)
    finally:
        await service.leave_lobby(knock)
    if outcome is None:
        raise Denied("closed", "left the waiting room")
    if outcome == "refused":
        raise Denied("refused", "the host did not let you in")
    if outcome == "ended":
        raise Denied("meeting_ended", "the meeting has ended")
    return await service.join(meeting_id, name=knock.name, protocol="v1", outlet=gate.ws,
                              holder=gate, member_id=knock.member_id, admitted=True)


async def _welcome(
    service: MeetingService,
    joined: Joined,
    token: str,
    resumed: bool,
    last_seq: int | None,
    gate: _Gate,
) -> None:
    me = joined.record
    gate.expect(me.member_id)
    # bounded: a relay outage must delay the welcome, not withhold it
    with trio.move_on_after(OWN_JOIN_TIMEOUT):
        await gate.own_join.wait()
    # the record as the join read it; controls() still says if the meeting ended meanwhile
    controls = await service.controls(me.meeting_id)
    meta = joined.meta or await service.require_meeting(me.meeting_id)
    # roles and devices as the flags say (a switch turned devices off without a write)
    roster = [view(r, controls) for r in await service.present(me.meeting_id)]
    me = view(me, controls)
    lobby = await service.lobby(me.meeting_id) if me.role in ("host", "cohost") else None
    config = service.config
    if last_seq is None:
        history = await service.chat_history(me.meeting_id, 0, config.welcome_history)
        recent = list(history.events)[-config.welcome_history:] if config.welcome_history else []
        frame = v1.welcome(you=me, token=token, meta=meta, controls=controls, roster=roster,
                           last_seq=history.last_seq, recent=recent, resumed=resumed,
                           lobby=lobby)
    else:
        history = await service.chat_history(me.meeting_id, last_seq, config.history_limit)
        frame = v1.welcome(you=me, token=token, meta=meta, controls=controls, roster=roster,
                           last_seq=history.last_seq, recent=None, missed=history.events,
                           gap=not history.complete, resumed=resumed, lobby=lobby)
    upto = joined.sub.skip_chat_upto = history.last_seq

    def fresh(event: HubEvent) -> bool:
        match event:
            case ChatPosted():
                return event.seq > upto
            case ControlsChanged():
                return event.controls.revision > controls.revision
            case MemberJoined() | MemberLeft():
                return event.member_id != me.member_id
            case _:
                return True

    gate.release(joined, frame, fresh)


# --- client frames ------------------------------------------------------------------------

Handler = Callable[["_Session", dict[str, Any]], Awaitable[dict[str, Any]]]

#: JSON types a field may have, by the name used in error messages
_KINDS: Mapping[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "true or false": lambda v: isinstance(v, bool),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
}


def _fields(
    frame: dict[str, Any],
    required: Mapping[str, str] | None = None,
    optional: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The frame's fields, checked: no unknown ones, required present, types right.
    An optional field given as null counts as absent."""
    required, optional = required or {}, optional or {}
    unknown = sorted(set(frame) - {"type", "id"} - set(required) - set(optional))
    if unknown:
        raise Denied("bad_request", f"unknown field(s) for {frame['type']}: {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, kind in {**required, **optional}.items():
        value = frame.get(name)
        if value is None and name in optional:
            continue
        if name not in frame:
            raise Denied("bad_request", f"{frame['type']} needs {name}")
        if not _KINDS[kind](value):
            raise Denied("bad_request", f"{name} must be {kind}")
        out[name] = value
    return out


class _Session:
    def __init__(self, service: MeetingService, ws: WebSocket, joined: Joined) -> None:
        self.service = service
        self.ws = ws
        self.joined = joined
        # one budget for everything a member broadcasts (chat, renames, media changes)
        self.limiter = RateLimiter(service.config.chat_rate, service.config.chat_burst)
        # host actions have their own, smaller budget (and the meeting has one more, for all)
        self.control_limiter = RateLimiter(service.config.control_rate,
                                           service.config.control_burst)
        # hands and asks to unmute: a budget of their own, against floods
        self.hand_limiter = RateLimiter(service.config.hand_rate, service.config.hand_burst)

    @property
    def meeting_id(self) -> str:
        return self.joined.record.meeting_id

    async def actor(self, *, fresh: bool = True) -> Actor:
        """Who this member is now (a promotion or a hand-over changes it mid-session)."""
        return await self.service.moderator.session_actor(self.joined, fresh=fresh)

    async def require_host(self, *, host_only: bool = True) -> Actor:
        """The host (or, unless ``host_only``, a co-host) is asking; else ``not_host``. From
        this instance's copy of the controls: a flip from the host's connection costs no store
        read (a role change counts here once the watch has seen it, within milliseconds)."""
        actor = await self.actor(fresh=False)
        if host_only and actor.role != "host":
            raise Denied("not_host", "only the meeting's host may do this")
        self.service.moderator.require(actor)
        return actor

    async def require_moderator(self) -> Actor:
        """The lobby is the host's and the co-hosts' (issue #12), as their roles are now."""
        return await self.require_host(host_only=False)

    def spend(self) -> None:
        if not self.limiter.allow():
            raise Denied("rate_limited", "too many messages; slow down")

    def spend_control(self) -> None:
        if not self.control_limiter.allow():
            raise Denied("rate_limited", "too many control frames; slow down")

    async def chat(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"text": "a string"})
        event = await self.service.chat_message(self.joined, body["text"], self.limiter)
        return {"seq": event.seq}

    async def rename(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"name": "a string"})
        self.spend()
        record = await self.service.update_member(self.joined, body)
        return {"name": record.name}

    async def media(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, optional={"camera": "true or false", "mic": "true or false"})
        if not body:
            raise Denied("bad_request", "media needs camera or mic")
        self.spend()
        record = await self.service.update_member(self.joined, body)
        return {"camera": record.camera, "mic": record.mic}

    async def set_controls(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"controls": "an object"},
                       {"expected_revision": "an integer", "duration": "a number"})
        await self.require_host(host_only=False)
        self.spend_control()
        expected = body.get("expected_revision")
        if expected is not None and not 0 <= expected < 2**63:
            raise Denied("bad_request", "expected_revision must not be negative")
        controls = await self.service.set_controls(
            self.meeting_id, body["controls"], actor=self.joined.record.member_id,
            expected_revision=expected, ttl=body.get("duration"),
        )
        return {"controls": controls.as_dict(), "revision": controls.revision}

    async def kick(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"member_id": "a string"})
        await self.require_host(host_only=False)
        self.spend_control()
        if body["member_id"] == self.joined.record.member_id:
            raise Denied("bad_request", "you cannot kick yourself; close the connection instead")
        record = await self.service.remove_member(self.meeting_id, body["member_id"])
        return {"member_id": body["member_id"], "was_present": record is not None}

    async def set_join_policy(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"join_policy": "a string"})
        await self.require_host(host_only=False)  # a co-host may, as the host
        meta = await self.service.set_join_policy(self.meeting_id, body["join_policy"])
        return {"join_policy": meta.extra["join_policy"]}

    async def admit(self, frame: dict[str, Any]) -> dict[str, Any]:
        return await self._decide(frame, admit=True)

    async def refuse(self, frame: dict[str, Any]) -> dict[str, Any]:
        return await self._decide(frame, admit=False)

    async def _decide(self, frame: dict[str, Any], *, admit: bool) -> dict[str, Any]:
        body = _fields(frame, optional={"member_id": "a string", "all": "true or false"})
        await self.require_moderator()
        everyone = body.get("all") is True
        if everyone == ("member_id" in body):
            raise Denied("bad_request", f"{frame['type']} needs member_id or all: true")
        decided = await self.service.decide(
            self.meeting_id, None if everyone else [body["member_id"]], admit=admit)
        return {"member_ids": [k.member_id for k in decided]}

    async def end(self, frame: dict[str, Any]) -> dict[str, Any]:
        _fields(frame)
        await self.require_host()
        # the ack may not arrive: the meeting_ended event and the close are the answer
        await self.service.end_meeting(self.meeting_id)
        return {}

    async def ping(self, frame: dict[str, Any]) -> dict[str, Any]:
        _fields(frame)
        return {}

    # --- moderation (docs/protocol.md, Moderation) --------------------------------------------

    async def _moderating(self) -> Actor:
        actor = await self.actor()
        self.service.moderator.require(actor)
        self.spend_control()
        return actor

    async def turn_off(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"member_id": "a string"}, {"device": "a string"})
        device = body.get("device", "mic")
        if device not in ("mic", "camera"):
            raise Denied("bad_request", "device must be mic or camera")
        actor = await self._moderating()
        await self.service.moderator.turn_off(self.meeting_id, actor, body["member_id"], device)
        return {"member_id": body["member_id"], "device": device}

    async def member_controls(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"member_id": "a string", "controls": "an object"})
        actor = await self._moderating()
        controls = await self.service.moderator.set_flags(
            self.meeting_id, actor, body["member_id"], body["controls"])
        own = controls.members.get(body["member_id"], {})
        return {"member_id": body["member_id"], "revision": controls.revision,
                "controls": {f: v for f, v in own.items() if f != "cohost"}}

    async def set_role(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"member_id": "a string", "role": "a string"})
        actor = await self._moderating()
        controls = await self.service.moderator.set_role(
            self.meeting_id, actor, body["member_id"], body["role"])
        return {"member_id": body["member_id"], "role": body["role"],
                "revision": controls.revision}

    async def hand_over(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"member_id": "a string"})
        actor = await self._moderating()
        controls = await self.service.moderator.hand_over(
            self.meeting_id, actor, body["member_id"])
        return {"host": controls.host, "revision": controls.revision}

    async def raise_hand(self, frame: dict[str, Any]) -> dict[str, Any]:
        _fields(frame)
        record = await self.service.moderator.raise_hand(self.joined, True, self.hand_limiter)
        return {"hand": record.hand}

    async def lower_hand(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Lower your own hand; with ``member_id``, a moderator lowers that member's."""
        body = _fields(frame, optional={"member_id": "a string"})
        target = body.get("member_id")
        if target is None or target == self.joined.record.member_id:
            await self.service.moderator.raise_hand(self.joined, False, self.hand_limiter)
            return {"member_id": self.joined.record.member_id}
        actor = await self._moderating()
        was_up = await self.service.moderator.lower_hand(self.meeting_id, actor, target)
        return {"member_id": target, "was_raised": was_up}

    async def lower_hands(self, frame: dict[str, Any]) -> dict[str, Any]:
        _fields(frame)
        actor = await self._moderating()
        lowered = await self.service.moderator.lower_all_hands(self.meeting_id, actor)
        return {"lowered": list(lowered)}

    async def ask_unmute(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, optional={"cancel": "true or false"})
        ask = not body.get("cancel", False)
        await self.service.moderator.ask_unmute(self.joined, ask, self.hand_limiter)
        return {"asking": ask}

    async def answer_unmute(self, frame: dict[str, Any]) -> dict[str, Any]:
        body = _fields(frame, {"member_id": "a string", "allow": "true or false"})
        actor = await self._moderating()
        await self.service.moderator.answer_unmute(
            self.meeting_id, actor, body["member_id"], body["allow"])
        return {"member_id": body["member_id"], "allow": body["allow"]}


HANDLERS: Mapping[str, Handler] = {
    "chat": _Session.chat,
    "rename": _Session.rename,
    "media": _Session.media,
    "set_controls": _Session.set_controls,
    "kick": _Session.kick,
    "set_join_policy": _Session.set_join_policy,
    "admit": _Session.admit,
    "refuse": _Session.refuse,
    "end": _Session.end,
    "ping": _Session.ping,
    "turn_off": _Session.turn_off,
    "member_controls": _Session.member_controls,
    "set_role": _Session.set_role,
    "hand_over": _Session.hand_over,
    "raise_hand": _Session.raise_hand,
    "lower_hand": _Session.lower_hand,
    "lower_hands": _Session.lower_hands,
    "ask_unmute": _Session.ask_unmute,
    "answer_unmute": _Session.answer_unmute,
}


class _Refused(Denied):
    """A frame the decoder refused whole; ``reply_to`` is its id where that could be read."""

    def __init__(self, code: str, message: str, reply_to: str | int | None) -> None:
        super().__init__(code, message)
        self.reply_to = reply_to


def _reply_to(frame: dict[str, Any], exc: Exception) -> Any:
    """The id an error answers: the decoded frame's, else what the decoder could read."""
    if frame:
        return frame.get("id")
    return exc.reply_to if isinstance(exc, _Refused) else None


def _decode(message: str | BadFrame) -> dict[str, Any]:
    """A JSON object whose ``id``, if any, can be echoed."""
    if isinstance(message, BadFrame):
        raise Denied("bad_frame", f"{message.kind} frames are not supported; send JSON text")
    try:
        frame = decode(message)
    except BadInput as exc:
        # a pipelining client must learn which of its requests this was
        raise _Refused(exc.code, exc.message,
                       readable_id(message, max_chars=MAX_ID_CHARS)) from exc
    if not isinstance(frame, dict):
        raise Denied("bad_request", "a frame must be a JSON object")
    reply_to = frame.get("id")
    if reply_to is not None and not (
        (isinstance(reply_to, str) and len(reply_to) <= MAX_ID_CHARS)
        or (isinstance(reply_to, int) and not isinstance(reply_to, bool))
    ):
        raise Denied("bad_request", f"id must be a string (at most {MAX_ID_CHARS}) or an integer")
    return frame


def _handler(frame: dict[str, Any]) -> Handler:
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise Denied("bad_request", "a frame needs a string type")
    if kind not in HANDLERS:
        raise Denied("unknown_type", f"unknown frame type {kind[:40]!r}")
    return HANDLERS[kind]


async def _serve_frames(service: MeetingService, ws: WebSocket, joined: Joined) -> None:
    session = _Session(service, ws, joined)
    async for message in ws.messages():
        frame: dict[str, Any] = {}  # until decoded, there is no id to echo
        try:
            frame = _decode(message)
            fields = await _handler(frame)(session, frame)
        except Denied as denied:
            reply = v1.error(denied.code, denied.message, reply_to=_reply_to(frame, denied))
        except RevisionConflict as exc:
            reply = v1.error("revision_conflict", str(exc), reply_to=frame.get("id"),
                             revision=exc.current)
        except StoreUnavailable:
            reply = v1.error("unavailable", "a store is unavailable; try again",
                             reply_to=frame.get("id"))
        except Exception:  # a bug must cost this frame, not the member's connection
            log.exception("v1 frame failed", extra={"meeting": joined.record.meeting_id})
            reply = v1.error("internal", "internal error", reply_to=frame.get("id"))
        else:
            if frame["type"] == "ping":
                reply = v1.ack(frame.get("id"), "pong")
            else:
                reply = v1.ack(frame.get("id"), of=frame["type"], **fields)
        ws.send_text_nowait(reply)
