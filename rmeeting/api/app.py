"""The Quart-Trio app (HTTP only; WebSockets are routed by the front door) and the WS routes."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..service import Denied, MeetingService
from ..stores.base import RevisionConflict, StoreUnavailable
from ..transport.frontdoor import Handshake
from ..web import console_blueprint
from ._http import BadRequest, json_response
from .seed import seed_blueprint, seed_session
from .v1_http import v1_blueprint

__all__ = ["create_app", "ws_router"]

log = logging.getLogger("rmeeting.http")

#: Denied codes -> HTTP status
DENIED_STATUS = {
    "meeting_not_found": 404,
    "member_not_found": 404,
    "unauthorized": 401,
    "not_host": 403,
    "not_allowed": 403,
    "no_request": 409,
    "not_admin": 403,
    "admin_disabled": 403,
    "kicked": 403,
    "locked": 423,
    "meeting_full": 429,
    "too_many_meetings": 429,
    "rate_limited": 429,
    "draining": 503,
    # deployments (#12)
    "not_api_key": 403,
    "meeting_ended": 410,
}


def create_app(service: MeetingService, *, ready: Callable[[], Awaitable[bool]]) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    app.register_blueprint(seed_blueprint(service))
    app.register_blueprint(v1_blueprint(service))
    app.register_blueprint(console_blueprint())  # the web console: /, /m/<id>, /console/*

    @app.get("/healthz")
    async def healthz() -> Any:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Any:
        if await ready():
            return json_response({"status": "ready"})
        return json_response({"status": "not ready"}, 503)

    @app.get("/metrics")
    async def metrics() -> Any:
        return Response(service.metrics.expose(),
                        content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.errorhandler(BadRequest)
    async def bad_request(exc: BadRequest) -> Any:
        body = {"error": exc.message}
        if exc.status in (400, 429):
            body["code"] = "bad_request" if exc.status == 400 else "rate_limited"
        return json_response(body, exc.status)

    @app.errorhandler(Denied)
    async def denied(exc: Denied) -> Any:
        status = DENIED_STATUS.get(exc.code, 400)
        response = json_response({"error": exc.message, "code": exc.code}, status)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(RevisionConflict)
    async def conflict(exc: RevisionConflict) -> Any:
        return json_response(
            {"error": str(exc), "code": "revision_conflict", "revision": exc.current}, 412
        )

    @app.errorhandler(StoreUnavailable)
    async def unavailable(exc: StoreUnavailable) -> Any:
        return json_response({"error": f"store unavailable: {exc}", "code": "unavailable"}, 503)

    @app.errorhandler(404)
    async def not_found(exc: Any) -> Any:
        return json_response({"error": "not found"}, 404)

    @app.errorhandler(405)
    async def bad_method(exc: Any) -> Any:
        return json_response({"error": "method not allowed"}, 405)

    @app.errorhandler(413)
    async def too_large(exc: Any) -> Any:
        return json_response({"error": "request body too large"}, 413)

    # Whatever else Quart or a route raises is JSON too, never an HTML page: a client of this
    # API parses every answer, errors included.
    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        return json_response({"error": exc.description or exc.name}, status)

    @app.errorhandler(Exception)
    async def internal(exc: Exception) -> Any:
        log.exception("request failed", exc_info=exc)
        return json_response({"error": "internal error", "code": "internal"}, 500)

    return app


Handler = Callable[[Handshake], Awaitable[None]]
_V1_WS = re.compile(r"^/v1/meetings/([A-Za-z0-9_.-]{1,64})/ws$")


def ws_router(
    service: MeetingService, v1: Callable[[MeetingService, Handshake], Awaitable[None]] | None
) -> Callable[[str], tuple[Handler, dict[str, str]] | None]:
    metrics = service.metrics

    async def seed(hs: Handshake) -> None:
        metrics.on_websocket("seed", +1)
        try:
            await seed_session(service, hs)
        finally:
            metrics.on_websocket("seed", -1)

    async def modern(hs: Handshake) -> None:
        assert v1 is not None
        metrics.on_websocket("v1", +1)
        try:
            await v1(service, hs)
        finally:
            metrics.on_websocket("v1", -1)

    def route(path: str) -> tuple[Handler, dict[str, str]] | None:
        if path == "/AddMeeting":
            return seed, {}
        match = _V1_WS.match(path)
        if match and v1 is not None:
            return modern, {"meeting_id": match.group(1)}
        return None

    return route
