"""The lobby's pieces on their own: the waiters table, and the one hook the webhooks use.

The lobby end to end (knock, admit, refuse, all at once, co-hosts, a knocker leaving, the
meeting ending) is in tests/test_deployments.py, embedded and on a cluster."""

from __future__ import annotations

import trio

from rmeeting.lobby import Waiters
from rmeeting.server import RunningServer, serve_rmeeting

from .clients import Api, open_v1
from .conftest import make_config
from .webhook_receiver import SECRET, Got, Receiver


async def test_waiters_pair_a_decision_with_its_knocker() -> None:
    waiters = Waiters()
    waiters.add("m", "a")
    waiters.add("m", "b")
    waiters.add("other", "c")
    with trio.fail_after(5):
        assert waiters.decide("m", "a", "admitted") is True
        assert waiters.decide("m", "a", "refused") is False  # decided once
        assert await waiters.wait("m", "a") == "admitted"
        assert waiters.decide("m", "nobody", "admitted") is False  # waits on another instance
        assert waiters.end_meeting("m") == 1
        assert await waiters.wait("m", "b") == "ended"
        waiters.remove("m", "a")
        waiters.remove("m", "b")
        assert waiters.count() == 1


async def test_the_lobby_sends_its_webhooks_once_per_happening(nursery: trio.Nursery) -> None:
    receiver = Receiver()
    await nursery.start(receiver.serve)
    server: RunningServer = await nursery.start(serve_rmeeting, make_config(
        webhook_urls=(receiver.url,), webhook_secret=SECRET))
    async with Api(server.url) as api:
        made = (await api.request("POST", "/v1/meetings",
                                  json={"name": "hooks", "join_policy": "lobby"})).json()
        mid = made["id"]
        with trio.fail_after(30):
            async with open_v1(server.url, mid, name="Host", host_key=made["host_key"]) as host:
                async with open_v1(server.url, mid, name="Ann", expect_welcome=False) as ann, \
                        open_v1(server.url, mid, name="Bo", expect_welcome=False) as bo:
                    ann_id = (await ann.recv())["member_id"]
                    bo_id = (await bo.recv())["member_id"]
                    await host.call("admit", member_id=ann_id)
                    await host.call("refuse", member_id=bo_id)
                    await host.call("admit", member_id=ann_id)  # decided already: no event
                    joined = await ann.recv_type("welcome")
                    await bo.closed_code()
            expected = {("member.waiting", ann_id), ("member.waiting", bo_id),
                        ("member.admitted", ann_id), ("member.refused", bo_id)}

            def lobby(got: list[Got]) -> list[tuple[str, str]]:
                return [(g.type, g.data["member_id"]) for g in got
                        if g.type.startswith("member.") and g.type not in (
                            "member.joined", "member.left")]

            got = await receiver.wait_for(lambda got: set(lobby(got)) == expected)
            await trio.sleep(0.3)  # nothing more comes
    assert sorted(lobby(receiver.delivered)) == sorted(expected)
    assert {g.data["name"] for g in got if g.type == "member.waiting"} == {"Ann", "Bo"}
    # the admitted knocker joins under the member id it waited with (member.joined says so)
    assert joined["you"]["id"] == ann_id


async def test_a_join_tokens_user_rides_in_the_member_webhooks(nursery: trio.Nursery) -> None:
    from rmeeting.join_tokens import mint_join_token

    key = "lobby-test-key-0123456789abcdef-01234"
    receiver = Receiver()
    await nursery.start(receiver.serve)
    server: RunningServer = await nursery.start(serve_rmeeting, make_config(
        webhook_urls=(receiver.url,), webhook_secret=SECRET, api_keys=(key,)))
    async with Api(server.url) as api:
        mid = (await api.request("POST", "/v1/meetings", json={"name": "subs"})).json()["id"]
        with trio.fail_after(30):
            async with open_v1(server.url, mid,
                               access_token=mint_join_token(key, mid, "Ann", sub="crm-42")):
                pass
            async with open_v1(server.url, mid, name="walk-in"):
                pass
            await receiver.wait_for(lambda got: len([g for g in got
                                                     if g.type == "member.left"]) == 2)
    for kind in ("member.joined", "member.left"):
        subs = {g.data["member"]["name"]: g.data["member"].get("sub")
                for g in receiver.of(kind)}
        assert subs == {"Ann": "crm-42", "walk-in": None}, kind
