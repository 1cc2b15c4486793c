"""Test clients: HTTP through httpx, WebSockets through trio-websocket (real sockets)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

__all__ = ["V1", "Api", "open_seed", "open_v1", "recv_json", "recv_until"]


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        self._client = httpx.AsyncClient(base_url=base, timeout=10)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self._client.request(method, path, **kw)

    async def create_seed_meeting(self, **body: Any) -> dict[str, Any]:
        response = await self.request("POST", "/CreateMeeting", json=body)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


@asynccontextmanager
async def open_seed(
    server_url: str, meeting: str, username: str, user_uid: str | None = None
) -> AsyncIterator[WebSocketConnection]:
    query = {"username": username, "meetingUid": meeting}
    if user_uid:
        query["userUid"] = user_uid
    url = server_url.replace("http://", "ws://") + "/AddMeeting?" + urlencode(query)
    # a deep queue: a test that reads one member at a time must not block the others' close
    async with open_websocket_url(url, max_message_size=1 << 22, message_queue_size=4096) as ws:
        try:
            yield ws
        finally:
            # trio-websocket 0.12 leaves the client's socket open when the server closes first
            # (its reader stops at EOF without closing the stream): close it here.
            with trio.CancelScope(shield=True):
                await ws._stream.aclose()


async def recv_json(ws: WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        message = await ws.get_message()
    data: dict[str, Any] = json.loads(message)
    return data


async def recv_until(
    ws: WebSocketConnection, predicate: Any, timeout: float = 5
) -> dict[str, Any]:
    """Skip frames until one matches; fail after ``timeout`` seconds in all."""
    with trio.fail_after(timeout):
        while True:
            data = await recv_json(ws, timeout)
            if predicate(data):
                return data


async def open_raw_ws(
    server_url: str, path: str, *, rcvbuf: int | None = None
) -> trio.SocketStream:
    """A WebSocket handshake on a bare socket, then nothing: a client that never reads or
    answers pings unless the test makes it. The test owns (and closes) the stream."""
    host, port = server_url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    await stream.send_all(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)  # byte by byte: leave frames unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask); opcode 1 text, 2 binary."""
    import os
    import struct

    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + body


class V1:
    """A v1 WebSocket client: JSON frames in and out; ``welcome`` is its first frame.

    Frames that :meth:`call` reads past while waiting for its reply are kept, in order, for
    :meth:`recv` and :meth:`recv_type`: an event that overtakes an ack is not lost."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self._ids = 0
        self._backlog: deque[dict[str, Any]] = deque()

    @property
    def me(self) -> dict[str, Any]:
        you: dict[str, Any] = self.welcome["you"]
        return you

    async def send(self, **frame: Any) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        if self._backlog:
            return self._backlog.popleft()
        return await recv_json(self.ws, timeout)

    async def recv_type(self, *types: str, timeout: float = 5) -> dict[str, Any]:
        """The next frame of one of ``types``, skipping (dropping) others."""
        return await self.recv_match(lambda m: m.get("type") in types, timeout)

    async def recv_match(self, predicate: Any, timeout: float = 5) -> dict[str, Any]:
        """The next frame that matches, skipping (dropping) others."""
        with trio.fail_after(timeout):
            while True:
                message = await self.recv(timeout)
                if predicate(message):
                    return message

    async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a frame with a fresh id; the ack, pong or error that echoes it."""
        self._ids += 1
        rid = f"r{self._ids}"
        await self.send(type=type_, id=rid, **fields)
        with trio.fail_after(5):
            while True:
                message = await recv_json(self.ws)
                if message.get("id") == rid:
                    return message
                self._backlog.append(message)

    async def closed_code(self, timeout: float = 5) -> int:
        """Read until the server closes; its close code."""
        from trio_websocket import ConnectionClosed

        with trio.fail_after(timeout):
            try:
                while True:
                    await self.ws.get_message()
            except ConnectionClosed as closed:
                assert closed.reason is not None
                return int(closed.reason.code)


@asynccontextmanager
async def open_v1(
    server_url: str,
    meeting: str,
    *,
    expect_welcome: bool = True,
    headers: dict[str, str] | None = None,
    **query: Any,
) -> AsyncIterator[V1]:
    """Join ``/v1/meetings/{meeting}/ws``; unless told not to, read and check the welcome."""
    params = {k: str(v) for k, v in query.items() if v is not None}
    url = f"{server_url.replace('http://', 'ws://')}/v1/meetings/{meeting}/ws"
    if params:
        url += "?" + urlencode(params)
    async with open_websocket_url(
        url, extra_headers=[(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        max_message_size=1 << 22, message_queue_size=4096,
    ) as ws:
        client = V1(ws)
        try:
            if expect_welcome:
                client.welcome = await recv_json(ws)
                assert client.welcome["type"] == "welcome", client.welcome
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await ws._stream.aclose()


async def raw_close_code(stream: trio.SocketStream, timeout: float = 5) -> int:
    """Read server frames off a raw socket until the close frame; its status code."""
    data = b""
    with trio.fail_after(timeout):
        while True:
            while len(data) >= 2:
                n, start = data[1] & 0x7F, 2
                if n == 126:
                    if len(data) < 4:
                        break
                    n, start = int.from_bytes(data[2:4], "big"), 4
                if len(data) < start + n:
                    break
                if data[0] & 0x0F == 0x8:
                    return int.from_bytes(data[start:start + 2], "big")
                data = data[start + n:]
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed the socket without a close frame"
            data += chunk
