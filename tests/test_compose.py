"""compose.yaml: valid for docker-compose, and the same cluster as the local launcher.

There is no Docker engine on these machines. ``docker-compose config`` (Debian's package
docker-compose) validates the file offline; the rest checks that what compose would run agrees
with ``rmeeting cluster`` (rmeeting/cluster/launcher.py), the nginx configs, the etcd configs and
rmeeting's settings, so the two ways to run a cluster cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from rmeeting.cluster.launcher import LOCATIONS, Nginx
from rmeeting.cluster.processes import RedisServer
from rmeeting.config import ENV_PREFIX, Config, load_config

from .test_etcd_configs import read_etcd_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_NGINX = ROOT / "deploy" / "nginx" / "compose.conf"
#: where compose.conf includes the shared proxy rules from, inside the nginx container
LOCATIONS_IN_CONTAINER = "/etc/nginx/rmeeting-locations.conf"
PORT = 8080


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not installed: this test validates compose.yaml with "
            "`docker-compose config` (offline, no Docker engine needed). On Debian: "
            "apt-get install --no-install-recommends docker-compose"
        )
    return path


def _parse_yaml(text: str, compose_binary: str) -> Any:
    """PyYAML if this Python has it, else the Python docker-compose runs on (it needs PyYAML)."""
    try:
        import yaml
    except ImportError:
        return _parse_yaml_with_compose_python(text, compose_binary)
    return yaml.safe_load(text)


def _parse_yaml_with_compose_python(text: str, compose_binary: str) -> Any:
    first = Path(compose_binary).read_bytes().split(b"\n", 1)[0].decode()
    if not first.startswith("#!") or "python" not in first:
        pytest.fail(f"cannot parse YAML: no PyYAML here and {compose_binary} is not Python")
    done = subprocess.run(
        [*first[2:].split(), "-c",
         "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text.encode(), capture_output=True, timeout=30, check=True,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as docker-compose resolves it (anchors merged, paths absolute)."""
    binary = _docker_compose()
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        capture_output=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 0, f"docker-compose config rejects compose.yaml:\n" \
        f"{done.stderr.decode()}"
    resolved: dict[str, Any] = _parse_yaml(done.stdout.decode(), binary)
    return resolved


