"""The v1 HTTP API under ``/v1`` (docs/protocol.md; the OpenAPI document is :mod:`.openapi`).

Host routes take ``Authorization: Bearer <host_key>``: the credential answered by
``POST /v1/meetings`` (or, for a meeting made by the seed's ``/CreateMeeting``, its ``userUid``).
Times are ISO-8601 UTC strings here; the WebSocket protocol uses epoch seconds.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from quart import Blueprint, Response, request

from .. import auth
from ..config import Config
from ..controls import Controls
from ..moderation import MODERATOR_ROLES
from ..moderator import Actor
from ..service import TICKET_TTL, Denied, MeetingService
from ..stores.base import AttendanceRecord, MeetingMeta, MemberRecord, Tombstone
from ..wire import v1
from ._http import BadRequest, field, json_body, json_response, only
from .openapi import openapi_document

__all__ = ["ATTENDANCE_COLUMNS", "iso", "v1_blueprint"]

ATTENDANCE_COLUMNS = ("name", "member_id", "role", "joined_at", "left_at", "duration_s", "reason",
                      "sub")
#: a spreadsheet runs a cell starting with one of these as a formula (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _controls(controls: Controls) -> dict[str, Any]:
    return {"controls": controls.as_dict(), "revision": controls.revision}


def _with_etag(response: Response, controls: Controls) -> Response:
    response.headers["ETag"] = f'"{controls.revision}"'
    return response


def _member(record: MemberRecord, controls: Controls) -> dict[str, Any]:
    out = v1.member(record, controls)
    out["controls"] = v1.member_controls(controls).get(record.member_id, {})
    out["joined_at"] = iso(record.joined_at)
    if record.hand is not None:
        out["hand"] = iso(record.hand)
    return out


def _session(entry: AttendanceRecord, now: float) -> dict[str, Any]:
    # a session still open counts up to the export
    end = entry.left_at if entry.left_at is not None else now
    return {
        "name": entry.name,
        "member_id": entry.member_id,
        "role": entry.role,
        "joined_at": iso(entry.joined_at),
        "left_at": iso(entry.left_at),
        "duration_s": round(max(0.0, end - entry.joined_at), 3),
        "reason": entry.reason,
        #: the application's user id, from the member's join token ("" without one)
        "sub": entry.sub,
    }


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def attendance_csv(sessions: Sequence[dict[str, Any]]) -> str:
    """Every cell quoted: a spreadsheet that splits on ``;`` (many locales) must not see
    ``x;=2+5;`` as three cells, one of them a formula."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(ATTENDANCE_COLUMNS)
    for session in sessions:
        writer.writerow([_csv_cell(session[c]) for c in ATTENDANCE_COLUMNS])
    return out.getvalue()


#: names that always mean this very server, whatever it is bound to
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def own_host(host: str, server: tuple[str, int | None] | None, config: Config) -> str:
    """``host`` (a request's Host header) if it names this server (its bind address, the
    address the request came in on, or loopback), else that address: a forged Host must not
    end up in a link that members are sent to."""
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or (port and not port.isdigit()):
        name, port = host, ""
    ours = set(_LOOPBACK_NAMES) | {config.host_port[0]}
    if server is not None:
        ours.add(server[0])
    if name.strip("[]").lower() in ours:
        return host
    if server is not None and server[1] is not None:
        addr = server[0]
        return f"[{addr}]:{server[1]}" if ":" in addr else f"{addr}:{server[1]}"
    return config.bind


def _expected_revision(body: dict[str, Any]) -> int | None:
    """From the body's ``expected_revision`` or an ``If-Match: "<revision>"`` header."""
    from_body = field(body, "expected_revision", int)
    header = request.headers.get("If-Match")
    from_header = None
    if header is not None:
        raw = header.strip().removeprefix("W/").strip('"')
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise BadRequest('If-Match must be a revision, as in If-Match: "12"')
        from_header = int(raw)
    if from_body is not None and from_header is not None and from_body != from_header:
        raise BadRequest("expected_revision and If-Match disagree")
    expected = from_body if from_body is not None else from_header
    if expected is not None and not 0 <= expected < 2**63:
        raise BadRequest("expected_revision must not be negative (nor past 2**63)")
    return expected


