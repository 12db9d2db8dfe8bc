"""A read-only SQLite VFS that reads a Litestream replica in place (spec §6; issue #13).

    import replication.vfs as lvfs
    lvfs.register()                                   # the apsw VFS "litestream" (idempotent)
    conn = lvfs.connect(lvfs.uri("app.db", "s3://bucket/app?endpoint=…"))
    conn.execute("SELECT litestream_txid(), count(*) FROM items").fetchall()

Each main database file opened through the VFS (one per connection) is a
:class:`ReplicaDatabase`; the connections to one name with the same settings share a source
(replica client, newest index, page cache, poller):

- **Index.** The restore plan's LTX files (``restore.calc_restore_plan``) give, by range
  reads of each file's page index (and one header), ``pgno -> (file, frame offset, size)``;
  the newest file holding a page wins and the size is the last file's Commit — the same pages
  a full restore would write.
- **Reads.** Pages are fetched on demand (one range read and decode per page) into an LRU of
  ``cache_size`` **bytes** (Litestream's name and its 10 MB default) = ``cache_size //
  page_size`` pages, keyed by (file, offset) so a page of an older view is never served for a
  newer one. Page 1 says "rollback journal" (bytes 18/19 = 1) and carries a change counter
  (bytes 24..27) derived from the TXID, so SQLite keeps its own page cache between
  transactions on the same TXID and drops it when the TXID moves. ``-wal``,
  ``-shm`` and ``-journal`` never exist: SQLite sees a plain read-only rollback-journal DB.
- **Following.** A poller thread per source lists L0 every ``poll_interval`` and publishes
  a new immutable view with the contiguous new files; a gap (files compacted away before we
  saw them) or a vanished file rebuilds the index from a fresh plan. With ``poll_share``
  the processes reading one replica list it from one of them (:mod:`replication.poll_share`).
- **Snapshot isolation.** A read transaction sees exactly one TXID. SQLite takes a SHARED
  lock for every read transaction (xLock from NONE); only then does a connection move to the
  newest published view, so an update found while a transaction reads waits for its end.
- **Vanished files.** A page whose file was removed (compaction, retention) is recovered
  without changing what the transaction sees: before the transaction read anything, by moving
  to a fresh plan; after, by a fresh plan to the *same* TXID, or else by taking from a newer
  plan only pages that provably did not change since our TXID. Only a page that did change,
  whose old version is gone from the replica and from our cache, fails the read with
  SQLITE_BUSY (Litestream returns SQLITE_BUSY there too); design/read-replicas.md.

- **Hydration** (``hydration_enabled=true``, ``hydration_path``): a local copy restored in the
  background and kept caught up (:mod:`replication.hydration`); pages it holds at a view's
  TXID are read from it, the others as above.

Configuration: :mod:`replication.vfs_config` (URI parameters > registry > environment).
apsw cannot add SQL functions from a VFS, so :func:`connect` (or :func:`install_functions`)
adds ``litestream_txid()``, ``litestream_time()``, ``litestream_lag()`` and
``litestream_set_time()``; the ``PRAGMA litestream_txid|litestream_time|litestream_lag``
forms work on any connection of the VFS.
"""
from __future__ import annotations

import atexit
import gc
import itertools
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import apsw

from . import ltx
from .defaults import (
    VFS_INDEX_FETCH_CONCURRENCY, VFS_NOT_FOUND_ATTEMPTS, VFS_NOT_FOUND_BACKOFF, VFS_WHOLE_FILE_MAX,
    VFS_POLL_SHARE_CHECK_INTERVAL, VFS_POLLER_JOIN_TIMEOUT,
)
from .errors import ReplicationError, TxNotAvailableError
from .hydration import Hydrator
from .poll_share import PollShare
from .replica_client import (
    NotFoundError, client_from_url, fetch_ltx_header, fetch_page, fetch_page_index,
    format_rfc3339_nano, ms_to_datetime, parse_rfc3339, read_whole_ltx_file,
)
from .restore import SNAPSHOT_LEVEL, calc_restore_plan
from .vfs_config import (  # noqa: F401  (re-exported: the registry is part of this API)
    ResolvedConfig, VFSConfig, VFSConfigError, delete_vfs_config, get_vfs_config, resolve,
    set_vfs_config,
)

log = logging.getLogger(__name__)

VFS_NAME = "litestream"
#: Private file-control opcode binding a connection to its ReplicaDatabase (SQLite's own
#: opcodes are below 100; other VFSes answer SQLITE_NOTFOUND).
FCNTL_BIND = 0x4C5301
#: Companion files SQLite looks for; on a replica they never exist.
_COMPANIONS = ("-journal", "-wal", "-shm")
_LOCK_NONE = apsw.SQLITE_LOCK_NONE
#: SQLite URI parameters that stop SQLite from locking (so from telling us about transactions).
_NO_LOCK_PARAMS = ("immutable", "nolock")
_OPEN_READONLY_FLAGS = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI


# --- views: one consistent state of the database -------------------------------------------

@dataclass(frozen=True)
class _View:
    """The database at one TXID: where each page lives. Immutable; replaced, never changed."""

    txid: int
    commit: int             # pages
    page_size: int          # bytes
    index: dict             # pgno -> (level, min_txid, max_txid, frame offset, frame size)
    timestamp_ms: int       # LTX header Timestamp of the newest file
    #: An incremental build: the pages its new files hold, and the TXID of the view it
    #: extended (lets the hydrator catch up without scanning the whole index).
    added: frozenset | None = None
    base_txid: int = 0


