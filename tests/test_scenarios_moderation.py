"""Moderation scenarios (#14), embedded and on 3 instances behind nginx (tests/test_scenarios.py).

A room switch is one frame per member whatever made it (HTTP, WebSocket, the seed's control
frame, etcdctl); one member's flags from the API and from etcdctl; mute one, ask to unmute,
hands, roles, and each permission boundary.
"""

from __future__ import annotations

import json
import os
from typing import Any

import trio

from . import test_scenarios
from .clients import V1, Api, open_v1, recv_until
from .test_scenarios import Target, seed_in

#: the same fixture as tests/test_scenarios.py: embedded, and 3 instances behind nginx
target = test_scenarios.target

CHANGED = "会议室状态发送变更"


async def _v1_meeting(api: Api) -> tuple[str, str, dict[str, str]]:
    created = (await api.request("POST", "/v1/meetings", json={"name": "mod"})).json()
    return created["id"], created["host_key"], {"Authorization": f"Bearer {created['host_key']}"}


async def _etcdctl(target: Target, *args: str) -> None:
    env = {**os.environ, "ETCDCTL_API": "3"}
    await trio.run_process(["etcdctl", "--endpoints", target.etcd, *args], env=env,
                           capture_stdout=True)


async def _frames_until_mark(ws: V1, mark: str) -> list[dict[str, Any]]:
    """Every frame up to the chat ``mark`` (the chat log orders a meeting's events, so an event
    published for the switch would come before the mark)."""
    got: list[dict[str, Any]] = []
    while True:
        frame = await ws.recv(timeout=10)
        if frame.get("type") == "chat" and frame.get("text") == mark:
            return got
        got.append(frame)


async def _roster(api: Api, mid: str) -> dict[str, dict[str, Any]]:
    response = await api.request("GET", f"/v1/meetings/{mid}/members")
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["members"]}


async def test_a_room_switch_is_one_frame_per_member_from_every_source(target: Target) -> None:
    async with Api(target.url) as api:
        created = await api.create_seed_meeting(meeting_name="switch")
        mid, uid = created["meetingUid"], created["userUid"]
        auth = {"Authorization": f"Bearer {uid}"}
        with trio.fail_after(90):
            async with open_v1(target.url, mid, name="host", host_key=uid) as host, \
                    open_v1(target.url, mid, name="ann") as ann, \
                    open_v1(target.url, mid, name="bob") as bob, \
                    seed_in(target.url, mid, "boss", uid) as boss, \
                    seed_in(target.url, mid, "sue") as sue:
                members = (host, ann, bob)

                async def patch(value: bool) -> None:
                    r = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=auth,
                                          json={"controls": {"camera": value}})
                    assert r.status_code == 200, r.text

                async def ws(value: bool) -> None:
                    reply = await host.call("set_controls", controls={"camera": value})
                    assert reply["type"] == "ack", reply

                async def seed(value: bool) -> None:
                    await boss.send_message("特殊消息2" + json.dumps(
                        {"isVideo": value, "userUid": uid, "meetingUid": mid}))

                async def etcd(value: bool) -> None:
                    await _etcdctl(target, "put", f"/rmeeting/meetings/{mid}/controls/camera",
                                   "yes" if value else "OFF")

                sources = [patch, ws, seed] + ([etcd] if target.kind == "cluster" else [])
                await patch(True)  # the seed's meetings may start with cameras not allowed
                for n, source in enumerate(sources):
                    for m in (ann, bob):
                        reply = await m.call("media", camera=True)
                        assert reply.get("camera") is True, (source.__name__, reply)
                    roster = await _roster(api, mid)
                    assert roster[ann.me["id"]]["camera"] and roster[bob.me["id"]]["camera"]
                    for m in members:  # drop what came before the switch
                        await m.call("ping")
                        m._backlog.clear()
                    await source(False)
                    for m in members:
                        await m.recv_match(lambda f: f.get("type") == "controls"
                                           and f["changed"] == {"camera": False})
                    mark = f"mark-{n}"
                    assert (await ann.call("chat", text=mark))["type"] == "ack"
                    for m in members:
                        rest = await _frames_until_mark(m, mark)
                        # the controls frame (read above) and nothing per member: <= 2 frames
                        assert [f for f in rest if f.get("type") == "member_updated"] == [], \
                            (source.__name__, rest)
                        assert len(rest) + 1 <= 2, (source.__name__, rest)
                    for s in (boss, sue):  # the seed's own frame says it
                        await recv_until(s, lambda f: f.get("notice") == CHANGED
                                         and f.get("isVideo") is False)
                    roster = await _roster(api, mid)
                    assert not any(r["camera"] for r in roster.values()), source.__name__
                    async with open_v1(target.url, mid, name="late") as late:
                        assert not any(r["camera"] for r in late.welcome["roster"])
                    assert (await ann.call("media", camera=True))["code"] == "camera_disabled"
                    # back on: devices stay off until their members turn them on
                    await source(True)
                    await ann.recv_match(lambda f: f.get("type") == "controls"
                                         and f["changed"] == {"camera": True})
                    roster = await _roster(api, mid)
                    assert not roster[ann.me["id"]]["camera"], source.__name__


