"""Decoding one big LTX file in several worker processes at once (restore, issue #12).

One process decodes ~1.3 GiB/s of 4 KiB pages at best: per page an LZ4 call, two CRC-64 calls
and the page checks, all under one GIL (threads measured slower). A local file's page index
says where frames start, so its pages split into runs of consecutive frames. Each run is
decoded by a forked worker with the ordinary :class:`~replication.ltx.Decoder` (every page
check of one stream; the run starts after the page the index puts before it), which writes
its pages in place into the output and marks them in a shared bitmap.

The parent checks what no worker sees: the header, the end-of-pages marker where the trailer's
index length puts it, that each run ended exactly at the next run's first frame on the page the
index says, and the trailer: the workers' CRC-64s joined with
:func:`~replication.ltx.crc64_combine` into the FileChecksum, their rolling page checksums
xored into the post-apply checksum. So every byte a single stream would check is checked once.
A worker that fails, dies or is killed fails the file, and the others are killed at once. A
file whose index does not agree with its frames at the split points is left to the sequential
decoder, which reports what is wrong with it.
"""
from __future__ import annotations

import json
import mmap
import os
import select
import signal
import stat
import struct
from dataclasses import dataclass
from typing import Callable

from replication import errors
from replication.errors import LTXError
from replication.ltx import (
    CHECKSUM_FLAG, HEADER_SIZE, PAGE_HEADER_SIZE, SIZE_PREFIX_SIZE, TRAILER_SIZE, Decoder,
    Header,
    check_trailer, crc64, crc64_combine, page_index_entries,
)

_TAIL = struct.Struct(">QQQ")        # index length, post-apply checksum, file checksum
_PROGRESS = struct.Struct(">cQ")     # b"P", bytes of the run read so far
_DONE = struct.Struct(">cQQQQQQ")    # b"D", crc, bytes under it, pages, block pages, last, db
_ERROR = struct.Struct(">cI")        # b"E", length of the JSON that follows
_END_MARKER = bytes(PAGE_HEADER_SIZE)

ApplyPages = Callable[..., object]   # restore._apply_pages(fd, dec, page_size, written, report)


def local_fd(f) -> int | None:
    """The descriptor of a replica stream that is a plain local file, else None (S3 bodies,
    range readers, sockets)."""
    try:
        fd = f.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


@dataclass
class _Run:
    start: int            # byte offset of its first frame
    end: int              # byte offset past its last frame
    prev_pgno: int        # the page before it, by the index (0 for the first run)
    last_pgno: int        # its last page, by the index
    pid: int = 0
    rfd: int = -1
    read: int = 0         # bytes of it decoded so far (progress)
    done: tuple | None = None


