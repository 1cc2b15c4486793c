"""The operator commands that are one HTTP request each (httpx), and how their answers print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from ..controls import FLAGS
from ._errors import OpsError

__all__ = ["api_request"]


def _bearer(token: str | None, what: str) -> dict[str, str]:
    if not token:
        raise OpsError(f"this command needs {what}", status=2)
    return {"Authorization": f"Bearer {token}"}


def host_headers(args: argparse.Namespace) -> dict[str, str]:
    return _bearer(args.host_key, "the meeting's host key: --host-key or $RMEETING_HOST_KEY")


def api_request(args: argparse.Namespace, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to ``--url``; a refusal (4xx/5xx) or no answer raises :class:`OpsError`."""
    base = args.url.rstrip("/")
    try:
        response = httpx.request(method, base + path, timeout=args.timeout, **kw)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise OpsError(f"bad --url {args.url!r}: {exc}", status=2) from exc
    except httpx.HTTPError as exc:
        raise OpsError(f"cannot reach {base}: {exc or type(exc).__name__}") from exc
    if response.status_code >= 400:
        raise OpsError(f"{method} {path}: {response.status_code} {_reason(response)}")
    return response


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        code = f" ({body['code']})" if body.get("code") else ""
        return f"{body['error']}{code}"
    return response.reason_phrase


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _print_controls(data: dict[str, Any]) -> None:
    for flag in FLAGS:
        print(f"{flag:<8} {str(data['controls'][flag]).lower()}")
    print(f"revision {data['revision']}")


def meetings_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.controls:
        body["controls"] = dict(args.controls)
    created = api_request(args, "POST", "/v1/meetings", json=body).json()
    _print_json(created)
    print("keep host_key: it is shown only once", file=sys.stderr)
    return 0


def meetings_list(args: argparse.Namespace) -> int:
    headers = _bearer(args.admin_token,
                      "the server's admin token: --admin-token or $RMEETING_ADMIN_TOKEN")
    data = api_request(args, "GET", "/v1/meetings", headers=headers).json()
    if args.json:
        _print_json(data)
        return 0
    rows = [("ID", "MEMBERS", "CREATED", "NAME")]
    rows += [(m["id"], str(m["members"]), m["created_at"], m["name"]) for m in data["meetings"]]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*padded, row[3]]))
    return 0


def meetings_end(args: argparse.Namespace) -> int:
    api_request(args, "DELETE", f"/v1/meetings/{args.meeting}", headers=host_headers(args))
    print(f"ended {args.meeting}")
    return 0


def controls_show(args: argparse.Namespace) -> int:
    data = api_request(args, "GET", f"/v1/meetings/{args.meeting}/controls").json()
    if args.json:
        _print_json(data)
    else:
        _print_controls(data)
    return 0


def controls_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"controls": dict(args.settings)}
    if args.duration is not None:
        body["duration"] = args.duration
    if args.expected_revision is not None:
        body["expected_revision"] = args.expected_revision
    data = api_request(args, "PATCH", f"/v1/meetings/{args.meeting}/controls", json=body,
                       headers=host_headers(args)).json()
    if args.json:
        _print_json(data)
    else:
        _print_controls(data)
    return 0


def attendance(args: argparse.Namespace) -> int:
    response = api_request(args, "GET", f"/v1/meetings/{args.meeting}/attendance",
                           params={"format": args.format}, headers=host_headers(args))
    if args.format == "json":
        text = json.dumps(response.json(), indent=2, ensure_ascii=False) + "\n"
    else:
        text = response.text
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OpsError(f"cannot write {args.output}: {exc}") from exc
    print(f"wrote the attendance of {args.meeting} to {args.output}", file=sys.stderr)
    return 0
