"""The seed's protocol end to end, over real sockets, exactly as its clients speak it."""

from __future__ import annotations

import json

import trio
from trio_websocket import ConnectionClosed

from rmeeting.server import RunningServer

from .clients import Api, open_seed, recv_json, recv_until

JOINED = "有成员加入会议室"
LEFT = "有成员离开会议室"
CHANGED = "会议室状态发送变更"


async def test_create_meeting_answers_the_seed_fields(api: Api) -> None:
    data = await api.create_seed_meeting(
        meeting_name="weekly", username="ann", is_mute=True, is_video=False
    )
    assert set(data) == {"meetingUid", "meetingName", "status", "userUid"}
    assert data["meetingName"] == "weekly" and data["status"] == "success"
    assert len(data["meetingUid"]) == 36 and len(data["userUid"]) == 36


async def test_join_order_room_state_and_chat(server: RunningServer, api: Api) -> None:
    meeting = await api.create_seed_meeting(meeting_name="m", is_mute=True, is_video=True)
    mid = meeting["meetingUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann:
            assert await recv_json(ann) == {"notice": JOINED, "name": "ann"}
            state = await recv_json(ann)
            assert state["is_mute"] is True and state["is_video"] is True
            assert state["is_change_name"] is True and len(state["user_uid"]) == 36
            async with open_seed(server.url, mid, "bob", user_uid="bob-uid-7f3a9c2e5b") as bob:
                assert await recv_json(bob) == {"notice": JOINED, "name": "bob"}
                assert (await recv_json(bob))["user_uid"] == "bob-uid-7f3a9c2e5b"
                assert await recv_json(ann) == {"notice": JOINED, "name": "bob"}
                await bob.send_message("hello 你好")
                # everyone, the sender included, gets the chat
                for ws in (ann, bob):
                    assert await recv_json(ws) == {"notice": "hello 你好", "name": "bob"}
            assert await recv_json(ann) == {"notice": LEFT, "name": "bob"}


async def test_join_unknown_meeting_is_refused_and_nothing_stored(
    server: RunningServer, api: Api
) -> None:
    with trio.fail_after(10):
        async with open_seed(server.url, "no-such-meeting", "ann") as ws:
            assert "meeting" in (await recv_json(ws))["error"]
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                assert closed.reason is not None and closed.reason.code == 4404
    assert await server.service.members.roster("no-such-meeting") == []
    assert await server.service.members.attendance("no-such-meeting") == []


async def test_manager_control_frames_reach_everyone(server: RunningServer, api: Api) -> None:
    meeting = await api.create_seed_meeting(meeting_name="m")
    mid, host_uid = meeting["meetingUid"], meeting["userUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "host", host_uid) as host, \
                open_seed(server.url, mid, "ann") as ann:
            await recv_until(ann, lambda m: "user_uid" in m)
            frame = "特殊消息1" + json.dumps({"isMute": True, "userUid": host_uid,
                                              "meetingUid": mid})
            await host.send_message(frame)
            for ws in (host, ann):
                assert await recv_until(ws, lambda m: m.get("notice") == CHANGED) == {
                    "notice": CHANGED, "isMute": True
                }
            await host.send_message("特殊消息2" + json.dumps(
                {"isVideo": True, "userUid": host_uid, "meetingUid": mid}))
            assert await recv_until(ann, lambda m: m.get("notice") == CHANGED) == {
                "notice": CHANGED, "isVideo": True
            }
    controls = await server.service.meetings.controls(mid)
    assert controls["mic"] is False and controls["camera"] is True


async def test_non_manager_control_frame_is_refused(server: RunningServer, api: Api) -> None:
    meeting = await api.create_seed_meeting(meeting_name="m")
    mid = meeting["meetingUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann", "ann-uid-4d8e1b6c0a") as ann:
            await recv_until(ann, lambda m: "user_uid" in m)
            await ann.send_message("特殊消息1" + json.dumps(
                {"isMute": True, "userUid": "ann-uid-4d8e1b6c0a", "meetingUid": mid}))
            reply = await recv_json(ann)
            assert "manager" in reply["error"]
            # a forged credential: someone else's id is not the manager's either
            await ann.send_message("特殊消息1" + json.dumps(
                {"isMute": True, "userUid": "guess", "meetingUid": mid}))
            assert "manager" in (await recv_json(ann))["error"]
    assert (await server.service.meetings.controls(mid))["mic"] is True


async def test_bad_control_frames_get_errors_and_the_meeting_goes_on(
    server: RunningServer, api: Api
) -> None:
    meeting = await api.create_seed_meeting(meeting_name="m")
    mid, host_uid = meeting["meetingUid"], meeting["userUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "host", host_uid) as host:
            await recv_until(host, lambda m: "user_uid" in m)
            for bad in ("特殊消息1{broken", "特殊消息9{}", "特殊消息", "特殊消息1[1]",
                        "特殊消息1" + json.dumps({"isMute": "yes", "userUid": host_uid})):
                await host.send_message(bad)
                assert "error" in await recv_json(host), bad
            await host.send_message("ab")  # shorter than the prefix: plain chat, no panic
            assert await recv_json(host) == {"notice": "ab", "name": "host"}


async def test_leave_meeting_closes_the_socket_and_tells_the_rest(
    server: RunningServer, api: Api
) -> None:
    meeting = await api.create_seed_meeting(meeting_name="m")
    mid = meeting["meetingUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann, \
                open_seed(server.url, mid, "bob", "bob-uid-7f3a9c2e5b") as bob:
            await recv_until(ann, lambda m: m.get("name") == "bob")
            await recv_until(bob, lambda m: "user_uid" in m)
            response = await api.request("PUT", "/LeaveMeeting", json={
                "username": "bob", "meetingUid": mid, "userUid": "bob-uid-7f3a9c2e5b"})
            assert response.json() == {
                "msg": "leaveMeeting success!", "userUid": "bob-uid-7f3a9c2e5b", "username": "bob"}
            assert await recv_until(ann, lambda m: m.get("notice") == LEFT) == {
                "notice": LEFT, "name": "bob"}
            try:
                while True:
                    await bob.get_message()
            except ConnectionClosed:
                pass
            # the leave is told once, though both the API and the closed socket ended it
            await ann.send_message("still here")
            assert await recv_json(ann) == {"notice": "still here", "name": "ann"}
    again = await api.request("PUT", "/LeaveMeeting", json={
        "username": "bob", "meetingUid": mid, "userUid": "bob-uid-7f3a9c2e5b"})
    assert again.status_code == 404


async def test_export_is_for_the_manager_only(server: RunningServer, api: Api) -> None:
    meeting = await api.create_seed_meeting(meeting_name="m")
    mid, host_uid = meeting["meetingUid"], meeting["userUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "host", host_uid) as host:
            async with open_seed(server.url, mid, "ann", "ann-uid-4d8e1b6c0a") as ann:
                await recv_until(ann, lambda m: "user_uid" in m)
            await recv_until(host, lambda m: m.get("notice") == LEFT)
            ok = await api.request("GET", "/Export", params={"userUid": host_uid,
                                                             "meetingUid": mid})
            # the current attendees (the seed's README): ann has left
            assert ok.status_code == 200 and ok.json() == {"attendee": ["host"]}
            async with open_seed(server.url, mid, "bea", "bea-uid-4d8e1b6c0a") as bea:
                await recv_until(bea, lambda m: "user_uid" in m)
                now = await api.request("GET", "/Export", params={"userUid": host_uid,
                                                                  "meetingUid": mid})
                assert now.json() == {"attendee": ["host", "bea"]}
            denied = await api.request("GET", "/Export", params={"userUid": "ann-uid-4d8e1b6c0a",
                                                                 "meetingUid": mid})
            assert denied.status_code == 403
            assert denied.json() == {"msg": "当前只能管理员能导出参会者"}
            missing = await api.request("GET", "/Export", params={"userUid": host_uid,
                                                                  "meetingUid": "nope"})
            assert missing.status_code == 404


async def test_malformed_bodies_get_400(api: Api) -> None:
    for path, method in (("/CreateMeeting", "POST"), ("/LeaveMeeting", "PUT")):
        for body in (b"{bad", b"[1,2]", b'"text"'):
            response = await api.request(method, path, content=body)
            assert response.status_code == 400, (path, body)
            assert "error" in response.json()
    wrong_type = await api.request("POST", "/CreateMeeting", json={"is_mute": "yes"})
    assert wrong_type.status_code == 400
    empty = await api.request("POST", "/CreateMeeting", content=b"")
    assert empty.status_code == 200
