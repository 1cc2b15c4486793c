"""Sharded pub/sub over a Redis Cluster for the relay's listener thread (``_redis_relay``).

A meeting's channel ``P:c:{M}`` carries the meeting's hash tag, so it is a shard channel of the
meeting's slot: the publish script ``SPUBLISH``es it on that slot's primary, and only that shard
(the primary and its replicas) carries it. ``ShardedPubSub`` ``SSUBSCRIBE``s each wanted channel
on the primary that holds its slot, over one connection per such primary, opened when the first
channel there is wanted and closed when the last one goes, and waits on all of them at once with
``select``.

It looks, to the listener thread, like the part of redis-py's ``PubSub`` it uses (``subscribe``,
``unsubscribe``, ``get_message``, ``ping``, ``close``, ``channels``), with sharded message types
renamed to the plain ones, so the thread's reconnect, confirm and backpressure logic is the same
for both kinds of Redis. Why not redis-py's own ``ClusterPubSub``: its ``get_sharded_message``
polls the nodes one after the other (a message on one node waits out the others' timeouts) and it
reconciles slot moves in a thread pool of its own, behind the listener's back; the listener needs
one wait on every connection and every topology change reported as an outage (below).

Topology changes are outages here: a node's connection that fails (a primary killed, before its
replica takes over), a ``MOVED`` or ``ASK`` answer to ``SSUBSCRIBE`` (a stale slot map), or a
``sunsubscribe`` the relay did not ask for (Redis 7 unsubscribes a slot's shard channels when the
slot moves to another node) all raise, and the listener drops every connection, reports the relay
down, reloads the slot map and subscribes again where the channels now live. Whatever was
published meanwhile is caught up from history by the relay's owner, as after a Redis restart.

The one seam into redis-py's internals: ``select`` needs each connection's socket, which redis-py
does not expose publicly (``Connection._sock``); ``_socket`` is the only place that reads it.
"""

from __future__ import annotations

import select
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster

__all__ = ["ShardedPubSub", "SlotMoved"]

#: A node connection silent this long gets a PING; no answer within as long again: it is dead.
IDLE_PING = 5.0


class SlotMoved(redis.ConnectionError):
    """Redis unsubscribed a channel the relay still wants: its slot moved to another node."""


@dataclass
class _Node:
    pubsub: Any  # redis.client.PubSub on one primary
    channels: set[bytes] = field(default_factory=set)
    #: SUNSUBSCRIBEs sent and not yet confirmed, per channel: their confirmations are expected
    leaving: Counter[bytes] = field(default_factory=Counter)
    heard: float = field(default_factory=time.monotonic)
    ping_sent: float | None = None


def _socket(pubsub: Any) -> socket.socket:
    connection = pubsub.connection
    sock = None if connection is None else getattr(connection, "_sock", None)
    if sock is None:
        raise redis.ConnectionError("a shard connection is closed")
    return sock  # type: ignore[no-any-return]


class ShardedPubSub:
    """Shard channel subscriptions over ``cluster`` (see the module docstring). ``control`` is
    the relay's wake-up channel: here it is not subscribed in Redis (a plain channel would be
    broadcast to every node); instead a byte on ``wake`` interrupts ``get_message``."""

    def __init__(self, cluster: RedisCluster, control: bytes, wake: socket.socket) -> None:
        self._cluster = cluster
        self._control = control
        self._wake = wake
        self._nodes: dict[str, _Node] = {}
        self._where: dict[bytes, str] = {}  # channel -> name of the node it is subscribed on
        self._local: deque[dict[str, Any]] = deque()  # confirmations made up for ``control``
        self._turn = 0  # which node is read first next time: no node starves the others

    @property
    def channels(self) -> set[bytes]:
        return {self._control, *self._where}

    @property
    def nodes(self) -> dict[str, set[bytes]]:
        """Node name -> the channels subscribed there (one connection per node)."""
        return {name: set(node.channels) for name, node in self._nodes.items()}

    def subscribe(self, *channels: bytes) -> None:
        for channel in channels:
            if channel == self._control:
                self._local.append({"type": "subscribe", "channel": channel, "data": 1,
                                    "pattern": None})
                continue
            if channel in self._where:
                continue
            # the primary of the channel's slot (SlotNotCoveredError if none)
            primary = self._cluster.get_node_from_key(channel)  # type: ignore[no-untyped-call]
            node = self._nodes.get(primary.name)
            if node is None:
                client = self._cluster.get_redis_connection(primary)
                pubsub = client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
                node = self._nodes[primary.name] = _Node(pubsub)
            # one SSUBSCRIBE per channel: several at once must share a slot (else CROSSSLOT)
            node.pubsub.ssubscribe(channel)
            node.channels.add(channel)
            self._where[channel] = primary.name

    def unsubscribe(self, channel: bytes) -> None:
        name = self._where.pop(channel, None)
        if name is None:
            return
        node = self._nodes[name]
        node.channels.discard(channel)
        if node.channels:
            node.pubsub.sunsubscribe(channel)
            node.leaving[channel] += 1
        else:  # its last channel: closing the connection unsubscribes it
            del self._nodes[name]
            node.pubsub.close()

    def ping(self) -> None:
        now = time.monotonic()
        for node in self._nodes.values():
            node.pubsub.ping()
            node.ping_sent = node.ping_sent or now

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message of any node (types ``subscribe``, ``message``, ``pong``, ...), or
        None after ``timeout`` seconds (sooner when woken). Raises on any node's failure."""
        message = self._next()
        if message is not None:
            return message
        waiting = [self._wake, *(_socket(node.pubsub) for node in self._nodes.values())]
        readable, _, _ = select.select(waiting, [], [], timeout)
        if self._wake in readable:
            try:
                while self._wake.recv(512):
                    pass
            except BlockingIOError:
                pass
        message = self._next()
        if message is None:
            self._probe_idle()
        return message

    def _next(self) -> dict[str, Any] | None:
        if self._local:
            return self._local.popleft()
        nodes = list(self._nodes.values())
        for i in range(len(nodes)):
            node = nodes[(self._turn + i) % len(nodes)]
            message = node.pubsub.get_message(timeout=0)  # what is buffered or readable now
            if message is None:
                continue
            self._turn = (self._turn + i + 1) % len(nodes)
            node.heard, node.ping_sent = time.monotonic(), None
            kind = message["type"]
            if kind == "sunsubscribe":
                channel = message["channel"]
                if node.leaving[channel] > 0:
                    node.leaving[channel] -= 1  # the confirmation of our own SUNSUBSCRIBE
                elif channel in node.channels:
                    raise SlotMoved(f"Redis dropped the subscription of {channel!r}")
            renamed = {"ssubscribe": "subscribe", "smessage": "message"}.get(kind)
            return {**message, "type": renamed} if renamed else message
        return None

    def _probe_idle(self) -> None:
        now = time.monotonic()
        for node in self._nodes.values():
            if node.ping_sent is None and now - node.heard > IDLE_PING:
                node.pubsub.ping()
                node.ping_sent = now
            elif node.ping_sent is not None and now - node.ping_sent > IDLE_PING:
                raise redis.ConnectionError("a shard node did not answer PING")

    def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        self._where.clear()
        for node in nodes:
            node.pubsub.close()
