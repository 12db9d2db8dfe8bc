"""The Go server's Prometheus metrics, correct across worker processes.

Names, labels and help texts are b4fun/sqlite-rest's (metrics.go), so existing dashboards work:

| metric | type | labels | where |
|---|---|---|---|
| ``sqlite_rest_http_requests_total`` | counter | target, operation, http_code | workers |
| ``sqlite_rest_http_request_duration_milliseconds`` | histogram | target, operation, http_code | workers |
| ``sqlite_rest_auth_failed_requests_total`` | counter | — | workers |
| ``sqlite_rest_access_check_failed_requests_total`` | counter | — | workers |
| ``sqlite_rest_database_size_bytes`` | gauge | — | parent |
| ``sqlite_rest_replication_position_total`` | counter | source (``board``: known at commit; ``round``: waited for a sync round) | workers, replication on |

Workers record into prometheus_client's *multiprocess* mode: the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` (a fresh temp dir per `serve`) in the worker environment only, so
every worker writes its own mmap'ed files. The parent's ``/metrics`` merges those files
(`MultiProcessCollector`) with the parent's own default registry (database size, and the
``litestream_*`` replication metrics). Worker metrics are built by `RequestMetrics`, never at
import time, so importing this module in the parent does not register worker metrics twice.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from bisect import bisect_left
from typing import Callable, Iterable, Optional

from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .logs import at_process_exit

log = logging.getLogger(__name__)

NAMESPACE = "sqlite_rest"
#: Only these families are taken from the workers' files (a worker that imported another
#: metrics module must not shadow the parent's families).
WORKER_FAMILY_PREFIX = NAMESPACE + "_"
REQUEST_LABELS = ("target", "operation", "http_code")
#: Go's buckets (1, 10, 100, 500, 1000 ms) plus finer steps; a superset, so `le="10"` and
#: friends in existing queries keep working.
DURATION_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
#: Seconds a worker holds its request counts before writing them (RequestMetrics): the
#: supervisor's /metrics is at most this late.
FLUSH_INTERVAL_S = 0.05

#: HTTP method -> the Go server's operation label (its handler names).
OPERATIONS = {
    "GET": "queryTableOrView",
    "HEAD": "queryTableOrView",
    "POST": "insertTable",
    "PATCH": "updateTable",
    "PUT": "updateSingleEntity",
    "DELETE": "deleteTable",
}
#: Error codes (see errors.py) that count as failed authentication / failed access checks
#: when `observe` is called directly (the Flask wiring uses auth.py's signals instead).
AUTH_FAILED_CODES = frozenset({"PGRST301", "PGRST302", "PGRST303"})
ACCESS_CHECK_FAILED_CODES = frozenset({"42501"})
#: Requests outside the table routes (/, /live, /ready, OPTIONS preflight) are not counted,
#: as in the Go server, whose middleware wraps only the table routes.
_SKIP_PATHS = frozenset({"/", "/live", "/ready", "/status", "/favicon.ico"})
#: `target` of requests answered 404 (unknown or not allow-listed table): scanners probing
#: random names must not create a label set (and a metrics file entry) per name.
UNKNOWN_TARGET = "(unknown)"


class RequestMetrics:
    """The per-request metrics of one worker process (or one test app).

    Requests are tallied in memory (a count per duration bucket and a sum, per label set),
    and a thread of the worker writes the tallies to the prometheus values `FLUSH_INTERVAL_S`
    after the first request since its last write (an idle worker's thread sleeps). Why: in
    multiprocess mode every value is a locked write into an mmap'ed file, and a counter plus a
    histogram observation cost ~5 us of a 40 us GET by key (#11, bench/api_get_by_pk.py),
    against ~1.5 us for the tally. The supervisor's /metrics is at most that late; a worker
    killed by SIGKILL loses what it had not written, at most that long of requests. Collecting
    this registry (a test app's) writes the tallies first.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = REGISTRY):
        flush_first = _FlushBeforeCollect(self)
        if registry is not None:
            registry.register(flush_first)  # first: collected before the rest
        try:
            self.requests_total = Counter(
                "http_requests_total", "Total number of HTTP requests", REQUEST_LABELS,
                namespace=NAMESPACE, registry=registry)
            self.request_duration = Histogram(
                "http_request_duration_milliseconds", "HTTP request latency", REQUEST_LABELS,
                namespace=NAMESPACE, buckets=DURATION_BUCKETS_MS, registry=registry)
            self.auth_failed = Counter(
                "auth_failed_requests_total", "Total number of failed authentication requests",
                namespace=NAMESPACE, registry=registry)
            self.access_check_failed = Counter(
                "access_check_failed_requests_total",
                "Total number of failed access check requests",
                namespace=NAMESPACE, registry=registry)
        except Exception:  # e.g. the names already registered: leave the registry as it was
            if registry is not None:
                registry.unregister(flush_first)
            raise
        # (target, operation, code) -> (counter child, histogram child): labels() is slow.
        self._children: dict = {}
        self._lock = threading.Lock()
        #: Held over a whole write: an exit-time flush waits for the thread's batch in flight.
        self._write_lock = threading.Lock()
        #: (target, operation, code) -> [sum of durations, count per bucket..., count > last]
        self._tally: dict = {}
        _LIVE.add(self)

    def record(self, method: str, path: str, status: int, duration_ms: float) -> None:
        """One finished request, as the WSGI middleware (observability/middleware.py) saw it:
        only table requests count, as in the Go server."""
        operation = OPERATIONS.get(method)
        if operation is None or path in _SKIP_PATHS:
            return
        if status == 404:
            target = UNKNOWN_TARGET
        else:  # the table, or rpc/<function> (bounded by the functions file: 404s are unknown)
            parts = path.strip("/").split("/", 2)
            target = "rpc/" + parts[1] if parts[0] == "rpc" and len(parts) == 2 else parts[0]
        self.observe(target, operation, status, duration_ms)

    def observe(self, target: str, operation: str, status: int, duration_ms: float,
                error_code: Optional[str] = None) -> None:
        key = (target, operation, status)
        with self._lock:
            tally = self._tally.get(key)
            if tally is None:
                first = not self._tally
                tally = self._tally[key] = [0.0] * (len(DURATION_BUCKETS_MS) + 2)
            else:
                first = False
            tally[0] += duration_ms
            # the first bound >= the duration: prometheus' `le` (index len(bounds): +Inf)
            tally[1 + bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
        if first:
            _flusher().put(weakref.ref(self))
        if error_code in AUTH_FAILED_CODES:
            self.auth_failed.inc()
        elif error_code in ACCESS_CHECK_FAILED_CODES:
            self.access_check_failed.inc()

    def flush(self) -> None:
        """Write the tallies to the prometheus values (the mmap files in a worker)."""
        with self._write_lock:
            with self._lock:
                tallies, self._tally = self._tally, {}
            self._write(tallies)

    def _write(self, tallies: dict) -> None:
        for key, tally in tallies.items():
            counter, histogram = self._children_of(key)
            counter.inc(sum(tally[1:]))
            # Histogram.observe takes one value at a time: its per-bucket values (not
            # cumulative: observe() adds 1 to the first bucket whose bound holds the value) and
            # its sum take a tally at once. Private fields: setup.cfg pins the tested minor
            # release, tests/test_metrics.py checks both agree.
            histogram._sum.inc(tally[0])
            for bucket, count in zip(histogram._buckets, tally[1:]):
                if count:
                    bucket.inc(count)

    def _children_of(self, key: tuple):
        children = self._children.get(key)
        if children is None:
            target, operation, status = key
            labels = (target, operation, str(status))
            children = (self.requests_total.labels(*labels),
                        self.request_duration.labels(*labels))
            if len(self._children) < 10_000:  # unbounded label sets would leak memory
                self._children[key] = children
        return children

    def connect_signals(self, app: Flask) -> None:
        """Count the auth failures and failed access checks auth.py signals (a table outside
        the allow-list answers 404 like a missing one, so the status code alone cannot tell)."""
        from ..auth.authenticator import access_denied, auth_failed

        auth_failed.connect(lambda sender, **kw: self.auth_failed.inc(), sender=app, weak=False)
        access_denied.connect(lambda sender, **kw: self.access_check_failed.inc(), sender=app,
                              weak=False)


#: Every RequestMetrics of this process, for the last write at exit.
_LIVE: "weakref.WeakSet[RequestMetrics]" = weakref.WeakSet()
_FLUSHER: Optional[tuple] = None  # (pid, the queue its thread takes tallies to write from)
_FLUSHER_LOCK = threading.Lock()


def _flusher() -> queue.SimpleQueue:
    """The queue of this process's metrics-writing thread (started on first use, again in a
    forked child: threads do not survive a fork)."""
    global _FLUSHER
    flusher = _FLUSHER
    if flusher is None or flusher[0] != os.getpid():
        with _FLUSHER_LOCK:
            flusher = _FLUSHER
            if flusher is None or flusher[0] != os.getpid():
                # Every process that counts writes what is left when it ends (a granian worker
                # too); one killed by SIGKILL loses at most FLUSH_INTERVAL_S of counts.
                at_process_exit(_flush_all)
                flusher = _FLUSHER = (os.getpid(), queue.SimpleQueue())
                threading.Thread(target=_write_tallies, args=(flusher[1],),
                                 name="request-metrics", daemon=True).start()
    return flusher[1]


def _write_tallies(due: queue.SimpleQueue) -> None:
    """The metrics-writing thread: waits for a first tally, lets it grow `FLUSH_INTERVAL_S`,
    writes every tally that is due (an idle worker's thread sleeps in get())."""
    while True:
        refs = [due.get()]
        time.sleep(FLUSH_INTERVAL_S)
        try:
            while True:
                refs.append(due.get_nowait())
        except queue.Empty:
            pass
        for metrics in {ref() for ref in refs} - {None}:
            try:
                metrics.flush()
            except Exception:  # noqa: BLE001 - a full disk must not end the counting
                log.exception("writing the request metrics failed")


def _flush_all() -> None:
    for metrics in list(_LIVE):
        metrics.flush()


class _FlushBeforeCollect:
    """Registered before the request metrics: collecting the registry writes their tallies
    first (a test app's registry; the supervisor reads the workers' files instead)."""

    def __init__(self, metrics: RequestMetrics):
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        self._metrics.flush()
        return []


def replication_position_counter(registry: Optional[CollectorRegistry] = REGISTRY):
    """How each write learned its X-Replication-Txid (ours, not the Go server's): nearly all
    should be ``board``; a growing ``round`` share means writes wait (replication/position.py)."""
    counter = Counter("replication_position_total",
                      "Writes by how their X-Replication-Txid was found", ("source",),
                      namespace=NAMESPACE, registry=registry)
    children = {source: counter.labels(source) for source in ("board", "round")}
    return lambda source: children[source].inc()


class DatabaseSizeGauge:
    """``sqlite_rest_database_size_bytes`` (page_count * page_size), kept by the parent."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.gauge = Gauge("database_size_bytes", "Size of the database file",
                           namespace=NAMESPACE, registry=registry)

    def set(self, size_bytes: float) -> None:
        self.gauge.set(size_bytes)


class _WorkerFamilies:
    """The workers' sqlite_rest_* families from the multiprocess directory."""

    def __init__(self, multiproc_dir: str):
        from prometheus_client.multiprocess import MultiProcessCollector

        # registry=None: collect on demand, do not register anywhere.
        self._collector = MultiProcessCollector(None, path=multiproc_dir)

    def collect(self) -> Iterable:
        for family in self._collector.collect():
            if family.name.startswith(WORKER_FAMILY_PREFIX):
                yield family


class MetricsExposition:
    """Renders the parent's /metrics: its own registry plus the workers' merged files."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiproc_dir: Optional[str], registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self.worker_registry = None
        if multiproc_dir:
            self.worker_registry = CollectorRegistry(auto_describe=False)
            self.worker_registry.register(_WorkerFamilies(multiproc_dir))

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        if self.worker_registry is not None:
            text += generate_latest(self.worker_registry)
        return text


def mark_worker_dead(pid: int, multiproc_dir: Optional[str]) -> None:
    """Forget a dead worker's live gauges (its counters stay: what it counted happened)."""
    if not multiproc_dir:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, multiproc_dir)


class ReplicaCollector:
    """A read replica's view of its replica, on the supervisor's /metrics: the counters of
    its own connection through the VFS (``stats()``: the dict of ``replica_stats``)."""

    GAUGES = (("txid", "TXID of the replica position this server reads"),
              ("lag", "Seconds since the last successful poll of the replica (-1 before the first)"),
              ("page_count", "Pages of the database at that position"),
              ("cache_pages", "Pages held by the VFS page cache"),
              ("hydration_progress", "Hydration: share of the local copy's restore done (0..1)"),
              ("hydration_txid", "Hydration: TXID the local copy holds (0 until complete)"))
    COUNTERS = (("polls", "Polls of the replica for new LTX files"),
                ("poll_errors", "Polls that failed (the next one retries)"),
                ("updates", "New positions installed"),
                ("cache_hits", "Page reads served by the VFS page cache"),
                ("cache_misses", "Page reads fetched from the replica"),
                ("bytes_fetched", "Bytes read from the replica (indexes, headers, pages)"),
                ("hydration_reads", "Page reads served by the hydrated local copy"))

    #: Prefix of the names (``sqlite_rest_replica_*`` are the primary's replication gauges).
    PREFIX = f"{NAMESPACE}_read_replica_"

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats

    def describe(self):
        """Names only (registering must not open the replica: the workers are not forked yet)."""
        return self._families(None)

    def collect(self):
        try:
            stats = self._stats()
        except Exception:  # noqa: BLE001 - an unreachable replica: no sample, /ready says why
            return []
        return self._families(stats)

    def _families(self, stats):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        out = []
        for key, doc in self.GAUGES:
            name = self.PREFIX + ("lag_seconds" if key == "lag" else key)
            family = GaugeMetricFamily(name, doc)
            if stats is not None:
                family.add_metric([], float(stats[key]))
            out.append(family)
        for key, doc in self.COUNTERS:
            family = CounterMetricFamily(self.PREFIX + key, doc)
            if stats is not None:
                family.add_metric([], float(stats[key]))
            out.append(family)
        return out