def v1_blueprint(service: MeetingService) -> Blueprint:
    bp = Blueprint("v1", __name__, url_prefix="/v1")

    def credential(what: str = "host routes need Authorization: Bearer <host_key>") -> str:
        key = auth.bearer(request.headers.get("Authorization"))
        if key is None:
            raise Denied("unauthorized", what)
        return key

    async def require_host(meeting_id: str, *, host_only: bool = False) -> Actor:
        """The bearer: one of the server's API keys, the host key (until a hand-over), or a
        host's or co-host's member token; ``host_only``: not a co-host."""
        await service.require_meeting(meeting_id)
        key = credential()
        if service.is_api_key(key):
            return Actor("host")
        actor = await service.moderator.bearer_actor(meeting_id, key)
        if host_only and actor.role != "host":
            raise Denied("not_host", "only the meeting's host may do this")
        if actor.role not in MODERATOR_ROLES:
            raise Denied("not_host", "only the meeting's host or a co-host may do this")
        return actor

    async def require_reader(meeting_id: str) -> MeetingMeta | Tombstone:
        """Like require_host, and the meeting may have ended (a tombstone)."""
        await service.live_or_ended(meeting_id)  # 404 before 401, as for live meetings
        return await service.require_reader(meeting_id, credential())

    def require_admin() -> None:
        if service.is_api_key(auth.bearer(request.headers.get("Authorization"))):
            return
        token = service.config.admin_token
        if not token:
            raise Denied("admin_disabled", "this route needs the server's admin_token setting, "
                         "which is not set")
        given = auth.bearer(request.headers.get("Authorization"))
        if given is None:
            raise Denied("unauthorized", "admin routes need Authorization: Bearer <admin_token>")
        if not auth.secret_matches(given, auth.hash_secret(token)):
            raise Denied("not_admin", "that is not the admin token")

    def join_url(meeting_id: str) -> str:
        path = f"/v1/meetings/{meeting_id}/ws"
        public = service.config.public_url.rstrip("/")
        if public:
            scheme, _, rest = public.partition("://")
            return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"
        scheme = "wss" if request.scheme == "https" else "ws"
        return f"{scheme}://{own_host(request.host, request.server, service.config)}{path}"

    @bp.get("/openapi.json")
    async def openapi() -> Any:
        return json_response(openapi_document())

    @bp.post("/meetings")
    async def create_meeting() -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        if service.config.create_policy == "api_key" and not service.is_api_key(
                credential("creating a meeting needs Authorization: Bearer <api_key>")):
            raise Denied("not_api_key", "that is not an API key of this server")
        only(body, "name", "controls", "join_policy")
        name = field(body, "name", str, "").strip()
        if not name:
            raise BadRequest("name is required (a non-empty string)")
        created = await service.create_meeting(name, field(body, "controls", dict),
                                               join_policy=field(body, "join_policy", str, "open"))
        meta = created.meta
        response = json_response({
            "id": meta.meeting_id,
            "name": meta.name,
            "created_at": iso(meta.created_at),
            **_controls(created.controls),
            "join_policy": meta.extra.get("join_policy", "open"),
            "host_key": created.host_key,
            "join_url": join_url(meta.meeting_id),
        }, 201)
        response.headers["Location"] = f"/v1/meetings/{meta.meeting_id}"
        return response

    @bp.get("/meetings")
    async def list_meetings() -> Any:
        """Every meeting, oldest first (operators: ``rmeeting meetings list``)."""
        require_admin()
        listed = []
        for meta in sorted(await service.list_meetings(), key=lambda m: m.created_at):
            roster = await service.present(meta.meeting_id)
            listed.append({"id": meta.meeting_id, "name": meta.name,
                           "created_at": iso(meta.created_at), "members": len(roster),
                           "join_url": join_url(meta.meeting_id)})
        return json_response({"meetings": listed})

    @bp.get("/meetings/<meeting_id>")
    async def get_meeting(meeting_id: str) -> Any:
        found = await service.live_or_ended(meeting_id)
        if isinstance(found, Tombstone):  # ended: when and why, until the retention passes
            return json_response({
                "id": found.meta.meeting_id,
                "name": found.meta.name,
                "created_at": iso(found.meta.created_at),
                "ended": True,
                "ended_at": iso(found.ended_at),
                "ended_reason": found.reason,
                "purge_at": iso(found.purge_at),
            })
        controls = await service.controls(meeting_id)
        roster = await service.roster(meeting_id)
        return json_response({
            "id": found.meeting_id,
            "name": found.name,
            "created_at": iso(found.created_at),
            **_controls(controls),
            "join_policy": found.extra.get("join_policy", "open"),
            "ended": False,
            "members": len(roster),
            "join_url": join_url(meeting_id),
        })

    @bp.patch("/meetings/<meeting_id>")
    async def update_meeting(meeting_id: str) -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        await require_host(meeting_id)
        only(body, "join_policy")
        policy = field(body, "join_policy", str)
        if policy is None:
            raise BadRequest("join_policy is required: open, token or lobby")
        meta = await service.set_join_policy(meeting_id, policy)
        return json_response({"id": meeting_id, "join_policy": meta.extra["join_policy"]})

    @bp.delete("/meetings/<meeting_id>")
    async def end_meeting(meeting_id: str) -> Any:
        await require_host(meeting_id, host_only=True)
        await service.end_meeting(meeting_id)
        return json_response({"id": meeting_id, "ended": True})

    @bp.get("/meetings/<meeting_id>/controls")
    async def get_controls(meeting_id: str) -> Any:
        controls = await service.controls(meeting_id)
        return _with_etag(json_response(_controls(controls)), controls)

    @bp.patch("/meetings/<meeting_id>/controls")
    async def set_controls(meeting_id: str) -> Any:
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        actor = await require_host(meeting_id)
        only(body, "controls", "expected_revision", "duration")
        changes = field(body, "controls", dict)
        if changes is None:
            raise BadRequest("controls is required: an object of flag -> true/false")
        controls = await service.set_controls(
            meeting_id, changes, actor=actor.label, expected_revision=_expected_revision(body),
            ttl=field(body, "duration", float),
        )
        return _with_etag(json_response(_controls(controls)), controls)

    @bp.post("/meetings/<meeting_id>/tickets")
    async def ticket(meeting_id: str) -> Any:
        """A single-use WebSocket ticket for the host key or a reconnect token (Authorization),
        so that the WebSocket URL carries no lasting secret."""
        body = await json_body()  # read first: a refusal leaves none unread
        await service.require_meeting(meeting_id)
        key = credential("a ticket needs Authorization: Bearer <host_key or reconnect token>")
        only(body, "token")
        issued = await service.issue_ticket(meeting_id, key, field(body, "token", str))
        return json_response({"ticket": issued, "expires_in": TICKET_TTL}, 201)

    @bp.get("/meetings/<meeting_id>/lobby")
    async def lobby(meeting_id: str) -> Any:
        """Who waits to be let in (join_policy lobby), oldest first."""
        await require_host(meeting_id)
        return json_response({"waiting": [
            {"id": k.member_id, "name": k.name, "since": iso(k.since)}
            for k in await service.lobby(meeting_id)]})

    @bp.post("/meetings/<meeting_id>/lobby")
    async def decide(meeting_id: str) -> Any:
        """Admit or refuse knocks: the backend's answer to a ``member.waiting`` webhook."""
        body = await json_body(required=True)  # read first: a refusal leaves none unread
        await require_host(meeting_id)
        only(body, "decision", "member_ids", "all")
        decision = field(body, "decision", str)
        if decision not in ("admit", "refuse"):
            raise BadRequest("decision must be admit or refuse")
        member_ids = field(body, "member_ids", list)
        everyone = field(body, "all", bool, False)
        if everyone == (member_ids is not None):
            raise BadRequest("give member_ids (a list) or all: true")
        if member_ids is not None and not all(isinstance(m, str) for m in member_ids):
            raise BadRequest("member_ids must be strings")
        decided = await service.decide(meeting_id, None if everyone else member_ids,
                                       admit=decision == "admit")
        return json_response({"decision": decision,
                              "member_ids": [k.member_id for k in decided]})

    @bp.get("/meetings/<meeting_id>/members")
    async def members(meeting_id: str) -> Any:
        controls = await service.controls(meeting_id)
        roster = await service.roster(meeting_id)
        return json_response({"members": [_member(r, controls) for r in roster]})

    @bp.delete("/meetings/<meeting_id>/members/<member_id>")
    async def kick(meeting_id: str, member_id: str) -> Any:
        await require_host(meeting_id)
        record = await service.remove_member(meeting_id, member_id)
        return json_response({"id": member_id, "kicked": True, "was_present": record is not None})

    async def sessions(meeting_id: str) -> list[dict[str, Any]]:
        await require_reader(meeting_id)
        now = time.time()
        return [_session(e, now) for e in await service.attendance(meeting_id)]

    def csv_response(meeting_id: str, rows: list[dict[str, Any]]) -> Response:
        # "replace": a name stored before input was checked must not make the export fail
        response = Response(attendance_csv(rows).encode("utf-8", "replace"),
                            content_type="text/csv; charset=utf-8")
        response.headers["Content-Disposition"] = (
            f'attachment; filename="attendance-{meeting_id}.csv"'
        )
        return response

    @bp.get("/meetings/<meeting_id>/attendance")
    async def attendance(meeting_id: str) -> Any:
        fmt = request.args.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadRequest("format must be json or csv")
        rows = await sessions(meeting_id)
        if fmt == "csv":
            return csv_response(meeting_id, rows)
        return json_response({"meeting_id": meeting_id, "sessions": rows})

    @bp.get("/meetings/<meeting_id>/attendance.csv")
    async def attendance_as_csv(meeting_id: str) -> Any:
        return csv_response(meeting_id, await sessions(meeting_id))

    @bp.get("/meetings/<meeting_id>/audit")
    async def audit(meeting_id: str) -> Any:
        found = await require_reader(meeting_id)
        entries = (found.audit if isinstance(found, Tombstone)
                   else await service.audit(meeting_id))
        return json_response({"meeting_id": meeting_id, "entries": [
            {"by": e.actor, "flag": e.flag, "old": e.old, "new": e.new,
             "revision": e.revision, "at": iso(e.at), "member": e.member}
            for e in entries
        ]})

    @bp.get("/meetings/<meeting_id>/ws")
    async def websocket_without_upgrade(meeting_id: str) -> Any:
        # upgrades are answered by the front door; what reaches the app here is a plain GET
        response = json_response({"error": "this route is a WebSocket: send an upgrade",
                                  "code": "upgrade_required"}, 426)
        response.headers["Upgrade"] = "websocket"
        response.headers["Connection"] = "Upgrade"
        return response

    from .v1_moderation import moderation_routes  # it uses iso() from here

    moderation_routes(bp, service, require_host)
    return bp
