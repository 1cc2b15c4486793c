"""The etcd wire, for :mod:`rmeeting.stores.etcd` and the cluster's liveness: bounded KV calls and
one watch stream.

The ``etcd3`` client is synchronous (grpc), so every call runs in a worker thread with a
deadline and a small bounded retry, at most :data:`CALL_THREADS` at once (Trio's default
would let a burst make up to 40, each exiting after 10 s idle); the watch runs in a thread of
its own on the raw grpc Watch stub. Nothing here knows about meetings.

Not a grpc future awaited without a thread: tried, and a 1-instance soak showed the coroutine
chains of every task that had made such a call kept alive after they finished, by a reference
the garbage collector cannot see (docs/benchmarks.md#soak); with the calls in threads, none.
"""

from __future__ import annotations

import os

# etcd3 0.12's generated protobuf modules only load with the pure-Python protobuf runtime, and
# protobuf picks its runtime when first imported: set it before anything imports protobuf.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import etcd3
import etcd3.etcdrpc as rpc
import grpc  # type: ignore[import-untyped]
import trio

from .base import StoreUnavailable

__all__ = [
    "Change",
    "Connection",
    "WatchCompacted",
    "WatchEvents",
    "WatchFailed",
    "WatchItem",
    "WatchProgress",
    "WatchSession",
    "WatchStarted",
    "compare",
    "delete_op",
    "prefix_end",
    "put_op",
    "range_op",
]

log = logging.getLogger("rmeeting.stores.etcd")

#: The channel's own reconnect backoff: 0.1 s doubling to 2 s, so a restarted etcd is found
#: again within about 2 s and a down one is not hammered.
GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # A half-open connection (host gone, no RST) is noticed by keepalive, not never.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]

#: etcd cancels the watch when its member loses the leader, instead of going silent.
REQUIRE_LEADER = (("hasleader", "true"),)

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

#: etcd calls in flight at once, per connection (each holds a worker thread while it waits)
CALL_THREADS = 8


def _retryable(exc: grpc.RpcError) -> bool:
    """"No etcd right now": unavailable, out of time, or etcd's own request context timing
    out, which etcd 3.4 passes on as UNKNOWN "context deadline exceeded" (seen when its leader
    is killed under load: tests/test_chaos_faults.py)."""
    code = exc.code()
    if code in _RETRYABLE:
        return True
    return code == grpc.StatusCode.UNKNOWN and "deadline exceeded" in (exc.details() or "")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def range_op(key: bytes, range_end: bytes | None = None, **kwargs: Any) -> Any:
    request = rpc.RangeRequest(key=key, **kwargs)
    if range_end is not None:
        request.range_end = range_end
    return rpc.RequestOp(request_range=request)


def put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes, range_end: bytes | None = None) -> Any:
    request = rpc.DeleteRangeRequest(key=key)
    if range_end is not None:
        request.range_end = range_end
    return rpc.RequestOp(request_delete_range=request)


def compare(
    key: bytes, target: str, result: str, value: int, range_end: bytes | None = None
) -> Any:
    """``target`` is "version" or "mod"; ``result`` is "==", "<" or ">"."""
    op = {"==": rpc.Compare.EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}[result]
    message = rpc.Compare(key=key, result=op)
    if range_end is not None:
        message.range_end = range_end
    if target == "version":
        message.target = rpc.Compare.VERSION
        message.version = value
    elif target == "mod":
        message.target = rpc.Compare.MOD
        message.mod_revision = value
    else:
        raise ValueError(target)
    return message


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"etcd endpoint must look like http://host:port, not {endpoint!r}")
    return parts.hostname, parts.port or 2379


