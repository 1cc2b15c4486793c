"""A tiny metrics registry with the Prometheus text exposition format (0.0.4).

Why not ``prometheus_client``: its metrics take a lock on every increment (it is built for
threads) and keep a process-global registry, while rmeeting counts on one Trio thread and runs
several instances in one test process. Here a counter is one ``+=`` on a plain attribute, and
each instance owns its :class:`Registry`.

Three kinds, each optionally with labels: :class:`Counter` (only goes up), :class:`Gauge` and
:class:`Histogram` (cumulative buckets, ``_sum`` and ``_count``). A counter or gauge may instead
read its value at scrape time (``collect=``), so what another part already counts (the hub's
deliveries, the etcd watcher's rejected values) costs nothing until someone asks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["DEFAULT_BUCKETS", "Counter", "Gauge", "Histogram", "Registry", "Value"]

#: seconds, for latencies from sub-millisecond fan-out to a multi-second stall
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

Value = float | int
#: what a ``collect=`` callback returns: one value, or label values -> value
Collected = Value | Mapping[tuple[str, ...], Value]


class _Value:
    """One time series of a counter or gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Value = 0

    def inc(self, amount: Value = 1) -> None:
        self.value += amount

    def dec(self, amount: Value = 1) -> None:
        self.value -= amount

    def set(self, value: Value) -> None:
        self.value = value


class _Buckets:
    """One time series of a histogram: counts per bucket (not yet cumulative), sum, count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


S = TypeVar("S", _Value, _Buckets)


class _Metric(Generic[S]):
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        if not self.labelnames:
            self._series[()] = self._new()

    def _new(self) -> S:
        raise NotImplementedError

    def labels(self, *values: str) -> S:
        """The series of these label values (made on first use). Keep it to update it cheaply."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._new()
        return series

    def _unlabelled(self) -> S:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._series[()]

    def lines(self) -> Iterator[str]:
        raise NotImplementedError


class _Scalar(_Metric[_Value]):
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), *,
                 collect: Callable[[], Collected] | None = None) -> None:
        super().__init__(name, help, labelnames)
        self._collect = collect

    def _new(self) -> _Value:
        return _Value()

    @property
    def value(self) -> Value:
        return self._unlabelled().value

    def inc(self, amount: Value = 1) -> None:
        self._unlabelled().inc(amount)

    def lines(self) -> Iterator[str]:
        if self._collect is not None:
            got = self._collect()
            values = got if isinstance(got, Mapping) else {(): got}
        else:
            values = {k: s.value for k, s in self._series.items()}
        for label_values, value in values.items():
            yield f"{self.name}{_labels(self.labelnames, label_values)} {_number(value)}"


class Counter(_Scalar):
    """A count that only goes up (name it ``..._total``)."""

    kind = "counter"


class Gauge(_Scalar):
    """A value that goes up and down."""

    kind = "gauge"

    def dec(self, amount: Value = 1) -> None:
        self._unlabelled().dec(amount)

    def set(self, value: Value) -> None:
        self._unlabelled().set(value)


class Histogram(_Metric[_Buckets]):
    """Observations counted into buckets (upper bounds, ascending; +Inf is implied)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        super().__init__(name, help, labelnames)

    def _new(self) -> _Buckets:
        return _Buckets(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def lines(self) -> Iterator[str]:
        for label_values, series in self._series.items():
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), series.counts, strict=True):
                cumulative += count
                labels = _labels((*self.labelnames, "le"), (*label_values, _number(bound)))
                yield f"{self.name}_bucket{labels} {cumulative}"
            labels = _labels(self.labelnames, label_values)
            yield f"{self.name}_sum{labels} {_number(series.sum)}"
            yield f"{self.name}_count{labels} {series.count}"


class Registry:
    """The metrics of one instance, in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric[_Value] | _Metric[_Buckets]] = {}

    def _add(self, metric: _Metric[S]) -> _Metric[S]:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = (), *,
                collect: Callable[[], Collected] | None = None) -> Counter:
        metric = Counter(name, help, labelnames, collect=collect)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), *,
              collect: Callable[[], Collected] | None = None) -> Gauge:
        metric = Gauge(name, help, labelnames, collect=collect)
        self._add(metric)
        return metric

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (), *,
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets=buckets)
        self._add(metric)
        return metric

    def names(self) -> list[str]:
        return list(self._metrics)

    def expose(self) -> str:
        """Every metric in the text format (``Content-Type: text/plain; version=0.0.4``)."""
        out: list[str] = []
        for metric in self._metrics.values():
            help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {metric.name} {help_text}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            out.extend(metric.lines())
        return "\n".join(out) + "\n"


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = (f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + ",".join(pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
