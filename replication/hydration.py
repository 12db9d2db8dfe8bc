"""Hydration of a VFS replica: a local copy restored in the background and kept caught up
(``hydration_enabled``, ``hydration_path``; Litestream's names; design/read-replicas.md).

A :class:`Hydrator` belongs to one VFS source. Its thread restores the latest state into a
local file (``restore.restore``), then, every time the source publishes a newer view, writes
the pages that changed into it. The local file holds exactly one TXID, ``txid``: a page
whose newest version in a view comes from an LTX file ending at or before ``txid`` has that
same version in the file, so a view at ``txid`` or later may read it there
(:meth:`Hydrator.read_page`); any other page still comes from the replica.

No read ever sees a page torn by a catch-up, and a read transaction keeps its one TXID: a
catch-up raises ``generation`` to an odd number before it writes and to the next even one
after (a sequence lock), and a read that saw the generation change while it read falls back
to the replica. A transaction pinned to a TXID older than the file's reads from the replica.

A persistent file (``hydration_path``) keeps its TXID, page size and the timestamp of the LTX
file that ended at that TXID in ``<path>.meta``. On restart it is reused when the replica
still has a file ending at that TXID with the same timestamp; else (the replica was wiped or
rewritten, or went back) it is rebuilt. The meta file is removed before each catch-up writes
and written again once the file is synced, so a crash in between rebuilds too. One process
owns a path (an flock); another process that opens the same replica hydrates into a private
temporary file instead.
"""
from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading

from .defaults import HYDRATION_WHOLE_FILE_PAGES, VFS_HYDRATOR_JOIN_TIMEOUT
from .errors import ReplicationError, TxNotAvailableError
from .ltx import Decoder, format_filename, lock_pgno
from .replica_client import NotFoundError, fetch_ltx_header, fetch_page
from .restore import calc_restore_plan, restore

log = logging.getLogger(__name__)

#: States of a hydrator, as shown in the source's stats.
RESTORING, READY, FAILED, CLOSED = "restoring", "ready", "failed", "closed"


