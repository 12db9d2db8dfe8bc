"""Reading a whole replica file for a restore: parallel range reads, and the move to them
when one stream is slow (replication/range_reader.py)."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import apsw
import pytest

import replication.range_reader as range_reader
from replication import ltx
from replication.errors import ReplicaClientError
from replication.file_replica_client import FileReplicaClient
from replication.range_reader import RangeReader, open_for_restore
from replication.replica_client import client_from_url
from replication.restore import restore

PS = 4096
PART = 64 * 1024


def make_database(path: Path, rows: int = 3000) -> bytes:
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA page_size={PS}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    with conn:
        conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
                     " INSERT INTO t(a, b) SELECT hex(randomblob(200)), randomblob(300) FROM c",
                     (rows,))
    conn.close()
    return path.read_bytes()


def snapshot_replica(root: Path, db: bytes) -> FileReplicaClient:
    """One L0 snapshot file (TXID 1) of ``db``: a multi-part file for PART-sized ranges."""
    pages = [(i // PS + 1, db[i:i + PS]) for i in range(0, len(db), PS)]
    header = ltx.Header(ltx.HEADER_FLAG_NO_CHECKSUM, PS, len(pages), 1, 1,
                        int(time.time() * 1000))
    buf = io.BytesIO()
    enc = ltx.Encoder(buf, header)
    for pgno, data in pages:
        if pgno != ltx.lock_pgno(PS):
            enc.encode_page(pgno, data)
    enc.close()
    client = FileReplicaClient(str(root))
    client.write_ltx_file(0, 1, 1, buf.getvalue(), header.timestamp)
    return client


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("range")
    db = make_database(tmp / "src.db")
    client = snapshot_replica(tmp / "replica", db)
    info = next(client.ltx_files(0))
    assert info.size > 10 * PART  # several ranges, and a last one shorter than the rest
    whole = client.open_ltx_file(0, 1, 1).read()
    return tmp / "replica", info, whole, db


def read_all(f, n: int = 1 << 20) -> bytes:
    out = []
    while True:
        b = f.read(n)
        if not b:
            return b"".join(out)
        out.append(b)


class Recording(FileReplicaClient):
    """A file replica that records its range reads, can cut some of them short and can be
    slow (a far store seen through one connection)."""

    restore_parallelism = 4

    def __init__(self, root, *, cut=None, cuts=0, fail_at=None, stream_delay=0.0,
                 part_delay=0.0):
        super().__init__(str(root))
        self.lock = threading.Lock()
        self.ranges: list[tuple[int, int]] = []
        self.in_flight = self.max_in_flight = 0
        self.cut, self.cuts, self.fail_at = cut, cuts, fail_at
        self.stream_delay, self.part_delay = stream_delay, part_delay

    def open_ltx_file(self, level, min_txid, max_txid, offset=0, size=0):
        f = super().open_ltx_file(level, min_txid, max_txid, offset, size)
        if not size:  # the whole file as one stream
            return _Slow(f, self.stream_delay) if self.stream_delay else f
        with self.lock:
            self.ranges.append((offset, size))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            cut = offset == self.cut and self.cuts > 0
            if cut:
                self.cuts -= 1
        try:
            time.sleep(self.part_delay)
            if offset == self.fail_at:
                raise ReplicaClientError(f"range at {offset} failed")
            data = f.read()
        finally:
            f.close()
            with self.lock:
                self.in_flight -= 1
        return io.BytesIO(data[:size // 3] if cut else data)


class _Slow:
    def __init__(self, f, delay):
        self._f, self._delay = f, delay

    def read(self, n=-1):
        time.sleep(self._delay)
        return self._f.read(n)

    def close(self):
        self._f.close()


@pytest.fixture
def small_probe(monkeypatch):
    """Probe windows, parts and re-read pauses scaled to a test-sized file."""
    monkeypatch.setattr(range_reader, "RESTORE_PROBE_BYTES", 2 * PART)
    monkeypatch.setattr(range_reader, "RESTORE_PART_SIZE", PART)
    monkeypatch.setattr(range_reader, "SHORT_READ_BACKOFF", 0.0)


# --- RangeReader -----------------------------------------------------------------------------

@pytest.mark.parametrize("parallelism", [1, 3, 8])
@pytest.mark.parametrize("read_size", [1000, PART, 1 << 20])
def test_ranges_come_back_in_order(replica, parallelism, read_size):
    root, info, whole, _ = replica
    client = Recording(root)
    with RangeReader(client, info, PART, parallelism) as f:
        assert read_all(f, read_size) == whole
    assert sorted(client.ranges) == [(o, min(PART, info.size - o))
                                     for o in range(0, info.size, PART)]
    assert client.max_in_flight <= parallelism


def test_a_reader_can_start_mid_file(replica):
    root, info, whole, _ = replica
    with RangeReader(Recording(root), info, PART, 4, start=12345) as f:
        assert read_all(f) == whole[12345:]


def test_memory_stays_bounded_by_the_ranges_in_flight(replica):
    """A slow consumer never has more than ``parallelism`` ranges fetched ahead of it."""
    root, info, whole, _ = replica
    client = Recording(root)
    consumed = 0
    with RangeReader(client, info, PART, 3) as f:
        while True:
            b = f.read(PART)
            if not b:
                break
            consumed += len(b)
            time.sleep(0.002)
            with client.lock:
                fetched = sum(size for _, size in client.ranges)
            assert fetched <= consumed + 3 * PART
    assert consumed == len(whole)


def test_a_short_range_is_read_again(replica, small_probe):
    root, info, whole, _ = replica
    client = Recording(root, cut=3 * PART, cuts=2)
    with RangeReader(client, info, PART, 4) as f:
        assert read_all(f) == whole
    assert client.ranges.count((3 * PART, PART)) == 3


def test_a_range_short_on_every_read_is_a_transfer_error(replica, small_probe):
    root, info, _, _ = replica
    client = Recording(root, cut=2 * PART, cuts=10**6)
    with RangeReader(client, info, PART, 4) as f:
        with pytest.raises(ReplicaClientError, match=r"came back \d+ bytes long, 4 times"):
            read_all(f)
    assert client.ranges.count((2 * PART, PART)) == 4


def test_a_failed_range_fails_the_read_in_order_and_close_stops_the_rest(replica):
    root, info, whole, _ = replica
    client = Recording(root, fail_at=5 * PART, part_delay=0.01)
    f = RangeReader(client, info, PART, 4)
    got = b""
    with pytest.raises(ReplicaClientError, match="range at"):
        while True:
            b = f.read(PART)
            assert b
            got += b
    assert got == whole[:5 * PART]  # every byte before the failed range, none after
    f.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("range-read")]
    assert len(client.ranges) <= 5 + 1 + 4


# --- one stream first, ranges when it is slow --------------------------------------------------

def test_a_fast_stream_is_read_in_one_go(replica, small_probe):
    root, info, whole, _ = replica
    client = Recording(root)
    with open_for_restore(client, info) as f:
        assert read_all(f, PART // 4) == whole and not f.parallel
    assert client.ranges == []


def test_a_slow_stream_moves_to_parallel_ranges(replica, small_probe):
    """Reads that each wait 20 ms for 16 KiB (~0.8 MB/s): after the warm-up and the probe,
    the rest of the file comes as ranges, four at a time, byte for byte the same."""
    root, info, whole, _ = replica
    client = Recording(root, stream_delay=0.02)
    with open_for_restore(client, info) as f:
        assert read_all(f, PART // 4) == whole and f.parallel
    first = min(offset for offset, _ in client.ranges)
    assert first == 4 * PART  # warm-up + probe, 2 parts each
    assert sum(size for _, size in client.ranges) == info.size - first


def test_backends_that_read_one_stream_never_use_ranges(replica, small_probe):
    root, info, _, _ = replica
    f = open_for_restore(FileReplicaClient(str(root)), info)
    try:
        assert not isinstance(f, (RangeReader, range_reader._SpeedUpWhenSlow))
    finally:
        f.close()


def test_a_restore_through_a_slow_store_gives_the_same_database(replica, small_probe, tmp_path):
    root, _, _, db = replica
    client = Recording(root, stream_delay=0.02)
    restore(client, str(tmp_path / "out.db"))
    assert client.ranges  # it did move to ranges
    restored = (tmp_path / "out.db").read_bytes()
    lock = (ltx.lock_pgno(PS) - 1) * PS
    assert restored[:lock] == db[:lock] and len(restored) == len(db)


def test_parallel_ranges_from_a_real_s3_store(replica, s3_server, monkeypatch, tmp_path):
    """The same file in SeaweedFS, read as 4 ranges at a time through the S3 client, and a
    whole restore that moves to ranges: the bytes and the database are the ones we wrote."""
    root, info, whole, db = replica
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    client = client_from_url(s3_server.url(s3_server.bucket, s3_server.new_path()))
    client.write_ltx_file(0, 1, 1, whole, int(time.time() * 1000))
    s3_info = next(client.ltx_files(0))
    assert s3_info.size == info.size
    with RangeReader(client, s3_info, PART, 4) as f:
        assert read_all(f) == whole
    # A far store, as the reader sees it: every read of the single stream waits.
    monkeypatch.setattr(range_reader, "RESTORE_PROBE_BYTES", 2 * PART)
    monkeypatch.setattr(range_reader, "RESTORE_PART_SIZE", PART)
    opened = client.open_ltx_file
    monkeypatch.setattr(client, "open_ltx_file", lambda level, lo, hi, offset=0, size=0: (
        _Slow(opened(level, lo, hi), 0.02) if not size else opened(level, lo, hi, offset, size)))
    seen = []
    real = range_reader.RangeReader
    monkeypatch.setattr(range_reader, "RangeReader",
                        lambda *a, **k: seen.append(k.get("start")) or real(*a, **k))
    restore(client, str(tmp_path / "out.db"))
    assert len(seen) == 1 and 0 < seen[0] < s3_info.size  # moved once, mid-file
    restored = (tmp_path / "out.db").read_bytes()
    lock = (ltx.lock_pgno(PS) - 1) * PS
    assert restored[:lock] == db[:lock] and len(restored) == len(db)
