"""The OpenAPI 3.1 document of the v1 HTTP API, served at ``GET /v1/openapi.json``.

Written by hand beside the routes (:mod:`.v1_http`); ``tests/test_v1_http.py`` walks the app's URL
map and fails when a route or a method is in one and not the other. The WebSocket is described as
a ``GET`` marked ``x-websocket``; its frames are in docs/protocol.md.
"""

from __future__ import annotations

from typing import Any

from ..controls import DEFAULTS, FLAGS

__all__ = ["openapi_document"]

_FLAG_TEXT = (
    "camera, mic, rename, chat: members may do that; locked: no new member may join "
    "(current members may still reconnect)."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "refused; `error` says why, `code` is stable")
_MEETING_ID = {"name": "meeting_id", "in": "path", "required": True, "schema": {"type": "string"}}
_MEMBER_ID = {"name": "member_id", "in": "path", "required": True, "schema": {"type": "string"}}
_HOST: list[dict[str, list[str]]] = [{"hostKey": []}, {"apiKey": []}]
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}, {"apiKey": []}]
_POLICY = {"enum": ["open", "token", "lobby"],
           "description": "who may join: anyone; join tokens (and the host) only; or anyone who "
                          "knocks and is admitted (docs/integration.md)"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERROR for status in statuses}


def _host_op(summary: str, ok: dict[str, Any], *extra: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": _HOST,
        "parameters": [_MEETING_ID],
        "responses": {"200": ok, **_errors(401, 403, 404, *extra)},
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string"},
            "revision": {"type": "integer", "description": "the current one, on 412"},
        },
    },
    "Flags": {
        "type": "object",
        "description": _FLAG_TEXT,
        "additionalProperties": False,
        "properties": {
            flag: {"type": "boolean", "default": DEFAULTS[flag]} for flag in FLAGS
        },
    },
    "Controls": {
        "type": "object",
        "required": ["controls", "revision"],
        "properties": {"controls": _ref("Flags"), "revision": {"type": "integer"}},
    },
    "Meeting": {
        "type": "object",
        "required": ["id", "name", "created_at", "controls", "revision", "join_url"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "controls": _ref("Flags"),
            "revision": {"type": "integer"},
            "members": {"type": "integer", "description": "present now (GET only)"},
            "join_url": {"type": "string", "description": "the v1 WebSocket of the meeting"},
            "join_policy": _POLICY,
            "ended": {"type": "boolean", "description": "false (GET only); an ended meeting "
                      "answers EndedMeeting until its retention passes"},
            "host_key": {
                "type": "string",
                "description": "the host credential (on create only; shown once, never stored)",
            },
        },
    },
    "EndedMeeting": {
        "type": "object",
        "description": "the tombstone of an ended meeting, until the retention setting passes",
        "required": ["id", "name", "created_at", "ended", "ended_at", "ended_reason"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "ended": {"const": True},
            "ended_at": {"type": "string", "format": "date-time"},
            "ended_reason": {"type": "string", "description": "ended by the host, empty, "
                             "max_duration, deleted in etcd"},
            "purge_at": {"type": "string", "format": "date-time",
                         "description": "then every trace of it is gone"},
        },
    },
    "Member": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "role": {"enum": ["host", "cohost", "member"]},
            "camera": {"type": "boolean",
                       "description": "declared on, allowed, and not switched off since"},
            "mic": {"type": "boolean"},
            "joined_at": {"type": "string", "format": "date-time"},
            "hand": {"type": ["string", "null"], "format": "date-time",
                     "description": "when the hand was raised; null: down"},
            "ask_unmute": {"type": "boolean", "description": "asks to be allowed to unmute"},
            "controls": _ref("MemberFlags"),
        },
    },
    "MemberFlags": {
        "type": "object",
        "description": "one member's own flags: false forbids it this member, true allows it "
                       "even while the room's flag is off, null (or absent) leaves it to the "
                       "room's flag",
        "additionalProperties": False,
        "properties": {flag: {"type": ["boolean", "null"]}
                       for flag in ("camera", "mic", "rename", "chat")},
    },
    "AttendanceSession": {
        "type": "object",
        "description": "one join-to-leave session; a member who reconnects has several",
        "properties": {
            "name": {"type": "string"},
            "member_id": {"type": "string"},
            "role": {"enum": ["host", "cohost", "member"]},
            "joined_at": {"type": "string", "format": "date-time"},
            "left_at": {"type": ["string", "null"], "format": "date-time"},
            "duration_s": {"type": "number", "description": "up to now while still present"},
            "reason": {
                "type": ["string", "null"],
                "description": "closed, left, kicked, replaced, timeout, slow consumer, "
                               "server shutdown, meeting ended",
            },
            "sub": {"type": "string", "description": "the application's user id (a join "
                    "token's sub claim), empty without one"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "by": {
                "type": "string",
                "description": "a member id (WebSocket), host (HTTP), operator (etcdctl), "
                               "timer (a timed change ran out)",
            },
            "flag": {"type": "string", "description": "a room flag; with member: that "
                     "member's flag (old/new: may it), cohost, host (a hand-over), mute, "
                     "stop_camera, hand (lowered by a moderator), unmute_allowed"},
            "old": {"type": "boolean"},
            "new": {"type": "boolean"},
            "revision": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "member": {"type": ["string", "null"], "description": "the member acted upon"},
        },
    },
}


