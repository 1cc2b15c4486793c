"""The chat relay's listener: one Redis pub/sub connection in a thread of its own, bridged to Trio.

redis-py's asyncio client does not run on Trio, so a sync ``PubSub`` lives in one worker thread,
and that thread is the only code that touches it (``PubSub`` is not thread-safe). The Trio side
asks for (un)subscriptions through a queue and wakes the thread by publishing on the relay's own
control channel, which the thread always listens to (so an idle thread also never sits in
``PubSub``'s "not subscribed" wait).

Delivery: the thread hands each decoded event to Trio with ``trio.from_thread.run`` into a bounded
memory channel. When the channel is full the thread blocks, so nothing is dropped here; Redis
buffers for the stalled subscriber until its ``client-output-buffer-limit pubsub`` is reached and
then closes the connection, which the relay treats like any other outage (below).

Outages: on any connection error the thread drops the connection, reports the relay down, retries
with a backoff of 0.1 to 2 s (no busy spin), and on reconnecting SUBSCRIBEs every channel still
wanted before it reports the relay up again. Events published while it was down are not replayed:
the owner learns of the gap through ``on_state(False)`` ... ``on_state(True)`` and resyncs (chat
from ``ChatLog.history``). A connection that stays silent is probed with PING, so a half-open TCP
connection is found too.

On a Redis Cluster (``RedisLink.cluster``) the thread listens through ``ShardedPubSub`` instead:
``SSUBSCRIBE`` on the primary of each meeting's slot, one connection per such primary, woken
through a local socket pair instead of the control channel; any topology change is an outage as
above, after which the slot map is reloaded (see ``_redis_shards``).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import trio
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from ._redis_shards import ShardedPubSub
from .base import BusEvent, StoreUnavailable
from .redis_link import RedisLink

__all__ = ["PubSubRelay"]

log = logging.getLogger(__name__)

#: Events decoded but not yet handled. When full, the listener thread waits (backpressure).
RELAY_BUFFER = 256
#: How long an idle listener blocks in one read; it bounds how long ``serve`` takes to stop.
POLL = 0.1
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
#: A connection silent this long gets a PING; no answer within as long again means it is dead.
IDLE_PING = 5.0
#: How long ``add`` waits for Redis to confirm a SUBSCRIBE.
CONFIRM_TIMEOUT = 5.0

Decoder = Callable[[bytes, bytes], BusEvent]


class _Waiter:
    """One ``add`` waiting for its SUBSCRIBE to be confirmed; resolved from the thread."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False

    def resolve(self, ok: bool) -> None:
        if not self.done.is_set():
            self.ok = ok
            self.done.set()


class _Stopped(Exception):
    """Internal: ``serve`` is ending; unwind the thread."""


