"""SQLite WAL reader (Litestream's ``wal_reader.go``): header, frames, checksums, commit boundaries.

File layout (https://www.sqlite.org/walformat.html): a 32-byte header, then frames of a 24-byte
frame header plus one page. Header fields are always big-endian; the checksum reads 32-bit words
little-endian when the magic is ``0x377f0682`` and big-endian when it is ``0x377f0683``.

The checksum is SQLite's sequential Fletcher-like sum over pairs of words::

    s1 += x[2k] + s2;  s2 += x[2k+1] + s1        (mod 2**32)

It is *linear* mod 2**32: for a frame of ``n`` word pairs, ``(s1, s2)_out = M**n (s1, s2)_in +
C · words`` with ``M = [[1, 1], [1, 2]]`` and a coefficient matrix ``C`` that depends only on the
page size. So each frame's checksum is one integer matrix product (numpy, wrapping uint32
arithmetic), and a whole chunk of frames is verified at once: frame *i*'s expected checksum is
computed from frame *i-1*'s *stored* checksum, and the first mismatch ends the valid prefix —
exactly SQLite's own recovery rule. No per-word Python loop anywhere (see design/local-sync.md
for the measurements behind this choice).
"""
from __future__ import annotations

import functools
import os
import struct
import sys
from dataclasses import dataclass, field

import numpy as np

from .errors import ReplicationError

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
WAL_MAGIC_LE = 0x377F0682  # checksum words are little-endian
WAL_MAGIC_BE = 0x377F0683  # checksum words are big-endian
WAL_VERSION = 3007000

_HEADER = struct.Struct(">8I")
_FRAME_HEADER = struct.Struct(">6I")

# Largest read (bytes): keeps numpy's per-call overhead negligible and memory small.
READ_CHUNK_BYTES = 1 << 20  # 4 MiB read no faster and cost ~8 MB more peak RSS (#12)
# Frames in the first read of a call; later reads double up to READ_CHUNK_BYTES.
FIRST_CHUNK_FRAMES = 32


class WALError(ReplicationError):
    """The WAL header is invalid (bad magic, version, page size or header checksum)."""


class WALSeedError(ReplicationError):
    """Reading cannot start at the requested offset: the previous frame is not part of this WAL."""


def calc_wal_size(page_size: int, frames: int) -> int:
    """Bytes of a WAL holding ``frames`` frames (Litestream's ``calcWALSize``)."""
    return WAL_HEADER_SIZE + frames * (WAL_FRAME_HEADER_SIZE + page_size)


def _word_dtype(big_endian: bool) -> np.dtype:
    return np.dtype(">u4" if big_endian else "<u4")


def wal_checksum(data: bytes, big_endian: bool, s1: int = 0, s2: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) seeded with ``(s1, s2)``.

    Used for the 24-byte header and in tests; frames go through the vectorised path.
    """
    if len(data) % 8:
        raise ValueError("WAL checksum input must be a multiple of 8 bytes")
    words = np.frombuffer(data, dtype=_word_dtype(big_endian)).astype(np.uint32)
    coef = _pair_coefficients(len(words) // 2)
    (p00, p01), (p10, p11) = _matrix_power(len(words) // 2)
    out = words @ coef
    r1 = (p00 * s1 + p01 * s2 + int(out[0])) & 0xFFFFFFFF
    r2 = (p10 * s1 + p11 * s2 + int(out[1])) & 0xFFFFFFFF
    return r1, r2


@functools.lru_cache(maxsize=None)
def _matrix_power(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``M**n mod 2**32`` for ``M = [[1, 1], [1, 2]]``, by repeated squaring."""
    mask = 0xFFFFFFFF

    def mul(a, b):
        return (
            ((a[0][0] * b[0][0] + a[0][1] * b[1][0]) & mask, (a[0][0] * b[0][1] + a[0][1] * b[1][1]) & mask),
            ((a[1][0] * b[0][0] + a[1][1] * b[1][0]) & mask, (a[1][0] * b[0][1] + a[1][1] * b[1][1]) & mask),
        )

    result, base = ((1, 0), (0, 1)), ((1, 1), (1, 2))
    while n:
        if n & 1:
            result = mul(result, base)
        base = mul(base, base)
        n >>= 1
    return result


