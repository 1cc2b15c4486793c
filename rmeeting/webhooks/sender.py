"""Sending: the service's events go to the outbox, and from the outbox to each endpoint.

Nothing here ever makes a meeting wait:

- :meth:`Webhooks.emit` is the service's one call per event. It never blocks: the event goes
  into a bounded in-memory buffer (:data:`EMIT_BUFFER` events). When the buffer is full (the
  outbox has been unreachable for a long while), the new event is dropped, logged and counted
  (``rmeeting_webhook_dropped_total{where="emit"}``).
- One task moves the buffer into the outbox, retrying while the outbox (Redis) is unavailable.
- Per endpoint, one task claims deliveries from the outbox and starts one task per delivery, at
  most :data:`IN_FLIGHT` at a time; the rest wait in the outbox (in Redis, durably). A delivery
  task POSTs, and on anything but a 2xx retries with exponential backoff (:class:`RetryPolicy`)
  under the same ``webhook-id``, re-signed with the attempt's time. While it waits it keeps its
  claim fresh, so that only a sender that died loses its claim to another instance.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio
from standardwebhooks import Webhook

from ..stores.base import StoreUnavailable
from .events import WebhookEvent
from .outbox import Delivery, Outbox

__all__ = ["EMIT_BUFFER", "IN_FLIGHT", "RetryPolicy", "Webhooks", "endpoint_label", "sign"]

log = logging.getLogger("rmeeting.webhooks")

#: events emitted but not yet in the outbox; past this, new events are dropped and counted
EMIT_BUFFER = 10_000
#: deliveries one instance works on at once per endpoint (the rest wait in the outbox)
IN_FLIGHT = 32


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt n (0-based) waits ``first_delay * 2**n`` seconds, at most ``max_delay``, before
    the next; after ``max_attempts`` failed attempts the delivery is given up (logged, counted
    as ``gave_up``, removed from the outbox). The defaults retry for about 6 hours."""

    first_delay: float = 0.5
    max_delay: float = 60.0
    max_attempts: int = 370
    #: one attempt's limit (connect, send, answer)
    timeout: float = 5.0
    #: a claim not kept fresh for this long is taken over by another sender
    reclaim_after: float = 10.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.first_delay * math.pow(2, min(failures - 1, 30)))


