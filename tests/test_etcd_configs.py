"""The etcd configs in ``etcd/`` start real etcd servers, and etcd uses every key they set.

etcd ignores a key it does not know without a word, so starting is not enough: each test reads
the ``starting an etcd server`` log line, where etcd reports the settings it runs with, and
compares it with the file. Ports and data directories are moved to free ones in a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rmeeting.cluster.processes import free_ports

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[1]
ETCD_DIR = ROOT / "etcd"
LOCAL = ETCD_DIR / "etcd-local.conf.yml"
CLUSTER = [ETCD_DIR / f"etcd-cluster-{i}.conf.yml" for i in (1, 2, 3)]
#: keys etcd does not echo in its start line; logger/log-outputs show in the JSON log itself
NOT_ECHOED = {"logger", "log-level", "log-outputs", "enable-v2"}
#: keys that are milliseconds in the file and Go durations in the log
MILLISECONDS = {"heartbeat-interval", "election-timeout"}
#: the settings rmeeting relies on, the same in every file (see etcd/README.md)
SHARED = {
    "auto-compaction-mode": "periodic",
    "auto-compaction-retention": "1h",
    "quota-backend-bytes": 2147483648,
    "max-request-bytes": 1572864,
    "logger": "zap",
}
_LINE = re.compile(r"^(?P<key>[a-z0-9-]+):\s*(?P<value>.*?)\s*$")


def read_etcd_config(path: Path) -> dict[str, Any]:
    """The file's ``key: value`` lines (the configs here are flat YAML, kept so on purpose)."""
    config: dict[str, Any] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"{path.name}:{number}: not a flat `key: value` line: {line!r}"
        key, raw = match["key"], match["value"]
        assert key not in config, f"{path.name}:{number}: {key} set twice"
        value: Any
        if raw.startswith('"'):
            value = json.loads(raw)
        elif raw.startswith("["):
            value = [item.strip() for item in raw.strip("[]").split(",") if item.strip()]
        elif raw.isdigit():
            value = int(raw)
        elif raw in ("true", "false"):
            value = raw == "true"
        else:
            value = raw
        config[key] = value
    return config


def _seconds(go_duration: str) -> float:
    """A Go duration ("1h0m0s", "100ms", "1h") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", go_duration)
    assert parts and "".join(n + u for n, u in parts) == go_duration, go_duration
    return sum(float(n) * units[u] for n, u in parts)


def _check_effective(config: dict[str, Any], log: Path) -> None:
    """Every key of ``config`` has the file's value in etcd's own report of its settings."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines, f"etcd did not log JSON (logger: zap, log-outputs: [stderr]): {log.read_text()}"
    start = next((line for line in lines if line.get("msg") == "starting an etcd server"), None)
    assert start is not None, "no 'starting an etcd server' line in etcd's log"
    for key, value in config.items():
        if key in NOT_ECHOED:
            continue
        assert key in start, f"etcd does not report {key!r}: is it an etcd setting?"
        used = start[key]
        if key in MILLISECONDS:
            assert _seconds(used) == value / 1000, (key, value, used)
        elif key == "auto-compaction-retention":
            assert _seconds(used) == _seconds(value), (key, value, used)
        elif isinstance(used, list):
            assert used == value.split(","), (key, value, used)
        else:
            assert used == value, (key, value, used)


def _template(path: Path, out: Path, replace: dict[str, str], data_dir: Path) -> dict[str, Any]:
    """A copy of ``path`` with URLs replaced and the data directory moved; its parsed form."""
    text = path.read_text()
    for old, new in replace.items():
        assert old in text, f"{path.name} has no {old}"
        text = text.replace(old, new)
    text, count = re.subn(r"(?m)^data-dir: .*$", f"data-dir: {data_dir}", text)
    assert count == 1, f"{path.name} must set data-dir once"
    out.write_text(text)
    return read_etcd_config(out)


def _etcd() -> str:
    path = shutil.which("etcd")
    if path is None:
        pytest.fail("etcd is not installed (Debian: apt-get install etcd-server; "
                    "scripts/install-test-deps does it)")
    return path


