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

So these descriptors are never closed: one per file (device, inode) per process, shared by every
caller and inherited by forked children (which must not close them either), released when the
process exits. The ``-wal`` needs none of this: SQLite takes no lock on it.
"""
from __future__ import annotations

import os
import threading

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
