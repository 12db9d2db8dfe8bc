"""LTX v3 codec: files the real Litestream wrote (both page encodings), round trips in both
encodings, checksums checked by the real Litestream, and bad input."""
from __future__ import annotations

import io
import os
import random
import re
import subprocess

import lz4.frame
import pytest

from replication import ltx
from replication.errors import LTXError

PAGE_SIZE = 4096
NOCHK = ltx.HEADER_FLAG_NO_CHECKSUM
#: (page encoding, file) of every real Litestream file the suite makes (litestream_vectors).
REAL_FILES = [(e, k) for e in ("block", "frame") for k in ("snapshot", "incremental")]


def db_pages(data: bytes) -> list[tuple[int, bytes]]:
    return [(i // PAGE_SIZE + 1, data[i:i + PAGE_SIZE]) for i in range(0, len(data), PAGE_SIZE)]


def decode(data: bytes, name: str = "test.ltx"):
    dec = ltx.Decoder(io.BytesIO(data), name=name)
    pages = list(dec.pages())
    return dec.header, pages, dec.close()


def encode(header: ltx.Header, pages, *, encoding="frame", post=0) -> bytes:
    out = io.BytesIO()
    enc = ltx.Encoder(out, header, encoding=encoding)
    for pgno, data in pages:
        enc.encode_page(pgno, data)
    enc.close(post_apply_checksum=post)
    return out.getvalue()


def apply(db: bytearray, pages, commit: int) -> bytearray:
    """What `ltx apply` does to a DB file: write pages in place, then cut to Commit."""
    for pgno, data in pages:
        end = pgno * PAGE_SIZE
        if len(db) < end:
            db.extend(bytes(end - len(db)))
        db[end - PAGE_SIZE:end] = data
    del db[commit * PAGE_SIZE:]
    return db


class TrickleReader:
    """A non-seekable stream that returns at most ``step`` bytes per read()."""

    def __init__(self, data: bytes, step: int):
        self._data, self._pos, self._step = data, 0, step

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        chunk = self._data[self._pos:self._pos + n]
        self._pos += len(chunk)
        return chunk


# --- checksums -----------------------------------------------------------------------------

def test_crc64_check_value_matches_go_iso():
    assert ltx.crc64(b"123456789") == 0xB90956C775A41001  # CRC-64/GO-ISO's check value


def test_crc64_incremental_equals_one_shot():
    rnd = random.Random(7)
    data = rnd.randbytes(10_000)
    for _ in range(50):
        cuts = sorted(rnd.sample(range(1, len(data)), 3))
        crc = None
        for a, b in zip([0] + cuts, cuts + [len(data)]):
            crc = ltx.crc64(data[a:b], crc)
        assert crc == ltx.crc64(data)
    assert ltx.crc64(b"", ltx.crc64(b"abc")) == ltx.crc64(b"abc")
    assert ltx.crc64(memoryview(data)[10:20]) == ltx.crc64(data[10:20])


def test_crc64_combine_joins_pieces_checksummed_apart():
    rnd = random.Random(11)
    for _ in range(200):
        a, b = rnd.randbytes(rnd.randrange(0, 5000)), rnd.randbytes(rnd.randrange(0, 5000))
        assert ltx.crc64_combine(ltx.crc64(a), ltx.crc64(b), len(b)) == ltx.crc64(a + b)
    big = rnd.randbytes(3 << 20)  # lengths past the small powers of two
    parts = [big[:1], big[1:(1 << 20) + 7], big[(1 << 20) + 7:]]
    crc = ltx.crc64(parts[0])
    for part in parts[1:]:
        crc = ltx.crc64_combine(crc, ltx.crc64(part), len(part))
    assert crc == ltx.crc64(big)


def test_rolling_checksum_agrees_with_litestream(litestream_bin, litestream_env,
                                                 litestream_vectors, tmp_path):
    """The real Litestream is the oracle: it restores a file whose post-apply checksum is ours
    off by one bit, and its refusal names the checksum it calculated."""
    db = litestream_vectors["block"].db_at_2
    ours = ltx.db_checksum(db_pages(db))
    header = ltx.Header(0, PAGE_SIZE, len(db) // PAGE_SIZE, 1, 1, 1700000000123)
    level0 = tmp_path / "replica" / "ltx" / "0"
    level0.mkdir(parents=True)
    (level0 / "0000000000000001-0000000000000001.ltx").write_bytes(
        encode(header, db_pages(db), encoding="block", post=ours ^ 1))
    proc = subprocess.run([litestream_bin, "restore", "-o", str(tmp_path / "out.db"),
                           f"file://{tmp_path}/replica"], env=litestream_env,
                          capture_output=True, text=True, timeout=60)
    calculated = re.search(r"does not match calculated checksum \(([0-9a-f]{16})\)", proc.stderr)
    assert proc.returncode != 0 and calculated, proc.stderr
    assert int(calculated.group(1), 16) == ours


# --- files the real Litestream wrote ------------------------------------------------------

@pytest.mark.parametrize("encoding,kind", REAL_FILES)
def test_litestream_file_decodes_and_verifies(encoding, kind, litestream_vectors):
    vectors = litestream_vectors[encoding]
    data = getattr(vectors, kind)
    txid, db = (1, vectors.db_at_1) if kind == "snapshot" else (2, vectors.db_at_2)
    header, pages, trailer = decode(data, "real.ltx")
    assert (header.flags, header.page_size, header.commit, header.min_txid, header.max_txid,
            header.pre_apply_checksum, header.node_id) == (
        NOCHK, PAGE_SIZE, len(db) // PAGE_SIZE, txid, txid, 0, 0)
    assert trailer.post_apply_checksum == 0 and trailer.file_checksum & ltx.CHECKSUM_FLAG
    pgnos = [p for p, _ in pages]
    if kind == "snapshot":
        assert pgnos == list(range(1, header.commit + 1))
    else:
        assert pgnos == sorted(pgnos) and len(pgnos) < header.commit
    for pgno, page in pages:
        assert page == db[(pgno - 1) * PAGE_SIZE:pgno * PAGE_SIZE]
    index = ltx.decode_page_index(data, "real.ltx")
    assert sorted(index) == pgnos
    by_pgno = dict(pages)
    for pgno, (offset, size) in index.items():
        got_pgno, page = ltx.decode_page_frame(data[offset:offset + size], PAGE_SIZE, "real.ltx")
        assert got_pgno == pgno and page == by_pgno[pgno]
    flag = 0 if encoding == "frame" else ltx.PAGE_FLAG_SIZE
    assert data[104:106] == flag.to_bytes(2, "big")


@pytest.mark.parametrize("encoding,kind", REAL_FILES)
def test_a_run_of_pages_decodes_on_its_own(encoding, kind, litestream_vectors):
    """Decoder.continuing over a run of frames (what one restore worker reads): the run's
    pages, and a checksum that joins the header's and the rest into the FileChecksum."""
    data = getattr(litestream_vectors[encoding], kind)
    _, pages, trailer = decode(data)
    index = list(ltx.decode_page_index(data).items())
    cut = len(index) // 2
    header = ltx.Header.unmarshal(data)
    crc = ltx.crc64(data[:ltx.HEADER_SIZE])
    runs = [(0, index[0][1][0], index[cut][1][0]),
            (index[cut - 1][0], index[cut][1][0], index[-1][1][0] + index[-1][1][1])]
    got = []
    for prev, start, end in runs:
        dec = ltx.Decoder.continuing(io.BytesIO(data[start:end] + bytes(6)), header, prev)
        got += list(dec.pages())
        assert dec.drain_window() == b"" and dec.last_pgno == got[-1][0]
        hashed = dec.page_count * (6 + PAGE_SIZE) + dec.block_pages * 4
        crc = ltx.crc64_combine(crc, dec.checksum, hashed)
    assert got == pages
    end = runs[-1][2]
    crc = ltx.crc64(data[end:-8], crc) | ltx.CHECKSUM_FLAG
    assert crc == trailer.file_checksum
    if kind == "snapshot":  # a run must continue from the page the index puts before it
        with pytest.raises(LTXError, match="nonsequential"):
            list(ltx.Decoder.continuing(io.BytesIO(data[runs[1][1]:end] + bytes(6)), header,
                                        runs[1][0] - 1).pages())


def test_page_index_entries_picks_entries_without_decoding_the_rest():
    rng = random.Random(3)
    entries = [(pgno, rng.randrange(1 << 40), rng.randrange(1, 1 << 17))
               for pgno in range(1, 3000)]
    index = _index_tail(entries)[:-8 - ltx.TRAILER_SIZE]
    picks = [0, 1, 1499, 1500, 2998]
    assert ltx.page_index_entries(index, picks) == (2999, [entries[i] for i in picks])
    with pytest.raises(LTXError, match="corrupt page index"):
        ltx.page_index_entries(index[:-1], [0])


@pytest.mark.parametrize("encoding,kind", REAL_FILES)
def test_litestream_file_decodes_from_a_trickling_stream(encoding, kind, litestream_vectors):
    data = getattr(litestream_vectors[encoding], kind)
    _, pages, trailer = decode(data)
    dec = ltx.Decoder(TrickleReader(data, 7), name="real.ltx")
    assert list(dec.pages()) == pages
    assert dec.close().file_checksum == trailer.file_checksum


@pytest.mark.parametrize("encoding", ["block", "frame"])
def test_litestream_snapshot_then_incremental_rebuilds_the_database(encoding, litestream_vectors):
    vectors = litestream_vectors[encoding]
    snap, incr = decode(vectors.snapshot), decode(vectors.incremental)
    db = apply(bytearray(), snap[1], snap[0].commit)
    assert bytes(db) == vectors.db_at_1
    db = apply(db, incr[1], incr[0].commit)
    assert bytes(db) == vectors.db_at_2


# --- our encoder ---------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ltx.ENCODINGS)
@pytest.mark.parametrize("chk", [True, False])
def test_reencoded_pages_round_trip(encoding, chk, litestream_vectors):
    flags = 0 if chk else NOCHK
    vectors = litestream_vectors["block"]
    a, b = db_pages(vectors.db_at_1), db_pages(vectors.db_at_2)
    a_sum, b_sum = ltx.db_checksum(a), ltx.db_checksum(b)
    snap_h = ltx.Header(flags, PAGE_SIZE, len(a), 1, 1, 1700000000123)
    incr_h = ltx.Header(flags, PAGE_SIZE, len(b), 2, 2, 1700000001123,
                        pre_apply_checksum=a_sum if chk else 0)
    snap = encode(snap_h, a, encoding=encoding, post=a_sum if chk else 0)
    incr = encode(incr_h, b, encoding=encoding, post=b_sum if chk else 0)
    for data, header, pages in ((snap, snap_h, a), (incr, incr_h, b)):
        got_h, got_pages, trailer = decode(data)
        assert got_h == header and got_pages == pages
        assert trailer.file_checksum & ltx.CHECKSUM_FLAG
        if encoding == "frame":  # Go v0.5.1's exact frame descriptor, flag 0
            assert data[100:106] == (1).to_bytes(4, "big") + b"\0\0"
            assert data[106:113] == bytes.fromhex("04224d186440a7")
        else:
            assert data[104:106] == b"\0\1"
        index = ltx.decode_page_index(data)
        assert sorted(index) == [p for p, _ in pages]
        for pgno, (off, size) in index.items():
            assert ltx.decode_page_frame(data[off:off + size], PAGE_SIZE)[1] == dict(pages)[pgno]
    db = apply(apply(bytearray(), decode(snap)[1], len(a)), decode(incr)[1], len(b))
    assert bytes(db) == vectors.db_at_2


def test_frame_page_stored_uncompressed_is_read():
    page = os.urandom(PAGE_SIZE)  # incompressible: LZ4 stores the block raw (high size bit)
    payload = lz4.frame.compress(page, block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                                 block_linked=False, content_checksum=True, store_size=False)
    assert int.from_bytes(payload[7:11], "little") & 0x80000000
    frame = (3).to_bytes(4, "big") + b"\0\0" + payload
    assert ltx.decode_page_frame(frame, PAGE_SIZE) == (3, page)


def test_snapshot_skips_the_lock_page():
    page_size = 65536
    lock = ltx.lock_pgno(page_size)
    assert lock == 16385 and ltx.lock_pgno(4096) == 262145
    header = ltx.Header(ltx.HEADER_FLAG_NO_CHECKSUM, page_size, lock + 1, 1, 1, 0)
    zero = bytes(page_size)
    out = io.BytesIO()
    enc = ltx.Encoder(out, header, encoding="block")
    for pgno in range(1, lock):
        enc.encode_page(pgno, zero)
    with pytest.raises(LTXError, match="lock page"):
        enc.encode_page(lock, zero)
    enc.encode_page(lock + 1, zero)
    enc.close()
    dec = ltx.Decoder(io.BytesIO(out.getvalue()))
    pgnos = [p for p, _ in dec.pages()]
    dec.close()
    assert pgnos == list(range(1, lock)) + [lock + 1]


def test_filename_format_and_parse():
    assert ltx.format_filename(1, 0x19) == "0000000000000001-0000000000000019.ltx"
    assert ltx.parse_filename("000000000000000a-00000000000000ff.ltx") == (10, 255)
    for bad in ("000000000000000A-00000000000000ff.ltx", "1-2.ltx",
                "0000000000000001-0000000000000001.ltx.tmp", "snapshot.ltx"):
        assert ltx.parse_filename(bad) is None


# --- encoder refusals ----------------------------------------------------------------------

def _enc(min_txid=2, commit=10, flags=ltx.HEADER_FLAG_NO_CHECKSUM):
    return ltx.Encoder(io.BytesIO(), ltx.Header(flags, PAGE_SIZE, commit, min_txid, min_txid, 0))


@pytest.mark.parametrize("action, match", [
    (lambda e: (e.encode_page(3, bytes(PAGE_SIZE)), e.encode_page(2, bytes(PAGE_SIZE))),
     "out-of-order"),
    (lambda e: (e.encode_page(3, bytes(PAGE_SIZE)), e.encode_page(3, bytes(PAGE_SIZE))),
     "out-of-order"),
    (lambda e: e.encode_page(11, bytes(PAGE_SIZE)), "out of range"),
    (lambda e: e.encode_page(0, bytes(PAGE_SIZE)), "out of range"),
    (lambda e: e.encode_page(1, bytes(100)), "page size"),
    (lambda e: e.close(post_apply_checksum=5), "must be zero"),
])
def test_encoder_rejects_invalid_pages(action, match):
    with pytest.raises(LTXError, match=match):
        action(_enc())


def test_encoder_rejects_snapshot_gaps():
    enc = _enc(min_txid=1, commit=3)
    enc.encode_page(1, bytes(PAGE_SIZE))
    with pytest.raises(LTXError, match="nonsequential"):
        enc.encode_page(3, bytes(PAGE_SIZE))
    enc = _enc(min_txid=1, commit=3)
    enc.encode_page(1, bytes(PAGE_SIZE))
    with pytest.raises(LTXError, match="snapshot incomplete"):
        enc.close()


@pytest.mark.parametrize("header, match", [
    (ltx.Header(0x1, PAGE_SIZE, 1, 1, 1, 0), "flags"),
    (ltx.Header(2, 1000, 1, 1, 1, 0), "page size"),
    (ltx.Header(2, PAGE_SIZE, 1, 0, 1, 0), "min TXID"),
    (ltx.Header(2, PAGE_SIZE, 1, 5, 4, 0), "below min"),
    (ltx.Header(0, PAGE_SIZE, 1, 2, 2, 0), "pre-apply checksum required"),
    (ltx.Header(2, PAGE_SIZE, 1, 2, 2, 0, pre_apply_checksum=ltx.CHECKSUM_FLAG), "zero"),
    (ltx.Header(2, PAGE_SIZE, 1, 2, 2, 0, wal_salt1=5), "WAL offset required"),
    (ltx.Header(2, PAGE_SIZE, 1, 2, 2, 0, wal_size=5), "WAL size"),
])
def test_header_validation(header, match):
    with pytest.raises(LTXError, match=match):
        header.validate("x.ltx")


# --- decoder refusals ----------------------------------------------------------------------

@pytest.fixture
def good(litestream_vectors) -> bytes:
    """A real, valid file (Litestream 0.5.17's incremental, block encoding)."""
    return litestream_vectors["block"].incremental


@pytest.fixture(params=["block", "frame"])
def real_file(request, litestream_vectors) -> bytes:
    return litestream_vectors[request.param].incremental


def _decode_all(data: bytes, name="bad.ltx"):
    dec = ltx.Decoder(io.BytesIO(data), name=name)
    for _ in dec.pages():
        pass
    return dec.close()


def test_every_truncation_is_an_error_naming_the_file(real_file):
    source = real_file
    for cut in list(range(0, len(source), 97)) + [len(source) - 1, len(source) - 17]:
        with pytest.raises(LTXError, match="bad.ltx"):
            _decode_all(source[:cut])


def test_no_flipped_byte_yields_wrong_pages(real_file):
    source = real_file
    # The FileChecksum covers the *uncompressed* pages (as in Go), so a flip inside compressed
    # bytes that still decompresses to the same page is harmless; any other flip must raise.
    _, want, _ = decode(source)
    raised = 0
    for pos in range(len(source)):
        bad = bytearray(source)
        bad[pos] ^= 0x40
        try:
            _, pages, _ = decode(bytes(bad), "bad.ltx")
        except LTXError as e:
            assert "bad.ltx" in str(e)
            raised += 1
        else:
            assert pages == want, f"flip at byte {pos} gave different pages without an error"
    assert raised > len(source) * 0.95


def test_flipped_page_byte_reports_checksum_mismatch(good):
    bad = bytearray(good)
    # a byte inside page 2's compressed payload that keeps the LZ4 block valid: the literal run
    index = ltx.decode_page_index(good)
    off, size = index[2]
    bad[off + size - 3] ^= 0x01
    with pytest.raises(LTXError, match=r"bad\.ltx.*(checksum mismatch|corrupt)"):
        _decode_all(bytes(bad))


def test_wrong_magic(good):
    with pytest.raises(LTXError, match="bad.ltx.*magic"):
        _decode_all(b"LTX2" + good[4:])


def test_unknown_page_flag_is_rejected(good):
    bad = bytearray(good)
    bad[104:106] = b"\0\x02"
    with pytest.raises(LTXError, match="invalid page flags"):
        _decode_all(bytes(bad))


def test_trailing_garbage_is_rejected(good):
    with pytest.raises(LTXError, match="bad.ltx"):
        _decode_all(good + b"\0" * 8)


def _index_tail(entries, terminator=True) -> bytes:
    body = bytearray()
    for triple in entries:
        for v in triple:
            ltx._append_uvarint(body, v)
    if terminator:
        body.append(0)
    return bytes(body) + len(body).to_bytes(8, "big") + bytes(ltx.TRAILER_SIZE)


def test_a_large_page_index_decodes_the_same_vectorized(monkeypatch):
    """Indexes of >= 4 KiB are decoded with numpy: the same dict as the varint loop, and the
    same refusals (a 1 GiB snapshot's index has 264k entries)."""
    import random
    rng = random.Random(5)
    entries = [(pgno, rng.randrange(1 << 40), rng.randrange(1, 1 << 17))
               for pgno in range(1, 3000)] + [(7, 1 << 62, 1), (2 ** 64 - 1, 5, 6)]
    tail = b"\xff" * 13 + _index_tail(entries)  # the tail may start before the index
    fast = ltx.decode_page_index(tail)
    monkeypatch.setattr(ltx, "_VECTOR_INDEX_BYTES", 1 << 40)
    assert fast == ltx.decode_page_index(tail)
    assert fast[7] == (1 << 62, 1) and fast[2 ** 64 - 1] == (5, 6) and len(fast) == 3000
    monkeypatch.undo()
    with pytest.raises(ltx.LTXError, match="length mismatch"):
        ltx.decode_page_index(_index_tail(entries, terminator=False))
    overflow = bytearray(_index_tail(entries))
    overflow[:11] = b"\xff" * 10 + b"\x01"  # an 11-byte varint
    with pytest.raises(ltx.LTXError, match="overflows"):
        ltx.decode_page_index(bytes(overflow))
