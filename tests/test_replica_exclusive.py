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