@dataclass(frozen=True)
class VFSStats:
    """Counters of one open database (for the server's metrics and for tests)."""

    name: str
    replica_url: str
    txid: int
    page_size: int
    page_count: int
    lag: float                  # seconds since the last successful poll, -1 before the first
    time_travel: str | None     # RFC 3339 target of litestream_set_time, None = latest
    polls: int
    poll_errors: int
    updates: int                # views installed after the open (new TXIDs, rebuilds)
    index_builds: int           # full index builds from a restore plan (open included)
    not_found_recoveries: int   # page reads whose LTX file had vanished
    cache_hits: int
    cache_misses: int
    cache_pages: int
    cache_bytes: int            # decoded page bytes held by the LRU
    cache_capacity_pages: int
    pages_fetched: int
    bytes_fetched: int          # bytes read from the replica (indexes, headers, pages)
    connections: int            # open connections sharing this index, cache and poller
    hydration: str              # off, restoring, ready, failed (hydration.py)
    hydration_txid: int         # the TXID the local file holds (0 until complete)
    hydration_progress: float   # 0..1: bytes of the background restore done
    hydration_reused: bool      # a persistent hydration file was reused at open
    hydration_catch_ups: int    # times new TXIDs were written into the local file
    hydration_reads: int        # pages read from the local file
    poll_share: str             # off (this process polls), leader or follower (poll_share.py)
    poll_leader_pid: int        # the process that polls for every sharer (0: off)


_NO_HYDRATION = {"hydration": "off", "hydration_txid": 0, "hydration_progress": 0.0,
                 "hydration_reused": False, "hydration_catch_ups": 0, "hydration_reads": 0}


class _Counted:
    """A replica reader that adds the bytes it returns to its database's counter."""

    def __init__(self, f, db: "_Source"):
        self._f, self._db = f, db

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._db.bytes_fetched += len(data)  # one int add under the GIL; no lock needed
        return data

    def close(self) -> None:
        self._f.close()


class _MeteredClient:
    """The replica client of one database, counting the bytes read through it."""

    def __init__(self, client, db: "_Source"):
        self._client, self._db = client, db

    def __getattr__(self, name):
        return getattr(self._client, name)

    def open_ltx_file(self, *args, **kwargs):
        return _Counted(self._client.open_ltx_file(*args, **kwargs), self._db)


# --- the shared side: one replica as seen by every connection to it ---------------------------

