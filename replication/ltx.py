"""LTX v3 codec: the file format Litestream 0.5 stores on every replica.

A file is ``Header (100 B) | page block | page index | Trailer (16 B)``, big-endian throughout
(spec §1). Pages come in two encodings, chosen per page by a flag bit:

- *frame* (flag 0): one standard LZ4 frame per page. Written by ltx ≤ v0.5.1 (Litestream
  0.5.0–0.5.15) and readable by every 0.5.x release, so it is what we write by default.
- *block* (flag ``PAGE_FLAG_SIZE``): a 4-byte compressed size, then a raw LZ4 block. Written by
  Litestream ≥ 0.5.16, which reads both.

The decoder streams: it holds one read buffer (``READ_CHUNK``) plus the page being decoded, so
memory does not grow with the file. Every error is an :class:`LTXError` naming the file.
"""
from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import lz4.block
import lz4.frame
from fastcrc import crc64 as _fastcrc64

from replication.errors import LTXError, TruncatedLTXError

MAGIC = b"LTX1"
HEADER_SIZE = 100
PAGE_HEADER_SIZE = 6
TRAILER_SIZE = 16
SIZE_PREFIX_SIZE = 4

HEADER_FLAG_NO_CHECKSUM = 0x2
HEADER_FLAG_MASK = HEADER_FLAG_NO_CHECKSUM
PAGE_FLAG_SIZE = 0x1
CHECKSUM_FLAG = 1 << 63

MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536

ENCODING_FRAME = "frame"
ENCODING_BLOCK = "block"
ENCODINGS = (ENCODING_FRAME, ENCODING_BLOCK)

READ_CHUNK = 1 << 20  # bytes pulled from the underlying file per read; bounds decoder memory

_HEADER = struct.Struct(">4sIIIQQqQqqIIQ20x")
_PAGE_HEADER = struct.Struct(">IH")
_BLOCK_PAGE_HEADER = struct.Struct(">IHI")
_U64 = struct.Struct(">Q")
_LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
_LZ4_U32 = struct.Struct("<I")
_FILENAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
_ZERO_PAGE_HEADER = bytes(PAGE_HEADER_SIZE)
# LZ4 frame magic + FLG 0x64 (v1, independent blocks, content checksum) + BD 0x40 (64 KB blocks)
_GO_FRAME_PREFIX = _LZ4_FRAME_MAGIC + b"\x64\x40"

assert _HEADER.size == HEADER_SIZE


# --- checksums ---------------------------------------------------------------------------------

def crc64(data, crc: int | None = None) -> int:
    """CRC-64/GO-ISO of ``data`` (Go ``hash/crc64`` with the ISO table).

    ``crc`` continues a previous result, so ``crc64(b, crc64(a)) == crc64(a + b)``.
    """
    return _fastcrc64.go_iso(data) if crc is None else _fastcrc64.go_iso(data, initial=crc)


_CRC64_POLY = 0xD800000000000000  # ISO polynomial, reflected (Go's crc64.ISO)


