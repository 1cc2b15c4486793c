"""Hostile input through every door (issue 10, items 1-3): lone surrogates, deep nesting, huge
numbers and wrong types get one clear error, nothing of them is stored, and the meeting stays
joinable for everyone."""

from __future__ import annotations

import json
from typing import Any

import trio

from rmeeting.events import ChatPosted
from rmeeting.server import RunningServer
from rmeeting.wire._decode import BadInput, decode
from rmeeting.wire._json import dumps

from .clients import V1, Api, open_seed, open_v1, recv_json, recv_until

SURROGATE = "\\ud800"  # as JSON writes it: valid JSON, valid UTF-8 on the wire
DEEP = "[" * 20000 + "]" * 20000
HUGE = "1" * 5000


async def _create(api: Api) -> tuple[str, str]:
    response = await api.request("POST", "/v1/meetings", json={"name": "m"})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["host_key"]


def _json_400(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == "bad_request" and body["error"]
    return body


# --- the decoder on its own -------------------------------------------------------------------


def test_decode_refuses_each_kind_of_hostile_json() -> None:
    for raw in (f'{{"a": "x{SURROGATE}"}}', f'{{"{SURROGATE}": 1}}', f'[["{SURROGATE}"]]',
                DEEP, HUGE, f'{{"n": {HUGE}}}', "1e999", "NaN", b"\xff\xfe"):
        try:
            decode(raw)
        except BadInput as exc:
            assert exc.code in ("bad_json", "bad_request") and exc.message
        else:
            raise AssertionError(f"accepted {raw[:40]!r}")
    # what looks like nesting inside a string is text
    assert decode('{"t": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"{{{{"}') == {
        "t": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"{{{{"}
    assert decode('{"a": [1, 2.5, "ok", "你好", {"b": null}]}') == {
        "a": [1, 2.5, "ok", "你好", {"b": None}]}


def test_encoder_never_raises_on_text() -> None:
    assert json.loads(dumps({"text": "hi \ud800", "\udc00": 1})) == {"text": "hi ?", "?": 1}


# --- HTTP -------------------------------------------------------------------------------------


async def test_http_bodies_hostile_json_is_a_json_400_and_nothing_is_stored(
    server: RunningServer, api: Api
) -> None:
    with trio.fail_after(20):
        mid, key = await _create(api)
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for body in (f'{{"name": "x{SURROGATE}"}}', DEEP, f'{{"name": "m", "controls": {DEEP}}}',
                     f'{{"name": {HUGE}}}'):
            _json_400(await api.request("POST", "/v1/meetings", content=body.encode()))
        for body in (f'{{"meeting_name": "weekly{SURROGATE}"}}', DEEP):
            _json_400(await api.request("POST", "/CreateMeeting", content=body.encode()))
        for body in (f'{{"controls": {{"chat": false}}, "expected_revision": {HUGE}}}', DEEP,
                     f'{{"controls": {{"chat{SURROGATE}": false}}}}'):
            _json_400(await api.request("PATCH", f"/v1/meetings/{mid}/controls",
                                        content=body.encode(), headers=auth))
        _json_400(await api.request("PUT", "/LeaveMeeting", content=DEEP.encode()))
        # no orphan: only the meeting made above exists
        assert [m.meeting_id for m in await server.service.meetings.list()] == [mid]


async def test_a_route_that_fails_answers_json_not_html(
    server: RunningServer, api: Api
) -> None:
    async def broken(meeting_id: str) -> None:
        raise RuntimeError("a bug")

    server.service.meetings.get = broken  # type: ignore[method-assign]
    with trio.fail_after(10):
        response = await api.request("GET", "/v1/meetings/x")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == "internal"


# --- v1 WebSocket -----------------------------------------------------------------------------


async def _still_up(client: V1) -> None:
    assert (await client.call("ping"))["type"] == "pong"


async def test_v1_hostile_frames_get_errors_and_the_connection_stays(
    server: RunningServer, api: Api
) -> None:
    mid, key = await _create(api)
    with trio.fail_after(20):
        async with open_v1(server.url, mid, name="ann") as ann:
            for raw, code in (
                (f'{{"type": "chat", "text": "hi {SURROGATE}", "id": "c"}}', "bad_request"),
                (f'{{"type": "rename", "name": "x{SURROGATE}", "id": "r"}}', "bad_request"),
                ('{"type": "chat", "id": "d", "text": ' + DEEP + "}", "bad_request"),
                (DEEP, "bad_request"),
                ('{"type": "ping", "id": ' + HUGE + "}", "bad_request"),
                ('{"type": "chat", "text": 1e999}', "bad_request"),
            ):
                await ann.ws.send_message(raw)
                reply = await ann.recv_type("error")
                assert reply["code"] == code, (raw[:50], reply)
                assert "Traceback" not in reply["message"]
                await _still_up(ann)
            # nothing of it was stored: the next member's welcome holds no chat, ann's name
            async with open_v1(server.url, mid, name="bob") as bob:
                assert bob.welcome["chat"] == []
                assert {m["name"] for m in bob.welcome["roster"]} == {"ann", "bob"}
            async with open_v1(server.url, mid, name="host", host_key=key) as host:
                assert host.welcome["type"] == "welcome"


async def test_a_frame_refused_whole_names_its_id_when_that_is_safe(
    server: RunningServer, api: Api
) -> None:
    """A pipelining client learns which of its frames the decoder refused (issue #10): the
    error echoes the frame's id when the id itself is a clean short string or an integer and
    the frame is nested within bounds; otherwise the error has no id, never a hostile one."""
    mid, _ = await _create(api)
    named = [
        (f'{{"type": "chat", "text": "hi {SURROGATE}", "id": "c1"}}', "c1"),
        (f'{{"id": 7, "type": "rename", "name": "x{SURROGATE}"}}', 7),
        ('{"type": "chat", "id": "n1", "text": "x", "n": ' + HUGE + "}", "n1"),
        ('{"type": "chat", "id": "f1", "text": 1e999}', "f1"),
    ]
    nameless = [
        f'{{"type": "chat", "text": "x", "id": "{SURROGATE}"}}',  # the id is what is hostile
        '{"type": "ping", "id": ' + HUGE + "}",
        '{"type": "chat", "id": "d1", "text": ' + DEEP + "}",  # too deep to read at all
        '{"type": "chat", "id": "' + "i" * 200 + f'", "text": "{SURROGATE}"}}',  # id too long
        f'[{{"id": "a1"}}, "{SURROGATE}"]',  # not an object
    ]
    with trio.fail_after(20):
        async with open_v1(server.url, mid, name="ann") as ann:
            for raw in [raw for raw, _ in named] + nameless:  # pipelined: no wait between
                await ann.ws.send_message(raw)
            for raw, expected in named:
                reply = await ann.recv_type("error")
                assert reply["code"] == "bad_request", (raw[:50], reply)
                assert reply.get("id") == expected, (raw[:50], reply)
            for raw in nameless:
                reply = await ann.recv_type("error")
                assert reply["code"] == "bad_request" and "id" not in reply, (raw[:50], reply)
            await _still_up(ann)


async def test_a_stored_bad_string_cannot_break_welcome_or_exports(
    server: RunningServer, api: Api
) -> None:
    # as if written before validation existed (or by another tool): the encoder must cope
    created = await api.create_seed_meeting(meeting_name="m")
    mid, key = created["meetingUid"], created["userUid"]
    with trio.fail_after(20):
        async with open_v1(server.url, mid, name="ann", host_key=key) as ann:
            me = ann.me["id"]
            await server.service.chat.publish(
                ChatPosted(mid, me, "ann", "host", "hi \ud800"))
            await server.service.members.update(mid, me, {"name": "bad \udc00"})
            async with open_v1(server.url, mid, name="bob") as bob:
                assert bob.welcome["chat"][-1]["text"] == "hi ?"
                assert {m["name"] for m in bob.welcome["roster"]} >= {"bad ?"}
        auth = {"Authorization": f"Bearer {key}"}
        for path in (f"/v1/meetings/{mid}/attendance", f"/v1/meetings/{mid}/attendance.csv",
                     f"/Export?userUid={key}&meetingUid={mid}"):
            response = await api.request("GET", path, headers=auth)
            assert response.status_code == 200, (path, response.text)


# --- the seed's control frames ----------------------------------------------------------------


async def test_seed_bad_control_frames_get_an_error_not_1011(
    server: RunningServer, api: Api
) -> None:
    created = await api.create_seed_meeting(meeting_name="m")
    mid, key = created["meetingUid"], created["userUid"]
    with trio.fail_after(20):
        async with open_seed(server.url, mid, "boss", user_uid=key) as ws:
            await recv_json(ws)  # the join notice
            await recv_json(ws)  # the room state
            for body in ('{"isMute": true, "userUid": 12345}',
                         '{"isMute": true, "userUid": ["x"]}',
                         f'{{"isMute": true, "userUid": "{key}", "meetingUid": 7}}',
                         '{"isMute": true, "userUid": ' + DEEP + "}",
                         DEEP,
                         f'{{"isMute": true, "userUid": "x{SURROGATE}"}}'):
                await ws.send_message("特殊消息1" + body)
                reply = await recv_json(ws)
                assert "error" in reply and "Traceback" not in reply["error"], reply
            # still connected, still the manager
            await ws.send_message(f'特殊消息1{{"isMute": true, "userUid": "{key}"}}')
            assert (await recv_until(ws, lambda m: "isMute" in m))["isMute"] is True
            await ws.send_message("still here")  # the connection was never closed (no 1011)
            assert (await recv_until(ws, lambda m: m.get("notice") == "still here"))