class Connection:
    """Clients for a list of endpoints; calls use the current one and fail over on error."""

    def __init__(self, endpoints: Sequence[str], timeout: float) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.timeout = timeout
        self.endpoints = list(endpoints)
        self._clients = [
            etcd3.client(host, port, timeout=timeout, grpc_options=GRPC_OPTIONS)
            for host, port in map(_parse_endpoint, endpoints)
        ]
        self._current = 0
        self._threads = trio.CapacityLimiter(CALL_THREADS)

    @property
    def channel(self) -> Any:
        return self._clients[self._current].channel

    def fail_over(self) -> None:
        self._current = (self._current + 1) % len(self._clients)

    def close(self) -> None:
        for client in self._clients:
            client.close()

    async def kv(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        return await self._call("kvstub", method, request, timeout)

    async def lease_grant(self, ttl: int) -> int:
        response = await self._call("leasestub", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl), None)
        return int(response.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; its TTL from now, 0 if it no longer exists."""
        request = rpc.LeaseKeepAliveRequest(ID=lease_id)
        response = await self._call("leasestub", "LeaseKeepAlive", request, None, stream=True)
        return int(response.TTL) if response is not None else 0

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke the lease: etcd deletes every key attached to it at once."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._call("leasestub", "LeaseRevoke", request, timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # gone already: nothing to revoke
                raise

    async def txn(self, compares: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> Any:
        request = rpc.TxnRequest(compare=compares, success=success, failure=failure)
        return await self.kv("Txn", request)

    async def _call(
        self, stub: str, method: str, request: Any, timeout: float | None, *, stream: bool = False
    ) -> Any:
        """One call, retried on "no etcd" until ``timeout`` (default: the store's) runs out.
        ``stream``: a bidi-streaming method, sent ``request`` alone; its first answer (or None).

        Retrying writes is safe here because every write of the store is a transaction whose
        compare fails if an earlier attempt already landed, and the store recognises its own
        landed write (see ``EtcdMeetingStore``). Other grpc errors are raised as they are.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = trio.current_time() + budget
        delay = 0.05
        last: grpc.RpcError | None = None
        while (remaining := deadline - trio.current_time()) > 0:
            # With several endpoints, leave time for another one after a dead one.
            attempt = remaining if len(self._clients) == 1 else max(remaining / 2, 0.05)
            fn = getattr(getattr(self._clients[self._current], stub), method)
            once = partial(_first_answer, fn) if stream else fn
            try:
                response = await trio.to_thread.run_sync(
                    partial(once, request, timeout=attempt), abandon_on_cancel=True,
                    limiter=self._threads,
                )
            except grpc.RpcError as exc:
                if not _retryable(exc):
                    raise
                last = exc
                if len(self._clients) > 1:
                    self.fail_over()
                await trio.sleep(min(delay, max(deadline - trio.current_time(), 0)))
                delay = min(delay * 2, 0.5)
                continue
            return response
        detail = last.details() if last is not None else "no time left"
        raise StoreUnavailable(f"etcd did not answer {method} within {budget}s: {detail}")


def _first_answer(fn: Any, request: Any, *, timeout: float) -> Any:
    """A bidi stream used as one call (LeaseKeepAlive): send one request, half-close, read the
    first response; ``timeout`` bounds the whole stream, so a silent etcd cannot hold the
    thread."""
    responses = fn(iter((request,)), timeout=timeout)
    try:
        return next(iter(responses), None)
    finally:
        responses.cancel()


# --- the watch stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One key event of a watch response, as plain data."""

    deleted: bool
    key: bytes
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchStarted:
    revision: int


@dataclass(frozen=True)
class WatchEvents:
    """All the events of one watch response; etcd never splits a revision across responses."""

    changes: tuple[tuple[int, Change], ...]  # (revision, change), in revision order


@dataclass(frozen=True)
class WatchProgress:
    revision: int


@dataclass(frozen=True)
class WatchCompacted:
    compact_revision: int


@dataclass(frozen=True)
class WatchFailed:
    reason: str


WatchItem = WatchStarted | WatchEvents | WatchProgress | WatchCompacted | WatchFailed


class WatchSession:
    """One prefix watch stream, read in a thread of its own until it breaks or is stopped.

    It hands each item to ``deliver`` (which blocks while the consumer is behind: backpressure
    reaches etcd through grpc flow control, nothing is dropped). The stream is opened with
    ``wait_for_ready`` so that while etcd is down the thread sleeps in grpc's reconnect backoff
    instead of spinning. After a failure, compaction or :meth:`stop` the thread ends; a new
    session resumes from the last revision.
    """

    def __init__(
        self,
        channel: Any,
        key: bytes,
        start_revision: int,
        deliver: Callable[[WatchItem], object],
    ) -> None:
        self._stub = rpc.WatchStub(channel)
        self._create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=key, range_end=prefix_end(key), start_revision=start_revision,
            progress_notify=True,
        ))
        self._deliver = deliver
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="rmeeting-etcd-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """From any thread: end the stream now (also while it waits for a down etcd)."""
        self._stopped.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _requests(self) -> Iterator[Any]:
        yield self._create
        # Keep the request side open until stopped; grpc reads this in its own thread.
        self._stopped.wait()

    def _run(self) -> None:
        try:
            self._stream()
        except (trio.BrokenResourceError, trio.RunFinishedError):
            pass  # the consumer has gone away: nobody to tell
        except Exception:  # a thread must not die with an unreported error
            log.exception("etcd watch thread failed")
            with contextlib.suppress(Exception):  # the consumer may be gone as well
                self._send(WatchFailed("watch thread error"))
        finally:
            self.stop()

    def _send(self, item: WatchItem) -> None:
        if not self._stopped.is_set():
            self._deliver(item)

    def _stream(self) -> None:
        call = self._stub.Watch(self._requests(), wait_for_ready=True, metadata=REQUIRE_LEADER)
        with self._lock:
            self._call = call
        if self._stopped.is_set():
            call.cancel()
        try:
            for response in call:
                if response.compact_revision:
                    self._send(WatchCompacted(response.compact_revision))
                    return
                if response.canceled:
                    self._send(WatchFailed(f"watch canceled: {response.cancel_reason}"))
                    return
                if response.created:
                    self._send(WatchStarted(response.header.revision))
                if response.events:
                    self._send(WatchEvents(tuple(
                        (
                            ev.kv.mod_revision,
                            Change(
                                ev.type == ev.DELETE, ev.kv.key, ev.kv.value,
                                ev.kv.mod_revision, ev.kv.lease,
                            ),
                        )
                        for ev in response.events
                    )))
                elif not response.created:
                    self._send(WatchProgress(response.header.revision))
        except grpc.RpcError as exc:
            self._send(WatchFailed(f"{exc.code()}: {exc.details()}"))
            return
        self._send(WatchFailed("watch stream ended"))
