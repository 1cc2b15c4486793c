"""The embedded server under pressure and bad input: order, slow consumers, keep-alive, limits.

Every test here is about the meeting going on for everyone else, and nothing stored going wrong.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any
from urllib.parse import urlencode

import pytest
import trio
from trio.testing import MockClock
from trio_websocket import ConnectionClosed

from rmeeting.config import Config
from rmeeting.server import RunningServer

from .clients import (
    Api,
    masked_frame,
    open_raw_ws,
    open_seed,
    raw_close_code,
    recv_json,
    recv_until,
)
from .conftest import make_config


async def _create(api: Api) -> str:
    return str((await api.create_seed_meeting(meeting_name="m"))["meetingUid"])


async def _joined(ws: Any) -> None:
    await recv_until(ws, lambda m: "user_uid" in m)


async def _closed_code(ws: Any, timeout: float = 5) -> int:
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            assert closed.reason is not None
            return int(closed.reason.code)


async def _attendance_reason(server: RunningServer, mid: str, name: str, timeout: float = 5) -> str:
    with trio.fail_after(timeout):
        while True:
            for entry in await server.service.members.attendance(mid):
                if entry.name == name and entry.reason:
                    return entry.reason
            await trio.sleep(0.02)


@pytest.fixture
def server_config() -> Config:
    return make_config(chat_rate=10000.0, chat_burst=10000, max_chat_chars=20000,
                       outbox_bytes=64 * 1024, max_frame_bytes=32 * 1024, max_members=4)


async def test_one_order_under_concurrent_senders(server: RunningServer, api: Api) -> None:
    mid = await _create(api)
    per_sender = 40
    names = ["a", "b", "c"]
    with trio.fail_after(20):
        async with open_seed(server.url, mid, "watcher") as watcher:
            await _joined(watcher)
            async with open_seed(server.url, mid, "a") as a, open_seed(server.url, mid, "b") as b, \
                    open_seed(server.url, mid, "c") as c:
                senders = dict(zip(names, (a, b, c), strict=True))
                for ws in senders.values():
                    await _joined(ws)

                async def send_all(name: str) -> None:
                    for i in range(per_sender):
                        await senders[name].send_message(f"{name}{i}")

                async with trio.open_nursery() as nursery:
                    for name in names:
                        nursery.start_soon(send_all, name)

                async def collect(ws: Any) -> list[str]:
                    got: list[str] = []
                    while len(got) < per_sender * len(names):
                        msg = await recv_json(ws)
                        if msg.get("name") in names and msg["notice"][0] in names:
                            got.append(msg["notice"])
                    return got

                seen = [await collect(ws) for ws in (watcher, a, b, c)]
    assert all(s == seen[0] for s in seen), "every member sees one order"
    for name in names:
        assert [t for t in seen[0] if t[0] == name] == [f"{name}{i}" for i in range(per_sender)]


async def test_slow_consumer_is_dropped_and_the_meeting_goes_on(
    server: RunningServer, api: Api
) -> None:
    mid = await _create(api)
    path = "/AddMeeting?" + urlencode({"username": "sloth", "meetingUid": mid})
    stream = await open_raw_ws(server.url, path, rcvbuf=4096)
    try:
        with trio.fail_after(30):
            async with open_seed(server.url, mid, "talker") as talker:
                await _joined(talker)
                big = "x" * 16000
                received = 0
                for i in range(300):
                    await talker.send_message(f"{i}:{big}")
                    # keep reading our own echo, so only the sloth falls behind
                    msg = await recv_until(talker, lambda m: m.get("name") == "talker")
                    assert msg["notice"].startswith(f"{i}:")
                    received += 1
                assert received == 300
                assert await _attendance_reason(server, mid, "sloth") == "slow consumer"
                roster = [m.name for m in await server.service.members.roster(mid)]
                assert roster == ["talker"]
    finally:
        await stream.aclose()


async def test_silent_client_is_dropped_by_keepalive(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """On virtual time (the server runs in this test's Trio run): the waits take no real time,
    and when the ghost goes is checked against ping_interval + ping_timeout exactly."""
    server: RunningServer = await nursery.start(
        _serve, make_config(ping_interval=0.3, ping_timeout=0.3)
    )
    async with Api(server.url) as api:
        mid = await _create(api)
    path = "/AddMeeting?" + urlencode({"username": "ghost", "meetingUid": mid})
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann:
            await _joined(ann)
            stream = await open_raw_ws(server.url, path)
            try:
                await recv_until(ann, lambda m: m.get("notice") == "有成员加入会议室"
                                 and m["name"] == "ghost")
                joined = trio.current_time()
                # it never answers a ping: silent for more than ping_interval + ping_timeout, it
                # is closed at the next check (one ping_interval at most), and gone once its
                # close frame went unanswered for the close timeout (2 s)
                assert await recv_until(ann, lambda m: m.get("notice") == "有成员离开会议室") == {
                    "notice": "有成员离开会议室", "name": "ghost"}
                assert 0.6 < trio.current_time() - joined <= 0.6 + 0.3 + 2.0 + 0.01
                assert await _attendance_reason(server, mid, "ghost") == "timeout"
            finally:
                await stream.aclose()
            # a client that answers pings (trio-websocket does) stays
            await trio.sleep(1.0)
            await ann.send_message("still here")
            assert await recv_json(ann) == {"notice": "still here", "name": "ann"}


async def test_binary_empty_and_oversize_frames(server: RunningServer, api: Api) -> None:
    mid = await _create(api)
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann:
            await _joined(ann)
            await ann.send_message(b"\x00\x01binary")
            assert "binary" in (await recv_json(ann))["error"]
            await ann.send_message("")
            assert "empty" in (await recv_json(ann))["error"]
            await ann.send_message("   ")
            assert "empty" in (await recv_json(ann))["error"]
            await ann.send_message("ok")
            assert await recv_json(ann) == {"notice": "ok", "name": "ann"}
            async with open_seed(server.url, mid, "big") as big:
                await _joined(big)
                await big.send_message("y" * (40 * 1024))  # over max_frame_bytes (32 KiB)
                assert await _closed_code(big) == 1009
            assert await recv_until(ann, lambda m: m.get("name") == "big"
                                    and m["notice"] == "有成员离开会议室")
            # nothing of the oversize message was broadcast
            await ann.send_message("after")
            assert await recv_json(ann) == {"notice": "after", "name": "ann"}


async def test_malformed_utf8_closes_with_1007_and_others_stay(
    server: RunningServer, api: Api
) -> None:
    mid = await _create(api)
    path = "/AddMeeting?" + urlencode({"username": "broken", "meetingUid": mid})
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann:
            await _joined(ann)
            stream = await open_raw_ws(server.url, path)
            try:
                await stream.send_all(masked_frame(1, b"\xff\xfe bad utf-8"))
                assert await raw_close_code(stream) == 1007
                await recv_until(ann, lambda m: m.get("name") == "broken"
                                 and m["notice"] == "有成员离开会议室")
            finally:
                await stream.aclose()
            await ann.send_message("fine")
            assert await recv_json(ann) == {"notice": "fine", "name": "ann"}


async def test_abrupt_disconnect_mid_broadcast_does_not_stop_others(
    server: RunningServer, api: Api
) -> None:
    mid = await _create(api)
    path = "/AddMeeting?" + urlencode({"username": "rst", "meetingUid": mid})
    with trio.fail_after(15):
        async with open_seed(server.url, mid, "ann") as ann, \
                open_seed(server.url, mid, "bob") as bob:
            await _joined(ann)
            await _joined(bob)
            stream = await open_raw_ws(server.url, path)
            # close with RST: the server's next write to it fails
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            for i in range(50):
                await ann.send_message(f"m{i}")
            got: list[str] = []
            while len(got) < 50:
                msg = await recv_json(bob)
                if msg.get("name") == "ann":
                    got.append(msg["notice"])
            assert got == [f"m{i}" for i in range(50)]
            assert await _attendance_reason(server, mid, "rst") == "closed"


async def test_meeting_member_limit(server: RunningServer, api: Api) -> None:
    mid = await _create(api)
    with trio.fail_after(10):
        async with open_seed(server.url, mid, "1") as one, open_seed(server.url, mid, "2") as two, \
                open_seed(server.url, mid, "3") as three, open_seed(server.url, mid, "4") as four:
            for ws in (one, two, three, four):
                await _joined(ws)
            async with open_seed(server.url, mid, "5") as five:
                assert "full" in (await recv_json(five))["error"]
                assert await _closed_code(five) == 4429
    names = [e.name for e in await server.service.members.attendance(mid)]
    assert "5" not in names


async def test_chat_flood_is_rate_limited(nursery: trio.Nursery) -> None:
    running: RunningServer = await nursery.start(
        _serve, make_config(chat_rate=5.0, chat_burst=5)
    )
    async with Api(running.url) as api:
        mid = await _create(api)
        with trio.fail_after(10):
            async with open_seed(running.url, mid, "spam") as spam:
                await _joined(spam)
                for i in range(30):
                    await spam.send_message(f"s{i}")
                replies = [await recv_json(spam) for _ in range(30)]
    delivered = [r for r in replies if "notice" in r]
    refused = [r for r in replies if "error" in r]
    assert 5 <= len(delivered) < 10 and len(delivered) + len(refused) == 30
    assert all("slow down" in r["error"] for r in refused)
    running.shutdown.set()


async def _serve(config: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from rmeeting.server import serve_rmeeting

    await serve_rmeeting(config, task_status=task_status)


async def test_meetings_per_instance_limit(nursery: trio.Nursery) -> None:
    running: RunningServer = await nursery.start(_serve, make_config(max_meetings=2))
    async with Api(running.url) as api:
        await _create(api)
        await _create(api)
        third = await api.request("POST", "/CreateMeeting", json={"meeting_name": "x"})
        assert third.status_code == 429 and "maximum" in third.json()["error"]
    running.shutdown.set()


async def test_shutdown_sends_going_away(nursery: trio.Nursery) -> None:
    running: RunningServer = await nursery.start(_serve, make_config())
    async with Api(running.url) as api:
        mid = await _create(api)
    with trio.fail_after(10):
        async with open_seed(running.url, mid, "ann") as ann:
            await _joined(ann)
            running.shutdown.set()
            assert await _closed_code(ann) == 1001
    entry = (await running.service.members.attendance(mid))[0]
    assert entry.reason == "server shutdown" and entry.left_at is not None


async def test_health_and_readiness(server: RunningServer, api: Api) -> None:
    assert (await api.request("GET", "/healthz")).json() == {"status": "ok"}
    assert (await api.request("GET", "/readyz")).status_code == 200
    server.service.accepting = False  # draining: not ready, joins refused
    assert (await api.request("GET", "/readyz")).status_code == 503
    server.service.accepting = True


async def test_unknown_routes_and_methods(server: RunningServer, api: Api) -> None:
    assert (await api.request("GET", "/nope")).status_code == 404
    assert (await api.request("GET", "/CreateMeeting")).status_code == 405
    # an oversize body is refused from its Content-Length, before it is read (a raw socket:
    # the server may answer and close before the client has sent it all)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(server.host, server.port)
        try:
            await stream.send_all(b"POST /CreateMeeting HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: application/json\r\n"
                                  b"Content-Length: 2097152\r\n\r\n{")
            head = b""
            while b"\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
        finally:
            await stream.aclose()
    assert head.startswith(b"HTTP/1.1 413"), head[:80]


async def test_garbage_instead_of_http(server: RunningServer, api: Api) -> None:
    host, port = server.host, server.port
    with trio.fail_after(10):
        for junk in (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", b"GET\r\n\r\n", b"x" * 20000):
            stream = await trio.open_tcp_stream(host, port)
            try:
                await stream.send_all(junk)
                with trio.move_on_after(3):
                    while await stream.receive_some(4096):
                        pass
            except trio.BrokenResourceError:
                pass
            finally:
                await stream.aclose()
    assert (await api.request("GET", "/healthz")).status_code == 200


def test_encoded_frames_are_standard() -> None:
    from rmeeting.transport.websocket import text_frame

    for n in (0, 125, 126, 65535, 65536):
        frame = text_frame(b"a" * n)
        assert frame[0] == 0x81 and len(frame) - n in (2, 4, 10)
    assert json.loads(text_frame(b'{"a":1}')[2:]) == {"a": 1}


async def test_a_failing_session_costs_only_its_connection(
    server: RunningServer, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid = await _create(api)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in chat handling")

    with trio.fail_after(10):
        async with open_seed(server.url, mid, "ann") as ann, \
                open_seed(server.url, mid, "bob") as bob:
            await _joined(ann)
            await _joined(bob)
            monkeypatch.setattr(server.service, "chat_message", broken)
            await ann.send_message("boom")
            assert await _closed_code(ann) == 1011
            assert await recv_until(bob, lambda m: m.get("notice") == "有成员离开会议室") == {
                "notice": "有成员离开会议室", "name": "ann"}
            monkeypatch.undo()
            await bob.send_message("still served")
            assert await recv_json(bob) == {"notice": "still served", "name": "bob"}
    assert (await api.request("GET", "/healthz")).status_code == 200
