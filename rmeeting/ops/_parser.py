"""The operator commands' arguments, and running one of them (exit status 0, 1 or 2)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..controls import FLAGS, InvalidControlValue, parse_flag_value
from ._errors import OpsError

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = ("meetings", "controls", "attendance", "chat")
DEFAULT_URL = "http://127.0.0.1:8080"

Handler = Callable[[argparse.Namespace], int]


def flag_setting(text: str) -> tuple[str, bool]:
    """``camera=false`` -> ("camera", False); values as etcd takes them (true/false, on/off...)."""
    flag, eq, raw = text.partition("=")
    flag = flag.strip()
    if not eq or flag not in FLAGS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected FLAG=VALUE with FLAG one of {', '.join(FLAGS)}")
    try:
        return flag, parse_flag_value(raw)
    except InvalidControlValue:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the value must be true/false (or 1/0, on/off, yes/no)") from None


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("RMEETING_URL") or DEFAULT_URL,
                        help="the server or the cluster's load balancer (default $RMEETING_URL, "
                        f"else {DEFAULT_URL})")
    common.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="per request (default 10)")
    return common


def _host() -> argparse.ArgumentParser:
    host = argparse.ArgumentParser(add_help=False)
    host.add_argument("--host-key", default=os.environ.get("RMEETING_HOST_KEY"),
                      help="the meeting's host key (default $RMEETING_HOST_KEY)")
    return host


def _handler(name: str) -> Handler:
    """Import a command's module only when it runs (``rmeeting serve`` needs neither)."""

    def handler(args: argparse.Namespace) -> int:
        if name.startswith("chat_"):
            from . import _chat

            return int(getattr(_chat, name)(args))
        from . import _http

        return int(getattr(_http, name)(args))

    return handler


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``meetings``, ``controls``, ``attendance`` and ``chat`` to ``rmeeting``'s commands."""
    common, host = _common(), _host()

    def leaf(group: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             handler: str, help: str, *parents: argparse.ArgumentParser,
             description: str = "") -> argparse.ArgumentParser:
        parser = group.add_parser(name, help=help, description=description or help,
                                  parents=[common, *parents])
        parser.set_defaults(ops=_handler(handler))
        return parser

    meetings = sub.add_parser("meetings", help="create, list or end meetings",
                              description="Create, list or end meetings.")
    m = meetings.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = leaf(m, "create", "meetings_create", "create a meeting; prints its id and host key "
                  "(as JSON: the host key is shown once)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--controls", nargs="+", action="extend", type=flag_setting, default=[],
                        metavar="FLAG=VALUE", help=f"initial controls ({', '.join(FLAGS)})")
    listing = leaf(m, "list", "meetings_list", "list every meeting (needs the admin token)")
    listing.add_argument("--admin-token", default=os.environ.get("RMEETING_ADMIN_TOKEN"),
                         help="the server's admin_token setting (default $RMEETING_ADMIN_TOKEN)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    end = leaf(m, "end", "meetings_end", "end a meeting: its members are told and disconnected",
               host)
    end.add_argument("meeting", metavar="ID")

    controls = sub.add_parser("controls", help="show or set a meeting's controls",
                              description="Show or set a meeting's controls "
                              f"({', '.join(FLAGS)}).")
    c = controls.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = leaf(c, "show", "controls_show", "show the controls and their revision")
    show.add_argument("meeting", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    set_ = leaf(c, "set", "controls_set", "change controls (host)", host,
                description="Change controls, e.g. `rmeeting controls set ID camera=false "
                "chat=off --duration 600`. Every member is told at once.")
    set_.add_argument("meeting", metavar="ID")
    set_.add_argument("settings", nargs="+", type=flag_setting, metavar="FLAG=VALUE")
    set_.add_argument("--duration", type=float, metavar="SECONDS",
                      help="the changed flags return to their defaults after this long")
    set_.add_argument("--expected-revision", type=int, metavar="N",
                      help="only if the controls are still at revision N (else exit 1)")
    set_.add_argument("--json", action="store_true", help="print the API's JSON")

    attendance = leaf(sub, "attendance", "attendance", "export a meeting's attendance (host)",
                      host, description="Every join-to-leave session of a meeting, as JSON or "
                      "CSV, to stdout or a file.")
    attendance.add_argument("meeting", metavar="ID")
    attendance.add_argument("--format", choices=("json", "csv"), default="json")
    attendance.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")

    chat = sub.add_parser("chat", help="follow a meeting's chat, or chat from the terminal",
                          description="Follow a meeting's chat, or chat from the terminal. "
                          "Both join the meeting as a member (they show in its roster) and "
                          "follow it across a rolling restart (close 1012).")
    ch = chat.add_subparsers(dest="action", required=True, metavar="ACTION")
    tail = leaf(ch, "tail", "chat_tail", "print the meeting's chat as it arrives", host)
    tail.add_argument("meeting", metavar="ID")
    tail.add_argument("--name", default="chat-tail", help="shown in the roster (default "
                      "chat-tail)")
    tail.add_argument("--since", type=int, metavar="SEQ",
                      help="start after this chat seq (default: the recent chat)")
    tail.add_argument("--json", action="store_true", help="print every frame as a JSON line")
    join = leaf(ch, "join", "chat_join", "chat from the terminal: stdin lines are sent", host,
                description="Join a meeting and chat: each line read from stdin is sent, "
                "what arrives is printed. /name NEW renames, /quit (or end of input) leaves.")
    join.add_argument("meeting", metavar="ID")
    join.add_argument("--name", required=True, help="your display name")


def run(args: argparse.Namespace) -> int:
    """Run the command chosen; errors go to stderr as ``rmeeting: ...``."""
    try:
        return int(args.ops(args))
    except OpsError as exc:
        print(f"rmeeting: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
