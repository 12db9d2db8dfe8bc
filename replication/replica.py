"""The upload loop: local L0 LTX files → the replica (Litestream's ``replica.go``).

A :class:`Replica` pairs one :class:`~replication.db.DB` with one replica client. Its loop
uploads the DB's local L0 files ``replica_pos+1 … db_pos`` in order, so the replica always
holds a contiguous chain; a backlog of several files goes up merged as one L0 file. It wakes
as soon as the DB reports a sync that wrote a file or the next file appears (the replica lags
by milliseconds, not by a poll interval) and at least every ``sync-interval``.

Beyond Litestream:

* :attr:`Replica.health` — last successful sync, replica/local TXID, lag, failures, last error;
* a **retry budget**: when uploads keep failing for longer than ``retry_budget`` seconds the
  ``on_fatal(error)`` callback fires once (the server stops on it: fail fast, lose nothing —
  what is committed stays in the local meta dir and is uploaded by the next start);
* a **chain guard**: a file whose MinTXID is not ``replica_max + 1`` is never uploaded; the
  loop stops loudly instead (``on_fatal`` at once), unless ``auto-recover`` is on.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Callable

from . import compactor
from .defaults import DEFAULT_RETRY_BUDGET
from .errors import ReplicationError
from .ltx import TRAILER_SIZE, Decoder, Header
from .replica_client import ConflictError

log = logging.getLogger(__name__)

SNAPSHOT_LEVEL = 9

#: Seconds between two retry-budget checks of the watchdog (Replica._watch_budget).
BUDGET_CHECK_INTERVAL = 0.5

#: Litestream's cap on the exponential backoff after an upload error (5 minutes).
MAX_BACKOFF = 300.0

#: Seconds between checks for the next local L0 file while idle. A DB sync that writes a
#: file normally wakes the loop at once; this bounds the delay when a wake-up is missed or
#: deferred (a checkpoint announces the files it writes only when it ends).
LOCAL_POLL_INTERVAL = 0.05

#: A backlog merge takes at most this many L0 files / bytes of them into one upload.
MAX_MERGE_FILES = 256
MAX_MERGE_BYTES = 64 << 20

#: Snapshots and compactions up to this size are built in memory, larger ones in a temp file
#: (bounded memory whatever the database's size: the replicator's peak RSS, #12).
SPOOL_IN_MEMORY = 4 << 20


def _name(level: int, info) -> str:
    return f"L{level}/{info.min_txid:016x}-{info.max_txid:016x}.ltx"


class ChainError(ReplicationError):
    """Uploading would leave a gap or an overlap in the replica's L0 chain."""


def seconds(value: Any, default: float) -> float:
    """A config duration as float seconds (accepts seconds, ``timedelta`` or ``None``)."""
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


@dataclass
class ReplicaHealth:
    """What the server exposes about one replica (``/ready``, metrics, status).

    Times are Unix seconds (float); ``None`` means "never".
    """

    replica_type: str = ""
    #: Highest TXID known to be on the replica (0 = empty or unknown yet).
    replica_txid: int = 0
    #: Highest TXID of the local DB (its newest L0 file).
    local_txid: int = 0
    #: When an upload round last found the replica caught up with the local DB.
    last_sync_at: float | None = None
    #: Upload rounds that failed since the last success.
    consecutive_failures: int = 0
    #: Upload rounds that failed since start.
    total_failures: int = 0
    #: ``str()`` of the last error (kept after recovery, for the status page).
    last_error: str | None = None
    last_error_at: float | None = None
    #: Age in seconds of the oldest local L0 file not yet on the replica (0 when caught up):
    #: how much wall-clock history a crash of this machine would lose right now.
    lag_seconds: float = 0.0
    #: The retry budget ran out or the chain guard tripped; the loop has stopped.
    fatal: bool = False

    @property
    def lag_txids(self) -> int:
        return max(0, self.local_txid - self.replica_txid)

    @property
    def healthy(self) -> bool:
        return not self.fatal and self.consecutive_failures == 0