class Hydrator:
    """The local copy of one source's replica (see the module docstring)."""

    def __init__(self, source, path: str | None):
        self._source = source
        self._own_dir: str | None = None
        self.path = self._claim(path)
        self.meta_path = self.path + ".meta"
        self.state = RESTORING
        self.txid = 0                   # the TXID the local file holds (0: not complete)
        self.commit = 0                 # pages
        self.generation = 0             # odd while a catch-up writes
        self.restore_done = self.restore_total = 0   # bytes of the background restore
        self.reused = False             # a persistent file was reused at open
        self.catch_ups = 0
        self.local_reads = 0            # pages read from the local file
        self.error: str | None = None
        self._fd = -1
        self._map = None
        # Pages that views published since TXID _changed_from added, up to view _changed_txid
        # (None: unknown, scan the whole index). A superset is harmless: pages are filtered.
        self._changed: set | None = None
        self._changed_txid = self._changed_from = 0
        self._wake = threading.Event()
        # Set by close(): the thread ends at its next check. A plain attribute, not an Event:
        # close() may run in a finalizer on this very thread, perhaps inside an Event's lock.
        self._closing = False
        self._released = threading.Lock()   # taken once, by whoever releases the file
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"litestream-vfs-hydrate {source.name}")
        self._thread.start()

    # -- ownership --------------------------------------------------------------------------

    def _claim(self, path: str | None) -> str:
        """The file this process hydrates into: ``path`` when no other process owns it."""
        if path:
            path = os.path.abspath(path)
            try:
                lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise ReplicationError(f"hydration_path {path}: {e.strerror or e}",
                                       hint="give a path in an existing, writable directory") \
                    from None
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = lock_fd
                return path
            except BlockingIOError:
                os.close(lock_fd)
                log.info("litestream VFS %s: %s is hydrated by another process; this one "
                         "hydrates into a temporary file", self._source.name, path)
        self._lock_fd = -1
        self._own_dir = tempfile.mkdtemp(prefix="litestream-hydration-")
        return os.path.join(self._own_dir, "db")

    # -- the thread -------------------------------------------------------------------------

    def runs_on(self, thread: threading.Thread) -> bool:
        return thread is self._thread

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._closing:
                # close() may not have waited for us (its timeout, or it ran on this very
                # thread): whoever of the two is last releases the file.
                self._release()

    def _loop(self) -> None:
        while not self._closing:
            self._wake.clear()  # before the work: a view published during it wakes the next
            try:
                if self.state != READY:
                    self._hydrate()
                self._catch_up()
            except Exception as e:  # reads go on from the replica; stats say why
                if self._closing:
                    return
                self.error = str(e)
                if self.state != READY or self.generation & 1:
                    # Not complete, or a catch-up failed while it wrote (the generation stays
                    # odd: no read trusts the file): hydrate again at the next interval.
                    self.state = FAILED
                log.warning("litestream VFS %s: hydration: %s (retried in %gs)",
                            self._source.name, e, self._source.config.poll_interval)
            if self._closing:
                return
            self._wake.wait(self._source.config.poll_interval)

    def _hydrate(self) -> None:
        """Reuse the persistent file or restore one, then let reads trust it."""
        self.state = RESTORING
        if not self._reuse():
            self._restore()
        if self._fd >= 0:
            os.close(self._fd)  # the file of a failed hydration (a restore renamed over it)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._map = None
        self._remap()
        self.generation += self.generation & 1  # even: the file holds TXID self.txid
        self.error = None
        self.state = READY

    def notify(self, view) -> None:
        """``view`` was published (under the source's lock): note its changed pages and
        catch up now rather than at the next interval."""
        if self._changed is not None and view.added is not None \
                and view.base_txid == self._changed_txid:
            self._changed |= view.added
        else:
            self._changed = None  # a full build (or a view missed): scan the index
        self._changed_txid = view.txid
        self._wake.set()

    def _reuse(self) -> bool:
        """Take a persistent file left by an earlier run if the replica still holds its TXID."""
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
            txid, stamp = int(meta["txid"]), int(meta["timestamp"])
            size = os.path.getsize(self.path)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        client = self._source.client
        try:  # a store error propagates: retried later, the file kept for then
            plan = calc_restore_plan(client, txid=txid)
        except TxNotAvailableError as e:  # the replica has no such TXID (any more)
            log.info("litestream VFS %s: hydration file %s at TXID %016x not reused: %s",
                     self._source.name, self.path, txid, e)
            return False
        last = plan[-1]
        header = fetch_ltx_header(client, last.level, last.min_txid, last.max_txid)
        if last.max_txid != txid or header.timestamp != stamp \
                or header.page_size != meta.get("page_size") \
                or size < int(meta.get("commit", 0)) * header.page_size:
            log.info("litestream VFS %s: the replica no longer holds TXID %016x of hydration "
                     "file %s as it was: rebuilding it", self._source.name, txid, self.path)
            return False
        self.txid, self.commit, self._stamp = txid, int(meta["commit"]), stamp
        self._page_size = header.page_size
        self.reused = True
        return True

    def _restore(self) -> None:
        self._remove_meta()
        plan = calc_restore_plan(self._source.client)
        last = plan[-1]
        header = fetch_ltx_header(self._source.client, last.level, last.min_txid, last.max_txid)

        def progress(done: int, total: int) -> None:
            self.restore_done, self.restore_total = done, total
            if self._closing:
                raise InterruptedError("closed")

        result = restore(self._source.client, self.path, plan=plan, force=True,
                         progress=progress)
        self.txid, self.commit, self._page_size = result.txid, result.page_count, result.page_size
        self._stamp = header.timestamp
        self._write_meta()

    def _catch_up(self) -> None:
        """Bring the file to the source's newest view: write every page whose newest version
        comes from a file past ours (read from the page cache or the replica)."""
        with self._source.mu:
            view = self._source.latest
            changed = self._changed if self._changed_txid == view.txid else None
            since = self._changed_from
            self._changed, self._changed_txid = set(), view.txid
            self._changed_from = view.txid
        if view.txid <= self.txid:
            return
        if view.page_size != self._page_size:
            raise ValueError(f"page size changed from {self._page_size} to {view.page_size}")
        if changed is None or since > self.txid:  # the whole index, once
            candidates = view.index.items()
        else:  # the pages of the files published since (at most) our TXID
            candidates = ((pgno, view.index[pgno]) for pgno in changed if pgno in view.index)
        by_file: dict = {}  # (level, min, max) -> {pgno: index entry}
        for pgno, elem in candidates:
            if elem[2] > self.txid and pgno <= view.commit:
                by_file.setdefault(elem[:3], {})[pgno] = elem
        try:  # everything fetched before the file changes: reads go on meanwhile
            pages = [page for key, wanted in by_file.items()
                     for page in self._fetch(key, wanted, view.page_size)]
        except NotFoundError:  # compacted meanwhile: a fresh plan has the new files
            self._source.publish(self._source.target_view(None))
            return
        self._remove_meta()
        self.generation += 1  # odd: reads of the file stop trusting it
        ps = view.page_size
        if view.commit * ps > os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, view.commit * ps)  # grows only: a mapping never faults
        for pgno, data in pages:
            os.pwrite(self._fd, data, (pgno - 1) * ps)
        lock = lock_pgno(ps)
        if self.commit < lock <= view.commit:
            os.pwrite(self._fd, bytes(ps), (lock - 1) * ps)
        os.fdatasync(self._fd)
        self._remap()
        self.txid, self.commit, self._stamp = view.txid, view.commit, view.timestamp_ms
        self.generation += 1  # even again: the file holds the new TXID (an error above
        self.catch_ups += 1   # leaves it odd, and _run hydrates again)
        self._write_meta()

    def _fetch(self, key: tuple, wanted: dict, page_size: int) -> list:
        """``(pgno, data)`` of the ``wanted`` pages of one LTX file."""
        client = self._source.client
        if len(wanted) >= HYDRATION_WHOLE_FILE_PAGES:
            f = client.open_ltx_file(*key)
            try:
                dec = Decoder(f, name=format_filename(key[1], key[2]))
                pages = [(pgno, data) for pgno, data in dec.pages() if pgno in wanted]
                dec.close()
            finally:
                f.close()
            return pages
        out = []
        for pgno, elem in wanted.items():
            data = self._source.cache_peek(elem)
            if data is None:
                _, data = fetch_page(client, *elem, page_size=page_size)
            out.append((pgno, data))
        return out

    # -- reads ------------------------------------------------------------------------------

    def read_page(self, view, pgno: int, elem: tuple) -> bytes | None:
        """Page ``pgno`` of ``view`` from the local file, or None when the file cannot give
        that exact version (not complete, older than the view, or changed while read)."""
        gen = self.generation
        if gen & 1 or self.state != READY or view.txid < self.txid or elem[2] > self.txid \
                or pgno > self.commit:
            return None
        ps = view.page_size
        data = self._map[(pgno - 1) * ps:pgno * ps]
        if self.generation != gen or len(data) != ps:
            return None
        self.local_reads += 1
        return data

    def _remap(self) -> None:
        """Map the whole file (again, once it grew): a read is then a memory copy, with no
        system call that would hand the GIL to another thread. The old mapping is left to
        the garbage collector, so a read that still holds it never touches a closed one."""
        size = os.fstat(self._fd).st_size
        if self._map is None or len(self._map) != size:
            self._map = mmap.mmap(self._fd, size, prot=mmap.PROT_READ) if size else b""

    # -- meta -------------------------------------------------------------------------------

    def _write_meta(self) -> None:
        if self._own_dir:
            return  # a private file is never reused
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"txid": self.txid, "commit": self.commit, "page_size": self._page_size,
                       "timestamp": self._stamp,
                       "replica_url": self._source.config.replica_url}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.meta_path)

    def _remove_meta(self) -> None:
        try:
            os.remove(self.meta_path)
        except FileNotFoundError:
            pass

    def stats(self) -> dict:
        total = self.restore_total
        progress = 1.0 if self.state == READY else (self.restore_done / total if total else 0.0)
        return {"hydration": self.state, "hydration_txid": self.txid,
                "hydration_progress": progress, "hydration_reused": self.reused,
                "hydration_catch_ups": self.catch_ups, "hydration_reads": self.local_reads}

    def close(self) -> None:
        """Stop the thread and release the file. Never waits for the thread it runs on (a
        finalizer on the hydrator thread: the thread ends after it and releases the file
        itself), nor longer than VFS_HYDRATOR_JOIN_TIMEOUT (a catch-up stuck in a read: the
        thread releases the file when it ends; closing its descriptor under it could make
        its writes land in a file opened later with the same number)."""
        self._closing = True
        if not self.runs_on(threading.current_thread()):
            self._wake.set()
            self._thread.join(VFS_HYDRATOR_JOIN_TIMEOUT)
        if not self._thread.is_alive():
            self._release()

    def _release(self) -> None:
        """Close the file, give up the path's ownership, remove a private file (once: by
        close() or by the ending thread, whichever comes last)."""
        if not self._released.acquire(blocking=False):
            return
        self.state = CLOSED
        self.generation |= 1
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