def sign(webhook: Webhook, event: WebhookEvent, body: str, at: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (signed with the attempt's time)."""
    when = datetime.fromtimestamp(at, UTC)
    return {
        "content-type": "application/json",
        "webhook-id": event.id,
        "webhook-timestamp": str(math.floor(at)),
        "webhook-signature": webhook.sign(event.id, when, body),
    }


def endpoint_label(url: str) -> str:
    """The URL without credentials or query string: safe to show in metrics and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class Stats:
    """Counters read at scrape time (``InstanceMetrics.bind_webhooks``)."""

    enqueued: dict[str, int] = field(default_factory=dict)  # event type -> new in the outbox
    duplicates: dict[str, int] = field(default_factory=dict)  # type -> already in the outbox
    delivered: int = 0
    failed_attempts: int = 0
    retries: int = 0
    gave_up: int = 0
    dropped_emit: int = 0
    depth: dict[str, int] = field(default_factory=dict)  # endpoint label -> last known depth


class Webhooks:
    """The webhook sender of one instance. ``consumer`` is its name in the outbox (the instance
    id: a restarted instance takes its own old claims back at once)."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: str,
        outbox: Outbox,
        *,
        consumer: str,
        policy: RetryPolicy | None = None,
        user_agent: str = "rmeeting-webhooks",
    ) -> None:
        self.urls = tuple(urls)
        self.outbox = outbox
        self.consumer = consumer
        self.policy = policy or RetryPolicy()
        self.stats = Stats()
        self._webhook = Webhook(secret)
        self._user_agent = user_agent
        self._send, self._receive = trio.open_memory_channel[WebhookEvent](EMIT_BUFFER)
        self._unqueued = 0  # emitted, not yet in the outbox
        self._all_queued = trio.Event()

    def emit(self, event: WebhookEvent) -> None:
        """Queue ``event`` for every endpoint; never waits (see the module's docstring)."""
        try:
            self._send.send_nowait(event)
            self._unqueued += 1
        except trio.WouldBlock:
            self.stats.dropped_emit += 1
            log.error("webhook event %s (%s) dropped: %d events wait for the outbox",
                      event.id, event.type, EMIT_BUFFER)

    async def flush(self) -> None:
        """Until every event emitted so far is in the outbox (for a graceful stop: bound it)."""
        while self._unqueued:
            self._all_queued = trio.Event()
            await self._all_queued.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the enqueuer, and one sender per endpoint."""
        try:
            # connections: at most IN_FLIGHT per endpoint anyway (no pool limit to wait on)
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=IN_FLIGHT)
            async with httpx.AsyncClient(timeout=self.policy.timeout, follow_redirects=False,
                                         limits=limits,
                                         headers={"user-agent": self._user_agent}) as http, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(self._move_to_outbox)
                for url in self.urls:
                    nursery.start_soon(self._serve_endpoint, http, url)
                task_status.started()
        finally:
            self.outbox.close()

    async def _move_to_outbox(self) -> None:
        async for event in self._receive:
            failures = 0
            while True:
                try:
                    new = await self.outbox.enqueue(event)
                    break
                except Exception as exc:  # noqa: BLE001 - any outbox failure: hold and retry
                    failures += 1
                    if failures == 1:
                        _log_outbox_error("holding events", exc)
                    await trio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
            counts = self.stats.enqueued if new else self.stats.duplicates
            counts[event.type] = counts.get(event.type, 0) + 1
            self._unqueued -= 1
            if not self._unqueued:
                self._all_queued.set()

    async def _serve_endpoint(self, http: httpx.AsyncClient, url: str) -> None:
        label = endpoint_label(url)
        busy: set[str] = set()
        # Entries this sender acknowledged since the last claim's answer was handled. A claim
        # under way while a delivery is acked may still return that entry: when our own claim
        # went quiet for reclaim_after (keeps failed while the outbox was away), the claim can
        # take it over just before the ack lands, and answer after the delivery left ``busy``.
        # Such an entry is done: it is skipped, not sent twice. Cleared once each answer is
        # handled (a claim begun after an ack cannot return that entry), so it holds at most
        # the deliveries finished between two answers: <= IN_FLIGHT, since deliveries only
        # start from an answer. Per sender: another sender's (a dead one's) entries are never
        # in it, so they are taken over and delivered as before.
        acked: set[str] = set()
        room = trio.Semaphore(IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_depth, url, label)
            while True:
                await room.acquire()  # at least one slot: claim as many as are free
                free = room.value + 1
                try:
                    batch = await self.outbox.claim(
                        url, self.consumer, count=free,
                        reclaim_after=self.policy.reclaim_after, wait=1.0)
                except Exception as exc:  # noqa: BLE001 - any outbox failure: wait and retry
                    room.release()
                    _log_outbox_error("claiming", exc)
                    await trio.sleep(1.0)
                    continue
                started = 0
                for delivery in batch:
                    if delivery.entry in busy or delivery.entry in acked:
                        continue  # our own, reclaimed while we still work on it or just acked
                    if started:
                        await room.acquire()
                    started += 1
                    busy.add(delivery.entry)
                    nursery.start_soon(self._deliver, http, delivery, label, busy, acked, room)
                acked.clear()
                if not started:
                    room.release()

    async def _watch_depth(self, url: str, label: str) -> None:
        """The queue depth for the metrics, once a second (a store read: not at scrape time)."""
        while True:
            try:
                self.stats.depth[label] = await self.outbox.depth(url)
            except Exception:  # noqa: BLE001, S110 - the last value stays; claims log outages
                pass
            await trio.sleep(1.0)

    async def _deliver(self, http: httpx.AsyncClient, delivery: Delivery, label: str,
                       busy: set[str], acked: set[str], room: trio.Semaphore) -> None:
        try:
            if await self._attempts(http, delivery, label):
                acked.add(delivery.entry)
        finally:
            busy.discard(delivery.entry)
            room.release()

    async def _attempts(self, http: httpx.AsyncClient, delivery: Delivery, label: str) -> bool:
        """Deliver (or give up); True if it was then acknowledged in the outbox."""
        event, policy = delivery.event, self.policy
        body = event.body()
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1:
                self.stats.retries += 1
                if not await self._wait_keeping(delivery, policy.delay(attempt - 1)):
                    return False  # another sender took it over: it delivers it
            problem = await self._post(http, delivery, body)
            if problem is None:
                self.stats.delivered += 1
                return await self._ack(delivery)
            self.stats.failed_attempts += 1
            log.warning("webhook %s (%s) to %s failed (attempt %d): %s", event.id, event.type,
                        label, attempt, problem)
        self.stats.gave_up += 1
        log.error("webhook %s (%s) to %s given up after %d attempts", event.id, event.type,
                  label, policy.max_attempts)
        return await self._ack(delivery)

    async def _post(self, http: httpx.AsyncClient, delivery: Delivery, body: str) -> str | None:
        """One attempt: None if the endpoint took it (2xx), else what went wrong."""
        headers = sign(self._webhook, delivery.event, body, time.time())
        try:
            with trio.fail_after(self.policy.timeout):
                # streamed, and the answer's body never read: only its status counts, and an
                # endpoint cannot make us hold a huge reply
                async with http.stream("POST", delivery.endpoint, content=body.encode(),
                                       headers=headers) as response:
                    status = response.status_code
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            return f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this attempt's failure
            log.exception("webhook attempt to %s raised", endpoint_label(delivery.endpoint))
            return f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    async def _wait_keeping(self, delivery: Delivery, seconds: float) -> bool:
        """Sleep ``seconds``, keeping the claim fresh; False if it is no longer ours."""
        deadline = trio.current_time() + seconds
        step = self.policy.reclaim_after / 4
        while True:
            if not await self._keep(delivery):
                return False
            left = deadline - trio.current_time()
            if left <= 0:
                return True
            await trio.sleep(min(step, left))

    async def _keep(self, delivery: Delivery) -> bool:
        try:
            return await self.outbox.keep(delivery, self.consumer)
        except Exception as exc:  # noqa: BLE001 - keep trying: if it was taken over
            _log_outbox_error("keeping a claim", exc)  # meanwhile, the receiver dedupes
            return True

    async def _ack(self, delivery: Delivery) -> bool:
        """True once acknowledged; False if the outbox stayed away (it stays queued)."""
        for failures in range(1, 100):
            try:
                await self.outbox.ack(delivery)
                return True
            except Exception as exc:  # noqa: BLE001 - retried; worst case a second delivery
                _log_outbox_error("acknowledging", exc)
                await trio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
        log.error("webhook %s: could not acknowledge; it may be delivered again",
                  delivery.event.id)
        return False


def _log_outbox_error(doing: str, exc: Exception) -> None:
    """An outbox outage is expected (a warning); anything else is a bug or a misconfigured
    Redis, logged with its traceback. Either way the sender waits and tries again."""
    if isinstance(exc, StoreUnavailable):
        log.warning("webhook outbox unavailable (%s): %s", doing, exc)
    else:
        log.error("webhook outbox failed (%s)", doing, exc_info=exc)
