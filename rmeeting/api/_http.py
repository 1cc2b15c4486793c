"""Small helpers shared by the HTTP routes: JSON bodies with clear 4xx errors."""

from __future__ import annotations

from typing import Any

from quart import Response, request

from ..wire import BadInput, decode, dumps

__all__ = ["BadRequest", "field", "json_body", "json_response", "only"]


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status=status, content_type="application/json; charset=utf-8")


async def json_body(*, required: bool = False) -> dict[str, Any]:
    """The request's JSON object. An empty body is ``{}`` unless ``required``."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        if required:
            raise BadRequest("a JSON object body is required")
        return {}
    try:
        body = decode(raw)
    except BadInput as exc:
        raise BadRequest(exc.message) from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """``body[name]`` checked to be of ``kind`` (absent: ``default``)."""
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadRequest(f"{name} must be {kind.__name__}")
    return value


def only(body: dict[str, Any], *names: str) -> None:
    """Refuse fields the route does not know (a typo must not be silently ignored)."""
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(names)}")
