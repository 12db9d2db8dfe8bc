"""The Store: every DB of a config with its replica, plus compaction, snapshots and retention
(Litestream's ``store.go``, ``compaction_level.go`` and the ``CompactDB`` half of ``db.go``).

Threads (all daemons, all stopped by :meth:`Store.close`):

* per DB: the DB's sync loop (``db.monitor``) and the replica's upload loop;
* per compaction level L1..Ln and for L9: one monitor that wakes at
  ``truncate(now, interval) + interval`` (wall clock, UTC, Go's ``Time.Truncate``) and runs the
  level for every DB;
* one L0-retention monitor, every ``l0-retention-check-interval``.

Maintenance of one DB (compaction, snapshot, retention) is serialised by a per-DB lock, so a
retention pass never deletes an L0 file a compaction is reading.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from . import compactor
from .defaults import (DEFAULT_L0_RETENTION, DEFAULT_L0_RETENTION_CHECK_INTERVAL,
                       DEFAULT_LEVEL_INTERVALS, DEFAULT_SHUTDOWN_SYNC_INTERVAL,
                       DEFAULT_SHUTDOWN_SYNC_TIMEOUT, DEFAULT_SNAPSHOT_INTERVAL,
                       DEFAULT_SNAPSHOT_RETENTION)
from .errors import ReplicationError
from .ltx import Decoder
from .defaults import DEFAULT_RETRY_BUDGET
from .replica import (SNAPSHOT_LEVEL, SPOOL_IN_MEMORY, Replica, seconds)

log = logging.getLogger(__name__)

#: Seconds from Go's zero time (0001-01-01 UTC) to the Unix epoch: ``Time.Truncate`` rounds
#: relative to the zero time, so we do too (it only differs for intervals that do not divide
#: a day).
_GO_ZERO_TO_UNIX = 62135596800


class CompactionTooEarly(ReplicationError):
    """The destination level already got a file in the current interval (ErrCompactionTooEarly)."""


def truncate(t: float, interval: float) -> float:
    """Go's ``Time.Truncate(interval)`` for Unix seconds ``t``."""
    since_zero = t + _GO_ZERO_TO_UNIX
    return since_zero - since_zero % interval - _GO_ZERO_TO_UNIX


def next_tick(now: float, interval: float) -> float:
    """When a level monitor next wakes: ``now.Truncate(interval) + interval``."""
    return truncate(now, interval) + interval


def unix(value: Any) -> float:
    """A ``FileInfo.created_at`` (datetime or Unix seconds) as Unix seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def _name(level: int, info) -> str:
    return f"L{level}/{info.min_txid:016x}-{info.max_txid:016x}.ltx"


@dataclass
class DBStatus:
    """One DB's replication status for the server (``/ready``, status pages, metrics)."""

    path: str
    local_txid: int
    replica_txid: int
    lag_txids: int
    lag_seconds: float
    last_sync_at: float | None       # Unix seconds of the last successful upload round
    consecutive_failures: int
    last_error: str | None
    healthy: bool