class _Source:
    """What the connections of one (name, config) share: the replica client, the newest known
    view, the page cache and the poller. Views are immutable, so sharing them is safe; which
    view a connection reads is the connection's business (:class:`ReplicaDatabase`)."""

    def __init__(self, name: str, config: ResolvedConfig):
        self.name = name
        self.config = config
        self.mu = threading.RLock()
        self.users = 0                  # open connections (under _sources_lock)
        self.cache: OrderedDict = OrderedDict()
        self.bytes_fetched = 0
        self.polls = self.poll_errors = self.updates = self.index_builds = 0
        self.not_found = self.cache_hits = self.cache_misses = self.pages_fetched = 0
        self.last_poll_ok: float | None = None   # monotonic; None until the first poll
        self.closed = False             # read without the lock by the poller's loop
        self._shut = False              # close() ran (under mu)
        self.client = _MeteredClient(client_from_url(config.replica_url), self)
        self.hydrator = None
        self.share: PollShare | None = None
        self._followed = -1             # the share's generation last installed
        try:
            self.latest = self.target_view(None)
            if config.hydration_enabled:
                self.hydrator = Hydrator(self, config.hydration_path)
            if config.poll_share:
                try:
                    self.share = PollShare(config.poll_share)
                except OSError as e:
                    raise VFSConfigError(f"poll_share {config.poll_share!r}: {e.strerror}",
                                         hint="a file in a directory this process can write")
        except BaseException:
            if self.hydrator is not None:
                self.hydrator.close()
            self.client.close()
            raise
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                        name=f"litestream-vfs-poll {name}")
        self._poller.start()

    @property
    def lag(self) -> float:
        last = self.last_poll_ok
        if self.share is not None:  # the leader's listing counts as ours
            shared = self.share.poll_ns() / 1e9
            if shared and (last is None or shared > last):
                last = shared
        return -1.0 if last is None else max(0.0, time.monotonic() - last)

    def capacity(self, page_size: int) -> int:
        return self.config.cache_size // page_size

    # -- building views -------------------------------------------------------------------------

    def plan(self, target: datetime | None, txid: int = 0) -> list:
        if txid:
            return calc_restore_plan(self.client, txid=txid)
        return calc_restore_plan(self.client, timestamp=target)

    def indexes(self, infos: list) -> list[dict]:
        return [idx for idx, _, _ in self._fetch_indexes(infos)]

    def _fetch_indexes(self, infos: list, pages: bool = False) -> list[tuple]:
        if len(infos) == 1:
            return [self._index_of(infos[0], pages)]
        with ThreadPoolExecutor(max_workers=min(VFS_INDEX_FETCH_CONCURRENCY, len(infos)),
                                thread_name_prefix="litestream-vfs-index") as pool:
            return list(pool.map(lambda info: self._index_of(info, pages), infos))

    def _index_of(self, info, pages: bool) -> tuple[dict, "ltx.Header | None", dict]:
        """One file's page index. With ``pages`` (a poll), a small file is read whole and
        verified: (index, header, its decoded pages {pgno: (index element, page)})."""
        if not pages or info.size > VFS_WHOLE_FILE_MAX:  # an open, or a big file: the index
            return fetch_page_index(self.client, info), None, {}
        name = f"L{info.level}/{info.filename}"
        data = memoryview(read_whole_ltx_file(self.client, info))
        header = ltx.Header.unmarshal(data[:ltx.HEADER_SIZE], name)
        index = ltx.decode_page_index(data, name)
        key = (info.level, info.min_txid, info.max_txid)
        decoded = {}
        for pgno, (offset, size) in index.items():
            _, page = ltx.decode_page_frame(data[offset:offset + size], header.page_size, name)
            decoded[pgno] = ((*key, offset, size), page)
        return index, header, decoded

    def build(self, infos: list, *, base: _View | None = None) -> tuple[_View, list[dict]]:
        """A view of ``base`` plus ``infos`` (newest file wins), and each file's index. On a
        poll (a ``base``) the pages of small new files are cached: the next reads want them."""
        found = self._fetch_indexes(infos, pages=base is not None)
        indexes = [idx for idx, _, _ in found]
        last = infos[-1]
        header = found[-1][1] or fetch_ltx_header(self.client, last.level, last.min_txid,
                                                  last.max_txid)
        if base is not None and header.page_size != base.page_size:
            raise ReplicationError(f"page size changed from {base.page_size} to "
                                   f"{header.page_size} at TXID {last.min_txid:016x}")
        index = dict(base.index) if base is not None else {}
        for info, idx in zip(infos, indexes):
            key = (info.level, info.min_txid, info.max_txid)
            for pgno, (offset, size) in idx.items():
                index[pgno] = (*key, offset, size)
        for _, _, decoded in found:
            for pgno, (elem, page) in decoded.items():
                if index[pgno] == elem:  # not a version a newer file replaced
                    self.cache_put(elem, page, header.page_size)
        view = _View(txid=last.max_txid, commit=header.commit, page_size=header.page_size,
                     index=index, timestamp_ms=header.timestamp,
                     added=frozenset().union(*indexes) if base is not None else None,
                     base_txid=base.txid if base is not None else 0)
        return view, indexes

    def target_view(self, target: datetime | int | None) -> _View:
        """A fresh view of the latest state, or of the state at ``target`` (time travel: a
        time, or a TXID, which must then be exactly the view's)."""
        if isinstance(target, int):
            view, _ = self.build(self.plan(None, txid=target))
            if view.txid != target:  # inside a compacted file: that state is not kept alone
                raise TxNotAvailableError(f"TXID {target:016x} is not a state this replica "
                                          f"keeps (the nearest before it is {view.txid:016x})")
        else:
            view, _ = self.build(self.plan(target))
        with self.mu:
            self.index_builds += 1
        return view

    def publish(self, view: _View) -> None:
        """Offer a view of the latest state (a poll, a rebuild): kept if it is at least as new.
        A rebuild at the same TXID replaces the old one, whose files may be gone."""
        with self.mu:
            if view.txid >= self.latest.txid and view is not self.latest:
                if view.txid > self.latest.txid:
                    self.updates += 1
                self.latest = view
                if self.hydrator is not None:
                    self.hydrator.notify(view)  # under mu: it sees views in publish order

    # -- polling --------------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        share, interval = self.share, self.config.poll_interval
        delay = interval if share is None else min(interval, VFS_POLL_SHARE_CHECK_INTERVAL)
        try_lead_at = 0.0
        while not self._stop.wait(delay) and not self.closed:
            try:
                if share is None:
                    self._list()
                    continue
                if self.config.poll_lead and not share.leading \
                        and time.monotonic() >= try_lead_at:
                    try_lead_at = time.monotonic() + interval  # one flock per interval
                    share.try_lead()  # the leader died or closed: poll at once
                if share.leading:
                    delay = interval
                    self._list()
                else:
                    delay = min(interval, VFS_POLL_SHARE_CHECK_INTERVAL)
                    self._follow()
            except Exception as e:  # the next poll tries again; lag shows the outage
                delay = interval
                with self.mu:
                    self.poll_errors += 1
                log.warning("litestream VFS %s: poll failed: %s", self.name, e)

    def poll(self) -> bool:
        """Look for a newer state now: what another process published, else the store."""
        share = self.share
        if share is not None and share.generation() != self._followed and self._follow():
            return True
        return self._list()

    def _list(self) -> bool:
        """One poll of the store: list L0 past our TXID (and publish it when shared)."""
        with self.mu:
            if self.closed:
                return False
            base = self.latest
            self.polls += 1
        files = list(self.client.ltx_files(0, seek=base.txid + 1))
        new = self._next_view(base, files)
        now = time.monotonic_ns()
        with self.mu:
            self.last_poll_ok = now / 1e9
        if self.share is not None:
            # Before we serve it: a worker behind a read floor we raise finds it shared.
            self.share.publish(files, max(new.txid if new else 0, base.txid), now)
        if new is not None:
            self.publish(new)
        return new is not None

    def _follow(self) -> bool:
        """A follower's tick: install what the leader's listing published, if it is newer.
        Fetches the new files' indexes; lists only when the published files do not reach."""
        share = self.share
        if share.generation() == self._followed:
            return False  # a memory read: the idle case costs nothing
        published = share.read()
        with self.mu:
            if self.closed:
                return False
            base = self.latest
        found = False
        if published.txid > base.txid:
            files = [f for f in published.files if f.min_txid > base.txid]
            new = self._next_view(base, files) if files else None
            if new is not None:
                self.publish(new)
                found = True
            if self.latest.txid < published.txid:
                # Too far behind for the published files, or the leader rebuilt from a plan.
                found = self._list() or found
        self._followed = published.generation
        return found

    def _next_view(self, base: _View, files: list) -> _View | None:
        """The view after ``base`` given the L0 files past its TXID (a listing)."""
        if not files:
            return None
        if files[0].min_txid != base.txid + 1:
            # L0 files we never saw were compacted away: the higher levels have them.
            new = self.target_view(None)
            return new if new.txid > base.txid else None
        run = [files[0]]
        for info in files[1:]:
            if info.min_txid != run[-1].max_txid + 1:
                break
            run.append(info)
        try:
            view, _ = self.build(run, base=base)
        except NotFoundError:  # removed between the listing and the read
            new = self.target_view(None)
            return new if new.txid > base.txid else None
        return view

    # -- the page cache -------------------------------------------------------------------------

    def cache_get(self, elem) -> bytes | None:
        with self.mu:
            data = self.cache.get(elem)
            if data is None:
                self.cache_misses += 1
                return None
            self.cache.move_to_end(elem)
            self.cache_hits += 1
            return data

    def cache_peek(self, elem) -> bytes | None:
        """A cached page without counting a hit or a miss (the hydrator's catch-up)."""
        with self.mu:
            return self.cache.get(elem)

    def cache_put(self, elem, data: bytes, page_size: int) -> None:
        with self.mu:
            self.pages_fetched += 1
            capacity = self.capacity(page_size)
            if capacity <= 0:
                return
            self.cache[elem] = data
            while len(self.cache) > capacity:
                self.cache.popitem(last=False)

    def chain(self, first: int, last: int) -> list | None:
        """Contiguous files of levels 0..8 covering exactly TXIDs first..last (the longest
        step first), or None when the replica has no such chain any more."""
        if first > last:
            return []
        files = [info for level in range(SNAPSHOT_LEVEL)
                 for info in self.client.ltx_files(level, seek=first)]
        chain, current = [], first - 1
        while current < last:
            steps = [f for f in files if f.min_txid == current + 1 and f.max_txid <= last]
            if not steps:
                return None
            step = max(steps, key=lambda f: f.max_txid)
            chain.append(step)
            current = step.max_txid
        return chain

    def owns(self, thread: threading.Thread) -> bool:
        """``thread`` is this source's poller or hydrator."""
        return thread is getattr(self, "_poller", None) or (
            self.hydrator is not None and self.hydrator.runs_on(thread))

    def close(self) -> None:
        """Stop the poller and the hydrator, release the share and the client. It takes
        their locks and waits for their threads (with timeouts, never for its own thread):
        call it from a thread that holds none of them — :func:`_release_source` hands the
        close of a finalizer, or of the source's own thread, to :data:`_closer`."""
        with self.mu:
            if self._shut:
                return
            self._shut = self.closed = True
        if self._poller is not threading.current_thread():
            self._stop.set()
            self._poller.join(VFS_POLLER_JOIN_TIMEOUT)
        # else: called on the poller itself, maybe inside _stop.wait() holding the Event's
        # plain lock; the loop sees self.closed instead
        if self.hydrator is not None:
            self.hydrator.close()
        if self.share is not None:
            self.share.close()
        try:
            self.client.close()
        except Exception as e:  # closing must not fail a connection's close
            log.debug("litestream VFS %s: closing the replica client: %s", self.name, e)


