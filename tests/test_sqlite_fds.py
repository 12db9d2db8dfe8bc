"""Our own descriptors never drop SQLite's locks (replication/sqlite_fds.py, issue #9).

SQLite's locks are POSIX fcntl locks: closing any descriptor of the database or its -shm drops
every lock the process holds on that file. These tests hold a write transaction in this process,
run the replication code that reads those files (the worker's CommitPositions, the replicator's
DB), and check from another process that the write lock is still held. Each failed before the
fix: the worker's first commit closed its -shm descriptor and let a second writer in.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import apsw

from replication.config import DBConfig
from replication.db import DB
from replication.position import CommitPositions
from replication.sqlite_fds import release_unused

PROBE = """
import apsw, sys
conn = apsw.Connection(sys.argv[1])
conn.set_busy_timeout(0)
try:
    conn.execute("BEGIN IMMEDIATE")
    print("acquired")
except apsw.BusyError:
    print("busy")
"""


def other_process_can_write(path) -> bool:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    return out == "acquired"


def writer_in_transaction(path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    return conn


def test_a_workers_first_commit_position_keeps_its_write_lock(tmp_path):
    db = tmp_path / "app.db"
    conn = writer_in_transaction(db)
    assert not other_process_can_write(db)
    positions = CommitPositions(db, tmp_path / "board", fallback=lambda: None, wake=lambda: None)
    positions.before_commit()  # maps the -shm: the first write of every worker does this
    assert not other_process_can_write(db), "reading the -shm dropped the WAL write lock"
    conn.execute("COMMIT")
    assert other_process_can_write(db)


def open_descriptors_of(path) -> int:
    target = os.stat(path)
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        n += os.path.samestat(st, target)
    return n


def test_closing_a_replicated_db_keeps_the_processs_other_locks(tmp_path):
    """Its descriptors stay while a connection of this process has the file (closing one would
    drop that connection's locks, #9), and go once none has (kept for ever, two per database
    piled up past 1,000 in one test session)."""
    db = tmp_path / "app.db"
    writer_in_transaction(db).execute("COMMIT")
    replicated = DB(str(db), DBConfig(path=str(db)))
    replicated.open()
    replicated.sync()
    conn = writer_in_transaction(db)
    replicated.close()  # its descriptors of the DB file and the -shm stay open
    assert not other_process_can_write(db), "closing the replicator dropped the write lock"
    release_unused()  # the file is still open here: nothing of it may close
    assert not other_process_can_write(db), "a release dropped the write lock"
    conn.execute("COMMIT")
    conn.close()
    gc.collect()  # the first writer's connection, never closed by name
    assert open_descriptors_of(db) == 1  # ours, kept
    assert len(release_unused()) >= 1
    assert open_descriptors_of(db) == 0


def test_closing_a_db_whose_file_no_one_else_has_open_releases_its_descriptors(tmp_path):
    db = tmp_path / "app.db"
    conn = writer_in_transaction(db)
    conn.execute("COMMIT")
    conn.close()
    replicated = DB(str(db), DBConfig(path=str(db)))
    replicated.open()
    replicated.sync()
    assert open_descriptors_of(db) >= 2
    replicated.close()
    assert open_descriptors_of(db) == 0
