"""The ``file`` replica backend: LTX files in a local (or mounted) directory.

Layout (§2.1): ``<path>/ltx/<level in decimal>/<min>-<max>.ltx`` — the same as Litestream's,
so either tool restores the other's replica. A file's mtime is its LTX header timestamp and
is what listings report as CreatedAt (point-in-time restores depend on it).
"""
from __future__ import annotations

import errno
import io
import os
import shutil
from datetime import timedelta
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import urlsplit, unquote

from . import ltx
from .errors import ReplicaClientError, ReplicationError
from .replica_client import (
    DELETE, EPOCH, GET, LIST, PUT, ConflictError, FileInfo, NotFoundError, ObjectInfo,
    ReplicaClient, as_bytes_source, check_level,
    ltx_file_path, ltx_level_dir, ms_to_datetime, register_client,
)

_COPY_CHUNK = 1 << 20  # bytes per read when copying a file-like source


class _RangeReader(io.RawIOBase):
    """A read-only file object over ``remaining`` bytes of an open file (a local range read)."""

    def __init__(self, f: BinaryIO, remaining: int):
        super().__init__()
        self._f = f
        self._remaining = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._remaining <= 0:
            return 0
        view = memoryview(b)[:self._remaining]
        n = self._f.readinto(view)
        self._remaining -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _ReplicaFile(io.BufferedReader):
    """A replica file opened for reading whose read errors are ReplicaClientError, as every
    other failure of this client is (and as an S3 body's are): a whole-file reader then reads
    it again, and the error names the replica file. (A plain file's EIO reached the restore
    as an OSError, which failed at once as "cannot write <output>.tmp": the fault sweep,
    tests/test_fault_sweep.py.) ``fileno`` stays the file's: a big local file is still decoded
    in worker processes (parallel_decode.local_fd)."""

    def __init__(self, raw, path: str):
        super().__init__(raw)  # the default buffer, as open(path, "rb") had
        self._path = path

    def read(self, n: int | None = -1) -> bytes:
        try:
            return super().read(n)
        except OSError as e:
            raise _os_error(e, f"read {self._path}") from e

    def readinto(self, b) -> int:
        try:
            return super().readinto(b)
        except OSError as e:
            raise _os_error(e, f"read {self._path}") from e


class _SourceReadError(Exception):
    """What is being uploaded could not be read: not the replica's fault (its hint is about
    the replica directory). The fault sweep saw a local L0 file's EIO reported as "file
    replica: write <replica path>", sending the reader to the wrong disk."""

    def __init__(self, error: ReplicaClientError):
        super().__init__(str(error))
        self.error = error


def _read_source(src, path: str) -> bytes:
    try:
        return src.read(_COPY_CHUNK)
    except OSError as e:
        name = getattr(src, "name", None)
        what = f"{name}" if isinstance(name, str) else "the data to upload"
        raise _SourceReadError(ReplicaClientError(
            f"file replica: reading {what} to upload it as {path}: {e.strerror or e}",
            hint="the local file being uploaded cannot be read (e.g. an L0 file of the meta "
                 "dir): check that disk")) from e


def _os_error(e: OSError, what: str) -> ReplicaClientError:
    err = ReplicaClientError(f"file replica: {what}: {e.strerror or e}",
                             hint="check that the replica directory exists, is writable and has free space")
    err.code = errno.errorcode.get(e.errno or 0, type(e).__name__)
    return err


