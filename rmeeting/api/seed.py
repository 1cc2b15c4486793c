"""The seed's API (../shared/seed/wire-protocol.md), served unchanged for its clients.

Where the seed was broken, this does what it meant: control frames are recognised by characters,
not bytes; only the manager's credential changes controls; a non-manager's Export is refused with
403; joining a meeting that does not exist is refused before anything is stored.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from quart import Blueprint, request

from .. import auth
from ..closes import Close, LeaveReason
from ..service import Denied, Joined, MeetingService, RateLimiter
from ..stores.base import StoreUnavailable
from ..transport.frontdoor import Handshake
from ..transport.websocket import BadFrame, WebSocket
from ..wire import BadInput, decode, seed
from ._http import BadRequest, field, json_body, json_response

__all__ = ["DENIED_CLOSE_CODES", "leave_reason", "seed_blueprint", "seed_session"]

log = logging.getLogger("rmeeting.seed")

#: why a join was refused -> the close code the client sees (docs/protocol.md)
DENIED_CLOSE_CODES = {
    "meeting_not_found": Close.NOT_FOUND,
    "kicked": Close.KICKED,
    "not_host": Close.NOT_HOST,
    "bad_token": Close.BAD_TOKEN,
    "locked": Close.LOCKED,
    "meeting_full": Close.FULL,
    "too_many_meetings": Close.FULL,
    "draining": Close.RESTART,
    # deployments (#12): a join token wrong in any way, or none where the meeting needs one
    "meeting_ended": Close.ENDED,
    "token_required": Close.BAD_TOKEN,
    "lobby": Close.REFUSED,
    "refused": Close.REFUSED,
    "tokens_disabled": Close.BAD_TOKEN,
    **{f"token_{kind}": Close.BAD_TOKEN for kind in (
        "malformed", "algorithm", "signature", "expired", "not_yet_valid", "missing_claim",
        "bad_claim", "wrong_meeting")},
}


def seed_blueprint(service: MeetingService) -> Blueprint:
    bp = Blueprint("seed", __name__)

    @bp.post("/CreateMeeting")
    async def create_meeting() -> Any:
        body = await json_body()  # read first: a refusal leaves none unread
        if service.config.create_policy == "api_key":
            key = auth.bearer(request.headers.get("Authorization"))
            if key is None:
                raise Denied("unauthorized", "creating a meeting needs Authorization: Bearer "
                             "<api_key>")
            if not service.is_api_key(key):
                raise Denied("not_api_key", "that is not an API key of this server")
        name = field(body, "meeting_name", str, "")
        field(body, "username", str, "")
        is_mute = field(body, "is_mute", bool, False)
        is_video = field(body, "is_video", bool, False)
        user_uid = str(uuid.uuid4())  # the creator's id doubles as its manager credential
        created = await service.create_meeting(
            name, {"mic": not is_mute, "camera": is_video}, host_key=user_uid
        )
        return json_response({
            "meetingUid": created.meta.meeting_id,
            "meetingName": created.meta.name,
            "status": "success",
            "userUid": user_uid,
        })

    # userUids are credentials: a client that keeps guessing them is slowed down
    guesses = auth.FailedGuesses(service.config.max_failed_guesses)

    def client() -> str:
        return auth.client_address(request.remote_addr, request.headers.get("X-Forwarded-For"))

    def refuse_guesser(who: str) -> None:
        if guesses.blocked(who):
            raise BadRequest(f"too many failed attempts from {who}; wait a minute", 429)

    async def require_meeting(meeting_id: str, who: str) -> None:
        try:
            await service.require_meeting(meeting_id)
        except Denied:
            guesses.failed(who)
            raise

    @bp.put("/LeaveMeeting")
    async def leave_meeting() -> Any:
        who = client()
        refuse_guesser(who)
        body = await json_body(required=True)
        meeting_id = field(body, "meetingUid", str, "")
        user_uid = field(body, "userUid", str, "")
        username = field(body, "username", str, "")
        if not meeting_id or not user_uid:
            raise BadRequest("meetingUid and userUid are required")
        await require_meeting(meeting_id, who)
        gone = await service.leave_by_key(meeting_id, user_uid)
        if not gone:
            guesses.failed(who)
            return json_response({"error": "no member with that userUid in this meeting"}, 404)
        return json_response({
            "msg": "leaveMeeting success!",
            "userUid": user_uid,
            "username": username or gone[0].name,
        })

    @bp.get("/Export")
    async def export() -> Any:
        who = client()
        refuse_guesser(who)
        meeting_id = request.args.get("meetingUid", "")
        await require_meeting(meeting_id, who)
        if not await service.is_host(meeting_id, request.args.get("userUid")):
            guesses.failed(who)
            return json_response({"msg": "当前只能管理员能导出参会者"}, 403)
        # the people in the meeting now (the seed's README: the manager exports the current
        # attendees), in join order; the full ledger with times is the v1 attendance
        return json_response({"attendee": [r.name for r in await service.roster(meeting_id)]})

    return bp


def leave_reason(ws: WebSocket, draining: bool) -> LeaveReason:
    if ws.timed_out:
        return LeaveReason.TIMEOUT
    if ws.close_code == Close.SLOW_CONSUMER:
        return LeaveReason.SLOW_CONSUMER
    if draining:
        return LeaveReason.SERVER_SHUTDOWN
    return LeaveReason.CLOSED


def refuse(ws: WebSocket, frame: bytes, denied: Denied) -> None:
    ws.send_text_nowait(frame)
    ws.close_nowait(DENIED_CLOSE_CODES.get(denied.code, Close.BAD_REQUEST), denied.message)


async def seed_session(service: MeetingService, hs: Handshake) -> None:
    """One seed client, from the upgrade of ``GET /AddMeeting`` to its leave."""
    meeting_id = hs.query.get("meetingUid", "")
    username = hs.query.get("username", "")
    # the userUid is the member's credential (LeaveMeeting, and the manager's for everything):
    # one a client chose that could be guessed is replaced; the room state tells the client
    given = hs.query.get("userUid") or ""
    user_uid = given if auth.strong_user_uid(given) else str(uuid.uuid4())
    ws = hs.accept()
    async with ws.connected():
        try:
            # the manager is recognised by its userUid on the record the join reads
            joined = await service.join(
                meeting_id, name=username, protocol="seed", outlet=ws, host_key=user_uid,
                key=user_uid, user_uid=user_uid,
            )
        except Denied as denied:
            refuse(ws, seed.error(denied.message), denied)
            return
        except StoreUnavailable:
            ws.send_text_nowait(seed.error("the meeting service is unavailable; try again"))
            ws.close_nowait(Close.TRY_AGAIN, "try again later")
            return
        try:
            await _serve_frames(service, ws, joined, meeting_id)
        except Exception:  # a bug costs this member its connection, not the server
            log.exception("seed session failed", extra={"meeting": meeting_id})
            ws.close_nowait(Close.INTERNAL, "internal error")
        finally:
            await service.disconnected(joined, leave_reason(ws, not service.accepting))


async def _serve_frames(
    service: MeetingService, ws: WebSocket, joined: Joined, meeting_id: str
) -> None:
    limiter = RateLimiter(service.config.chat_rate, service.config.chat_burst)
    controls_limiter = RateLimiter(service.config.control_rate, service.config.control_burst)
    async for message in ws.messages():
        try:
            if isinstance(message, BadFrame):
                raise Denied(message.kind, f"{message.kind} frames are not supported")
            if message.startswith(seed.CONTROL_PREFIX):
                if not controls_limiter.allow():
                    raise Denied("rate_limited", "too many control frames; slow down")
                await _control(service, joined, meeting_id, message[len(seed.CONTROL_PREFIX):])
            else:
                await service.chat_message(joined, message, limiter)
        except Denied as denied:
            ws.send_text_nowait(seed.error(denied.message))
        except StoreUnavailable:
            # said plainly, so a message never vanishes without the sender knowing
            if isinstance(message, str) and message.startswith(seed.CONTROL_PREFIX):
                ws.send_text_nowait(seed.error("the controls cannot be changed right now"))
            else:
                ws.send_text_nowait(seed.error("chat is unavailable right now; not delivered"))


async def _control(service: MeetingService, joined: Joined, meeting_id: str, rest: str) -> None:
    """``特殊消息<digit>{json}``: the manager sets one of the room's flags."""
    if not rest or rest[0] not in seed.SEED_FLAGS:
        raise Denied("bad_control", "unknown control flag; use 1 (isMute) or 2 (isVideo)")
    field_name, flag, inverted = seed.SEED_FLAGS[rest[0]]
    try:
        body = decode(rest[1:])
    except BadInput as exc:
        raise Denied("bad_control", f"control frame: {exc.message}") from exc
    if not isinstance(body, dict) or not isinstance(body.get(field_name), bool):
        raise Denied("bad_control", f"control frame needs {field_name}: true or false")
    user_uid, named = body.get("userUid"), body.get("meetingUid", meeting_id)
    if not isinstance(user_uid, str) or not isinstance(named, str):
        raise Denied("bad_control", "control frame: userUid and meetingUid must be strings")
    if named != meeting_id:
        raise Denied("not_host", "control frame names another meeting")
    # from what the session knows (no store read): it joined as the manager, with this userUid
    if joined.record.role != "host" or not auth.secret_matches(user_uid, joined.record.key_hash):
        raise Denied("not_host", "only the meeting's manager may change its controls")
    # ... and still is: no hand-over since (this instance's copy of the controls: no store read)
    controls = await service.current_controls(meeting_id)
    if controls.host is not None:
        raise Denied("not_host", "the host role was handed to another member")
    value = body[field_name]
    await service.set_controls(
        meeting_id, {flag: (not value) if inverted else value}, actor=joined.record.member_id
    )
