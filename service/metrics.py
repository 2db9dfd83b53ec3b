"""Prometheus metrics, shared by every API worker and consumer process.

prometheus-client runs in multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is in the
environment when it is imported: `rankstream up`/`api` empty the folder named by
`RANKSTREAM_METRICS_DIR` and hand it to their children (service.up.child_env), so each
granian worker and consumer writes its own files and `/metrics` on any worker adds them
up. Without it (in-process tests, a bare `rankstream consume`) the process's own
registry is served.

Stream length, consumer lag and pending count are read from Redis at scrape time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "rankstream_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "rankstream_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
SUBMISSIONS_ACCEPTED = Counter(
    "rankstream_submissions_accepted_total",
    "Score submissions put on the stream (a batch counts each item).",
)
SUBMISSIONS_REJECTED = Counter(
    "rankstream_submissions_rejected_total",
    "Submission requests refused, by HTTP status.",
    ["status"],
)
RATE_LIMITED = Counter(
    "rankstream_rate_limited_total",
    "Requests refused with 429, by the limit that refused them.",
    ["limit"],
)
BATCH_SIZE = Histogram(
    "rankstream_consumer_batch_size",
    "Stream entries per consumer batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_DURATION = Histogram(
    "rankstream_consumer_batch_duration_seconds",
    "Time to persist, apply and acknowledge one consumer batch.",
    buckets=_LATENCY_BUCKETS,
)
BATCH_EVENTS = Counter(
    "rankstream_consumer_events_total",
    "Events processed by consumers: `new` ones and `duplicate` (already applied) ones.",
    ["kind"],
)
DEAD_LETTERS = Counter(
    "rankstream_dead_letters_total",
    "Stream entries moved to the dead-letter stream, by reason.",
    ["reason"],
)
DEPENDENCY_ERRORS = Counter(
    "rankstream_dependency_errors_total",
    "Failed calls to Redis or PostgreSQL, by dependency and where they happened.",
    ["dependency", "where"],
)
HOT_READS = Counter(
    "rankstream_hot_reads_total",
    "Polled reads (top, rank, around GETs) the hot path answered itself or passed on to "
    "the full API (service.hotreads).",
    ["outcome"],
)
REBUILD_DURATION = Histogram(
    "rankstream_rebuild_duration_seconds",
    "Time to rebuild one board's sorted sets.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)

# Connection pools of each API process (service.poolstats samples them). Mode "liveall":
# pools are per process and one exhausted pool hurts even while the others idle, so every
# live process keeps its own series (label `pid` in multiprocess mode) for PromQL to add up
# or take the max of; processes that are gone drop out (poolstats.forget_dead). Labelled,
# so only processes that sample pools have series (an unlabelled gauge would show a 0 for
# every process importing this module, consumers included).
POOL_CONNECTIONS = Gauge(
    "rankstream_pool_connections",
    "Open connections of the API process's pools, by pool (redis, postgres) and state"
    " (in_use: checked out; idle: waiting in the pool).",
    ["pool", "state"],
    multiprocess_mode="liveall",
)
POOL_MAX = Gauge(
    "rankstream_pool_max_connections",
    "Most connections the API process's pool opens, by pool (RANKSTREAM_REDIS_POOL_SIZE,"
    " RANKSTREAM_PG_POOL_MAX).",
    ["pool"],
    multiprocess_mode="liveall",
)


# --- per-request series, buffered ------------------------------------------------------------
# A request updates four values (its counter, its latency's sum and bucket, the hot path's
# counter). In multiprocess mode each update takes a lock, asks the kernel for the pid and
# writes an mmap'd file, which the hot path felt. These series count in the process instead
# and reach prometheus-client once a second (flush_periodically), before every scrape this
# process answers, and at shutdown: another worker's requests show within a second.

FLUSH_S = 1.0


class BufferedCounter:
    """A counter child whose increments wait in the process for `flush`."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class BufferedHistogram:
    """A histogram child whose observations wait in the process for `flush`. It writes the
    child's sum and bucket values directly (prometheus-client has no bulk observe);
    tests/test_metrics.py checks the exposition still adds up."""

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # the last one is +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, value: float) -> None:
        self._sum += value
        self._counts[bisect_left(self._bounds, value)] += 1  # first bucket with value <= le
        self._pending = True

    def flush(self) -> None:
        if not self._pending:
            return
        counts, total = self._counts, self._sum
        self._counts, self._sum, self._pending = [0] * len(self._bounds), 0.0, False
        self._child._sum.inc(total)
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


_buffered: list[BufferedCounter | BufferedHistogram] = []


def buffered_counter(metric: Counter, *labels: str) -> BufferedCounter:
    """A buffered child of a labelled counter."""
    child = BufferedCounter(metric.labels(*labels))
    _buffered.append(child)
    return child


def buffered_histogram(metric: Histogram, *labels: str) -> BufferedHistogram:
    """A buffered child of a labelled histogram."""
    child = BufferedHistogram(metric.labels(*labels))
    _buffered.append(child)
    return child


def flush() -> None:
    """Hand every buffered update of this process to prometheus-client."""
    for child in _buffered:
        child.flush()


async def flush_periodically(interval_s: float = FLUSH_S) -> None:
    """Flush every `interval_s` until cancelled, and once more then."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            flush()
    finally:
        flush()


def multiprocess() -> bool:
    """True when prometheus-client writes to a multiprocess folder in this process."""
    return MULTIPROC_ENV in os.environ


def reset_dir(settings: Settings) -> str:
    """Empty (or create) the multiprocess folder before the processes that write to it
    start; returns its absolute path."""
    path = Path(settings.metrics_path).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def dependency_error(dependency: str, where: str) -> None:
    """Count a failed Redis/PostgreSQL call."""
    DEPENDENCY_ERRORS.labels(dependency, where).inc()


def dependency_of(exc: BaseException) -> str | None:
    """`redis` or `postgres` when the exception comes from that client library."""
    module = type(exc).__module__
    if module.startswith("redis"):
        return "redis"
    if module.startswith("asyncpg"):
        return "postgres"
    return None


class StreamStats:
    """Stream length, and the consumer group's lag and pending count, as read at scrape."""

    def __init__(self, length: int | None, lag: int | None, pending: int | None) -> None:
        self.length = length
        self.lag = lag
        self.pending = pending


class _Snapshot(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _gauge(name: str, doc: str, value: int | None) -> GaugeMetricFamily | None:
    return None if value is None else GaugeMetricFamily(name, doc, value=value)


def render(stats: StreamStats | None = None) -> bytes:
    """The exposition text: every process's series plus the stream gauges."""
    flush()
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Snapshot(list(REGISTRY.collect())))
    if stats is not None:
        gauges = [
            _gauge("rankstream_stream_length", "Entries in the submission stream.", stats.length),
            _gauge(
                "rankstream_consumer_lag",
                "Stream entries not yet delivered to the consumer group.",
                stats.lag,
            ),
            _gauge(
                "rankstream_consumer_pending",
                "Stream entries delivered but not yet acknowledged.",
                stats.pending,
            ),
        ]
        registry.register(_Snapshot([g for g in gauges if g is not None]))
    return generate_latest(registry)
