"""Exclusive L0 writes: two writers on one replica path can never interleave TXIDs silently.

Both backends, the S3 one against a real SeaweedFS (If-None-Match: * conditional create).
"""
from __future__ import annotations

import os

import pytest

from replication.file_replica_client import FileReplicaClient
from replication.replica_client import ConflictError

TS = 1_700_000_000_123


@pytest.fixture
def client(replica_client):
    """Both backends (tests/conftest.py), one contract."""
    return replica_client


def read(client, level, lo, hi) -> bytes:
    with client.open_ltx_file(level, lo, hi) as f:
        return f.read()


def test_exclusive_write_creates_then_accepts_the_same_bytes_again(client):
    client.write_ltx_file(0, 1, 1, b"first writer", TS, exclusive=True)
    # A retried upload of our own (e.g. after a timeout whose PUT did land) is not a conflict.
    client.write_ltx_file(0, 1, 1, b"first writer", TS, exclusive=True)
    assert read(client, 0, 1, 1) == b"first writer"


def test_exclusive_write_refuses_other_bytes_and_keeps_the_original(client):
    client.write_ltx_file(0, 2, 2, b"first writer", TS, exclusive=True)
    with pytest.raises(ConflictError) as info:
        client.write_ltx_file(0, 2, 2, b"second writer", TS, exclusive=True)
    assert "another writer" in str(info.value) and info.value.hint
    assert not info.value.retryable
    assert read(client, 0, 2, 2) == b"first writer"
    assert [(f.min_txid, f.max_txid) for f in client.ltx_files(0)] == [(2, 2)]


def test_a_large_file_is_streamed_and_still_exclusive(client):
    """#12: uploads stream the local file instead of holding it in memory (an L0 file of a
    bulk load is up to 64 MB). Past S3's part size that is a multipart upload, checked first."""
    import io

    size = getattr(client, "part_size", 0) + (1 << 20) or (6 << 20)
    first, second = os.urandom(size), os.urandom(size)
    source = io.BytesIO(first)
    client.write_ltx_file(0, 4, 4, source, TS, exclusive=True)
    assert read(client, 0, 4, 4) == first
    client.write_ltx_file(0, 4, 4, io.BytesIO(first), TS, exclusive=True)  # our own retry
    with pytest.raises(ConflictError):
        client.write_ltx_file(0, 4, 4, io.BytesIO(second), TS, exclusive=True)
    assert read(client, 0, 4, 4) == first


def test_non_exclusive_write_still_replaces(client):
    client.write_ltx_file(1, 1, 5, b"old compaction", TS)
    client.write_ltx_file(1, 1, 5, b"new compaction", TS)
    assert read(client, 1, 1, 5) == b"new compaction"


def test_file_exclusive_write_leaves_no_temp_file(tmp_path):
    c = FileReplicaClient(str(tmp_path / "r"))
    c.init()
    c.write_ltx_file(0, 3, 3, b"a", TS, exclusive=True)
    with pytest.raises(ConflictError):
        c.write_ltx_file(0, 3, 3, b"b", TS, exclusive=True)
    names = os.listdir(tmp_path / "r" / "ltx" / "0")
    assert names == ["0000000000000003-0000000000000003.ltx"]


def test_a_merged_upload_over_another_writers_files_is_a_conflict(tmp_path):
    """Backlog merging names a file min-max; another writer's N-N files in that range must
    still stop us (the exclusive create alone cannot see them: the names differ)."""
    import apsw

    from replication.db import DB
    from replication.replica import Replica

    db_path = tmp_path / "app.db"
    conn = apsw.Connection(str(db_path))
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("CREATE TABLE t(x)")
    client = FileReplicaClient(str(tmp_path / "replica"))
    client.init()
    db = DB(str(db_path))
    db.open()
    try:
        replica = Replica(db, client)
        replica.merge_backlog = True
        db.sync()
        replica.sync()                       # TXID 1 uploaded
        for i in range(3):                   # a backlog: TXIDs 2..4 locally
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            db.sync()
        client.write_ltx_file(0, 3, 3, b"another writer's TXID 3", TS)
        with pytest.raises(ConflictError):
            replica.sync()
        assert [(f.min_txid, f.max_txid) for f in client.ltx_files(0)] == [(1, 1), (3, 3)]
    finally:
        db.close()
        conn.close()