@functools.lru_cache(maxsize=None)
def _pair_coefficients(pairs: int) -> np.ndarray:
    """Coefficients ``C`` (shape ``(2*pairs, 2)``, uint32) of each input word in ``(s1, s2)``.

    One step maps ``v -> M v + (a, a + b)``, so word pair *k* contributes
    ``M**(pairs-1-k) @ [[1, 0], [1, 1]] @ (a, b)``.
    """
    mask = 0xFFFFFFFF
    powers = np.empty((pairs, 4), dtype=np.uint64)
    p = (1, 0, 0, 1)  # M**0, stored row-major
    for j in range(pairs):
        powers[j] = p
        p = ((p[0] + p[1]) & mask, (p[0] + 2 * p[1]) & mask, (p[2] + p[3]) & mask, (p[2] + 2 * p[3]) & mask)
    powers = powers[::-1]  # row k holds M**(pairs-1-k)
    coef = np.empty((2 * pairs, 2), dtype=np.uint64)
    coef[0::2, 0] = powers[:, 0] + powers[:, 1]  # a_k -> s1
    coef[0::2, 1] = powers[:, 2] + powers[:, 3]  # a_k -> s2
    coef[1::2, 0] = powers[:, 1]  # b_k -> s1
    coef[1::2, 1] = powers[:, 3]  # b_k -> s2
    return (coef & mask).astype(np.uint32)