class Store:
    """Replicates every DB of a ``Config`` (see ``replication.config``).

    ``on_fatal(db_path, error)`` is called once per DB whose replica or local syncs exhausted
    their retry budget, or whose replica refused to upload a broken chain; ``retry_budget``
    is in seconds (``None`` = retry forever, Litestream's behaviour).
    """

    def __init__(self, config, *,
                 on_fatal: Callable[[str, BaseException], None] | None = None,
                 retry_budget: float | None = DEFAULT_RETRY_BUDGET,
                 db_factory: Callable | None = None,
                 client_factory: Callable | None = None):
        self.config = config
        self.on_fatal = on_fatal
        self.retry_budget = retry_budget
        self.level_intervals = [seconds(_interval(lv), 0) for lv in
                                (getattr(config, "levels", None) or DEFAULT_LEVEL_INTERVALS)]
        for i, iv in enumerate(self.level_intervals, 1):
            if iv <= 0:
                raise ReplicationError(f"levels[{i - 1}].interval must be > 0",
                                       hint="e.g. `levels: [{interval: 30s}, {interval: 5m}]`")
        self.snapshot_interval = seconds(getattr(config, "snapshot_interval", None),
                                         DEFAULT_SNAPSHOT_INTERVAL)
        self.snapshot_retention = seconds(getattr(config, "snapshot_retention", None),
                                          DEFAULT_SNAPSHOT_RETENTION)
        self.l0_retention = seconds(getattr(config, "l0_retention", None), DEFAULT_L0_RETENTION)
        self.l0_retention_check_interval = seconds(
            getattr(config, "l0_retention_check_interval", None),
            DEFAULT_L0_RETENTION_CHECK_INTERVAL)
        enabled = getattr(config, "retention_enabled", None)
        self.retention_enabled = True if enabled is None else bool(enabled)
        self.verify_compaction = bool(getattr(config, "verify_compaction", False))
        self.shutdown_sync_timeout = seconds(getattr(config, "shutdown_sync_timeout", None),
                                             DEFAULT_SHUTDOWN_SYNC_TIMEOUT)
        self.shutdown_sync_interval = seconds(getattr(config, "shutdown_sync_interval", None),
                                              DEFAULT_SHUTDOWN_SYNC_INTERVAL)

        if db_factory is None:
            from .db import DB as db_factory  # noqa: N813 - the class is the factory
        if client_factory is None:
            from .replica_client import client_from_config as client_factory
        self.dbs = []
        self.replicas: dict[str, Replica] = {}
        self._maint_locks: dict[str, threading.Lock] = {}
        for dbc in config.dbs:
            db = db_factory(dbc.path, dbc)
            rc = getattr(dbc, "replica", None)
            if rc is None:
                raise ReplicationError(f"{dbc.path}: no replica configured",
                                       hint="add a `replica:` with a `url:` or `path:`")
            client = client_factory(rc)
            self.dbs.append(db)
            self.replicas[db.path] = Replica(
                db, client, rc, retry_budget=retry_budget,
                on_fatal=lambda exc, path=db.path: self._fatal(path, exc))
            self._maint_locks[db.path] = threading.Lock()
            _track(db.path, self.replicas[db.path])
        self._stop = threading.Event()
        self._fatal_lock = threading.Lock()
        self._fatal_paths: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._opened = False

    # -- lifecycle ---------------------------------------------------------------------

    def open(self, *, monitor: bool = True) -> None:
        """Open every DB and replica client; with ``monitor`` start all loops.

        ``monitor=False`` is ``replicate -once``: the caller drives :meth:`sync_all`.
        """
        for db in self.dbs:
            replica = self.replicas[db.path]
            replica.client.init()
            db.open()
            db.subscribe(replica.wake)
        self._opened = True
        if not monitor:
            return
        for db in self.dbs:
            self._spawn(f"db:{db.path}", self._db_monitor, db)
            self.replicas[db.path].start()
        for level, interval in enumerate(self.level_intervals, 1):
            self._spawn(f"compact:L{level}", self._level_monitor, level, interval)
        self._spawn("snapshot:L9", self._level_monitor, SNAPSHOT_LEVEL, self.snapshot_interval)
        if self.l0_retention > 0 and self.level_intervals:
            self._spawn("retention:L0", self._l0_retention_monitor)

    def close(self, timeout: float | None = None) -> bool:
        """Stop every loop, final sync + upload of every DB within ``timeout`` seconds
        (default ``shutdown-sync-timeout``), close the DBs. True when every replica caught up.
        """
        if timeout is None:
            timeout = self.shutdown_sync_timeout
        deadline = time.monotonic() + timeout  # one deadline for all DBs, not one each
        self._stop.set()
        ok = True
        if self._opened:
            for db in self.dbs:
                left = max(0.0, deadline - time.monotonic())
                ok &= self.replicas[db.path].stop(left, self.shutdown_sync_interval)
        for t in self._threads:
            # The DB loops must end before db.close(); a maintenance thread may sit in a
            # replica call against a dead server, and its writes are atomic, so it gets only
            # a moment (its threads are daemons).
            wait = deadline - time.monotonic() if t.name.startswith("db:") else 1.0
            t.join(max(0.1, min(wait, deadline - time.monotonic())))
        for db in self.dbs:
            try:
                db.close()
            except Exception as exc:  # noqa: BLE001 - close the others anyway
                log.error("closing %s: %s", db.path, exc)
                ok = False
        self._opened = False
        return ok

    def sync_all(self) -> None:
        """One DB sync and one upload round for every DB (``replicate -once``)."""
        for db in self.dbs:
            db.sync()
            self.replicas[db.path].sync()

    def status(self, path: str | None = None):
        """:class:`DBStatus` of one DB (by path) or a list for all."""
        if path is not None:
            return self._status(self._db(path))
        return [self._status(db) for db in self.dbs]

    def _status(self, db) -> DBStatus:
        h = self.replicas[db.path].health
        return DBStatus(path=db.path, local_txid=h.local_txid, replica_txid=h.replica_txid,
                        lag_txids=h.lag_txids, lag_seconds=h.lag_seconds,
                        last_sync_at=h.last_sync_at, consecutive_failures=h.consecutive_failures,
                        last_error=h.last_error, healthy=h.healthy)

    def _db(self, path: str):
        path = os.path.abspath(path)
        for db in self.dbs:
            if db.path == path:
                return db
        raise ReplicationError(f"{path}: not a database of this config",
                               hint="the path must match a `dbs[].path` entry")

    def _db_monitor(self, db) -> None:
        """A DB's sync loop, under the replica's retry budget: a local side that cannot sync
        is as fatal as a replica that cannot take uploads."""
        db.monitor(self._stop, retry_budget=self.retry_budget,
                   on_fatal=lambda exc: self._fatal(db.path, exc))

    def _fatal(self, path: str, exc: BaseException) -> None:
        with self._fatal_lock:  # the DB's loop and its replica's may both give up
            if path in self._fatal_paths:
                return
            self._fatal_paths.add(path)
        if self.on_fatal is not None:
            self.on_fatal(path, exc)

    def _spawn(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # -- schedules ---------------------------------------------------------------------

    def _level_monitor(self, level: int, interval: float) -> None:
        while not self._stop.wait(max(0.0, next_tick(time.time(), interval) - time.time())):
            for db in self.dbs:
                if self._stop.is_set():
                    return
                try:
                    if level == SNAPSHOT_LEVEL:
                        try:
                            self.snapshot_db(db)
                        finally:  # retention runs after every tick, snapshot or not
                            self.enforce_snapshot_retention(db)
                    else:
                        self.compact_db(db, level)
                except CompactionTooEarly:
                    pass
                except Exception as exc:  # noqa: BLE001 - one DB must not stop the others
                    log.error("L%d compaction of %s failed: %s", level, db.path, exc)

    def _l0_retention_monitor(self) -> None:
        while not self._stop.wait(self.l0_retention_check_interval):
            for db in self.dbs:
                try:
                    self.enforce_l0_retention(db)
                except Exception as exc:  # noqa: BLE001
                    log.error("L0 retention of %s failed: %s", db.path, exc)

    # -- compaction --------------------------------------------------------------------

    def compact_db(self, db, level: int, now: float | None = None):
        """Compact L(level-1) into ``level`` (1..len(levels)); returns the new ``FileInfo`` or
        ``None`` when there was nothing to do. Raises :class:`CompactionTooEarly`.
        """
        if not 1 <= level <= len(self.level_intervals):
            raise ReplicationError(f"no compaction level {level}",
                                   hint=f"levels 1..{len(self.level_intervals)} are configured")
        now = time.time() if now is None else now
        client = self.replicas[db.path].client
        with self._maint_locks[db.path]:
            dst = list(client.ltx_files(level))
            dst_max = dst[-1] if dst else None
            if dst_max is not None and unix(dst_max.created_at) > truncate(
                    now, self.level_intervals[level - 1]):
                raise CompactionTooEarly(f"L{level} of {db.path} was compacted this interval")
            seek = dst_max.max_txid + 1 if dst_max else 0
            src = [f for f in client.ltx_files(level - 1, seek=seek) if f.min_txid >= seek]
            if not src:
                return None
            if dst_max is not None and src[-1].max_txid <= dst_max.min_txid:
                return None  # Litestream compares with dst *min* (spec §8.11); mirror it
            src = _contiguous_prefix(src)
            info = self._compact_files(db, client, level - 1, src, level)
        if self.verify_compaction:
            self._verify_level(db, client, level)
        return info

    def _compact_files(self, db, client, src_level: int, src: list, dst_level: int):
        opened = []
        try:
            decoders = []
            for info in src:
                f = self._open_source(db, client, src_level, info)
                opened.append(f)
                decoders.append(Decoder(f, name=_name(src_level, info)))
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as out:
                header, _ = compactor.compact(decoders, out)
                out.seek(0)
                written = client.write_ltx_file(dst_level, header.min_txid, header.max_txid,
                                                out, header.timestamp)
        finally:
            for f in opened:
                f.close()
        log.info("compacted %d L%d files into L%d/%016x-%016x", len(src), src_level, dst_level,
                 header.min_txid, header.max_txid)
        return written

    def _open_source(self, db, client, level: int, info):
        """L0 inputs come from the local meta dir when it still has them (no download)."""
        if level == 0:
            try:
                return _as_file(db.open_local_ltx(0, info.min_txid, info.max_txid))
            except (FileNotFoundError, OSError, ReplicationError):
                pass
        return _as_file(client.open_ltx_file(level, info.min_txid, info.max_txid))

    def _verify_level(self, db, client, level: int) -> bool:
        files = list(client.ltx_files(level))
        for prev, cur in zip(files, files[1:]):
            if cur.min_txid != prev.max_txid + 1:
                log.error("verify-compaction: L%d of %s is not contiguous: %s then %s",
                          level, db.path, _name(level, prev), _name(level, cur))
                _count_verify_error(db.path)
                return False
        return True

    # -- snapshots ---------------------------------------------------------------------

    def snapshot_db(self, db, *, force: bool = False, now: float | None = None):
        """Write ``L9/1-<pos>`` unless the newest snapshot already covers the position.
        Returns the new ``FileInfo`` or ``None``. ``force`` skips both checks
        (``-force-snapshot``).
        """
        now = time.time() if now is None else now
        replica = self.replicas[db.path]
        with self._maint_locks[db.path]:
            snaps = list(replica.client.ltx_files(SNAPSHOT_LEVEL))
            newest = snaps[-1] if snaps else None
            if not force and newest is not None:
                if unix(newest.created_at) > truncate(now, self.snapshot_interval):
                    raise CompactionTooEarly(f"L9 of {db.path} was written this interval")
                if newest.max_txid >= db.pos().txid:
                    return None
            if db.pos().txid == 0:
                return None  # nothing synced yet: a snapshot needs at least one page
            return replica.snapshot()

    # -- retention ---------------------------------------------------------------------

    def enforce_l0_retention(self, db, now: float | None = None) -> list:
        """Delete L0 files covered by L1 and older than ``l0-retention``, oldest first,
        stopping at the first one that is not; never the newest. Local copies go too.
        Returns the deleted ``FileInfo``s.
        """
        if self.l0_retention <= 0:
            return []
        now = time.time() if now is None else now
        client = self.replicas[db.path].client
        with self._maint_locks[db.path]:
            l1 = list(client.ltx_files(1))
            if not l1:
                return []
            l1_max = max(f.max_txid for f in l1)
            l0 = list(client.ltx_files(0))
            cutoff = now - self.l0_retention
            doomed = []
            status = {"eligible": 0, "not_compacted": 0, "too_recent": 0}
            for info in l0[:-1]:  # the newest L0 file stays: it is the replica's position
                if info.max_txid > l1_max:
                    status["not_compacted"] += 1
                    break
                if unix(info.created_at) > cutoff:
                    status["too_recent"] += 1
                    break
                doomed.append(info)
            status["eligible"] = len(doomed)
            _count_l0_retention(db.path, status)
            if not doomed:
                return []
            if self.retention_enabled:
                client.delete_ltx_files(doomed)
            self._remove_local_l0(db, doomed[-1].max_txid)
            return doomed

    def _remove_local_l0(self, db, max_txid: int) -> None:
        """Remove local L0 files with MaxTXID ≤ ``max_txid``, never the newest (it is the
        DB's position and the anchor of WAL continuity)."""
        local = sorted(db.local_ltx_files(0), key=lambda f: f.max_txid)
        gone = [f for f in local[:-1] if f.max_txid <= max_txid]
        if gone:
            db.remove_local_ltx(0, gone)

    def enforce_snapshot_retention(self, db, now: float | None = None) -> list:
        """Delete snapshots older than ``snapshot.retention`` (never the newest), then in
        L1..Ln every file with MaxTXID below the newest deleted snapshot's (never a level's
        newest). Returns the deleted ``FileInfo``s; nothing when ``retention.enabled`` is off.
        """
        if not self.retention_enabled:
            return []
        now = time.time() if now is None else now
        client = self.replicas[db.path].client
        deleted = []
        with self._maint_locks[db.path]:
            snaps = list(client.ltx_files(SNAPSHOT_LEVEL))
            cutoff = now - self.snapshot_retention
            old = [s for s in snaps[:-1] if unix(s.created_at) < cutoff]
            if not old:
                return []
            client.delete_ltx_files(old)
            deleted += old
            floor = max(s.max_txid for s in old)
            for level in range(1, len(self.level_intervals) + 1):
                files = list(client.ltx_files(level))
                stale = [f for f in files[:-1] if f.max_txid < floor]
                if stale:
                    client.delete_ltx_files(stale)
                    deleted += stale
        return deleted


def _contiguous_prefix(files: list) -> list:
    """The leading run of ``files`` without a TXID gap. A gap exists only where a snapshot
    bridged lost L0 files; the files after it are compacted on the next tick."""
    run = files[:1]
    for f in files[1:]:
        if f.min_txid != run[-1].max_txid + 1:
            break
        run.append(f)
    return run


def _interval(level_config) -> Any:
    return getattr(level_config, "interval", level_config)


def _as_file(obj):
    import io
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(obj))
    return obj


def _track(path: str, replica: Replica) -> None:
    try:
        from . import metrics
        metrics.track_replica(path, lambda: replica.health)
    except Exception:  # noqa: BLE001 - metrics are best effort
        pass


def _count_verify_error(path: str) -> None:
    try:
        from . import metrics
        metrics.compaction_verify_error_count.labels(db=path).inc()
    except Exception:  # noqa: BLE001 - metrics are best effort
        pass


def _count_l0_retention(path: str, status: dict[str, int]) -> None:
    try:
        from . import metrics
        for key, n in status.items():
            if n:
                metrics.l0_retention_files_total.labels(
                    db=os.path.basename(path), status=key).inc(n)
    except Exception:  # noqa: BLE001
        pass
