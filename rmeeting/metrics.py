"""Prometheus metrics with ``prometheus_client``: one registry per instance, never the global one.

Several instances may run in one process (the tests do), so each :class:`Registry` wraps its own
``CollectorRegistry``. Counters, gauges and histogram that the instance updates itself are the
library's own (``Counter``, ``Gauge``, ``Histogram``, registered on that registry). What another
part already counts (the hub's deliveries, the etcd watcher's rejected values, the relay's state)
is read only when scraped, by one custom collector (:class:`ScrapeTimeCollector`), so it costs
nothing until someone asks.

The ``*_created`` series that ``prometheus_client`` adds to counters and histograms by default are
switched off (``disable_created_metrics``, for the process): /metrics keeps exactly the series that
docs/operations.md lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "DEFAULT_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "ScrapeTimeCollector",
    "Value",
]

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

#: seconds, for latencies from sub-millisecond fan-out to a multi-second stall
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

Value = float | int
#: what a scrape-time reader returns: one value, or label values -> value
Collected = Value | Mapping[tuple[str, ...], Value]
Kind = Literal["counter", "gauge"]


class _ReadAtScrape:
    """One metric family whose samples a callback gives when scraped."""

    __slots__ = ("help", "kind", "labelnames", "name", "read")

    def __init__(self, kind: Kind, name: str, help: str, labelnames: Sequence[str],
                 read: Callable[[], Collected]) -> None:
        self.kind, self.name, self.help = kind, name, help
        self.labelnames = tuple(labelnames)
        self.read = read

    def family(self) -> Metric:
        family: CounterMetricFamily | GaugeMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.help, labels=self.labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.help, labels=self.labelnames)
        got = self.read()
        values = got if isinstance(got, Mapping) else {(): got}
        for label_values, value in values.items():
            if len(label_values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {label_values}")
            family.add_metric(list(label_values), float(value))
        return family


class ScrapeTimeCollector(Collector):
    """The custom collector of one registry: every metric read from the parts when scraped."""

    def __init__(self) -> None:
        self._metrics: list[_ReadAtScrape] = []

    def add(self, metric: _ReadAtScrape) -> None:
        self._metrics.append(metric)

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.family()


class Registry:
    """The metrics of one instance: its own ``CollectorRegistry`` and scrape-time collector."""

    def __init__(self) -> None:
        # auto_describe: the library refuses a name registered twice (for its own metrics);
        # _names does the same across both kinds
        self.collector_registry = CollectorRegistry(auto_describe=True)
        self._scrape_time = ScrapeTimeCollector()
        self.collector_registry.register(self._scrape_time)
        self._names: list[str] = []

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"metric {name} is already registered")
        self._names.append(name)

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        """A count this instance increments (name it ``..._total``)."""
        self._claim(name)
        return Counter(name, help, labelnames, registry=self.collector_registry)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        self._claim(name)
        return Gauge(name, help, labelnames, registry=self.collector_registry)

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (), *,
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        self._claim(name)
        return Histogram(name, help, labelnames, registry=self.collector_registry,
                         buckets=buckets)

    def counter_from(self, name: str, help: str, read: Callable[[], Collected],
                        labelnames: Sequence[str] = ()) -> None:
        """A counter whose value ``read()`` gives when scraped: one number, or a mapping of
        label values (in ``labelnames``' order) to numbers. Name it ``..._total``."""
        self._read_at_scrape("counter", name, help, read, labelnames)

    def gauge_from(self, name: str, help: str, read: Callable[[], Collected],
                      labelnames: Sequence[str] = ()) -> None:
        """A gauge whose value ``read()`` gives when scraped (as :meth:`counter_from`)."""
        self._read_at_scrape("gauge", name, help, read, labelnames)

    def _read_at_scrape(self, kind: Kind, name: str, help: str, read: Callable[[], Collected],
                        labelnames: Sequence[str]) -> None:
        self._claim(name)
        self._scrape_time.add(_ReadAtScrape(kind, name, help, labelnames, read))

    def names(self) -> list[str]:
        """Every metric's name, in registration order."""
        return list(self._names)

    def expose(self) -> str:
        """Every metric in the text format; rmeeting's names are all legal in its classic
        version, 0.0.4, which is what /metrics declares."""
        return prometheus_client.generate_latest(self.collector_registry).decode()