@functools.lru_cache(maxsize=None)
def _frame_coefficients(page_size: int) -> np.ndarray:
    """Coefficients over all words of a frame (header + page); words 2..5 (salts, checksum) get 0."""
    pairs = 1 + page_size // 8
    pair_coef = _pair_coefficients(pairs)
    coef = np.zeros(((WAL_FRAME_HEADER_SIZE + page_size) // 4, 2), dtype=np.uint32)
    coef[0:2] = pair_coef[0:2]
    coef[6:] = pair_coef[2:]
    return coef


@dataclass(frozen=True)
class WALHeader:
    """The 32-byte WAL header."""

    magic: int
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int

    @property
    def big_endian(self) -> bool:
        """Whether checksum words are big-endian (magic ``0x377f0683``)."""
        return self.magic == WAL_MAGIC_BE

    @property
    def frame_size(self) -> int:
        return WAL_FRAME_HEADER_SIZE + self.page_size

    @classmethod
    def parse(cls, data: bytes) -> "WALHeader":
        """Parse and validate a header; raises :class:`WALError` if SQLite would not accept it."""
        if len(data) < WAL_HEADER_SIZE:
            raise WALError(f"WAL header too short: {len(data)} bytes")
        hdr = cls(*_HEADER.unpack_from(data))
        if hdr.magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
            raise WALError(f"invalid WAL magic 0x{hdr.magic:08x}", hint="is this a SQLite -wal file?")
        if hdr.version != WAL_VERSION:
            raise WALError(f"unsupported WAL version {hdr.version} (want {WAL_VERSION})")
        ps = hdr.page_size
        if ps < 512 or ps > 65536 or ps & (ps - 1):
            raise WALError(f"invalid WAL page size {ps}")
        if wal_checksum(bytes(data[:24]), hdr.big_endian) != (hdr.checksum1, hdr.checksum2):
            raise WALError("WAL header checksum mismatch")
        return hdr

    @property
    def salts(self) -> tuple[int, int]:
        return self.salt1, self.salt2


def read_wal_header(path_or_fd: str | os.PathLike | int) -> WALHeader | None:
    """The header of a ``-wal`` file, or None when it is missing or shorter than a header."""
    try:
        if isinstance(path_or_fd, int):
            data = os.pread(path_or_fd, WAL_HEADER_SIZE, 0)
        else:
            with open(path_or_fd, "rb") as f:
                data = f.read(WAL_HEADER_SIZE)
    except FileNotFoundError:
        return None
    if len(data) < WAL_HEADER_SIZE:
        return None
    return WALHeader.parse(data)


# SQLite's WalIndexHdr, in native byte order, at the start of the -shm file, twice: a writer
# updates the second copy, then the first; a reader that finds both equal and the checksum
# right has a consistent header (wal.c, walIndexTryHdr).
_WAL_INDEX_HEADER = struct.Struct("=IIIBBHII8s8sII")
WAL_INDEX_HEADER_SIZE = _WAL_INDEX_HEADER.size  # 48


def _read_wal_index(shm_fd: int, attempts: int, extra: int = 0
                    ) -> tuple[tuple[int, int], int, bytes] | None:
    """``(salts, mxFrame, the extra bytes after the two headers)`` from one consistent read."""
    native_big = sys.byteorder == "big"
    size = 2 * WAL_INDEX_HEADER_SIZE + extra
    for _ in range(attempts):
        data = os.pread(shm_fd, size, 0)
        if len(data) < size:
            return None
        first, second = data[:WAL_INDEX_HEADER_SIZE], data[WAL_INDEX_HEADER_SIZE:2 * WAL_INDEX_HEADER_SIZE]
        if first != second:
            continue
        (_version, _unused, _change, is_init, _big_cksum, _page, mx_frame, _n_page, _frame_cksum,
         salt_raw, c1, c2) = _WAL_INDEX_HEADER.unpack(first)
        if not is_init or wal_checksum(first[:40], native_big) != (c1, c2):
            continue
        # salts are a copy of the WAL header's
        return struct.unpack(">II", salt_raw), mx_frame, data[2 * WAL_INDEX_HEADER_SIZE:]
    return None


def read_wal_index_end(shm_fd: int, attempts: int = 8) -> tuple[tuple[int, int], int] | None:
    """``(salts, mxFrame)`` from the ``-shm`` wal-index header: the WAL generation and its last
    committed frame, as SQLite's own readers see them. None if the header is not initialised
    or stayed torn (a writer was updating it) for every attempt."""
    got = _read_wal_index(shm_fd, attempts)
    return None if got is None else (got[0], got[1])


def read_wal_backfill(shm_fd: int, attempts: int = 8) -> tuple[int, int] | None:
    """``(nBackfill, mxFrame)`` from the ``-shm``: how far checkpoints have copied the WAL into
    the DB file, and its last committed frame. None if the wal-index header is not readable."""
    got = _read_wal_index(shm_fd, attempts, extra=4)  # WalCkptInfo.nBackfill, native order
    return None if got is None else (struct.unpack("=I", got[2])[0], got[1])


def wal_frames(end_offset: int, page_size: int) -> int:
    """Frames before byte ``end_offset`` of a WAL with ``page_size`` pages."""
    return (end_offset - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + page_size)


@dataclass
class WALSegment:
    """Committed frames read from one WAL starting at ``start``.

    ``pgnos`` (sorted) and ``offsets`` (frame start, parallel) give the newest committed copy of
    each page with ``pgno <= commit``; the page data lives at ``offset + 24``.
    """

    header: WALHeader
    start: int
    end: int  # offset after the last committed frame taken (== start when none)
    commit: int  # DB size in pages from the last commit frame; 0 when no commit was read
    frames: int  # committed frames taken
    pgnos: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    stop_reason: str = "eof"  # eof | limit | salt | checksum

    @property
    def size(self) -> int:
        return self.end - self.start

    def page_offsets(self) -> dict[int, int]:
        return dict(zip(self.pgnos.tolist(), self.offsets.tolist()))


class WALReader:
    """Reads committed frames from an open ``-wal`` file descriptor.

    ``read(offset)`` validates salts and cumulative checksums from ``offset`` (32 = first frame,
    or any frame boundary: the previous frame's checksum seeds the sum) and returns the
    :class:`WALSegment` up to the last commit frame before the first invalid frame.
    """

    def __init__(self, fd: int, header: WALHeader | None = None):
        self.fd = fd
        if header is None:
            header = read_wal_header(fd)
            if header is None:
                raise WALError("WAL file has no header")
        self.header = header

    def seed(self, offset: int) -> tuple[int, int]:
        """Checksum state before the frame at ``offset``."""
        hdr = self.header
        if offset == WAL_HEADER_SIZE:
            return hdr.checksum1, hdr.checksum2
        fs = hdr.frame_size
        if offset < WAL_HEADER_SIZE or (offset - WAL_HEADER_SIZE) % fs:
            raise WALSeedError(f"WAL offset {offset} is not a frame boundary")
        data = os.pread(self.fd, WAL_FRAME_HEADER_SIZE, offset - fs)
        if len(data) < WAL_FRAME_HEADER_SIZE:
            raise WALSeedError(f"WAL has no frame before offset {offset}")
        _, _, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack(data)
        if (salt1, salt2) != hdr.salts:
            raise WALSeedError(f"frame before WAL offset {offset} has other salts than the WAL header")
        return c1, c2

    def read(self, offset: int = WAL_HEADER_SIZE, max_bytes: int | None = None,
             until: int | None = None) -> WALSegment:
        """Committed frames from ``offset``; with ``max_bytes``, stop at the first commit boundary
        at or beyond that many bytes; with ``until``, read no frame ending past that offset."""
        hdr = self.header
        fs = hdr.frame_size
        s1, s2 = self.seed(offset)
        coef = _frame_coefficients(hdr.page_size)
        (p00, p01), (p10, p11) = _matrix_power(1 + hdr.page_size // 8)
        p00, p01, p10, p11 = (np.uint32(v) for v in (p00, p01, p10, p11))
        dtype = _word_dtype(hdr.big_endian)
        words_per_frame = fs // 4
        # Chunks start small and double: after a restart the -wal keeps stale frames of older
        # generations past the valid end, and a small sync must not read megabytes of them.
        max_chunk = max(1, READ_CHUNK_BYTES // fs)
        chunk = min(FIRST_CHUNK_FRAMES, max_chunk)

        pgno_parts: list[np.ndarray] = []
        commit_parts: list[np.ndarray] = []
        stop_reason = "eof"
        pos = offset
        last_commit_end = None
        while True:
            want = chunk * fs if until is None else min(chunk * fs, (until - pos) // fs * fs)
            if want <= 0:
                break
            buf = bytearray(want)
            n_bytes = os.preadv(self.fd, [buf], pos)
            n = n_bytes // fs
            if n == 0:
                break
            raw = np.frombuffer(buf, dtype=np.uint8, count=n * fs)
            fields = raw.view(">u4").reshape(n, words_per_frame)[:, :6].astype(np.uint32)
            words = raw.view(dtype).reshape(n, words_per_frame)
            if dtype != np.uint32:
                words = words.astype(np.uint32)
            body = words @ coef  # (n, 2): each frame's own contribution
            seed1 = np.empty(n, dtype=np.uint32)
            seed2 = np.empty(n, dtype=np.uint32)
            seed1[0], seed2[0] = s1, s2
            seed1[1:] = fields[:-1, 4]
            seed2[1:] = fields[:-1, 5]
            exp1 = p00 * seed1 + p01 * seed2 + body[:, 0]
            exp2 = p10 * seed1 + p11 * seed2 + body[:, 1]
            salt_ok = (fields[:, 2] == hdr.salt1) & (fields[:, 3] == hdr.salt2)
            sum_ok = (exp1 == fields[:, 4]) & (exp2 == fields[:, 5])
            ok = salt_ok & sum_ok
            good = n if ok.all() else int(np.argmin(ok))
            if good < n:
                stop_reason = "salt" if not salt_ok[good] else "checksum"
            pgno_parts.append(fields[:good, 0])
            commit_parts.append(fields[:good, 1])
            if good:
                s1, s2 = int(fields[good - 1, 4]), int(fields[good - 1, 5])
                commit_idx = np.flatnonzero(fields[:good, 1])
                if len(commit_idx):
                    last_commit_end = pos + (int(commit_idx[-1]) + 1) * fs
            pos += good * fs
            if good < n or n_bytes < want or (until is not None and pos >= until):
                break
            chunk = min(chunk * 2, max_chunk)
            if max_bytes is not None and last_commit_end is not None and last_commit_end - offset >= max_bytes:
                stop_reason = "limit"
                break

        pgnos = np.concatenate(pgno_parts) if pgno_parts else np.empty(0, np.uint32)
        commits = np.concatenate(commit_parts) if commit_parts else np.empty(0, np.uint32)
        commit_idx = np.flatnonzero(commits)
        if max_bytes is not None and len(commit_idx):
            ends = (commit_idx + 1) * fs
            over = np.flatnonzero(ends >= max_bytes)
            if len(over) and over[0] < len(commit_idx) - 1:
                commit_idx = commit_idx[: over[0] + 1]
                stop_reason = "limit"
        if not len(commit_idx):
            return WALSegment(hdr, offset, offset, 0, 0, np.empty(0, np.int64), np.empty(0, np.int64), stop_reason)
        taken = int(commit_idx[-1]) + 1
        commit = int(commits[taken - 1])
        pgnos = pgnos[:taken].astype(np.int64)
        frame_offsets = offset + np.arange(taken, dtype=np.int64) * fs
        # Newest copy of each page: unique over the reversed sequence keeps the last occurrence.
        rev_unique, rev_idx = np.unique(pgnos[::-1], return_index=True)
        newest = taken - 1 - rev_idx
        keep = rev_unique <= commit
        return WALSegment(
            header=hdr,
            start=offset,
            end=offset + taken * fs,
            commit=commit,
            frames=taken,
            pgnos=rev_unique[keep],
            offsets=frame_offsets[newest[keep]],
            stop_reason=stop_reason,
        )

    def read_page(self, frame_offset: int) -> bytes:
        """Page data of the frame starting at ``frame_offset``."""
        ps = self.header.page_size
        data = os.pread(self.fd, ps, frame_offset + WAL_FRAME_HEADER_SIZE)
        if len(data) != ps:
            raise WALError(f"short read of WAL frame at offset {frame_offset}")
        return data

    def frame_header(self, frame_offset: int) -> tuple[int, int, int, int, int, int] | None:
        """(pgno, commit, salt1, salt2, checksum1, checksum2) of the frame at ``frame_offset``."""
        data = os.pread(self.fd, WAL_FRAME_HEADER_SIZE, frame_offset)
        if len(data) < WAL_FRAME_HEADER_SIZE:
            return None
        return _FRAME_HEADER.unpack(data)

    def frame_salts(self, start: int = WAL_HEADER_SIZE, end: int | None = None) -> set[tuple[int, int]]:
        """Distinct salt pairs carried by the frames between ``start`` and ``end`` (default: EOF)."""
        fs = self.header.frame_size
        if end is None:
            end = os.fstat(self.fd).st_size
        salts: set[tuple[int, int]] = set()
        off = start
        while off + fs <= end:
            hdr = self.frame_header(off)
            if hdr is None:
                break
            salts.add((hdr[2], hdr[3]))
            off += fs
        return salts
