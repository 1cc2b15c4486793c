"""The connection to Redis: one server or a Redis Cluster, told apart by asking the server.

The ``redis`` setting is one URL, or a comma-separated list of URLs of Redis Cluster nodes (any
of them: the client discovers the rest). The first call dials them in turn until one answers and
reads its ``INFO cluster``: ``cluster_enabled:1`` makes a ``RedisCluster`` client seeded with every
listed node, anything else the plain client of that URL, exactly as before clusters were known.
So one deployment file serves both. Until a call gets an answer nothing is decided: a Redis that
is down at start-up is only unavailable, and the next call asks again.

No retries, on either client: a down Redis (or a cluster node that is failing over) must surface
as ``StoreUnavailable`` at once, and a retried script is not idempotent (a publish would go out
twice). A pooled connection that died while idle is still replaced on checkout, and the cluster
client follows ``MOVED`` and ``ASK`` redirections (those are no retries: the command did not run)
and reloads the slot map after a node error, so the call after a failover goes to the new primary.

Public (not ``_redis_``): the Redis stores and the webhook outbox (``rmeeting.webhooks.redis``)
both connect through it, so one ``redis`` setting means the same server(s) to both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import parse_url
from redis.exceptions import (
    ClusterError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

__all__ = ["Client", "RedisLink", "is_unavailable", "split_urls"]

Client = redis.Redis | RedisCluster


def split_urls(setting: str) -> list[str]:
    """The URLs of a ``redis`` setting; ValueError names a malformed one."""
    urls = [u.strip() for u in setting.split(",") if u.strip()]
    if not urls:
        raise ValueError("no Redis URL given")
    for url in urls:
        parse_url(url)  # type: ignore[no-untyped-call]  # ValueError: not redis:// etc.
    return urls


def is_unavailable(exc: BaseException) -> bool:
    """Is ``exc`` Redis being away (refused, timed out, loading, failing over, a slot not yet
    served), as opposed to a bug in the caller?"""
    if isinstance(exc, CrossSlotTransactionError | InvalidPipelineStack):
        return False  # rmeeting's own mistake: every transaction stays in one meeting's slot
    return isinstance(
        exc,
        redis.ConnectionError | redis.TimeoutError | ClusterError | TryAgainError
        | RedisClusterException,
    )


def _options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
    }


def _cluster(urls: Sequence[str], timeout: float) -> RedisCluster:
    first: dict[str, Any] = parse_url(urls[0])  # type: ignore[no-untyped-call]
    nodes = []
    for url in urls:
        parts = parse_url(url)  # type: ignore[no-untyped-call]
        host, port = parts.get("host", "127.0.0.1"), parts.get("port", 6379)
        nodes.append(ClusterNode(host, port))  # type: ignore[no-untyped-call]
    credentials: dict[str, Any] = {k: first[k] for k in ("username", "password") if k in first}
    if "connection_class" in first and first["connection_class"] is redis.SSLConnection:
        credentials["ssl"] = True
    # Blocking: it reads the slot map from the first node that answers (RedisClusterException
    # when none does, which callers treat as unavailable).
    return RedisCluster(startup_nodes=nodes, **_options(timeout), **credentials)


class RedisLink:
    """One lazily detected client, shared by a store's worker threads. ``client()`` blocks (call
    it from a worker thread); ``cluster`` is None until the first successful detection."""

    def __init__(self, setting: str, timeout: float) -> None:
        self.urls = split_urls(setting)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._scripts: dict[str, Script] = {}
        self._closed = False

    @property
    def cluster(self) -> bool | None:
        client = self._client
        return None if client is None else isinstance(client, RedisCluster)

    def client(self) -> Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise redis.ConnectionError("the Redis link is closed")
            if self._client is None:
                self._client = self._detect()
            return self._client

    def _detect(self) -> Client:
        failure: Exception = redis.ConnectionError("no Redis URL answered")
        for url in self.urls:
            probe = redis.Redis.from_url(url, **_options(self._timeout))
            try:
                enabled = probe.info("cluster").get("cluster_enabled")
            except redis.ResponseError:
                enabled = 0  # a server without the section (or INFO renamed): not a cluster
            except redis.RedisError as exc:
                failure = exc
                continue
            finally:
                probe.close()
            if str(enabled) == "1":
                return _cluster([url, *(u for u in self.urls if u != url)], self._timeout)
            if len(self.urls) > 1:
                # several servers that share nothing would split every meeting: refuse
                raise redis.ConnectionError(
                    f"{url} is not a Redis Cluster node, yet the redis setting lists "
                    f"{len(self.urls)} URLs (a plain Redis takes one)")
            return redis.Redis.from_url(url, **_options(self._timeout))
        raise failure

    def script(self, text: str) -> Callable[[Sequence[Any], Sequence[Any]], Any]:
        """A callable ``(keys, args)`` running the Lua script ``text`` (EVALSHA, loading it on
        NOSCRIPT: a promoted replica does not have it). On a cluster every script of rmeeting
        touches one meeting's keys, one slot, so it runs on that slot's primary."""

        def run(keys: Sequence[Any], args: Sequence[Any]) -> Any:
            client = self.client()
            script = self._scripts.get(text)
            if script is None:
                script = self._scripts[text] = client.register_script(text)
            return script(keys=keys, args=args, client=client)

        return run

    def ping(self) -> bool:
        """True when Redis answers; for a cluster, when every primary does."""
        client = self.client()
        if isinstance(client, RedisCluster):
            return bool(client.ping(target_nodes=RedisCluster.PRIMARIES))
        return bool(client.ping())

    def close(self) -> None:
        """Release the connections (idempotent); later calls fail as unavailable."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()
