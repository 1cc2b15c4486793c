"""What the property-based tests share: hostile values, a server in a thread, and the checks.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default: 10 examples per property, so the
suite stays fast), ``long`` (thousands per property, for a run by hand, see docs/security.md).

The server runs once per module, in-process, in a thread with its own Trio run: Hypothesis runs
every example of an async test in a fresh ``trio.run``, so a server started inside one example
would not outlive it. Examples talk to it over real loopback sockets, as clients do.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rmeeting.config import Config
from rmeeting.server import RunningServer, serve_rmeeting

from .clients import open_seed, open_v1, recv_until

__all__ = [
    "FUZZ", "ErrorLog", "Raw", "ThreadedServer", "assert_clear_error", "assert_joinable",
    "documented_v1_error_codes", "encode", "hostile_json", "hostile_text", "raw_url_part",
]

_COMMON = {
    "deadline": None,  # one example is several round trips on a shared, busy machine
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=10, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=2000, **_COMMON)  # type: ignore[arg-type]
#: the fuzz tests' settings, as a decorator (not loaded globally: the unit tests' own
#: Hypothesis settings stay theirs)
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- hostile values --------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """JSON text spliced in as is: what ``json.dumps`` cannot write (a 5,000-digit number,
    40 KB of nesting, ``NaN``) but a client can send."""

    text: str


def encode(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` parts spliced in. Strings are written with
    ``\\uXXXX`` escapes, so a lone surrogate travels as valid UTF-8."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN / Infinity: Python's json reads them, the spec does not
    return json.dumps(value)


def _nested(depth: int, open_: str, close: str) -> Raw:
    return Raw(open_ * depth + close * depth)


#: one surrogate code point at least, anywhere in the string
_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_with_surrogate = st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=10), _surrogate, st.text(max_size=10)
)

#: strings as an attacker writes them: any code point (surrogates too), control characters,
#: blank, long (over every text limit), formula-looking
hostile_text = st.one_of(
    st.text(max_size=40),
    _with_surrogate,
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["", " ", "\t\n", "\x00", "=2+5", "x;=2+5;", "@SUM(1)", "-1", "\u202e",
                     "𝒳" * 3000, "界" * 2100, "a" * 2001, "a" * 5000]),
)

#: values that are not JSON's friendly subset
_huge_numbers = st.sampled_from([
    Raw("9" * 5000), Raw("-" + "1" * 5000), Raw("1" + "0" * 400 + ".5"), Raw("1e999999"),
    Raw("-0"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw(str(2**63)), Raw(str(-2**63 - 1)),
])
_deep = st.sampled_from([
    _nested(20000, "[", "]"), _nested(200, "[", "]"), _nested(1500, "[", "]"),
    Raw('{"a":' * 5000 + "1" + "}" * 5000),
])
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    hostile_text, _huge_numbers,
)
hostile_json = st.one_of(
    st.recursive(
        _leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(hostile_text, children, max_size=4),
        ),
        max_leaves=12,
    ),
    _deep,
)


def raw_url_part(text: str) -> str:
    """``text`` percent-encoded for a URL; a lone surrogate becomes its (invalid) UTF-8 bytes."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


# --- the server ------------------------------------------------------------------------------

class ErrorLog(logging.Handler):
    """Every ERROR (or worse) logged while it is installed: a server bug logs one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def take(self) -> list[str]:
        with self._lock_records:
            taken, self.records = self.records, []
        return [f"{r.name}: {r.getMessage()}" for r in taken]


class ThreadedServer:
    """An embedded rmeeting in a thread of its own (its own Trio run), for a whole module."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.errors = ErrorLog()
        self._ready: queue.Queue[tuple[RunningServer, trio.lowlevel.TrioToken] | BaseException]
        self._ready = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rmeeting-under-test",
                                        daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                running: RunningServer = await nursery.start(serve_rmeeting, self.config)
                self._ready.put((running, trio.lowlevel.current_trio_token()))

        try:
            trio.run(main)
        except BaseException as exc:  # handed to the test thread, which raises it
            self._ready.put(exc)

    def __enter__(self) -> ThreadedServer:
        logging.getLogger().addHandler(self.errors)
        self._thread.start()
        got = self._ready.get(timeout=30)
        if isinstance(got, BaseException):
            raise got
        self.running, self._token = got
        self.url = self.running.url
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            trio.from_thread.run_sync(self.running.shutdown.set, trio_token=self._token)
            self._thread.join(timeout=30)
        finally:
            logging.getLogger().removeHandler(self.errors)