def _body(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"required": bool(required), "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "required": list(required),
        "properties": properties}}}}


def _moderator_op(summary: str, ok: dict[str, Any], body: dict[str, Any] | None = None,
                  *, member: bool = True) -> dict[str, Any]:
    op = {**_host_op(summary + " (host or co-host: the host key, or their member token)", ok,
                     400, 409, 429),
          "parameters": [_MEETING_ID, _MEMBER_ID] if member else [_MEETING_ID]}
    if body is not None:
        op["requestBody"] = body
    return op


_OK = _json({"type": "object"}, "done")

_CSV: dict[str, Any] = {
    "description": "CSV, header row " + ",".join(
        ("name", "member_id", "role", "joined_at", "left_at", "duration_s", "reason", "sub")),
    "content": {"text/csv": {"schema": {"type": "string"}}},
}

_PATHS: dict[str, Any] = {
    "/v1/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": _json({}, "OpenAPI 3.1")}},
    },
    "/v1/meetings": {
        "get": {
            "summary": "Every meeting, oldest first (operators: the admin_token, or an API key)",
            "security": _ADMIN,
            "responses": {"200": _json({"type": "object", "properties": {"meetings": {
                "type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "members": {"type": "integer"}, "join_url": {"type": "string"}}}}}},
                "the meetings"), **_errors(401, 403)},
        },
        "post": {
            "summary": "Create a meeting (with create_policy api_key: needs an API key)",
            "security": [{}, {"apiKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1},
                               "controls": _ref("Flags"), "join_policy": _POLICY},
            }}}},
            "responses": {"201": _json(_ref("Meeting"), "created; keep host_key"),
                          **_errors(400, 401, 403, 429)},
        },
    },
    "/v1/meetings/{meeting_id}": {
        "get": {"summary": "A meeting, or the tombstone of an ended one",
                "parameters": [_MEETING_ID],
                "responses": {"200": _json({"oneOf": [_ref("Meeting"), _ref("EndedMeeting")]},
                                           "the meeting"), **_errors(404)}},
        "patch": {
            **_host_op("Change the join policy", _json({"type": "object", "properties": {
                "id": {"type": "string"}, "join_policy": _POLICY}}, "changed"), 400, 410),
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["join_policy"],
                "properties": {"join_policy": _POLICY}}}}},
        },
        "delete": _host_op(
            "End the meeting: every member is told (meeting_ended) and disconnected (4000)",
            _json({"type": "object"}, "ended"), 410),
    },
    "/v1/meetings/{meeting_id}/tickets": {
        "post": {
            **_host_op("A single-use WebSocket ticket (30 s) for the host key or a reconnect "
                       "token in Authorization, so no lasting secret is in the WebSocket URL",
                       _json({"type": "object", "properties": {
                           "ticket": {"type": "string"}, "expires_in": {"type": "number"}}},
                           "the ticket: ?ticket=… on the WebSocket"), 400, 410),
            "security": [{"hostKey": []}, {"reconnectToken": []}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "token": {"type": "string", "description": "the host's reconnect token "
                              "too, with the host key in Authorization"}}}}}},
            "responses": {"201": _json({"type": "object"}, "the ticket"),
                          **_errors(400, 401, 403, 404, 410)},
        },
    },
    "/v1/meetings/{meeting_id}/controls": {
        "get": {"summary": "The controls and their revision (also as the ETag)",
                "parameters": [_MEETING_ID],
                "responses": {"200": _json(_ref("Controls"), "the controls"), **_errors(404)}},
        "patch": {
            **_host_op("Change controls; with expected_revision (or If-Match), only if it is "
                       "still current", _json(_ref("Controls"), "the controls after the change"),
                       400, 412),
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["controls"],
                "properties": {
                    "controls": _ref("Flags"),
                    "expected_revision": {"type": "integer", "minimum": 0},
                    "duration": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400,
                                 "description": "seconds; then the flags return to defaults"},
                },
            }}}},
        },
    },
    "/v1/meetings/{meeting_id}/lobby": {
        "get": _host_op("Who waits to be let in (join_policy lobby), oldest first", _json(
            {"type": "object", "properties": {"waiting": {"type": "array", "items": {
                "type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "since": {"type": "string", "format": "date-time"}}}}}},
            "the lobby"), 410),
        "post": {
            **_host_op("Admit or refuse knocks, some or all; each is decided once",
                       _json({"type": "object", "properties": {
                           "decision": {"enum": ["admit", "refuse"]},
                           "member_ids": {"type": "array", "items": {"type": "string"},
                                          "description": "the knocks this decided"}}},
                             "decided"), 400, 410),
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["decision"],
                "properties": {"decision": {"enum": ["admit", "refuse"]},
                               "member_ids": {"type": "array", "items": {"type": "string"}},
                               "all": {"type": "boolean"}}}}}},
        },
    },
    "/v1/meetings/{meeting_id}/members": {
        "get": {"summary": "Members present now", "parameters": [_MEETING_ID],
                "responses": {"200": _json({"type": "object", "properties": {
                    "members": {"type": "array", "items": _ref("Member")}}}, "the roster"),
                    **_errors(404)}},
    },
    "/v1/meetings/{meeting_id}/members/{member_id}": {
        "delete": {**_host_op("Kick a member: disconnected (4003), its token refused from now on",
                              _json({"type": "object"}, "kicked")),
                   "parameters": [_MEETING_ID, _MEMBER_ID]},
    },
    "/v1/meetings/{meeting_id}/members/{member_id}/controls": {
        "patch": _moderator_op(
            "Set one member's own flags (forbid, allow, or leave to the room)", _OK,
            _body({"controls": _ref("MemberFlags")}, "controls")),
    },
    "/v1/meetings/{meeting_id}/members/{member_id}/turn-off": {
        "post": _moderator_op(
            "Mute one member, or turn its camera off (it may turn it on again)", _OK,
            _body({"device": {"enum": ["mic", "camera"], "default": "mic"}})),
    },
    "/v1/meetings/{meeting_id}/members/{member_id}/role": {
        "put": _moderator_op("Promote to co-host or demote to member (host only)", _OK,
                             _body({"role": {"enum": ["cohost", "member"]}}, "role")),
    },
    "/v1/meetings/{meeting_id}/host": {
        "put": _moderator_op(
            "Hand the host role to a present v1 member (host only): the host key stops "
            "working; the new host uses its member token", _OK,
            _body({"member_id": {"type": "string"}}, "member_id"), member=False),
    },
    "/v1/meetings/{meeting_id}/members/{member_id}/hand": {
        "delete": _moderator_op("Lower one member's raised hand", _OK),
    },
    "/v1/meetings/{meeting_id}/hands": {
        "get": {"summary": "Raised hands, in the order raised", "parameters": [_MEETING_ID],
                "responses": {"200": _json({"type": "object", "properties": {"hands": {
                    "type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "name": {"type": "string"},
                        "raised_at": {"type": "string", "format": "date-time"}}}}}},
                    "the raised hands"),
                    **_errors(404)}},
        "delete": _moderator_op("Lower every raised hand", _OK, member=False),
    },
    "/v1/meetings/{meeting_id}/members/{member_id}/unmute-request": {
        "post": _moderator_op(
            "Answer a member's ask to unmute: allow (its block is lifted; while the room's "
            "mic is off it is allowed anyway) or deny", _OK,
            _body({"allow": {"type": "boolean"}}, "allow")),
    },
    "/v1/meetings/{meeting_id}/attendance": {
        "get": {
            **_host_op("Attendance, every join-to-leave session (an ended meeting's too, until "
                       "its retention passes; the host key or an API key)",
                       {"description": "JSON, or CSV with format=csv", "content": {
                           "application/json": {"schema": {"type": "object", "properties": {
                               "meeting_id": {"type": "string"},
                               "sessions": {"type": "array",
                                            "items": _ref("AttendanceSession")}}}},
                           **_CSV["content"]}}, 400),
            "parameters": [_MEETING_ID, {"name": "format", "in": "query",
                                         "schema": {"enum": ["json", "csv"]}}],
        },
    },
    "/v1/meetings/{meeting_id}/attendance.csv": {
        "get": _host_op("Attendance as CSV", _CSV),
    },
    "/v1/meetings/{meeting_id}/audit": {
        "get": _host_op("Audit trail of control changes", _json(
            {"type": "object", "properties": {
                "meeting_id": {"type": "string"},
                "entries": {"type": "array", "items": _ref("AuditEntry")}}},
            "oldest first")),
    },
    "/v1/meetings/{meeting_id}/ws": {
        "get": {
            "summary": "The v1 WebSocket (see docs/protocol.md)",
            "x-websocket": True,
            "parameters": [_MEETING_ID] + [
                {"name": name, "in": "query", "schema": {"type": "string"}, "description": text}
                for name, text in (
                    ("name", "display name"),
                    ("token", "reconnect as the same member (from a welcome)"),
                    ("last_seq", "the last chat seq seen: the welcome carries what was missed"),
                    ("host_key", "join as host (or Authorization: Bearer)"),
                    ("access_token", "a join token (JWT, HS256, signed with an API key): the "
                                     "name and role come from its claims"),
                    ("ticket", "single-use, from POST /v1/meetings/{meeting_id}/tickets"),
                    ("auth", "frame: the secrets come in the first frame, not the URL"),
                )
            ],
            "responses": {
                "101": {"description": "switching protocols"},
                "426": _json(_ref("Error"), "not a WebSocket upgrade (version 13) request"),
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rmeeting v1",
            "version": "1",
            "description": "Meetings, controls, members, attendance and audit. The seed's API "
                           "(/CreateMeeting, /AddMeeting, /LeaveMeeting, /Export) is described "
                           "in docs/protocol.md.",
        },
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "hostKey": {"type": "http", "scheme": "bearer",
                            "description": "the meeting's host_key (until the host role is "
                                           "handed over), or the member token of the host "
                                           "or a co-host where co-hosts may act"},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "the server's admin_token setting"},
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "one of the server's api_keys setting"},
                "reconnectToken": {"type": "http", "scheme": "bearer",
                                   "description": "a member's reconnect token (its welcome)"},
            },
        },
    }
