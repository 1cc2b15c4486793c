"""The front door's reading of a request head, through the port (an embedded server, no other).

Small on purpose: what any implementation of the head parsing must do, seen from a client —
a head that arrives a byte at a time, header names in any case, a repeated query parameter, a
non-GET upgrade, an oversized head."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from rmeeting.server import RunningServer

from .clients import Api

UPGRADE = ("UPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n")


@asynccontextmanager
async def _exchange(server: RunningServer, head: bytes,
                    *, dribble: bool = False) -> AsyncIterator[bytes]:
    """Send ``head`` (one byte per write if ``dribble``); yields the server's answer up to the
    end of its response head, with the connection still open."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        try:
            for start in range(0, len(head), 1 if dribble else len(head)):
                await stream.send_all(head[start:start + (1 if dribble else len(head))])
        except trio.BrokenResourceError:
            pass  # refused before the end of the head: the answer says why
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            got += chunk
        yield got


async def test_an_upgrade_dribbled_byte_by_byte_in_any_case(server: RunningServer,
                                                           api: Api) -> None:
    with trio.fail_after(20):
        mid = (await api.request("POST", "/v1/meetings", json={"name": "m"})).json()["id"]
        head = (f"GET /v1/meetings/{mid}/ws?name=first&name=last%20one HTTP/1.1\r\n"
                f"Host: x\r\n{UPGRADE}\r\n").encode()
        async with _exchange(server, head, dribble=True) as answer:
            assert answer.startswith(b"HTTP/1.1 101"), answer[:80]
            # a repeated parameter: its last value counts
            while True:
                members = (await api.request("GET", f"/v1/meetings/{mid}/members")).json()
                if members["members"]:
                    break
                await trio.sleep(0.01)
            assert [m["name"] for m in members["members"]] == ["last one"]


async def test_plain_http_dribbled_reaches_the_app(server: RunningServer) -> None:
    with trio.fail_after(20):
        async with _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                             dribble=True) as answer:
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


async def test_an_upgrade_needs_get(server: RunningServer, api: Api) -> None:
    with trio.fail_after(20):
        mid = (await api.request("POST", "/v1/meetings", json={"name": "m"})).json()["id"]
        head = (f"POST /v1/meetings/{mid}/ws?name=a HTTP/1.1\r\nHost: x\r\n"
                f"content-length: 0\r\n{UPGRADE}\r\n").encode()
        async with _exchange(server, head) as answer:
            assert answer.startswith(b"HTTP/1.1 4"), answer[:80]  # the app's 4xx, never a 101


async def test_an_oversized_head_is_refused(server: RunningServer) -> None:
    with trio.fail_after(20):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: " + b"a" * 70000 + b"\r\n\r\n"
        async with _exchange(server, head) as answer:
            assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
