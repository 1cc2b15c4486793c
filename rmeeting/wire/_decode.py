"""The one way JSON from the network is decoded: every HTTP body, v1 frame and seed control frame.

``json.loads`` alone accepts what later breaks a meeting: a lone surrogate (``"\\ud800"``) is
valid JSON and valid UTF-8 on the wire, yet no UTF-8 encoder can write it back out, so it would
break every later welcome; ``[[[[…`` raises ``RecursionError``; a 5,000-digit integer raises a
``ValueError`` from Python's int-parsing limit. :func:`decode` refuses each of these with one
:class:`BadInput` whose ``code`` the API layer turns into its own error (400 ``bad_request`` on
HTTP, an ``error`` frame on the WebSockets), before any of it reaches the service.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "BadInput", "decode", "encodable", "readable_id"]

#: deepest nesting of arrays/objects accepted; rmeeting's own messages need 3
MAX_DEPTH = 32
#: longest number literal accepted (digits, sign, point, exponent): an int64 has 19 digits
MAX_NUMBER_CHARS = 40

#: a string token (escapes included) or a bracket: strings are skipped whole, so a bracket
#: inside one is not counted
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadInput(ValueError):
    """Input refused before it reaches the rules; ``code`` is ``bad_json`` (not JSON at all) or
    ``bad_request`` (JSON, but not something rmeeting accepts)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encodable(text: str) -> bool:
    """True if ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    return _SURROGATE.search(text) is None


def _depth_ok(text: str, limit: int) -> bool:
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return False
        elif token in "]}":
            depth -= 1
    return True


def _number(literal: str) -> Any:
    if len(literal) > MAX_NUMBER_CHARS:
        raise BadInput("bad_request", f"a number longer than {MAX_NUMBER_CHARS} characters")
    return literal


def _int(literal: str) -> int:
    return int(_number(literal))


def _float(literal: str) -> float:
    value = float(_number(literal))
    if not math.isfinite(value):  # 1e999: JSON, but no number rmeeting could use or write back
        raise BadInput("bad_request", f"{literal} is out of range")
    return value


def _no_constant(literal: str) -> Any:
    raise BadInput("bad_json", f"{literal} is not JSON")


def _check_strings(value: Any) -> None:
    """Every string, key or value, at any depth, must be encodable (no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not encodable(item):
                raise BadInput("bad_request", "a string holds a lone surrogate (not encodable "
                                              "as UTF-8)")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def decode(raw: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``raw``, or :class:`BadInput`: not UTF-8, not JSON, nested deeper than
    ``max_depth``, a number literal longer than :data:`MAX_NUMBER_CHARS`, NaN/Infinity, or a
    string that is not encodable. The caller checks the types it expects."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput("bad_json", f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not _depth_ok(raw, max_depth):
        raise BadInput("bad_request", f"nested deeper than {max_depth} levels")
    try:
        value = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_no_constant)
    except BadInput:
        raise
    except RecursionError as exc:  # unreachable after the depth check; kept as a backstop
        raise BadInput("bad_request", f"nested deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise BadInput("bad_json", f"malformed JSON: {exc}") from exc
    _check_strings(value)
    return value


_TOO_LONG = object()  # a number literal readable_id() did not turn into a number


def readable_id(
    raw: str | bytes, *, max_chars: int, max_depth: int = MAX_DEPTH
) -> str | int | None:
    """The top-level ``"id"`` of an object :func:`decode` refused as a whole (a lone surrogate
    or a long number elsewhere in it), so that the refusal can name the request it answers; or
    None unless that is safe: nesting within ``max_depth`` (no deep parse), valid UTF-8, and the
    id itself a string of at most ``max_chars`` that is encodable, or an integer literal of at
    most :data:`MAX_NUMBER_CHARS` characters."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not _depth_ok(raw, max_depth):
        return None
    try:
        value = json.loads(
            raw, parse_int=lambda s: int(s) if len(s) <= MAX_NUMBER_CHARS else _TOO_LONG,
            parse_float=lambda s: None, parse_constant=lambda s: None,
        )
    except (ValueError, RecursionError):
        return None
    found = value.get("id") if isinstance(value, dict) else None
    if isinstance(found, str) and len(found) <= max_chars and encodable(found):
        return found
    if isinstance(found, int) and not isinstance(found, bool):
        return found
    return None
