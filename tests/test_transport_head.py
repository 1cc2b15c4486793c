"""The front door's request-head parsing, without a socket (rmeeting.transport.head)."""

from __future__ import annotations

import pytest

from rmeeting.transport.head import HeadTooLarge, find_head_end, parse_head

UPGRADE = (b"GET /v1/meetings/m1/ws?name=ann&x=1&x=2 HTTP/1.1\r\nHost: h\r\n"
           b"Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_end_found_within_the_limit() -> None:
    assert find_head_end(UPGRADE + b"\x81\x00", 1024) == len(UPGRADE)
    assert find_head_end(UPGRADE[:-2], 1024) is None  # not whole yet


def test_limit_is_the_same_for_any_split_of_the_bytes() -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
    # whole at once: too large though its end is there
    with pytest.raises(HeadTooLarge):
        find_head_end(head, 1024)
    # growing piece by piece: too large as soon as the limit is passed without an end
    with pytest.raises(HeadTooLarge):
        find_head_end(head[:1024], 1024)
    assert find_head_end(head[:1023], 1024) is None
    # a head exactly at the limit passes
    exact = b"GET / HTTP/1.1\r\nX: " + b"a" * (1024 - 23) + b"\r\n\r\n"
    assert len(exact) == 1024
    assert find_head_end(exact + b"body", 1024) == 1024


def test_parse_an_upgrade_once() -> None:
    head = parse_head(UPGRADE)
    assert head is not None
    assert (head.method, head.path) == ("GET", "/v1/meetings/m1/ws")
    assert head.query() == {"name": "ann", "x": "2"}
    assert head.header("upgrade") == "WebSocket"
    assert head.wants_websocket
    assert head.header_dict()["sec-websocket-version"] == "13"


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
])
def test_malformed_heads_are_not_upgrades(raw: bytes) -> None:
    assert parse_head(raw) is None


def test_not_an_upgrade_without_every_part() -> None:
    for drop in (b"Upgrade: WebSocket\r\n", b"Connection: keep-alive, Upgrade\r\n"):
        head = parse_head(UPGRADE.replace(drop, b""))
        assert head is not None and not head.wants_websocket
    post = parse_head(UPGRADE.replace(b"GET", b"POST", 1))
    assert post is not None and not post.wants_websocket
