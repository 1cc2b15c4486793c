"""The web console: a plain HTML/CSS/JS page, served from the package (no build step).

``/`` and ``/m/<meeting_id>`` answer the page (the second opens it on that meeting; a host link
adds ``#host_key=…``, a fragment the browser never sends, so the key stays out of server logs);
``/console/<file>`` answers its assets. The page speaks only the public v1 API (docs/protocol.md):
HTTP under ``/v1`` and the WebSocket at ``/v1/meetings/{id}/ws``.

The files are read once, when the blueprint is made: a few tens of KiB, served from memory with
an ``ETag`` so a browser revalidates instead of running stale code after an upgrade.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from quart import Blueprint, Response, request

__all__ = ["console_blueprint"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

#: the page loads only its own script and style and talks only to its own origin (HTTP and
#: WebSocket: Chromium and Firefox count ws(s) to the same host as 'self')
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    assets: dict[str, _Asset] = {}
    for entry in resources.files(__name__).joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[entry.name] = _Asset(body, _TYPES[suffix], etag)
    return assets


def console_blueprint() -> Blueprint:
    assets = _load_assets()
    bp = Blueprint("console", __name__)

    def serve(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            return Response('{"error": "not found"}', status=404,
                            content_type="application/json; charset=utf-8")
        headers = {
            "ETag": asset.etag,
            "Cache-Control": "no-cache",  # revalidate each time: cheap, and never stale
            "X-Content-Type-Options": "nosniff",
        }
        if asset.content_type.startswith("text/html"):
            headers.update({
                "Content-Security-Policy": _CSP,
                "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY",
            })
        if asset.etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        return Response(asset.body, content_type=asset.content_type, headers=headers)

    @bp.get("/")
    async def index() -> Any:
        return serve("index.html")

    @bp.get("/m/<meeting_id>")
    async def meeting_page(meeting_id: str) -> Any:
        return serve("index.html")  # the page reads the meeting id from its own path

    @bp.get("/console/<name>")
    async def asset(name: str) -> Any:
        return serve(name)

    return bp
