"""``rmeeting bench soak``: a meeting's life, for a set time, watched for leaks and losses.

In each of ``meetings`` meetings: the host and some *stayers* (v1 and seed members present from
start to end), *churners* that join, chat and leave over and over (both protocols), v1 chat
from everyone, and the host flipping ``camera`` (over its WebSocket and over the HTTP API, in
turn). Meanwhile every server process's RSS and open file descriptors are sampled. At the end:

- **lost**: every chat that was acknowledged (v1 ``ack``) must have reached every stayer; each
  one that did not is lost. Every acknowledged flip must have reached every stayer (v1: the
  revision, seed: the last value).
- **errors**: ERROR/CRITICAL lines (and tracebacks) in the servers' logs, and client-side
  problems (a stayer disconnected, a join refused).
- **flat**: RSS and fds of each process at the end of the warm-up and at the end.

Members connect to the instances round-robin (``--cluster K`` or ``--urls``); meetings are
created on the first. See docs/benchmarks.md for a 30-minute run on three instances.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection
from trio_websocket import open_websocket_url as _open_ws

__all__ = ["SoakOptions", "format_soak", "run_soak", "scan_logs"]

NOTICE_CHANGED = "会议室状态发送变更"
#: client-side problems kept for the report (the count is exact, the list is not)
KEEP_PROBLEMS = 20


@dataclass(frozen=True)
class SoakOptions:
    urls: tuple[str, ...]
    duration: float
    meetings: int = 4
    #: members per meeting: about 40% stay (plus the host), the rest churn
    members: int = 10
    #: seconds between two chats of one v1 member
    chat_interval: float = 1.0
    #: seconds between two flips of a meeting's host
    flip_interval: float = 3.0
    #: seconds between two samples of the servers' RSS and fds
    sample: float = 5.0
    #: RSS/fds growth is measured from the end of the warm-up
    warmup: float = 10.0
    #: seconds the stayers may keep reading after the last chat was sent, for what is still on
    #: its way (they stop as soon as they have every acknowledged chat and flip)
    drain: float = 30.0
    pids: tuple[int, ...] = ()
    logs: tuple[str, ...] = ()


@dataclass
class _Meeting:
    index: int
    id: str
    host_key: str
    acked: set[str] = field(default_factory=set)
    seen: dict[str, set[str]] = field(default_factory=dict)
    last_flip: tuple[int, bool] = (0, True)  # (revision, camera) of the last acked flip
    revision_seen: dict[str, int] = field(default_factory=dict)
    camera_seen: dict[str, bool] = field(default_factory=dict)


@dataclass
class _Tally:
    joins: int = 0
    leaves: int = 0
    chats_sent: int = 0
    chats_acked: int = 0
    chats_refused: int = 0
    seed_chats_sent: int = 0
    flips_acked: int = 0
    problems: int = 0
    problem_list: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems += 1
        if len(self.problem_list) < KEEP_PROBLEMS:
            self.problem_list.append(text)


class _Run:
    def __init__(self, opts: SoakOptions) -> None:
        self.opts = opts
        self.tally = _Tally()
        self.meetings: list[_Meeting] = []
        self.stop_sending = trio.Event()
        self.stop_reading = trio.Event()
        #: set once every stayer has joined: only then does anyone chat (a seed stayer gets no
        #: history, so a chat before its join would count as lost)
        self.all_in = trio.Event()
        self.stayers_in = 0
        self.stayers_total = 0
        self._next_url = itertools.cycle(opts.urls)
        self._ids = itertools.count(1)
        self.samples: list[dict[str, float]] = []
        self.started = time.monotonic()

    def url(self) -> str:
        return next(self._next_url)

    def all_delivered(self) -> bool:
        """Every stayer has every acknowledged chat and the last acknowledged flip."""
        for m in self.meetings:
            for name, seen in m.seen.items():
                if not m.acked <= seen:
                    return False
                if name in m.camera_seen:
                    if m.last_flip[0] and m.camera_seen[name] != m.last_flip[1]:
                        return False
                elif m.revision_seen.get(name, 0) < m.last_flip[0]:
                    return False
        return True

    def stayer_in(self) -> None:
        self.stayers_in += 1
        if self.stayers_in == self.stayers_total:
            self.all_in.set()

    # --- v1 members ----------------------------------------------------------------------------

    async def v1_member(self, m: _Meeting, name: str, *, stay: bool, host: bool = False,
                        lifetime: float = 0.0) -> None:
        query = {"name": name, **({"host_key": m.host_key} if host else {})}
        url = f"{_ws(self.url())}/v1/meetings/{m.id}/ws?{urlencode(query)}"
        pending: dict[str, str] = {}  # frame id -> chat text, until its ack
        async with _open(url) as ws:
            with trio.fail_after(10):
                welcome = json.loads(await ws.get_message())
            if welcome.get("type") != "welcome":
                self.tally.problem(f"{name}: no welcome: {welcome}")
                return
            self.tally.joins += 1
            try:
                if stay:
                    m.seen[name] = {c["text"] for c in welcome.get("chat", [])}
                    m.revision_seen[name] = int(welcome["revision"])
                    self.stayer_in()
                await self._v1_session(ws, m, name, pending, stay, host, lifetime)
            finally:
                self.tally.leaves += 1

    async def _v1_session(self, ws: WebSocketConnection, m: _Meeting, name: str,
                          pending: dict[str, str], stay: bool, host: bool,
                          lifetime: float) -> None:
        await self.all_in.wait()
        async with trio.open_nursery() as nursery:
            async def read() -> None:
                try:
                    while True:
                        raw = await ws.get_message()
                        self._on_v1_frame(m, name, json.loads(raw), pending, stay)
                except ConnectionClosed as closed:
                    if stay and not self.stop_reading.is_set():
                        self.tally.problem(f"stayer {name} closed: {closed.reason}")
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            await self._v1_send(ws, m, name, pending, stay, host, lifetime)
            if stay:
                await self.stop_reading.wait()
            else:
                await trio.sleep(0.3)  # for the last acks
            nursery.cancel_scope.cancel()

    def _on_v1_frame(self, m: _Meeting, name: str, msg: dict[str, Any],
                     pending: dict[str, str], stay: bool) -> None:
        kind = msg.get("type")
        if kind == "chat" and stay:
            m.seen[name].add(msg["text"])
        elif kind == "controls" and stay:
            m.revision_seen[name] = max(m.revision_seen[name], int(msg["revision"]))
        elif kind == "ack" and msg.get("of") == "chat":
            text = pending.pop(str(msg.get("id")), None)
            if text is not None:
                m.acked.add(text)
                self.tally.chats_acked += 1
        elif kind == "ack" and msg.get("of") == "set_controls":
            self._flip_acked(m, int(msg["revision"]), bool(msg["controls"]["camera"]))
        elif kind == "error":
            pending.pop(str(msg.get("id")), None)
            self.tally.chats_refused += 1
            if msg.get("code") not in ("rate_limited",):
                self.tally.problem(f"{name}: error {msg.get('code')}: {msg.get('message')}")

    def _flip_acked(self, m: _Meeting, revision: int, camera: bool) -> None:
        self.tally.flips_acked += 1
        if revision > m.last_flip[0]:
            m.last_flip = (revision, camera)

    async def _v1_send(self, ws: WebSocketConnection, m: _Meeting, name: str,
                       pending: dict[str, str], stay: bool, host: bool, lifetime: float) -> None:
        deadline = trio.current_time() + lifetime
        camera = True
        n = 0
        next_flip = trio.current_time() + self.opts.flip_interval
        while not self.stop_sending.is_set() and (stay or trio.current_time() < deadline):
            n += 1
            rid = f"c{next(self._ids)}"
            text = f"{m.index}:{name}:{n}"
            pending[rid] = text
            self.tally.chats_sent += 1
            await ws.send_message(json.dumps({"type": "chat", "text": text, "id": rid}))
            if host and trio.current_time() >= next_flip:
                camera = not camera
                await self._flip(ws, m, camera, via_api=n % 2 == 0)
                next_flip = trio.current_time() + self.opts.flip_interval
            with trio.move_on_after(self.opts.chat_interval * random.uniform(0.5, 1.5)):
                await self.stop_sending.wait()

    async def _flip(self, ws: WebSocketConnection, m: _Meeting, camera: bool, *,
                    via_api: bool) -> None:
        if not via_api:
            await ws.send_message(json.dumps({"type": "set_controls", "id": f"f{camera}",
                                              "controls": {"camera": camera}}))
            return
        async with httpx.AsyncClient(base_url=self.opts.urls[0], timeout=10) as client:
            response = await client.patch(
                f"/v1/meetings/{m.id}/controls", json={"controls": {"camera": camera}},
                headers={"Authorization": f"Bearer {m.host_key}"})
        if response.status_code == 200:
            body = response.json()
            self._flip_acked(m, int(body["revision"]), bool(body["controls"]["camera"]))
        else:
            self.tally.problem(f"PATCH controls: {response.status_code} {response.text[:200]}")

    # --- seed members --------------------------------------------------------------------------

    async def seed_member(self, m: _Meeting, name: str, *, stay: bool,
                          lifetime: float = 0.0) -> None:
        query = urlencode({"username": name, "meetingUid": m.id})
        async with _open(f"{_ws(self.url())}/AddMeeting?{query}") as ws:
            with trio.fail_after(10):
                while "user_uid" not in (state := json.loads(await ws.get_message())):
                    pass
            self.tally.joins += 1
            try:
                if stay:
                    m.seen[name] = set()
                    m.camera_seen[name] = bool(state["is_video"])
                    self.stayer_in()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._seed_read, ws, m, name, nursery.cancel_scope)
                        await self.stop_reading.wait()
                        nursery.cancel_scope.cancel()
                else:
                    deadline = trio.current_time() + lifetime
                    n = 0
                    while trio.current_time() < deadline and not self.stop_sending.is_set():
                        n += 1
                        await ws.send_message(f"{m.index}:{name}:seed:{n}")
                        self.tally.seed_chats_sent += 1
                        await trio.sleep(self.opts.chat_interval)
            finally:
                self.tally.leaves += 1

    async def _seed_read(self, ws: WebSocketConnection, m: _Meeting, name: str,
                         scope: trio.CancelScope) -> None:
        try:
            while True:
                msg = json.loads(await ws.get_message())
                if msg.get("notice") == NOTICE_CHANGED and "isVideo" in msg:
                    m.camera_seen[name] = bool(msg["isVideo"])
                elif "notice" in msg and "name" in msg:
                    m.seen[name].add(msg["notice"])
        except ConnectionClosed as closed:
            if not self.stop_reading.is_set():
                self.tally.problem(f"stayer {name} closed: {closed.reason}")
        scope.cancel()

    # --- the run -------------------------------------------------------------------------------

    async def churn(self, m: _Meeting, slot: int) -> None:
        for round_ in itertools.count():
            if self.stop_sending.is_set():
                return
            name = f"churn{m.index}-{slot}-{round_}"
            lifetime = random.uniform(1.0, 4.0)
            try:
                if (slot + round_) % 2:
                    await self.seed_member(m, name, stay=False, lifetime=lifetime)
                else:
                    await self.v1_member(m, name, stay=False, lifetime=lifetime)
            except (HandshakeError, ConnectionClosed, OSError, trio.TooSlowError) as exc:
                self.tally.problem(f"{name}: {type(exc).__name__}: {exc}")
                await trio.sleep(1)

    async def stayer(self, m: _Meeting, name: str, protocol: str, host: bool = False) -> None:
        try:
            if protocol == "seed":
                await self.seed_member(m, name, stay=True)
            else:
                await self.v1_member(m, name, stay=True, host=host)
        except (HandshakeError, ConnectionClosed, OSError, trio.TooSlowError) as exc:
            self.tally.problem(f"stayer {name}: {type(exc).__name__}: {exc}")

    async def sample_forever(self) -> None:
        while True:
            at = time.monotonic() - self.started
            for pid in self.opts.pids:
                stats = process_stats(pid)
                if stats:
                    self.samples.append({"t": round(at, 1), "pid": pid, **stats})
            await trio.sleep(self.opts.sample)


async def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Run the soak; the report as a dict (see :func:`format_soak`)."""
    run = _Run(opts)
    async with httpx.AsyncClient(base_url=opts.urls[0], timeout=10) as client:
        for index in range(opts.meetings):
            # camera on at the start: the host's flips alternate off/on, each a real change
            response = await client.post("/CreateMeeting", json={"meeting_name": f"soak{index}",
                                                                 "is_video": True})
            response.raise_for_status()
            body = response.json()
            run.meetings.append(_Meeting(index, body["meetingUid"], body["userUid"]))
    stayers = max(2, round(opts.members * 0.4))
    churners = max(1, opts.members - stayers)
    run.stayers_total = len(run.meetings) * (1 + stayers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.sample_forever)
        async with trio.open_nursery() as members:
            for m in run.meetings:
                members.start_soon(run.stayer, m, f"host{m.index}", "v1", True)
                for s in range(stayers):
                    members.start_soon(run.stayer, m, f"stay{m.index}-{s}",
                                       "seed" if s % 2 else "v1")
            with trio.fail_after(30):
                await run.all_in.wait()
            for m in run.meetings:
                for slot in range(churners):
                    members.start_soon(run.churn, m, slot)
            await trio.sleep(opts.duration)
            run.stop_sending.set()
            await trio.sleep(0.5)  # the churners' last acks
            with trio.move_on_after(opts.drain):  # polled: deliveries are counted, not events
                for _ in itertools.count():
                    if run.all_delivered():
                        break
                    await trio.sleep(0.2)
            run.stop_reading.set()
        await trio.sleep(min(opts.sample, 2.0))  # one more sample after the members left
        nursery.cancel_scope.cancel()
    return _report(run)


