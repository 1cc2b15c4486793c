"""A small webhook receiver: ``rmeeting webhooks listen`` and the tests' real endpoint.

HTTP/1.1 with h11 on a Trio socket, keep-alive, bodies up to :data:`MAX_BODY` bytes (413 past
it). Each request goes to a handler that returns the status to answer. :func:`verifying` makes
the handler of ``listen``: it checks the Standard Webhooks signature with the ``standardwebhooks``
library and answers 204, or 400 for anything it cannot verify (missing or malformed headers, a
wrong signature, a stale timestamp, a body that is not UTF-8 JSON).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio
from standardwebhooks import Webhook

__all__ = ["MAX_BODY", "Request", "Verified", "serve_receiver", "verifying"]

#: the largest request body read
MAX_BODY = 1 << 20
#: a client that sends nothing for this long is closed
IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


Handler = Callable[[Request], Awaitable[int]]


async def serve_receiver(
    host: str,
    port: int,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` with the bound port once listening."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, handler)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                h11.ProtocolError, OSError):
            pass  # the client went away or spoke no HTTP: nothing to answer
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(bound)


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    while True:
        head: h11.Request | None = None
        body = bytearray()
        too_big = False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(IDLE_TIMEOUT):
                    data = await stream.receive_some(65536)
                if not data and conn.their_state is not h11.DONE:
                    conn.receive_data(b"")
                    if head is None:
                        return
                    continue
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    too_big = True
                    break
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        assert head is not None
        if too_big:
            await _answer(stream, conn, 413)
            return
        request = Request(
            head.method.decode("ascii", "replace"),
            head.target.decode("ascii", "replace"),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers},
            bytes(body),
        )
        status = await handler(request) if request.method == "POST" else 405
        await _answer(stream, conn, status)
        if conn.our_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()


async def _answer(stream: trio.SocketStream, conn: h11.Connection, status: int) -> None:
    headers = [("content-length", "0")]
    if status >= 400:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


@dataclass(frozen=True)
class Verified:
    """One delivery whose signature checked out."""

    id: str
    type: str
    timestamp: str
    data: Any
    attempt_at: int  # the webhook-timestamp header

    def line(self) -> str:
        return json.dumps({"id": self.id, "type": self.type, "timestamp": self.timestamp,
                           "data": self.data}, ensure_ascii=False)


def verifying(
    secret: str,
    on_event: Callable[[Verified], None],
    on_rejected: Callable[[str], None],
) -> Handler:
    """A handler that verifies each request with ``standardwebhooks`` and hands it on."""
    webhook = Webhook(secret)

    async def handle(request: Request) -> int:
        try:
            text = request.body.decode("utf-8")
            payload = webhook.verify(text, request.headers)
            if not (isinstance(payload, dict) and isinstance(payload.get("type"), str)):
                raise ValueError("the body is not a {type, timestamp, data} object")
            verified = Verified(request.headers["webhook-id"], payload["type"],
                                str(payload.get("timestamp")), payload.get("data"),
                                int(request.headers["webhook-timestamp"]))
        except Exception as exc:  # noqa: BLE001 - hostile input: every failure is a 400
            on_rejected(f"{type(exc).__name__}: {exc}"[:300])
            return 400
        on_event(verified)
        return 204

    return handle
