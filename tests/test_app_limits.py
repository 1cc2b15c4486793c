"""Application limits that hold (issue 10, items 7, 8, 9, 12 and the seed's userUid): control
changes are rate-limited per connection and per meeting, a non-host control frame costs no store
read, the host always has a seat, join_url never carries a forged Host, every CSV cell is quoted,
seed userUids cannot be guessed, and the cluster needs nothing the README does not install."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from rmeeting.config import Config
from rmeeting.server import RunningServer

from .clients import Api, open_seed, open_v1, recv_json, recv_until
from .conftest import make_config

ROOT = Path(__file__).resolve().parent.parent
BURST = 20
MEETING_BURST = 30
MAX_MEMBERS = 2
GUESSES = 5


@pytest.fixture
def server_config() -> Config:
    # refills so slow that a test sees the bursts alone
    return make_config(control_rate=0.001, control_burst=BURST, meeting_control_rate=0.001,
                       meeting_control_burst=MEETING_BURST, max_members=MAX_MEMBERS,
                       max_failed_guesses=GUESSES, max_meetings=3)


async def _create(api: Api, **body: Any) -> tuple[str, str]:
    response = await api.request("POST", "/v1/meetings", json={"name": "m", **body})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["host_key"]


# --- item 7: control changes ------------------------------------------------------------------


async def test_a_burst_of_set_controls_is_rate_limited_per_connection_and_meeting(
    server: RunningServer, api: Api
) -> None:
    mid, key = await _create(api)
    with trio.fail_after(30):
        async with open_v1(server.url, mid, name="host", host_key=key) as host:
            codes = []
            for i in range(300):
                reply = await host.call("set_controls", controls={"chat": i % 2 == 1})
                codes.append(reply["type"] if reply["type"] == "ack" else reply["code"])
            assert codes[:BURST] == ["ack"] * BURST
            assert set(codes[BURST:]) == {"rate_limited"}
            await host.call("ping")  # the connection stays
        # the meeting's own budget holds for every path: HTTP after the socket's burst
        auth = {"Authorization": f"Bearer {key}"}
        statuses = [(await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=auth,
                                       json={"controls": {"chat": i % 2 == 1}})).status_code
                    for i in range(MEETING_BURST)]
        assert statuses == [200] * (MEETING_BURST - BURST) + [429] * BURST
        limited = await api.request("PATCH", f"/v1/meetings/{mid}/controls", headers=auth,
                                    json={"controls": {"mic": False}})
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        trail = await api.request("GET", f"/v1/meetings/{mid}/audit", headers=auth)
        assert len(trail.json()["entries"]) == MEETING_BURST
        # another meeting has its own budget
        other, other_key = await _create(api)
        ok = await api.request("PATCH", f"/v1/meetings/{other}/controls", json={
            "controls": {"mic": False}}, headers={"Authorization": f"Bearer {other_key}"})
        assert ok.status_code == 200


async def test_non_host_seed_control_frames_cost_no_store_read(
    server: RunningServer, api: Api
) -> None:
    created = await api.create_seed_meeting(meeting_name="m")
    mid, key = created["meetingUid"], created["userUid"]
    reads = 0
    store = server.service.meetings
    get, controls = store.get, store.controls

    async def counting_get(meeting_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await get(meeting_id)

    async def counting_controls(meeting_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await controls(meeting_id)

    with trio.fail_after(20):
        async with open_seed(server.url, mid, "ann") as ann:
            await recv_until(ann, lambda m: "user_uid" in m)
            store.get = counting_get  # type: ignore[method-assign]
            store.controls = counting_controls  # type: ignore[method-assign]
            for uid in (key, "guess", key):  # even with the manager's userUid: not its socket
                await ann.send_message("特殊消息1" + json.dumps({"isMute": True, "userUid": uid}))
                assert "manager" in (await recv_json(ann))["error"]
            assert reads == 0
            # a flood of control frames is cut off at the connection's burst (3 spent above)
            for _ in range(BURST + 5):
                await ann.send_message('特殊消息1{"isMute": true, "userUid": "x"}')
            errors = [(await recv_json(ann))["error"] for _ in range(BURST + 5)]
            assert ["slow down" in e for e in errors] == [False] * (BURST - 3) + [True] * 8


# --- item 7: the meeting count ----------------------------------------------------------------


async def test_create_counts_meetings_without_listing_them(
    server: RunningServer, api: Api
) -> None:
    async def no_list() -> None:
        raise AssertionError("create must not read every meeting")

    server.service.meetings.list = no_list  # type: ignore[method-assign,assignment]
    with trio.fail_after(10):
        for _ in range(3):
            await _create(api)
        refused = await api.request("POST", "/v1/meetings", json={"name": "one too many"})
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_meetings"


# --- item 8: the host's seat ------------------------------------------------------------------


async def test_strangers_cannot_lock_the_host_out(server: RunningServer, api: Api) -> None:
    mid, key = await _create(api)
    with trio.fail_after(20):
        async with open_v1(server.url, mid, name="s1"), open_v1(server.url, mid, name="s2"):
            async with open_v1(server.url, mid, name="s3", expect_welcome=False) as s3:
                assert (await s3.recv())["code"] == "meeting_full"
                assert await s3.closed_code() == 4429
            async with open_v1(server.url, mid, name="host", host_key=key) as host:
                assert host.me["role"] == "host"
                assert len(host.welcome["roster"]) == MAX_MEMBERS + 1


# --- item 9: join_url and CSV -----------------------------------------------------------------


async def test_a_forged_host_never_ends_up_in_join_url(server: RunningServer, api: Api) -> None:
    with trio.fail_after(10):
        forged = await api.request("POST", "/v1/meetings", json={"name": "m"},
                                   headers={"Host": "evil.example:8080"})
        assert forged.status_code == 201
        url = forged.json()["join_url"]
        assert "evil" not in url
        assert url.startswith(f"ws://127.0.0.1:{server.port}/v1/meetings/")
        mid = forged.json()["id"]
        got = await api.request("GET", f"/v1/meetings/{mid}", headers={"Host": "evil.example"})
        assert "evil" not in got.json()["join_url"]
        own = await api.request("GET", f"/v1/meetings/{mid}",
                                headers={"Host": f"localhost:{server.port}"})
        assert own.json()["join_url"] == f"ws://localhost:{server.port}/v1/meetings/{mid}/ws"


async def test_join_url_comes_from_public_url(nursery: trio.Nursery) -> None:
    config = make_config(public_url="https://meet.example.com/")
    running: RunningServer = await nursery.start(_serve, config)
    try:
        async with Api(running.url) as api:
            with trio.fail_after(10):
                created = await api.request("POST", "/v1/meetings", json={"name": "m"},
                                            headers={"Host": "evil.example"})
        mid = created.json()["id"]
        assert created.json()["join_url"] == f"wss://meet.example.com/v1/meetings/{mid}/ws"
    finally:
        running.shutdown.set()


async def _serve(config: Config, task_status: trio.TaskStatus[RunningServer]) -> None:
    from rmeeting.server import serve_rmeeting

    await serve_rmeeting(config, task_status=task_status)


async def test_every_csv_cell_is_quoted(server: RunningServer, api: Api) -> None:
    mid, key = await _create(api)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="x;=2+5;"), open_v1(server.url, mid, name="=cmd"):
            response = await api.request("GET", f"/v1/meetings/{mid}/attendance.csv",
                                         headers={"Authorization": f"Bearer {key}"})
    lines = response.text.splitlines()
    # read with ";" as the separator, as many spreadsheets do: no cell starts a formula
    for row in csv.reader(io.StringIO(response.text), delimiter=";"):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), row
    assert any(line.startswith('"x;=2+5;",') for line in lines)
    assert any(line.startswith('"\'=cmd",') for line in lines)
    rows = list(csv.reader(io.StringIO(response.text)))
    assert {r[0] for r in rows[1:]} == {"x;=2+5;", "'=cmd"}


# --- the seed's userUid -----------------------------------------------------------------------


async def test_a_guessable_seed_user_uid_is_replaced(server: RunningServer, api: Api) -> None:
    created = await api.create_seed_meeting(meeting_name="m")
    mid = created["meetingUid"]
    strong = "bob-7f3a9c2e5b1d"
    with trio.fail_after(20):
        for weak in ("1", "bob", "aaaaaaaaaaaaaaaaaaaa", "12121212121212121212", "x" * 200,
                     "has space 0123456789abcdef"):
            async with open_seed(server.url, mid, "weak", weak) as ws:
                state = await recv_until(ws, lambda m: "user_uid" in m)
                assert state["user_uid"] != weak and len(state["user_uid"]) == 36
            # the weak one is no credential: LeaveMeeting with it finds nobody
        async with open_seed(server.url, mid, "bob", strong) as bob:
            assert (await recv_until(bob, lambda m: "user_uid" in m))["user_uid"] == strong
            left = await api.request("PUT", "/LeaveMeeting", json={
                "username": "bob", "meetingUid": mid, "userUid": strong})
            assert left.status_code == 200
            with pytest.raises(ConnectionClosed):
                while True:
                    await bob.get_message()


async def test_failed_guesses_are_bounded_per_client(server: RunningServer, api: Api) -> None:
    created = await api.create_seed_meeting(meeting_name="m")
    mid, key = created["meetingUid"], created["userUid"]
    with trio.fail_after(20):
        for i in range(GUESSES):
            if i % 2:
                wrong = await api.request("GET", "/Export", params={
                    "userUid": f"guess-{i}", "meetingUid": mid})
                assert wrong.status_code == 403
            else:
                wrong = await api.request("PUT", "/LeaveMeeting", json={
                    "username": "x", "meetingUid": mid, "userUid": f"guess-{i}"})
                assert wrong.status_code == 404
        # now even the right credential waits: the client is told so, in JSON
        for blocked in (
            await api.request("GET", "/Export", params={"userUid": key, "meetingUid": mid}),
            await api.request("PUT", "/LeaveMeeting", json={
                "username": "x", "meetingUid": mid, "userUid": "guess"}),
        ):
            assert blocked.status_code == 429
            assert blocked.json()["code"] == "rate_limited"
        # another client address (behind the loopback proxy) is not blocked
        other = await api.request("GET", "/Export", params={"userUid": key, "meetingUid": mid},
                                  headers={"X-Forwarded-For": "203.0.113.7"})
        assert other.status_code == 200


# --- item 12: cluster dependencies ------------------------------------------------------------


def test_the_cluster_packages_are_in_the_default_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split("=")[0].split(">")[0].strip() for dep in project["dependencies"]}
    assert {"etcd3", "protobuf", "redis"} <= names


def test_a_missing_cluster_package_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # an install without etcd3: a module that fails to import as a missing one does
    (tmp_path / "etcd3.py").write_text(
        'raise ModuleNotFoundError("No module named \'etcd3\'", name="etcd3")\n')
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "rmeeting", "serve", "--etcd", "http://127.0.0.1:1",
         "--bind", "127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "etcd3" in done.stderr and "pip install" in done.stderr
