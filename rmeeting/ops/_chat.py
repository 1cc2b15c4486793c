"""``rmeeting chat tail`` and ``rmeeting chat join``: a member on the v1 WebSocket, in a terminal.

Both survive a rolling restart: on close 1012 (the instance drains) or 1013 (a store is briefly
unavailable), and when a join is refused for those reasons, they reconnect with their token and
the last chat seq they printed, so the welcome carries exactly what was missed and nothing is
printed twice. Chat goes to stdout; notices (joins, leaves, controls, reconnects) to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ..closes import Close
from ._errors import OpsError

__all__ = ["chat_join", "chat_tail"]

#: close codes (and refusals) after which another try, maybe on another instance, will work
RETRY_CLOSE: dict[int, str] = {Close.RESTART: "the instance is restarting",
                               Close.TRY_AGAIN: "a store is unavailable"}
RETRY_REFUSED = {"draining", "unavailable"}
RETRIES = 20
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0


class _Retry(Exception):
    """This connection is over, for a reason that another attempt may get past."""


class _Member:
    """One member's view of the meeting: the token and last seq to come back with."""

    def __init__(self, args: argparse.Namespace, *, raw: bool = False) -> None:
        self.args = args
        self.raw = raw
        self.token: str | None = None
        self.last_seq: int | None = getattr(args, "since", None)
        self.me = ""
        self.names: dict[str, str] = {}  # member id -> name, to say who renamed
        self.quitting = False
        #: chat frames sent and not yet acked, by id: resent after a reconnect unless the
        #: welcome shows they arrived
        self.unacked: dict[str, str] = {}

    def url(self) -> str:
        base = self.args.url.rstrip("/")
        scheme, sep, rest = base.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise OpsError(f"--url must start with http:// or https://, not {base!r}", status=2)
        query: dict[str, str] = {"name": self.args.name}
        if self.token:
            query["token"] = self.token
        if self.last_seq is not None:
            query["last_seq"] = str(self.last_seq)
        ws_scheme = "wss" if scheme == "https" else "ws"
        meeting = quote(self.args.meeting, safe="")
        return f"{ws_scheme}://{rest}/v1/meetings/{meeting}/ws?{urlencode(query)}"

    # --- printing -----------------------------------------------------------------------------

    def show(self, frame: dict[str, Any]) -> None:
        if self.raw:
            print(json.dumps(frame, ensure_ascii=False), flush=True)
        kind = frame.get("type")
        if kind == "chat":
            seq = int(frame["seq"])
            if self.last_seq is not None and seq <= self.last_seq:
                return  # already printed (never expected: the server does not repeat chat)
            self.last_seq = seq
            if not self.raw:
                stamp = time.strftime("%H:%M:%S", time.localtime(frame["ts"]))
                print(f"[{seq}] {stamp} {frame['from']['name']}: {frame['text']}", flush=True)
        elif self.raw:
            return
        elif kind == "member_joined":
            self.names[frame["member"]["id"]] = frame["member"]["name"]
            _note(f"{frame['member']['name']} joined")
        elif kind == "member_left":
            self.names.pop(frame["member"]["id"], None)
            _note(f"{frame['member']['name']} left ({frame['reason']})")
        elif kind == "member_updated" and "name" in frame["changes"]:
            member = frame["member"]
            before = self.names.get(member["id"], member["id"])
            self.names[member["id"]] = member["name"]
            _note(f"{before} is now {member['name']}")
        elif kind == "controls":
            changed = ", ".join(f"{k}={str(v).lower()}" for k, v in frame["changed"].items())
            _note(f"controls: {changed} (by {frame['by']}, revision {frame['revision']})")
        elif kind == "meeting_ended":
            _note(f"meeting ended: {frame['reason']}")
        elif kind == "error":
            print(f"! {frame['code']}: {frame['message']}", file=sys.stderr, flush=True)

    def welcome(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "error":
            if frame.get("code") in RETRY_REFUSED:
                raise _Retry(frame["message"])
            raise OpsError(f"refused: {frame['message']} ({frame['code']})")
        if frame.get("type") != "welcome":
            raise OpsError(f"unexpected first frame: {frame}")
        back = self.token is not None
        self.token, self.me = frame["token"], frame["you"]["id"]
        self.names = {m["id"]: m["name"] for m in frame["roster"]}
        if self.raw:
            print(json.dumps(frame, ensure_ascii=False), flush=True)
        elif not back:
            names = ", ".join(m["name"] for m in frame["roster"])
            _note(f"joined {frame['meeting']['name']!r} as {frame['you']['name']}; "
                  f"present: {names}")
        else:
            _note("reconnected")
        if frame.get("gap"):
            _note("some chat was missed while away: it is no longer kept")
        for chat in frame.get("chat") or frame.get("missed") or []:
            self.show(chat)
            if chat["from"]["id"] == self.me:
                arrived = [i for i, text in self.unacked.items() if text == chat["text"]]
                if arrived:
                    del self.unacked[arrived[0]]
        if self.last_seq is None or frame["last_seq"] > self.last_seq:
            self.last_seq = frame["last_seq"]


def _note(text: str) -> None:
    print(f"* {text}", file=sys.stderr, flush=True)


@asynccontextmanager
async def _connect(member: _Member) -> AsyncIterator[WebSocketConnection]:
    args = member.args
    headers = [(b"authorization", f"Bearer {args.host_key}".encode())] if args.host_key else []
    async with open_websocket_url(member.url(), extra_headers=headers,
                                  connect_timeout=args.timeout, disconnect_timeout=2,
                                  max_message_size=1 << 22) as ws:
        try:
            yield ws
        finally:
            # trio-websocket 0.12 leaves the socket open when the server closed first
            with trio.CancelScope(shield=True):
                await ws._stream.aclose()


async def _run(member: _Member, lines: trio.MemoryReceiveChannel[str] | None) -> int:
    """Connect, print, (send,) and come back after a drain; the exit status."""
    failures, reached = 0, False
    while True:
        try:
            async with _connect(member) as ws:
                member.welcome(json.loads(await ws.get_message()))
                reached, failures = True, 0
                await _converse(member, ws, lines)
        except ConnectionClosed as closed:
            code = closed.reason.code if closed.reason else 1006
            reason = (closed.reason.reason if closed.reason else "") or ""
            if member.quitting or code == Close.MEETING_ENDED:
                return 0
            if code not in RETRY_CLOSE:
                raise OpsError(f"disconnected by the server: {code} {reason}".strip()) from None
            why = RETRY_CLOSE[code]
        except _Retry as retry:
            why = str(retry)
        except (OSError, HandshakeError) as exc:
            # trio-websocket's HandshakeError says nothing itself; its cause says why
            status = getattr(exc, "status_code", None)  # ConnectionRejected: not a WebSocket
            detail = (str(exc) or str(exc.__cause__ or "")
                      or (f"HTTP {status}" if status else type(exc).__name__))
            if not reached:
                raise OpsError(f"cannot join through {member.args.url}: {detail}") from exc
            why = f"cannot connect ({detail})"
        failures += 1
        if failures > RETRIES:
            raise OpsError(f"gave up reconnecting: {why}")
        _note(f"{why}: reconnecting")
        await trio.sleep(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1)))