def _report(run: _Run) -> dict[str, Any]:
    lost: dict[str, int] = {}
    flips_missed: dict[str, str] = {}
    for m in run.meetings:
        for name, seen in m.seen.items():
            if name in m.camera_seen:  # a seed stayer: chat comes as notices
                missing = {t for t in m.acked if t not in seen}
                if m.last_flip[0] and m.camera_seen[name] != m.last_flip[1]:
                    flips_missed[name] = f"camera {m.camera_seen[name]}, last flip set " \
                                         f"{m.last_flip[1]}"
            else:
                missing = m.acked - seen
                if m.revision_seen.get(name, 0) < m.last_flip[0]:
                    flips_missed[name] = f"revision {m.revision_seen.get(name, 0)}, last " \
                                         f"flip {m.last_flip[0]}"
            if missing:
                lost[name] = len(missing)
    log_errors = scan_logs(run.opts.logs)
    t = run.tally
    return {
        "scenario": "soak",
        "duration_s": run.opts.duration,
        "meetings": run.opts.meetings,
        "members_per_meeting": run.opts.members,
        "urls": list(run.opts.urls),
        "joins": t.joins, "leaves": t.leaves,
        "chats_sent": t.chats_sent, "chats_acked": t.chats_acked,
        "chats_refused": t.chats_refused, "seed_chats_sent": t.seed_chats_sent,
        "flips_acked": t.flips_acked,
        "lost": sum(lost.values()), "lost_by_member": lost,
        "flips_missed": len(flips_missed), "flips_missed_by_member": flips_missed,
        "client_problems": t.problems, "client_problem_list": t.problem_list,
        "log_errors": len(log_errors), "log_error_lines": log_errors[:10],
        "processes": _flatness(run.samples, run.opts.warmup),
        "samples": run.samples,
    }


