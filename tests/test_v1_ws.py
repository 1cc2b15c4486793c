"""The v1 WebSocket protocol over real sockets: every frame type, resume, roles and refusals."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from rmeeting.config import Config
from rmeeting.server import RunningServer

from .clients import V1, Api, masked_frame, open_raw_ws, open_v1
from .conftest import make_config

HISTORY = 5
WELCOME_HISTORY = 3


@pytest.fixture
def server_config() -> Config:
    # a short history, so a resume can fall off its end
    return make_config(history_limit=HISTORY, welcome_history=WELCOME_HISTORY)


async def create(api: Api, **controls: bool) -> tuple[str, str]:
    response = await api.request("POST", "/v1/meetings", json={"name": "m", "controls": controls})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["host_key"]


async def chat(sender: V1, *texts: str) -> list[int]:
    return [(await sender.call("chat", text=text))["seq"] for text in texts]


async def test_welcome_snapshot_and_joins(server: RunningServer, api: Api) -> None:
    mid, key = await create(api, camera=False)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host:
            assert host.me["role"] == "host" and host.welcome["roster"] == [host.me]
            await chat(host, "one", "two")
            async with open_v1(server.url, mid, name="ann") as ann:
                w = ann.welcome
                assert w["you"]["name"] == "ann" and w["you"]["role"] == "member"
                assert w["token"].split(".")[0] == w["you"]["id"]
                assert w["meeting"]["id"] == mid and w["meeting"]["name"] == "m"
                assert w["controls"]["camera"] is False and isinstance(w["revision"], int)
                assert [m["name"] for m in w["roster"]] == ["host", "ann"]
                assert [(c["seq"], c["text"], c["from"]["name"]) for c in w["chat"]] == [
                    (1, "one", "host"), (2, "two", "host")]
                assert w["last_seq"] == 2 and w["resumed"] is False and "missed" not in w
                joined = await host.recv_type("member_joined")
                assert joined["member"] == w["you"]
                # the first frame after a welcome is never the member's own join
                await ann.send(type="ping", id="p")
                assert await ann.recv() == {"type": "pong", "id": "p"}
            left = await host.recv_type("member_left")
            assert left["member"]["id"] == w["you"]["id"]
            assert left["reason"] == "closed"


async def test_chat_sequence_and_server_side_identity(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host, \
                open_v1(server.url, mid, name="ann") as ann:
            await host.recv_type("member_joined")
            ack = await ann.call("chat", text="hello 你好")
            assert ack == {"type": "ack", "of": "chat", "seq": 1, "id": ack["id"]}
            for ws in (host, ann):
                got = await ws.recv_type("chat")
                assert got["seq"] == 1 and got["text"] == "hello 你好"
                assert got["from"] == {"id": ann.me["id"], "name": "ann", "role": "member"}
            # a frame cannot say who sent it
            forged = await ann.call("chat", text="x", name="host", **{"from": {"id": "h"}})
            assert forged["type"] == "error" and forged["code"] == "bad_request"
            assert "from" in forged["message"] and "name" in forged["message"]
            assert await chat(host, "two") == [2]
            assert (await ann.recv_type("chat"))["seq"] == 2  # nothing sent for the forgery


async def test_rename_and_media(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host, \
                open_v1(server.url, mid, name="ann") as ann:
            await host.recv_type("member_joined")
            assert (await ann.call("rename", name="  Ann B  "))["name"] == "Ann B"
            updated = await host.recv_type("member_updated")
            assert updated["member"]["name"] == "Ann B" and updated["changes"] == {"name": "Ann B"}
            assert (await ann.call("media", camera=True, mic=True))["camera"] is True
            assert (await host.recv_type("member_updated"))["changes"] == {
                "camera": True, "mic": True}
            await ann.call("chat", text="hi")
            assert (await host.recv_type("chat"))["from"]["name"] == "Ann B"

            await host.call("set_controls", controls={"rename": False})
            refused = await ann.call("rename", name="Z")
            assert refused["code"] == "rename_disabled"
            assert (await host.call("rename", name="Boss"))["type"] == "ack"  # the host may

            # switching camera off turns ann's off: the controls event itself says so (one
            # frame, no member_updated per member)
            await host.call("set_controls", controls={"camera": False})
            for ws in (host, ann):
                off = await ws.recv_match(lambda m: m["type"] == "controls"
                                          and m["changed"] == {"camera": False})
                assert off["controls"]["camera"] is False
            roster = {m["id"]: m for m in (await api.request(
                "GET", f"/v1/meetings/{mid}/members")).json()["members"]}
            assert roster[ann.me["id"]]["camera"] is False and roster[ann.me["id"]]["mic"]
            assert (await ann.call("media", camera=True))["code"] == "camera_disabled"
            assert (await ann.call("media", camera=False, mic=False))["type"] == "ack"
            for bad in ({}, {"camera": "on"}, {"camera": True, "video": True}):
                assert (await ann.call("media", **bad))["code"] == "bad_request", bad
            roster = {m["id"]: m for m in (await api.request(
                "GET", f"/v1/meetings/{mid}/members")).json()["members"]}
            assert roster[ann.me["id"]]["camera"] is False
            assert roster[host.me["id"]]["name"] == "Boss"


async def test_host_actions_over_the_socket(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host, \
                open_v1(server.url, mid, name="ann") as ann, \
                open_v1(server.url, mid, name="bob") as bob:
            rev = ann.welcome["revision"]
            ack = await host.call("set_controls", controls={"mic": False},
                                  expected_revision=rev)
            assert ack["of"] == "set_controls" and ack["controls"]["mic"] is False
            for ws in (ann, bob, host):
                changed = await ws.recv_type("controls")
                assert changed["changed"] == {"mic": False} and changed["by"] == host.me["id"]
                assert changed["revision"] == ack["revision"]
            stale = await host.call("set_controls", controls={"mic": True},
                                    expected_revision=rev)
            assert stale["code"] == "revision_conflict" and stale["revision"] == ack["revision"]
            bad = await host.call("set_controls", controls={"volume": True})
            assert bad["code"] == "bad_controls"
            negative = await host.call("set_controls", controls={"mic": True},
                                       expected_revision=-1)
            assert negative["code"] == "bad_request"

            kicked = await host.call("kick", member_id=bob.me["id"])
            assert kicked == {"type": "ack", "of": "kick", "member_id": bob.me["id"],
                              "was_present": True, "id": kicked["id"]}
            assert await bob.closed_code() == 4003
            left = await ann.recv_type("member_left")
            assert left["member"]["id"] == bob.me["id"] and left["reason"] == "kicked"
            assert (await host.call("kick", member_id="nobody"))["code"] == "member_not_found"
            assert (await host.call("kick", member_id=host.me["id"]))["code"] == "bad_request"

            await host.send(type="end")  # the answer is the end itself: an ack may not come
            for ws in (ann, host):
                ended = await ws.recv_type("meeting_ended")
                assert ended == {"type": "meeting_ended", "reason": "ended by the host"}
                assert await ws.closed_code() == 4000
        # a token of an ended meeting is stale: the meeting is a tombstone, nobody joins it
        async with open_v1(server.url, mid, expect_welcome=False,
                           token=ann.welcome["token"]) as stale_token:
            assert (await stale_token.recv())["code"] == "meeting_ended"
            assert await stale_token.closed_code() == 4410
    gone = await api.request("GET", f"/v1/meetings/{mid}")
    assert gone.status_code == 200 and gone.json()["ended"] is True


async def test_audit_names_the_member_who_changed(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host:
            await host.call("set_controls", controls={"chat": False}, duration=30)
    entries = (await api.request("GET", f"/v1/meetings/{mid}/audit",
                                 headers={"Authorization": f"Bearer {key}"})).json()["entries"]
    assert [(e["by"], e["flag"], e["new"]) for e in entries] == [(host.me["id"], "chat", False)]


async def test_members_cannot_act_as_host(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host, \
                open_v1(server.url, mid, name="ann") as ann:
            frames: list[dict[str, Any]] = [
                {"type": "set_controls", "controls": {"chat": False}},
                {"type": "kick", "member_id": host.me["id"]},
                {"type": "end"},
            ]
            for frame in frames:
                reply = await ann.call(frame.pop("type"), **frame)
                assert reply["type"] == "error" and reply["code"] == "not_host", reply
            assert (await ann.call("ping"))["type"] == "pong"  # still connected
            headers = {"Authorization": f"Bearer {ann.welcome['token']}"}
            http = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=headers,
                                     json={"controls": {"chat": False}})
            assert http.status_code == 403
    controls = await server.service.meetings.controls(mid)
    assert controls["chat"] is True


async def test_chat_off_and_locked(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host, \
                open_v1(server.url, mid, name="ann") as ann:
            await host.call("set_controls", controls={"chat": False, "locked": True})
            await ann.recv_type("controls")
            assert (await ann.call("chat", text="hi"))["code"] == "chat_disabled"
            assert await chat(host, "host still talks") == [1]
            assert (await ann.recv_type("chat"))["text"] == "host still talks"

            async with open_v1(server.url, mid, name="eve", expect_welcome=False) as eve:
                refused = await eve.recv()
                assert refused["type"] == "error" and refused["code"] == "locked"
                assert "locked" in refused["message"]
                assert await eve.closed_code() == 4423
            # a current member reconnecting is not a new join (and keeps its name: renaming is
            # off); the host may always join
            async with open_v1(server.url, mid, token=ann.welcome["token"], name="mal") as again:
                assert again.me["id"] == ann.me["id"] and again.me["name"] == "ann"
                assert await ann.closed_code() == 4009  # the older connection is replaced
            async with open_v1(server.url, mid, name="host 2", host_key=key) as second:
                assert second.me["role"] == "host" and second.me["id"] != host.me["id"]
    ledger = await server.service.members.attendance(mid)
    assert not any(e.name == "eve" for e in ledger)


async def test_join_refusals(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    other, _ = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, other, name="zed") as zed:
            zed_token = zed.welcome["token"]
        async with open_v1(server.url, mid, name="ann") as ann:
            ann_id = ann.me["id"]
            cases: list[tuple[str, dict[str, Any], str, int]] = [
                ("nope", {}, "meeting_not_found", 4404),
                (mid, {"token": f"{ann_id}.not-the-secret"}, "bad_token", 4401),
                (mid, {"token": "no-dot"}, "bad_token", 4401),
                (mid, {"token": zed_token}, "bad_token", 4401),  # another meeting's member
                (mid, {"token": f"{ann_id}.{zed_token.split('.')[1]}"}, "bad_token", 4401),
                (mid, {"host_key": "guess"}, "not_host", 4403),
                (mid, {"last_seq": "-1"}, "bad_request", 4400),
                (mid, {"last_seq": "²"}, "bad_request", 4400),  # a digit to str.isdigit only
            ]
            for meeting, query, code, close in cases:
                async with open_v1(server.url, meeting, expect_welcome=False, **query) as ws:
                    reply = await ws.recv()
                    assert (reply["type"], reply["code"]) == ("error", code), (query, reply)
                    assert await ws.closed_code() == close, query
            assert (await ann.call("ping"))["type"] == "pong"  # ann was not replaced
            bearer = {"Authorization": "Bearer guess"}
            async with open_v1(server.url, mid, expect_welcome=False, headers=bearer) as ws:
                assert (await ws.recv())["code"] == "not_host"
            async with open_v1(server.url, mid, headers={"Authorization": f"Bearer {key}"}) as h:
                assert h.me["role"] == "host" and h.me["name"] == "guest"


async def test_bad_frames_get_errors_and_the_connection_stays(
    server: RunningServer, api: Api
) -> None:
    mid, _ = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="ann") as ann:
            pong = await ann.call("ping")
            assert pong == {"type": "pong", "id": pong["id"]}
            await ann.send(type="ping", id=7)
            assert await ann.recv() == {"type": "pong", "id": 7}
            raw_cases = [
                ("{not json", "bad_json", None),
                ("[1, 2]", "bad_request", None),
                ('{"id": "a"}', "bad_request", "a"),
                ('{"type": 5, "id": "b"}', "bad_request", "b"),
                ('{"type": "dance", "id": "c"}', "unknown_type", "c"),
                ('{"type": "chat", "id": "d"}', "bad_request", "d"),
                ('{"type": "chat", "text": 5, "id": "e"}', "bad_request", "e"),
                ('{"type": "chat", "text": "  ", "id": "f"}', "empty", "f"),
                ('{"type": "rename", "id": "g"}', "bad_request", "g"),
                ('{"type": "rename", "name": "", "id": "h"}', "bad_request", "h"),
                ('{"type": "kick", "member_id": 5, "id": "i"}', "bad_request", "i"),
                ('{"type": "ping", "id": true}', "bad_request", None),
                ('{"type": "ping", "id": {"x": 1}}', "bad_request", None),
                ('{"type": "ping", "extra": 1}', "bad_request", None),
                ('{"type": "set_controls", "controls": [], "id": "j"}', "bad_request", "j"),
            ]
            for text, code, echoed in raw_cases:
                await ann.ws.send_message(text)
                reply = await ann.recv()
                assert reply["type"] == "error" and reply["code"] == code, (text, reply)
                assert reply.get("id") == echoed, (text, reply)
            await ann.ws.send_message(b"\x00binary")
            assert (await ann.recv())["code"] == "bad_frame"
            long = await ann.call("chat", text="x" * (server.service.config.max_chat_chars + 1))
            assert long["code"] == "too_long"
            assert await chat(ann, "still here") == [1]


async def test_empty_frames_on_a_raw_socket(server: RunningServer, api: Api) -> None:
    mid, _ = await create(api)
    with trio.fail_after(10):
        stream = await open_raw_ws(server.url, f"/v1/meetings/{mid}/ws?name=raw")
        try:
            await stream.send_all(masked_frame(1, b""))
            seen = b""
            while b"bad_frame" not in seen:
                seen += await stream.receive_some(65536)
            assert b'"welcome"' in seen
        finally:
            await stream.aclose()


async def test_resume_without_a_gap(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host:
            async with open_v1(server.url, mid, name="ann") as ann:
                await chat(host, "1", "2")
                assert [(await ann.recv_type("chat"))["seq"] for _ in range(2)] == [1, 2]
            await chat(host, "3", "4")  # while ann is away
            async with open_v1(server.url, mid, token=ann.welcome["token"], last_seq=2) as back:
                w = back.welcome
                assert w["resumed"] is True and w["you"]["id"] == ann.me["id"]
                assert [c["seq"] for c in w["missed"]] == [3, 4] and w["gap"] is False
                assert "chat" not in w and w["last_seq"] == 4
                await chat(host, "5")
                assert (await back.recv_type("chat"))["seq"] == 5  # no repeat of 3 or 4
            # nothing missed: an empty list, no gap
            async with open_v1(server.url, mid, token=ann.welcome["token"], last_seq=5) as back:
                assert back.welcome["missed"] == [] and back.welcome["gap"] is False


async def test_resume_with_a_gap(server: RunningServer, api: Api) -> None:
    mid, key = await create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host:
            async with open_v1(server.url, mid, name="ann") as ann:
                await chat(host, "1")
                await ann.recv_type("chat")
            await chat(host, *(str(i) for i in range(2, 10)))  # 8 more; 5 are kept
            async with open_v1(server.url, mid, token=ann.welcome["token"], last_seq=1) as back:
                w = back.welcome
                assert w["gap"] is True and [c["seq"] for c in w["missed"]] == [5, 6, 7, 8, 9]
            async with open_v1(server.url, mid, token=ann.welcome["token"], last_seq=4) as back:
                assert back.welcome["gap"] is False  # 5..9 is exactly what was missed
            async with open_v1(server.url, mid, name="new") as new:
                assert [c["seq"] for c in new.welcome["chat"]] == [7, 8, 9]


async def test_joining_during_busy_chat_gets_each_message_once(
    server: RunningServer, api: Api
) -> None:
    mid, key = await create(api)
    total = 30
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="host", host_key=key) as host:
            async with trio.open_nursery() as nursery:
                async def talk() -> None:
                    for i in range(total):
                        await host.send(type="chat", text=str(i))
                        await trio.sleep(0.001)  # spread out, so the join lands mid-stream

                nursery.start_soon(talk)
                async with open_v1(server.url, mid, name="late") as late:
                    w = late.welcome
                    live: list[int] = []
                    while not live or live[-1] < total:
                        live.append((await late.recv_type("chat"))["seq"])
            # the welcome's chat and the live chat meet exactly: no gap, no repeat
            assert all(c["seq"] <= w["last_seq"] for c in w["chat"])
            assert live == list(range(w["last_seq"] + 1, total + 1)), (w["last_seq"], live)
