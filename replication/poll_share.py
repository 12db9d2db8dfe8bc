"""One poller for all the processes that read one replica (a replica server's workers and
its supervisor): the VFS setting ``poll_share=<path>`` (design/read-replicas.md, "One poller
per server").

Without it every process that opens the replica lists the store every ``poll_interval``; a
replica server with 2 workers and a health connection made three times the requests of one
reader. With it, the process that holds an exclusive flock on ``<path>.lead`` is the *leader*:
it alone lists L0 on its poller's tick and publishes what it found in ``<path>``. The others
(*followers*) look at the file's generation counter through a shared mapping (a memory read,
no system call) and install a newer state from the published listing: they fetch the new
files' page indexes themselves (per new file, not per poll), but never list to learn that
nothing changed. A follower tries the lead lock once per ``poll_interval`` (non-blocking), so
when the leader dies its lock is released by the kernel and another process leads within one
interval. Explicit polls (read-your-writes, forwarding) may still list from any process and
publish what they found.

The file (fixed size, big-endian u64s):

====== ==================================================================================
0      generation: raised by every publish that added files or a newer TXID
8      monotonic_ns of the newest successful listing by any process (CLOCK_MONOTONIC is
       system-wide, so a follower's lag is measured from the leader's last poll)
16     the newest TXID a listing led to
24     pid of the leader (for /status and tests)
32     n: files listed below
40 …   n × (min_txid, max_txid, size, created_at µs): the newest L0 files seen, at most
       ``VFS_POLL_SHARE_FILES``; a follower further behind lists for itself
====== ==================================================================================

Writers hold an exclusive flock on ``<path>`` and raise the generation last; a reader that
saw the generation move reads the rest under a shared flock. The 8-byte poll time is read
without a lock, twice, and kept only when both reads agree (a write may tear it).

The path names one run's state: a replica server puts it in its runtime directory. A file
left from another boot would carry a poll time of another clock (lag 0 until the next poll).
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from .defaults import VFS_POLL_SHARE_FILES
from .replica_client import FileInfo

_HEADER = struct.Struct(">QQQQI")     # generation, poll ns, txid, leader pid, n
_FILE = struct.Struct(">QQQQ")        # min_txid, max_txid, size, created_at µs
_FILES_AT = 40
SIZE = _FILES_AT + VFS_POLL_SHARE_FILES * _FILE.size


@dataclass(frozen=True)
class Published:
    generation: int
    txid: int
    files: tuple          # FileInfo of L0, by min_txid


def _micros(when: datetime) -> int:
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(
        microsecond=us % 1_000_000)


class PollShare:
    """This process's handle on a shared poll file (one per VFS source)."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size < SIZE:
                os.ftruncate(self._fd, SIZE)  # zeros: nothing published yet
            self._map = mmap.mmap(self._fd, SIZE)
        except BaseException:
            os.close(self._fd)
            raise
        self._lead_fd: int | None = None
        # flock excludes open file descriptions, not threads: this process's threads (the
        # poller, request threads polling explicitly) take turns here first (_locked()).
        self._mu = threading.Lock()
        self._holder: int | None = None   # the thread inside _locked()
        self._close_pending = False
        self._closed = False
        _shares.add(self)

    @contextmanager
    def _locked(self):
        """Hold ``_mu``; a close() asked meanwhile on this thread is done on the way out."""
        with self._mu:
            if self._closed:  # its descriptor number may name another file by now
                raise ValueError(f"poll share {self.path} is closed")
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
                if self._close_pending:
                    self._close_locked()

    # -- the lead -------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._lead_fd is not None

    def try_lead(self) -> bool:
        """Take the lead if nobody holds it (one non-blocking flock); True while leading."""
        with self._locked():
            if self._lead_fd is not None:
                return True
            fd = os.open(self.path + ".lead", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._lead_fd = fd
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._map[24:32] = os.getpid().to_bytes(8, "big")
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            return True

    def leader_pid(self) -> int:
        return int.from_bytes(self._map[24:32], "big")

    # -- reading (followers) --------------------------------------------------------------------

    def generation(self) -> int:
        return int.from_bytes(self._map[0:8], "big")

    def poll_ns(self) -> int:
        """monotonic_ns of the newest successful listing (0: none yet)."""
        while True:
            a, b = self._map[8:16], self._map[8:16]
            if a == b:
                return int.from_bytes(a, "big")

    def read(self) -> Published:
        with self._locked():
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                return self._decode()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _decode(self) -> Published:
        generation, _, txid, _, n = _HEADER.unpack_from(self._map, 0)
        n = min(n, VFS_POLL_SHARE_FILES)
        files = tuple(FileInfo(0, lo, hi, size, _from_micros(us)) for lo, hi, size, us in
                      (_FILE.unpack_from(self._map, _FILES_AT + i * _FILE.size)
                       for i in range(n)))
        return Published(generation, txid, files)

    # -- publishing (whoever listed) ------------------------------------------------------------

    def publish(self, files: list, txid: int, poll_ns: int) -> None:
        """Add an L0 listing (``files``), the TXID it led to and when it was taken."""
        with self._locked():
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                old = self._decode()
                merged = {f.min_txid: f for f in old.files}
                merged.update((f.min_txid, f) for f in files if f.level == 0)
                keep = sorted(merged.values(), key=lambda f: f.min_txid)[-VFS_POLL_SHARE_FILES:]
                if poll_ns > self.poll_ns():
                    self._map[8:16] = poll_ns.to_bytes(8, "big")
                if txid <= old.txid and len(keep) == len(old.files) and \
                        all(a == b for a, b in zip(keep, old.files)):
                    return  # nothing new: followers keep their generation (no read)
                for i, f in enumerate(keep):
                    _FILE.pack_into(self._map, _FILES_AT + i * _FILE.size, f.min_txid,
                                    f.max_txid, f.size, _micros(f.created_at))
                self._map[16:24] = max(txid, old.txid).to_bytes(8, "big")
                self._map[32:36] = len(keep).to_bytes(4, "big")
                self._map[0:8] = (old.generation + 1).to_bytes(8, "big")
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _forget_lead(self) -> None:
        """In a forked child: the inherited lock is the parent's (the child has no poller
        thread); dropping our descriptor lets the lock go when the parent goes."""
        self._mu = threading.Lock()
        self._holder = None
        if self._lead_fd is not None:
            os.close(self._lead_fd)
            self._lead_fd = None

    def close(self) -> None:
        """Give up the lead and the file. ``_mu`` is not reentrant: on a thread inside this
        share (a finalizer that closed the last connection of its source while this thread
        published or read) close() only asks, and that method closes as it leaves — after
        its last use of the file, and without deadlocking on its own lock."""
        if self._holder == threading.get_ident():
            self._close_pending = True
            return
        with self._mu:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lead_fd is not None:
            os.close(self._lead_fd)  # the kernel drops the lock: another process leads
            self._lead_fd = None
        self._map.close()
        os.close(self._fd)


_shares: "weakref.WeakSet[PollShare]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for share in list(_shares):
        share._forget_lead()


os.register_at_fork(after_in_child=_after_fork_in_child)