def _flatness(samples: list[dict[str, float]], warmup: float) -> list[dict[str, Any]]:
    out = []
    for pid in sorted({int(s["pid"]) for s in samples}):
        mine = [s for s in samples if s["pid"] == pid]
        after = [s for s in mine if s["t"] >= warmup] or mine
        first, last = after[0], mine[-1]
        out.append({
            "pid": pid, "samples": len(mine),
            "rss_kib_after_warmup": first.get("rss_kib"), "rss_kib_end": last.get("rss_kib"),
            "rss_kib_max": max(s.get("rss_kib", 0) for s in mine),
            "fds_after_warmup": first.get("fds"), "fds_end": last.get("fds"),
            "fds_max": max(s.get("fds", 0) for s in mine),
            "threads_max": max(s.get("threads", 0) for s in mine),
        })
    return out


def process_stats(pid: int) -> dict[str, float]:
    """RSS (KiB), open file descriptors and threads of a process, from /proc; {} once it is
    gone. Threads, because a process that keeps making new ones keeps growing its heap."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        rss = int(fields["VmRSS"].split()[0])
        threads = int(fields["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, KeyError, ValueError):
        return {}
    return {"rss_kib": rss, "fds": fds, "threads": threads}


def scan_logs(paths: Sequence[str]) -> list[str]:
    """Lines at ERROR or CRITICAL (JSON or text logs), and any traceback, in ``paths``."""
    found: list[str] = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            found.append(f"{path}: unreadable: {exc}")
            continue
        for line in lines:
            level, text = "", line[:300]
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = {}
                level = str(record.get("level", ""))
                # the message, and the exception's last lines (where it was raised, and what)
                tail = str(record.get("exc", "")).strip().splitlines()[-3:]
                text = " | ".join([f"{record.get('logger')}: {record.get('msg')}", *tail])[:600]
            else:
                level = line.split(" ", 1)[0]
            if level in ("error", "critical") or line.startswith("Traceback"):
                found.append(f"{Path(path).name}: {text}")
    return found


def format_soak(result: dict[str, Any]) -> str:
    ok = result["lost"] == 0 and result["flips_missed"] == 0 and result["log_errors"] == 0 \
        and result["client_problems"] == 0
    lines = [
        f"soak: {result['duration_s']:.0f} s, {result['meetings']} meetings x "
        f"{result['members_per_meeting']} members, {len(result['urls'])} instance(s)",
        f"  joins {result['joins']}, leaves {result['leaves']}; chat sent {result['chats_sent']}"
        f" (v1) + {result['seed_chats_sent']} (seed), acked {result['chats_acked']}, refused "
        f"{result['chats_refused']}; flips acked {result['flips_acked']}",
        f"  lost {result['lost']} acked chat deliveries, {result['flips_missed']} stayers "
        f"missed the last flip",
        f"  errors: {result['log_errors']} in the servers' logs, "
        f"{result['client_problems']} on the clients' side",
    ]
    for line in result["log_error_lines"][:5] + result["client_problem_list"][:5]:
        lines.append(f"    {line}")
    for p in result["processes"]:
        lines.append(
            f"  pid {p['pid']}: RSS {_mib(p['rss_kib_after_warmup'])} after warm-up -> "
            f"{_mib(p['rss_kib_end'])} at the end (max {_mib(p['rss_kib_max'])}); fds "
            f"{p['fds_after_warmup']} -> {p['fds_end']} (max {p['fds_max']}); "
            f"threads max {p['threads_max']}; {p['samples']} samples")
    lines.append("  verdict: " + ("OK" if ok else "FAILED"))
    return "\n".join(lines)


def _mib(kib: float | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def _ws(url: str) -> str:
    return url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)


def _open(url: str) -> Any:
    return _open_ws(url, max_message_size=1 << 22, message_queue_size=4096)
