"""The WebSocket's writer: frames already waiting in the outbox go out in one ``send``, whole
and in order; the writer task exists only while there is something to write."""

from __future__ import annotations

import socket

import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage

from rmeeting.transport.websocket import _NO_FRAMES, WebSocket, text_frame

from .test_transport_slow_consumer import _tcp_pair


class CountingSocket:
    """A socket whose ``send`` calls are counted (the rest is the real socket's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


async def test_waiting_frames_share_a_send_and_arrive_whole_in_order() -> None:
    server_sock, client_sock = _tcp_pair()
    counting = CountingSocket(server_sock)
    ws = WebSocket(counting, Connection(ConnectionType.SERVER),  # type: ignore[arg-type]
                   max_message=65536, max_buffer=1 << 22, ping_interval=60, ping_timeout=60)
    frames = [text_frame(f"{i}:".encode() + b"x" * 1000) for i in range(400)]
    received: list[str] = []
    part = ""
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery, ws.connected():
                await trio.testing.wait_all_tasks_blocked()
                assert not ws._writing  # nothing to write: no writer task
                for frame in frames:  # the client reads nothing yet: the outbox fills
                    assert ws.send_frame_nowait(frame)
                queued = ws.statistics()["queued_frames"]
                assert queued > 100 and ws._writing
                before = counting.sends
                peer = Connection(ConnectionType.CLIENT)
                client_sock.setblocking(False)
                while len(received) < len(frames):
                    await trio.lowlevel.wait_readable(client_sock)
                    try:
                        data = client_sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    peer.receive_data(data)
                    for event in peer.events():  # a frame may come in pieces
                        if isinstance(event, TextMessage):
                            part += event.data
                            if event.message_finished:
                                received.append(part)
                                part = ""
                await trio.testing.wait_all_tasks_blocked()
                # one send per frame would be at least `queued`; the small socket buffers of
                # the pair take only a few 1 KB frames per send, but several
                assert counting.sends - before < queued / 2
                assert ws.statistics()["queued_frames"] == 0, ws.statistics()
                assert not ws._writing
                assert ws._outbox is _NO_FRAMES  # a drained outbox's memory goes back
                nursery.cancel_scope.cancel()
    finally:
        client_sock.close()
    assert received == [f"{i}:" + "x" * 1000 for i in range(400)]
