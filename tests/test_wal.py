"""The WAL reader against real WAL files written by SQLite (apsw), and against WALs rebuilt with
an independent, word-by-word reference of SQLite's checksum (both byte orders)."""
from __future__ import annotations

import os
import struct

import apsw
import pytest

from replication.wal import (WAL_HEADER_SIZE, WAL_MAGIC_BE, WAL_MAGIC_LE, WALError, WALHeader,
                             WALReader, WALSeedError, calc_wal_size, read_wal_header, wal_checksum)


def ref_checksum(data: bytes, big_endian: bool, s1: int = 0, s2: int = 0) -> tuple[int, int]:
    """SQLite's walChecksumBytes, word by word (the reference the vectorised code must match)."""
    words = struct.unpack(("> " if big_endian else "<") + f"{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def parse_wal_reference(path):
    """(header fields, [(pgno, commit, data)]) of every frame in the file, unvalidated."""
    raw = open(path, "rb").read()
    fields = struct.unpack(">8I", raw[:32])
    ps = fields[2]
    frames = []
    off = 32
    while off + 24 + ps <= len(raw):
        pgno, commit = struct.unpack(">II", raw[off:off + 8])
        frames.append((pgno, commit, raw[off + 24:off + 24 + ps]))
        off += 24 + ps
    return fields, frames


def build_wal(path, page_size, frames, *, big_endian=False, salts=(0x11223344, 0x55667788),
              frame_salts=None):
    """Write a WAL whose checksums come from the reference implementation."""
    magic = WAL_MAGIC_BE if big_endian else WAL_MAGIC_LE
    head = struct.pack(">6I", magic, 3007000, page_size, 7, *salts)
    s = ref_checksum(head, big_endian)
    out = bytearray(head + struct.pack(">2I", *s))
    for i, (pgno, commit, data) in enumerate(frames):
        fs1, fs2 = (frame_salts or {}).get(i, salts)
        s = ref_checksum(struct.pack(">2I", pgno, commit) + data, big_endian, *s)
        out += struct.pack(">6I", pgno, commit, fs1, fs2, *s) + data
    with open(path, "wb") as f:
        f.write(out)


def make_wal(tmp_path, n_tx=30, page_size=4096, row_bytes=1500):
    """A real WAL with ``n_tx`` committed transactions; returns (db path, wal path, conn)."""
    db = str(tmp_path / "t.db")
    conn = apsw.Connection(db)
    conn.execute(f"PRAGMA page_size={page_size}").fetchall()
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.wal_autocheckpoint(0)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x BLOB)")
    for i in range(n_tx):
        with conn:
            conn.execute("INSERT INTO t(x) VALUES (randomblob(?))", (row_bytes,))
            if i % 5 == 4:
                conn.execute("UPDATE t SET x = randomblob(?) WHERE id = 1", (row_bytes,))
    return db, db + "-wal", conn


def read(wal_path, offset=WAL_HEADER_SIZE, **kw):
    fd = os.open(wal_path, os.O_RDONLY)
    try:
        r = WALReader(fd)
        return r, r.read(offset, **kw)
    finally:
        os.close(fd)


def expected_segment(frames, page_size, start_index=0):
    """Reference: committed prefix (all frames valid), newest offset of each pgno <= commit."""
    last_commit = max((i for i, f in enumerate(frames) if f[1]), default=-1)
    newest, commit = {}, 0
    for i in range(start_index, last_commit + 1):
        newest[frames[i][0]] = WAL_HEADER_SIZE + i * (24 + page_size)
    if last_commit >= 0:
        commit = frames[last_commit][1]
    return {p: o for p, o in newest.items() if p <= commit}, commit, last_commit


def test_checksum_closed_form_matches_reference():
    data = os.urandom(4096 + 8)
    for be in (False, True):
        for seed in ((0, 0), (0xFFFFFFFF, 1), (123456789, 987654321)):
            assert wal_checksum(data, be, *seed) == ref_checksum(data, be, *seed)