async def _flag(target: Target, api: Api, auth: dict[str, str], mid: str, member: str,
                flag: str, raw: str | None) -> None:
    """Set one member's flag: with etcdctl on the cluster (raw text, None deletes), else by the
    API (the text parsed as the store would)."""
    if target.kind == "cluster":
        key = f"/rmeeting/meetings/{mid}/members/{member}/{flag}"
        await _etcdctl(target, *(["del", key] if raw is None else ["put", key, raw]))
        return
    value = None if raw is None else raw.strip().lower() in ("true", "1", "on", "yes")
    r = await api.request("PATCH", f"/v1/meetings/{mid}/members/{member}/controls",
                          headers=auth, json={"controls": {flag: value}})
    assert r.status_code == 200, r.text


async def test_one_members_flags_from_the_api_and_etcdctl(target: Target) -> None:
    async with Api(target.url) as api:
        mid, _key, auth = await _v1_meeting(api)
        with trio.fail_after(40):
            async with open_v1(target.url, mid, name="host", host_key=_key) as host, \
                    open_v1(target.url, mid, name="ann") as ann, \
                    open_v1(target.url, mid, name="bob") as bob:
                me = ann.me["id"]
                await _flag(target, api, auth, mid, me, "chat", " Off ")
                for m in (host, ann, bob):
                    event = await m.recv_match(lambda f: f.get("type") == "controls"
                                               and "members" in f)
                    assert event["members"] == {me: {"chat": False}}
                    assert event["by"] == ("operator" if target.kind == "cluster" else "host")
                assert (await ann.call("chat", text="x"))["code"] == "chat_disabled"
                assert (await bob.call("chat", text="fine"))["type"] == "ack"
                assert (await _roster(api, mid))[me]["controls"] == {"chat": False}
                if target.kind == "cluster":  # garbage is ignored: the last valid value holds
                    await _etcdctl(target, "put", f"/rmeeting/meetings/{mid}/members/{me}/chat",
                                   "perhaps")
                    await trio.sleep(0.3)
                    assert (await ann.call("chat", text="x"))["code"] == "chat_disabled"
                await _flag(target, api, auth, mid, me, "chat", None)  # back to the room's
                await ann.recv_match(lambda f: f.get("type") == "controls"
                                     and f.get("members") == {me: {"chat": None}})
                assert (await ann.call("chat", text="back"))["type"] == "ack"
                # a member's mic: its device goes off with one frame, it may not turn it on
                assert (await ann.call("media", mic=True))["mic"] is True
                await _flag(target, api, auth, mid, me, "mic", "0")
                await bob.recv_match(lambda f: f.get("type") == "controls" and "members" in f)
                assert (await _roster(api, mid))[me]["mic"] is False
                assert (await ann.call("media", mic=True))["code"] == "mic_disabled"
                # a seed member is told in its own words: the room state, as it applies to it
                async with seed_in(target.url, mid, "sam") as sam:
                    sam_id = next(i for i, m in (await _roster(api, mid)).items()
                                  if m["name"] == "sam")
                    await _flag(target, api, auth, mid, sam_id, "mic", "false")
                    state = await recv_until(sam, lambda f: "is_mute" in f)
                    assert state["is_mute"] is True and state["is_video"] is True
                    await _flag(target, api, auth, mid, sam_id, "chat", "no")
                    await recv_until(sam, lambda f: "is_mute" in f)
                    await sam.send_message("hello?")
                    assert "error" in await recv_until(sam, lambda f: "error" in f)
                    await _flag(target, api, auth, mid, sam_id, "mic", None)
                    state = await recv_until(sam, lambda f: "is_mute" in f)
                    assert state["is_mute"] is False
                audit = (await api.request("GET", f"/v1/meetings/{mid}/audit",
                                           headers=auth)).json()["entries"]
                assert any(e["member"] == me and e["flag"] == "mic" and e["new"] is False
                           for e in audit), audit


