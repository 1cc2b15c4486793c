"""Property-based: hostile frames on both WebSocket protocols never break a member or a meeting.

For every generated frame (JSON objects with hostile fields, lone surrogates, 40 KB of nesting,
5,000-digit numbers, wrong types, empty and binary frames, random text): one clear answer (a
documented error code, no traceback, never ``internal``), the connection stays up (a ping
right after it is answered), nothing is logged at ERROR, and afterwards the meeting is still
joinable by a fresh member of either protocol with its attendance and Export answering 200.
Frames over ``max_frame_bytes`` *bytes* (whatever their character count) close 1009, the one
close the protocol asks for; invalid UTF-8 in a text frame closes 1007.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from rmeeting.controls import FLAGS
from rmeeting.wire.seed import CONTROL_PREFIX, NOTICE_JOINED

from .clients import V1, masked_frame, open_raw_ws, open_seed, open_v1, raw_close_code, recv_json
from .conftest import make_config
from .fuzz_support import (
    FUZZ,
    ThreadedServer,
    assert_clear_error,
    assert_joinable,
    documented_v1_error_codes,
    encode,
    hostile_json,
    hostile_text,
    seed_meeting,
    unlock,
)

pytestmark = pytest.mark.timeout(900)  # the `long` profile; `ci` takes well under a minute

V1_CODES = documented_v1_error_codes()
V1_TYPES = ["chat", "rename", "media", "set_controls", "kick", "end", "ping"]
#: a placeholder for the host's userUid in generated seed control frames
HOST_UID = "<<host-uid>>"


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ThreadedServer]:
    # chat limits out of the way: the tests sync on a chat/ping after every frame
    with ThreadedServer(make_config(chat_rate=100000.0, chat_burst=100000)) as running:
        yield running


@pytest.fixture(scope="module")
def meeting(fuzz_server: ThreadedServer) -> tuple[str, str]:
    return seed_meeting(fuzz_server.url)


# --- v1 ----------------------------------------------------------------------------------------

_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "text": st.one_of(hostile_text, hostile_json),
    "name": st.one_of(hostile_text, hostile_json),
    "camera": st.one_of(st.booleans(), hostile_json),
    "mic": st.one_of(st.booleans(), hostile_json),
    "controls": st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(FLAGS), hostile_text),
                        st.one_of(st.booleans(), hostile_json), max_size=4),
        hostile_json),
    "expected_revision": st.one_of(st.integers(), hostile_json),
    "duration": st.one_of(st.floats(), st.integers(), hostile_json),
    "member_id": st.one_of(hostile_text, hostile_json),
    "id": st.one_of(st.text(max_size=8), st.integers(), hostile_json, st.just("x" * 129)),
}


def _fits(frame: str | bytes) -> bool:
    """Under the 64 KiB frame limit (bigger frames close 1009: tested on their own below)."""
    return len(frame.encode() if isinstance(frame, str) else frame) <= 65000


@st.composite
def _v1_frames(draw: st.DrawFn, types: list[str]) -> str | bytes:
    shape = draw(st.sampled_from(["object"] * 6 + ["raw", "binary", "empty", "json"]))
    if shape == "binary":
        return draw(st.binary(max_size=2048))
    if shape == "empty":
        return ""
    if shape == "raw":
        return draw(st.text(max_size=200))
    if shape == "json":
        return encode(draw(hostile_json))
    frame: dict[str, Any] = {"type": draw(st.one_of(st.sampled_from(types), hostile_json))}
    for name, values in _FIELD_VALUES.items():
        if draw(st.booleans()):
            frame[name] = draw(values)
    frame.update(draw(st.dictionaries(hostile_text, hostile_json, max_size=2)))
    if frame.get("type") == "end" and "end" not in types:
        frame["type"] = "ping"
    return encode(frame)


def v1_frames(types: list[str]) -> st.SearchStrategy[str | bytes]:
    return _v1_frames(types).filter(_fits)


async def _exchange(client: V1, frame: str | bytes, n: int) -> list[dict[str, Any]]:
    """Send ``frame`` then a ping; everything that came back before the pong."""
    await client.ws.send_message(frame)
    sync = f"sync-{n}"
    await client.send(type="ping", id=sync)
    got: list[dict[str, Any]] = []
    while True:
        try:
            message = await client.recv(timeout=10)
        except ConnectionClosed as closed:
            raise AssertionError(
                f"closed {closed.reason} after {frame[:200]!r}; before it: {got}") from None
        if message.get("type") == "pong" and message.get("id") == sync:
            return got
        got.append(message)


def _check_v1_answers(frame: str | bytes, got: list[dict[str, Any]]) -> None:
    replies = [m for m in got if m.get("type") in ("ack", "error", "pong")]
    assert len(replies) == 1, (frame[:300], got)
    reply = replies[0]
    if reply["type"] == "error":
        assert reply["code"] in V1_CODES, (reply, frame[:300])
        assert_clear_error(reply["message"])


async def _fuzz_v1(url: str, meeting: str, frames: list[str | bytes], host_key: str | None
                   ) -> None:
    name = "fuzz" if host_key is None else "fuzz-host"
    async with open_v1(url, meeting, name=name, host_key=host_key) as client:
        for n, frame in enumerate(frames):
            _check_v1_answers(frame, await _exchange(client, frame, n))


@FUZZ
@given(frames=st.lists(v1_frames(V1_TYPES), min_size=1, max_size=6))
async def test_v1_member_frames(
    fuzz_server: ThreadedServer, meeting: tuple[str, str], frames: list[str | bytes]
) -> None:
    mid, host = meeting
    with trio.fail_after(60):
        await _fuzz_v1(fuzz_server.url, mid, frames, None)
        await assert_joinable(fuzz_server.url, mid, host)
    assert fuzz_server.errors.take() == []


@FUZZ
@given(frames=st.lists(v1_frames([t for t in V1_TYPES if t != "end"]), min_size=1, max_size=6))
async def test_v1_host_frames(
    fuzz_server: ThreadedServer, meeting: tuple[str, str], frames: list[str | bytes]
) -> None:
    mid, host = meeting
    with trio.fail_after(60):
        await _fuzz_v1(fuzz_server.url, mid, frames, host)
        await unlock(fuzz_server.url, mid, host)  # a fuzzed host may lock it: that is allowed
        await assert_joinable(fuzz_server.url, mid, host)
    assert fuzz_server.errors.take() == []


# --- seed --------------------------------------------------------------------------------------

_no_surrogate = hostile_text.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
_control_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "isMute": st.one_of(st.booleans(), hostile_json),
            "isVideo": st.one_of(st.booleans(), hostile_json),
            "isChangeName": st.one_of(st.booleans(), hostile_json),
            "userUid": st.one_of(st.just(HOST_UID), hostile_json),
            "meetingUid": hostile_json,
        },
    ),
    hostile_json,
)


@st.composite
def _seed_frames(draw: st.DrawFn) -> tuple[str, str | bytes]:
    """(kind, frame): ``chat`` (any text that is not a control frame), ``control`` or
    ``binary``."""
    shape = draw(st.sampled_from(["chat", "chat", "control", "control", "control", "binary"]))
    if shape == "binary":
        return shape, draw(st.binary(max_size=2048))
    if shape == "chat":
        text = draw(st.one_of(_no_surrogate, st.builds(encode, hostile_json)))
        return shape, ("x" + text if text.startswith(CONTROL_PREFIX) else text)
    selector = draw(st.sampled_from(["1", "2", "3", "4", "0", "", "x", "１", "12"]))
    body = draw(st.one_of(st.builds(encode, _control_bodies), _no_surrogate))
    return shape, CONTROL_PREFIX + selector + body


def seed_frames() -> st.SearchStrategy[tuple[str, str | bytes]]:
    return _seed_frames().filter(lambda kind_frame: _fits(kind_frame[1]))


async def _seed_exchange(ws: Any, frame: str | bytes, me: str) -> list[dict[str, Any]]:
    await ws.send_message(frame)
    marker = f"sync-{uuid.uuid4().hex}"
    await ws.send_message(marker)
    got: list[dict[str, Any]] = []
    while True:
        try:
            message = await recv_json(ws, timeout=10)
        except ConnectionClosed as closed:
            raise AssertionError(
                f"closed {closed.reason} after {frame[:200]!r}; before it: {got}") from None
        if message.get("notice") == marker and message.get("name") == me:
            return got
        got.append(message)


async def _fuzz_seed(url: str, meeting: str, frames: list[tuple[str, str | bytes]],
                     host_uid: str | None) -> None:
    me = "fuzz-seed-host" if host_uid else "fuzz-seed"
    async with open_seed(url, meeting, me, host_uid) as ws:
        while "user_uid" not in await recv_json(ws):
            pass
        for kind, frame in frames:
            if isinstance(frame, str) and host_uid:
                frame = frame.replace(json.dumps(HOST_UID), json.dumps(host_uid))
            got = await _seed_exchange(ws, frame, me)
            errors = [m for m in got if "error" in m]
            for error in errors:
                assert set(error) <= {"error", "code"}, error
                assert_clear_error(error["error"])
            echoes = [m for m in got if m.get("name") == me and m.get("notice") != NOTICE_JOINED]
            if kind == "chat":  # chat: broadcast (to the sender too) or refused, never both
                assert len(errors) + len(echoes) == 1, (frame[:300], got)
            elif kind == "binary":
                assert len(errors) == 1 and not echoes, got
            else:  # a control frame is never chat; at most one refusal
                assert len(errors) <= 1 and not echoes, (frame[:300], got)


@FUZZ
@given(frames=st.lists(seed_frames(), min_size=1, max_size=6), as_host=st.booleans())
async def test_seed_frames(
    fuzz_server: ThreadedServer, meeting: tuple[str, str],
    frames: list[tuple[str, str | bytes]], as_host: bool,
) -> None:
    mid, host = meeting
    with trio.fail_after(60):
        await _fuzz_seed(fuzz_server.url, mid, frames, host if as_host else None)
        await assert_joinable(fuzz_server.url, mid, host)
    assert fuzz_server.errors.take() == []


# --- where the protocol says to close ----------------------------------------------------------

async def _send_what_is_read(stream: trio.SocketStream, data: bytes) -> None:
    """Send ``data``; a server that closes once it has seen enough (the point of these tests)
    may leave the rest unsendable."""
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@FUZZ
@given(chars=st.integers(22000, 40000), char=st.sampled_from(["界", "é", "😀"]),
       protocol=st.sampled_from(["seed", "v1"]))
async def test_frames_over_the_byte_limit_close_1009(
    fuzz_server: ThreadedServer, meeting: tuple[str, str], chars: int, char: str, protocol: str,
) -> None:
    """The limit counts bytes: fewer than 64 Ki characters but more than 64 KiB of UTF-8."""
    mid, host = meeting
    text = char * chars
    if len(text.encode()) <= fuzz_server.config.max_frame_bytes:
        text *= 2
    payload = text.encode() if protocol == "seed" else encode({"type": "chat", "text": text}
                                                              ).encode()
    path = f"/AddMeeting?username=big&meetingUid={mid}" if protocol == "seed" \
        else f"/v1/meetings/{mid}/ws?name=big"
    with trio.fail_after(30):
        stream = await open_raw_ws(fuzz_server.url, path)
        try:
            await _send_what_is_read(stream, masked_frame(1, payload))
            assert await raw_close_code(stream, timeout=10) == 1009
        finally:
            await stream.aclose()
        await assert_joinable(fuzz_server.url, mid, host)
    assert fuzz_server.errors.take() == []


@pytest.mark.parametrize("opcode", [1, 2])
async def test_an_announced_5_mib_frame_is_refused_before_it_is_read(
    fuzz_server: ThreadedServer, meeting: tuple[str, str], opcode: int
) -> None:
    """Only the header and the first 64 KiB + 1 bytes are sent: a server that waits for all of
    a 5 MiB frame before judging it never answers."""
    mid, host = meeting
    size = 5 << 20
    header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size) + b"\x00\x00\x00\x00"
    with trio.fail_after(30):
        stream = await open_raw_ws(fuzz_server.url, f"/v1/meetings/{mid}/ws?name=huge")
        try:
            await _send_what_is_read(
                stream, header + b"x" * (fuzz_server.config.max_frame_bytes + 1))
            assert await raw_close_code(stream, timeout=10) == 1009
        finally:
            await stream.aclose()
        await assert_joinable(fuzz_server.url, mid, host)


@pytest.mark.parametrize("protocol", ["seed", "v1"])
async def test_invalid_utf8_text_closes_1007(
    fuzz_server: ThreadedServer, meeting: tuple[str, str], protocol: str
) -> None:
    """A lone surrogate cannot be UTF-8: raw in a text frame it is invalid, and RFC 6455 says
    close 1007. Nothing of it is stored: the meeting stays joinable."""
    mid, host = meeting
    path = f"/AddMeeting?username=bad&meetingUid={mid}" if protocol == "seed" \
        else f"/v1/meetings/{mid}/ws?name=bad"
    payload = b"hi \xed\xa0\x80" if protocol == "seed" else \
        b'{"type":"chat","text":"hi \xed\xa0\x80"}'
    with trio.fail_after(30):
        stream = await open_raw_ws(fuzz_server.url, path)
        try:
            await stream.send_all(masked_frame(1, payload))
            assert await raw_close_code(stream, timeout=10) == 1007
        finally:
            await stream.aclose()
        await assert_joinable(fuzz_server.url, mid, host)
    assert fuzz_server.errors.take() == []


async def test_the_issue_s_surrogate_chat_never_breaks_the_welcome(
    fuzz_server: ThreadedServer, meeting: tuple[str, str]
) -> None:
    """Issue #10's first finding, as it was reported: the frame gets an error, not an ack."""
    mid, host = meeting
    with trio.fail_after(30):
        async with open_v1(fuzz_server.url, mid, name="s") as client:
            # refused as a whole frame, so its id may not be echoed: the next reply is its own
            for frame in ('{"type":"chat","text":"hi \\ud800","id":"c"}',
                          '{"type":"rename","name":"\\udfff","id":"r"}'):
                await client.ws.send_message(frame)
                reply = await client.recv_type("ack", "error")
                assert reply["type"] == "error" and reply["code"] in V1_CODES, reply
        await assert_joinable(fuzz_server.url, mid, host)
    assert fuzz_server.errors.take() == []
