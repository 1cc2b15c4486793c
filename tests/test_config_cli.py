"""Configuration layers, unknown keys, and the ``rmeeting serve`` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed

from rmeeting.config import ConfigError, load_config

from .clients import Api, open_seed, recv_until


def test_layers_in_order(tmp_path: Path) -> None:
    file = tmp_path / "rmeeting.toml"
    file.write_text('bind = "0.0.0.0:9000"\nshards = 4\nmax_members = 7\n')
    config = load_config(
        file=file,
        env={"RMEETING_SHARDS": "6", "RMEETING_ETCD": "http://a:2379, http://b:2379"},
        overrides={"max_members": 9, "bind": None},
    )
    assert config.bind == "0.0.0.0:9000"  # file (no flag given)
    assert config.shards == 6  # env beats file
    assert config.max_members == 9  # flag beats file
    assert config.etcd == ("http://a:2379", "http://b:2379")
    assert load_config(env={}).bind == "127.0.0.1:8080"


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("max_member = 3\n")
    with pytest.raises(ConfigError, match="max_member"):
        load_config(file=file, env={})
    with pytest.raises(ConfigError, match="shard"):
        load_config(env={"RMEETING_SHARD": "3"})
    with pytest.raises(ConfigError, match="shards"):
        load_config(env={"RMEETING_SHARDS": "many"})
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(env={"RMEETING_SHARDS": "0"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(env={"RMEETING_BIND": "nowhere"})
    (tmp_path / "broken.toml").write_text("bind = \n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(file=tmp_path / "broken.toml", env={})


def test_cli_rejects_bad_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rmeeting", "serve", "--bind", "127.0.0.1:0"],
        env={**os.environ, "RMEETING_NO_SUCH_THING": "1"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and "no_such_thing" in result.stderr


async def test_serve_command_end_to_end_and_sigterm() -> None:
    """`rmeeting serve --bind 127.0.0.1:0` prints where it listens; SIGTERM closes with 1001."""
    env = {**os.environ, "RMEETING_LOG_FORMAT": "json"}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "rmeeting", "serve", "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(15):
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(1)
            url = line.decode().split("listening on ")[1].strip()
            async with Api(url) as api:
                mid = (await api.create_seed_meeting(meeting_name="cli"))["meetingUid"]
            async with open_seed(url, mid, "ann") as ann:
                await recv_until(ann, lambda m: "user_uid" in m)
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ann.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 1001
            assert await proc.wait() == 0
            logs = (await proc.stderr.receive_some(65536)).decode().splitlines()
        records = [json.loads(line) for line in logs if line.strip()]
        assert any(r["msg"] == "listening" for r in records), "logs are JSON lines"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
