"""Compaction: k-way merge of LTX files, checked against files the real Litestream compacted."""
from __future__ import annotations

import io
import json

import pytest

from replication import ltx
from replication.compactor import compact
from replication.errors import LTXError

from tests.plugins.litestream import FIXTURE_0517 as FIXTURE

REPLICA = FIXTURE / "replica" / "ltx"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
PS = 4096
NOCHK = ltx.HEADER_FLAG_NO_CHECKSUM


def decoder(data: bytes, name="in.ltx") -> ltx.Decoder:
    return ltx.Decoder(io.BytesIO(data), name=name)


def file_decoder(level: int, min_txid: int, max_txid: int) -> ltx.Decoder:
    name = ltx.format_filename(min_txid, max_txid)
    return decoder((REPLICA / str(level) / name).read_bytes(), f"{level}/{name}")


def decode_all(data: bytes):
    dec = decoder(data, "out.ltx")
    pages = list(dec.pages())
    return dec.header, pages, dec.close()


def make(min_txid, max_txid, commit, pages, ts=0) -> bytes:
    out = io.BytesIO()
    enc = ltx.Encoder(out, ltx.Header(NOCHK, PS, commit, min_txid, max_txid, ts))
    for pgno, fill in pages:
        enc.encode_page(pgno, bytes([fill]) * PS)
    enc.close()
    return out.getvalue()


@pytest.mark.parametrize("source", ["block", "frame"])
@pytest.mark.parametrize("encoding", ltx.ENCODINGS)
def test_litestream_snapshot_plus_incremental_compacts_to_the_database(source, encoding,
                                                                      litestream_vectors):
    vectors = litestream_vectors[source]
    inputs = [decoder(vectors.snapshot), decoder(vectors.incremental)]
    out = io.BytesIO()
    header, trailer = compact(inputs, out, encoding=encoding)
    got_header, pages, got_trailer = decode_all(out.getvalue())
    incremental = decoder(vectors.incremental).header
    assert got_header == header == ltx.Header(NOCHK, PS, incremental.commit, 1, 2,
                                              incremental.timestamp)
    assert got_trailer == trailer and trailer.post_apply_checksum == 0
    assert b"".join(p for _, p in pages) == vectors.db_at_2


def _real_compactions():
    """(level, min, max) of every level-1+ file Litestream made, with its source level."""
    for level in (1, 2):
        for path in sorted((REPLICA / str(level)).iterdir()):
            min_txid, max_txid = ltx.parse_filename(path.name)
            yield level, min_txid, max_txid


@pytest.mark.parametrize("level, min_txid, max_txid", list(_real_compactions()))
def test_matches_real_litestream_compactions(level, min_txid, max_txid):
    """Compacting the source-level files gives the same header and pages as Litestream's file."""
    src_level = level - 1
    sources = [ltx.parse_filename(p.name) for p in sorted((REPLICA / str(src_level)).iterdir())]
    sources = [s for s in sources if s[0] >= min_txid and s[1] <= max_txid]
    assert sources[0][0] == min_txid and sources[-1][1] == max_txid
    out = io.BytesIO()
    header, _ = compact([file_decoder(src_level, *s) for s in sources], out)
    want_header, want_pages, _ = decode_all(
        (REPLICA / str(level) / ltx.format_filename(min_txid, max_txid)).read_bytes())
    got_header, got_pages, _ = decode_all(out.getvalue())
    assert got_header == header == want_header
    assert got_pages == want_pages


def test_newest_version_wins_and_pages_past_commit_are_dropped():
    a = make(1, 1, 4, [(1, 1), (2, 1), (3, 1), (4, 1)], ts=10)
    b = make(2, 3, 5, [(2, 2), (5, 2)], ts=20)
    c = make(4, 4, 3, [(1, 3), (3, 3)], ts=30)  # shrinks to 3 pages
    out = io.BytesIO()
    header, _ = compact([decoder(a), decoder(b), decoder(c)], out)
    assert (header.min_txid, header.max_txid, header.commit, header.timestamp) == (1, 4, 3, 30)
    _, pages, _ = decode_all(out.getvalue())
    assert [(p, d[0]) for p, d in pages] == [(1, 3), (2, 2), (3, 3)]


def test_overlapping_but_contiguous_inputs_are_accepted():
    a = make(1, 3, 2, [(1, 1), (2, 1)])
    b = make(2, 5, 2, [(2, 9)])
    out = io.BytesIO()
    header, _ = compact([decoder(a), decoder(b)], out)
    assert (header.min_txid, header.max_txid) == (1, 5)


@pytest.mark.parametrize("second, match", [
    ((3, 3), "non-contiguous"),   # gap: 1..1 then 3..3
    ((1, 1), "non-contiguous"),   # does not advance
])
def test_non_contiguous_inputs_are_refused(second, match):
    a = make(1, 1, 1, [(1, 1)])
    b = make(*second, 1, [(1, 2)])
    out = io.BytesIO()
    with pytest.raises(LTXError, match=match):
        compact([decoder(a), decoder(b)], out)
    assert out.getvalue() == b""


def test_page_size_mismatch_is_refused():
    a = make(1, 1, 1, [(1, 1)])
    small = io.BytesIO()
    enc = ltx.Encoder(small, ltx.Header(NOCHK, 1024, 1, 2, 2, 0))
    enc.encode_page(1, bytes(1024))
    enc.close()
    with pytest.raises(LTXError, match="page size"):
        compact([decoder(a), decoder(small.getvalue())], io.BytesIO())


def test_corrupt_input_fails_the_compaction():
    a = make(1, 1, 2, [(1, 1), (2, 1)])
    b = bytearray(make(2, 2, 2, [(2, 2)]))
    b[-1] ^= 0xFF  # stored FileChecksum
    with pytest.raises(LTXError, match="bad.ltx.*checksum mismatch"):
        compact([decoder(a), decoder(bytes(b), "bad.ltx")], io.BytesIO())


def test_snapshot_output_needs_every_page():
    a = make(1, 1, 2, [(1, 1), (2, 1)])
    b = make(2, 2, 3, [(3, 2)])
    out = io.BytesIO()
    compact([decoder(a), decoder(b)], out)  # 1..3 all present: fine
    # A chain whose pages never cover page 2 cannot become a snapshot.
    c = make(1, 1, 1, [(1, 1)])
    d = make(2, 2, 3, [(3, 2)])
    with pytest.raises(LTXError, match="nonsequential"):
        compact([decoder(c), decoder(d)], io.BytesIO())