def seed_meeting(url: str) -> tuple[str, str]:
    """A fresh meeting made through the seed's API: (meeting id, the manager's userUid)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/CreateMeeting", json={"meeting_name": "fuzz", "username": "h"})
        assert response.status_code == 200, response.text
        body = response.json()
    return str(body["meetingUid"]), str(body["userUid"])


# --- the checks ------------------------------------------------------------------------------

_TRACEBACK = re.compile(r"Traceback|File \"|line \d+, in |Error\(|\w+Error:")


def assert_clear_error(message: Any) -> None:
    """A message a person can act on: a non-empty string, no traceback, no exception repr."""
    assert isinstance(message, str) and message.strip(), message
    assert not _TRACEBACK.search(message), message
    assert len(message) <= 1000, f"an error message of {len(message)} characters"


def documented_v1_error_codes() -> frozenset[str]:
    """The codes of docs/protocol.md's table of v1 frame errors (minus ``internal``: a bug)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = text.split("### error (server → the sender)", 1)[1].split("\n### ", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            codes.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    assert "bad_json" in codes and "bad_frame" in codes, "the error table moved"
    return frozenset(codes - {"internal"})


async def assert_joinable(url: str, meeting: str, host_key: str) -> None:
    """The meeting still works for everyone: a fresh v1 member and a fresh seed member get
    their welcome, and the host's reads (the meeting, attendance JSON and CSV, the seed's
    Export of who is present now) answer 200 with bodies that parse."""
    with trio.fail_after(20):
        async with open_v1(url, meeting, name="fresh") as fresh:
            assert fresh.welcome["meeting"]["id"] == meeting
            assert fresh.me["name"] == "fresh"
        auth = {"Authorization": f"Bearer {host_key}"}
        async with open_seed(url, meeting, "fresh-seed") as ws, \
                httpx.AsyncClient(base_url=url, timeout=10) as client:
            await recv_until(ws, lambda m: "user_uid" in m)
            meeting_path = f"/v1/meetings/{meeting}"
            got = await client.get(meeting_path)
            assert got.status_code == 200, got.text
            attendance = await client.get(f"{meeting_path}/attendance", headers=auth)
            assert attendance.status_code == 200, attendance.text
            assert attendance.json()["sessions"]
            csv = await client.get(f"{meeting_path}/attendance.csv", headers=auth)
            assert csv.status_code == 200, csv.text
            assert csv.text.replace('"', "").startswith("name,member_id,"), csv.text[:200]
            export = await client.get(
                "/Export?" + urlencode({"userUid": host_key, "meetingUid": meeting}))
            assert export.status_code == 200, export.text
            assert "fresh-seed" in export.json()["attendee"], export.text


async def unlock(url: str, meeting: str, host_key: str) -> None:
    """Undo what a fuzzed host may have done (lock, chat off), through the HTTP API. A rate
    limit on control changes is waited out: it is a clear answer, not a failure."""
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while True:
                response = await client.patch(
                    f"/v1/meetings/{meeting}/controls",
                    json={"controls": {"locked": False, "chat": True, "rename": True}},
                    headers={"Authorization": f"Bearer {host_key}"},
                )
                if response.status_code != 429:
                    break
                await trio.sleep(0.2)
            assert response.status_code == 200, response.text
