"""What one instance exposes at ``GET /metrics`` (docs/operations.md lists every metric).

The hot path pays one counter increment per chat message received and one histogram observation
per event the instance receives (not per member). Per-member work is counted where it already is
(the hub's deliveries) and read at scrape time, like the gauges of the hub and the stores' own
counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .closes import LeaveReason
from .events import BusEvent, ControlsChanged, MeetingEvent
from .metrics import Registry, Value

if TYPE_CHECKING:
    from .hub import Hub
    from .service import MeetingService
    from .webhooks import Webhooks

__all__ = ["InstanceMetrics"]

#: flag propagation and watch lag: milliseconds on one host, seconds through a stalled watch
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class InstanceMetrics:
    """The metrics of one instance. The service, the hub and the WebSocket routes call the
    ``on_*`` hooks; :meth:`bind` wires the values read at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        r = self.registry = Registry()
        self.websockets = r.gauge(
            "rmeeting_websocket_connections",
            "Open WebSocket connections on this instance, by protocol.", ["protocol"])
        self._ws = {p: self.websockets.labels(p) for p in ("seed", "v1")}
        self.chat_in = r.counter(
            "rmeeting_chat_messages_in_total",
            "Chat messages accepted from members connected to this instance.")
        self.slow_consumers = r.counter(
            "rmeeting_slow_consumer_disconnects_total",
            "Members closed with 4008: their outgoing queue (outbox_bytes) overflowed.")
        self.keepalive_timeouts = r.counter(
            "rmeeting_keepalive_timeouts_total",
            "Members closed with 1008: nothing heard for ping_interval + ping_timeout.")
        self.propagation = r.histogram(
            "rmeeting_flag_propagation_seconds",
            "Control change to its fan-out on this instance. origin=write: from the API write "
            "(its time is stored with it); origin=watch: from this instance's watch receipt "
            "(etcdctl, timers, resyncs carry no write time).",
            ["origin"], buckets=PROPAGATION_BUCKETS)
        self._from_write = self.propagation.labels("write")
        self._from_watch = self.propagation.labels("watch")
        self.watch_lag = r.histogram(
            "rmeeting_etcd_watch_lag_seconds",
            "API control write to its receipt by this instance's etcd watch.",
            buckets=PROPAGATION_BUCKETS)
        self.relay_lag = r.histogram(
            "rmeeting_relay_lag_seconds",
            "Chat/roster event publish to its receipt by this instance (Redis relay in cluster "
            "mode, the in-process bus when embedded). Assumes synchronised clocks.",
            buckets=PROPAGATION_BUCKETS)

    # --- hooks (hot path: keep them cheap) ---------------------------------------------------

    def on_websocket(self, protocol: str, delta: int) -> None:
        self._ws[protocol].inc(delta)

    def on_bus_event(self, event: BusEvent) -> None:
        if event.ts:
            self.relay_lag.observe(max(0.0, self._clock() - event.ts))

    def on_meeting_event(self, event: MeetingEvent) -> None:
        if isinstance(event, ControlsChanged) and event.written_at and event.received_at:
            self.watch_lag.observe(max(0.0, event.received_at - event.written_at))

    def on_controls_delivered(self, event: ControlsChanged) -> None:
        """After the shard fanned a control change out to this instance's members."""
        if event.written_at:
            self._from_write.observe(max(0.0, self._clock() - event.written_at))
        elif event.received_at:
            self._from_watch.observe(max(0.0, self._clock() - event.received_at))

    def on_disconnected(self, reason: LeaveReason) -> None:
        if reason is LeaveReason.SLOW_CONSUMER:
            self.slow_consumers.inc()
        elif reason is LeaveReason.TIMEOUT:
            self.keepalive_timeouts.inc()

    # --- read at scrape time ---------------------------------------------------------------------

    def bind(self, *, instance_id: str, cluster: bool, hub: Hub, meetings: object,
             chat: object, service: MeetingService,
             tcp_connections: Callable[[], int]) -> None:
        """Register the metrics read from the parts when scraped. The stores' counters
        (``invalid_values``, ``relay_up``...) exist only on the real stores (etcd, Redis); with
        memory stores they are left out."""
        r = self.registry

        def hub_stat(key: str) -> Callable[[], Value]:
            return lambda: int(hub.statistics()[key])

        mode = "cluster" if cluster else "embedded"
        counter, gauge = r.counter_from, r.gauge_from  # read when scraped
        gauge("rmeeting_instance_info", "This instance: its id and mode.",
              lambda: {(instance_id, mode): 1}, ["instance_id", "mode"])
        gauge("rmeeting_draining", "1 while this instance drains (no joins, /readyz 503).",
              lambda: 0 if service.accepting else 1)
        gauge("rmeeting_tcp_connections", "Open TCP connections (HTTP and WebSocket).",
              tcp_connections)
        gauge("rmeeting_meetings", "Meetings with at least one member on this instance.",
              hub_stat("meetings"))
        gauge("rmeeting_members", "Members connected to this instance.",
              hub_stat("members"))
        counter("rmeeting_frames_out_total",
                "Frames the fan-out handed to members' connections (events x members).",
                hub_stat("deliveries"))
        gauge("rmeeting_hub_queued_events", "Events waiting in the shards' inboxes.",
              hub_stat("queued"))
        counter("rmeeting_hub_inbox_full_total",
                "Times a shard's inbox was full and its producer had to wait (backpressure).",
                hub_stat("inbox_full"))
        counter("rmeeting_hub_wakeups_total",
                "Times a shard took a batch of ops from its inbox (one or more).",
                hub_stat("wakeups"))
        counter("rmeeting_hub_coalesced_frames_total",
                "Frames that went out in one write with another frame to the same member.",
                hub_stat("coalesced_frames"))
        counter("rmeeting_hub_grow_rounds_total",
                "Scheduler rounds a shard let run before taking a batch because its inbox "
                "was still growing (a burst under way).",
                hub_stat("grow_ticks"))
        _optional(counter, meetings, "invalid_values", "rmeeting_invalid_control_values_total",
                  "Hand-written control values this instance's etcd watch rejected (kept the "
                  "last valid value).")
        _optional(counter, meetings, "unknown_keys", "rmeeting_unknown_control_keys_total",
                  "Keys under controls/ naming no flag, seen by the etcd watch (ignored).")
        _optional(gauge, meetings, "watch_up", "rmeeting_etcd_watch_up",
                  "1 while the etcd watch is established.")
        _optional(gauge, meetings, "watch_revision", "rmeeting_etcd_watch_revision",
                  "The last etcd revision this instance's watch handled (compare instances).")
        _optional(counter, meetings, "watch_reconnects", "rmeeting_etcd_watch_reconnects_total",
                  "Times the etcd watch was re-opened after a failure or a compaction.")
        _optional(gauge, chat, "relay_up", "rmeeting_relay_up",
                  "1 while the Redis relay (pub/sub) is connected and subscribed.")
        _optional(counter, chat, "malformed", "rmeeting_relay_malformed_total",
                  "Undecodable messages the Redis relay skipped.")

    # --- webhooks (rmeeting/webhooks): counted by the sender, read at scrape time ----------

    def bind_webhooks(self, webhooks: Webhooks) -> None:
        r, stats = self.registry, webhooks.stats
        r.counter_from(
            "rmeeting_webhook_events_total",
            "Webhook events this instance put in the outbox (result=new), or found there "
            "already, put by another instance that saw the same change (result=duplicate).",
            lambda: {**{(t, "new"): n for t, n in stats.enqueued.items()},
                     **{(t, "duplicate"): n for t, n in stats.duplicates.items()}},
            ["type", "result"])
        r.counter_from(
            "rmeeting_webhook_deliveries_total",
            "Webhook delivery attempts by this instance: result=ok (a 2xx), failed (an "
            "error, a timeout or another status: retried), gave_up (out of attempts).",
            lambda: {("ok",): stats.delivered, ("failed",): stats.failed_attempts,
                     ("gave_up",): stats.gave_up},
            ["result"])
        r.counter_from("rmeeting_webhook_retries_total",
                       "Webhook delivery attempts after the first (same webhook-id).",
                       lambda: stats.retries)
        r.gauge_from(
            "rmeeting_webhook_queue_depth",
            "Webhook deliveries not yet acknowledged, per endpoint (waiting or in progress; "
            "in a cluster the shared outbox's depth), refreshed about once a second.",
            lambda: {(e,): n for e, n in stats.depth.items()},
            ["endpoint"])
        r.counter_from(
            "rmeeting_webhook_dropped_total",
            "Webhook events dropped: where=emit (this instance's buffer to the outbox was "
            "full), where=outbox (an endpoint's queue was full: its oldest went).",
            lambda: {("emit",): stats.dropped_emit, ("outbox",): webhooks.outbox.dropped},
            ["where"])

    def expose(self) -> str:
        return self.registry.expose()


def _optional(make: Callable[..., Any], source: object, attr: str, name: str, help: str) -> None:
    if hasattr(source, attr):
        make(name, help, lambda: _number(getattr(source, attr)))


def _number(value: Any) -> Value:
    return int(value) if isinstance(value, bool) else value
