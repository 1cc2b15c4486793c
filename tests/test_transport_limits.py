"""Transport limits that hold however the bytes arrive (issue #10, items 4, 5 and 11).

Every test talks to a real server over real loopback sockets, as a hostile client would: raw
bytes, no HTTP library smoothing anything over.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
import trio

from rmeeting.api.openapi import openapi_document
from rmeeting.config import Config
from rmeeting.server import RunningServer, serve_rmeeting

from .clients import Api, masked_frame, open_raw_ws, raw_close_code
from .conftest import make_config


@pytest.fixture
def server_config() -> Config:
    return make_config(keep_alive_timeout=0.5, read_timeout=0.5, head_timeout=0.5,
                       max_connections=40, max_connections_per_ip=30)


async def _connect(server: RunningServer, source: str = "127.0.0.1") -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((server.host, server.port))
    return trio.SocketStream(sock)


async def _read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes]:
    """One response (status, body) off ``stream``; ``buf`` keeps bytes read past it."""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before a response: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).decode("latin-1")
    del buf[:end]
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(buf) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed inside a body"
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return int(head.split(" ")[1]), body


async def _eof(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (the test's fail_after bounds the wait)."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def _create(api: Api) -> str:
    return str((await api.create_seed_meeting(meeting_name="m"))["meetingUid"])


# --- item 4: sizes count bytes, every frame type, the head after every read -------------------

async def test_text_frame_limit_counts_bytes_not_characters(
    server: RunningServer, api: Api
) -> None:
    mid = await _create(api)
    text = "会" * 30000  # 30,000 characters, 90,000 bytes: over the 64 KiB limit
    assert len(text) < 65536 < len(text.encode())
    path = "/AddMeeting?" + urlencode({"username": "cjk", "meetingUid": mid})
    with trio.fail_after(10):
        stream = await open_raw_ws(server.url, path)
        try:
            await stream.send_all(masked_frame(1, text.encode()))
            assert await raw_close_code(stream) == 1009
        finally:
            await stream.aclose()


async def test_binary_frames_have_the_same_limit(server: RunningServer, api: Api) -> None:
    mid = await _create(api)
    path = "/AddMeeting?" + urlencode({"username": "bin", "meetingUid": mid})
    with trio.fail_after(10):
        stream = await open_raw_ws(server.url, path)
        try:
            await stream.send_all(masked_frame(2, b"\x00" * (200 * 1024)))
            assert await raw_close_code(stream) == 1009  # not read to its end, not an error
        finally:
            await stream.aclose()


@pytest.mark.parametrize("pieces", [1, 40])
@pytest.mark.parametrize(("header_bytes", "status"), [(12_000, 200), (20_000, 431)])
async def test_head_limit_holds_however_the_bytes_arrive(
    server: RunningServer, pieces: int, header_bytes: int, status: int
) -> None:
    request = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * header_bytes
               + b"\r\nConnection: close\r\n\r\n")
    step = -(-len(request) // pieces)
    with trio.fail_after(10):
        stream = await _connect(server)
        async with stream:
            for i in range(0, len(request), step):
                try:
                    await stream.send_all(request[i:i + step])
                except trio.BrokenResourceError:
                    break  # answered before the whole head was sent: what it said counts
                await trio.sleep(0.005)
            got, _ = await _read_response(stream, bytearray())
    assert got == status


async def test_head_limit_holds_on_the_next_request_of_a_connection(server: RunningServer) -> None:
    with trio.fail_after(10):
        stream = await _connect(server)
        async with stream:
            buf = bytearray()
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await _read_response(stream, buf))[0] == 200
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
                                  + b"a" * 60_000 + b"\r\n\r\n")  # in one write
            assert (await _read_response(stream, buf))[0] == 431
            await _eof(stream)


# --- item 5: Connection: close, keep-alive and read timeouts, connection caps ----------------

async def test_connection_close_is_honoured(nursery: trio.Nursery) -> None:
    # keep-alive long enough that only honouring Connection: close can end the connection
    server: RunningServer = await nursery.start(
        serve_rmeeting, make_config(keep_alive_timeout=60.0, read_timeout=60.0))
    with trio.fail_after(10):
        stream = await _connect(server)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            buf = bytearray()
            assert (await _read_response(stream, buf))[0] == 200
            assert await _eof(stream) == b""
    server.shutdown.set()


async def test_idle_keep_alive_connection_is_closed_as_configured(server: RunningServer) -> None:
    with trio.fail_after(3):
        stream = await _connect(server)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            buf = bytearray()
            assert (await _read_response(stream, buf))[0] == 200
            start = trio.current_time()
            assert await _eof(stream) == b""
            assert 0.3 < trio.current_time() - start < 2.0  # keep_alive_timeout is 0.5 s


async def test_a_head_that_never_ends_is_answered_408_and_freed(server: RunningServer) -> None:
    with trio.fail_after(3):
        stream = await _connect(server)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            got, _ = await _read_response(stream, bytearray())
            assert got == 408
            assert await _eof(stream) == b""


async def test_a_body_that_stalls_is_closed_by_the_read_timeout(server: RunningServer) -> None:
    with trio.fail_after(3):
        stream = await _connect(server)
        async with stream:
            await stream.send_all(b"POST /CreateMeeting HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                                  b"\r\n{\"meeting_")
            await _eof(stream)  # closed (answered or not): the socket is free


async def test_a_body_trickled_within_each_read_timeout_still_ends_in_408(
    server: RunningServer,
) -> None:
    # every read comes well within read_timeout (0.5 s); the whole body never does
    with trio.fail_after(5):
        stream = await _connect(server)
        async with stream:
            await stream.send_all(b"POST /CreateMeeting HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                                  b"\r\n{")
            buf = bytearray()

            async def trickle() -> None:
                try:
                    for _ in range(60):
                        await trio.sleep(0.1)
                        await stream.send_all(b" ")
                except trio.BrokenResourceError:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                got, body = await _read_response(stream, buf)
                assert (got, json.loads(body)["error"]) == (
                    408, "request body not received in time")
                await _eof(stream)
                nursery.cancel_scope.cancel()


async def test_a_client_that_never_reads_its_responses_is_cut_off(
    server: RunningServer,
) -> None:
    # pipelined requests for a 28 KB asset: ~11 MB of responses, far more than the buffers on
    # the way hold, and the client reads none of it for several read_timeouts (0.5 s)
    count = 400
    request = b"GET /console/console.js HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(30):
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect((server.host, server.port))
        async with trio.SocketStream(sock) as stream:
            async def pipeline() -> None:
                try:
                    await stream.send_all(request * count)
                except trio.BrokenResourceError:
                    pass  # cut off while still sending: what this test wants

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline)
                await trio.sleep(3)
                received = 0
                try:
                    while chunk := await stream.receive_some(65536):
                        received += len(chunk)
                except trio.BrokenResourceError:
                    pass  # reset: the server closed with the client's requests unread
                nursery.cancel_scope.cancel()
    async with Api(server.url) as api:
        size = len((await api.request("GET", "/console/console.js")).content)
    assert received < count * size / 2, (received, count * size)


async def test_connection_caps_refuse_fast_and_clearly(server: RunningServer) -> None:
    idle: list[trio.SocketStream] = []
    try:
        with trio.fail_after(10):
            for _ in range(30):  # max_connections_per_ip
                idle.append(await _connect(server))
            refused = await _connect(server)
            async with refused:
                await refused.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                got, body = await _read_response(refused, bytearray())
                assert got == 503
                assert b"address" in body
                await _eof(refused)
            # another address is not held to this one's cap (both are loopback)
            other = await _connect(server, source="127.0.0.2")
            idle.append(other)
            await other.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await _read_response(other, bytearray()))[0] == 200
            for _ in range(9):  # up to max_connections in all
                idle.append(await _connect(server, source="127.0.0.3"))
            over = await _connect(server, source="127.0.0.4")
            async with over:
                got, body = await _read_response(over, bytearray())
                assert (got, json.loads(body)["error"]) == (503, "too many connections")
            # freed connections are counted out: the door opens again
            for stream in idle[:5]:
                await stream.aclose()
            with trio.fail_after(3):
                while True:
                    again = await _connect(server)
                    async with again:
                        await again.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        if (await _read_response(again, bytearray()))[0] == 200:
                            break
                    await trio.sleep(0.05)
    finally:
        for stream in idle:
            await stream.aclose()


# --- item 11: nothing left hanging after a 413; the WebSocket route without an upgrade -------

async def test_the_connection_does_not_hang_after_a_413(server: RunningServer) -> None:
    body = b"x" * (2 << 20)
    with trio.fail_after(5):
        stream = await _connect(server)
        async with stream:
            async def send_body() -> None:
                try:
                    await stream.send_all(
                        b"POST /CreateMeeting HTTP/1.1\r\nHost: x\r\nContent-Type: "
                        b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                    )
                except trio.BrokenResourceError:
                    pass  # the server may stop reading: what it answered is what counts

            buf = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_body)
                assert (await _read_response(stream, buf))[0] == 413
            try:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            except trio.BrokenResourceError:
                return  # closed: the client knows to open a new connection
            # an answer or a clean close, not silence
            rest = bytes(buf) + await _eof(stream)
            assert rest == b"" or rest.startswith(b"HTTP/1.1 200")


async def test_websocket_route_without_upgrade_is_426_and_documented(
    server: RunningServer, api: Api
) -> None:
    with trio.fail_after(5):
        response = await api.request("GET", "/v1/meetings/abc/ws")
    assert response.status_code == 426
    assert response.json()["code"] == "upgrade_required"
    assert response.headers["upgrade"] == "websocket"
    route = openapi_document()["paths"]["/v1/meetings/{meeting_id}/ws"]["get"]
    assert "426" in route["responses"]


async def test_an_old_websocket_version_is_426(server: RunningServer) -> None:
    with trio.fail_after(5):
        stream = await _connect(server)
        async with stream:
            await stream.send_all(
                b"GET /v1/meetings/abc/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 8\r\n\r\n")
            got, _ = await _read_response(stream, bytearray())
            assert got == 426