def test_real_wal_frames_commits_and_page_map(tmp_path):
    db, wal, conn = make_wal(tmp_path)
    fields, frames = parse_wal_reference(wal)
    r, seg = read(wal)
    assert r.header.magic in (WAL_MAGIC_LE, WAL_MAGIC_BE) and r.header.version == 3007000
    assert r.header.page_size == 4096 and r.header.salts == (fields[4], fields[5])
    newest, commit, last = expected_segment(frames, 4096)
    assert last == len(frames) - 1  # SQLite wrote only committed transactions
    assert seg.frames == len(frames) and seg.end == os.path.getsize(wal)
    assert seg.commit == commit == conn.execute("PRAGMA page_count").fetchall()[0][0]
    assert seg.page_offsets() == newest
    assert list(seg.pgnos) == sorted(newest)
    # The newest committed copy of every page is what the database holds after a checkpoint.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    with open(db, "rb") as f:
        fd = os.open(wal, os.O_RDONLY)
        try:
            for pgno, off in seg.page_offsets().items():
                f.seek((pgno - 1) * 4096)
                assert os.pread(fd, 4096, off + 24) == f.read(4096), pgno
        finally:
            os.close(fd)


def test_header_validation(tmp_path):
    _, wal, conn = make_wal(tmp_path, n_tx=2)
    good = open(wal, "rb").read(32)
    assert WALHeader.parse(good).page_size == 4096
    bad_magic = struct.pack(">I", 0x377F0684) + good[4:]
    with pytest.raises(WALError, match="magic"):
        WALHeader.parse(bad_magic)
    bad_version = good[:4] + struct.pack(">I", 3007001) + good[8:]
    with pytest.raises(WALError, match="version"):
        WALHeader.parse(bad_version)
    bad_sum = good[:12] + struct.pack(">I", 99) + good[16:]  # checkpoint seq changed, sum not
    with pytest.raises(WALError, match="checksum"):
        WALHeader.parse(bad_sum)
    with pytest.raises(WALError, match="short"):
        WALHeader.parse(good[:20])
    assert read_wal_header(str(tmp_path / "missing-wal")) is None


@pytest.mark.parametrize("big_endian", [False, True])
def test_both_byte_orders(tmp_path, big_endian):
    """The same frames with LE (0x377f0682) and BE (0x377f0683) checksums read identically."""
    _, wal, conn = make_wal(tmp_path, n_tx=12, page_size=1024)
    _, frames = parse_wal_reference(wal)
    path = str(tmp_path / "rebuilt-wal")
    build_wal(path, 1024, frames, big_endian=big_endian)
    r, seg = read(path)
    assert r.header.big_endian is big_endian
    newest, commit, _ = expected_segment(frames, 1024)
    assert seg.frames == len(frames) and seg.commit == commit and seg.page_offsets() == newest
    # The other byte order's checksums are invalid for this magic: nothing validates.
    raw = bytearray(open(path, "rb").read())
    raw[0:4] = struct.pack(">I", WAL_MAGIC_LE if big_endian else WAL_MAGIC_BE)
    raw[24:32] = struct.pack(">2I", *ref_checksum(bytes(raw[:24]), not big_endian))
    open(path, "wb").write(raw)
    _, seg = read(path)
    assert seg.frames == 0 and seg.stop_reason == "checksum"


def test_checksum_mismatch_stops_at_last_commit_before_it(tmp_path):
    _, wal, conn = make_wal(tmp_path, n_tx=20, page_size=1024)
    _, frames = parse_wal_reference(wal)
    bad = len(frames) // 2
    raw = bytearray(open(wal, "rb").read())
    raw[WAL_HEADER_SIZE + bad * (24 + 1024) + 24 + 100] ^= 0xFF  # one byte of frame `bad`'s page
    path = str(tmp_path / "corrupt-wal")
    open(path, "wb").write(raw)
    _, seg = read(path)
    newest, commit, last = expected_segment(frames[:bad], 1024)
    assert seg.stop_reason == "checksum"
    assert seg.frames == last + 1 < bad + 1 and seg.commit == commit and seg.page_offsets() == newest