def _services(compose: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    if kind == "rmeeting":
        return {n: s for n, s in services.items() if "build" in s}
    if kind == "etcd":
        return {n: s for n, s in services.items() if "etcd" in s.get("image", "")}
    return {n: s for n, s in services.items() if s.get("image", "").startswith(kind + ":")}


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    """Target in the container -> source (an absolute path or a volume's name)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[target] = source
    return out


def _upstreams(nginx_conf: str) -> list[str]:
    block = re.search(r"upstream\s+rmeeting\s*\{(.*?)\}", nginx_conf, re.S)
    assert block, "no `upstream rmeeting` block"
    return re.findall(r"^\s*server\s+([^;]+);", block[1], re.M)


def _instance_config(service: dict[str, Any]) -> Config:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return load_config(env={k: str(v) for k, v in env.items()})


def _docker_instructions() -> dict[str, list[str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_compose_file_is_valid(compose: dict[str, Any]) -> None:
    assert set(_services(compose, "etcd")) == {"etcd1", "etcd2", "etcd3"}
    assert set(_services(compose, "rmeeting")) == {"rmeeting1", "rmeeting2", "rmeeting3"}
    assert set(_services(compose, "redis")) == {"redis"}
    assert set(_services(compose, "nginx")) == {"nginx"}


def test_every_service_has_a_health_check_and_waits_for_its_dependencies(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    needs = {*_services(compose, "etcd"), *_services(compose, "redis")}
    for name, service in _services(compose, "rmeeting").items():
        assert service["depends_on"] == {n: {"condition": "service_healthy"} for n in needs}, name
    (nginx,) = _services(compose, "nginx").values()
    assert nginx["depends_on"] == {
        n: {"condition": "service_healthy"} for n in _services(compose, "rmeeting")
    }


def test_nginx_upstreams_are_the_rmeeting_services(compose: dict[str, Any]) -> None:
    conf = COMPOSE_NGINX.read_text()
    servers = _upstreams(conf)
    hosts = [server.split()[0] for server in servers]
    assert sorted(hosts) == sorted(f"{name}:{PORT}" for name in _services(compose, "rmeeting"))
    # the same per-server options as the local launcher's generated config
    local = _upstreams(Nginx(ROOT).config([1111, 2222]))
    assert {s.split(None, 1)[1] for s in servers} == {s.split(None, 1)[1] for s in local}


def test_nginx_uses_the_launchers_proxy_rules(compose: dict[str, Any]) -> None:
    (nginx,) = _services(compose, "nginx").values()
    mounts = _volumes(nginx)
    assert Path(mounts["/etc/nginx/nginx.conf"]).resolve() == COMPOSE_NGINX.resolve()
    assert Path(mounts[LOCATIONS_IN_CONTAINER]).resolve() == LOCATIONS.resolve()
    conf = COMPOSE_NGINX.read_text()
    local = Nginx(ROOT).config([1111])
    assert re.search(rf"include\s+{re.escape(LOCATIONS_IN_CONTAINER)};", conf)
    assert f"include {LOCATIONS};" in local
    # what the shared rules need from the file that includes them: the upstream they proxy to
    # and the $connection_upgrade map for the WebSocket upgrade
    rules = LOCATIONS.read_text()
    assert "proxy_pass http://rmeeting;" in rules and "$connection_upgrade" in rules
    upgrade_map = "map $http_upgrade $connection_upgrade { default upgrade; '' close; }"
    assert upgrade_map in conf and upgrade_map in local
    # nginx listens on 8080 and compose publishes that port
    assert re.search(rf"^\s*listen\s+{PORT};", conf, re.M)
    assert [(p["target"], p.get("published")) for p in nginx["ports"]] in (
        [(PORT, PORT)], [(PORT, str(PORT))]
    )


def test_instances_use_real_settings_and_the_launchers_defaults(compose: dict[str, Any]) -> None:
    settings = {f.name for f in fields(Config)} - {"extra"}
    etcd_clients = sorted(
        read_etcd_config(_etcd_config_file(s))["advertise-client-urls"]
        for s in _services(compose, "etcd").values()
    )
    (redis_name,) = _services(compose, "redis")
    ids = set()
    for name, service in _services(compose, "rmeeting").items():
        env = service["environment"]
        for key in env:
            assert key.startswith(ENV_PREFIX), f"{name}: {key} is not an RMEETING_ variable"
            assert key[len(ENV_PREFIX):].lower() in settings, f"{name}: {key} is no setting"
        config = _instance_config(service)
        assert config.cluster
        assert sorted(config.etcd) == etcd_clients, f"{name} must list every etcd member"
        redis = urlsplit(config.redis)
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", redis_name, 6379)
        assert config.host_port == ("0.0.0.0", PORT)
        ids.add(config.instance_id)
        # the launcher's instances use the default prefixes, and so do etcd/README.md and
        # the scenario tests' etcdctl flips (/rmeeting/meetings/...)
        assert config.etcd_prefix == Config().etcd_prefix == "/rmeeting"
        assert config.redis_prefix == Config().redis_prefix
    assert ids == set(_services(compose, "rmeeting")), "each instance is named after its service"


def test_instances_are_built_from_the_repos_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in _services(compose, "rmeeting").items():
        build = service["build"]
        assert Path(build["context"]).resolve() == ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert "8080/readyz" in " ".join(service["healthcheck"]["test"]), name
    docker = _docker_instructions()
    assert docker["FROM"] == ["python:3.11-slim"]
    assert any('pip install ".[cluster]"' in run for run in docker["RUN"])
    assert docker["USER"] and docker["USER"][-1] not in ("root", "0")
    assert docker["EXPOSE"] == [str(PORT)]
    assert json.loads(docker["CMD"][-1]) == ["rmeeting", "serve", "--bind", f"0.0.0.0:{PORT}"]
    (healthcheck,) = docker["HEALTHCHECK"]
    assert f"127.0.0.1:{PORT}/healthz" in healthcheck and "urllib" in healthcheck


def _etcd_config_file(service: dict[str, Any]) -> Path:
    command = service["command"]
    inside = command[command.index("--config-file") + 1]
    return Path(_volumes(service)[inside])


def test_etcd_members_run_the_configs_in_etcd_dir(compose: dict[str, Any]) -> None:
    members = _services(compose, "etcd")
    for name, service in members.items():
        path = _etcd_config_file(service)
        assert path.resolve() == (ROOT / "etcd" / f"etcd-cluster-{name[-1]}.conf.yml").resolve()
        config = read_etcd_config(path)
        assert config["name"] == name
        assert urlsplit(config["advertise-client-urls"]).hostname == name
        peers = dict(item.split("=", 1) for item in config["initial-cluster"].split(","))
        assert set(peers) == set(members), f"{name}'s initial-cluster is not the etcd services"
        assert all(urlsplit(url).hostname == peer for peer, url in peers.items())
        # its data lives in a volume, not in the container
        data_dir = Path(config["data-dir"])
        assert any(data_dir.is_relative_to(target) and not source.startswith("/")
                   for target, source in _volumes(service).items()), name


@pytest.mark.redis
def test_redis_keeps_an_append_only_file_like_the_launchers(
    compose: dict[str, Any], tmp_path: Path,
) -> None:
    (redis,) = _services(compose, "redis").values()
    command = redis["command"]
    if isinstance(command, str):
        command = command.split()
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options.get("--appendonly") == "yes"
    assert options.get("--appendfsync") in ("everysec", "always")
    assert "/data" in _volumes(redis), "the append-only file must live in a volume"
    # the launcher's Redis, asked directly
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = server.client()
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("save") == {"save": options.get("--save", "")}
        finally:
            client.close()
    finally:
        server.stop()


def test_yaml_fallback_parser_agrees(compose: dict[str, Any]) -> None:
    """Without PyYAML the file is parsed by docker-compose's own Python: the same result."""
    binary = _docker_compose()
    done = subprocess.run([binary, "-f", str(COMPOSE), "config"], capture_output=True,
                          timeout=60, cwd=ROOT, check=True)
    assert _parse_yaml_with_compose_python(done.stdout.decode(), binary) == compose


#: nginx variables that hold the query string, where credentials travel (docs/security.md)
_QUERY_VARIABLES = re.compile(r"\$(request|request_uri|args|query_string|arg_\w+)\b")


def _http_block(conf: str) -> str:
    match = re.search(r"^http\s*\{(.*)^\}", conf, re.M | re.S)
    assert match, conf
    return match.group(1)


@pytest.mark.parametrize("name", ["compose.conf", "the launcher's"])
def test_no_nginx_config_logs_the_query_string(name: str) -> None:
    """nginx's default access log writes the request line, query string and all: host keys,
    tokens, userUids, access tokens and tickets would end up in it. Every config sets its own
    access log (off, or a format of its own), and no format or log names a query variable."""
    conf = COMPOSE_NGINX.read_text() if name == "compose.conf" else Nginx(ROOT).config([1111])
    rules = LOCATIONS.read_text()
    http = _http_block(conf)
    logs = re.findall(r"^\s*access_log\s+([^;]*);", http, re.M)
    assert logs, f"{name} keeps nginx's default access log (the whole request line)"
    formats = dict(re.findall(r"^\s*log_format\s+(\w+)\s+(.*?);", http, re.M | re.S))
    for log in logs:
        words = log.split()
        assert words == ["off"] or (len(words) >= 2 and words[1] in formats), (
            f"{name}: access_log {log} uses nginx's default format")
    for text in [*formats.values(), *logs]:
        assert not _QUERY_VARIABLES.search(text), text
    assert "access_log" not in rules and "log_format" not in rules
    assert not _QUERY_VARIABLES.search(rules)
