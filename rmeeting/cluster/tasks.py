"""The tasks an instance runs only in cluster mode, started by ``serve_rmeeting``.

- with Redis: :class:`~rmeeting.cluster.relay_watch.ChatRelayWatch` (chat outages told to the
  members, missed chat caught up, presences re-registered);
- with etcd: :class:`~rmeeting.cluster.liveness.Liveness` (this instance's lease, the clean-up
  after lost instances).

Embedded, none of them runs and nothing here imports a cluster dependency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ..config import Config
from ..events import BusEvent
from ..service import MeetingService
from .presence import Presence
from .relay_watch import ChatRelayWatch

if TYPE_CHECKING:
    from .liveness import Liveness

__all__ = ["ClusterTasks"]


class ClusterTasks:
    """Create before the stores (the Redis chat log needs :attr:`on_relay_state`), then
    :meth:`start` before the chat log's ``serve``, and :meth:`announce` once listening."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.relay_watch = ChatRelayWatch() if config.redis else None
        self.liveness: Liveness | None = None
        self.presence: Presence | None = None

    @property
    def on_relay_state(self) -> Callable[[bool], None] | None:
        return self.relay_watch.on_relay_state if self.relay_watch is not None else None

    async def start(
        self, nursery: trio.Nursery, service: MeetingService, meetings: object = None
    ) -> Callable[[BusEvent], Awaitable[None]]:
        """Start what the config calls for; returns the handler for the chat log's events.
        ``meetings``: the meeting store; etcd's is told which instance records each change
        that every instance observed."""
        self.presence = presence = Presence(service)
        handler: Callable[[BusEvent], Awaitable[None]] = service.on_bus_event
        if self.relay_watch is not None:
            await nursery.start(self.relay_watch.serve, service, presence)
            handler = self.relay_watch.gate(handler)
        if self._config.etcd:
            from .liveness import Liveness  # noqa: PLC0415 - needs the cluster extra (etcd3)

            liveness = self.liveness = Liveness(self._config, presence)
            await nursery.start(liveness.serve)
            audits = getattr(meetings, "observed_audits", None)
            if audits is not None:  # etcd's: one live instance records each operator change
                audits.writes_now = liveness.writes_audit
        return handler

    def announce(self, url: str) -> None:
        """The URL this instance serves at, for its liveness record."""
        if self.liveness is not None:
            self.liveness.announce(url)
