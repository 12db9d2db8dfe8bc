"""Reading one whole replica file for a restore: one stream, or parallel range reads.

A restore reads every file of its plan from start to end. One stream is the fastest way from
a disk or a store next door; from S3 far away one connection's window per round trip bounds
it (AWS's guidelines: 85-90 MB/s per connection), and several byte ranges of the file read at
once add up. :func:`open_for_restore` starts with one stream and moves to a
:class:`RangeReader` only when that stream proves slow.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from .errors import ReplicaClientError
from .defaults import (
    RESTORE_PART_SIZE, RESTORE_PROBE_BYTES, RESTORE_SLOW_STREAM_BYTES_PER_S,
    SHORT_READ_ATTEMPTS, SHORT_READ_BACKOFF,
)
from .ltx import READ_CHUNK

if TYPE_CHECKING:  # pragma: no cover
    from .replica_client import FileInfo, ReplicaClient


class RangeReader:
    """One replica file read as consecutive byte ranges fetched ``parallelism`` at a time, and
    handed out in order (a ``read(n)`` stream, like ``open_ltx_file``'s).

    A single GET of a big object from S3 is bound by one connection's throughput; the ranges
    of one file come over several connections at once while the decoder works (restore,
    issue #12). At most ``parallelism`` ranges are in flight or waiting, so memory stays
    bounded by ``parallelism * part_size``. A range that comes back short of its length is
    read again (``SHORT_READ_ATTEMPTS``), so one cut body costs one part, not the file; still
    short, it is a :class:`ReplicaClientError` (a transfer failure, never a damaged file).
    """

    def __init__(self, client: "ReplicaClient", info: "FileInfo", part_size: int,
                 parallelism: int, start: int = 0):
        self._client, self._info = client, info
        self._part_size = max(1, part_size)
        self._parallelism = max(1, parallelism)
        self._pool = ThreadPoolExecutor(self._parallelism, thread_name_prefix="range-read")
        self._pending: list = []      # futures of the next ranges, in file order
        self._next_offset = start     # where the next range to schedule starts
        self._chunks: list = []       # what is left of the range being read, last chunk first
        self._closed = False
        while len(self._pending) < self._parallelism and self._schedule():
            pass

    def _schedule(self) -> bool:
        if self._next_offset >= self._info.size:
            return False
        size = min(self._part_size, self._info.size - self._next_offset)
        self._pending.append(self._pool.submit(self._fetch, self._next_offset, size))
        self._next_offset += size
        return True

    def _fetch(self, offset: int, size: int) -> list:
        """The range's bytes as the chunks they came in (joining them would copy the part)."""
        info = self._info
        for attempt in range(1, SHORT_READ_ATTEMPTS + 1):
            chunks, got = [], 0
            f = self._client.open_ltx_file(info.level, info.min_txid, info.max_txid, offset, size)
            try:
                while got < size and not self._closed:
                    chunk = f.read(min(READ_CHUNK, size - got))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
            finally:
                f.close()
            if got == size or self._closed:
                return chunks
            if attempt == SHORT_READ_ATTEMPTS:
                # A transfer error, not a damaged file: the restore reads the file again.
                raise ReplicaClientError(
                    f"L{info.level}/{info.filename}: bytes {offset}-{offset + size - 1} came "
                    f"back {got} bytes long, {SHORT_READ_ATTEMPTS} times",
                    hint="the store cut the transfer short; check its health")
            time.sleep(SHORT_READ_BACKOFF * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def read(self, n: int = -1) -> bytes:
        """The next chunk of the file (at most ``n`` bytes when ``n`` > 0); b"" at its end."""
        while not self._chunks:
            if not self._pending:
                return b""
            self._chunks = self._pending.pop(0).result()  # a failed range raises here, in order
            self._chunks.reverse()  # popped from the end
            self._schedule()
            if not self._chunks:
                return b""  # the range came back empty: the file ends here
        chunk = self._chunks.pop()
        if 0 < n < len(chunk):
            self._chunks.append(chunk[n:])
            chunk = chunk[:n]
        return chunk

    def close(self) -> None:
        self._closed = True
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
        self._chunks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_for_restore(client: "ReplicaClient", info: "FileInfo") -> BinaryIO:
    """A stream of one whole replica file for a restore.

    A backend that can read ranges in parallel (``client.restore_parallelism`` > 1) starts
    with one plain stream, as every other backend does, and moves the rest of the file to
    parallel range reads only if that stream turns out slower than
    ``RESTORE_SLOW_STREAM_BYTES_PER_S``: a store next door (a local SeaweedFS on 2 cores:
    one stream 1.2-1.5 GB/s, 4 ranges at once 0.7-0.9 GB/s for twice the CPU) is fastest
    read in one go; from AWS S3 one connection gives 85-90 MB/s and ranges add up.
    """
    stream = client.open_ltx_file(info.level, info.min_txid, info.max_txid)
    if client.restore_parallelism > 1 and info.size > 4 * RESTORE_PROBE_BYTES:
        return _SpeedUpWhenSlow(client, info, stream)
    return stream


class _SpeedUpWhenSlow:
    """One plain stream, whose speed is judged by the median rate of its reads (bytes per
    second spent waiting in ``read``, not the decoder's pace) over ``RESTORE_PROBE_BYTES``
    after a warm-up of as many: a new connection starts slowly, and a local store stalls now
    and then (a local SeaweedFS: first 16 MiB at ~100 MB/s, then 0.4-4 GB/s with pauses of
    150 ms on a loaded machine), while a far one is slow on every read. When slow, the rest
    of the file comes through a :class:`RangeReader`."""

    def __init__(self, client: "ReplicaClient", info: "FileInfo", stream: BinaryIO):
        self._client, self._info, self._f = client, info, stream
        self._offset = 0
        self._rates: list[float] | None = None   # per-read rates, once warmed up
        self._probed = 0

    def read(self, n: int = -1) -> bytes:
        if self._probed >= RESTORE_PROBE_BYTES:
            return self._f.read(n)
        started = time.perf_counter()
        data = self._f.read(n)
        waited = time.perf_counter() - started
        self._offset += len(data)
        if self._rates is None:
            if self._offset >= RESTORE_PROBE_BYTES:
                self._rates = []
            return data
        if data:
            self._rates.append(len(data) / max(waited, 1e-9))
            self._probed += len(data)
        if self._probed >= RESTORE_PROBE_BYTES:
            median = sorted(self._rates)[len(self._rates) // 2]
            if (median < RESTORE_SLOW_STREAM_BYTES_PER_S
                    and self._info.size - self._offset > RESTORE_PART_SIZE):
                self._f.close()
                self._f = RangeReader(self._client, self._info, RESTORE_PART_SIZE,
                                      self._client.restore_parallelism, start=self._offset)
        return data

    @property
    def parallel(self) -> bool:
        return isinstance(self._f, RangeReader)

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