def test_salt_change_stops_reading(tmp_path):
    frames = [(1, 0, os.urandom(512)), (2, 2, os.urandom(512)), (1, 0, os.urandom(512)),
              (3, 3, os.urandom(512)), (2, 3, os.urandom(512))]
    path = str(tmp_path / "salt-wal")
    build_wal(path, 512, frames, frame_salts={3: (1, 2)})  # frame 3 from an older generation
    _, seg = read(path)
    assert seg.stop_reason == "salt" and seg.frames == 2 and seg.commit == 2
    assert seg.page_offsets() == {1: 32, 2: 32 + 536}


def test_uncommitted_tail_and_pages_past_commit(tmp_path):
    # tx1 grows to 3 pages; tx2 shrinks to 2 pages (page 3 dropped); then an uncommitted frame.
    frames = [(1, 0, os.urandom(512)), (2, 0, os.urandom(512)), (3, 3, os.urandom(512)),
              (1, 2, os.urandom(512)), (2, 0, os.urandom(512))]
    path = str(tmp_path / "tail-wal")
    build_wal(path, 512, frames)
    _, seg = read(path)
    assert seg.frames == 4 and seg.commit == 2 and seg.end == calc_wal_size(512, 4)
    assert seg.page_offsets() == {1: 32 + 3 * 536, 2: 32 + 536}
    assert seg.stop_reason == "eof"


def test_mid_wal_seeding(tmp_path):
    _, wal, conn = make_wal(tmp_path, n_tx=20, page_size=1024)
    _, frames = parse_wal_reference(wal)
    commits = [i for i, f in enumerate(frames) if f[1]]
    start_index = commits[len(commits) // 2] + 1
    offset = calc_wal_size(1024, start_index)
    _, seg = read(wal, offset)
    newest, commit, last = expected_segment(frames, 1024, start_index)
    assert seg.start == offset and seg.frames == last + 1 - start_index
    assert seg.commit == commit and seg.page_offsets() == newest
    with pytest.raises(WALSeedError):
        read(wal, offset + 8)  # not a frame boundary
    # A previous frame from another generation cannot seed the checksum.
    path = str(tmp_path / "seed-wal")
    build_wal(path, 512, [(1, 1, os.urandom(512)), (1, 1, os.urandom(512))], frame_salts={0: (9, 9)})
    with pytest.raises(WALSeedError, match="salts"):
        read(path, 32 + 536)


def test_max_bytes_stops_at_a_commit_boundary(tmp_path):
    _, wal, conn = make_wal(tmp_path, n_tx=30, page_size=1024)
    _, frames = parse_wal_reference(wal)
    fs = 24 + 1024
    limit = 10 * fs
    _, seg = read(wal, max_bytes=limit)
    first_commit_over = next(i for i, f in enumerate(frames) if f[1] and (i + 1) * fs >= limit)
    assert seg.stop_reason == "limit" and seg.frames == first_commit_over + 1
    newest, commit, _ = expected_segment(frames[:first_commit_over + 1], 1024)
    assert seg.commit == commit and seg.page_offsets() == newest
    # Continuing from there reads the rest.
    _, rest = read(wal, seg.end)
    assert seg.frames + rest.frames == len(frames)
    # `until` caps reading at an offset.
    _, capped = read(wal, until=seg.end)
    assert capped.end == seg.end and capped.page_offsets() == seg.page_offsets()


def test_large_wal_spanning_read_chunks(tmp_path, monkeypatch):
    import replication.wal as walmod
    monkeypatch.setattr(walmod, "READ_CHUNK_BYTES", 8 * (24 + 1024))  # at most 8 frames per pread
    monkeypatch.setattr(walmod, "FIRST_CHUNK_FRAMES", 1)  # 1, 2, 4, 8, 8, ...
    _, wal, conn = make_wal(tmp_path, n_tx=25, page_size=1024)
    _, frames = parse_wal_reference(wal)
    _, seg = read(wal)
    newest, commit, _ = expected_segment(frames, 1024)
    assert seg.frames == len(frames) and seg.commit == commit and seg.page_offsets() == newest
