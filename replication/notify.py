"""The cheap "I committed" signal from writers to the replicator.

A writer process (e.g. a sqlite-rest worker) sends one byte on a unix datagram socket after each
commit; the replicator's :meth:`replication.db.DB.monitor` polls the listening socket together
with its inotify descriptor and syncs at once. The signal only shortens latency: losing one
(listener not up yet, queue full) is harmless, because the monitor also watches the ``-wal``
file and ticks every monitor-interval. So the sender never blocks and never raises.
"""
from __future__ import annotations

import os
import socket

#: Environment variable naming the listener's socket path for writer processes.
COMMIT_SOCKET_ENV = "SQLITEREST_COMMIT_SOCKET"


class CommitSignal:
    """Sends commit signals to a :class:`CommitListener` bound at ``path`` (non-blocking)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = os.fspath(path) if path else None
        self._sock: socket.socket | None = None
        if self.path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> "CommitSignal":
        """A signal to ``$SQLITEREST_COMMIT_SOCKET``; a no-op sender when it is unset."""
        return cls(os.environ.get(COMMIT_SOCKET_ENV) or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self) -> None:
        """Signal one commit. Never blocks, never raises (a lost signal only costs latency)."""
        if self._sock is None:
            return
        try:
            self._sock.sendto(b"c", self.path)
        except OSError:
            pass

    __call__ = send

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> int:
        n = 0
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:
                return n
            n += 1

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "CommitListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
