"""Real etcd and Redis server processes on free loopback ports: killable, restartable, always
stopped. The local cluster launcher and the tests share them, so tests run what operators run.

Never the system's services: each server here is a child process on ports picked at start, with
its data in a directory of its own.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["EtcdServer", "RedisServer", "free_ports"]

BINARY = "redis-server"
#: a Redis Cluster node also listens on its port + 10000 (the cluster bus)
CLUSTER_BUS_OFFSET = 10000
START_DEADLINE = 10.0


#: the lowest port :func:`free_ports` picks (below it: well-known and registered services)
LOWEST_PORT = 10000


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections and ``bind(0)`` (Linux's default if the
    system does not say)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int, *, and_plus: int = 0) -> list[int]:
    """Distinct loopback ports, free when picked (all held open until all are picked); with
    ``and_plus``, each port that much higher is free too (a Redis Cluster node's bus port).

    They are picked below the kernel's ephemeral range: a port is handed to a child process
    (or a test's receiver) that binds it later, and meanwhile any outgoing connection on the
    machine (a cluster's gRPC, Redis and webhook clients) could take one from that range as
    its own local port; the later bind would fail with EADDRINUSE. Where the range leaves no
    room below it, they come from the kernel (``bind(0)``)."""
    low, _high = _ephemeral_range()
    top = low - and_plus
    room = top - LOWEST_PORT > 1000
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _attempt in range(100 * count + 100):
            group = _hold(random.randrange(LOWEST_PORT, top) if room else 0, and_plus)
            if group:
                held += group
                ports.append(group[0].getsockname()[1])
            if len(ports) == count:
                return ports
        raise OSError(f"no {count} free loopback ports found below {top}")
    finally:
        for s in held:
            s.close()


def _hold(port: int, and_plus: int) -> list[socket.socket]:
    """Sockets bound to ``port`` and (if both are given) ``port + and_plus``; none if either
    is taken."""
    held: list[socket.socket] = []
    for wanted in [port, port + and_plus] if port and and_plus else [port]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.close()
            for other in held:
                other.close()
            return []
        held.append(s)
    return held


class RedisServer:
    """One redis-server child process; ``stop()`` (or the context manager) always ends it."""

    def __init__(self, directory: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise RuntimeError(f"{BINARY} not found on PATH: the Redis tests need a real server")
        self._binary = binary
        self._own_dir = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="rmeeting-redis-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.port = 0
        #: more redis-server options, after the defaults (a later option wins): cluster mode
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        # The port is free when picked but could be taken before redis binds it: pick again.
        bus = CLUSTER_BUS_OFFSET if "--cluster-enabled" in self.extra_args else 0
        for _ in range(5):
            self.port = free_ports(1, and_plus=bus)[0]
            if self._spawn():
                return
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    def restart(self) -> None:
        """Start again on the same port and directory (the AOF is reloaded)."""
        if self.running:
            self.kill()
        for _ in range(50):  # the old socket may linger a moment after a SIGKILL
            if self._spawn():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not restart on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what was fsynced survives."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(5)
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> Any:
        """A sync redis-py client (the ``cluster`` extra installs redis-py)."""
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2
        )

    def flushall(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> bool:
        """Start the process and wait until it answers PING; False if it exited (port taken)."""
        with open(self.dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(
                [
                    self._binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "always",
                    "--dir", str(self.dir),
                    "--daemonize", "no",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self._answers_ping():
                return True
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within the deadline")

    def _answers_ping(self) -> bool:
        # RESP by hand: the launcher must not need redis-py. A Redis still replaying its AOF
        # answers -LOADING, which is not yet ready.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: the etcd tests need a real etcd")
    return path


class EtcdServer:
    """One single-member etcd with its data in ``data_dir``; same ports across restarts."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._etcd = _binary("etcd")
        self._etcdctl = _binary("etcdctl")
        self.client_port, self.peer_port = free_ports(2)
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log = data_dir.parent / f"{data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def _command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self._etcd,
            "--name", "default",
            "--data-dir", str(self.data_dir),
            # Fast elections and lease expiry checks, so a restart and a ttl=1 lease are quick.
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
        ]

    def start(self) -> None:
        """Start and wait until healthy; on a port clash (picked ports taken meanwhile) pick
        new ports, unless this is a restart (which must keep its ports)."""
        for attempt in range(3):
            try:
                self._start()
                return
            except RuntimeError:
                self.stop()
                if attempt == 2 or self._started_once:
                    raise
                self.client_port, self.peer_port = free_ports(2)

    def _start(self) -> None:
        assert self._process is None, "already running"
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_healthy()
        self._started_once = True

    def _wait_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_DEADLINE
        url = f"{self.endpoint}/health"
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                raise RuntimeError(f"etcd exited with {code}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=0.5) as response:
                    if b'"true"' in response.read():
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy after {START_DEADLINE}s: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, like a crashed host."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)
        self._process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._process = None