async def test_mute_one_and_an_ask_to_unmute_granted(target: Target) -> None:
    async with Api(target.url) as api:
        mid, key, auth = await _v1_meeting(api)
        with trio.fail_after(40):
            async with open_v1(target.url, mid, name="host", host_key=key) as host, \
                    open_v1(target.url, mid, name="ann") as ann, \
                    open_v1(target.url, mid, name="bob") as bob:
                me, boss = ann.me["id"], host.me["id"]
                await ann.call("media", mic=True, camera=True)
                assert (await host.call("turn_off", member_id=me))["type"] == "ack"
                for m in (ann, bob):  # the member is told, the others see it
                    told = await m.recv_match(lambda f: f.get("type") == "member_updated"
                                              and f.get("by") == boss)
                    assert told["member"]["id"] == me and told["changes"] == {"mic": False}
                    assert told["member"]["camera"] is True
                # camera off by HTTP (the host key)
                r = await api.request("POST", f"/v1/meetings/{mid}/members/{me}/turn-off",
                                      headers=auth, json={"device": "camera"})
                assert r.status_code == 200, r.text
                assert (await _roster(api, mid))[me]["camera"] is False
                # muted, not blocked: it may unmute, so nothing to ask
                assert (await ann.call("ask_unmute"))["code"] == "not_needed"
                # blocked: it may not; it asks, the host sees it and allows it
                await host.call("member_controls", member_id=me, controls={"mic": False})
                assert (await ann.call("media", mic=True))["code"] == "mic_disabled"
                assert (await ann.call("ask_unmute"))["type"] == "ack"
                ask = await host.recv_match(lambda f: f.get("type") == "member_updated"
                                            and f["changes"] == {"ask_unmute": True})
                assert ask["member"]["id"] == me
                assert (await _roster(api, mid))[me]["ask_unmute"] is True
                assert (await host.call("answer_unmute", member_id=me, allow=True))["type"] \
                    == "ack"
                assert (await ann.call("media", mic=True))["mic"] is True
                assert (await _roster(api, mid))[me]["ask_unmute"] is False
                assert (await host.call("answer_unmute", member_id=me, allow=True))["code"] \
                    == "no_request"
                # with the room's mic off, granting lets this member (only) unmute
                await host.call("set_controls", controls={"mic": False})
                await ann.recv_match(lambda f: f.get("type") == "controls"
                                     and f["changed"] == {"mic": False})
                assert (await ann.call("ask_unmute"))["type"] == "ack"
                assert (await bob.call("media", mic=True))["code"] == "mic_disabled"
                r = await api.request("POST", f"/v1/meetings/{mid}/members/{me}/unmute-request",
                                      headers=auth, json={"allow": True})
                assert r.status_code == 200, r.text
                assert (await ann.call("media", mic=True))["mic"] is True
                assert (await bob.call("media", mic=True))["code"] == "mic_disabled"
                flags = [(e["flag"], e["member"], e["by"]) for e in (await api.request(
                    "GET", f"/v1/meetings/{mid}/audit", headers=auth)).json()["entries"]]
                assert ("mute", me, boss) in flags and ("stop_camera", me, "host") in flags
                assert ("unmute_allowed", me, boss) in flags


