"""The operator CLI, run as a user runs it (``python -m rmeeting ...``) against a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from rmeeting.closes import Close
from rmeeting.config import Config
from rmeeting.server import RunningServer

from .clients import Api, open_v1
from .conftest import make_config

ADMIN = "admin-secret"


@pytest.fixture
def server_config() -> Config:
    return make_config(admin_token=ADMIN)


def _env(server: RunningServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RMEETING_")}
    return {**env, "RMEETING_URL": server.url, **extra}


async def cli(server: RunningServer, *args: str, stdin: bytes = b"",
              **env: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "rmeeting", *args], stdin=stdin, env=_env(server, **env),
            capture_stdout=True, capture_stderr=True, check=False,
        )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


async def _create(server: RunningServer, *args: str) -> tuple[str, str]:
    result = await cli(server, "meetings", "create", "weekly", *args)
    assert result.returncode == 0, err(result)
    created = json.loads(out(result))
    assert "host key" in err(result) or "host_key" in err(result)
    return created["id"], created["host_key"]


async def test_meetings_and_controls(server: RunningServer) -> None:
    mid, key = await _create(server, "--controls", "chat=false", "mic=off")
    shown = await cli(server, "controls", "show", mid)
    assert shown.returncode == 0
    assert "chat     false" in out(shown) and "mic      false" in out(shown)
    revision = int(out(shown).rsplit("revision ", 1)[1])

    changed = await cli(server, "controls", "set", mid, "chat=on", "camera=false",
                        "--duration", "60", "--json", RMEETING_HOST_KEY=key)
    assert changed.returncode == 0, err(changed)
    after = json.loads(out(changed))
    assert after["controls"]["chat"] is True and after["controls"]["camera"] is False
    stale = await cli(server, "controls", "set", mid, "rename=false", "--expected-revision",
                      str(revision), "--host-key", key)
    assert stale.returncode == 1 and "412" in err(stale) and "revision_conflict" in err(stale)
    wrong_key = await cli(server, "controls", "set", mid, "chat=off", "--host-key", "nope")
    assert wrong_key.returncode == 1 and "403" in err(wrong_key)
    no_key = await cli(server, "controls", "set", mid, "chat=off")
    assert no_key.returncode == 2 and "--host-key" in err(no_key)
    bad_flag = await cli(server, "controls", "set", mid, "video=off", "--host-key", key)
    assert bad_flag.returncode == 2 and "camera, mic" in err(bad_flag)

    listed = await cli(server, "meetings", "list", RMEETING_ADMIN_TOKEN=ADMIN)
    assert listed.returncode == 0 and mid in out(listed) and "weekly" in out(listed)
    as_json = await cli(server, "meetings", "list", "--json", "--admin-token", ADMIN)
    assert [m["id"] for m in json.loads(out(as_json))["meetings"]] == [mid]
    refused = await cli(server, "meetings", "list", "--admin-token", "guess")
    assert refused.returncode == 1 and "not_admin" in err(refused)
    assert (await cli(server, "meetings", "list")).returncode == 2

    ended = await cli(server, "meetings", "end", mid, "--host-key", key)
    assert ended.returncode == 0 and mid in out(ended)
    gone = await cli(server, "controls", "show", mid)
    assert gone.returncode == 1 and "404" in err(gone) and "meeting_not_found" in err(gone)


async def test_attendance_export(server: RunningServer, tmp_path: Path) -> None:
    mid, key = await _create(server)
    with trio.fail_after(10):
        async with open_v1(server.url, mid, name="=ann"):
            pass
        while server.hub.statistics()["members"]:
            await trio.sleep(0.01)
    as_json = await cli(server, "attendance", mid, RMEETING_HOST_KEY=key)
    assert as_json.returncode == 0, err(as_json)
    sessions = json.loads(out(as_json))["sessions"]
    assert [(s["name"], s["reason"]) for s in sessions] == [("=ann", "closed")]
    target = tmp_path / "attendance.csv"
    as_csv = await cli(server, "attendance", mid, "--format", "csv", "-o", str(target),
                       "--host-key", key)
    assert as_csv.returncode == 0 and out(as_csv) == ""
    lines = target.read_text().splitlines()
    assert lines[0] == ('"name","member_id","role","joined_at","left_at","duration_s","reason",'
                        '"sub"')
    assert lines[1].startswith('"\'=ann",')  # a spreadsheet shows it, never runs it
    denied = await cli(server, "attendance", mid, "--host-key", "nope")
    assert denied.returncode == 1 and "not_host" in err(denied)


class Lines:
    """A child process's stdout and stderr, read line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []

    async def pump(self, stream: Any, into: list[str]) -> None:
        buffer = b""
        while chunk := await stream.receive_some(4096):
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            into.extend(line.decode() for line in done)

    async def wait_for(self, into: list[str], text: str) -> None:
        # generous: the first wait includes a Python process starting on a loaded machine
        with trio.fail_after(25):
            while not any(text in line for line in into):
                await trio.sleep(0.02)


async def test_chat_tail_and_join(server: RunningServer, nursery: trio.Nursery) -> None:
    mid, key = await _create(server)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "rmeeting", "chat", "tail", mid, "--host-key", key],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(server),
    )
    tail = Lines(proc)
    nursery.start_soon(tail.pump, proc.stdout, tail.out)
    nursery.start_soon(tail.pump, proc.stderr, tail.err)
    try:
        await tail.wait_for(tail.err, "joined 'weekly' as chat-tail")
        async with open_v1(server.url, mid, name="carol") as carol:
            joined = await cli(server, "chat", "join", mid, "--name", "bob",
                               stdin=b"hello there\n/name Bobby\nsecond\n")
            assert joined.returncode == 0, err(joined)
            assert "joined 'weekly' as bob" in err(joined)
            texts = [(await carol.recv_type("chat"))["text"] for _ in range(2)]
            assert texts == ["hello there", "second"]
            await tail.wait_for(tail.out, "Bobby: second")
            assert any("bob: hello there" in line for line in tail.out)
            assert any("bob is now Bobby" in line for line in tail.err)
            # a drain (1012) on the way: the tail comes back with its token and last seq
            await server.hub.close_all(Close.RESTART, "instance restarting: reconnect")
            await tail.wait_for(tail.err, "reconnected")
            await carol.closed_code()
        async with open_v1(server.url, mid, name="dave") as dave:
            await dave.call("chat", text="after the drain")
            await tail.wait_for(tail.out, "dave: after the drain")
        assert [line.split("]")[0] for line in tail.out] == ["[1", "[2", "[3"], tail.out
        async with Api(server.url) as api:
            await api.request("DELETE", f"/v1/meetings/{mid}",
                              headers={"Authorization": f"Bearer {key}"})
        with trio.fail_after(20):
            assert await proc.wait() == 0
        await tail.wait_for(tail.err, "meeting ended")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_errors_and_help(server: RunningServer) -> None:
    nowhere = await cli(server, "controls", "show", "x", "--url", "http://127.0.0.1:9")
    assert nowhere.returncode == 1 and "cannot reach http://127.0.0.1:9" in err(nowhere)
    bad_url = await cli(server, "controls", "show", "x", "--url", "ftp://x")
    assert bad_url.returncode == 2
    unknown = await cli(server, "chat", "tail", "no-such-meeting")
    assert unknown.returncode == 1 and "no such meeting" in err(unknown)
    assert (await cli(server, "controls")).returncode == 2  # an action is required
    for command in (["meetings", "create"], ["controls", "set"], ["attendance"],
                    ["chat", "join"]):
        helped = await cli(server, *command, "--help")
        assert helped.returncode == 0 and "--url" in out(helped), command
