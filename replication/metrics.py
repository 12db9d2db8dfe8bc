"""Litestream's Prometheus metrics, on prometheus_client's default registry.

Every metric is declared once in :data:`METRICS` (name, kind, labels, help) — the table *is*
the user-facing vocabulary, so adding the per-DB ``litestream_*`` metrics means adding rows.
Look a metric up with :func:`metric` or use the module attributes bound at the bottom.

Names are exposed exactly as Litestream's Go client exposes them (dashboards written for
Litestream keep working): no ``_created`` series, and counters whose name lacks ``_total``
(``litestream_replica_operation_bytes``) are not renamed to ``…_bytes_total``.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.samples import Sample

#: Buckets of ``litestream_replica_operation_duration_seconds`` (``internal/internal.go``).
REPLICA_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)


class _GoCounter(Counter):
    """A counter exposed as the Go client does: ``<name>_total`` only, no ``_created``."""

    def _child_samples(self):
        return (Sample("_total", {}, self._value.get(), None, self._value.get_exemplar()),)


class _GoPlainCounter(Counter):
    """A Go counter whose name does not end in ``_total``.

    prometheus_client would expose it as ``<name>_total``; Litestream's series is ``<name>``.
    We keep the series name and report the type as ``untyped`` (the text format ties the
    ``counter`` TYPE line to the ``_total`` suffix in this client library).
    """

    _type = "unknown"

    def _child_samples(self):
        return (Sample("", {}, self._value.get(), None, None),)


class _GoHistogram(Histogram):
    """A histogram without the ``_created`` series (as Go exposes it)."""

    def _child_samples(self):
        return [s for s in super()._child_samples() if s.name != "_created"]


@dataclass(frozen=True)
class MetricSpec:
    name: str                     # exact exposed name
    kind: str                     # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def build(self, registry=REGISTRY):
        if self.kind == "counter":
            cls = _GoCounter if self.name.endswith("_total") else _GoPlainCounter
            return cls(self.name, self.help, self.labels, registry=registry)
        if self.kind == "gauge":
            return Gauge(self.name, self.help, self.labels, registry=registry)
        if self.kind == "histogram":
            return _GoHistogram(self.name, self.help, self.labels, registry=registry,
                                buckets=self.buckets or Histogram.DEFAULT_BUCKETS)
        raise ValueError(f"unknown metric kind {self.kind!r}")


_REPLICA_LABELS = ("replica_type", "operation")

#: Every metric of the replication core. Operation labels are GET, PUT, DELETE, LIST.
METRICS: tuple[MetricSpec, ...] = (
    # --- replica client metrics (internal/internal.go) ----------------------------------------
    MetricSpec("litestream_replica_operation_total", "counter",
               "The number of replica operations performed", _REPLICA_LABELS),
    MetricSpec("litestream_replica_operation_bytes", "counter",
               "The number of bytes used by replica operations", _REPLICA_LABELS),
    MetricSpec("litestream_replica_operation_duration_seconds", "histogram",
               "Duration of replica operations", _REPLICA_LABELS, REPLICA_DURATION_BUCKETS),
    MetricSpec("litestream_replica_operation_errors_total", "counter",
               "The number of replica operation errors", _REPLICA_LABELS + ("code",)),
    # --- ours (not in Litestream): retries hidden inside one operation ------------------------
    MetricSpec("sqlite_rest_replica_operation_retries_total", "counter",
               "Transient replica errors (connection, 5xx, throttling) retried with backoff",
               _REPLICA_LABELS),
    # --- per-DB metrics (db.go); label db = absolute DB path (local side, replication/db.py) --
    MetricSpec("litestream_db_size", "gauge", "The current size of the real DB", ("db",)),
    MetricSpec("litestream_wal_size", "gauge",
               "The current size of the real WAL (logical synced end, bytes)", ("db",)),
    MetricSpec("litestream_total_wal_bytes", "counter",
               "Total number of bytes of WAL turned into LTX files", ("db",)),
    MetricSpec("litestream_txid", "gauge", "Current transaction ID", ("db",)),
    MetricSpec("litestream_sync_count", "counter", "Number of sync operations", ("db",)),
    MetricSpec("litestream_sync_error_count", "counter", "Number of sync errors", ("db",)),
    MetricSpec("litestream_sync_seconds", "counter",
               "Time spent syncing WAL to LTX, in seconds", ("db",)),
    MetricSpec("litestream_disk_full", "gauge",
               "1 while the last sync failed because the disk is full, else 0", ("db",)),
    MetricSpec("litestream_checkpoint_count", "counter", "Number of checkpoint operations",
               ("db", "mode")),
    MetricSpec("litestream_checkpoint_error_count", "counter", "Number of checkpoint errors",
               ("db", "mode")),
    MetricSpec("litestream_checkpoint_seconds", "counter",
               "Time spent checkpointing WAL, in seconds", ("db", "mode")),
    MetricSpec("litestream_compaction_verify_error_count", "counter",
               "Number of compaction verification errors", ("db",)),
)

_BUILT = {spec.name: spec.build() for spec in METRICS}


def metric(name: str):
    """The registered metric object called ``name`` (KeyError for names not in METRICS)."""
    return _BUILT[name]


replica_operation_total = metric("litestream_replica_operation_total")
replica_operation_bytes = metric("litestream_replica_operation_bytes")
replica_operation_duration_seconds = metric("litestream_replica_operation_duration_seconds")
replica_operation_errors_total = metric("litestream_replica_operation_errors_total")
replica_operation_retries_total = metric("sqlite_rest_replica_operation_retries_total")


# --- per-DB metrics (db.go), used by replication/db.py -------------------------------------------
db_size = metric("litestream_db_size")
wal_size = metric("litestream_wal_size")
total_wal_bytes = metric("litestream_total_wal_bytes")
txid = metric("litestream_txid")
sync_count = metric("litestream_sync_count")
sync_error_count = metric("litestream_sync_error_count")
sync_seconds = metric("litestream_sync_seconds")
disk_full = metric("litestream_disk_full")
checkpoint_count = metric("litestream_checkpoint_count")
checkpoint_error_count = metric("litestream_checkpoint_error_count")
checkpoint_seconds = metric("litestream_checkpoint_seconds")
compaction_verify_error_count = metric("litestream_compaction_verify_error_count")


# --- the upload loop and retention (replication/replica.py, store.py) ---------------------------
#: Litestream's L0 retention counter plus our lag gauges (the server's "lag gauge and time of
#: the last successful sync"). Gauges are read from ``Replica.health`` when scraped.
UPLOAD_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("litestream_l0_retention_files_total", "counter",
               "L0 files examined by retention, by outcome", ("db", "status")),
    MetricSpec("sqlite_rest_replica_lag_seconds", "gauge",
               "Seconds the replica has been behind the local database (0 when caught up)",
               ("db",)),
    MetricSpec("sqlite_rest_replica_lag_txids", "gauge",
               "Local TXID minus the replica's TXID", ("db",)),
    MetricSpec("sqlite_rest_replica_last_sync_timestamp_seconds", "gauge",
               "Unix time of the last upload round that left the replica caught up", ("db",)),
)
for _spec in UPLOAD_METRICS:
    if _spec.name not in _BUILT:
        _BUILT[_spec.name] = _spec.build()

l0_retention_files_total = metric("litestream_l0_retention_files_total")
replica_lag_seconds = metric("sqlite_rest_replica_lag_seconds")
replica_lag_txids = metric("sqlite_rest_replica_lag_txids")
replica_last_sync_timestamp_seconds = metric("sqlite_rest_replica_last_sync_timestamp_seconds")


def track_replica(db_path: str, health) -> None:
    """Bind the lag gauges of ``db_path`` to ``health()`` (a ``ReplicaHealth`` getter)."""
    replica_lag_seconds.labels(db=db_path).set_function(lambda: health().lag_seconds)
    replica_lag_txids.labels(db=db_path).set_function(lambda: health().lag_txids)
    replica_last_sync_timestamp_seconds.labels(db=db_path).set_function(
        lambda: health().last_sync_at or 0.0)
