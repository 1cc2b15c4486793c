"""``rmeeting webhooks``: ``listen`` (a local receiver that prints verified events, one JSON
line each) and ``secret`` (a new ``whsec_`` secret)."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from typing import Any

import trio

from .receiver import Verified, serve_receiver, verifying

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    listen = sub.add_parser(
        "listen", help="receive webhooks on loopback and print the verified ones",
        description="Receive webhooks (POST, any path) and print each one whose signature "
        "verifies as one JSON line {id, type, timestamp, data} on stdout; rejected ones go to "
        "stderr and get a 400. Point webhook_urls at http://127.0.0.1:PORT/.")
    listen.add_argument("--secret", help="the webhook_secret (default: $RMEETING_WEBHOOK_SECRET)")
    listen.add_argument("--port", type=int, default=8099, help="port (default 8099; 0: any)")
    listen.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    sub.add_parser("secret", help="print a new webhook_secret (whsec_ + 32 random bytes)")


def run_from_args(args: argparse.Namespace) -> int:
    if args.webhooks_command == "secret":
        print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
        return 0
    secret = args.secret or os.environ.get("RMEETING_WEBHOOK_SECRET", "")
    if not secret:
        print("rmeeting webhooks listen: give --secret (or RMEETING_WEBHOOK_SECRET)",
              file=sys.stderr)
        return 2
    try:
        handler = verifying(secret, _print_event, _print_rejected)
    except Exception as exc:  # noqa: BLE001 - a malformed secret: say so, no traceback
        print(f"rmeeting webhooks listen: bad secret: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_receiver, args.bind, args.port, handler)
            print(f"listening on http://{args.bind}:{port}/", file=sys.stderr, flush=True)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"rmeeting webhooks listen: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_event(event: Verified) -> None:
    print(event.line(), flush=True)


def _print_rejected(reason: Any) -> None:
    print(f"rejected: {reason}", file=sys.stderr, flush=True)
