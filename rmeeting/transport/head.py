"""The front door's one parse of a request head (sans-io: bytes in, a value out).

The front door must read the first request head of every connection to route it (a WebSocket
upgrade stays here, the rest is spliced to Hypercorn), so it parses it exactly once, here, and
everything after it (routing, the WebSocket handshake, the session's query and headers) reads
the :class:`RequestHead`. Parsing is deliberately lenient about what it does not need: a head
it cannot read is simply not a WebSocket upgrade, and Hypercorn answers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = ["HeadTooLarge", "RequestHead", "find_head_end", "parse_head"]

_END = b"\r\n\r\n"


class HeadTooLarge(Exception):
    """The request head is longer than the limit (answered 431)."""


def find_head_end(buf: bytes, max_bytes: int) -> int | None:
    """The length of the head (blank line included) if ``buf`` holds all of it, else None.

    Checked after every read, on everything read so far, so the limit is the same however the
    bytes arrive: a head longer than ``max_bytes`` raises whether it came in one write or in
    many, and whether or not its end has arrived yet."""
    end = buf.find(_END, 0, max_bytes + len(_END))
    if end >= 0 and end + len(_END) <= max_bytes:
        return end + len(_END)
    if end >= 0 or len(buf) >= max_bytes:
        raise HeadTooLarge
    return None


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    #: header names lower-cased, values stripped, in their order
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (lower case), or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)  # a later repeat wins

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def query(self) -> dict[str, str]:
        query = urlsplit(self.target).query
        return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def has_token(self, name: str, token: str) -> bool:
        """Whether the comma-separated header ``name`` lists ``token`` (case-insensitive)."""
        value = self.header(name)
        return value is not None and token in (t.strip().lower() for t in value.split(","))

    @property
    def wants_websocket(self) -> bool:
        return (
            self.method == "GET"
            and self.has_token("upgrade", "websocket")
            and self.has_token("connection", "upgrade")
        )


def parse_head(head: bytes) -> RequestHead | None:
    """The head (up to and including its blank line) as a :class:`RequestHead`; None if it is
    not a well-formed HTTP/1.1 request head."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or not parts[0] or not parts[1]:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            return None  # no name, whitespace before the colon, or an obsolete line folding
        headers.append((name.lower(), value.strip(" \t")))
    return RequestHead(parts[0], parts[1], tuple(headers))
