"""The cheap "I committed" signal from writers to the replicator.

A writer process (e.g. a sqlite-rest worker) sends one byte on a unix datagram socket after each
commit; the replicator's :meth:`replication.db.DB.monitor` polls the listening socket together
with its inotify descriptor and syncs at once. The signal only shortens latency: losing one
(listener not up yet, queue full) is harmless, because the monitor also watches the ``-wal``
file and ticks every monitor-interval. So the sender never blocks and never raises.

Signals coalesce before they are sent: a one-byte flag beside the socket (`PENDING_SUFFIX`) is
1 while a signal is on its way and not yet drained, and a writer that finds it set sends
nothing. Why: at 12,000 commits/s one datagram per commit, and the listener's wake-up for each,
cost 20 µs of CPU per POST (#11, 14 % of it), to wake a replicator that syncs once per round.
"""
from __future__ import annotations

import mmap
import os
import socket
import threading
import time

#: Environment variable naming the listener's socket path for writer processes.
COMMIT_SOCKET_ENV = "SQLITEREST_COMMIT_SOCKET"
#: The listener's "a signal is pending" flag: the socket's path + this, one byte.
PENDING_SUFFIX = ".pending"
#: A writer sends even when the flag says a signal is pending if it has sent none for this
#: long (seconds): a flag left set (a listener gone, its file replaced) costs at most this.
PENDING_TRUST_S = 1.0


def _map_pending_flag(path: str) -> "mmap.mmap | None":
    """The listener's pending flag, shared; None when there is none (then every commit
    signals, as before the flag existed)."""
    try:
        fd = os.open(path + PENDING_SUFFIX, os.O_RDWR)
    except OSError:
        return None
    try:
        return mmap.mmap(fd, 1)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


class CommitSignal:
    """Sends commit signals to a :class:`CommitListener` bound at ``path`` (non-blocking)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = os.fspath(path) if path else None
        self._sock: socket.socket | None = None
        self._pending: mmap.mmap | None = None
        self._last_sent = 0.0
        if self.path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._pending = _map_pending_flag(self.path)

    @classmethod
    def from_env(cls) -> "CommitSignal":
        """A signal to ``$SQLITEREST_COMMIT_SOCKET``; a no-op sender when it is unset."""
        return cls(os.environ.get(COMMIT_SOCKET_ENV) or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    # As a WriterHook (replication.primary): a commit signal alone, no position.
    owns_checkpoints = False

    def watch_connection(self, conn) -> None:
        pass

    def before_commit(self) -> None:
        pass

    def send(self) -> None:
        """Signal one commit, unless a signal is already pending: the listener clears the flag
        before it drains, so the sync that signal starts sees this commit too. Never blocks,
        never raises (a lost signal only costs latency)."""
        if self._sock is None:
            return
        pending = self._pending
        if pending is not None:
            now = time.monotonic()
            if pending[0] and now - self._last_sent < PENDING_TRUST_S:
                return
            pending[0] = 1
            self._last_sent = now
        try:
            self._sock.sendto(b"c", self.path)
        except OSError:
            if pending is not None:
                pending[0] = 0  # nothing is on its way: the next commit tries again

    __call__ = send  # after COMMIT: signal, and no position to tell

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pending is not None:
            self._pending.close()
            self._pending = None


_WAIT = b"w"   # a position request: b"w" + 8-byte sequence number, from a bound socket
_TXID = b"t"   # its answer: b"t" + the same 8 bytes + 16 hex digits of TXID


class CommitWaiter:
    """Signals a commit and waits for the replication position that contains it.

    Used by API workers after a write's COMMIT to fill ``X-Replication-Txid``. Each thread gets
    its own socket, bound in Linux's abstract namespace (no file to clean up), because the
    answer comes back to the sender's address. The answer arrives after the replicator's next
    sync round that started after the request — by then the commit is in a local L0 file. On
    timeout (replication stalled) it returns ``None``: the write itself is already durable.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def from_env(cls) -> "CommitWaiter | None":
        path = os.environ.get(COMMIT_SOCKET_ENV)
        return cls(path) if path else None

    # As a WriterHook (replication.primary): the replicator owns checkpoints.
    owns_checkpoints = True

    def watch_connection(self, conn) -> None:
        pass

    def before_commit(self) -> None:
        pass

    def _socket(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None or getattr(self._local, "pid", None) != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(f"\0sqlite-rest-{os.getpid()}-{threading.get_ident()}-{id(self)}")
            self._local.sock, self._local.pid, self._local.seq = sock, os.getpid(), 0
        return sock

    def __call__(self) -> str | None:
        sock = self._socket()
        self._local.seq += 1
        seq = self._local.seq.to_bytes(8, "big")
        try:
            # Bounded like the wait: a full queue (a listener that stopped draining during
            # shutdown) once blocked a worker's stop for its whole kill timeout.
            sock.settimeout(self.timeout)
            sock.sendto(_WAIT + seq, self.path)
        except OSError:
            return None
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(64)
            except (socket.timeout, OSError):
                return None
            if data[:1] == _TXID and data[1:9] == seq:  # older answers (timed out) are skipped
                return data[9:25].decode()
        return None


class CommitListener:
    """Receives commit signals on a unix datagram socket bound at ``path``.

    Use :meth:`fileno` with ``select``/``poll``; :meth:`drain` empties the queue and returns how
    many signals were pending (several commits coalesce into one sync).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            os.unlink(self.path)  # a stale socket file from a previous run
        except FileNotFoundError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(self.path)
        self.waiters: list[tuple[object, bytes]] = []
        # A new file (never one a writer of an earlier run still maps), cleared.
        flag = self.path + PENDING_SUFFIX
        try:
            os.unlink(flag)
        except FileNotFoundError:
            pass
        fd = os.open(flag, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0")
            self._pending = mmap.mmap(fd, 1)
        finally:
            os.close(fd)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> int:
        """Empty the queue; returns how many signals were pending. Position requests of
        :class:`CommitWaiter` count as signals too and are kept in :attr:`waiters` until
        the caller takes them (:meth:`take_waiters`) and answers them (:meth:`reply`).
        Clears the pending flag first, so a commit after it signals again, and again once the
        queue is empty: a signal sent while this loop ran sets the flag, and the loop took its
        datagram. Left set, the flag silenced every writer for PENDING_TRUST_S with nothing on
        its way: with the -wal watch off, replica lag under a POST flood went from p99 0.1 s
        to 0.3–0.9 s (#11, bench/README.md); the watch's own wake-ups had hidden it."""
        self._pending[0] = 0
        n = 0
        while True:
            try:
                data, addr = self._sock.recvfrom(64)
            except (BlockingIOError, InterruptedError, OSError):
                # Nothing pending now. A signal sent after this leaves its datagram in the
                # queue (select wakes us again), whatever the flag says.
                self._pending[0] = 0
                return n
            n += 1
            if data[:1] == _WAIT and len(data) == 9 and addr:
                self.waiters.append((addr, data[1:9]))

    def take_waiters(self) -> list[tuple[object, bytes]]:
        """The pending position requests (and forget them)."""
        waiters, self.waiters = self.waiters, []
        return waiters

    def reply(self, waiters, txid: int) -> None:
        """Tell each waiter the replication position (TXID) that contains its commit."""
        text = b"%016x" % txid
        for addr, seq in waiters:
            try:
                self._sock.sendto(_TXID + seq + text, addr)
            except OSError:
                pass  # the waiter gave up (timeout) or its worker died: nothing to tell

    def close(self) -> None:
        self._sock.close()
        self._pending.close()
        for path in (self.path, self.path + PENDING_SUFFIX):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "CommitListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