# -- another writer met when positioning (library level: two DBs, one file replica) ----------

class _Writer:
    """One writer: its own SQLite file, DB and Replica on the shared replica directory."""

    def __init__(self, path, root, rows=(), from_replica=False):
        import apsw

        from replication.db import DB
        from replication.replica import Replica
        from replication.restore import restore

        self.client = FileReplicaClient(str(root))
        self.client.init()
        if from_replica:  # what serve does for a missing DB: restore, continue its history
            restore(self.client, str(path))
            DB(str(path)).reset_to_replica(self.client)
        self.con = apsw.Connection(str(path))
        self.con.execute("PRAGMA journal_mode=wal").fetchall()
        self.con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
        self.put(*rows, sync=False)
        self.db = DB(str(path))
        self.db.open()
        if not from_replica:
            self.db.sync()
        self.replica = Replica(self.db, self.client)

    def put(self, *rows, sync=True):
        for r in rows:
            self.con.execute("INSERT INTO t(v) VALUES (?)", (r,))
            if sync:
                self.db.sync()

    def rows(self):
        return [r[0] for r in self.con.execute("SELECT v FROM t ORDER BY id")]

    def close(self):
        self.db.close()
        self.con.close()


def _restored_rows(root, tmp_path, litestream_bin, litestream_env):
    import subprocess

    import apsw

    out = tmp_path / "restored.db"
    proc = subprocess.run([litestream_bin, "restore", "-o", str(out), f"file://{root}"],
                          env=litestream_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    con = apsw.Connection(str(out))
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [r[0] for r in con.execute("SELECT v FROM t ORDER BY id")]
    finally:
        con.close()


def test_a_writer_never_adopts_another_writers_newest_file_at_its_own_txid(
        tmp_path, litestream_bin, litestream_env):
    """Both new on an empty replica (serve's both-new-on-empty-replica): W1 uploads TXID 1
    first; W2, also at TXID 1 locally, used to take the replica's 1-1 as its own without
    looking, upload 2-2 on top of it and get the rightful W1 stopped later."""
    root = tmp_path / "replica"
    w1 = _Writer(tmp_path / "a.db", root, ["W1-only"])
    w2 = _Writer(tmp_path / "b.db", root, ["W2-x", "W2-y"])
    try:
        w1.replica.sync()
        with pytest.raises(ConflictError, match="differs"):
            w2.replica.sync()
        w1.put("W1-next")
        w1.replica.sync()
        assert _restored_rows(root, tmp_path, litestream_bin, litestream_env) == w1.rows()
    finally:
        w1.close()
        w2.close()


def test_a_running_writer_never_hands_over_to_another_writer(
        tmp_path, litestream_bin, litestream_env):
    """After a failed round the loop lists the replica again; finding it past our own DB used
    to reset us onto the other writer's history and upload our whole DB over it (a
    full-page L0), stopping the other writer, whose acknowledged rows a restore then lacked."""
    root = tmp_path / "replica"
    w1 = _Writer(tmp_path / "a.db", root, ["base"])
    try:
        w1.replica.sync()
        w2 = _Writer(tmp_path / "b.db", root, from_replica=True)
        try:
            w2.replica.sync()
            w2.put("W2-a", "W2-b")
            w2.replica.sync()
            w1.put("W1-a")
            w1.replica._pos = None                # what monitor() does after a failed round
            with pytest.raises(ConflictError, match="beyond this database"):
                w1.replica.sync()
            w2.put("W2-c")
            w2.replica.sync()
            assert _restored_rows(root, tmp_path, litestream_bin, litestream_env) == w2.rows()
        finally:
            w2.close()
    finally:
        w1.close()