@contextmanager
def _running(configs: list[Path], logs: list[Path], *, graceful: bool = True) -> Iterator[None]:
    """etcd on each config; stopped on exit (SIGKILL if not ``graceful``: members stopping
    together wait seconds for a leader transfer that cannot happen, and the data is thrown away)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for config, log in zip(configs, logs, strict=True):
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(
                    [_etcd(), "--config-file", str(config)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                ))
        yield
    finally:
        for proc in procs:
            proc.terminate() if graceful else proc.kill()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_healthy(endpoint: str, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/health", timeout=1) as response:
                if json.loads(response.read()).get("health") == "true":
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise AssertionError(f"etcd at {endpoint} not healthy after {timeout}s:\n{tail}")
        time.sleep(0.05)


def _etcdctl(endpoints: str, *args: str) -> str:
    done = subprocess.run(
        ["etcdctl", f"--endpoints={endpoints}", "--command-timeout=5s", *args],
        capture_output=True, timeout=15, env={**os.environ, "ETCDCTL_API": "3"},
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_configs_set_what_rmeeting_relies_on() -> None:
    for path in [LOCAL, *CLUSTER]:
        config = read_etcd_config(path)
        for key, value in SHARED.items():
            assert config.get(key) == value, f"{path.name}: {key} is {config.get(key)!r}"


def test_cluster_configs_differ_only_in_the_member() -> None:
    configs = [read_etcd_config(path) for path in CLUSTER]
    names = [f"etcd{i}" for i in (1, 2, 3)]
    for name, config in zip(names, configs, strict=True):
        assert config["name"] == name
        assert config["advertise-client-urls"] == f"http://{name}:2379"
        assert config["initial-advertise-peer-urls"] == f"http://{name}:2380"
        assert config["data-dir"] == f"/var/lib/etcd/{name}"
        assert config["initial-cluster"] == ",".join(f"{n}=http://{n}:2380" for n in names)
        assert config["initial-cluster-state"] == "new"
    own = {"name", "advertise-client-urls", "initial-advertise-peer-urls", "data-dir"}
    shared = [{k: v for k, v in c.items() if k not in own} for c in configs]
    assert shared[0] == shared[1] == shared[2]


def test_local_config_runs_an_etcd(tmp_path: Path) -> None:
    client, peer = free_ports(2)
    config = _template(LOCAL, tmp_path / "etcd.conf.yml", {
        "127.0.0.1:2379": f"127.0.0.1:{client}",
        "127.0.0.1:2380": f"127.0.0.1:{peer}",
    }, tmp_path / "data")
    endpoint = f"http://127.0.0.1:{client}"
    log = tmp_path / "etcd.log"
    with _running([tmp_path / "etcd.conf.yml"], [log]):
        _wait_healthy(endpoint, log)
        key = "/rmeeting/meetings/m1/controls/camera"
        _etcdctl(endpoint, "put", key, "false")
        assert _etcdctl(endpoint, "get", "--print-value-only", key).strip() == "false"
    _check_effective(config, log)


def test_cluster_configs_form_a_three_member_cluster(tmp_path: Path) -> None:
    ports = free_ports(6)
    client, peer = ports[:3], ports[3:]
    configs, paths, logs = [], [], []
    for i, path in enumerate(CLUSTER):
        replace = {f"http://etcd{j + 1}:2380": f"http://127.0.0.1:{peer[j]}" for j in range(3)}
        replace[f"http://etcd{i + 1}:2379"] = f"http://127.0.0.1:{client[i]}"
        replace["http://0.0.0.0:2379"] = f"http://127.0.0.1:{client[i]}"
        replace["http://0.0.0.0:2380"] = f"http://127.0.0.1:{peer[i]}"
        paths.append(tmp_path / f"etcd{i + 1}.conf.yml")
        logs.append(tmp_path / f"etcd{i + 1}.log")
        configs.append(_template(path, paths[-1], replace, tmp_path / f"etcd{i + 1}"))
    endpoints = [f"http://127.0.0.1:{port}" for port in client]
    with _running(paths, logs, graceful=False):
        for endpoint, log in zip(endpoints, logs, strict=True):
            _wait_healthy(endpoint, log)  # /health needs a leader: the members found each other
        members = json.loads(_etcdctl(",".join(endpoints), "member", "list", "-w", "json"))
        assert sorted(m["name"] for m in members["members"]) == ["etcd1", "etcd2", "etcd3"]
        key = "/rmeeting/meetings/m1/controls/mic"
        _etcdctl(endpoints[0], "put", key, "off")
        assert _etcdctl(endpoints[2], "get", "--print-value-only", key).strip() == "off"
    for config, log in zip(configs, logs, strict=True):
        _check_effective(config, log)
