"""``rmeeting webhooks listen``: a real process on loopback that prints each verified delivery
as one JSON line, and answers anything it cannot verify with a 400 (413 for a huge body) while it
keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio
from standardwebhooks import Webhook

from rmeeting.webhooks.events import WebhookEvent, event_id
from rmeeting.webhooks.receiver import MAX_BODY
from rmeeting.webhooks.sender import sign

from .webhook_receiver import SECRET


class Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream, self._buffer = stream, b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(4096)
            assert chunk, "the listener's output ended"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


@asynccontextmanager
async def listener() -> AsyncIterator[tuple[str, Lines, Lines]]:
    command = [sys.executable, "-m", "rmeeting", "webhooks", "listen", "--secret", SECRET,
               "--port", "0"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        first = await err.next()
        assert first.startswith("listening on http://127.0.0.1:"), first
        yield first.split()[-1], out, err
    finally:
        process.kill()
        await process.wait()


def delivery(n: int) -> tuple[str, dict[str, str]]:
    event = WebhookEvent(event_id("member.joined", n), "member.joined", 1_700_000_000.5,
                         {"meeting_id": "m", "member": {"name": "\u00e9\u4f1a"}})
    body = event.body()
    return body, sign(Webhook(SECRET), event, body, time.time())


async def test_listen_prints_verified_events_and_refuses_the_rest() -> None:
    with trio.fail_after(20):
        async with listener() as (url, out, err), httpx.AsyncClient() as http:
            body, headers = delivery(1)
            response = await http.post(url + "any/path", content=body.encode(), headers=headers)
            assert response.status_code == 204
            printed = json.loads(await out.next())
            assert printed == {"id": headers["webhook-id"], "type": "member.joined",
                               "timestamp": "2023-11-14T22:13:20.500000Z",
                               "data": {"meeting_id": "m", "member": {"name": "\u00e9\u4f1a"}}}

            other = Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUE=")
            wrong_key = WebhookEvent(event_id("x", 2), "meeting.ended", 1.0, {})
            bad: list[tuple[bytes, dict[str, str]]] = [
                (body.encode(), {**headers, "webhook-signature": "v1,AAAA"}),
                (body.encode(), {**headers, "webhook-signature": "v1"}),  # malformed
                (body.encode(), {**headers, "webhook-signature": "v1,!!!"}),
                (body.encode(), {k: v for k, v in headers.items() if k != "webhook-id"}),
                (body.encode(), {**headers, "webhook-timestamp": "1"}),  # stale
                (body.encode(), {**headers, "webhook-timestamp": "9" * 5000}),
                (b"\xff\xfe" + body.encode(), headers),  # not UTF-8
                (wrong_key.body().encode(),
                 sign(other, wrong_key, wrong_key.body(), time.time())),
                (b"\xed\xa0\x80", headers),  # a lone surrogate, UTF-8 encoded
            ]
            for content, hdrs in bad:
                response = await http.post(url, content=content, headers=hdrs)
                assert response.status_code == 400, (content[:20], hdrs)
                assert (await err.next()).startswith("rejected: ")
            array = "[1]"
            response = await http.post(url, content=array.encode(), headers=sign(
                Webhook(SECRET), WebhookEvent("msg_a", "meeting.ended", 1.0, {}), array,
                time.time()))
            assert response.status_code == 400  # signed, but not an event
            assert (await err.next()).startswith("rejected: ")
            huge = await http.post(url, content=b"x" * (MAX_BODY + 1), headers=headers)
            assert huge.status_code == 413
            assert (await http.get(url)).status_code == 405
            with trio.socket.socket() as raw:  # not HTTP at all
                await raw.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))))
                await raw.send(b"\x00\x01garbage\r\n\r\n")
                await raw.recv(100)
            # still serving, and still printing
            body, headers = delivery(3)
            response = await http.post(url, content=body.encode(), headers=headers)
            assert response.status_code == 204
            assert json.loads(await out.next())["id"] == headers["webhook-id"]


async def test_secret_makes_a_secret_the_server_accepts() -> None:
    from rmeeting.config import load_config

    with trio.fail_after(20):
        done = await trio.run_process([sys.executable, "-m", "rmeeting", "webhooks", "secret"],
                                      capture_stdout=True)
    secret = done.stdout.decode().strip()
    config = load_config(env={"RMEETING_WEBHOOK_URLS": "http://127.0.0.1:1/",
                              "RMEETING_WEBHOOK_SECRET": secret})
    assert config.webhook_secret == secret and secret.startswith("whsec_")
