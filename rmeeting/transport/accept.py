"""The accept loop and the connection caps of the front door.

Why not ``trio.serve_listeners``: its ``SocketListener`` hands out ``trio.SocketStream``s, and the
WebSocket hot path needs the plain non-blocking stdlib socket (a shard writes to it without
awaiting, docs/architecture.md); and on a capacity error it logs, with a traceback, and retries
every 100 ms for as long as the error lasts. This loop handles the same errnos the same way
(a capacity error pauses accepting instead of ending the server; any other error ends it) but
backs off up to :data:`MAX_PAUSE` and logs once per episode, not ten times a second.
With the caps below the process normally never gets there: they refuse a connection before
file descriptors run out.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from collections.abc import Callable

import trio

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "ConnectionCaps", "raise_fd_limit", "serve_accept"]

log = logging.getLogger("rmeeting.frontdoor")

#: the errnos trio's serve_listeners treats as "out of capacity, try again later"
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
FIRST_PAUSE = 0.1
MAX_PAUSE = 2.0


class ConnectionCaps:
    """Counts open connections, in all and per client address; 0 turns a cap off."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.refused = 0
        self._by_address: dict[str, int] = {}

    def acquire(self, address: str) -> str | None:
        """Count a new connection from ``address``; or say why it is refused (not counted)."""
        if self.total and self.open >= self.total:
            self.refused += 1
            return "too many connections"
        held = self._by_address.get(address, 0)
        if self.per_address and held >= self.per_address:
            self.refused += 1
            return "too many connections from this address"
        self.open += 1
        self._by_address[address] = held + 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        held = self._by_address[address] - 1
        if held:
            self._by_address[address] = held
        else:
            del self._by_address[address]


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (never above the hard limit, never
    down); the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - a platform that refuses
            pass
    return soft


async def serve_accept(
    listener: socket.socket,
    on_connection: Callable[[socket.socket, tuple[str, int]], None],
) -> None:
    """Accept on the non-blocking ``listener`` until cancelled; ``on_connection`` gets each new
    (non-blocking, TCP_NODELAY) socket and its peer address and must not block."""
    failures = 0
    pause = FIRST_PAUSE
    while True:
        await trio.lowlevel.wait_readable(listener)
        try:
            conn, addr = listener.accept()
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            if failures == 0:
                log.error("accept failed: %s; pausing (new connections wait in the backlog)",
                          exc.strerror)
            failures += 1
            await trio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
            continue
        if failures:
            log.warning("accept works again after %d failed attempt(s)", failures)
            failures, pause = 0, FIRST_PAUSE
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        on_connection(conn, (addr[0], addr[1]))