class PubSubRelay:
    """Subscriptions and delivery for one ChatLog instance (see the module docstring).

    ``decode(channel, payload)`` turns a published message into an event, raising for garbage
    (logged, counted in ``malformed`` and skipped). ``on_state(up)`` runs in the Trio
    thread on every change of the relay's state and must not block.
    """

    def __init__(
        self,
        link: RedisLink,
        control_channel: bytes,
        decode: Decoder,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._link = link
        self._control = control_channel
        self._decode = decode
        self._on_state = on_state
        self._lock = threading.Lock()
        self._wanted: set[bytes] = set()  # guarded by _lock; read by the thread on reconnect
        self._requests: queue.SimpleQueue[tuple[str, bytes, _Waiter | None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._running = False
        self._token: trio.lowlevel.TrioToken | None = None
        #: the cluster listener's wake-up: the thread selects on the first, ``add`` writes the
        #: second (a plain Redis listener is woken through the control channel instead)
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None
        #: True while the listener is connected and subscribed to everything wanted.
        self.up = False
        #: Messages on a meeting channel that could not be decoded (logged and skipped).
        self.malformed = 0

    @property
    def serving(self) -> bool:
        return self._running

    # --- Trio side ----------------------------------------------------------------------------

    async def add(self, channel: bytes) -> None:
        """Listen on ``channel``; returns once Redis confirmed the SUBSCRIBE. Without a running
        ``serve``, only records the wish (``serve`` subscribes everything before it starts).
        Raises StoreUnavailable if the relay is down or the confirmation does not come."""
        with self._lock:
            self._wanted.add(channel)
        if not self._running:
            return
        if not self.up:
            raise StoreUnavailable("the Redis relay is down")
        waiter = _Waiter()
        self._requests.put(("sub", channel, waiter))
        if self._link.cluster and self._wake_pair is not None:
            try:
                self._wake_pair[1].send(b"w")
            except BlockingIOError:
                pass  # a wake-up is pending already
        else:
            try:
                await trio.to_thread.run_sync(self._publish_wake)
            except redis.RedisError as exc:
                raise StoreUnavailable(f"redis: {exc}") from exc
        with trio.move_on_after(CONFIRM_TIMEOUT):
            await waiter.done.wait()
        if not waiter.ok:
            raise StoreUnavailable("Redis did not confirm the subscription")

    def remove(self, channel: bytes) -> None:
        """Stop listening on ``channel``. The UNSUBSCRIBE goes out within ``POLL``; the caller
        filters out what still arrives meanwhile."""
        with self._lock:
            self._wanted.discard(channel)
        if self._running:
            self._requests.put(("unsub", channel, None))

    async def serve(
        self,
        deliver: Callable[[BusEvent], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the listener thread and await ``deliver(event)`` for each event, in order, until
        cancelled. ``task_status.started()`` comes after the first connection attempt, whether
        it succeeded (everything wanted is subscribed) or not (retrying, reported down)."""
        if self._running:
            raise RuntimeError("this relay is already serving")
        self._running = True
        self._stop.clear()
        self._token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[BusEvent](RELAY_BUFFER)
        first_attempt = trio.Event()
        self._wake_pair = socket.socketpair()
        for end in self._wake_pair:
            end.setblocking(False)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(self._run_thread, send, first_attempt)
                    await first_attempt.wait()
                    task_status.started()
                    async for event in receive:
                        await deliver(event)
                    raise RuntimeError("the Redis relay thread ended")
                finally:
                    # Before the nursery waits for the thread: it sees this within POLL.
                    self._stop.set()
        finally:
            self._running = False
            self._set_up(False)
            pair, self._wake_pair = self._wake_pair, None
            for end in pair:
                end.close()

    async def _run_thread(
        self, send: trio.MemorySendChannel[BusEvent], first_attempt: trio.Event
    ) -> None:
        async with send:
            # Not abandoned on cancel: serve returns only once the thread and its socket are gone.
            # A limiter of its own, so the long-lived thread takes no slot from store calls.
            await trio.to_thread.run_sync(
                self._thread_main, send, first_attempt, limiter=trio.CapacityLimiter(1)
            )

    def _publish_wake(self) -> None:
        self._link.client().publish(self._control, b"wake")

    def _set_up(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        if self._on_state is not None:
            try:
                self._on_state(up)
            except Exception:
                log.exception("relay state callback failed")

    # --- the listener thread ------------------------------------------------------------------

    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in the Trio thread without waiting (state changes, confirmations)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _thread_main(
        self, send: trio.MemorySendChannel[BusEvent], first_attempt: trio.Event
    ) -> None:
        backoff = BACKOFF_MIN
        failed = False
        while not self._stop.is_set():
            pending: dict[bytes, deque[_Waiter | None]] = defaultdict(deque)
            pubsub: Any = None
            connected = False
            try:
                pubsub = self._open(reload_slots=failed)
                self._connect(pubsub, send)
                connected = True
                log.info("Redis relay connected, %d meeting channel(s)", len(pubsub.channels) - 1)
                self._soon(self._set_up, True)
                self._soon(first_attempt.set)
                backoff = BACKOFF_MIN
                self._listen(pubsub, send, pending)
            except _Stopped:
                break
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                # Once per outage at warning level; the retries while it lasts only at debug.
                level = logging.WARNING if connected or backoff == BACKOFF_MIN else logging.DEBUG
                log.log(level, "Redis relay down (%s); retrying in %.1f s", exc, backoff)
            finally:
                self._fail_waiters(pending)
                if pubsub is not None:
                    pubsub.close()
            failed = True
            self._soon(self._set_up, False)
            self._soon(first_attempt.set)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _open(self, *, reload_slots: bool) -> Any:
        """A fresh pub/sub for one connection attempt: redis-py's ``PubSub`` on a plain Redis,
        a ``ShardedPubSub`` on a cluster (after a failure, on a freshly read slot map: a
        failover or a slot move is what most likely broke the last one)."""
        client = self._link.client()
        if isinstance(client, RedisCluster):
            assert self._wake_pair is not None
            if reload_slots:
                client.nodes_manager.initialize()
            return ShardedPubSub(client, self._control, self._wake_pair[0])
        return client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]

    def _connect(self, pubsub: Any, send: trio.MemorySendChannel[BusEvent]) -> None:
        """SUBSCRIBE the control channel and everything wanted; return once all are confirmed."""
        with self._lock:
            channels = {self._control, *self._wanted}
        pubsub.subscribe(*channels)
        missing = set(channels)
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while missing:
            if self._stop.is_set():
                raise _Stopped
            if time.monotonic() > deadline:
                raise redis.TimeoutError("no confirmation of SUBSCRIBE")
            message = pubsub.get_message(timeout=POLL)
            if message is None:
                continue
            if message["type"] == "subscribe":
                missing.discard(message["channel"])
            else:
                self._on_message(message, send)

    def _listen(
        self,
        pubsub: Any,
        send: trio.MemorySendChannel[BusEvent],
        pending: dict[bytes, deque[_Waiter | None]],
    ) -> None:
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while not self._stop.is_set():
            self._apply_requests(pubsub, pending)
            message = pubsub.get_message(timeout=POLL)
            now = time.monotonic()
            if message is None:
                if ping_sent is None and now - last_heard > IDLE_PING:
                    pubsub.ping()
                    ping_sent = now
                elif ping_sent is not None and now - ping_sent > IDLE_PING:
                    raise redis.ConnectionError("no answer to PING")
                continue
            last_heard, ping_sent = now, None
            if message["type"] == "subscribe":
                # One confirmation per channel per SUBSCRIBE, in the order they were sent.
                waiters = pending.get(message["channel"])
                waiter = waiters.popleft() if waiters else None
                if waiter is not None:
                    self._soon(waiter.resolve, True)
            else:
                self._on_message(message, send)

    def _apply_requests(self, pubsub: Any, pending: dict[bytes, deque[_Waiter | None]]) -> None:
        while True:
            try:
                action, channel, waiter = self._requests.get_nowait()
            except queue.Empty:
                return
            if action == "sub":
                pending[channel].append(waiter)
                pubsub.subscribe(channel)
            else:
                with self._lock:
                    still_wanted = channel in self._wanted  # re-added since: keep it
                if not still_wanted:
                    pubsub.unsubscribe(channel)

    def _on_message(self, message: dict[str, Any], send: trio.MemorySendChannel[BusEvent]) -> None:
        if message["type"] != "message" or message["channel"] == self._control:
            return  # pong, unsubscribe confirmations, wake-ups
        channel, payload = message["channel"], message["data"]
        try:
            event = self._decode(channel, payload)
        except Exception as exc:  # whatever a stranger published, the relay carries on
            self.malformed += 1
            log.warning("skipping malformed relay message on %r: %s (%r)", channel, exc,
                        payload[:200])
            return
        try:
            # Blocks while the channel is full: backpressure, never a drop (module docstring).
            trio.from_thread.run(send.send, event)
        except (trio.Cancelled, trio.RunFinishedError, trio.BrokenResourceError) as exc:
            raise _Stopped from exc

    def _fail_waiters(self, pending: dict[bytes, deque[_Waiter | None]]) -> None:
        """The connection is gone: fail every subscription still waiting, sent or queued. The
        queue can be dropped: the next connection subscribes to all of ``_wanted``."""
        for waiters in pending.values():
            for waiter in waiters:
                if waiter is not None:
                    self._soon(waiter.resolve, False)
        pending.clear()
        while True:
            try:
                _, _, waiter = self._requests.get_nowait()
            except queue.Empty:
                return
            if waiter is not None:
                self._soon(waiter.resolve, False)
