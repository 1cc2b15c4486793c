"""Issue #12 on both deployments: API keys, create policy, join tokens, join policies, bans of an
application user, and the host key kept out of URLs.

Like tests/test_scenarios.py, every test speaks only to the public URL, once to an embedded
instance and once to three instances behind nginx (so a ticket issued by one instance is
redeemed by another, and a token-holder's kick is enforced on every instance).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio

from rmeeting.cluster.launcher import Instance, LocalCluster
from rmeeting.join_tokens import mint_join_token

from .clients import V1, Api, open_seed, open_v1, recv_json

KEY = "app-backend-key-0123456789abcdef-0123"
OTHER = "operator-key-0123456789abcdef-456789"
ENV = {"RMEETING_API_KEYS": f"{KEY},{OTHER}", "RMEETING_CREATE_POLICY": "api_key"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Target:
    kind: str
    url: str


@pytest.fixture(scope="module",
                params=["embedded", pytest.param("cluster", marks=pytest.mark.cluster)])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "cluster":
        with LocalCluster(3, env=ENV) as cluster:
            yield Target("cluster", cluster.url)
        return
    directory = Path(tempfile.mkdtemp(prefix="rmeeting-deploy-"))
    instance = Instance("embedded", "", "", directory / "embedded.log", env=ENV)
    instance.start()
    try:
        yield Target("embedded", instance.url)
    finally:
        instance.stop(timeout=10)


async def create(api: Api, key: str = KEY, **body: Any) -> dict[str, Any]:
    response = await api.request("POST", "/v1/meetings", headers=bearer(key),
                                 json={"name": "deploy", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def token(mid: str, name: str = "Ann", **kw: Any) -> str:
    return mint_join_token(KEY, mid, name, **kw)


async def test_creating_needs_an_api_key(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(20):
            for path, body in (("/v1/meetings", {"name": "x"}), ("/CreateMeeting", {})):
                none = await api.request("POST", path, json=body)
                assert none.status_code == 401 and none.json()["code"] == "unauthorized"
                assert none.headers["www-authenticate"] == "Bearer"
                wrong = await api.request("POST", path, json=body, headers=bearer("x" * 40))
                assert wrong.status_code == 403 and wrong.json()["code"] == "not_api_key"
                for key in (KEY, OTHER):
                    made = await api.request("POST", path, json=body, headers=bearer(key))
                    assert made.status_code in (200, 201), made.text


async def test_an_api_key_may_list_read_change_and_end_any_meeting(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(30):
            created, stranger = await create(api), await create(api)
            mid = created["id"]
            async with open_v1(target.url, mid, name="ann") as ann:
                listed = await api.request("GET", "/v1/meetings", headers=bearer(OTHER))
                assert mid in {m["id"] for m in listed.json()["meetings"]}
                changed = await api.request("PATCH", f"/v1/meetings/{mid}/controls",
                                            headers=bearer(OTHER),
                                            json={"controls": {"chat": False}})
                assert changed.status_code == 200
                assert (await ann.recv_type("controls"))["controls"]["chat"] is False
                # another meeting's host key is no key here
                other = await api.request("PATCH", f"/v1/meetings/{mid}/controls",
                                          headers=bearer(stranger["host_key"]),
                                          json={"controls": {"chat": True}})
                assert other.status_code == 403
                ended = await api.request("DELETE", f"/v1/meetings/{mid}", headers=bearer(KEY))
                assert ended.status_code == 200
                assert (await ann.recv_type("meeting_ended"))["reason"] == "ended by the host"
                assert await ann.closed_code() == 4000
            # the tombstone: readable with the host key or an API key, nobody may change it
            tomb = (await api.request("GET", f"/v1/meetings/{mid}")).json()
            assert tomb["ended"] is True and tomb["ended_reason"] == "ended by the host"
            assert tomb["ended_at"].endswith("Z") and "controls" not in tomb
            for key in (created["host_key"], OTHER):
                rows = await api.request("GET", f"/v1/meetings/{mid}/attendance",
                                         headers=bearer(key))
                assert [(s["name"], s["reason"]) for s in rows.json()["sessions"]] == [
                    ("ann", "meeting ended")], rows.text
                as_csv = await api.request("GET", f"/v1/meetings/{mid}/attendance.csv",
                                           headers=bearer(key))
                assert as_csv.status_code == 200 and "ann" in as_csv.text
                audit = await api.request("GET", f"/v1/meetings/{mid}/audit", headers=bearer(key))
                assert [(e["flag"], e["new"]) for e in audit.json()["entries"]] == [
                    ("chat", False)]
            refused = await api.request("GET", f"/v1/meetings/{mid}/attendance",
                                        headers=bearer(stranger["host_key"]))
            assert refused.status_code == 403
            for method, path, body in (
                ("PATCH", f"/v1/meetings/{mid}/controls", {"controls": {"chat": True}}),
                ("PATCH", f"/v1/meetings/{mid}", {"join_policy": "open"}),
                ("DELETE", f"/v1/meetings/{mid}", None),
            ):
                gone = await api.request(method, path, headers=bearer(KEY), json=body)
                assert gone.status_code == 410 and gone.json()["code"] == "meeting_ended"
            async with open_v1(target.url, mid, name="late", expect_welcome=False) as late:
                assert (await late.recv())["code"] == "meeting_ended"
                assert await late.closed_code() == 4410


async def test_join_tokens_give_name_role_and_user(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(30):
            mid = (await create(api))["id"]
            async with open_v1(target.url, mid, access_token=token(mid, "Host", role="host")) \
                    as host, \
                    open_v1(target.url, mid, access_token=token(mid, "Ann", sub="user-1"),
                            name="ignored") as ann, \
                    open_v1(target.url, mid, access_token=token(mid, "Co", role="cohost")) as co:
                assert (host.me["name"], host.me["role"]) == ("Host", "host")
                assert (ann.me["name"], ann.me["role"]) == ("Ann", "member")
                assert co.me["role"] == "cohost"
                ok = await host.call("set_controls", controls={"rename": False})
                assert ok["type"] == "ack"
                # a co-host (here from its join token) does what the host does but end (#14)
                allowed = await co.call("set_controls", controls={"rename": True})
                assert allowed["type"] == "ack", allowed
                assert (await co.call("end"))["code"] == "not_host"
                # a reconnect keeps the application's user id
                back_token = ann.welcome["token"]
            async with open_v1(target.url, mid, token=back_token) as back:
                assert back.welcome["resumed"] is True
            rows = (await api.request("GET", f"/v1/meetings/{mid}/attendance",
                                      headers=bearer(KEY))).json()["sessions"]
            assert {(s["name"], s["sub"]) for s in rows} == {
                ("Host", ""), ("Ann", "user-1"), ("Co", "")}
            assert sum(1 for s in rows if s["sub"] == "user-1") == 2


def _bad_tokens(mid: str) -> list[tuple[str, str, str]]:
    now = time.time()
    claims = {"meeting": mid, "name": "Eve", "role": "member", "exp": int(now + 600)}

    def signed(**changes: Any) -> str:
        body = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(body, KEY, algorithm="HS256")

    return [
        ("expired", signed(exp=int(now - 60)), "token_expired"),
        ("future nbf", signed(nbf=int(now + 600)), "token_not_yet_valid"),
        ("alg none", jwt.encode(claims, "", algorithm="none"), "token_algorithm"),
        ("another key", jwt.encode(claims, "z" * 40, algorithm="HS256"), "token_signature"),
        ("another meeting", signed(meeting="another-meeting"), "token_wrong_meeting"),
        ("no exp", signed(exp=None), "token_missing_claim"),
        ("no name", signed(name=None), "token_missing_claim"),
        ("no role", signed(role=None), "token_missing_claim"),
        ("no meeting", signed(meeting=None), "token_missing_claim"),
        ("lone surrogate name", signed(name="Eve \ud800"), "token_bad_claim"),
        ("unknown role", signed(role="admin"), "token_bad_claim"),
        ("not a JWT", "not-a-token", "token_malformed"),
        ("garbage JWT", "e30.e30.e30", "token_malformed"),
    ]


async def test_bad_tokens_are_refused_with_a_clear_code(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(60):
            mid = (await create(api))["id"]
            for kind, bad, code in _bad_tokens(mid):
                async with open_v1(target.url, mid, access_token=bad,
                                   expect_welcome=False) as eve:
                    refusal = await eve.recv()
                    assert (refusal["type"], refusal["code"]) == ("error", code), kind
                    assert await eve.closed_code() == 4401, kind
            # the meeting stays joinable, and nobody of those got in
            async with open_v1(target.url, mid, access_token=token(mid)) as ann:
                assert [m["name"] for m in ann.welcome["roster"]] == ["Ann"]


async def test_join_policy_token_and_its_changes(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(30):
            created = await create(api, join_policy="token")
            mid, host_key = created["id"], created["host_key"]
            assert created["join_policy"] == "token"
            async with open_v1(target.url, mid, name="anyone", expect_welcome=False) as anyone:
                assert (await anyone.recv())["code"] == "token_required"
                assert await anyone.closed_code() == 4401
            async with open_seed(target.url, mid, "seed") as seed_member:
                assert "error" in await recv_json(seed_member)
            async with open_v1(target.url, mid, name="host", host_key=host_key) as host, \
                    open_v1(target.url, mid, access_token=token(mid)) as ann:
                assert ann.me["name"] == "Ann"
                bad = await host.call("set_join_policy", join_policy="everyone")
                assert bad["code"] == "bad_request"
                refused = await ann.call("set_join_policy", join_policy="open")
                assert refused["code"] == "not_host"
                ok = await host.call("set_join_policy", join_policy="open")
                assert ok["join_policy"] == "open"
                async with open_v1(target.url, mid, name="walk-in") as walk_in:
                    assert walk_in.me["name"] == "walk-in"
            back = await api.request("PATCH", f"/v1/meetings/{mid}", headers=bearer(OTHER),
                                     json={"join_policy": "token"})
            assert back.status_code == 200 and back.json()["join_policy"] == "token"
            got = (await api.request("GET", f"/v1/meetings/{mid}")).json()
            assert got["join_policy"] == "token" and got["ended"] is False
            wrong = await api.request("PATCH", f"/v1/meetings/{mid}", headers=bearer(OTHER),
                                      json={"join_policy": 3})
            assert wrong.status_code == 400
            bad_create = await api.request("POST", "/v1/meetings", headers=bearer(KEY),
                                           json={"name": "x", "join_policy": "closed"})
            assert bad_create.status_code == 400


async def test_a_kick_bans_the_application_user(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(30):
            mid = (await create(api, join_policy="token"))["id"]
            async with open_v1(target.url, mid, access_token=token(mid, sub="u-9")) as ann:
                kick = await api.request("DELETE", f"/v1/meetings/{mid}/members/{ann.me['id']}",
                                         headers=bearer(KEY))
                assert kick.status_code == 200
                assert await ann.closed_code() == 4003
            # a fresh token for the same user: still out (today a kick bans only the connection)
            async with open_v1(target.url, mid, access_token=token(mid, "Ann 2", sub="u-9"),
                               expect_welcome=False) as again:
                assert (await again.recv())["code"] == "kicked"
                assert await again.closed_code() == 4003
            async with open_v1(target.url, mid, access_token=token(mid, "Bob", sub="u-10")) as b:
                assert b.me["name"] == "Bob"


async def test_the_host_key_stays_out_of_urls(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(30):
            created = await create(api)
            mid, host_key = created["id"], created["host_key"]
            # 1. the first frame carries it
            async with open_v1(target.url, mid, auth="frame", expect_welcome=False) as host:
                await host.send(type="auth", host_key=host_key, name="Host")
                host.welcome = await host.recv()
                assert host.welcome["type"] == "welcome" and host.me["role"] == "host"
                host_token = host.welcome["token"]
            async with open_v1(target.url, mid, auth="frame", expect_welcome=False) as wrong:
                await wrong.send(type="chat", text="hi")
                assert (await wrong.recv())["code"] == "bad_request"
                assert await wrong.closed_code() == 4400
            # 2. a single-use ticket from an HTTP request with an Authorization header
            issued = await api.request("POST", f"/v1/meetings/{mid}/tickets",
                                       headers=bearer(host_key), json={"token": host_token})
            assert issued.status_code == 201, issued.text
            ticket = issued.json()["ticket"]
            async with open_v1(target.url, mid, ticket=ticket) as again:
                assert again.me["role"] == "host" and again.welcome["resumed"] is True
                assert again.me["id"] == host_token.split(".")[0]
                async with open_v1(target.url, mid, name="ann") as ann:
                    member_ticket = (await api.request(
                        "POST", f"/v1/meetings/{mid}/tickets",
                        headers=bearer(ann.welcome["token"]))).json()["ticket"]
                async with open_v1(target.url, mid, ticket=member_ticket) as ann_back:
                    assert ann_back.me["id"] == ann.me["id"]
                    assert ann_back.me["role"] == "member"
            async with open_v1(target.url, mid, ticket=ticket, expect_welcome=False) as reused:
                assert (await reused.recv())["code"] == "bad_ticket"
                assert await reused.closed_code() == 4401
            bad = await api.request("POST", f"/v1/meetings/{mid}/tickets",
                                    headers=bearer("guess"))
            assert bad.status_code == 403


def test_the_integration_guide_mints_tokens_that_join() -> None:
    """docs/integration.md's join_token snippet, run as written, makes a token this server
    accepts (so the guide cannot drift from the code)."""
    import re

    from rmeeting.join_tokens import verify_join_token

    guide = (Path(__file__).parents[1] / "docs" / "integration.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", guide, re.S)
                   if "def join_token" in block)
    scope: dict[str, Any] = {"KEY": KEY}
    exec(snippet, scope)  # noqa: S102 - the project's own documentation
    grant = verify_join_token(scope["join_token"]("m-1", "user-7", "Ann", "cohost"), "m-1", [KEY])
    assert (grant.name, grant.role, grant.sub) == ("Ann", "cohost", "user-7")


async def _no_lobby_frames(member: V1) -> None:
    """A plain member never sees the lobby: up to its next chat, no lobby frame came."""
    await member.send(type="chat", text="marker")
    while True:
        frame = await member.recv()
        assert frame["type"] != "lobby", frame
        if frame["type"] == "chat" and frame["text"] == "marker":
            return


async def test_the_lobby(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(60):
            created = await create(api, join_policy="lobby")
            mid, host_key = created["id"], created["host_key"]
            async with open_v1(target.url, mid, name="Host", host_key=host_key) as host, \
                    open_v1(target.url, mid, access_token=token(mid, "Mo")) as member, \
                    open_v1(target.url, mid, access_token=token(mid, "Co", role="cohost")) \
                    as cohost:
                assert host.welcome["lobby"] == [] and "lobby" not in member.welcome
                assert host.welcome["meeting"]["join_policy"] == "lobby"
                # Ann knocks: she is told she waits, the host and the co-host see her
                async with open_v1(target.url, mid, name="Ann", expect_welcome=False) as ann:
                    waiting = await ann.recv()
                    assert waiting["type"] == "waiting" and waiting["name"] == "Ann"
                    for moderator in (host, cohost):
                        seen = await moderator.recv_type("lobby")
                        assert (seen["state"], seen["member"]) == (
                            "waiting", {"id": waiting["member_id"], "name": "Ann"})
                    await _no_lobby_frames(member)
                    assert (await ann.call("ping"))["type"] == "pong"
                    assert (await ann.call("chat", text="let me in"))["code"] == "in_lobby"
                    assert (await member.call("admit", all=True))["code"] == "not_host"
                    assert (await host.call("admit"))["code"] == "bad_request"
                    ok = await host.call("admit", member_id=waiting["member_id"])
                    assert ok["member_ids"] == [waiting["member_id"]]
                    ann.welcome = await ann.recv_type("welcome")
                    assert ann.me["id"] == waiting["member_id"] and ann.me["name"] == "Ann"
                    assert (await host.recv_type("lobby"))["state"] == "admitted"
                # two more knock; the host refuses Bo, the co-host admits everyone left
                async with open_v1(target.url, mid, name="Bo", expect_welcome=False) as bo, \
                        open_v1(target.url, mid, name="Cy", expect_welcome=False) as cy:
                    bo_id = (await bo.recv())["member_id"]
                    await cy.recv_type("waiting")
                    lobby_now = {(await host.recv_type("lobby"))["member"]["name"]
                                 for _ in range(2)}
                    assert lobby_now == {"Bo", "Cy"}
                    assert (await host.call("refuse", member_id=bo_id))["member_ids"] == [bo_id]
                    assert (await bo.recv())["code"] == "refused"
                    assert await bo.closed_code() == 4430
                    assert len((await cohost.call("admit", all=True))["member_ids"]) == 1
                    assert (await cy.recv_type("welcome"))["you"]["name"] == "Cy"
                # a knocker who goes away leaves the lobby; a host joining later sees who waits
                async with open_v1(target.url, mid, name="Di", expect_welcome=False) as di:
                    await di.recv_type("waiting")
                    async with open_v1(target.url, mid, host_key=host_key, name="Host 2") as h2:
                        assert [k["name"] for k in h2.welcome["lobby"]] == ["Di"]
                left = await host.recv_match(lambda m: m.get("type") == "lobby"
                                             and m["state"] == "left", timeout=10)
                assert left["member"]["name"] == "Di"
                # a seed client cannot wait: refused with a clear close
                async with open_seed(target.url, mid, "seedling") as seedling:
                    assert "error" in await recv_json(seedling)
                # the lobby goes away with the policy: whoever waits is let in
                async with open_v1(target.url, mid, name="Ed", expect_welcome=False) as ed:
                    await ed.recv_type("waiting")
                    changed = await host.call("set_join_policy", join_policy="open")
                    assert changed["join_policy"] == "open"
                    assert (await ed.recv_type("welcome"))["you"]["name"] == "Ed"
                # a knocker of a meeting that ends is told so
                await host.call("set_join_policy", join_policy="lobby")
                async with open_v1(target.url, mid, name="Fay", expect_welcome=False) as fay:
                    await fay.recv_type("waiting")
                    await api.request("DELETE", f"/v1/meetings/{mid}", headers=bearer(KEY))
                    assert (await fay.recv_type("error"))["code"] == "meeting_ended"
                    assert await fay.closed_code() == 4410


async def test_the_backend_decides_the_lobby_over_http(target: Target) -> None:
    async with Api(target.url) as api:
        with trio.fail_after(30):
            mid = (await create(api, join_policy="lobby"))["id"]
            path = f"/v1/meetings/{mid}/lobby"
            async with open_v1(target.url, mid, name="Ann", expect_welcome=False) as ann:
                knock = await ann.recv_type("waiting")

                async def listed() -> list[dict[str, Any]]:
                    got = await api.request("GET", path, headers=bearer(KEY))
                    waiting: list[dict[str, Any]] = got.json()["waiting"]
                    return waiting

                while not await listed():  # the knock is stored before it is announced
                    await trio.sleep(0.02)
                assert [(k["id"], k["name"]) for k in await listed()] == [
                    (knock["member_id"], "Ann")]
                assert (await api.request("GET", path)).status_code == 401
                for bad in ({"decision": "maybe", "all": True}, {"decision": "admit"},
                            {"decision": "admit", "all": True, "member_ids": []},
                            {"decision": "admit", "member_ids": [3]}):
                    refused = await api.request("POST", path, headers=bearer(KEY), json=bad)
                    assert refused.status_code == 400, bad
                ok = await api.request("POST", path, headers=bearer(OTHER), json={
                    "decision": "admit", "member_ids": [knock["member_id"], "gone"]})
                assert ok.json() == {"decision": "admit", "member_ids": [knock["member_id"]]}
                assert (await ann.recv_type("welcome"))["you"]["id"] == knock["member_id"]
            assert await listed() == []
