"""A seed client and a v1 client in one meeting: one chat, one roster, one set of controls."""

from __future__ import annotations

import json

import trio

from rmeeting.server import RunningServer

from .clients import Api, open_seed, open_v1, recv_until

JOINED = "有成员加入会议室"
LEFT = "有成员离开会议室"
CHANGED = "会议室状态发送变更"


async def test_seed_and_v1_in_a_v1_meeting(server: RunningServer, api: Api) -> None:
    created = (await api.request("POST", "/v1/meetings", json={"name": "mixed"})).json()
    mid, key = created["id"], created["host_key"]
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="vera", host_key=key) as vera:
            async with open_seed(server.url, mid, "sam", "sam-uid-3b7d9f1e6c") as sam:
                assert await recv_until(sam, lambda m: "user_uid" in m) == {
                    "is_mute": False, "is_change_name": True, "is_video": True,
                    "user_uid": "sam-uid-3b7d9f1e6c"}
                joined = await vera.recv_type("member_joined")
                assert joined["member"]["name"] == "sam" and joined["member"]["role"] == "member"

                await sam.send_message("hi from the seed")
                got = await vera.recv_type("chat")
                assert got["text"] == "hi from the seed" and got["from"]["name"] == "sam"
                assert got["from"]["id"] == joined["member"]["id"] and got["seq"] == 1
                await vera.call("chat", text="hi from v1")
                assert await recv_until(sam, lambda m: m.get("name") == "vera") == {
                    "notice": "hi from v1", "name": "vera"}

                # a v1 client joining is a join notice for the seed client, and vice versa
                async with open_v1(server.url, mid, name="vic") as vic:
                    assert [m["name"] for m in vic.welcome["roster"]] == ["vera", "sam", "vic"]
                    assert await recv_until(sam, lambda m: m.get("notice") == JOINED) == {
                        "notice": JOINED, "name": "vic"}
                assert await recv_until(sam, lambda m: m.get("notice") == LEFT) == {
                    "notice": LEFT, "name": "vic"}

                # the v1 host's control change reaches the seed client in its own words
                await vera.call("set_controls", controls={"camera": False, "mic": False})
                assert await recv_until(sam, lambda m: m.get("notice") == CHANGED) == {
                    "notice": CHANGED, "isVideo": False, "isMute": True}
                # a change the seed has no word for is not sent to it
                await vera.call("set_controls", controls={"chat": False})
                await vera.recv_match(lambda m: m.get("changed") == {"chat": False})
                await sam.send_message("muted chat?")
                assert "error" in await recv_until(sam, lambda m: "error" in m)
            left = await vera.recv_type("member_left")
            assert left["member"]["name"] == "sam" and left["reason"] == "closed"


async def test_seed_manager_and_v1_host_share_a_seed_meeting(
    server: RunningServer, api: Api
) -> None:
    seed = await api.create_seed_meeting(meeting_name="s", is_video=True)
    mid, host_uid = seed["meetingUid"], seed["userUid"]
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "manager", host_uid) as manager, \
                open_v1(server.url, mid, name="vic") as vic:
            # the seed's creator credential is the host key of the v1 API too
            async with open_v1(server.url, mid, name="boss", host_key=host_uid) as boss:
                assert boss.me["role"] == "host"
            assert vic.me["role"] == "member"
            await manager.send_message("特殊消息2" + json.dumps(
                {"isVideo": False, "userUid": host_uid, "meetingUid": mid}))
            changed = await vic.recv_type("controls")
            assert changed["changed"] == {"camera": False}
            assert changed["controls"]["camera"] is False
            roster = {m["name"]: m for m in vic.welcome["roster"]}
            assert changed["by"] == roster["manager"]["id"] and roster["manager"]["role"] == "host"
            # a seed member's userUid is not a v1 token for it
            async with open_v1(server.url, mid, expect_welcome=False,
                               token=f"{roster['manager']['id']}.{host_uid}") as ws:
                assert (await ws.recv())["code"] == "bad_token"
            # a v1 member cannot use the seed's control frames' credential trick
            forged = await vic.call("chat", text="特殊消息2" + json.dumps(
                {"isVideo": True, "userUid": host_uid, "meetingUid": mid}))
            assert forged["type"] == "ack"  # it is plain chat on v1
            assert (await server.service.meetings.controls(mid))["camera"] is False


async def test_ending_tells_both_protocols_and_frees_the_hub(
    server: RunningServer, api: Api
) -> None:
    created = (await api.request("POST", "/v1/meetings", json={"name": "m"})).json()
    mid, key = created["id"], created["host_key"]
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="vic") as vic, \
                open_seed(server.url, mid, "sam") as sam:
            await recv_until(sam, lambda m: "user_uid" in m)
            response = await api.request("DELETE", f"/v1/meetings/{mid}",
                                         headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200
            assert (await vic.recv_type("meeting_ended"))["reason"] == "ended by the host"
            assert await vic.closed_code() == 4000
            ended = await recv_until(sam, lambda m: "reason" in m)
            assert ended == {"notice": "会议已结束", "reason": "ended by the host"}
        while server.hub.statistics()["members"]:
            await trio.sleep(0.01)
    sessions = await server.service.members.attendance(mid)
    assert {(s.name, s.reason) for s in sessions} == {("vic", "meeting ended"),
                                                      ("sam", "meeting ended")}