@register_client("file")
class FileReplicaClient(ReplicaClient):
    type = "file"

    def __init__(self, path: str):
        if not path:
            raise ReplicationError("file replica: path required", hint="set `path:` or use file:///abs/path")
        self.path = os.path.abspath(os.path.expanduser(path))
        self.url = f"file://{self.path}"

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides) -> "FileReplicaClient":
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise ReplicationError(f"not a file URL: {url!r}")
        if parts.netloc not in ("", "localhost"):
            # file://work/x names host "work": Litestream then silently finds nothing (§10).
            raise ReplicationError(f"file replica URL {url!r} has a host part ({parts.netloc!r})",
                                   hint="use an absolute path with three slashes: file:///abs/path")
        path = overrides.pop("path", None) or os.path.normpath(unquote(parts.path))
        return cls(path)

    @classmethod
    def from_config(cls, rc) -> "FileReplicaClient":
        if rc.url:
            return cls.from_url(rc.url, **({"path": rc.path} if rc.path else {}))
        return cls(rc.path)

    # -- paths ----------------------------------------------------------------------------------

    def level_dir(self, level: int) -> str:
        return ltx_level_dir(self.path, check_level(level))

    def file_path(self, level: int, min_txid: int, max_txid: int) -> str:
        return ltx_file_path(self.path, check_level(level), min_txid, max_txid)

    # -- the seven operations -------------------------------------------------------------------

    def init(self) -> None:
        with self._operation(PUT):
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as e:
                raise _os_error(e, f"create {self.path}") from e

    def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> Iterator[FileInfo]:
        with self._operation(LIST):
            infos = []
            try:
                entries = os.scandir(self.level_dir(level))
            except FileNotFoundError:
                return iter(())
            except OSError as e:
                raise _os_error(e, f"list level {level}") from e
            with entries:
                for entry in entries:
                    txids = ltx.parse_filename(entry.name)
                    if txids is None or txids[0] < seek:
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # deleted by retention meanwhile
                        continue
                    created = EPOCH + timedelta(microseconds=st.st_mtime_ns // 1000)
                    infos.append(FileInfo(level, txids[0], txids[1], st.st_size, created))
            return iter(self._filter_sorted(infos, seek))

    # -- objects beside ltx/ (v0.3 generations: v3.py; lineage records: lineage.py) --------

    def list_objects(self, subdir: str) -> list:
        """The entries of ``<path>/<subdir>`` (none when it is missing)."""
        out = []
        with self._operation(LIST):
            try:
                entries = os.scandir(os.path.join(self.path, subdir))
            except (FileNotFoundError, NotADirectoryError):
                return out
            except OSError as e:
                raise _os_error(e, f"list {subdir}") from e
            with entries:
                for entry in entries:
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    created = EPOCH + timedelta(microseconds=st.st_mtime_ns // 1000)
                    out.append(ObjectInfo(entry.name, st.st_size, created, entry.is_dir()))
        return out

    def open_object(self, relpath: str) -> BinaryIO:
        path = os.path.join(self.path, relpath)
        with self._operation(GET):
            try:
                return open(path, "rb")
            except FileNotFoundError:
                raise ReplicaClientError(f"file: {relpath} not found in {self.path}") from None
            except OSError as e:
                raise _os_error(e, f"open {relpath}") from e

    def write_object(self, relpath: str, data: bytes) -> None:
        path = os.path.join(self.path, relpath)
        directory = os.path.dirname(path)
        with self._operation(PUT) as moved:
            try:
                os.makedirs(directory, exist_ok=True)
                with open(path + ".tmp", "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(path + ".tmp", path)
                _fsync_dir(directory)
            except OSError as e:
                _remove_quietly(path + ".tmp")
                raise _os_error(e, f"write {path}") from e
            moved[0] = len(data)

    def open_ltx_file(self, level: int, min_txid: int, max_txid: int,
                      offset: int = 0, size: int = 0) -> BinaryIO:
        path = self.file_path(level, min_txid, max_txid)
        with self._operation(GET) as moved:
            try:
                f = _ReplicaFile(open(path, "rb", buffering=0), path)
            except FileNotFoundError:
                raise NotFoundError(f"file replica: L{level}/{ltx.format_filename(min_txid, max_txid)} "
                                    f"not found in {self.path}") from None
            except OSError as e:
                raise _os_error(e, f"open {path}") from e
            try:
                total = os.fstat(f.fileno()).st_size
                if offset:
                    f.seek(offset)
                length = max(0, total - offset) if size == 0 else min(size, max(0, total - offset))
            except BaseException:
                f.close()
                raise
            moved[0] = length
            if offset == 0 and length == total:
                return f  # the whole file: a plain buffered file is the fastest reader
            return io.BufferedReader(_RangeReader(f, length))

    def write_ltx_file(self, level: int, min_txid: int, max_txid: int,
                       data: bytes | BinaryIO, timestamp_ms: int, *,
                       exclusive: bool = False) -> FileInfo:
        path = self.file_path(level, min_txid, max_txid)
        directory = os.path.dirname(path)
        tmp = path + ".tmp"
        with self._operation(PUT) as moved:
            try:
                os.makedirs(directory, exist_ok=True)
                size = 0
                with open(tmp, "wb") as out:
                    if isinstance(data, (bytes, bytearray, memoryview)):
                        out.write(data)
                        size = len(data)
                    else:
                        src = as_bytes_source(data)
                        while chunk := _read_source(src, path):
                            out.write(chunk)
                            size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                # mtime before the rename: a listed file always has its final timestamp.
                os.utime(tmp, ns=(timestamp_ms * 1_000_000, timestamp_ms * 1_000_000))
                if exclusive:
                    _link_exclusive(tmp, path)
                else:
                    os.replace(tmp, path)
                _fsync_dir(directory)
            except _SourceReadError as e:
                _remove_quietly(tmp)
                raise e.error from e.__cause__
            except OSError as e:
                _remove_quietly(tmp)
                raise _os_error(e, f"write {path}") from e
            moved[0] = size
        return FileInfo(level, min_txid, max_txid, size, ms_to_datetime(timestamp_ms))

    def delete_ltx_files(self, infos: Iterable[FileInfo]) -> None:
        infos = list(infos)
        if not infos:
            return
        with self._operation(DELETE):
            dirs = set()
            for info in infos:
                path = self.file_path(info.level, info.min_txid, info.max_txid)
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise _os_error(e, f"delete {path}") from e
                dirs.add(os.path.dirname(path))
            for d in dirs:
                _fsync_dir(d, missing_ok=True)

    def delete_all(self) -> None:
        with self._operation(DELETE):
            try:
                shutil.rmtree(os.path.join(self.path, "ltx"))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _os_error(e, f"remove {self.path}/ltx") from e


def _link_exclusive(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (link(2) fails on an existing
    name, rename(2) would replace it). Same bytes already there = our own earlier attempt."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(tmp, "rb") as mine, open(path, "rb") as theirs:
            same = mine.read() == theirs.read()
        _remove_quietly(tmp)
        if not same:
            raise ConflictError(
                f"file: {path} already exists with other content: another writer uses this "
                f"replica path", hint=ConflictError.HINT) from None
        return
    _remove_quietly(tmp)


def _fsync_dir(directory: str, missing_ok: bool = False) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
