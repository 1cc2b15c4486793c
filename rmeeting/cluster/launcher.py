"""A local cluster for machines without Docker: etcd, Redis, N rmeeting instances and nginx.

Redis is one server, or with ``redis_cluster=True`` a Redis Cluster of 3 primaries with a replica
each (:class:`~rmeeting.cluster.redis_cluster.RedisClusterServer`); the instances get the same
``--redis`` either way (the cluster's node URLs, comma-separated) and find out which it is.

``rmeeting cluster`` runs one on loopback, prints its URLs and stops everything on Ctrl-C. The
tests and the benchmarks use the same :class:`LocalCluster`, so what they measure is what an
operator runs. Every process is a child of this one, on free ports, with its files in one
temporary directory; :meth:`LocalCluster.stop` always ends them all. Children run in sessions
of their own, so a terminal's Ctrl-C reaches only the launcher, which stops them in order.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .processes import EtcdServer, RedisServer, free_ports
from .redis_cluster import RedisClusterServer

__all__ = ["Instance", "LocalCluster", "Nginx"]

ROOT = Path(__file__).resolve().parents[2]
LOCATIONS = ROOT / "deploy" / "nginx" / "rmeeting-locations.conf"
START_DEADLINE = 20.0


@dataclass
class Instance:
    """One ``rmeeting serve`` child process (cluster mode when given etcd and Redis)."""

    name: str
    etcd: str
    redis: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start (on the port it had before, if any) and wait for its "listening on" line."""
        assert not self.running
        bind = f"127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "rmeeting", "serve", "--bind", bind,
                   "--instance-id", self.name]
        if self.etcd:
            command += ["--etcd", self.etcd]
        if self.redis:
            command += ["--redis", self.redis]
        # behind nginx every client comes from nginx's address: a per-address connection cap
        # would cap the whole instance, so it is nginx's to apply (docs/security.md)
        env = {**os.environ, "RMEETING_LOG_FORMAT": "json",
               "RMEETING_MAX_CONNECTIONS_PER_IP": "0", **self.env}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env
            )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + START_DEADLINE
        line = b""
        while not line.endswith(b"\n"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"instance {self.name} did not start; see {self.log_path}")
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.1)
            if ready:
                line += os.read(self._proc.stdout.fileno(), 1)
        self.port = int(line.decode().rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: the instance vanishes without a word, as on a crashed host."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._close()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a graceful drain), SIGKILL past ``timeout``; returns the exit code."""
        if self._proc is None:
            return None
        self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait(timeout=10)
        self._close()
        return code

    def _close(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None


class Nginx:
    """nginx in front of the instances: round-robin, WebSocket upgrade, the shared proxy rules."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                           else None)
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        self._binary = binary
        self.dir = directory
        self.port = port or free_ports(1)[0]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, upstreams: list[int]) -> str:
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in upstreams
        )
        tmp = self.dir
        return f"""# generated by rmeeting.cluster.launcher; proxy rules: {LOCATIONS}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream rmeeting {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        include {LOCATIONS};
    }}
}}
"""

    def start(self, upstreams: list[int]) -> None:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config(upstreams))
        command = [self._binary, "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"]
        if os.geteuid() == 0:
            # as root nginx would switch its workers to "nobody"; keep them as this user
            command[-1] = "daemon off; user root;"
        with open(self.dir / "nginx-stderr.log", "ab") as log:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=log,
                                          start_new_session=True)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.dir / 'nginx-error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None


class LocalCluster:
    """etcd + Redis (or a Redis Cluster) + ``size`` instances + nginx, all on loopback. Use as
    a context manager."""

    def __init__(self, size: int = 3, *, port: int = 0, directory: Path | None = None,
                 env: dict[str, str] | None = None, redis_cluster: bool = False) -> None:
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="rmeeting-cluster-"))
        self.etcd = EtcdServer(self.dir / "etcd")
        self.redis: RedisServer | RedisClusterServer = (
            RedisClusterServer(self.dir / "redis-cluster") if redis_cluster
            else RedisServer(self.dir / "redis"))
        self.nginx = Nginx(self.dir, port)
        self.size = size
        self.env = env or {}
        self.instances: list[Instance] = []

    @property
    def url(self) -> str:
        return self.nginx.url

    def start(self) -> LocalCluster:
        try:
            self.etcd.start()
            self.redis.start()
            for i in range(self.size):
                self.add_instance(f"i{i + 1}")
            self.nginx.start([inst.port for inst in self.instances])
        except BaseException:
            self.stop()
            raise
        return self

    def add_instance(self, name: str) -> Instance:
        """Start one more instance (nginx does not learn of it: reach it at ``instance.url``)."""
        instance = Instance(name, self.etcd.endpoint, self.redis.url,
                            self.dir / f"{name}.log", env=dict(self.env))
        instance.start()
        self.instances.append(instance)
        return instance

    def stop(self) -> None:
        for instance in self.instances:
            instance.kill() if not instance.running else instance.stop(timeout=5)
        self.nginx.stop()
        self.redis.stop()
        self.etcd.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