class Replica:
    """Uploads one DB's L0 files to one replica client.

    ``config`` is the DB's ``ReplicaConfig`` (``sync_interval``, ``max_sync_ltx_files``,
    ``auto_recover``); any missing field takes Litestream's default.
    """

    def __init__(self, db, client, config=None, *,
                 retry_budget: float | None = DEFAULT_RETRY_BUDGET,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 max_backoff: float = MAX_BACKOFF):
        self.db = db
        self.client = client
        self.sync_interval = seconds(getattr(config, "sync_interval", None), 1.0)
        if self.sync_interval <= 0:
            raise ReplicationError("sync-interval must be > 0", hint="e.g. `sync-interval: 1s`")
        max_files = getattr(config, "max_sync_ltx_files", None)
        #: Files uploaded per round at most; 0 = unlimited (Litestream's default is 256).
        self.max_sync_ltx_files = 256 if max_files is None else int(max_files)
        self.auto_recover = bool(getattr(config, "auto_recover", False))
        #: When several L0 files wait, upload them merged as one (see _merge_backlog). Off by
        #: default: every TXID stays a restore point on the replica, as with Litestream, which
        #: X-Replication-Txid relies on (`restore -txid <header>` must find a plan). On, the
        #: replica catches up faster after a backlog (one PUT per run of files), but a lagging
        #: second writer can then upload inside a merged range unseen (design/replication.md,
        #: "Two writers on one replica path"): only for a replica known to have one writer.
        self.merge_backlog = False
        #: Seconds of continuous failure before ``on_fatal``; ``None`` = retry forever.
        self.retry_budget = retry_budget
        self.on_fatal = on_fatal
        self.max_backoff = max_backoff

        self._pos: int | None = None  # replica max TXID; None = unknown, list it again
        #: L0 names (min, max) on the replica known to be ours: the last one we uploaded, or
        #: one verified byte-identical to our local file (positioning needs no GET then).
        self._ours: set[tuple[int, int]] = set()
        self._positioned = False  # a first positioning happened (hand-over only before it)
        self._sync_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._given_up = False  # stop() passed its deadline: no new upload may start
        self._thread: threading.Thread | None = None
        self._final_thread: threading.Thread | None = None  # stop()'s final rounds
        self._failing_since: float | None = None
        self._fatal_reported = False
        self._health = ReplicaHealth(replica_type=getattr(client, "type", ""))
        self._health_lock = threading.Lock()

    # -- position ----------------------------------------------------------------------

    def pos(self) -> int | None:
        """The replica's max TXID as last seen (``None`` until the first listing)."""
        return self._pos

    def calc_pos(self) -> int:
        """List the replica: its max L0 MaxTXID (Litestream), or the max over every level
        when L0 is empty (a replica that so far holds only a snapshot)."""
        best = max((f.max_txid for f in self.client.ltx_files(0)), default=0)
        if best == 0:
            for level in range(1, SNAPSHOT_LEVEL + 1):
                best = max(best, max((f.max_txid for f in self.client.ltx_files(level)),
                                     default=0))
        return best

    def _snapshot_after(self, pos: int) -> int | None:
        """The MaxTXID of the newest snapshot when it reaches past ``pos`` (L0 files it
        covers were bridged, e.g. by auto-recover), else ``None``."""
        newest = max((f.max_txid for f in self.client.ltx_files(SNAPSHOT_LEVEL)), default=0)
        return newest if newest > pos else None

    def snapshot(self):
        """Stream a full snapshot of the DB (TXIDs 1..pos) to ``L9/1-<pos>``; returns its
        ``FileInfo``. Used by the L9 schedule, ``-force-snapshot`` and gap recovery.
        """
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as buf:
            header = self.db.snapshot_to(buf)
            buf.seek(0)
            info = self.client.write_ltx_file(SNAPSHOT_LEVEL, header.min_txid,
                                              header.max_txid, buf, header.timestamp)
        log.info("wrote snapshot L9/%016x-%016x", header.min_txid, header.max_txid,
                 extra={"db": self.db.path})
        return info

    @property
    def health(self) -> ReplicaHealth:
        """A consistent copy of the current health, with the local position and the lag read
        now (lag = age of the oldest local L0 file the replica does not have yet)."""
        with self._health_lock:
            h = replace(self._health)
        try:
            h.local_txid = self._local_txid()
        except Exception:  # noqa: BLE001 - a health read must not raise
            pass
        h.lag_seconds = 0.0
        if h.local_txid > h.replica_txid:
            try:
                mtime = os.stat(self.db.ltx_path(0, h.replica_txid + 1, h.replica_txid + 1)).st_mtime
                h.lag_seconds = max(0.0, time.time() - mtime)
            except OSError:
                pass
        return h

    # -- one round ---------------------------------------------------------------------

    def wake(self) -> None:
        """Ask the loop to run a round now (hooked to the DB's "a file was written" signal)."""
        self._wake.set()

    def sync(self) -> int:
        """One upload round. Returns the number of files uploaded.

        Raises on any error; the caller (the loop) clears the position and backs off.
        """
        with self._sync_lock:
            return self._sync_locked()

    def _sync_locked(self) -> int:
        if self._pos is None:
            remote = self.calc_pos()
            local = self.db.pos().txid
            if remote > local and not self._positioned:
                # Hand-over: the replica is ahead of our meta dir (a previous run, another
                # writer, or a restore). Continue the remote's TXIDs; the DB's next sync then
                # writes a full-page L0 at remote+1 (Litestream's checkDatabaseBehindReplica).
                log.info("replica is ahead of the local db (replica txid %d > local %d); "
                         "continuing from the replica", remote, local, extra={"db": self.db.path})
                self.db.reset_to_replica(self.client)
            elif remote > local:
                # Once running, nobody but us extends the replica: TXIDs past our own DB's
                # were written by another writer (the old code quietly handed over to it).
                raise ConflictError(
                    f"the replica reached TXID {remote:016x} beyond this database's "
                    f"{local:016x} while we were replicating: another writer uses this "
                    f"replica path", hint=ConflictError.HINT)
            elif remote > 0:
                self._check_same_as_local(remote)
            self._positioned = True
            self._pos = remote
            self._set_health(replica_txid=remote)
        pos = self._pos
        if pos == 0 and self._local_txid() > 0 and not os.path.exists(self.db.ltx_path(0, 1, 1)):
            # An empty replica for a DB whose local history no longer starts at TXID 1 (a new
            # bucket, or L0 retention pruned the meta dir): start the chain with a snapshot.
            log.info("replica is empty and local L0 files start after TXID 1: "
                     "writing a snapshot first", extra={"db": self.db.path})
            pos = self._pos = self.snapshot().max_txid
        uploaded = 0
        limit = self.max_sync_ltx_files or float("inf")
        while uploaded < limit and not self._given_up:
            try:
                nxt = self._next_local(pos)
            except ChainError:
                # A snapshot past the gap (written by the gap bridge) lets the chain go on.
                bridged = self._snapshot_after(pos)
                if bridged is None:
                    raise
                pos = self._pos = bridged
                continue
            if nxt is None:
                break
            min_txid, max_txid = nxt
            # The file is streamed, not read whole: an L0 file of a bulk load is up to
            # max-sync-wal-bytes (64 MB), and holding it in memory was most of our peak RSS.
            with self.db.open_local_ltx(0, min_txid, max_txid) as source:
                if self.merge_backlog and min_txid == max_txid > 1:
                    min_txid, max_txid, source = self._merge_backlog(
                        min_txid, source.read(), limit=limit - uploaded)
                    ts = Header.unmarshal(source[:100]).timestamp
                else:
                    ts = Header.unmarshal(source.read(100), name=source.name).timestamp
                    source.seek(0)
                # Exclusive: a TXID already on the replica with other bytes means another
                # writer (ConflictError, not retryable): never overwrite or interleave its
                # history.
                if max_txid > min_txid:
                    self._check_no_overlap(min_txid, max_txid)
                self.client.write_ltx_file(0, min_txid, max_txid, source, ts, exclusive=True)
                self._ours = {(min_txid, max_txid)}
            log.debug("uploaded L0/%016x-%016x, %d ms after it was written", min_txid,
                      max_txid, time.time() * 1000 - ts, extra={"db": self.db.path})
            pos = self._pos = max_txid
            uploaded += 1
            self._set_health(replica_txid=pos)
        return uploaded

    # -- another writer on this replica path --------------------------------------------

    def _check_same_as_local(self, remote: int) -> None:
        """Positioning at ``remote`` <= our DB's TXID: the replica's file ending there must be
        our own (byte-identical to our local file of that name), else the replica holds
        another history we would silently continue. Compared by size and trailer (its file
        checksum covers every byte): one LIST and a 16-byte ranged GET per positioning."""
        newest = [f for f in self.client.ltx_files(0, seek=max(0, remote - MAX_MERGE_FILES))
                  if f.max_txid == remote]
        if not newest:
            return  # only a snapshot/compaction reaches there (L0 empty): nothing to compare
        info = newest[0]
        key = (info.min_txid, info.max_txid)
        if key in self._ours:
            return
        mine = self._local_bytes(*key)
        if mine is None:
            if any(f.max_txid == remote for f in self.db.local_ltx_files(0)):
                raise ConflictError(
                    f"L0/{info.min_txid:016x}-{info.max_txid:016x} on the replica is not a file "
                    f"of this database's history: another writer uses this replica path",
                    hint=ConflictError.HINT)
            return
        theirs = b""
        if info.size == len(mine):
            with self.client.open_ltx_file(0, *key, offset=info.size - TRAILER_SIZE,
                                           size=TRAILER_SIZE) as f:
                theirs = f.read()
        if theirs != mine[-TRAILER_SIZE:]:
            raise ConflictError(
                f"L0/{info.min_txid:016x}-{info.max_txid:016x} on the replica differs from this "
                f"database's: another writer uses this replica path", hint=ConflictError.HINT)
        self._ours = {key}

    def _local_bytes(self, lo: int, hi: int) -> bytes | None:
        """Our local L0 file ``lo-hi``, or what _merge_backlog made of ``lo..hi`` (a merged
        upload of an earlier run), or None when the meta dir no longer has them."""
        try:
            return self._read_local(lo, hi)
        except FileNotFoundError:
            pass
        if lo == hi or hi - lo >= MAX_MERGE_FILES:
            return None
        try:
            first = self._read_local(lo, lo)
        except FileNotFoundError:
            return None
        got = self._merge_backlog(lo, first, limit=hi - lo + 1)
        return got[2] if got[:2] == (lo, hi) else None

    def _next_local(self, pos: int) -> tuple[int, int] | None:
        """The local L0 file that starts at ``pos + 1`` as ``(min, max)``, or ``None`` when
        the replica has caught up with the DB.

        L0 files hold one TXID each and appear by an atomic rename, so this is one stat by
        name: no directory listing (the meta dir can hold thousands of files) and no DB lock
        (which a sync or checkpoint may hold for a while) on the hot path. (Retention removes
        only uploaded files, so the file is still there when it is opened.)
        """
        txid = pos + 1
        if os.path.exists(self.db.ltx_path(0, txid, txid)):
            return txid, txid
        local = self._local_txid()
        self._set_health(local_txid=local)
        if local <= pos:
            self._caught_up()
            return None
        later = [f for f in self.db.local_ltx_files(0) if f.max_txid > pos]
        if later and later[0].min_txid == txid:
            return txid, later[0].max_txid
        found = (f"the next local L0 file is {later[0].min_txid:016x}-{later[0].max_txid:016x}"
                 if later else "no local L0 file follows it")
        raise ChainError(
            f"{self.db.path}: the replica ends at {pos:016x} but {found}; uploading would "
            f"leave a gap",
            hint="the local meta dir lost files; set `auto-recover: true` or run "
                 "`litestream reset <db>` so the next sync writes a full snapshot")

    def _check_no_overlap(self, min_txid: int, max_txid: int) -> None:
        """A merged file's name cannot collide with another writer's single-TXID files, so
        the exclusive create alone would not see them: list what overlaps first."""
        for f in self.client.ltx_files(0, seek=min_txid):
            if f.min_txid > max_txid:
                break
            if (f.min_txid, f.max_txid) != (min_txid, max_txid):
                raise ConflictError(
                    f"L0/{f.min_txid:016x}-{f.max_txid:016x} is already on the replica, "
                    f"overlapping TXIDs {min_txid:016x}-{max_txid:016x} we are about to upload: "
                    f"another writer uses this replica path",
                    hint=ConflictError.HINT)

    def _merge_backlog(self, txid: int, data: bytes, *,
                       limit: float) -> tuple[int, int, bytes]:
        """When more local L0 files follow ``txid``, merge the run into one L0 file.

        Catching up is then one PUT instead of one per file, so a replica whose round trip
        is slower than the DB's sync rate (S3 under hundreds of commits/s) does not fall
        further behind with every commit. The merged file is what Litestream's compactor would
        make of the run (same pages, last input's timestamp); the price is that TXIDs inside
        it are no longer separate restore points, as after any compaction.
        """
        datas = [data]
        size = len(data)
        nxt = txid + 1
        while len(datas) < min(limit, MAX_MERGE_FILES) and size < MAX_MERGE_BYTES:
            try:
                more = self._read_local(nxt, nxt)
            except FileNotFoundError:
                break
            datas.append(more)
            size += len(more)
            nxt += 1
        if len(datas) == 1:
            return txid, txid, data
        decoders = [Decoder(io.BytesIO(d), name=f"L0/{txid + i:016x}-{txid + i:016x}.ltx")
                    for i, d in enumerate(datas)]
        out = io.BytesIO()
        header, _ = compactor.compact(decoders, out)
        return header.min_txid, header.max_txid, out.getvalue()

    def _local_txid(self) -> int:
        """The DB's position without waiting for its lock when it is cached.

        ``DB.pos()`` takes the DB lock, which a checkpoint holds for up to seconds; the L0 file
        written by the checkpoint's own barrier sync must not wait behind it. The cached
        ``Pos`` is replaced atomically after each file's rename, so reading it is safe.
        """
        cached = getattr(self.db, "_pos", None)
        return cached.txid if cached is not None else self.db.pos().txid

    def _read_local(self, min_txid: int, max_txid: int) -> bytes:
        with self.db.open_local_ltx(0, min_txid, max_txid) as f:
            return f.read()

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`monitor` in a daemon thread, and the retry-budget watchdog."""
        self._thread = threading.Thread(target=self.monitor, name=f"replica:{self.db.path}",
                                        daemon=True)
        self._thread.start()
        if self.retry_budget is not None:
            threading.Thread(target=self._watch_budget, name=f"replica-budget:{self.db.path}",
                             daemon=True).start()

    def _watch_budget(self) -> None:
        """Fail fast on time: the loop checks the budget when a failed round *ends*, but a
        round against a dead S3 spends seconds in the client's own retries; this checks
        twice a second whatever the loop is doing."""
        while not self._stopping.wait(BUDGET_CHECK_INTERVAL):
            since = self._failing_since
            if self._fatal_reported:
                return
            if since is not None and time.monotonic() - since >= self.retry_budget:
                with self._health_lock:
                    last = self._health.last_error
                self._fatal(ReplicationError(
                    f"replica uploads have failed for {self.retry_budget:.0f}s: {last}",
                    hint="check the replica's reachability and credentials; nothing committed "
                         "is lost, the next start uploads the pending files"))
                return

    def monitor(self) -> None:
        """Upload until :meth:`stop`: on every wake-up, as soon as the next local L0 file
        exists, and at least every ``sync_interval``."""
        backoff = 0.0
        next_round = time.monotonic()  # the first round runs at once: leftovers go up now
        # Once declared dead (here or by the budget watchdog, which can fire during a round
        # that then succeeds), the loop ends: on_fatal told the caller it had stopped.
        while not self._stopping.is_set() and not self._fatal_reported:
            if backoff:
                # During a backoff, commits do not shorten the wait: a dead S3 must not be
                # hammered at the commit rate.
                self._stopping.wait(backoff)
            elif time.monotonic() < next_round:
                woke = self._wake.wait(min(LOCAL_POLL_INTERVAL, next_round - time.monotonic()))
                if not woke and time.monotonic() < next_round and not self._next_file_ready():
                    continue
            self._wake.clear()
            if self._stopping.is_set():
                break
            next_round = time.monotonic() + self.sync_interval
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - every error is retried or fatal
                self._pos = None
                fatal = self._record_failure(exc)
                if fatal:
                    return
                backoff = min(max(backoff * 2, self.sync_interval), self.max_backoff)
                if self.retry_budget is not None and self._failing_since is not None:
                    # Retry once more right when the budget runs out, not a whole (doubled)
                    # backoff later: fail fast means within about one round of the budget.
                    left = self.retry_budget - (time.monotonic() - self._failing_since)
                    backoff = max(0.05, min(backoff, left))
            else:
                backoff = 0.0
                self._record_success()

    def _next_file_ready(self) -> bool:
        """Whether the local L0 file the replica needs next exists (one stat, no I/O to the
        replica): the safety net for a file whose wake-up was missed or deferred."""
        pos = self._pos
        return pos is not None and os.path.exists(self.db.ltx_path(0, pos + 1, pos + 1))

    def stop(self, timeout: float = 30.0, interval: float = 0.5) -> bool:
        """Stop the loop, then a final DB sync + upload, retried every ``interval`` seconds
        for at most ``timeout`` seconds (``shutdown-sync-timeout``/``-interval``).

        Returns True when the replica holds everything the DB had synced.
        """
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._given_up = False
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._health.fatal:
            # The loop gave up (retry budget spent, broken chain) moments ago: no final
            # rounds against a replica known to be gone. The pending files stay in the meta
            # dir and go up on the next start.
            return False
        # The final rounds run in a thread of their own, waited for until the deadline: one
        # replica call can outlast the whole timeout (S3 answers held past the read timeout:
        # attempts x read-timeout, ~47 s by default), and a round the loop is still in holds
        # the sync lock as long, so a 30 s shutdown took minutes (fault sweep, S3 PUT slow).
        # A call in flight at the deadline ends on its own; nothing starts after it.
        result: list[bool | None] = []
        self._final_thread = threading.Thread(
            target=lambda: result.append(self._final_sync(deadline, interval)),
            name=f"replica-final:{self.db.path}", daemon=True)
        self._final_thread.start()
        self._final_thread.join(max(0.0, deadline - time.monotonic()))
        if result and result[0] is not None:
            return result[0]
        self._given_up = True
        log.error("final replica sync did not finish within %.1fs", timeout,
                  extra={"db": self.db.path})
        return False

    def _final_sync(self, deadline: float, interval: float) -> bool | None:
        """The final rounds of :meth:`stop`: True when caught up, False on a broken chain,
        None when the deadline came first."""
        while not self._given_up:
            try:
                self.db.sync()
                uploaded = self.sync()
                if self._pos is not None and self._pos >= self.db.pos().txid:
                    self._record_success()
                    return True
                if uploaded:
                    continue  # more than max-sync-ltx-files were pending: go on at once
            except Exception as exc:  # noqa: BLE001
                self._pos = None
                log.warning("final replica sync failed: %s", exc, extra={"db": self.db.path})
                with self._health_lock:
                    self._health.last_error = str(exc)
                    self._health.last_error_at = time.time()
                if isinstance(exc, ChainError) and not self.auto_recover:
                    return False
            if time.monotonic() + interval > deadline:
                return None
            time.sleep(interval)
        return None

    # -- bookkeeping -------------------------------------------------------------------

    def _set_health(self, **fields) -> None:
        with self._health_lock:
            for k, v in fields.items():
                setattr(self._health, k, v)

    def _caught_up(self) -> None:
        with self._health_lock:
            self._health.last_sync_at = time.time()

    def _record_success(self) -> None:
        self._failing_since = None
        with self._health_lock:
            self._health.consecutive_failures = 0
            if self._health.last_sync_at is None:
                self._health.last_sync_at = time.time()

    def _record_failure(self, exc: BaseException) -> bool:
        """Count a failed round; returns True when the loop must stop (fatal)."""
        now = time.time()
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        with self._health_lock:
            self._health.consecutive_failures += 1
            self._health.total_failures += 1
            self._health.last_error = str(exc)
            self._health.last_error_at = now
            failures = self._health.consecutive_failures
        log.error("replica sync failed (%d in a row): %s", failures, exc,
                  extra={"db": self.db.path})
        if isinstance(exc, ConflictError):
            # Another writer owns this replica path: waiting cannot fix it, stop now.
            self._fatal(exc)
            return True
        if isinstance(exc, ChainError):
            if self.auto_recover:
                # A snapshot starts at TXID 1, so it bridges any gap; the L0 files after it
                # are then contiguous with it.
                log.warning("auto-recover: bridging the gap with an L9 snapshot",
                            extra={"db": self.db.path})
                try:
                    with self._sync_lock:
                        self.snapshot()
                    return False
                except Exception as reset_exc:  # noqa: BLE001
                    exc = reset_exc
            self._fatal(exc)
            return True
        if (self.retry_budget is not None
                and time.monotonic() - self._failing_since >= self.retry_budget):
            self._fatal(ReplicationError(
                f"replica uploads have failed for {self.retry_budget:.0f}s: {exc}",
                hint="check the replica's reachability and credentials; nothing committed "
                     "is lost, the next start uploads the pending files"))
            return True
        return False

    def _fatal(self, exc: BaseException) -> None:
        with self._health_lock:
            self._health.fatal = True
        if self._fatal_reported:
            return
        self._fatal_reported = True
        log.critical("replication stopped: %s", exc, extra={"db": self.db.path})
        if self.on_fatal is not None:
            self.on_fatal(exc)