class ParallelFile:
    """One local LTX file split for parallel decoding: :meth:`open`, then :meth:`apply`."""

    def __init__(self, fd: int, size: int, header: Header, head_crc: int, runs: list[_Run],
                 marker_at: int, name: str):
        self._fd, self._size, self.header, self._head_crc = fd, size, header, head_crc
        self._runs, self._marker_at, self.name = runs, marker_at, name

    @classmethod
    def open(cls, fd: int, workers: int, name: str = "") -> "ParallelFile | None":
        """Read the header (validated, as :class:`Decoder` does) and the trailer, and split
        the pages into ``workers`` runs at frames the page index points to. None when the
        index does not agree with the frames around those points, the header and the
        end-of-pages marker (the sequential decoder then reports what is wrong)."""
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE + PAGE_HEADER_SIZE + 1 + TRAILER_SIZE + 8:
            return None
        head = os.pread(fd, HEADER_SIZE, 0)
        header = Header.unmarshal(head, name=name)
        header.validate(name)
        index_len = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))[0]
        marker_at = size - _TAIL.size - index_len - PAGE_HEADER_SIZE
        if index_len < 1 or marker_at < HEADER_SIZE \
                or os.pread(fd, PAGE_HEADER_SIZE, marker_at) != _END_MARKER:
            return None
        index = os.pread(fd, index_len, marker_at + PAGE_HEADER_SIZE)
        try:
            count = page_index_entries(index, [], name)[0]
            if count < workers:
                return None
            cuts = sorted({k * count // workers for k in range(1, workers)})
            picks = [0, count - 1] + [i for c in cuts for i in (c - 1, c)]
            entries = dict(zip(picks, page_index_entries(index, picks, name)[1]))
        except LTXError:
            return None
        first, last = entries[0], entries[count - 1]
        if first[1] != HEADER_SIZE or last[1] + last[2] != marker_at:
            return None
        runs, start, prev = [], HEADER_SIZE, 0
        for c in cuts:
            before, at = entries[c - 1], entries[c]
            if at[1] != before[1] + before[2] or at[0] <= before[0]:
                return None
            runs.append(_Run(start, at[1], prev, before[0]))
            start, prev = at[1], before[0]
        runs.append(_Run(start, marker_at, prev, last[0]))
        return cls(fd, size, header, crc64(head), runs, marker_at, name)

    def apply(self, out_fd: int, written: bytearray, apply_pages: ApplyPages,
              report: Callable[[int], None] | None = None) -> bytearray:
        """Decode and write the file's pages, one worker process per run; verify the file as
        a whole. Returns ``written`` with this file's pages marked."""
        h = self.header
        runs = self._runs
        shared = mmap.mmap(-1, h.commit + 1)  # anonymous and shared: the workers' page marks
        try:
            for run in runs:
                self._fork(run, out_fd, shared, apply_pages)
            self._supervise(runs, report)
            self._verify(runs)
            if len(written) <= h.commit:
                written.extend(bytes(h.commit + 1 - len(written)))
            # bytes of 0 or 1: OR-ed as two big integers, no carries
            merged = (int.from_bytes(written[:h.commit + 1], "little")
                      | int.from_bytes(shared[:], "little"))
            written[:h.commit + 1] = merged.to_bytes(h.commit + 1, "little")
            return written
        finally:
            _reap(runs)
            shared.close()

    def _fork(self, run: _Run, out_fd: int, shared, apply_pages: ApplyPages) -> None:
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:  # the worker: never returns into the caller's code
            code = 1
            try:
                os.close(rfd)
                code = self._work(run, out_fd, wfd, shared, apply_pages)
            finally:
                os._exit(code)
        os.close(wfd)
        run.pid, run.rfd = pid, rfd

    def _work(self, run: _Run, out_fd: int, wfd: int, shared, apply_pages: ApplyPages) -> int:
        # The parent's handlers are not for a worker; a parent that dies closes the pipe, and
        # the worker's next progress message then fails (EPIPE): it stops within a run.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            stream = _RunReader(self._fd, run.start, run.end)
            dec = Decoder.continuing(stream, self.header, run.prev_pgno, self.name)
            apply_pages(out_fd, dec, self.header.page_size, shared,
                        lambda: os.write(wfd, _PROGRESS.pack(b"P", dec.bytes_read)))
            if dec.drain_window() or not stream.marked:
                raise LTXError(f"ltx file {self.name}: an end-of-pages marker before offset "
                               f"{run.end}, where the page index puts the next page")
            hashed = dec.page_count * (PAGE_HEADER_SIZE + self.header.page_size) \
                + dec.block_pages * SIZE_PREFIX_SIZE
            os.write(wfd, _DONE.pack(b"D", dec.checksum, hashed, dec.page_count,
                                     dec.block_pages, dec.last_pgno, dec.db_checksum))
            return 0
        except BaseException as e:
            if isinstance(e, errors.ReplicationError):
                detail = {"kind": type(e).__name__, "message": e.message, "hint": e.hint}
            elif isinstance(e, OSError):
                detail = {"kind": "OSError", "errno": e.errno, "message": e.strerror or str(e)}
            else:
                detail = {"kind": "", "message": f"{type(e).__name__}: {e}"}
            body = json.dumps(detail).encode()
            os.write(wfd, _ERROR.pack(b"E", len(body)) + body)
            return 1

    def _supervise(self, runs: list[_Run], report: Callable[[int], None] | None) -> None:
        """Read the workers' messages until each has ended; raise on the first failure."""
        live = {run.rfd: run for run in runs}
        bufs = {run.rfd: b"" for run in runs}
        poller = select.poll()  # not select(): a server may hold descriptors past 1024
        for rfd in live:
            poller.register(rfd, select.POLLIN)
        while live:
            for rfd, _ in poller.poll():
                run = live[rfd]
                data = os.read(rfd, 1 << 16)
                if data:
                    bufs[rfd] = self._parse(run, bufs[rfd] + data)
                    if report:
                        report(sum(r.read for r in runs))
                    continue
                poller.unregister(rfd)
                del live[rfd]
                os.close(rfd)
                run.rfd = -1
                _, status = os.waitpid(run.pid, 0)
                run.pid = 0
                if run.done is None or status:
                    raise LTXError(f"ltx file {self.name}: restore worker for pages "
                                   f"{run.prev_pgno + 1}..{run.last_pgno} {_died(status)}",
                                   hint="the restore was stopped; run it again")

    def _parse(self, run: _Run, buf: bytes) -> bytes:
        while buf:
            tag = buf[:1]
            if tag == b"P" and len(buf) >= _PROGRESS.size:
                run.read = min(_PROGRESS.unpack_from(buf)[1], run.end - run.start)
                buf = buf[_PROGRESS.size:]
            elif tag == b"D" and len(buf) >= _DONE.size:
                run.done = _DONE.unpack_from(buf)[1:]
                buf = buf[_DONE.size:]
            elif tag == b"E" and len(buf) >= _ERROR.size:
                n = _ERROR.unpack_from(buf)[1]
                if len(buf) < _ERROR.size + n:
                    return buf
                raise _error(json.loads(buf[_ERROR.size:_ERROR.size + n]))
            else:
                return buf
        return buf

    def _verify(self, runs: list[_Run]) -> None:
        """Each run ended on the page the next one starts after; the file's checksums."""
        h = self.header
        crc, db = self._head_crc, 0
        for run in runs:
            run_crc, hashed, _, _, last, run_db = run.done
            if last != run.last_pgno:
                raise LTXError(f"ltx file {self.name}: the pages from offset {run.start} end "
                               f"at page {last}, the page index says {run.last_pgno}")
            crc = crc64_combine(crc, run_crc, hashed)
            db ^= run_db
        # the marker, the index, its length and the post-apply checksum: all but the last 8
        tail = os.pread(self._fd, self._size - self._marker_at, self._marker_at)
        _, post, file_checksum = _TAIL.unpack_from(tail, len(tail) - _TAIL.size)
        crc = crc64(memoryview(tail)[:-8], crc)
        track = h.is_snapshot and not h.no_checksum
        check_trailer(h, crc, post, file_checksum, db | CHECKSUM_FLAG if track else None,
                      self.name)


class _RunReader:
    """Bytes ``start..end`` of a file, then an end-of-pages marker: what a worker's decoder
    reads (``marked`` once the marker was handed out)."""

    def __init__(self, fd: int, start: int, end: int):
        self._fd, self._pos, self._end = fd, start, end
        self.marked = False

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        if left > 0:
            data = os.pread(self._fd, left if n < 0 else min(n, left), self._pos)
            self._pos += len(data)
            return data  # b"" if the file shrank: the decoder reports it truncated
        if self.marked:
            return b""
        self.marked = True
        return _END_MARKER


def _error(detail: dict) -> BaseException:
    kind, message = detail.get("kind"), detail.get("message", "")
    if kind == "OSError":
        return OSError(detail.get("errno"), message)
    cls = getattr(errors, kind, None) if kind else None
    if isinstance(cls, type) and issubclass(cls, errors.ReplicationError):
        return cls(message, hint=detail.get("hint"))
    return LTXError(f"restore worker failed: {message}")


def _died(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig} ({signal.Signals(sig).name})"
    if status:
        return f"exited with status {os.waitstatus_to_exitcode(status)}"
    return "ended without a result"


def _reap(runs: list[_Run]) -> None:
    """Kill and wait for every worker still running (the restore failed or was stopped)."""
    for run in runs:
        if run.pid:
            try:
                os.kill(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if run.rfd >= 0:
            os.close(run.rfd)
            run.rfd = -1
    for run in runs:
        if run.pid:
            os.waitpid(run.pid, 0)
            run.pid = 0