def _crc64_mulmod(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial, both reflected (bit 63 is x^0)."""
    p = 0
    m = 1 << 63
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _CRC64_POLY if b & 1 else b >> 1
    return p


_X_POW_2N = [1 << 62]  # x^(2^n) modulo the polynomial, n = 0..63
for _ in range(63):
    _X_POW_2N.append(_crc64_mulmod(_X_POW_2N[-1], _X_POW_2N[-1]))


def crc64_combine(crc1: int, crc2: int, len2: int) -> int:
    """``crc64(a + b)`` from ``crc64(a)``, ``crc64(b)`` and ``len(b)`` (zlib's crc32_combine
    for CRC-64: ``crc1`` shifted over ``len2`` zero bytes, then xored with ``crc2``); lets
    pieces of one file be checksummed apart, e.g. in parallel."""
    shift = 1 << 63  # x^0
    n, k = len2, 3   # x^(8 * len2)
    while n:
        if n & 1:
            shift = _crc64_mulmod(_X_POW_2N[k & 63], shift)
        n >>= 1
        k += 1
    return _crc64_mulmod(shift, crc1) ^ crc2


def page_checksum(pgno: int, data) -> int:
    """The rolling-checksum term of one page: CRC of the 4-byte BE pgno then the page, flagged."""
    return crc64(data, crc64(pgno.to_bytes(4, "big"))) | CHECKSUM_FLAG


def lock_pgno(page_size: int) -> int:
    """The page holding SQLite's PENDING_BYTE (1 GiB); it is never stored in an LTX file."""
    return 0x40000000 // page_size + 1


# --- file names --------------------------------------------------------------------------------

def format_filename(min_txid: int, max_txid: int) -> str:
    return f"{min_txid:016x}-{max_txid:016x}.ltx"


def parse_filename(name: str) -> tuple[int, int] | None:
    """(min_txid, max_txid) of a replica file name, or None for any other name (ignored)."""
    m = _FILENAME_RE.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


# --- header and trailer ------------------------------------------------------------------------

@dataclass
class Header:
    """The 100-byte LTX header. TXIDs are Litestream's per-sync counters, not SQLite's."""

    flags: int
    page_size: int          # bytes, a power of two 512..65536
    commit: int             # database size in pages after applying this file
    min_txid: int
    max_txid: int
    timestamp: int          # milliseconds since the Unix epoch, UTC
    pre_apply_checksum: int = 0
    wal_offset: int = 0     # byte offset in the source WAL; 0 for compactions
    wal_size: int = 0       # WAL bytes covered
    wal_salt1: int = 0
    wal_salt2: int = 0
    node_id: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def no_checksum(self) -> bool:
        return bool(self.flags & HEADER_FLAG_NO_CHECKSUM)

    def marshal(self) -> bytes:
        return _HEADER.pack(
            MAGIC, self.flags, self.page_size, self.commit, self.min_txid, self.max_txid,
            self.timestamp, self.pre_apply_checksum, self.wal_offset, self.wal_size,
            self.wal_salt1, self.wal_salt2, self.node_id,
        )

    @classmethod
    def unmarshal(cls, b: bytes, name: str = "") -> "Header":
        if len(b) < HEADER_SIZE:
            raise TruncatedLTXError(
                f"{_label(name)}: truncated header ({len(b)} of {HEADER_SIZE} bytes)",
                hint="the file is incomplete; it was cut short in transit or on disk")
        (magic, flags, page_size, commit, min_txid, max_txid, timestamp, pre, wal_offset,
         wal_size, salt1, salt2, node_id) = _HEADER.unpack_from(b, 0)
        if magic != MAGIC:
            raise LTXError(f"{_label(name)}: invalid LTX file: bad magic {magic!r}",
                           hint="this is not an LTX file (expected it to start with 'LTX1')")
        return cls(flags, page_size, commit, min_txid, max_txid, timestamp, pre, wal_offset,
                   wal_size, salt1, salt2, node_id)

    def validate(self, name: str = "") -> None:
        """Header.Validate of superfly/ltx: field ranges and the checksum-flag rules."""
        where = _label(name)
        if self.flags & ~HEADER_FLAG_MASK:
            raise LTXError(f"{where}: invalid header flags 0x{self.flags:08x}")
        ps = self.page_size
        if ps < MIN_PAGE_SIZE or ps > MAX_PAGE_SIZE or ps & (ps - 1):
            raise LTXError(f"{where}: invalid page size {ps}")
        if self.min_txid < 1:
            raise LTXError(f"{where}: min TXID must be at least 1")
        if self.max_txid < self.min_txid:
            raise LTXError(f"{where}: max TXID {self.max_txid} is below min TXID {self.min_txid}")
        if self.wal_offset < 0 or self.wal_size < 0:
            raise LTXError(f"{where}: WAL offset and size must not be negative")
        if self.wal_offset == 0 and self.wal_size:
            raise LTXError(f"{where}: WAL size must be zero when WAL offset is zero")
        if (self.wal_salt1 or self.wal_salt2) and self.wal_offset == 0:
            raise LTXError(f"{where}: WAL offset required when WAL salts are set")
        if self.is_snapshot:
            if self.pre_apply_checksum:
                raise LTXError(f"{where}: snapshot must not have a pre-apply checksum")
        elif self.no_checksum:
            if self.pre_apply_checksum:
                raise LTXError(f"{where}: pre-apply checksum must be zero with NoChecksum set")
        elif not self.pre_apply_checksum & CHECKSUM_FLAG:
            raise LTXError(f"{where}: pre-apply checksum required (flag bit unset)")


@dataclass
class Trailer:
    post_apply_checksum: int
    file_checksum: int


def _label(name: str) -> str:
    return f"ltx file {name}" if name else "ltx file"


# --- page index (VFS-style page reads) ---------------------------------------------------------

def _append_uvarint(buf: bytearray, v: int) -> None:
    while v >= 0x80:
        buf.append((v & 0x7F) | 0x80)
        v >>= 7
    buf.append(v)


def _read_uvarint(b, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = b[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint overflows 64 bits")


#: Page indexes at least this long are decoded with numpy (a 1 GiB snapshot's 264k entries:
#: 0.32 s one varint at a time, 0.10 s vectorized; the VFS builds its index from these).
_VECTOR_INDEX_BYTES = 4096


def _decode_index_vectorized(index_bytes, name: str) -> dict[int, tuple[int, int]]:
    """decode_page_index's varint loop, on every varint at once."""
    import numpy as np

    data = np.frombuffer(index_bytes, dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)  # the last byte of each varint
    if not len(ends) or ends[-1] != len(data) - 1:
        raise LTXError(f"{_label(name)}: corrupt page index: it ends inside a varint")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10 or (lengths == 10).any() and (data[ends[lengths == 10]] > 1).any():
        raise LTXError(f"{_label(name)}: corrupt page index: varint overflows 64 bits")
    shift = (np.arange(len(data)) - np.repeat(starts, lengths)).astype(np.uint64) * np.uint64(7)
    values = np.add.reduceat((data & 0x7F).astype(np.uint64) << shift, starts)
    if len(values) % 3 != 1 or values[-1] != 0 or (values[0:-1:3] == 0).any():
        raise LTXError(f"{_label(name)}: page index length mismatch (no single end marker "
                       "at its end)")
    entries = values[:-1].reshape(-1, 3)
    return dict(zip(entries[:, 0].tolist(),
                    zip(entries[:, 1].tolist(), entries[:, 2].tolist())))


_VARINT_ENDS = bytes(int(b < 0x80) for b in range(256))  # translate table: 1 ends a varint


def page_index_entries(index: bytes, picks: list[int],
                       name: str = "") -> tuple[int, list[tuple[int, int, int]]]:
    """A few entries of a page index (its bytes, end marker included) without decoding the
    others: ``(entry count, [(pgno, frame offset, frame size) for each of picks])``. An entry
    starts after 3 × its number varint ends, found by counting bytes < 0x80 (a restore splits
    a 1 GiB file's 264k entries into runs in a few ms, without numpy's memory)."""
    ends = index.translate(_VARINT_ENDS)
    varints = ends.count(1)
    if varints % 3 != 1 or not index or index[-1] != 0:
        raise LTXError(f"{_label(name)}: corrupt page index: {varints} varints, not 3 per "
                       "page plus the end marker")
    count = varints // 3
    entries = []
    for pick in picks:
        if not 0 <= pick < count:
            raise ValueError(f"page index entry {pick} of {count}")
        pos = _after_nth(ends, 3 * pick)
        pgno, pos = _read_uvarint(index, pos)
        offset, pos = _read_uvarint(index, pos)
        entries.append((pgno, offset, _read_uvarint(index, pos)[0]))
    return count, entries


def _after_nth(ends: bytes, n: int) -> int:
    """The position just past the ``n``-th 1 of ``ends`` (0 for n = 0), by bisection where
    each step counts only the half it keeps looking in."""
    lo, hi, seen = 0, len(ends), 0  # seen: ones in ends[:lo]; the n-th one lies in [lo, hi)
    if n == 0:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        left = ends.count(1, lo, mid)
        if seen + left >= n:
            hi = mid
        else:
            lo, seen = mid, seen + left
    return hi


def decode_page_index(tail, name: str = "") -> dict[int, tuple[int, int]]:
    """Parse the page index from the end of a file: ``{pgno: (frame offset, frame size)}``.

    ``tail`` is any suffix of the file that contains the whole index plus the trailer (the VFS
    range-reads the last 32 KiB first, §1.3).
    """
    tail = memoryview(tail)
    if len(tail) < TRAILER_SIZE + 8:
        raise TruncatedLTXError(f"{_label(name)}: too short for a page index")
    (index_len,) = _U64.unpack_from(tail, len(tail) - TRAILER_SIZE - 8)
    start = len(tail) - TRAILER_SIZE - 8 - index_len
    if index_len < 1 or start < 0:
        raise LTXError(f"{_label(name)}: page index ({index_len} bytes) is not inside the buffer")
    end = start + index_len
    if index_len >= _VECTOR_INDEX_BYTES:
        return _decode_index_vectorized(tail[start:end], name)
    index: dict[int, tuple[int, int]] = {}
    pos = start
    try:
        while True:
            pgno, pos = _read_uvarint(tail, pos)
            if pgno == 0:
                break
            offset, pos = _read_uvarint(tail, pos)
            size, pos = _read_uvarint(tail, pos)
            index[pgno] = (offset, size)
    except (IndexError, ValueError) as e:
        raise LTXError(f"{_label(name)}: corrupt page index: {e}") from None
    if pos != end:
        raise LTXError(f"{_label(name)}: page index length mismatch ({pos - start} != {index_len})")
    return index


def decode_page_frame(buf, page_size: int, name: str = "") -> tuple[int, bytes]:
    """Decode one page frame (header + payload, either encoding) read by its index entry."""
    buf = memoryview(buf)
    if len(buf) < PAGE_HEADER_SIZE:
        raise TruncatedLTXError(f"{_label(name)}: truncated page frame")
    pgno, flags = _PAGE_HEADER.unpack_from(buf, 0)
    if pgno == 0:
        raise LTXError(f"{_label(name)}: page frame has page number zero")
    if flags & ~PAGE_FLAG_SIZE:
        raise LTXError(f"{_label(name)}: page {pgno}: invalid page flags 0x{flags:04x}")
    if flags & PAGE_FLAG_SIZE:
        if len(buf) < PAGE_HEADER_SIZE + SIZE_PREFIX_SIZE:
            raise TruncatedLTXError(f"{_label(name)}: page {pgno}: truncated size prefix")
        (size,) = struct.unpack_from(">I", buf, PAGE_HEADER_SIZE)
        payload = buf[PAGE_HEADER_SIZE + SIZE_PREFIX_SIZE:PAGE_HEADER_SIZE + SIZE_PREFIX_SIZE + size]
        if len(payload) != size:
            raise TruncatedLTXError(f"{_label(name)}: page {pgno}: truncated block")
        return pgno, _decompress_block(payload, page_size, pgno, name)
    frame_len, data = _decode_lz4_frame(buf, PAGE_HEADER_SIZE, page_size, pgno, name)
    if frame_len is None:
        raise TruncatedLTXError(f"{_label(name)}: page {pgno}: truncated LZ4 frame")
    return pgno, data


def _decompress_block(payload, page_size: int, pgno: int, name: str) -> bytes:
    try:
        data = lz4.block.decompress(payload, uncompressed_size=page_size)
    except lz4.block.LZ4BlockError as e:
        raise LTXError(f"{_label(name)}: page {pgno}: corrupt LZ4 block: {e}") from None
    if len(data) != page_size:
        raise LTXError(f"{_label(name)}: page {pgno}: decompressed to {len(data)} bytes, "
                       f"expected page size {page_size}")
    return data


def _decode_lz4_frame(buf, start: int, page_size: int, pgno: int, name: str):
    """Decode the LZ4 frame at ``buf[start:]``.

    Returns ``(end offset, page data)``, or ``(None, None)`` when ``buf`` ends inside the frame
    (the streaming decoder then reads more). We walk the frame's block headers ourselves to find
    where it ends and decompress its block with ``lz4.block``: this is several times faster than
    a ``LZ4FrameDecompressor`` per page. Frames with several blocks go through ``lz4.frame``.
    """
    n = len(buf)
    if n < start + 7:
        return None, None
    if bytes(buf[start:start + 4]) != _LZ4_FRAME_MAGIC:
        raise LTXError(f"{_label(name)}: page {pgno}: bad LZ4 frame magic",
                       hint="the file is corrupt or was written by an incompatible encoder")
    flg = buf[start + 4]
    if flg >> 6 != 1:
        raise LTXError(f"{_label(name)}: page {pgno}: unsupported LZ4 frame version")
    block_checksum = 4 if flg & 0x10 else 0
    pos = start + 7 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    blocks = []
    while True:
        if n < pos + 4:
            return None, None
        (bsize,) = _LZ4_U32.unpack_from(buf, pos)
        pos += 4
        if bsize == 0:
            pos += 4 if flg & 0x04 else 0  # content checksum
            if n < pos:
                return None, None
            break
        length = bsize & 0x7FFFFFFF
        if n < pos + length + block_checksum:
            return None, None
        blocks.append((bool(bsize & 0x80000000), pos, length))
        pos += length + block_checksum
    if len(blocks) == 1:
        raw, off, length = blocks[0]
        if raw:
            data = bytes(buf[off:off + length])
            if len(data) != page_size:
                raise LTXError(f"{_label(name)}: page {pgno}: stored block of {len(data)} bytes, "
                               f"expected page size {page_size}")
            return pos, data
        return pos, _decompress_block(buf[off:off + length], page_size, pgno, name)
    try:
        data = lz4.frame.decompress(bytes(buf[start:pos]))
    except RuntimeError as e:
        raise LTXError(f"{_label(name)}: page {pgno}: corrupt LZ4 frame: {e}") from None
    if len(data) != page_size:
        raise LTXError(f"{_label(name)}: page {pgno}: decompressed to {len(data)} bytes, "
                       f"expected page size {page_size}")
    return pos, data


# --- encoder -----------------------------------------------------------------------------------

class Encoder:
    """Writes one LTX file to ``fileobj``: header now, pages one by one, index + trailer on close.

    ``encoding="frame"`` (default) is readable by every Litestream 0.5.x; ``"block"`` only by
    ≥ 0.5.16. The FileChecksum covers uncompressed page data, so both give valid files.
    """

    _FLUSH_AT = 1 << 20

    def __init__(self, fileobj: BinaryIO, header: Header, *, encoding: str = ENCODING_FRAME,
                 name: str = ""):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown LTX page encoding {encoding!r}; use one of {ENCODINGS}")
        header.validate(name)
        self.header = header
        self.name = name
        self._f = fileobj
        self._block = encoding == ENCODING_BLOCK
        self._lock_pgno = lock_pgno(header.page_size)
        hdr = header.marshal()
        self._crc = crc64(hdr)
        self._out = bytearray(hdr)
        self._offset = HEADER_SIZE
        self._index = bytearray()
        self._prev_pgno = 0
        self._closed = False
        self.page_count = 0

    def encode_page(self, pgno: int, data) -> None:
        h = self.header
        if self._closed:
            raise LTXError(f"{_label(self.name)}: encoder is closed")
        if len(data) != h.page_size:
            raise LTXError(f"{_label(self.name)}: page {pgno} is {len(data)} bytes, "
                           f"expected page size {h.page_size}")
        if pgno < 1 or pgno > h.commit:
            raise LTXError(f"{_label(self.name)}: page number {pgno} out of range 1..{h.commit}")
        if pgno == self._lock_pgno:
            raise LTXError(f"{_label(self.name)}: cannot encode lock page {pgno}")
        if pgno <= self._prev_pgno:
            raise LTXError(f"{_label(self.name)}: out-of-order page {pgno} after "
                           f"{self._prev_pgno}: pages must be strictly ascending")
        if h.is_snapshot and pgno != self._next_snapshot_pgno():
            raise LTXError(f"{_label(self.name)}: nonsequential page numbers in snapshot "
                           f"transaction: {self._prev_pgno},{pgno}")
        if self._block:
            comp = lz4.block.compress(data, store_size=False)
            head = _BLOCK_PAGE_HEADER.pack(pgno, PAGE_FLAG_SIZE, len(comp))
        else:
            comp = lz4.frame.compress(data, compression_level=0,
                                      block_size=lz4.frame.BLOCKSIZE_MAX64KB, block_linked=False,
                                      content_checksum=True, store_size=False)
            head = _PAGE_HEADER.pack(pgno, 0)
        self._crc = crc64(data, crc64(head, self._crc))
        size = len(head) + len(comp)
        _append_uvarint(self._index, pgno)
        _append_uvarint(self._index, self._offset)
        _append_uvarint(self._index, size)
        self._out += head
        self._out += comp
        self._offset += size
        self._prev_pgno = pgno
        self.page_count += 1
        if len(self._out) >= self._FLUSH_AT:
            self._flush()

    def _next_snapshot_pgno(self) -> int:
        nxt = self._prev_pgno + 1
        return nxt + 1 if nxt == self._lock_pgno else nxt

    def _flush(self) -> None:
        if self._out:
            self._f.write(self._out)
            self._out = bytearray()

    def close(self, post_apply_checksum: int = 0) -> Trailer:
        """Write the end marker, the page index and the trailer. Does not close ``fileobj``."""
        h = self.header
        where = _label(self.name)
        if self._closed:
            raise LTXError(f"{where}: encoder already closed")
        if h.is_snapshot and self._next_snapshot_pgno() <= h.commit:
            raise LTXError(f"{where}: snapshot incomplete: has pages 1..{self._prev_pgno}, "
                           f"commit is {h.commit}")
        if h.no_checksum:
            if post_apply_checksum:
                raise LTXError(f"{where}: post-apply checksum must be zero with NoChecksum set")
        elif h.commit == 0 and post_apply_checksum != CHECKSUM_FLAG:
            raise LTXError(f"{where}: post-apply checksum of an empty database must be the flag")
        elif not post_apply_checksum & CHECKSUM_FLAG:
            raise LTXError(f"{where}: post-apply checksum required (flag bit unset)")
        self._index.append(0)
        tail = bytearray(_ZERO_PAGE_HEADER)
        tail += self._index
        tail += _U64.pack(len(self._index))
        tail += _U64.pack(post_apply_checksum)
        crc = crc64(tail, self._crc)
        file_checksum = crc | CHECKSUM_FLAG
        self._out += tail
        self._out += _U64.pack(file_checksum)
        self._flush()
        self._closed = True
        return Trailer(post_apply_checksum, file_checksum)


# --- decoder -----------------------------------------------------------------------------------

class Decoder:
    """Streams one LTX file: ``header`` on construction, ``pages()``, then ``close()``.

    ``close()`` drains anything not yet read and verifies the FileChecksum (and, for a snapshot
    that tracks checksums, the post-apply checksum against its pages).
    """

    def __init__(self, fileobj: BinaryIO, name: str = ""):
        self._start(fileobj, name)
        hdr = self._take(HEADER_SIZE, "header")
        self._begin(Header.unmarshal(hdr, name=name), crc64(hdr), 0)

    @classmethod
    def continuing(cls, fileobj: BinaryIO, header: Header, prev_pgno: int,
                   name: str = "") -> "Decoder":
        """A decoder of a run of pages from the middle of ``header``'s file: ``fileobj`` starts
        at a page frame and ends with an end-of-pages marker, ``prev_pgno`` is the page before
        the run. Its ``checksum`` then covers only the run's pages, for :func:`crc64_combine`
        (a restore decodes one big file's runs in parallel; it calls no ``close()``)."""
        self = cls.__new__(cls)
        self._start(fileobj, name)
        self._begin(header, 0, prev_pgno)
        return self

    def _start(self, fileobj: BinaryIO, name: str) -> None:
        self.name = name
        self._f = fileobj
        # Read window: ``_buf[_pos:]``. After a refill that had leftover bytes, ``_buf`` is the
        # leftover plus only the head of the new chunk, and ``_next`` is the whole chunk, which
        # takes over once parsing passes ``_boundary`` (so chunks are not copied wholesale).
        self._buf = b""
        self._pos = 0
        self._next: bytes | None = None
        self._boundary = 0
        self._stitch = 2 * MAX_PAGE_SIZE + 64
        self._eof = False
        self.bytes_read = 0   # bytes consumed from fileobj so far (for progress reports)
        self.page_count = 0
        self.block_pages = 0  # pages in block encoding (their CRC'd header is 4 bytes longer)

    def _begin(self, header: Header, crc: int, prev_pgno: int) -> None:
        header.validate(self.name)
        self.header = header
        self._stitch = 2 * header.page_size + 64
        self._crc = crc
        self._prev_pgno = prev_pgno
        self._pages_done = False
        self._iterating = False
        self._trailer: Trailer | None = None
        self._track = header.is_snapshot and not header.no_checksum
        self.db_checksum = 0  # rolling checksum of the pages so far, when the file tracks one

    @property
    def checksum(self) -> int:
        """CRC-64 of what has been decoded so far (before the FileChecksum's flag bit)."""
        return self._crc

    def _fill(self, n: int) -> bool:
        """Make ``n`` bytes available from ``_pos``; False if the stream ends first."""
        nxt = self._next
        if nxt is not None and self._pos >= self._boundary:
            self._buf, self._pos, self._next = nxt, self._pos - self._boundary, None
            nxt = None
        avail = len(self._buf) - self._pos
        if avail >= n:
            return True
        if nxt is not None:  # the stitched window is too short: join it with the whole chunk
            self._buf = self._buf[self._pos:self._boundary] + nxt
            self._pos, self._next = 0, None
            avail = len(self._buf)
            if avail >= n:
                return True
        while avail < n and not self._eof:
            chunk = self._f.read(max(READ_CHUNK, n - avail))
            if not chunk:
                self._eof = True
                break
            self.bytes_read += len(chunk)
            if avail == 0:
                self._buf = chunk
            else:
                rest = self._buf[self._pos:]
                take = max(n - avail, self._stitch)
                if take < len(chunk):
                    self._buf = rest + chunk[:take]
                    self._next, self._boundary = chunk, len(rest)
                else:
                    self._buf = rest + chunk
            self._pos = 0
            avail = len(self._buf)
        return avail >= n

    def _take(self, n: int, what: str) -> bytes:
        if not self._fill(n):
            raise self._truncated(what)
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def drain_window(self) -> bytes:
        """Whatever is buffered but not yet parsed (after ``pages()``: what follows the
        end-of-pages marker); empties the window."""
        buf, pos, nxt = self._buf, self._pos, self._next
        if nxt is None:
            rest = buf[pos:]
        elif pos >= self._boundary:
            rest = nxt[pos - self._boundary:]
        else:
            rest = buf[pos:self._boundary] + nxt
        self._buf, self._pos, self._next = b"", 0, None
        return rest

    def _truncated(self, what: str):
        return TruncatedLTXError(
            f"{_label(self.name)}: unexpected end of file reading {what}",
            hint="the file is truncated; it was cut short in transit or on disk")

    def pages(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(pgno, page bytes)`` in file order, decoding either encoding per frame."""
        if self._pages_done or self._iterating:
            return
        self._iterating = True
        # The per-page path is the restore hot loop: locals only, one CRC call per piece.
        h = self.header
        page_size, commit = h.page_size, h.commit
        lock = lock_pgno(page_size)
        snapshot = h.is_snapshot
        track = self._track
        name = self.name
        fill = self._fill
        unpack_header = _PAGE_HEADER.unpack_from
        unpack_block_header = _BLOCK_PAGE_HEADER.unpack_from
        decompress = lz4.block.decompress
        unpack_u32le = _LZ4_U32.unpack_from
        crc_of = _fastcrc64.go_iso
        block_head = PAGE_HEADER_SIZE + SIZE_PREFIX_SIZE
        max_block = 2 * page_size + 64
        crc = self._crc
        prev, count, blocks = self._prev_pgno, 0, 0
        buf = mv = None
        while True:
            if len(self._buf) - self._pos < PAGE_HEADER_SIZE and not fill(PAGE_HEADER_SIZE):
                raise self._truncated("page header")
            if self._buf is not buf:
                buf = self._buf
                mv = memoryview(buf)
            pos = self._pos
            pgno, flags = unpack_header(buf, pos)
            if pgno == 0:
                if flags:
                    raise LTXError(f"{_label(name)}: end-of-pages marker has flags 0x{flags:04x}")
                self._pos = pos + PAGE_HEADER_SIZE  # close() adds the marker to the CRC
                break
            if pgno <= prev or pgno > commit or pgno == lock or flags & ~PAGE_FLAG_SIZE:
                self._bad_page(pgno, flags, prev, commit, lock)
            if snapshot and pgno != prev + 1 and not (pgno == prev + 2 and prev + 1 == lock):
                raise LTXError(f"{_label(name)}: nonsequential page numbers in snapshot: "
                               f"{prev},{pgno}")
            if flags:  # block encoding: size prefix + raw LZ4 block
                if len(buf) - pos < block_head:
                    if not fill(block_head):
                        raise self._truncated(f"page {pgno} size")
                    buf, pos = self._buf, self._pos
                    mv = memoryview(buf)
                size = unpack_block_header(buf, pos)[2]
                if size > max_block:
                    raise LTXError(f"{_label(name)}: page {pgno}: implausible block size {size}")
                end = pos + block_head + size
                if end > len(buf):
                    if not fill(block_head + size):
                        raise self._truncated(f"page {pgno}")
                    buf, pos = self._buf, self._pos
                    mv = memoryview(buf)
                    end = pos + block_head + size
                try:
                    # positional size: keyword parsing cost 0.06 s per GiB of 4 KiB pages
                    data = decompress(mv[pos + block_head:end], page_size)
                except lz4.block.LZ4BlockError as e:
                    raise LTXError(f"{_label(name)}: page {pgno}: corrupt LZ4 block: {e}") from None
                if len(data) != page_size:
                    raise LTXError(f"{_label(name)}: page {pgno}: decompressed to {len(data)} "
                                   f"bytes, expected page size {page_size}")
                crc = crc_of(data, initial=crc_of(mv[pos:pos + block_head], initial=crc))
                blocks += 1
            else:  # frame encoding: one LZ4 frame per page
                data = None
                if buf.startswith(_GO_FRAME_PREFIX, pos + 6) and len(buf) - pos >= 17:
                    # The layout every Go writer (and ours) emits: descriptor 64 40 xx, one data
                    # block, EndMark, content checksum. Decoded inline when fully buffered.
                    bsize = unpack_u32le(buf, pos + 13)[0]
                    length = bsize & 0x7FFFFFFF
                    end = pos + 25 + length
                    if end <= len(buf) and not unpack_u32le(buf, end - 8)[0]:
                        if bsize & 0x80000000:  # stored uncompressed
                            if length != page_size:
                                raise LTXError(f"{_label(name)}: page {pgno}: stored block of "
                                               f"{length} bytes, expected {page_size}")
                            data = bytes(mv[pos + 17:end - 8])
                        else:  # inline, not _decompress_block: this runs once per page
                            try:
                                data = decompress(mv[pos + 17:end - 8], page_size)
                            except lz4.block.LZ4BlockError as e:
                                raise LTXError(f"{_label(name)}: page {pgno}: corrupt LZ4 "
                                               f"block: {e}") from None
                            if len(data) != page_size:
                                raise LTXError(f"{_label(name)}: page {pgno}: decompressed to "
                                               f"{len(data)} bytes, expected page size "
                                               f"{page_size}")
                if data is None:  # general case (or not yet buffered): walk the frame
                    need = PAGE_HEADER_SIZE + 16
                    while True:
                        fill(need)
                        buf, pos = self._buf, self._pos
                        mv = memoryview(buf)
                        end, data = _decode_lz4_frame(mv, pos + PAGE_HEADER_SIZE, page_size,
                                                      pgno, name)
                        if end is not None:
                            break
                        if self._eof:  # the frame runs past the end of the file
                            raise self._truncated(f"page {pgno}")
                        need = len(buf) - pos + page_size + 64
                crc = crc_of(data, initial=crc_of(mv[pos:pos + PAGE_HEADER_SIZE], initial=crc))
            self._pos = end
            count += 1
            if track:
                self.db_checksum = (self.db_checksum ^ page_checksum(pgno, data)) | CHECKSUM_FLAG
            prev = pgno
            yield pgno, data
        self._crc = crc
        self.page_count = count
        self.block_pages = blocks
        self._prev_pgno = prev
        self._pages_done = True

    @property
    def last_pgno(self) -> int:
        """The last page decoded (or the page before the run, before any)."""
        return self._prev_pgno

    def _bad_page(self, pgno: int, flags: int, prev: int, commit: int, lock: int):
        where = _label(self.name)
        if flags & ~PAGE_FLAG_SIZE:
            raise LTXError(f"{where}: page {pgno}: invalid page flags 0x{flags:04x}",
                           hint="written by a newer ltx version, or the file is corrupt")
        if pgno <= prev:
            raise LTXError(f"{where}: out-of-order page {pgno} after {prev}")
        if pgno > commit:
            raise LTXError(f"{where}: page {pgno} beyond commit {commit}")
        raise LTXError(f"{where}: file contains the lock page {pgno}")

    def close(self) -> Trailer:
        """Read the index and trailer and verify the file. Returns the trailer."""
        if self._trailer is not None:
            return self._trailer
        if not self._pages_done:
            for _ in self.pages():
                pass
            if not self._pages_done:  # pages() was abandoned mid-iteration by the caller
                raise LTXError(f"{_label(self.name)}: close() during page iteration")
        # The rest is index + trailer: CRC all of it except the last 8 bytes (the FileChecksum),
        # keeping only a 24-byte tail (index length, post-apply, file checksum) in memory.
        crc = crc64(_ZERO_PAGE_HEADER, self._crc)  # the end-of-pages marker
        total = 0
        hold = b""
        chunk = self.drain_window()
        while True:
            if not chunk:
                if self._eof:
                    break
                chunk = self._f.read(READ_CHUNK)
                if not chunk:
                    self._eof = True
                    break
                self.bytes_read += len(chunk)
            total += len(chunk)
            data = hold + chunk
            if len(data) > 24:
                crc = crc64(memoryview(data)[:-24], crc)
                hold = data[-24:]
            else:
                hold = data
            chunk = b""
        where = _label(self.name)
        if len(hold) < 24:
            raise TruncatedLTXError(
                f"{where}: unexpected end of file reading page index/trailer",
                hint="the file is truncated; it was cut short in transit or on disk")
        index_len, post, file_checksum = struct.unpack(">QQQ", hold)
        if index_len + 24 != total:
            raise LTXError(f"{where}: page index length {index_len} does not match the "
                           f"{total - 24} bytes between the pages and the trailer")
        self._trailer = check_trailer(self.header, crc64(hold[:16], crc), post, file_checksum,
                                      self.db_checksum if self._track else None, self.name)
        return self._trailer


def check_trailer(header: Header, crc: int, post: int, file_checksum: int,
                  db_checksum: int | None, name: str = "") -> Trailer:
    """The trailer's checks, once ``crc`` covers everything before the FileChecksum:
    that checksum, and the post-apply checksum's rules (against ``db_checksum``, the pages'
    rolling checksum, when the file tracks one)."""
    where = _label(name)
    crc |= CHECKSUM_FLAG
    if crc != file_checksum:
        raise LTXError(f"{where}: file checksum mismatch (computed {crc:016x}, "
                       f"stored {file_checksum:016x})",
                       hint="the file is corrupt; restore from another copy or level")
    if header.no_checksum:
        if post:
            raise LTXError(f"{where}: post-apply checksum must be zero with NoChecksum set")
    elif not post & CHECKSUM_FLAG:
        raise LTXError(f"{where}: post-apply checksum flag bit unset")
    elif db_checksum is not None and post != db_checksum:
        raise LTXError(f"{where}: snapshot post-apply checksum mismatch (pages give "
                       f"{db_checksum:016x}, trailer says {post:016x})")
    return Trailer(post, file_checksum)


def verify(data: bytes, name: str = "") -> Trailer:
    """Decode a whole LTX file held in memory, checking every page and both checksums."""
    dec = Decoder(io.BytesIO(data), name=name)
    for _ in dec.pages():
        pass
    return dec.close()


def db_checksum(pages) -> int:
    """Rolling database checksum over ``(pgno, data)`` pairs; the lock page must be excluded."""
    checksum = 0
    for pgno, data in pages:
        checksum = (checksum ^ page_checksum(pgno, data)) | CHECKSUM_FLAG
    return checksum
