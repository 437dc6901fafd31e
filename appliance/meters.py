"""Counters and histograms that the server's parts update as things happen, for ``/metrics``.

Gauges are read from their owners when scraped (metrics.py); what must be counted as it happens
(registrations and refusals, API answers, deltas and their latency, webhook deliveries, store
latency) is counted here. One registry per process, like Prometheus's client
libraries: the parts that count need no wiring, and a process runs one server.
"""

from __future__ import annotations

import bisect
from typing import Iterable

# Latency buckets (seconds): a store call takes under a millisecond; a delta waits for its writer.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_SERIES = 64  # label combinations per metric; more go to "other" (a label never grows without bound)


def _label_text(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help_, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1) -> None:
        key = tuple(labels)
        if key not in self.values and len(self.values) >= MAX_SERIES:
            key = tuple("other" for _ in labels)
        self.values[key] = self.values.get(key, 0) + by

    def get(self, *labels: str) -> float:
        return self.values.get(tuple(labels), 0)

    def total(self) -> float:
        return sum(self.values.values())

    def lines(self) -> Iterable[str]:
        if not self.labels:
            yield f"{self.name} {_number(self.values.get((), 0))}"
        for key, v in sorted(self.values.items()):
            if key:
                yield f"{self.name}{_label_text(self.labels, key)} {_number(v)}"


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = FAST_BUCKETS,
                 labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels, self.buckets = name, help_, labels, buckets
        self.series: dict[tuple[str, ...], list] = {}  # labels → [bucket counts..., sum, count]

    def observe(self, seconds: float, *labels: str) -> None:
        key = tuple(labels)
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= MAX_SERIES:
                key = tuple("other" for _ in labels)
            s = self.series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
        i = bisect.bisect_left(self.buckets, seconds)
        if i < len(self.buckets):
            s[i] += 1
        s[-2] += seconds
        s[-1] += 1

    def count(self, *labels: str) -> int:
        s = self.series.get(tuple(labels))
        return 0 if s is None else s[-1]

    def lines(self) -> Iterable[str]:
        for key, s in sorted(self.series.items()):
            running = 0
            for bound, n in zip(self.buckets, s):
                running += n
                le = _label_text(self.labels, key, 'le="%s"' % bound)
                yield f"{self.name}_bucket{le} {running}"
            le = _label_text(self.labels, key, 'le="+Inf"')
            yield f"{self.name}_bucket{le} {s[-1]}"
            yield f"{self.name}_sum{_label_text(self.labels, key)} {_number(s[-2])}"
            yield f"{self.name}_count{_label_text(self.labels, key)} {s[-1]}"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Meters:
    def __init__(self) -> None:
        self.all: list[Counter | Histogram] = []

    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Counter:
        c = Counter(name, help_, labels)
        self.all.append(c)
        return c

    def histogram(self, name: str, help_: str, buckets: tuple[float, ...] = FAST_BUCKETS,
                  labels: tuple[str, ...] = ()) -> Histogram:
        h = Histogram(name, help_, buckets, labels)
        self.all.append(h)
        return h

    def render(self, out: list[str]) -> None:
        for m in self.all:
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(m.lines())


METERS = Meters()
registrations = METERS.counter("trioscale_registrations_total", "nodes registered (new or logging in again), by method",
                               ("method",))
registrations_refused = METERS.counter("trioscale_registrations_refused_total", "registrations refused, by reason",
                                       ("reason",))
api_requests = METERS.counter("trioscale_api_requests_total", "admin API answers, by HTTP status", ("status",))
deltas_sent = METERS.counter("trioscale_map_deltas_total", "netmap updates (deltas) written to map streams")
delta_latency = METERS.histogram("trioscale_map_delta_seconds",
                                 "from a change to the model to its delta written to a map stream")
webhook_deliveries = METERS.counter("trioscale_webhook_deliveries_total",
                                    "webhook delivery attempts, by result (delivered, retry, failed, dropped)",
                                    ("result",))
store_latency = METERS.histogram("trioscale_store_seconds", "time of a database transaction, queueing included")
