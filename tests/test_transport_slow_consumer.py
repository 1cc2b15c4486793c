"""The slow-consumer close never corrupts the stream (issue #10, item 6).

A member that does not read is closed with 4008. Its outbox may start with the rest of a frame
whose first bytes are already on the wire: that rest must go out before the close frame, or the
close frame's bytes land inside the frame's payload and the client sees garbage (1007).
"""

from __future__ import annotations

import gc
import socket
import struct
from urllib.parse import urlencode

import pytest
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, Event, TextMessage
from wsproto.utilities import RemoteProtocolError

from rmeeting.closes import Close
from rmeeting.config import Config
from rmeeting.server import RunningServer
from rmeeting.transport.websocket import WebSocket, text_frame

from .clients import Api, open_raw_ws, open_seed, recv_until
from .conftest import make_config

FRAME_PAYLOAD = 10_007


@pytest.fixture
def server_config() -> Config:
    return make_config(chat_rate=100000.0, chat_burst=100000, max_chat_chars=20000,
                       outbox_bytes=64 * 1024)  # not a divisor of any socket buffer size


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair with small buffers: (server side, client side)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.setblocking(False)
    client.setblocking(False)
    return server, client


async def _read_all_events(sock: socket.socket) -> list[Event]:
    """Everything the server sent, as a WebSocket client parses it, up to its close."""
    ws = Connection(ConnectionType.CLIENT)
    events: list[Event] = []
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        ws.receive_data(data or None)
        for event in ws.events():
            events.append(event)
            if isinstance(event, CloseConnection):
                sock.send(ws.send(event.response()))
                return events
        if not data:
            return events


async def test_a_half_sent_frame_is_finished_before_the_close_frame() -> None:
    server_sock, client_sock = _tcp_pair()
    ws = WebSocket(server_sock, Connection(ConnectionType.SERVER), max_message=65536,
                   max_buffer=60_000, ping_interval=60, ping_timeout=60)
    frame = text_frame(b"a" * FRAME_PAYLOAD)
    try:
        with trio.fail_after(10):
            async with ws.connected():
                await trio.lowlevel.checkpoint()
                queued_partial = False
                while ws.send_frame_nowait(frame):
                    queued = ws.statistics()["queued_bytes"]
                    queued_partial = queued_partial or queued % len(frame) != 0
                # the case under test: the outbox began with the rest of a half-sent frame
                assert queued_partial
                assert ws.close_code == Close.SLOW_CONSUMER
                try:
                    events = await _read_all_events(client_sock)
                except RemoteProtocolError as exc:  # the close frame inside a payload
                    raise AssertionError(f"the stream was corrupted: {exc}") from exc
    finally:
        client_sock.close()
    messages: list[str] = []
    part = ""
    for event in events:
        if isinstance(event, TextMessage):
            part += event.data
            if event.message_finished:
                messages.append(part)
                part = ""
    assert part == "", "a message was cut off"
    assert messages and all(m == "a" * FRAME_PAYLOAD for m in messages)
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == Close.SLOW_CONSUMER


async def test_a_slow_member_reads_whole_frames_then_4008(server: RunningServer, api: Api) -> None:
    mid = str((await api.create_seed_meeting(meeting_name="m"))["meetingUid"])
    path = "/AddMeeting?" + urlencode({"username": "sloth", "meetingUid": mid})
    stream = await open_raw_ws(server.url, path, rcvbuf=4096)
    try:
        with trio.fail_after(30):
            async with open_seed(server.url, mid, "talker") as talker:
                await recv_until(talker, lambda m: "user_uid" in m)
                big = "x" * 16000
                earlier = _slow_consumers_closing()  # other tests' leftovers, if any
                # up to far more than the kernel's buffers and the 64 KiB outbox hold; once the
                # sloth overflowed, its close frame waits (2 s at most) for it to read: read now
                for i in range(600):
                    await talker.send_message(f"{i}:{big}")
                    echo = await recv_until(talker, lambda m: m.get("name") == "talker")
                    assert str(echo.get("notice", "")).startswith(f"{i}:"), echo
                    if i % 5 == 4 and _slow_consumers_closing() - earlier:
                        break
                else:
                    raise AssertionError("the sloth never overflowed")
            with _raw_socket(stream) as sock:
                events = await _read_all_events(sock)
    finally:
        await stream.aclose()
    assert isinstance(events[-1], CloseConnection), events[-3:]
    assert events[-1].code == Close.SLOW_CONSUMER


def _slow_consumers_closing() -> set[int]:
    """The server's (in this process) WebSockets closing with 4008, by id."""
    return {id(o) for o in gc.get_objects()
            if isinstance(o, WebSocket) and o.close_code == Close.SLOW_CONSUMER}


def _raw_socket(stream: trio.SocketStream) -> socket.socket:
    """A stdlib socket on a duplicate of the stream's descriptor (the stream keeps its own)."""
    sock = socket.socket(fileno=socket.dup(stream.socket.fileno()))
    sock.setblocking(False)
    return sock


async def test_what_a_client_sent_before_it_vanished_still_reaches_the_session() -> None:
    """A send that finds the socket dead (the client reset it) must not throw away the messages
    already read from it: the session gets every one, and nothing raises."""
    server_sock, client_sock = _tcp_pair()
    ws = WebSocket(server_sock, Connection(ConnectionType.SERVER), max_message=65536,
                   max_buffer=60_000, ping_interval=60, ping_timeout=60)
    client = Connection(ConnectionType.CLIENT)
    count = 24
    client_sock.send(b"".join(client.send(TextMessage(data=f"m{i}")) for i in range(count)))
    got: list[str] = []
    with trio.fail_after(10):
        async with ws.connected():
            got.append(str(await ws.receive()))  # one read: every message is in hand now
            client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
            client_sock.close()  # a reset
            while ws.send_frame_nowait(text_frame(b"x")):  # until a send sees the reset
                await trio.sleep(0.01)
            async for message in ws.messages():
                assert isinstance(message, str)
                got.append(message)
    assert got == [f"m{i}" for i in range(count)]
