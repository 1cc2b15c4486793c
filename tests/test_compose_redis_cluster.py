"""compose.redis-cluster.yaml over compose.yaml: valid for docker-compose, and the same Redis
Cluster as ``rmeeting cluster --redis-cluster`` (rmeeting/cluster/redis_cluster.py).

Validated offline like compose.yaml (tests/test_compose.py): ``docker-compose -f compose.yaml
-f compose.redis-cluster.yaml config`` resolves the two files into the cluster compose would run.
"""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from rmeeting.cluster.redis_cluster import RedisClusterServer
from rmeeting.stores.redis_link import split_urls

from .test_compose import (
    COMPOSE,
    ROOT,
    _docker_compose,
    _instance_config,
    _parse_yaml,
    _services,
    _volumes,
)

OVERRIDE = ROOT / "compose.redis-cluster.yaml"
INIT = "redis-cluster-init"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    binary = _docker_compose()
    done = subprocess.run([binary, "-f", str(COMPOSE), "-f", str(OVERRIDE), "config"],
                          capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, f"docker-compose config rejects the override:\n" \
        f"{done.stderr.decode()}"
    resolved: dict[str, Any] = _parse_yaml(done.stdout.decode(), binary)
    return resolved


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services(compose, "redis").items() if name != INIT}


def test_the_nodes_are_the_launchers_cluster(compose: dict[str, Any]) -> None:
    nodes = _nodes(compose)
    launcher = RedisClusterServer(primaries=3, replicas=1)
    try:
        assert len(nodes) == len(launcher.nodes) == 6
        local = dict(zip(launcher.nodes[0].extra_args[::2], launcher.nodes[0].extra_args[1::2],
                         strict=True))
    finally:
        launcher.stop()
    data = set()
    for name, node in nodes.items():
        command = _command(node)
        options = dict(zip(command[1::2], command[2::2], strict=False))
        assert options["--cluster-enabled"] == local["--cluster-enabled"] == "yes", name
        assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
        # nodes.conf and the append-only file live in a volume of the node's own
        config_file = options["--cluster-config-file"]
        source = _volumes(node)["/data"]
        assert config_file.startswith("/data/") and not source.startswith("/"), name
        data.add(source)
        assert node["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert len(data) == len(nodes), "two nodes share a volume"


def test_the_cluster_is_created_once_before_the_instances_start(compose: dict[str, Any]) -> None:
    init = compose["services"][INIT]
    script = " ".join(_command(init))
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert "cluster_state:ok" in script  # a cluster that already exists is left alone
    assert all(name in script for name in _nodes(compose))
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in _nodes(compose)}
    assert init.get("restart", "no") == "no"
    for service in _services(compose, "rmeeting").values():
        assert service["depends_on"][INIT] == {"condition": "service_completed_successfully"}


def test_instances_are_given_every_node(compose: dict[str, Any]) -> None:
    for name, service in _services(compose, "rmeeting").items():
        config = _instance_config(service)  # the real settings loader accepts the list
        urls = split_urls(config.redis)
        assert {urlsplit(u).hostname for u in urls} == set(_nodes(compose)), name
        assert {(urlsplit(u).scheme, urlsplit(u).port) for u in urls} == {("redis", 6379)}
