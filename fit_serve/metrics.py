"""Prometheus histograms of a replica whose ``_sum`` is the sum of the values observed.

Ray's own ``ray.util.metrics.Histogram`` reaches Prometheus through the node's metrics agent, which rebuilds every
observation from its bucket as the bucket's midpoint (``record_histogram_aggregated_batch`` in
``ray/_private/telemetry/open_telemetry_metric_recorder.py``): its buckets and count are right, its ``_sum`` is not
(one request of 25 tokens adds 24, the midpoint of 16..32). :class:`Histogram` keeps the buckets, count and sum in
the replica and publishes them as three Ray gauges with the names of a Prometheus histogram::

    ray_NAME_bucket{le="..."}   requests observed <= le, cumulative (le="+Inf": all)
    ray_NAME_sum                the sum of the observed values
    ray_NAME_count              observations

Each series carries Ray's replica tags; values grow from 0 while the replica lives, as a Prometheus histogram's do,
so ``rate()`` and ``histogram_quantile()`` work on them as on any histogram.
"""
from __future__ import annotations

import bisect
import threading
from typing import Sequence

from ray.serve.metrics import Gauge


class Histogram:
    """Cumulative buckets (upper bounds ``boundaries``, then +Inf), sum and count of one replica's observations."""

    def __init__(self, name: str, description: str, boundaries: Sequence[float]):
        self.bounds = sorted(float(b) for b in boundaries)
        self.labels = [f"{b:g}" for b in self.bounds] + ["+Inf"]
        self.counts = [0] * len(self.labels)         # per bucket, not cumulative
        self.total = 0.0
        self.lock = threading.Lock()                 # observed from the event loop and from the engine thread
        self.bucket_gauge = Gauge(f"{name}_bucket", f"{description}: observations <= le", tag_keys=("le",))
        self.sum_gauge = Gauge(f"{name}_sum", f"{description}: sum of the observed values")
        self.count_gauge = Gauge(f"{name}_count", f"{description}: observations")
        self._publish(0)

    def observe(self, value: float) -> None:
        with self.lock:
            first = bisect.bisect_left(self.bounds, value)    # the first bound >= value (Prometheus: value <= le)
            self.counts[first] += 1
            self.total += value
            self._publish(first)

    def _publish(self, first: int) -> None:
        """Set the gauges of the buckets from ``first`` on (those an observation there changed), sum and count."""
        cumulative = sum(self.counts[:first])
        for index in range(first, len(self.labels)):
            cumulative += self.counts[index]
            self.bucket_gauge.set(cumulative, tags={"le": self.labels[index]})
        self.sum_gauge.set(self.total)
        self.count_gauge.set(sum(self.counts))