_sources: dict[tuple, _Source] = {}
# Reentrant: a connection the garbage collector finalizes (apsw closes it, and so releases its
# source) can do so on a thread that is inside _acquire_source, building another source; a
# plain Lock deadlocked the test suite there (test_errors_contract, many replica apps).
_sources_lock = threading.RLock()


# Serialises source builds (two connections opening at once build one source). Never taken by
# a finalizer: _sources_lock must not be held while a build waits for another thread (the
# poller's start, index workers), because a collection on that thread can finalize a forgotten
# connection, whose _release_source needs _sources_lock: a deadlock across the two threads.
_build_lock = threading.Lock()


def _acquire_source(name: str, config: ResolvedConfig) -> _Source:
    """The shared source of (name, config), opened on first use (built once, outside
    _sources_lock)."""
    key = (name, config)
    with _build_lock:
        with _sources_lock:
            source = _sources.get(key)
            if source is not None:
                source.users += 1
                return source
        _closer.start()
        source = _Source(name, config)
        with _sources_lock:
            _sources[key] = source
            source.users += 1
            return source


def _release_source(source: _Source) -> None:
    """One connection fewer; the last one closes the source. A connection the garbage
    collector finalizes is closed on whatever thread collects, in the middle of what that
    thread was doing: maybe the source's own poller or hydrator (which close() would join),
    maybe holding a lock close() needs (the source's, its poll share's, an Event's of its
    threads, the S3 client's). There, and on the source's own threads, the source is only
    marked closed (its loops stop at their next check) and the closer thread closes it."""
    with _sources_lock:
        source.users -= 1
        if source.users > 0:
            return
        if _sources.get((source.name, source.config)) is source:
            del _sources[(source.name, source.config)]
    if _collecting_on == threading.get_ident() or source.owns(threading.current_thread()):
        source.closed = True
        _closer.submit(source)
    else:
        source.close()