async def test_hands_in_the_order_raised_lowered_and_rate_limited(target: Target) -> None:
    async with Api(target.url) as api:
        mid, key, auth = await _v1_meeting(api)
        with trio.fail_after(40):
            async with open_v1(target.url, mid, name="host", host_key=key) as host, \
                    open_v1(target.url, mid, name="ann") as ann, \
                    open_v1(target.url, mid, name="bob") as bob, \
                    open_v1(target.url, mid, name="cid") as cid:
                for m in (bob, ann, cid):
                    assert (await m.call("raise_hand"))["type"] == "ack"
                    await host.recv_match(lambda f, i=m.me["id"]: f.get("type") ==
                                          "member_updated" and f["member"]["id"] == i
                                          and f["changes"].get("hand"))
                hands = (await api.request("GET", f"/v1/meetings/{mid}/hands")).json()["hands"]
                assert [h["id"] for h in hands] == [bob.me["id"], ann.me["id"], cid.me["id"]]
                assert (await ann.call("lower_hand"))["type"] == "ack"
                r = await api.request("DELETE", f"/v1/meetings/{mid}/members/{bob.me['id']}/hand",
                                      headers=auth)
                assert r.status_code == 200 and r.json()["was_raised"] is True
                lowered = await bob.recv_match(lambda f: f.get("type") == "member_updated"
                                               and f["member"]["id"] == bob.me["id"]
                                               and "hand" in f["changes"]
                                               and f["changes"]["hand"] is None)
                assert lowered["by"] == "host"
                assert (await host.call("lower_hands"))["lowered"] == [cid.me["id"]]
                assert (await api.request("GET", f"/v1/meetings/{mid}/hands")).json() == {
                    "hands": []}
                # a flood of raises is cut short
                codes = [(await ann.call("raise_hand" if i % 2 else "lower_hand")).get("code")
                         for i in range(12)]
                assert "rate_limited" in codes and codes[0] is None


