"""The v1 HTTP API over real sockets: every route, CAS, auth rules, bad bodies, OpenAPI."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from typing import Any

import trio
from trio.testing import MockClock

from rmeeting.api.app import create_app, ws_router
from rmeeting.server import RunningServer

from .clients import Api, open_seed, open_v1, recv_until


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def create(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.request("POST", "/v1/meetings", json={"name": "m", **body})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def all_left(server: RunningServer, mid: str, sessions: int) -> None:
    """Wait until the server has recorded ``sessions`` sessions, all closed."""
    with trio.fail_after(5):
        while True:
            ledger = await server.service.members.attendance(mid)
            if len(ledger) == sessions and all(e.left_at is not None for e in ledger):
                return
            await trio.sleep(0.01)


async def test_create_get_and_end(server: RunningServer, api: Api) -> None:
    response = await api.request(
        "POST", "/v1/meetings", json={"name": "weekly", "controls": {"chat": False}}
    )
    assert response.status_code == 201
    created = response.json()
    mid = created["id"]
    assert response.headers["location"] == f"/v1/meetings/{mid}"
    assert created["name"] == "weekly" and created["created_at"].endswith("Z")
    assert created["controls"] == {"camera": True, "mic": True, "rename": True, "chat": False,
                                   "locked": False}
    assert isinstance(created["revision"], int) and len(created["host_key"]) >= 32
    assert created["join_url"] == f"{server.ws_url}/v1/meetings/{mid}/ws"
    # only the credential's hash is stored
    meta = await server.service.meetings.get(mid)
    assert meta is not None and created["host_key"] not in repr(meta)

    got = (await api.request("GET", f"/v1/meetings/{mid}")).json()
    assert got["id"] == mid and got["members"] == 0 and got["controls"]["chat"] is False
    assert "host_key" not in got

    no_auth = await api.request("DELETE", f"/v1/meetings/{mid}")
    assert no_auth.status_code == 401 and no_auth.headers["www-authenticate"] == "Bearer"
    wrong = await api.request("DELETE", f"/v1/meetings/{mid}", headers=bearer("guess"))
    assert wrong.status_code == 403 and wrong.json()["code"] == "not_host"
    ended = await api.request("DELETE", f"/v1/meetings/{mid}", headers=bearer(created["host_key"]))
    assert ended.status_code == 200 and ended.json() == {"id": mid, "ended": True}
    # a tombstone now (docs/integration.md, Lifecycle): it says it ended; it cannot end twice
    tomb = (await api.request("GET", f"/v1/meetings/{mid}")).json()
    assert tomb["ended"] is True and tomb["ended_reason"] == "ended by the host"
    again = await api.request("DELETE", f"/v1/meetings/{mid}", headers=bearer(created["host_key"]))
    assert again.status_code == 410 and again.json()["code"] == "meeting_ended"


async def test_controls_compare_and_set(server: RunningServer, api: Api) -> None:
    created = await create(api)
    mid, host = created["id"], bearer(created["host_key"])
    path = f"/v1/meetings/{mid}/controls"
    first = await api.request("GET", path)
    rev0 = first.json()["revision"]
    assert first.headers["etag"] == f'"{rev0}"'

    changed = await api.request("PATCH", path, headers=host, json={
        "controls": {"camera": False}, "expected_revision": rev0})
    assert changed.status_code == 200
    rev1 = changed.json()["revision"]
    assert rev1 > rev0 and changed.json()["controls"]["camera"] is False
    assert changed.headers["etag"] == f'"{rev1}"'

    stale = await api.request("PATCH", path, headers=host, json={
        "controls": {"mic": False}, "expected_revision": rev0})
    assert stale.status_code == 412
    assert stale.json()["code"] == "revision_conflict" and stale.json()["revision"] == rev1
    stale_header = await api.request("PATCH", path, headers={**host, "If-Match": f'"{rev0}"'},
                                     json={"controls": {"mic": False}})
    assert stale_header.status_code == 412
    by_header = await api.request("PATCH", path, headers={**host, "If-Match": f'"{rev1}"'},
                                  json={"controls": {"mic": False}})
    assert by_header.status_code == 200
    unconditional = await api.request("PATCH", path, headers=host,
                                      json={"controls": {"rename": False}})
    assert unconditional.status_code == 200
    now = (await api.request("GET", path)).json()
    assert now["controls"] == {"camera": False, "mic": False, "rename": False, "chat": True,
                               "locked": False}
    assert now["revision"] == unconditional.json()["revision"]


async def test_timed_change_returns_to_default(
    server: RunningServer, api: Api, autojump_clock: MockClock
) -> None:
    """On virtual time (the embedded server runs in this test's Trio run): back at the
    duration, not before, and without waiting for it."""
    created = await create(api)
    mid, host = created["id"], bearer(created["host_key"])
    path = f"/v1/meetings/{mid}/controls"
    with trio.fail_after(5):
        start = trio.current_time()
        response = await api.request("PATCH", path, headers=host,
                                     json={"controls": {"chat": False}, "duration": 0.2})
        assert response.status_code == 200 and response.json()["controls"]["chat"] is False
        await trio.sleep_until(start + 0.19)
        assert (await api.request("GET", path)).json()["controls"]["chat"] is False
        while not (await api.request("GET", path)).json()["controls"]["chat"]:
            await trio.sleep(0.001)
        assert trio.current_time() - start <= 0.2 + 0.002


async def test_audit_trail(server: RunningServer, api: Api) -> None:
    created = await create(api)
    mid, host = created["id"], bearer(created["host_key"])
    for change in ({"camera": False}, {"camera": True, "chat": False}, {"chat": False}):
        await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=host,
                          json={"controls": change})
    response = await api.request("GET", f"/v1/meetings/{mid}/audit", headers=host)
    entries = response.json()["entries"]
    # the last change changed nothing, so it left no entry
    assert [(e["flag"], e["old"], e["new"]) for e in entries] == [
        ("camera", True, False), ("camera", False, True), ("chat", True, False)]
    assert all(e["by"] == "host" and e["at"].endswith("Z") for e in entries)
    assert entries[0]["revision"] < entries[1]["revision"] == entries[2]["revision"]
    assert (await api.request("GET", f"/v1/meetings/{mid}/audit")).status_code == 401


async def test_members_kick_and_attendance(server: RunningServer, api: Api) -> None:
    created = await create(api)
    mid, host = created["id"], bearer(created["host_key"])
    started = time.time()
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="ann") as ann:
            token = ann.welcome["token"]
        await all_left(server, mid, 1)
        # ann comes back as the same member: a second attendance session
        async with open_v1(server.url, mid, name="ann", token=token) as ann, \
                open_v1(server.url, mid, name="=bob") as bob:
            assert ann.me["id"] == token.split(".")[0] and ann.welcome["resumed"] is True
            roster = (await api.request("GET", f"/v1/meetings/{mid}/members")).json()["members"]
            assert {m["name"] for m in roster} == {"ann", "=bob"}
            assert all(m["joined_at"].endswith("Z") for m in roster)

            denied = await api.request("DELETE", f"/v1/meetings/{mid}/members/{bob.me['id']}")
            assert denied.status_code == 401
            unknown = await api.request("DELETE", f"/v1/meetings/{mid}/members/nobody",
                                        headers=host)
            assert unknown.status_code == 404 and unknown.json()["code"] == "member_not_found"
            kicked = await api.request("DELETE", f"/v1/meetings/{mid}/members/{bob.me['id']}",
                                       headers=host)
            assert kicked.json() == {"id": bob.me["id"], "kicked": True, "was_present": True}
            assert await bob.closed_code() == 4003
            left = await ann.recv_type("member_left")
            assert left["member"]["id"] == bob.me["id"] and left["reason"] == "kicked"
        # a kicked member's token is refused
        async with open_v1(server.url, mid, expect_welcome=False,
                           token=bob.welcome["token"]) as again:
            assert (await again.recv())["code"] == "kicked"
            assert await again.closed_code() == 4003
        await all_left(server, mid, 3)

    response = await api.request("GET", f"/v1/meetings/{mid}/attendance", headers=host)
    sessions = response.json()["sessions"]
    assert [(s["name"], s["reason"]) for s in sessions] == [
        ("ann", "closed"), ("ann", "closed"), ("=bob", "kicked")]
    assert sessions[0]["member_id"] == sessions[1]["member_id"]
    ended = time.time()
    for s in sessions:
        assert s["role"] == "member" and s["left_at"].endswith("Z")
        joined_at, left_at = _epoch(s["joined_at"]), _epoch(s["left_at"])
        # within this test's own time, and the duration is the session's (milliseconds)
        assert started - 0.001 <= joined_at <= left_at <= ended + 0.001
        assert abs(s["duration_s"] - (left_at - joined_at)) <= 0.002
    assert sessions[0]["left_at"] <= sessions[1]["joined_at"]  # ann's two sessions, in turn

    for path in (f"/v1/meetings/{mid}/attendance?format=csv",
                 f"/v1/meetings/{mid}/attendance.csv"):
        as_csv = await api.request("GET", path, headers=host)
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(as_csv.text)))
        assert rows[0] == ["name", "member_id", "role", "joined_at", "left_at", "duration_s",
                           "reason", "sub"]
        assert [r[0] for r in rows[1:]] == ["ann", "ann", "'=bob"]  # no formula for a sheet
        assert rows[3][6] == "kicked" and rows[1][3].endswith("Z")
    assert (await api.request("GET", f"/v1/meetings/{mid}/attendance.csv")).status_code == 401
    bad_format = await api.request("GET", f"/v1/meetings/{mid}/attendance?format=xml",
                                   headers=host)
    assert bad_format.status_code == 400


async def test_seed_meeting_host_uses_v1_routes(server: RunningServer, api: Api) -> None:
    seed = await api.create_seed_meeting(meeting_name="s", is_mute=True)
    mid, host = seed["meetingUid"], bearer(seed["userUid"])
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann:
            await recv_until(ann, lambda m: "user_uid" in m)
            response = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=host,
                                         json={"controls": {"mic": True}})
            assert response.status_code == 200
            assert await recv_until(ann, lambda m: "isMute" in m) == {
                "notice": "会议室状态发送变更", "isMute": False}
    export = await api.request("GET", f"/v1/meetings/{mid}/attendance", headers=host)
    assert [s["name"] for s in export.json()["sessions"]] == ["ann"]


async def test_bad_requests_get_clear_4xx(server: RunningServer, api: Api) -> None:
    created = await create(api)
    mid, host = created["id"], bearer(created["host_key"])
    controls = f"/v1/meetings/{mid}/controls"
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/v1/meetings", {"content": b"{bad"}, "malformed JSON"),
        ("POST", "/v1/meetings", {"content": b"[1]"}, "JSON object"),
        ("POST", "/v1/meetings", {"content": b""}, "required"),
        ("POST", "/v1/meetings", {"json": {}}, "name"),
        ("POST", "/v1/meetings", {"json": {"name": "  "}}, "name"),
        ("POST", "/v1/meetings", {"json": {"name": 5}}, "name"),
        ("POST", "/v1/meetings", {"json": {"name": "m", "extra": 1}}, "unknown field"),
        ("POST", "/v1/meetings", {"json": {"name": "m", "controls": []}}, "controls"),
        ("POST", "/v1/meetings", {"json": {"name": "m", "controls": {"video": True}}}, "video"),
        ("POST", "/v1/meetings", {"json": {"name": "m", "controls": {"chat": "no"}}}, "chat"),
        ("PATCH", controls, {"json": {}}, "controls is required"),
        ("PATCH", controls, {"json": {"controls": {}}}, "no flag"),
        ("PATCH", controls, {"json": {"controls": {"mic": 1}}}, "mic"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}, "rev": 1}}, "unknown field"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}, "expected_revision": "1"}},
         "expected_revision"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}, "expected_revision": -1}},
         "negative"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}, "duration": 0}}, "duration"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}, "duration": 1e9}}, "duration"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}},
                             "headers": {"If-Match": "soon"}}, "If-Match"),
        ("PATCH", controls, {"json": {"controls": {"mic": False}},
                             "headers": {"If-Match": b'"\xb2"'}}, "If-Match"),  # latin-1 2
        ("PATCH", controls, {"json": {"controls": {"mic": False}, "expected_revision": 1},
                             "headers": {"If-Match": '"2"'}}, "disagree"),
    ]
    for method, path, kw, words in cases:
        headers = {**host, **kw.pop("headers", {})}
        response = await api.request(method, path, headers=headers, **kw)
        assert response.status_code == 400, (method, path, kw, response.text)
        assert words in response.json()["error"], (words, response.json())
    assert (await api.request("GET", "/v1/meetings/nope")).status_code == 404
    assert (await api.request("PUT", "/v1/meetings")).status_code == 405
    assert (await api.request("GET", f"/v1/meetings/{mid}/controls")).json()["revision"] == (
        created["revision"])


async def test_openapi_matches_the_routes(server: RunningServer, api: Api) -> None:
    document = (await api.request("GET", "/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if not op.get("x-websocket")
    }
    websockets = {path for path, ops in document["paths"].items()
                  if any(op.get("x-websocket") for op in ops.values())}
    app = create_app(server.service, ready=_ready)
    served = {
        (rule.rule.replace("<", "{").replace(">", "}"), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    # a WebSocket route reaches the app only without an upgrade (then 426, documented there)
    assert documented == {(path, m) for path, m in served if path not in websockets}
    # the documented WebSockets are the ones the front door routes
    route = ws_router(server.service, _v1_stub)
    for path, ops in document["paths"].items():
        if any(op.get("x-websocket") for op in ops.values()):
            assert route(path.replace("{meeting_id}", "abc")) is not None, path


async def _ready() -> bool:
    return True


async def _v1_stub(*args: Any) -> None:
    pass