#: The thread running a garbage collection (and so the finalizers it calls), else None. One
#: collection runs at a time; the callbacks run on its thread.
_collecting_on: int | None = None


def _note_collection(phase: str, info: dict, _ident=threading.get_ident) -> None:
    global _collecting_on
    _collecting_on = _ident() if phase == "start" else None


gc.callbacks.append(_note_collection)


class _Closer:
    """A daemon thread that closes the sources :func:`_release_source` could not close where
    it ran. :meth:`submit` never blocks (a finalizer calls it): a deque append, and the
    release of a plain lock used as a semaphore (held while nothing is pending)."""

    def __init__(self) -> None:
        self._pending: deque = deque()
        self._wake = threading.Lock()
        self._wake.acquire()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the thread (from :func:`_acquire_source`, never from a finalizer: starting a
        thread waits for it and takes threading's own locks)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="litestream-vfs-closer")
            self._thread.start()

    def submit(self, source: _Source) -> None:
        self._pending.append(source)
        try:
            self._wake.release()
        except RuntimeError:  # not held: the thread takes what is pending before it waits
            pass

    def _run(self) -> None:
        while True:
            self._wake.acquire()
            self.drain()

    def drain(self) -> None:
        """Close every pending source (on the closer thread; at exit, on the main one)."""
        while True:
            try:
                source = self._pending.popleft()
            except IndexError:
                return
            try:
                source.close()
            except Exception as e:  # the next ones are closed all the same
                log.warning("litestream VFS %s: closing: %s", source.name, e)


_closer = _Closer()
atexit.register(lambda: _closer.drain())  # a private hydration file is removed at exit too


def _new_closer_in_child() -> None:
    global _closer
    _closer = _Closer()  # the parent's thread is not in the child; the next open starts one


os.register_at_fork(after_in_child=_new_closer_in_child)


def _share_stats(share: PollShare | None) -> dict:
    if share is None:
        return {"poll_share": "off", "poll_leader_pid": 0}
    return {"poll_share": "leader" if share.leading else "follower",
            "poll_leader_pid": share.leader_pid()}


# --- one connection's database -----------------------------------------------------------------

class ReplicaDatabase:
    """One main database file opened through the VFS (one per connection): which view its
    transactions read. Index, cache and poller are shared with every connection to the same
    name and settings (:class:`_Source`)."""

    def __init__(self, name: str, config: ResolvedConfig):
        self.name = name
        self.config = config
        self._source = _acquire_source(name, config)
        self._mu = threading.RLock()
        self._lock_level = _LOCK_NONE
        self._read_in_txn = False       # a page was read since the SHARED lock was taken
        self._target: datetime | None = None   # time-travel target; None = follow latest
        self._pending: _View | None = None     # time travel asked for inside a transaction
        self._view = self._source.latest
        self._page1: tuple = (None, b"")   # (view, its patched page 1)
        self._closed = False

    # -- public state ---------------------------------------------------------------------------

    @property
    def replica_client(self):
        """The replica client this database reads through (shared by its connections)."""
        return self._source.client

    @property
    def txid(self) -> int:
        """The TXID this connection reads: inside a read transaction its TXID, outside it the
        one the next transaction will read."""
        return self._visible().txid

    @property
    def lag(self) -> float:
        """Seconds since the last successful poll; -1 before the first (as Litestream)."""
        return self._source.lag

    @property
    def view_time(self) -> datetime:
        """The time-travel target, or the timestamp of the newest LTX file in the view."""
        if isinstance(self._target, datetime):
            return self._target
        return ms_to_datetime(self._visible().timestamp_ms)

    def _visible(self) -> _View:
        """The current view, moved to the newest first when no transaction reads."""
        with self._mu:
            if self._lock_level == _LOCK_NONE:
                self._advance()
            return self._view

    def poll(self) -> bool:
        """Look for new LTX files now (the poller does this every ``poll_interval``); True
        when a newer state was found. The next read transaction (not time travelling) sees it."""
        return self._source.poll()

    def stats(self) -> VFSStats:
        s = self._source
        view = self._visible()
        with s.mu:
            cache_pages = len(s.cache)
            return VFSStats(
                name=self.name, replica_url=self.config.replica_url, txid=view.txid,
                page_size=view.page_size, page_count=view.commit, lag=s.lag,
                time_travel=_format_target(self._target),
                polls=s.polls, poll_errors=s.poll_errors, updates=s.updates,
                index_builds=s.index_builds, not_found_recoveries=s.not_found,
                cache_hits=s.cache_hits, cache_misses=s.cache_misses,
                cache_pages=cache_pages, cache_bytes=cache_pages * view.page_size,
                cache_capacity_pages=s.capacity(view.page_size), pages_fetched=s.pages_fetched,
                bytes_fetched=s.bytes_fetched, connections=s.users,
                **(s.hydrator.stats() if s.hydrator is not None else _NO_HYDRATION),
                **_share_stats(s.share))

    # -- time travel ----------------------------------------------------------------------------

    def set_time(self, target: datetime | int | None) -> None:
        """Read the database as of ``target``, a time or a TXID (None: follow the latest
        again). Takes effect at once, or when the current read transaction ends."""
        new = self._source.target_view(target)
        if target is None:
            self._source.publish(new)
        with self._mu:
            self._target = target
            if self._lock_level == _LOCK_NONE:
                self._view, self._pending = new, None
            else:
                self._pending = new

    # -- locks: a SHARED lock is a read transaction ---------------------------------------------

    def lock(self, level: int) -> None:
        with self._mu:
            if self._lock_level == _LOCK_NONE:
                self._begin()
            self._lock_level = level

    def unlock(self, level: int) -> None:
        with self._mu:
            self._lock_level = level
            if level == _LOCK_NONE:
                self._read_in_txn = False

    def _begin(self) -> None:
        """A read transaction starts (under _mu): it reads the newest state from here on."""
        self._read_in_txn = False
        self._advance()

    def _advance(self) -> None:
        """Take the pending time-travel view, or the newest published one (under _mu, only
        while no read transaction runs)."""
        if self._pending is not None:
            self._view, self._pending = self._pending, None
        elif self._target is None:
            latest = self._source.latest
            if latest.txid >= self._view.txid:
                self._view = latest

    # -- reads ----------------------------------------------------------------------------------

    def file_size(self) -> int:
        view = self._view
        return view.commit * view.page_size

    def read(self, amount: int, offset: int) -> bytes:
        view = self._view
        ps = view.page_size
        start = offset % ps
        if start + amount <= ps and offset + amount <= view.commit * ps:
            # Within one page: SQLite's every read (a page, or page 1's header at each
            # transaction start).
            page = self._page(offset // ps + 1)
            self._read_in_txn = True
            return page if amount == ps else page[start:start + amount]
        out = bytearray()
        pos, end = offset, offset + amount
        while pos < end:
            view = self._view
            ps = view.page_size
            if pos >= view.commit * ps:
                break  # a short read: SQLite zero-fills the rest
            page = self._page(pos // ps + 1)
            start = pos % ps
            n = min(ps - start, end - pos)
            out += page[start:start + n]
            pos += n
        self._read_in_txn = True
        return bytes(out)

    def _page(self, pgno: int) -> bytes:
        if pgno == 1:  # read at every transaction start (the change counter): keep it patched
            view, page = self._page1
            if view is self._view:
                return page
        source = self._source
        for attempt in range(VFS_NOT_FOUND_ATTEMPTS):
            view = self._view
            elem = view.index.get(pgno)
            if elem is None:
                if pgno == ltx.lock_pgno(view.page_size):
                    return bytes(view.page_size)
                raise apsw.CorruptError(
                    f"litestream VFS {self.name}: page {pgno} is in no LTX file of the restore "
                    f"plan up to TXID {view.txid:016x} (the replica is incomplete)")
            hydrator = source.hydrator
            data = hydrator.read_page(view, pgno, elem) if hydrator is not None else None
            if data is None:
                data = source.cache_get(elem)
            if data is None:
                try:
                    _, data = fetch_page(source.client, *elem, page_size=view.page_size)
                except NotFoundError:
                    with source.mu:
                        source.not_found += 1
                    if not self._recover(view, pgno, elem):
                        break
                    if attempt:
                        time.sleep(VFS_NOT_FOUND_BACKOFF * attempt)
                    continue
                source.cache_put(elem, data, view.page_size)
            if pgno == 1:
                data = _patch_page1(data, view)
                if source.config.cache_size:  # cache_size=0: nothing is kept, page 1 neither
                    self._page1 = (view, data)
            return data
        raise apsw.BusyError(
            f"litestream VFS {self.name}: page {pgno} of TXID {self._view.txid:016x} is no longer "
            "on the replica (compacted or removed by retention) and changed since; retry the "
            "transaction")

    # -- vanished files -------------------------------------------------------------------------

    def _recover(self, view: _View, pgno: int, gone: tuple) -> bool:
        """Replace ``view`` after a NotFound on ``gone`` without changing what the current
        transaction sees. False when page ``pgno`` cannot be had at this TXID any more."""
        source = self._source
        with self._mu:
            if self._view is not view:
                return True  # changed meanwhile (time travel): read again
            pinned = self._read_in_txn and self._lock_level != _LOCK_NONE
            target = self._target
        if not pinned:  # nothing read yet: any consistent state will do, the newest is best
            new = source.target_view(target)
            if target is None:
                source.publish(new)
            with self._mu:
                if self._view is view:
                    self._view = new
            return True
        try:  # the same TXID from files that still exist: the same content
            plan = source.plan(None, txid=view.txid)
            if plan[-1].max_txid == view.txid:
                same, _ = source.build(plan)
                with source.mu:
                    source.index_builds += 1
                with self._mu:
                    if self._view is view:
                        self._view = same
                return True
        except TxNotAvailableError:
            pass
        # Only files reaching past our TXID cover it now. A page that no file of a chain
        # from TXID+1 to the newest holds did not change since our TXID: the newest plan's
        # copy of it is ours. The other pages keep our (vanished) entries.
        newer, _ = source.build(source.plan(target))
        chain = source.chain(view.txid + 1, newer.txid)
        if chain is None:
            return False
        changed: set = set()
        for idx in (source.indexes(chain) if chain else ()):
            changed.update(idx)
        hybrid = dict(view.index)
        for p, elem in newer.index.items():
            if p not in changed:
                hybrid[p] = elem
        bridged = _View(view.txid, view.commit, view.page_size, hybrid, view.timestamp_ms)
        with source.mu:
            source.index_builds += 1
        if target is None:
            source.publish(newer)
        with self._mu:
            if self._view is view:
                self._view = bridged
        return hybrid.get(pgno) != gone

    # -- close ----------------------------------------------------------------------------------

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            self._closed = True
        _release_source(self._source)


def _patch_page1(data: bytes, view: _View) -> bytes:
    page = bytearray(data)
    page[18] = page[19] = 1  # rollback journal: SQLite never looks for a WAL
    # A change counter that changes with the TXID (a TXID names one content), never equal
    # to "version-valid-for" (92..95), so SQLite takes the size from xFileSize and reloads
    # its cache exactly when the TXID moves.
    counter = (view.txid * 2) & 0xFFFFFFFF
    if counter.to_bytes(4, "big") == bytes(page[92:96]):
        counter += 1
    page[24:28] = counter.to_bytes(4, "big")
    return bytes(page)


# --- the apsw glue -----------------------------------------------------------------------------

_bound: "weakref.WeakValueDictionary[int, ReplicaDatabase]" = weakref.WeakValueDictionary()
_open: "weakref.WeakSet[ReplicaDatabase]" = weakref.WeakSet()
_open_lock = threading.Lock()


def open_databases() -> list[ReplicaDatabase]:
    """Every database currently open through the VFS (for metrics: ``.stats()`` of each)."""
    with _open_lock:
        return [db for db in list(_open) if not db._closed]


_tokens = itertools.count(1)


class ReplicaFile:
    """What SQLite sees of a :class:`ReplicaDatabase`: a read-only main database file."""

    def __init__(self, db: ReplicaDatabase):
        self.db = db

    def xRead(self, amount: int, offset: int) -> bytes:
        try:
            return self.db.read(amount, offset)
        except apsw.Error:
            raise
        except ReplicationError as e:
            raise apsw.IOError(f"litestream VFS {self.db.name}: {e}") from e

    def xWrite(self, data, offset: int) -> None:
        raise apsw.ReadOnlyError("litestream VFS: the replica is read-only")

    def xTruncate(self, size: int) -> None:
        raise apsw.ReadOnlyError("litestream VFS: the replica is read-only")

    def xSync(self, flags: int) -> None:
        pass

    def xFileSize(self) -> int:
        return self.db.file_size()

    def xLock(self, level: int) -> None:
        self.db.lock(level)

    def xUnlock(self, level: int) -> None:
        self.db.unlock(level)

    def xCheckReservedLock(self) -> bool:
        return False  # nobody writes through this VFS

    def xFileControl(self, op: int, pointer: int) -> bool:
        if op == FCNTL_BIND:
            _bound[pointer] = self.db
            return True
        if op == apsw.SQLITE_FCNTL_PRAGMA:
            pragma = apsw.VFSFcntlPragma(pointer)
            value = _pragma_value(self.db, pragma.name.lower())
            if value is not None:
                pragma.result = value
                return True
        return False

    def xSectorSize(self) -> int:
        return 0  # SQLite's default (512)

    def xDeviceCharacteristics(self) -> int:
        return 0  # not IMMUTABLE: the content changes as the replica advances

    def xClose(self) -> None:
        self.db.close()


def _pragma_value(db: ReplicaDatabase, name: str) -> str | None:
    if name == "litestream_txid":
        return f"{db.txid:016x}"
    if name == "litestream_time":
        return format_rfc3339_nano(db.view_time)
    if name == "litestream_lag":
        return str(int(db.lag))
    hydrator = db._source.hydrator
    if name == "litestream_hydration_progress":
        return f"{hydrator.stats()['hydration_progress'] if hydrator else 0.0:g}"
    if name == "litestream_hydration_file":
        return hydrator.path if hydrator else ""
    return None


class LitestreamVFS(apsw.VFS):
    """The apsw VFS ``litestream``: main databases come from replicas, anything else (temp
    files of sorts and temp tables) from the default VFS it inherits."""

    def __init__(self, name: str = VFS_NAME):
        super().__init__(name, "")

    def xOpen(self, name, flags):
        if isinstance(name, apsw.URIFilename) and flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            dbname = name.filename()
            params = {p: name.uri_parameter(p) for p in name.parameters}
            for flag in _NO_LOCK_PARAMS:
                if name.uri_boolean(flag, False):
                    # Without xLock calls the VFS cannot tell when a read transaction runs,
                    # and would swap TXIDs under it.
                    raise apsw.CantOpenError(
                        f"litestream VFS: cannot open {dbname!r}: the URI parameter {flag}=1 "
                        "is not supported (the VFS needs SQLite's locks to keep each read "
                        f"transaction on one TXID); remove {flag}")
            try:
                db = ReplicaDatabase(dbname, resolve(dbname, params))
            except ReplicationError as e:
                raise apsw.CantOpenError(f"litestream VFS: cannot open {dbname!r}: {e}") from e
            with _open_lock:
                _open.add(db)
            # Read-only whatever was asked: SQLite then refuses writes itself.
            flags[1] = (flags[0] & ~(apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)) \
                | apsw.SQLITE_OPEN_READONLY
            return ReplicaFile(db)
        return super().xOpen(name, flags)

    def xAccess(self, pathname: str, flags: int) -> bool:
        if pathname.endswith(_COMPANIONS):
            return False  # no WAL, no hot journal: a plain read-only rollback-journal DB
        return super().xAccess(pathname, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.endswith(_COMPANIONS):
            return
        super().xDelete(filename, syncdir)

    def xFullPathname(self, name: str) -> str:
        return name  # not a local path: the name as written keys the config registry


_vfs: LitestreamVFS | None = None
_vfs_lock = threading.Lock()


def register() -> LitestreamVFS:
    """Register the apsw VFS ``litestream`` (once per process) and return it."""
    global _vfs
    with _vfs_lock:
        if _vfs is None:
            _vfs = LitestreamVFS()
        return _vfs


def uri(name: str, replica_url: str | None = None, **params) -> str:
    """``file:NAME?vfs=litestream&replica_url=…&…`` with every value URL-encoded."""
    query = {"vfs": VFS_NAME}
    if replica_url is not None:
        query["replica_url"] = replica_url
    query.update({k: str(v) for k, v in params.items()})
    return f"file:{quote(name, safe='/')}?" + "&".join(
        f"{k}={quote(v, safe='')}" for k, v in query.items())


def connect(uri_or_name: str, *, flags: int = _OPEN_READONLY_FLAGS) -> apsw.Connection:
    """Open a read-only connection through the VFS (registered if needed) with the
    ``litestream_*`` SQL functions installed. A plain name gets ``?vfs=litestream`` (its
    replica URL then comes from the registry or LITESTREAM_REPLICA_URL)."""
    register()
    target = uri_or_name if uri_or_name.startswith("file:") else uri(uri_or_name)
    conn = apsw.Connection(target, flags=flags | apsw.SQLITE_OPEN_URI)
    try:
        install_functions(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _format_target(target) -> str | None:
    if target is None:
        return None
    return f"{target:016x}" if isinstance(target, int) else format_rfc3339_nano(target)


#: connection -> {schema: ReplicaDatabase}: a server asks for every request's TXID, and a
#: file control costs a trip through SQLite and back into Python (two GIL hand-offs).
_by_connection: "weakref.WeakKeyDictionary[apsw.Connection, dict]" = weakref.WeakKeyDictionary()


def database(conn: apsw.Connection, schema: str = "main") -> ReplicaDatabase:
    """The :class:`ReplicaDatabase` behind ``conn`` (TXID, lag, stats for the server)."""
    known = _by_connection.get(conn)
    db = known.get(schema) if known is not None else None
    if db is not None and not db._closed:
        return db
    token = next(_tokens)
    if not conn.file_control(schema, FCNTL_BIND, token):
        raise ValueError(f"database {schema!r} of this connection is not opened through the "
                         f"{VFS_NAME!r} VFS")
    db = _bound.pop(token)
    with _open_lock:
        _by_connection.setdefault(conn, {})[schema] = db
    return db


def install_functions(conn: apsw.Connection, schema: str = "main") -> None:
    """Add ``litestream_txid()``, ``litestream_time()``, ``litestream_lag()`` and
    ``litestream_set_time(ts | 'LATEST')`` to ``conn`` (Litestream's VFS functions)."""
    ref = weakref.ref(database(conn, schema))

    def db() -> ReplicaDatabase:
        found = ref()
        if found is None:
            raise apsw.SQLError("litestream VFS: the database is closed")
        return found

    def set_time(value):
        target = parse_time_target(value)
        try:
            db().set_time(target)
        except ReplicationError as e:
            raise apsw.SQLError(f"litestream_set_time({value!r}): {e}") from e
        return None

    conn.create_scalar_function("litestream_txid", lambda: f"{db().txid:016x}", 0)
    conn.create_scalar_function("litestream_time", lambda: format_rfc3339_nano(db().view_time), 0)
    conn.create_scalar_function("litestream_lag", lambda: int(db().lag), 0)
    conn.create_scalar_function("litestream_set_time", set_time, 1)


_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|h|days?|d)"
                  r"\s+ago\s*$", re.IGNORECASE)
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time_target(value) -> datetime | None:
    """``'LATEST'`` (or empty) -> None; RFC 3339 (``2026-12-05T12:00:00Z``) or ``N
    seconds|minutes|hours|days ago`` -> an aware UTC datetime."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("", "LATEST")):
        return None
    if not isinstance(value, str):
        raise apsw.SQLError(f"litestream_set_time: expected text, got {type(value).__name__}")
    m = _AGO.match(value)
    if m:
        seconds = float(m.group(1)) * _AGO_UNITS[m.group(2)[0].lower()]
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise apsw.SQLError(f"litestream_set_time: cannot parse {value!r}: use 'LATEST', an "
                            "RFC 3339 time such as 2026-12-05T12:00:00Z, or 'N minutes ago'") \
            from None
