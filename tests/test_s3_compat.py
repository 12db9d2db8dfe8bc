"""S3 compatibility with the real Litestream 0.5.17 against a real S3 server (SeaweedFS).

* A replica Litestream wrote to S3 (the ``s3-layout`` fixture, uploaded with its metadata) is
  restored by our restore and by ``litestream restore``: the bytes are identical.
* ``litestream replicate`` writes to S3; our restore of that replica equals Litestream's.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import apsw
import pytest

from replication.replica_client import client_from_url
from replication.restore import restore

from tests.plugins.litestream import FIXTURE_0517

S3_LAYOUT = FIXTURE_0517 / "s3-layout"


@pytest.fixture(scope="module")
def litestream(litestream_bin):
    """The real Litestream 0.5.17 (tests/plugins/litestream.py)."""
    return litestream_bin


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ours(s3_server, url):
    return client_from_url(url, access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)


def litestream_restore(litestream, s3_server, url, out, *args):
    proc = subprocess.run([litestream, "restore", *args, "-o", str(out), url],
                          env=s3_server.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def upload_fixture(s3_server) -> str:
    """Upload the s3-layout bucket with its litestream-timestamp metadata; return the bucket."""
    bucket = s3_server.new_bucket("ls")
    raw = s3_server.client()
    with open(S3_LAYOUT / "bucket-listing.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert len(rows) == 6
    for key, size, meta in rows:
        body = (S3_LAYOUT / "litestream" / key).read_bytes()
        assert len(body) == int(size)
        metadata = {k.lower(): v for k, v in json.loads(meta).items()}
        raw.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
    return bucket


def rows_of(path) -> dict:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE '_litestream%' ORDER BY name")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}
    finally:
        conn.close()


def integrity(path) -> str:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_litestream_s3_replica_restores_identically(s3_server, litestream, tmp_path):
    bucket = upload_fixture(s3_server)
    url = s3_server.url(bucket, "fixture/src.db")
    client = ours(s3_server, url)

    listing = {level: [(f.min_txid, f.max_txid) for f in client.ltx_files(level)] for level in (0, 1, 9)}
    assert listing == {0: [(1, 1), (2, 2), (3, 3), (4, 4)], 1: [(1, 1)], 9: [(1, 1)]}
    exact = [f.created_at for f in client.ltx_files(0, use_metadata=True)]
    assert exact[2] == datetime(2026, 11, 21, 16, 33, 44, 680000, tzinfo=timezone.utc)

    result = restore(client, str(tmp_path / "ours.db"))
    assert result.txid == 4
    litestream_restore(litestream, s3_server, url, tmp_path / "theirs.db")
    assert sha256(tmp_path / "ours.db") == sha256(tmp_path / "theirs.db")
    assert integrity(tmp_path / "ours.db") == "ok"
    source = shutil.copy(S3_LAYOUT / "source.db", tmp_path / "source.db")  # never open the fixture
    assert rows_of(tmp_path / "ours.db") == rows_of(source)

    # By TXID, and by timestamp (our point-in-time restore reads the S3 metadata timestamps).
    restore(client, str(tmp_path / "ours-2.db"), txid=2)
    litestream_restore(litestream, s3_server, url, tmp_path / "theirs-2.db", "-txid", f"{2:016x}")
    assert sha256(tmp_path / "ours-2.db") == sha256(tmp_path / "theirs-2.db")
    restore(client, str(tmp_path / "ours-ts.db"),
            timestamp=datetime(2026, 11, 21, 16, 33, 44, 680000, tzinfo=timezone.utc))  # strictly before txid 3
    assert sha256(tmp_path / "ours-ts.db") == sha256(tmp_path / "theirs-2.db")


def test_litestream_ltx_lists_what_we_wrote(s3_server, litestream, tmp_path):
    """Our S3 layout and metadata are what `litestream ltx` expects."""
    bucket = s3_server.new_bucket()
    url = s3_server.url(bucket, "db")
    client = ours(s3_server, url)
    for level in (0, 1, 9):
        src = S3_LAYOUT / "litestream" / "fixture" / "src.db" / f"{level:04x}" / "0000000000000001-0000000000000001.ltx"
        client.write_ltx_file(level, 1, 1, src.read_bytes(), 1795278821695)
    proc = subprocess.run([litestream, "ltx", "-level", "all", "-json", url], env=s3_server.env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = sorted((e["level"], e["min_txid"], e["max_txid"]) for e in json.loads(proc.stdout))
    assert [(lv, int(str(a), 16), int(str(b), 16)) for lv, a, b in listed] == [(0, 1, 1), (1, 1, 1), (9, 1, 1)]
    litestream_restore(litestream, s3_server, url, tmp_path / "theirs.db")
    restore(client, str(tmp_path / "ours.db"))
    assert sha256(tmp_path / "ours.db") == sha256(tmp_path / "theirs.db")


def _write_rows(db: Path, start: int, count: int) -> None:
    conn = apsw.Connection(str(db))
    try:
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, body TEXT)")
        with conn:
            for i in range(start, start + count):
                conn.execute("INSERT INTO items VALUES (?, ?)", (i, f"item-{i}-" + "x" * 200))
    finally:
        conn.close()


def test_litestream_replicate_to_s3_then_our_restore(s3_server, litestream, tmp_path):
    bucket = s3_server.new_bucket()
    url = s3_server.url(bucket, "roundtrip/app.db")
    db = tmp_path / "app.db"
    _write_rows(db, 1, 300)
    once = subprocess.run([litestream, "replicate", "-once", str(db), url], env=s3_server.env(),
                          capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr

    # A daemon run on top (stopped by PID with SIGTERM, which does a final sync).
    _write_rows(db, 301, 200)
    daemon = subprocess.Popen([litestream, "replicate", str(db), url], env=s3_server.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2.5)
        _write_rows(db, 501, 100)
        time.sleep(2.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            log = daemon.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            daemon.kill()
            log = daemon.communicate()[0]
    assert daemon.returncode == 0, log

    client = ours(s3_server, url)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("roundtrip/app.db/00") for k in keys), keys
    assert any(k.startswith("roundtrip/app.db/0000/") for k in keys)

    result = restore(client, str(tmp_path / "ours.db"))
    litestream_restore(litestream, s3_server, url, tmp_path / "theirs.db")
    assert sha256(tmp_path / "ours.db") == sha256(tmp_path / "theirs.db")
    assert integrity(tmp_path / "ours.db") == "ok"
    assert rows_of(tmp_path / "ours.db") == rows_of(db)
    assert result.txid == max(f.max_txid for f in client.ltx_files(0))
    # Every object carries the timestamp metadata our point-in-time restore relies on.
    l0 = list(client.ltx_files(0, use_metadata=True))
    assert all(f.created_at.microsecond % 1000 == 0 for f in l0)
    assert [f.created_at for f in l0] == sorted(f.created_at for f in l0)
