"""One rmeeting instance: stores, hub, service, HTTP app and the front door, in one nursery."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from . import auth, wire
from .api.app import create_app, ws_router
from .closes import Close
from .cluster.tasks import ClusterTasks
from .config import Config
from .hub import Hub
from .instance_metrics import InstanceMetrics
from .lifecycle import Lifecycle
from .service import MeetingService
from .stores.base import ChatLog, MeetingStore, MemberStore
from .stores.memory import MemoryChatLog, MemoryMeetingStore, MemoryMemberStore
from .transport.frontdoor import FrontDoor, FrontDoorLimits, WsLimits
from .transport.http_bridge import HttpBridge
from .webhooks import make_webhooks

__all__ = ["RunningServer", "open_stores", "serve_rmeeting"]

log = logging.getLogger("rmeeting.server")


@dataclass
class Stores:
    meetings: MeetingStore
    members: MemberStore
    chat: ChatLog


@asynccontextmanager
async def open_stores(
    config: Config, *, on_relay_state: Callable[[bool], None] | None = None
) -> AsyncIterator[Stores]:
    """Memory stores unless etcd / Redis addresses are configured; closed on exit.
    ``on_relay_state``: told when the Redis chat relay goes down or comes back."""
    closers: list[Any] = []
    meetings: MeetingStore = MemoryMeetingStore(audit_limit=config.audit_limit)
    members: MemberStore = MemoryMemberStore()
    chat: ChatLog = MemoryChatLog(history_limit=config.history_limit)
    try:
        if config.etcd:
            from .stores.etcd import EtcdMeetingStore

            etcd_meetings = EtcdMeetingStore(list(config.etcd), prefix=config.etcd_prefix,
                                             audit_limit=config.audit_limit,
                                             retention=config.retention)
            closers.append(etcd_meetings)
            meetings = etcd_meetings
        if config.redis:
            from .stores.redis import RedisChatLog, RedisMemberStore

            redis_members = RedisMemberStore(config.redis, prefix=config.redis_prefix)
            closers.append(redis_members)
            redis_chat = RedisChatLog(
                config.redis, prefix=config.redis_prefix, history_limit=config.history_limit,
                on_relay_state=on_relay_state,
            )
            closers.append(redis_chat)
            members, chat = redis_members, redis_chat
        yield Stores(meetings, members, chat)
    finally:
        with trio.CancelScope(shield=True):
            for store in closers:
                await store.aclose()


@dataclass
class RunningServer:
    host: str
    port: int
    instance_id: str
    service: MeetingService
    hub: Hub
    shutdown: trio.Event

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


async def serve_rmeeting(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set (or this task is cancelled), then drain: no more joins
    (``/readyz`` answers 503), members are closed and get ``shutdown_grace`` seconds to go, and
    their leaves are recorded. The close code says where to go: 1012 (service restart) in
    cluster mode, where another instance takes them in; 1001 (going away) when embedded."""
    shutdown = trio.Event() if shutdown is None else shutdown
    instance_id = config.instance_id or auth.new_id()
    cluster = ClusterTasks(config)  # liveness, relay outages: only what the config calls for
    async with open_stores(config, on_relay_state=cluster.on_relay_state) as stores, \
            trio.open_nursery() as nursery:
        metrics = InstanceMetrics()
        hub = Hub(config.shards, encoders=wire.encoders(),
                  on_controls_delivered=metrics.on_controls_delivered)
        webhooks = make_webhooks(config, instance_id)  # None without webhook_urls
        service = MeetingService(
            config,
            meetings=stores.meetings,
            members=stores.members,
            chat=stores.chat,
            hub=hub,
            instance_id=instance_id,
            metrics=metrics,
            webhooks=webhooks,
        )

        async def ready() -> bool:
            return (
                service.accepting
                and await stores.meetings.ready()
                and await stores.members.ready()
                and await stores.chat.ready()
            )

        from .api.v1_ws import v1_session  # noqa: PLC0415 - the v1 protocol is optional here

        app = create_app(service, ready=ready)
        bridge = HttpBridge(app, keep_alive_timeout=config.keep_alive_timeout,
                            read_timeout=config.read_timeout,
                            max_head_bytes=config.max_head_bytes)
        limits = WsLimits(
            max_message=config.max_frame_bytes,
            max_buffer=config.outbox_bytes,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )
        door = FrontDoorLimits(
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            max_head_bytes=config.max_head_bytes,
            head_timeout=config.head_timeout,
        )
        front = FrontDoor(bridge, ws_router(service, v1_session), limits, door)
        metrics.bind(instance_id=instance_id, cluster=config.cluster, hub=hub,
                     meetings=stores.meetings, chat=stores.chat, service=service,
                     tcp_connections=lambda: front.connections)
        await nursery.start(hub.serve)
        if webhooks is not None:  # before the stores' events: the first ones are sent too
            metrics.bind_webhooks(webhooks)
            await nursery.start(webhooks.serve)
        await nursery.start(stores.meetings.serve_events, service.on_meeting_event)
        on_bus_event = await cluster.start(nursery, service, stores.meetings)
        await nursery.start(stores.chat.serve, on_bus_event)
        await nursery.start(Lifecycle(service).serve)  # empty_timeout, max_duration, retention
        await nursery.start(bridge.serve)
        host, port = config.host_port
        bound_host, bound_port = await nursery.start(front.serve, host, port)
        running = RunningServer(bound_host, bound_port, instance_id, service, hub, shutdown)
        log.info("listening", extra={"url": running.url, "instance": instance_id})
        cluster.announce(running.url)
        task_status.started(running)
        try:
            await shutdown.wait()
        finally:
            with trio.CancelScope(shield=True), \
                    trio.move_on_after(config.shutdown_grace) as grace:
                await _drain(service, hub, cluster=config.cluster)
            if webhooks is not None:  # the drain's leaves too: into the outbox (2 s at most)
                with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                    await webhooks.flush()
            if grace.cancelled_caught:
                log.warning("shutdown_grace passed: %d member(s) cut off",
                            hub.statistics()["members"])
            nursery.cancel_scope.cancel()


async def _drain(service: MeetingService, hub: Hub, *, cluster: bool) -> None:
    service.accepting = False  # joins are refused (1012 "draining") and /readyz says 503
    code = Close.RESTART if cluster else Close.GOING_AWAY
    log.info("draining", extra={"members": hub.statistics()["members"], "close_code": code})
    if cluster:
        await hub.close_all(Close.RESTART, "instance restarting: reconnect")
    else:
        await hub.close_all(Close.GOING_AWAY, "server shutting down")
    await hub.wait_empty()
    log.info("drained")
