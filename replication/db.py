"""The local side of replication (Litestream's ``db.go``): meta dir, long read transaction,
WAL → L0 LTX sync, checkpoints, snapshots.

One :class:`DB` watches one SQLite database in WAL mode. Every committed WAL change becomes a
local L0 file ``<meta>/ltx/0/<txid>-<txid>.ltx`` (TXIDs are our per-sync counter, not SQLite's);
the replica's upload loop (``replication.replica``) ships those files. The on-disk state is the
same as Litestream 0.5's, so real ``litestream replicate`` can continue from it and vice versa.

Concurrency: one re-entrant lock (Litestream's checkpoint mutex) serialises sync, checkpoint and
snapshot. Listeners registered with :meth:`DB.subscribe` run after every sync that wrote a file.
See design/local-sync.md for the continuity rules and the checkpoint policy.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import select
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Callable, Iterable

import apsw
import numpy as np

from . import ltx, metrics
from .defaults import (DEFAULT_BUSY_TIMEOUT, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MAX_SYNC_WAL_BYTES,
                       DEFAULT_MIN_CHECKPOINT_PAGE_N, DEFAULT_MIN_SYNC_GAP,
                       DEFAULT_MONITOR_INTERVAL, DEFAULT_TRUNCATE_PAGE_N)
from .errors import ReplicationError
from .replica_client import FileInfo, read_whole_ltx_file
from .position import PositionBoard, Segment
from .sqlite_fds import open_kept, release_unused
from .wal import (WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WALHeader, WALReader, WALSeedError,
                  read_wal_backfill, read_wal_index_end, wal_frames,
                  WALSegment, read_wal_header)

log = logging.getLogger(__name__)

META_DIR_SUFFIX = "-litestream"

CHECKPOINT_PASSIVE = "PASSIVE"
CHECKPOINT_TRUNCATE = "TRUNCATE"
CHECKPOINT_MODES = (CHECKPOINT_PASSIVE, CHECKPOINT_TRUNCATE)  # never RESTART (Litestream #724)

# How often the monitor stats the -wal when inotify is unavailable (seconds).
WAL_POLL_INTERVAL = 0.005

_SEQ_BUMP = "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1"
_BARRIER = "INSERT INTO _litestream_lock (id) VALUES (1)"
_DB_READ_CHUNK_PAGES = 256


def _begin_read(conn: apsw.Connection) -> None:
    """A read transaction that stays open: BEGIN alone takes no lock until the first read."""
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(1) FROM _litestream_seq").fetchall()


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _setting(config: Any, name: str, default):
    value = getattr(config, name, None) if config is not None else None
    return default if value is None else value


@dataclass(frozen=True)
class Pos:
    """The DB's replication position: the MaxTXID of its newest local L0 file (0 = none)."""

    txid: int = 0
    post_apply_checksum: int = 0

    def __str__(self) -> str:
        return f"{self.txid:016x}"


@dataclass(frozen=True)
class SyncInfo:
    """Where the next sync starts (the result of the continuity check, Litestream's syncInfo)."""

    offset: int  # WAL byte offset to read from
    salt1: int
    salt2: int
    snapshotting: bool  # write every page 1..commit, not only the WAL's
    reason: str = ""  # why a snapshot is needed, for the log