async def _converse(member: _Member, ws: WebSocketConnection,
                    lines: trio.MemoryReceiveChannel[str] | None) -> None:
    """Print what arrives (and send ``lines``) until the connection closes; raises the
    ConnectionClosed, outside the nursery so that it is not wrapped in a group."""
    async with trio.open_nursery() as nursery:
        if lines is not None:
            nursery.start_soon(_send_lines, member, ws, lines)
        try:
            while True:
                frame = json.loads(await ws.get_message())
                if frame.get("type") == "ack" and frame.get("of") == "chat":
                    member.unacked.pop(str(frame.get("id")), None)
                member.show(frame)
        except ConnectionClosed as exc:
            closed = exc
        nursery.cancel_scope.cancel()
    raise closed


async def _send_lines(member: _Member, ws: WebSocketConnection,
                      lines: trio.MemoryReceiveChannel[str]) -> None:
    try:
        for chat_id, text in list(member.unacked.items()):  # sent, not seen to arrive: again
            await ws.send_message(json.dumps({"type": "chat", "text": text, "id": chat_id}))
        async for line in lines:
            if line == "/quit":
                break
            if line.startswith("/name "):
                await ws.send_message(json.dumps({"type": "rename", "name": line[6:].strip()}))
            elif line.strip():
                chat_id = f"c{time.monotonic_ns()}"
                member.unacked[chat_id] = line
                await ws.send_message(json.dumps({"type": "chat", "text": line, "id": chat_id}))
        member.quitting = True  # /quit or the end of stdin: leave
        await ws.aclose()
    except ConnectionClosed:
        pass  # the reader sees it too, and decides


async def _read_stdin(send: trio.MemorySendChannel[str]) -> None:
    async with send:
        while True:
            # a thread, not a non-blocking fd: O_NONBLOCK on a shared tty would leak to the shell
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            await send.send(line.rstrip("\r\n"))


def chat_tail(args: argparse.Namespace) -> int:
    return trio.run(_run, _Member(args, raw=args.json), None)


def chat_join(args: argparse.Namespace) -> int:
    async def main() -> int:
        send, receive = trio.open_memory_channel[str](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_stdin, send)
            status = await _run(_Member(args), receive)
            nursery.cancel_scope.cancel()
        return status

    return trio.run(main)