async def test_roles_and_every_permission_boundary(target: Target) -> None:
    async with Api(target.url) as api:
        mid, key, auth = await _v1_meeting(api)
        with trio.fail_after(60):
            async with open_v1(target.url, mid, name="host", host_key=key) as host, \
                    open_v1(target.url, mid, name="ann") as ann, \
                    open_v1(target.url, mid, name="bob") as bob:
                a, b, h = ann.me["id"], bob.me["id"], host.me["id"]
                # a member trying a co-host action
                for frame in (("turn_off", {"member_id": b}), ("lower_hands", {}),
                              ("member_controls", {"member_id": b, "controls": {"chat": False}}),
                              ("set_controls", {"controls": {"chat": False}})):
                    assert (await ann.call(frame[0], **frame[1]))["code"] == "not_host", frame
                ann_auth = {"Authorization": f"Bearer {ann.welcome['token']}"}
                r = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=ann_auth,
                                      json={"controls": {"chat": False}})
                assert r.status_code == 403
                # bad input: unknown member, self-actions, bad values
                assert (await host.call("turn_off", member_id="nobody"))["code"] == \
                    "member_not_found"
                assert (await host.call("set_role", member_id=h, role="cohost"))["code"] == \
                    "bad_request"
                assert (await host.call("hand_over", member_id=h))["code"] == "bad_request"
                assert (await host.call("set_role", member_id=a, role="king"))["code"] == \
                    "bad_request"
                assert (await host.call("member_controls", member_id=a,
                                        controls={"locked": True}))["code"] == "bad_controls"
                assert (await host.call("turn_off", member_id=a, device="ears"))["code"] == \
                    "bad_request"
                r = await api.request("PATCH", f"/v1/meetings/{mid}/members/nobody/controls",
                                      headers=auth, json={"controls": {"mic": False}})
                assert r.status_code == 404

                # promotion: everyone sees the role; the co-host moderates members
                assert (await host.call("set_role", member_id=a, role="cohost"))["type"] == "ack"
                event = await bob.recv_match(lambda f: f.get("type") == "controls"
                                             and "members" in f)
                assert event["members"] == {a: {"cohost": True}}
                assert (await _roster(api, mid))[a]["role"] == "cohost"
                assert (await ann.call("turn_off", member_id=b))["type"] == "ack"
                assert (await ann.call("set_controls", controls={"chat": False}))["type"] == "ack"
                r = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=ann_auth,
                                      json={"controls": {"chat": True}})
                assert r.status_code == 200, r.text
                # a co-host trying what only the host may do
                assert (await ann.call("set_role", member_id=b, role="cohost"))["code"] == \
                    "not_host"
                assert (await ann.call("hand_over", member_id=b))["code"] == "not_host"
                assert (await ann.call("end"))["code"] == "not_host"
                assert (await ann.call("turn_off", member_id=h))["code"] == "not_allowed"
                r = await api.request("DELETE", f"/v1/meetings/{mid}", headers=ann_auth)
                assert r.status_code == 403
                # a demoted co-host
                assert (await host.call("set_role", member_id=a, role="member"))["type"] == "ack"
                await ann.recv_match(lambda f: f.get("type") == "controls"
                                     and f.get("members") == {a: {"cohost": False}})
                assert (await ann.call("turn_off", member_id=b))["code"] == "not_host"
                assert (await _roster(api, mid))[a]["role"] == "member"

                # the host role handed to bob: the old key no longer makes its bearer host
                assert (await host.call("hand_over", member_id=b))["type"] == "ack"
                for m in (ann, host):  # the old host's instance knows it too
                    event = await m.recv_match(lambda f: f.get("type") == "controls"
                                               and "host" in f)
                    assert event["host"] == b
                roster = await _roster(api, mid)
                assert roster[b]["role"] == "host" and roster[h]["role"] == "member"
                r = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=auth,
                                      json={"controls": {"chat": False}})
                assert r.status_code == 403, r.text
                assert (await host.call("set_controls", controls={"chat": False}))["code"] == \
                    "not_host"
                async with open_v1(target.url, mid, expect_welcome=False, name="x",
                                   host_key=key) as again:
                    assert (await again.recv())["code"] == "not_host"
                bob_auth = {"Authorization": f"Bearer {bob.welcome['token']}"}
                r = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=bob_auth,
                                      json={"controls": {"chat": False}})
                assert r.status_code == 200, r.text
                assert (await bob.call("turn_off", member_id=h))["type"] == "ack"


async def test_a_timed_switch_and_its_end_are_one_frame_each(target: Target) -> None:
    """The timer's change is a source like the others: its end (the flag back on) leaves the
    devices off, and neither the switch nor its end costs a frame per member."""
    async with Api(target.url) as api:
        mid, key, auth = await _v1_meeting(api)
        with trio.fail_after(40):
            async with open_v1(target.url, mid, name="host", host_key=key) as host, \
                    open_v1(target.url, mid, name="ann") as ann:
                assert (await ann.call("media", camera=True, mic=True))["camera"] is True
                await host.call("ping")
                host._backlog.clear()
                r = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=auth,
                                      json={"controls": {"camera": False}, "duration": 1})
                assert r.status_code == 200, r.text
                ended = await host.recv_match(lambda f: f.get("type") == "controls"
                                              and f["changed"] == {"camera": True}, timeout=15)
                assert ended["by"] == "timer"
                assert (await ann.call("chat", text="after"))["type"] == "ack"
                rest = await _frames_until_mark(host, "after")
                assert [f for f in rest if f.get("type") == "member_updated"] == [], rest
                roster = await _roster(api, mid)
                assert roster[ann.me["id"]]["camera"] is False and roster[ann.me["id"]]["mic"]
                assert (await ann.call("media", camera=True))["camera"] is True