class DB:
    """One replicated SQLite database (see the module docstring).

    ``config`` is a ``replication.config.DBConfig`` (or anything with the same attribute names);
    missing values take Litestream's defaults. ``commit_socket`` is the path of a unix datagram
    socket the monitor listens on for writers' commit signals (``replication.notify``).
    """

    def __init__(self, path: str | os.PathLike, config: Any = None, *,
                 commit_socket: str | os.PathLike | None = None,
                 position_board: PositionBoard | None = None,
                 min_sync_gap: float | None = None):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.config = config
        self.wal_path = self.path + "-wal"
        meta = _setting(config, "meta_path", None)
        d, name = os.path.split(self.path)
        self.meta_path = os.path.abspath(meta) if meta else os.path.join(d, f".{name}{META_DIR_SUFFIX}")
        self.monitor_interval = _seconds(_setting(config, "monitor_interval", None), DEFAULT_MONITOR_INTERVAL)
        self.checkpoint_interval = _seconds(_setting(config, "checkpoint_interval", None),
                                            DEFAULT_CHECKPOINT_INTERVAL)
        self.busy_timeout = _seconds(_setting(config, "busy_timeout", None), DEFAULT_BUSY_TIMEOUT)
        self.min_checkpoint_page_n = int(_setting(config, "min_checkpoint_page_count",
                                                  DEFAULT_MIN_CHECKPOINT_PAGE_N))
        self.truncate_page_n = int(_setting(config, "truncate_page_n", 0)) or DEFAULT_TRUNCATE_PAGE_N
        self.max_sync_wal_bytes = int(_setting(config, "max_sync_wal_bytes", DEFAULT_MAX_SYNC_WAL_BYTES))
        #: Seconds: commit wake-ups sooner than this after the previous sync wait for it, so a
        #: commit storm costs at most 1/min_sync_gap syncs (and fsyncs) per second. Ours, not
        #: Litestream's (it syncs only every monitor-interval).
        self.min_sync_gap = (min_sync_gap if min_sync_gap is not None else
                             _seconds(_setting(config, "min_sync_gap", None), DEFAULT_MIN_SYNC_GAP))
        commit_socket = commit_socket or _setting(config, "commit_socket", None)
        self.commit_socket = os.fspath(commit_socket) if commit_socket else None

        self._lock = threading.RLock()  # Litestream's checkpoint mutex: sync/checkpoint/snapshot
        self._conn: apsw.Connection | None = None  # pragmas, seq bumps, checkpoints
        self._rconn: apsw.Connection | None = None  # holds the long-running read transaction
        self._rconn_next: apsw.Connection | None = None  # takes it over (_move_read_lock_onto_wal)
        self._read_lock_may_pin_db = False
        self._bconn: apsw.Connection | None = None  # holds the barrier write transaction
        self._db_fd: int | None = None
        self._page_size = 0
        self._opened = False
        self._pos: Pos | None = None
        self._last_header: ltx.Header | None = None
        # (frame offset, pgno, page data) of the last WAL frame written to the newest L0 file,
        # so the continuity check needs no decode of that file in the common case.
        self._last_frame: tuple[int, int, bytes] | None = None
        self._synced_to_wal_end = False  # the last sync ended exactly at the -wal file's size
        self._caught_up = False  # the last sync read every committed frame (no size limit hit)
        self._synced_since_checkpoint = False
        self._last_checkpoint = -1e9  # time.monotonic() of the last checkpoint
        self._listeners: list[Callable[[], None]] = []
        #: Monitor sync rounds started so far; a round numbered > r started after r was read,
        #: so it contains every commit made before that read (see :meth:`on_sync_round`).
        self.sync_round = 0
        self._urgent = False
        self._round_observers: list[Callable[[int], None]] = []
        self._txid_observers: list[Callable[[int, int], None]] = []
        self._round: int | None = None  # the monitor round whose sync is running (under _lock)
        #: Where sync rounds publish what they cover, so writers know their commit's TXID
        #: without waiting (``replication.position``); None: not published.
        self.position_board = position_board
        #: time.time() of the first commit wake-up no finished sync covers yet (None: none).
        self._unsynced_since: float | None = None
        self._shm_fd: int | None = None
        # Self-pipe that wakes the monitor (notify_commit); exists between open() and close().
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    # -- properties ----------------------------------------------------------------------

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def ltx_dir(self) -> str:
        return os.path.join(self.meta_path, "ltx")

    def ltx_level_dir(self, level: int) -> str:
        return os.path.join(self.ltx_dir, str(level))

    def ltx_path(self, level: int, min_txid: int, max_txid: int) -> str:
        return os.path.join(self.ltx_level_dir(level), ltx.format_filename(min_txid, max_txid))

    def __repr__(self) -> str:
        return f"DB({self.path!r})"

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Prepare the meta dir and, when the DB file exists, the SQLite connections.

        A missing DB file is not an error: every sync retries the set-up (Litestream's init).
        """
        with self._lock:
            os.makedirs(self.meta_path, exist_ok=True)
            for root, _dirs, files in os.walk(self.meta_path):
                for f in files:
                    if f.endswith(".tmp"):
                        os.unlink(os.path.join(root, f))
            self._opened = True
            if self._wake_r is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._init()

    def close(self) -> None:
        """Release the read transaction and the connections (no final sync: the caller does it)."""
        with self._lock:
            for conn in (self._bconn, self._rconn, self._rconn_next, self._conn):
                if conn is not None:
                    try:
                        conn.close()
                    except apsw.Error as exc:
                        log.warning("%s: closing connection: %s", self.path, exc)
            self._conn = self._rconn = self._rconn_next = self._bconn = None
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            # Released only if no connection of this process still has the file (sqlite_fds).
            release_unused(fd for fd in (self._db_fd, self._shm_fd) if fd is not None)
            self._db_fd = self._wake_r = self._wake_w = self._shm_fd = None
            self._opened = False

    def __enter__(self) -> "DB":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.set_busy_timeout(int(self.busy_timeout * 1000))
        mode = conn.execute("PRAGMA journal_mode = wal").fetchall()[0][0]
        if str(mode).lower() != "wal":
            conn.close()
            raise ReplicationError(f"{self.path}: cannot enable WAL mode (journal_mode is {mode!r})",
                                   hint="Litestream-style replication needs journal_mode=wal; "
                                        "is the database read-only or on a network filesystem?")
        conn.wal_autocheckpoint(0)  # only we checkpoint, and only after syncing
        persist = ctypes.c_int(1)  # closing our connection must never delete the -wal
        conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(persist))
        return conn

    def _init(self) -> bool:
        """Open connections once the DB file exists. Returns whether the DB is ready."""
        if self._conn is not None:
            return True
        if not self._opened or not os.path.exists(self.path):
            return False
        conn = self._connect()
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
            conn.execute("CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER)")
            self._page_size = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
            self._conn = conn
            self._rconn = self._connect()
            self._rconn_next = self._connect()
            self._bconn = self._connect()
            self._db_fd = open_kept(self.path)
            self._acquire_read_lock()
        except BaseException:
            for c in (conn, self._rconn, self._rconn_next, self._bconn):
                if c is not None:
                    c.close()
            self._conn = self._rconn = self._rconn_next = self._bconn = None
            raise
        os.makedirs(self.ltx_level_dir(0), exist_ok=True)
        self._ensure_wal_exists()
        return True

    def _acquire_read_lock(self) -> None:
        """Start the long-running read transaction that keeps others from resetting the WAL."""
        _begin_read(self._rconn)
        # Begun while the WAL was fully checkpointed (always so right after our own checkpoint),
        # it reads the DB file under WAL read-lock 0: see _move_read_lock_onto_wal.
        self._read_lock_may_pin_db = True

    def _move_read_lock_onto_wal(self) -> None:
        """Hand the read transaction to a fresh one that holds a WAL read mark.

        Why: while any reader holds WAL read-lock 0, no checkpoint can copy a page into the DB
        file, yet every other connection's auto-checkpoint past 1,000 frames first sorts the
        whole WAL and only then finds that lock taken, on every commit: a tight-loop writer
        ran at half speed (bench_sync, #5). A reader with a mark lets those checkpoints copy
        up to it once and find nothing to do after. The new transaction starts before the
        old one ends, so the WAL is never unguarded. It gets a mark when the WAL holds frames
        not yet checkpointed; if a checkpoint races us to the end, the flag stays set and the
        next round tries again.
        """
        backfill = self._wal_backfill()
        if backfill is None or backfill[0] >= backfill[1]:
            return  # nothing past the checkpointed end: a new reader would get lock 0 too
        try:
            _begin_read(self._rconn_next)
        except apsw.BusyError:
            if self._rconn_next.in_transaction:
                self._rconn_next.execute("ROLLBACK")
            return  # try again after the next round
        self._release_read_lock()
        self._rconn, self._rconn_next = self._rconn_next, self._rconn
        after = self._wal_backfill()
        self._read_lock_may_pin_db = after is None or after[0] >= after[1]

    def _release_read_lock(self) -> None:
        if self._rconn.in_transaction:
            self._rconn.execute("ROLLBACK")

    def _seq_bump(self) -> None:
        self._conn.execute(_SEQ_BUMP)

    def _ensure_wal_exists(self) -> None:
        try:
            size = os.stat(self.wal_path).st_size
        except FileNotFoundError:
            size = 0
        if size < WAL_HEADER_SIZE:
            self._seq_bump()

    # -- position and local files --------------------------------------------------------

    def pos(self) -> Pos:
        """Position from the newest local L0 file (decoded and verified once, then cached)."""
        with self._lock:
            if self._pos is None:
                self._load_pos()
            return self._pos

    def _load_pos(self) -> None:
        files = self.local_ltx_files(0)
        if not files:
            self._pos, self._last_header, self._last_frame = Pos(0), None, None
            return
        newest = max(files, key=lambda f: f.max_txid)
        path = self.ltx_path(0, newest.min_txid, newest.max_txid)
        try:
            with open(path, "rb") as f:
                dec = ltx.Decoder(f, name=path)
                trailer = dec.close()
        except ltx.LTXError as exc:
            raise ReplicationError(
                f"{self.path}: newest local L0 file is unreadable: {exc}",
                hint="run `litestream reset <db>` (or set `auto-recover: true`) so the next sync "
                     "writes a full snapshot") from exc
        self._pos = Pos(dec.header.max_txid, trailer.post_apply_checksum)
        self._last_header = dec.header
        self._last_frame = None

    def local_ltx_files(self, level: int = 0) -> list[FileInfo]:
        """Local LTX files of ``level``, ordered by (min_txid, max_txid)."""
        d = self.ltx_level_dir(level)
        out = []
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return []
        for e in entries:
            txids = ltx.parse_filename(e.name)
            if txids is None:
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            out.append(FileInfo(level, txids[0], txids[1], st.st_size,
                                datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        out.sort(key=lambda f: (f.min_txid, f.max_txid))
        return out

    def open_local_ltx(self, level: int, min_txid: int, max_txid: int) -> BinaryIO:
        """The local file ``ltx/<level>/<min>-<max>.ltx`` opened for reading (caller closes)."""
        return open(self.ltx_path(level, min_txid, max_txid), "rb")

    def remove_local_ltx(self, level: int, infos: Iterable[Any]) -> None:
        """Delete local files (L0 retention). The newest L0 file is kept: it is the position."""
        with self._lock:
            newest = self.pos().txid
            for info in infos:
                if level == 0 and info.max_txid >= newest:
                    continue
                try:
                    os.unlink(self.ltx_path(level, info.min_txid, info.max_txid))
                except FileNotFoundError:
                    pass

    # -- listeners -----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every sync that wrote an L0 file (must not block)."""
        self._listeners.append(callback)

    def _fire(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:  # noqa: BLE001 - a listener must not break the sync loop
                log.exception("%s: sync listener failed", self.path)

    # -- sync ----------------------------------------------------------------------------

    def sync(self) -> bool:
        """One sync (§3.4): turn committed WAL frames into L0 files until caught up, then
        checkpoint if a threshold is reached. Returns whether any file was written."""
        with self._lock:
            if not self._init():
                return False
            label = metrics.sync_count.labels(db=self.path)
            start = time.perf_counter()
            try:
                self._ensure_wal_exists()
                wrote = self._verify_and_sync()
                if wrote:
                    self._fire()
                # Checkpoint only once caught up (not between the files of a big backlog). "Caught
                # up" is the reader reaching the end of the valid frames, not the file size: after
                # a restart the -wal keeps its high-water size.
                if self._caught_up or self._wal_frames() >= self.truncate_page_n:
                    if self.checkpoint_if_needed():
                        wrote = True
            except Exception as exc:
                metrics.sync_error_count.labels(db=self.path).inc()
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    metrics.disk_full.labels(db=self.path).set(1)
                raise
            finally:
                label.inc()
                metrics.sync_seconds.labels(db=self.path).inc(time.perf_counter() - start)
            metrics.disk_full.labels(db=self.path).set(0)
            self._update_gauges()
            return wrote

    def _update_gauges(self) -> None:
        try:
            metrics.db_size.labels(db=self.path).set(os.stat(self.path).st_size)
        except OSError:
            pass
        h = self._last_header
        metrics.wal_size.labels(db=self.path).set(h.wal_offset + h.wal_size if h else 0)
        metrics.txid.labels(db=self.path).set(self._pos.txid if self._pos else 0)

    def _verify_and_sync(self, first: SyncInfo | None = None) -> bool:
        """Sync repeatedly until the WAL is caught up (each file holds ≤ max-sync-wal-bytes)."""
        wrote = False
        info = first
        while True:
            if info is None:
                info = self._verify()
            written, caught_up = self._sync_wal(info)
            self._caught_up = caught_up
            wrote |= written
            if self._read_lock_may_pin_db:
                self._move_read_lock_onto_wal()
            if not written or caught_up:
                return wrote
            info = None

    def _wal_fd(self) -> int | None:
        try:
            return os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    def _verify(self) -> SyncInfo:
        """The continuity check against the newest local L0 header (§3.4 step 1)."""
        pos = self.pos()
        fd = self._wal_fd()
        if fd is None:
            return SyncInfo(WAL_HEADER_SIZE, 0, 0, True, "no wal file")
        try:
            return self._verify_fd(pos, fd)
        finally:
            os.close(fd)

    def _verify_fd(self, pos: Pos, fd: int) -> SyncInfo:
        hdr = read_wal_header(fd)
        cur = hdr.salts if hdr else (0, 0)

        def snapshot(reason: str) -> SyncInfo:
            return SyncInfo(WAL_HEADER_SIZE, cur[0], cur[1], True, reason)

        if pos.txid == 0:
            return snapshot("no local position")
        last = self._last_header
        if last.wal_offset == 0:
            return snapshot("newest local LTX file has no WAL position")
        end = last.wal_offset + last.wal_size
        recorded = (last.wal_salt1, last.wal_salt2)
        wal_size = os.fstat(fd).st_size
        if wal_size < end:
            if self._synced_to_wal_end and hdr is not None:
                return SyncInfo(WAL_HEADER_SIZE, cur[0], cur[1], False)
            return snapshot("wal truncated by another process")
        if hdr is None:
            return snapshot("wal has no header")
        if end == WAL_HEADER_SIZE:
            if cur == recorded:
                return SyncInfo(end, cur[0], cur[1], False)
            return snapshot("wal header salt reset")
        fs = hdr.frame_size
        if hdr.page_size != self._page_size or (end - WAL_HEADER_SIZE) % fs:
            return snapshot("wal page size changed")
        reader = WALReader(fd, hdr)
        frame = reader.frame_header(end - fs)
        if frame is None or (frame[2], frame[3]) != recorded:
            return snapshot("wal overwritten")
        if not self._last_page_matches(reader, end - fs, frame[0]):
            return snapshot("wal overwritten")
        if cur != recorded:
            # The WAL restarted (another checkpoint) without overwriting our last frame yet.
            # SQLite adds 1 to salt-1 on every restart, so anything else means more than one
            # restart: a generation we never saw may have committed and been checkpointed.
            # (Litestream looks for a second unknown salt pair among the frames instead; that
            # misses an intermediate generation the current one has fully overwritten.)
            if cur[0] != (recorded[0] + 1) & 0xFFFFFFFF:
                return snapshot("wal restarted more than once (FULL/RESTART checkpoint)")
            others = reader.frame_salts(WAL_HEADER_SIZE, end) - {recorded, cur}
            if others:
                return snapshot("wal restarted more than once (FULL/RESTART checkpoint)")
            # Committed frames of the old generation after our end were never synced and are
            # gone into the DB file: only a snapshot captures them.
            old = WALReader(fd, dataclasses.replace(hdr, salt1=recorded[0], salt2=recorded[1]))
            try:
                if old.read(end).frames:
                    return snapshot("wal restarted after unsynced commits")
            except WALSeedError:
                pass
            return SyncInfo(WAL_HEADER_SIZE, cur[0], cur[1], False)
        return SyncInfo(end, cur[0], cur[1], False)

    def _last_page_matches(self, reader: WALReader, offset: int, pgno: int) -> bool:
        data = reader.read_page(offset)
        if self._last_frame is not None and self._last_frame[0] == offset:
            return self._last_frame[1] == pgno and self._last_frame[2] == data
        last = self._last_header
        path = self.ltx_path(0, last.min_txid, last.max_txid)
        with open(path, "rb") as f:
            buf = f.read()
        try:
            index = ltx.decode_page_index(buf, name=path)
            entry = index.get(pgno)
            if entry is None:
                return False
            got_pgno, got = ltx.decode_page_frame(memoryview(buf)[entry[0]:entry[0] + entry[1]],
                                                  last.page_size, name=path)
        except ltx.LTXError:
            return False
        return got_pgno == pgno and got == data

    def _sync_wal(self, info: SyncInfo) -> tuple[bool, bool]:
        """Read the WAL from ``info`` and write one L0 file. Returns (written, caught_up)."""
        board = self.position_board
        if board is None:
            return self._sync_wal_to(info, None)
        board.round_started()  # before the WAL's end is sampled (replication/position.py)
        try:
            return self._sync_wal_to(info, board)
        finally:
            board.round_ended(self._committed_segment(), self._limit_frames())

    def _committed_segment(self) -> Segment | None:
        """What the newest L0 file covers, as the position board states it."""
        h = self._last_header
        if h is None or h.wal_offset == 0:
            return None
        return Segment((h.wal_salt1, h.wal_salt2), wal_frames(h.wal_offset + h.wal_size, h.page_size),
                       h.max_txid)

    def _limit_frames(self) -> int:
        if self.max_sync_wal_bytes <= 0 or not self._page_size:
            return 0
        return self.max_sync_wal_bytes // (WAL_FRAME_HEADER_SIZE + self._page_size)

    def _shm(self) -> int | None:
        if self._shm_fd is None:
            try:
                self._shm_fd = open_kept(self.path + "-shm")
            except FileNotFoundError:
                return None
        return self._shm_fd

    def _wal_backfill(self) -> tuple[int, int] | None:
        fd = self._shm()
        return None if fd is None else read_wal_backfill(fd)

    def _wal_index_end(self, hdr: WALHeader) -> int | None:
        """The WAL's last committed frame per the -shm wal-index, if it is ``hdr``'s generation."""
        fd = self._shm()
        end = None if fd is None else read_wal_index_end(fd)
        if end is None or end[0] != hdr.salts:
            return None
        return end[1]

    def _sync_wal_to(self, info: SyncInfo, board: PositionBoard | None) -> tuple[bool, bool]:
        fd = self._wal_fd()
        if fd is None:
            return False, True
        try:
            hdr = read_wal_header(fd)
            if hdr is None:
                self._synced_to_wal_end = False
                return False, True
            if hdr.page_size != self._page_size:
                raise ReplicationError(f"{self.path}: WAL page size {hdr.page_size} differs from "
                                       f"the database page size {self._page_size}")
            reader = WALReader(fd, hdr)
            if not info.snapshotting and hdr.salts != (info.salt1, info.salt2):
                info = self._verify_fd(self.pos(), fd)  # the WAL restarted since the check
            offset = info.offset
            try:
                reader.seed(offset)
            except WALSeedError as exc:
                log.info("%s: cannot continue WAL at %d (%s); writing a snapshot", self.path, offset, exc)
                info = SyncInfo(WAL_HEADER_SIZE, *hdr.salts, True, "wal seed mismatch")
                offset = info.offset
            # With a position board, read exactly to the committed end sampled now, and say
            # so first: writers then know whether their commit is in this round.
            until = None
            mx_frame = self._wal_index_end(hdr) if board is not None else None
            if mx_frame is not None:
                until = max(WAL_HEADER_SIZE + mx_frame * hdr.frame_size, offset)
                if info.snapshotting or until - offset <= self.max_sync_wal_bytes:
                    writes = until > offset or info.snapshotting
                    board.round_target(Segment(hdr.salts, mx_frame,
                                               self.pos().txid + (1 if writes else 0)))
            seg = reader.read(offset, None if info.snapshotting else self.max_sync_wal_bytes,
                              until=until)
            caught_up = seg.stop_reason != "limit"
            self._synced_to_wal_end = seg.end == os.fstat(fd).st_size
            if not info.snapshotting and seg.frames == 0:
                return False, True
            if (seg.commit if seg.frames else self._commit_from_db_file()) == 0:
                return False, True  # an empty database: nothing to write (LTX needs Commit > 0)
            if info.snapshotting:
                log.info("%s: writing full-page L0 (%s)", self.path, info.reason or "snapshot")
            if caught_up and self._round is not None:
                for observer in list(self._txid_observers):
                    try:
                        observer(self._round, self.pos().txid + 1)
                    except Exception:  # noqa: BLE001 - an observer must not fail the sync
                        log.exception("%s: txid observer failed", self.path)
            self._write_l0(reader, seg, info)
            metrics.total_wal_bytes.labels(db=self.path).inc(seg.size)
            self._synced_since_checkpoint = True
            return True, caught_up
        finally:
            os.close(fd)

    def _commit_from_db_file(self) -> int:
        return os.fstat(self._db_fd).st_size // self._page_size

    def _read_db_page(self, pgno: int) -> bytes:
        ps = self._page_size
        data = os.pread(self._db_fd, ps, (pgno - 1) * ps)
        if len(data) != ps:
            raise ReplicationError(f"{self.path}: page {pgno} is past the end of the database file",
                                   hint="the database file was truncated or replaced while replicating")
        return data

    def _write_l0(self, reader: WALReader, seg: WALSegment, info: SyncInfo) -> None:
        ps = self._page_size
        prev = self._last_header
        txid = self.pos().txid + 1
        commit = seg.commit if seg.frames else self._commit_from_db_file()
        header = ltx.Header(
            flags=ltx.HEADER_FLAG_NO_CHECKSUM, page_size=ps, commit=commit,
            min_txid=txid, max_txid=txid, timestamp=int(time.time() * 1000),
            wal_offset=seg.start, wal_size=seg.size, wal_salt1=reader.header.salt1,
            wal_salt2=reader.header.salt2)
        lock = ltx.lock_pgno(ps)
        wal_pages = dict(zip(seg.pgnos.tolist(), seg.offsets.tolist()))
        if info.snapshotting:
            pgnos: Iterable[int] = range(1, commit + 1)
        else:
            prev_commit = prev.commit if prev is not None else 0
            growth = np.arange(prev_commit + 1, commit + 1, dtype=np.int64)
            pgnos = np.union1d(seg.pgnos, growth).tolist()
        path = self.ltx_path(0, txid, txid)
        self._write_ltx_file(path, header, self._pages(pgnos, wal_pages, reader, lock))
        # Renamed into place, the file is visible, and the upload loop may be sending it
        # already: the position moves with it before anything else can fail. (A failed
        # directory fsync used to raise first; the retried sync wrote this TXID again over
        # more frames, and the replica kept the first version with a hole after it: the
        # fault sweep, tests/test_fault_sweep.py.)
        self._last_header, self._pos, self._last_frame = header, Pos(txid), None
        if seg.frames:
            last_off = seg.end - reader.header.frame_size
            last = reader.frame_header(last_off)
            self._last_frame = (last_off, last[0], reader.read_page(last_off))
        _fsync_dir(os.path.dirname(path))

    def _pages(self, pgnos, wal_pages: dict[int, int], reader: WALReader, lock: int):
        """(pgno, data) in ascending order: the WAL's copy when present, else the DB file's."""
        ps = self._page_size
        chunk_start, chunk = 0, b""
        for pgno in pgnos:
            if pgno == lock:
                continue
            off = wal_pages.get(pgno)
            if off is not None:
                yield pgno, reader.read_page(off)
                continue
            # DB file pages are read in runs, so a full snapshot is sequential I/O.
            idx = pgno - chunk_start
            if not (0 <= idx < len(chunk) // ps):
                chunk_start = pgno
                chunk = os.pread(self._db_fd, ps * _DB_READ_CHUNK_PAGES, (pgno - 1) * ps)
                idx = 0
                if len(chunk) < ps:
                    self._read_db_page(pgno)  # raises with a clear message
            yield pgno, chunk[idx * ps:(idx + 1) * ps]

    def _write_ltx_file(self, path: str, header: ltx.Header, pages) -> None:
        """tmp + fsync + rename, so a crash never leaves a partial L0 file (the caller fsyncs
        the directory once it has taken the file as its position)."""
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                enc = ltx.Encoder(f, header, encoding=ltx.ENCODING_FRAME, name=path)
                for pgno, data in pages:
                    enc.encode_page(pgno, data)
                enc.close(post_apply_checksum=0)
                f.flush()
                os.fdatasync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    # -- checkpoints ---------------------------------------------------------------------

    def _wal_frames(self) -> int:
        """Frames in the synced part of the WAL (the logical size, not the file size)."""
        h = self._last_header
        if h is None or not self._page_size or h.wal_offset == 0:
            return 0
        return max(0, wal_frames(h.wal_offset + h.wal_size, self._page_size))

    def checkpoint_if_needed(self) -> bool:
        """Checkpoint by Litestream's three thresholds (§3.5). Returns whether a file was written."""
        with self._lock:
            if not self._init():
                return False
            frames = self._wal_frames()
            if frames >= self.truncate_page_n:
                wrote, restarted = self._checkpoint(CHECKPOINT_PASSIVE)
                if not restarted:
                    log.info("%s: WAL has %d frames and PASSIVE did not restart it; running "
                             "TRUNCATE", self.path, frames)
                    w, _ = self._checkpoint(CHECKPOINT_TRUNCATE)
                    wrote |= w
                return wrote
            # We sync on every commit, Litestream once per monitor-interval; checking the
            # PASSIVE threshold at most once per monitor-interval keeps its checkpoint cadence
            # (each checkpoint briefly takes the write lock and fsyncs twice).
            if frames >= self.min_checkpoint_page_n and \
                    time.monotonic() - self._last_checkpoint >= self.monitor_interval:
                return self._checkpoint(CHECKPOINT_PASSIVE)[0]
            if self.checkpoint_interval > 0 and self._synced_since_checkpoint and frames > 1:
                try:
                    mtime = os.stat(self.path).st_mtime
                except FileNotFoundError:
                    return False
                if time.time() - mtime >= self.checkpoint_interval:
                    return self._checkpoint(CHECKPOINT_PASSIVE)[0]
            return False

    def checkpoint(self, mode: str = CHECKPOINT_PASSIVE) -> bool:
        """Checkpoint the WAL the safe way (§3.5). Returns whether an L0 file was written."""
        mode = mode.upper()
        if mode not in CHECKPOINT_MODES:
            raise ReplicationError(f"unsupported checkpoint mode {mode!r}",
                                   hint="use PASSIVE or TRUNCATE (RESTART is never used, see Litestream #724)")
        with self._lock:
            if not self._init():
                return False
            return self._checkpoint(mode)[0]

    def _raw_wal_header(self) -> bytes:
        try:
            with open(self.wal_path, "rb") as f:
                return f.read(WAL_HEADER_SIZE)
        except FileNotFoundError:
            return b""

    def _checkpoint(self, mode: str) -> tuple[bool, bool]:
        """Returns (an L0 file was written, the WAL restarted)."""
        labels = dict(db=self.path, mode=mode)
        start = time.perf_counter()
        wrote = False
        try:
            before = self._raw_wal_header()
            wrote |= self._sync_and_announce()
            barrier = mode == CHECKPOINT_PASSIVE
            if barrier:
                self._copy_up_to_now()
                # Seal the WAL: with the write lock held no commit can slip in between the last
                # sync and the checkpoint, so a restart after it loses nothing.
                try:
                    self._bconn.execute("BEGIN IMMEDIATE")
                    self._bconn.execute(_BARRIER)
                except apsw.BusyError:
                    # A writer held the lock past busy-timeout: not an error, try next time.
                    if self._bconn.in_transaction:
                        self._bconn.execute("ROLLBACK")
                    log.debug("%s: %s checkpoint skipped: database busy", self.path, mode)
                    return wrote, False
                except BaseException:
                    if self._bconn.in_transaction:
                        self._bconn.execute("ROLLBACK")
                    raise
            try:
                if barrier:
                    wrote |= self._sync_and_announce()
                self._release_read_lock()
                try:
                    row = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
                    log.debug("%s: checkpoint %s -> %s", self.path, mode, row)
                except apsw.BusyError:
                    if mode != CHECKPOINT_PASSIVE:
                        raise
                finally:
                    self._acquire_read_lock()
            finally:
                if barrier and self._bconn.in_transaction:
                    self._bconn.execute("ROLLBACK")
            self._seq_bump()  # forces a new WAL header if the checkpoint emptied the WAL
            after = self._raw_wal_header()
            restarted = before != after
            if restarted:
                hdr = WALHeader.parse(after)
                if mode == CHECKPOINT_PASSIVE:
                    wrote |= self._sync_and_announce(SyncInfo(WAL_HEADER_SIZE, *hdr.salts, False))
                else:
                    # Frames committed between our sync and the TRUNCATE are only in the DB file
                    # now: write a full-page "checkpoint boundary snapshot" under the write lock.
                    self._bconn.execute("BEGIN IMMEDIATE")
                    try:
                        self._bconn.execute(_BARRIER)
                        hdr = WALHeader.parse(self._raw_wal_header())
                        wrote |= self._sync_and_announce(SyncInfo(WAL_HEADER_SIZE, *hdr.salts, True,
                                                                "checkpoint boundary"))
                    finally:
                        self._bconn.execute("ROLLBACK")
            self._synced_since_checkpoint = False
            self._last_checkpoint = time.monotonic()
        except Exception:
            metrics.checkpoint_error_count.labels(**labels).inc()
            raise
        finally:
            metrics.checkpoint_count.labels(**labels).inc()
            metrics.checkpoint_seconds.labels(**labels).inc(time.perf_counter() - start)
        return wrote, restarted

    def _copy_up_to_now(self) -> None:
        """Checkpoint what is in the WAL now without sealing it: our read lock moves to the
        WAL's end first and bounds the copy, and it keeps the WAL from restarting, so the
        copy loses nothing whatever commits meanwhile. The sealed checkpoint after it then
        copies (and fsyncs) only the last moments' frames: writers waited 15-20 ms a second
        for it under a POST flood (#4), now a few."""
        self._move_read_lock_onto_wal()
        if self._read_lock_may_pin_db:
            return  # still on read-lock 0: nothing could be copied
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except apsw.BusyError:
            pass  # the sealed checkpoint does it all

    def _sync_and_announce(self, first: SyncInfo | None = None) -> bool:
        """A sync inside a checkpoint: its file is announced at once, not when the checkpoint
        ends (the upload must not wait behind the checkpoint's fsyncs; measured on S3)."""
        wrote = self._verify_and_sync(first)
        if wrote:
            self._fire()
        return wrote

    # -- snapshots and hand-over ---------------------------------------------------------

    def snapshot_to(self, fileobj: BinaryIO) -> ltx.Header:
        """Stream a full LTX snapshot (Min=1, Max=pos) of the DB at its position (§3.6).

        Pages are the DB file overlaid with the WAL frames up to the last synced offset; the
        checkpoint lock is held throughout, so no checkpoint changes them underneath.
        """
        with self._lock:
            if not self._init():
                raise ReplicationError(f"{self.path}: database does not exist; nothing to snapshot")
            self._ensure_wal_exists()
            if self._verify_and_sync():
                self._fire()
            pos = self.pos()
            last = self._last_header
            if pos.txid == 0 or last is None:
                raise ReplicationError(f"{self.path}: no position yet; sync before snapshotting")
            ps = self._page_size
            wal_pages: dict[int, int] = {}
            end = last.wal_offset + last.wal_size
            fd = self._wal_fd()
            try:
                hdr = read_wal_header(fd) if fd is not None else None
                reader = None
                if hdr is not None and hdr.salts == (last.wal_salt1, last.wal_salt2) and end > WAL_HEADER_SIZE:
                    reader = WALReader(fd, hdr)
                    seg = reader.read(WAL_HEADER_SIZE, until=end)
                    if seg.end != end:
                        raise ReplicationError(f"{self.path}: WAL changed under the snapshot "
                                               f"(synced end {end}, readable end {seg.end})")
                    wal_pages = dict(zip(seg.pgnos.tolist(), seg.offsets.tolist()))
                frame_size = WAL_FRAME_HEADER_SIZE + ps
                header = ltx.Header(
                    flags=ltx.HEADER_FLAG_NO_CHECKSUM, page_size=ps, commit=last.commit,
                    min_txid=1, max_txid=pos.txid, timestamp=int(time.time() * 1000),
                    wal_offset=end - frame_size if reader else WAL_HEADER_SIZE,
                    wal_size=frame_size if reader else 0,
                    wal_salt1=last.wal_salt1, wal_salt2=last.wal_salt2)
                enc = ltx.Encoder(fileobj, header, encoding=ltx.ENCODING_FRAME)
                for pgno, data in self._pages(range(1, last.commit + 1), wal_pages, reader,
                                              ltx.lock_pgno(ps)):
                    enc.encode_page(pgno, data)
                enc.close(post_apply_checksum=0)
                return header
            finally:
                if fd is not None:
                    os.close(fd)

    def reset(self) -> None:
        """Delete the local LTX files (``litestream reset``): the next sync writes a snapshot."""
        with self._lock:
            shutil.rmtree(self.ltx_dir, ignore_errors=True)
            os.makedirs(self.ltx_level_dir(0), exist_ok=True)
            self._pos, self._last_header, self._last_frame = None, None, None
            self._synced_to_wal_end = False

    def reset_to_replica(self, source: Any) -> Pos:
        """Continue the replica's TXIDs (Litestream's checkDatabaseBehindReplica).

        ``source`` is a replica client (its newest L0 file is downloaded), the bytes of that file,
        or a callable returning them. The local L0 dir is replaced by that one file, so the next
        sync cannot verify against the WAL and writes a full-page L0 at remote max + 1.
        """
        data = self._fetch_remote_l0(source)
        hdr = ltx.Header.unmarshal(data[:ltx.HEADER_SIZE], name="remote L0")
        with self._lock:
            self.reset()
            path = self.ltx_path(0, hdr.min_txid, hdr.max_txid)
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.utime(tmp, ns=(hdr.timestamp * 1_000_000, hdr.timestamp * 1_000_000))
            os.rename(tmp, path)
            self._pos = None
            log.info("%s: local position reset to replica TXID %016x", self.path, hdr.max_txid)
            return self.pos()

    @staticmethod
    def _fetch_remote_l0(source: Any) -> bytes:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source)
        if callable(source) and not hasattr(source, "ltx_files"):
            return bytes(source())
        for level in (0, 9):
            files = list(source.ltx_files(level))
            if files:
                newest = max(files, key=lambda f: f.max_txid)
                return read_whole_ltx_file(source, newest)
        raise ReplicationError("replica has no L0 or snapshot file to continue from")

    # -- monitor -------------------------------------------------------------------------

    def on_txid_assigned(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(round_no, txid)`` inside monitor round ``round_no`` as soon as it has
        read the WAL to its end and is about to write L0 ``txid``, before the file's fsyncs:
        every commit made before the round started is in that TXID. (Were the write to fail,
        the retry writes the same TXID over at least the same frames, or a snapshot at it.)
        Runs under the DB lock: keep it short."""
        self._txid_observers.append(callback)

    def _round_sync(self, round_no: int) -> bool:
        with self._lock:  # re-entrant: sync() takes it again; no other sync can interleave
            self._round = round_no
            try:
                return self.sync()
            finally:
                self._round = None

    def on_sync_round(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(round_no)`` after every monitor sync round that succeeded (whether or
        not it wrote a file). A caller that read :attr:`sync_round` as ``r`` after a commit
        knows the commit is in :meth:`pos` once a round ``> r`` is reported."""
        self._round_observers.append(callback)

    def notify_commit(self, urgent: bool = False) -> None:
        """Wake the monitor now (cheap, never blocks): call after an in-process commit.
        ``urgent``: someone waits for the round (skip the commit-storm coalescing gap)."""
        if urgent:
            self._urgent = True
        fd = self._wake_w
        if fd is None:
            return
        try:
            os.write(fd, b"c")
        except OSError:  # pipe full (a wake-up is pending anyway) or closed
            pass

    def install_wal_hook(self, conn: apsw.Connection) -> None:
        """Wake the monitor on every commit of ``conn`` (an in-process writer).

        The WAL hook replaces SQLite's auto-checkpoint hook on that connection, which is what we
        want anyway: checkpoints belong to the replicator.
        """
        def hook(_conn, _dbname, _pages):
            self.notify_commit()
            return apsw.SQLITE_OK

        conn.set_wal_hook(hook)

    def sync_lag(self) -> float:
        """Seconds since the oldest commit wake-up that no finished sync covers (0 when none):
        the local half of the replica's lag, which a stalled sync would hide from the
        replica's own (oldest L0 file not uploaded)."""
        since = self._unsynced_since
        return max(0.0, time.time() - since) if since is not None else 0.0

    def monitor(self, stop: threading.Event, *, retry_budget: float | None = None,
                on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """The sync loop: every monitor-interval, and immediately (coalesced) on a commit seen by
        inotify on the ``-wal``, a commit signal (``commit_socket``) or :meth:`notify_commit`.

        ``retry_budget``: seconds of continuously failing syncs (the meta dir cannot be
        written, the WAL cannot be read) after which ``on_fatal(error)`` is called once and
        the loop ends, as the upload loop does; ``None`` retries forever (Litestream). Until
        then every failed sync is logged and retried. (A local disk that kept failing left
        the server acknowledging writes that reached no replica, with only /ready's lag to
        say so: the fault sweep, tests/test_fault_sweep.py.)"""
        if self._wake_r is None:
            raise ReplicationError(f"{self.path}: monitor() before open()", hint="call DB.open() first")
        try:
            with contextlib.ExitStack() as cleanup:
                self._monitor(stop, retry_budget, on_fatal, cleanup)
        except Exception as exc:
            # Anything the loop does not expect (its watcher, its poll) ends it, and with no
            # sync loop writes are acknowledged and reach no replica: as fatal as a budget run
            # out. Silence here would be the worst outcome.
            if on_fatal is None:
                raise
            fatal = ReplicationError(f"{self.path}: the sync loop stopped: {exc!r}",
                                     hint="unexpected: the log above has its traceback")
            fatal.__cause__ = exc
            log.exception("%s", fatal)
            on_fatal(fatal)

    def _monitor(self, stop: threading.Event, retry_budget: float | None,
                 on_fatal: Callable[[BaseException], None] | None,
                 cleanup: contextlib.ExitStack) -> None:
        watcher = _WALWatcher(self.wal_path)
        cleanup.callback(watcher.close)
        listener = None
        if self.commit_socket:
            from .notify import CommitListener
            listener = CommitListener(self.commit_socket)
            cleanup.callback(listener.close)
        fds = [self._wake_r] + ([watcher.fileno()] if watcher.fileno() is not None else []) + \
              ([listener.fileno()] if listener else [])
        poll_timeout = None if watcher.fileno() is not None else WAL_POLL_INTERVAL
        # poll(), not select(): select() refuses descriptors past 1023, which a process with
        # many open files reaches (the test suite did, after the fault sweeps, and the monitor
        # thread died: no commit woke anything any more).
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)

        def wait_for_wake(timeout: float) -> bool:
            """Wait up to ``timeout`` for a commit; drains every source that fired."""
            if poll_timeout is not None:
                timeout = min(timeout, poll_timeout)
            woke = False
            ready = [fd for fd, _event in poller.poll(timeout * 1000.0)]
            for fd in ready:
                if fd == self._wake_r:
                    _drain_pipe(fd)
                    woke = True
                elif listener is not None and fd == listener.fileno():
                    listener.drain()
                    woke = True
                else:
                    woke |= watcher.drain()
            if poll_timeout is not None and watcher.changed():
                woke = True
            if woke and self._unsynced_since is None:
                self._unsynced_since = time.time()
            return woke

        next_tick = time.monotonic()
        last_write = -1e9  # start of the last sync that wrote a file
        failing_since = None  # monotonic time of the first failure of the current run of them
        while not stop.is_set():
            now = time.monotonic()
            if now < next_tick and not wait_for_wake(min(next_tick - now, 0.25)):
                continue
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.monitor_interval
            else:
                # A commit storm: coalesce wake-ups closer than min_sync_gap into one sync,
                # which bounds the fsync rate (and the writer's slowdown) at tiny latency cost.
                # (Only after a sync that wrote: a wake-up on a transaction's first frame
                # finds no commit yet, and its commit frame must not wait.)
                gap = last_write + self.min_sync_gap - now
                # Writers waiting for their position (X-Replication-Txid) get their round
                # now: they are the latency, and one round answers all of them.
                if gap > 0 and not self._urgent:
                    stop.wait(gap)
                    wait_for_wake(0)
            started = time.monotonic()
            self._urgent = False
            self.sync_round += 1
            round_no = self.sync_round
            try:
                if self._round_sync(round_no):
                    last_write = started
            except Exception as exc:  # noqa: BLE001 - log and retry at the next tick
                log.error("%s: sync error: %s", self.path, exc)
                if failing_since is None:
                    failing_since = started
                failed_for = time.monotonic() - failing_since
                if retry_budget is not None and failed_for >= retry_budget:
                    fatal = ReplicationError(
                        f"{self.path}: local syncs have failed for {failed_for:.1f}s: {exc}",
                        hint=f"the WAL or the meta dir {self.meta_path} cannot be read or "
                             "written: check that disk (free space, permissions, I/O errors)")
                    fatal.__cause__ = exc
                    log.error("%s", fatal)
                    if on_fatal is not None:
                        on_fatal(fatal)
                    return
                stop.wait(min(self.monitor_interval, 1.0))
            else:
                failing_since = None
                # Wake-ups are noted only between rounds (by this thread), so every one
                # noted so far came before this round read the WAL: all are covered.
                self._unsynced_since = None
                for observer in list(self._round_observers):
                    try:
                        observer(round_no)
                    except Exception:  # noqa: BLE001 - an observer must not stop syncing
                        log.exception("%s: sync round observer failed", self.path)


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


class _WALWatcher:
    """Change notification for the ``-wal`` file: inotify on its directory (robust to the file
    being deleted and re-created), or a size/mtime poll when inotify is unavailable."""

    def __init__(self, wal_path: str):
        self.wal_path = wal_path
        self.name = os.path.basename(wal_path)
        self._inotify = None
        self._last_stat = None
        try:
            import inotify_simple
            ino = inotify_simple.INotify(nonblocking=True)
            f = inotify_simple.flags
            ino.add_watch(os.path.dirname(wal_path), f.MODIFY | f.CREATE | f.DELETE | f.MOVED_TO)
            self._inotify = ino
        except (ImportError, OSError) as exc:
            log.info("inotify unavailable (%s); polling %s every %.0f ms", exc, wal_path,
                     WAL_POLL_INTERVAL * 1000)
            self._last_stat = self._stat()

    def fileno(self) -> int | None:
        return self._inotify.fileno() if self._inotify is not None else None

    def drain(self) -> bool:
        if self._inotify is None:
            return False
        try:
            events = self._inotify.read(timeout=0)
        except (BlockingIOError, OSError):
            return False
        return any(e.name == self.name for e in events)

    def _stat(self):
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    def changed(self) -> bool:
        st = self._stat()
        if st != self._last_stat:
            self._last_stat = st
            return True
        return False

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
