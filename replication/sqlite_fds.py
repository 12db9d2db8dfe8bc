"""Read-only descriptors on the files SQLite locks (a database and its ``-shm``), kept open for
the life of the process.

Why: SQLite's locks are POSIX ``fcntl`` locks, which belong to a process and a file, not to a
descriptor: closing *any* descriptor of the database or of its ``-shm`` drops *every* lock the
process holds on that file — the WAL write lock of a transaction under way, read marks, and the
DMS lock that tells a newcomer the wal-index is in use. SQLite guards its own descriptors
against this; ours it cannot know about. Incident (#9): HTTP workers mapped the ``-shm`` header
and closed the descriptor inside their first write transaction; the dropped write lock let a
second writer append to the WAL at the same offset, and after a crash acknowledged commits were
gone from the database and its replica.

So these descriptors are kept: one per file (device, inode) per process, shared by every caller
and inherited by forked children (which must not close them either). One is released only when
no other descriptor of the process refers to its file (:func:`release_unused`): then no SQLite
connection here has the file open, and there is no lock to drop. (Never releasing them leaked two
descriptors per database a process had ever opened: the fault sweep's ~450 DBs took the suite
past 1,000 descriptors, over the 1,024 many machines allow.) The ``-wal`` needs none of this:
SQLite takes no lock on it.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable

_PROC_FDS = "/proc/self/fd"

_kept: dict[tuple[int, int], int] = {}
_lock = threading.Lock()


def open_kept(path: str) -> int:
    """A read-only descriptor of ``path``, never to be closed (see the module docstring).
    Raises FileNotFoundError like ``os.open``."""
    with _lock:
        st = os.stat(path)
        fd = _kept.get((st.st_dev, st.st_ino))
        if fd is not None:
            return fd
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)  # the file may have been replaced since the stat: key what we opened
        return _kept.setdefault((st.st_dev, st.st_ino), fd)




def release_unused(fds: Iterable[int] | None = None) -> list[int]:
    """Close each of ``fds`` (descriptors :func:`open_kept` returned; ``None``: every kept
    one) that no other descriptor of this process refers to: every SQLite connection to its
    file is closed, so the process holds no lock on it to drop. Returns those closed. Where
    descriptors cannot be listed (no ``/proc/self/fd``) all stay open, as before. For a process
    done with a database while it goes on (a test suite, a tool that opens many in turn)."""
    with _lock:
        if not os.path.isdir(_PROC_FDS):
            return []
        fds = None if fds is None else set(fds)
        wanted = {fd: key for key, fd in _kept.items() if fds is None or fd in fds}
        in_use = set()
        for name in os.listdir(_PROC_FDS):
            if int(name) in wanted:
                continue
            try:
                st = os.stat(f"{_PROC_FDS}/{name}")  # follows to the file, deleted or not
            except OSError:  # closed meanwhile (the listing's own descriptor is one)
                continue
            in_use.add((st.st_dev, st.st_ino))
        closed = []
        for fd, key in wanted.items():
            if key not in in_use:
                del _kept[key]
                os.close(fd)
                closed.append(fd)
        return closed
