"""The replica-client seam: where LTX files live (Litestream's ``ReplicaClient``).

A replica is nothing but LTX files keyed by (level, min TXID, max TXID); there is no manifest,
no generation and no position object (§2.3). A backend therefore needs only seven operations:
``init``, ``ltx_files``, ``open_ltx_file``, ``write_ltx_file``, ``delete_ltx_files``,
``delete_all`` and ``close``. Everything above it — restore, compaction, retention, the upload
loop — is backend-agnostic.

Backends register under their URL scheme with :func:`register_client`; build one with
:func:`client_from_url` or :func:`client_from_config`. Each backend operation is counted in
Litestream's replica metrics (:mod:`replication.metrics`) by :meth:`ReplicaClient._operation`.
"""
from __future__ import annotations

import abc
import importlib
import io
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, BinaryIO, Callable, ClassVar, Iterable, Iterator
from urllib.parse import urlsplit

from . import ltx, metrics
from .errors import ReplicaClientError, ReplicationError

if TYPE_CHECKING:  # pragma: no cover
    from .config import ReplicaConfig

#: Level of full-database snapshots (``SnapshotLevel``); 1..8 are compaction levels.
SNAPSHOT_LEVEL = 9
MAX_LEVEL = 9

#: Bytes read from the end of a file to find its page index in one request (Litestream's
#: ``DefaultEstimatedPageIndexSize``); a second range read follows only for huge indexes.
ESTIMATED_PAGE_INDEX_SIZE = 32 * 1024

#: Operation labels of the replica metrics (``internal/internal.go``).
GET, PUT, DELETE, LIST = "GET", "PUT", "DELETE", "LIST"

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --- errors ------------------------------------------------------------------------------------

class NotFoundError(ReplicaClientError):
    """The requested LTX file does not exist on the replica."""

    code = "NotFound"
    retryable = False


class AccessDeniedError(ReplicaClientError):
    """The backend refused our credentials or permissions (S3 403). Retrying will not help."""

    code = "AccessDenied"
    retryable = False


class BucketNotFoundError(ReplicaClientError):
    """The configured bucket does not exist. Retrying will not help."""

    code = "NoSuchBucket"
    retryable = False


class ConflictError(ReplicaClientError):
    """An exclusive write found the file already there with other bytes: another writer is
    using this replica path. Retrying will not help; stopping is the only safe move."""

    code = "Conflict"
    retryable = False

    #: The hint every conflict carries.
    HINT = ("run one replicator per replica path; stop the other server, or point this one "
            "at its own path")


class UnreachableError(ReplicaClientError):
    """The backend could not be reached within our bounded retries (may recover later)."""

    code = "Unreachable"
    retryable = True


# --- layout helpers ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FileInfo:
    """One LTX file on a replica (``ltx.FileInfo``)."""

    level: int
    min_txid: int
    max_txid: int
    size: int                # bytes
    created_at: datetime     # UTC-aware: mtime (file), LastModified or metadata (S3)

    @property
    def filename(self) -> str:
        return ltx.format_filename(self.min_txid, self.max_txid)


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of a listing of the objects beside ``ltx/`` (``list_objects``): Litestream
    v0.3 generations, our lineage records."""

    name: str
    size: int                  # bytes
    created_at: datetime       # UTC-aware: mtime (file) or LastModified (S3)
    is_dir: bool = False


def ms_to_datetime(timestamp_ms: int) -> datetime:
    """LTX header Timestamp (ms since the epoch) as an exact UTC datetime."""
    return EPOCH + timedelta(milliseconds=timestamp_ms)


def datetime_to_ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def format_rfc3339_nano(dt: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: fraction without trailing zeros (dropped if zero), ``Z``."""
    dt = dt.astimezone(timezone.utc)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 timestamp (any fraction length, ``Z`` or offset) as a UTC datetime."""
    value = value.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    head, sep, rest = value.partition(".")
    if sep:  # fromisoformat wants at most 6 fraction digits before the zone
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = head + "." + rest[:min(digits, 6)] + rest[digits:]
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def ltx_level_dir(root: str, level: int) -> str:
    """``<root>/ltx/<level>``: the level directory of every backend except S3/OSS (§2.1)."""
    return f"{root.rstrip('/') or '/'}/ltx/{level}".replace("//", "/")


def ltx_file_path(root: str, level: int, min_txid: int, max_txid: int) -> str:
    return f"{ltx_level_dir(root, level)}/{ltx.format_filename(min_txid, max_txid)}"


def check_level(level: int) -> int:
    if not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
        raise ReplicationError(f"invalid LTX level {level!r}", hint="levels are 0..9 (9 = snapshots)")
    return level


def as_bytes_source(data: bytes | bytearray | memoryview | BinaryIO) -> BinaryIO:
    """A readable binary file over ``data`` (bytes are wrapped, files returned as they are)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data)
    return data


# --- the seam ----------------------------------------------------------------------------------

class ReplicaClient(abc.ABC):
    """A place that stores one database's LTX files (one "replica")."""

    #: Replica type, as in ``type:`` of litestream.yml and the ``replica_type`` metric label.
    type: ClassVar[str] = ""
    #: Ranges of one file a restore reads at once (:class:`RangeReader`); 1 reads it whole.
    #: Only backends where one stream is slower than several set more.
    restore_parallelism: ClassVar[int] = 1

    def init(self) -> None:
        """Prepare the client (connect, create directories). Idempotent; optional to call."""

    @abc.abstractmethod
    def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> Iterator[FileInfo]:
        """Files of ``level`` with ``min_txid >= seek``, ordered by (min_txid, max_txid).

        Names that are not ``<16 hex>-<16 hex>.ltx`` are ignored. ``use_metadata`` asks for
        exact timestamps (S3: HEAD each object for ``litestream-timestamp``), which point-in-time
        restores need; plain listings may use cheaper ones.
        """

    @abc.abstractmethod
    def open_ltx_file(self, level: int, min_txid: int, max_txid: int,
                      offset: int = 0, size: int = 0) -> BinaryIO:
        """A streaming reader of ``size`` bytes at ``offset`` (size 0 = to the end).

        Raises :class:`NotFoundError` when the file does not exist. The caller closes it.
        """

    @abc.abstractmethod
    def write_ltx_file(self, level: int, min_txid: int, max_txid: int,
                       data: bytes | BinaryIO, timestamp_ms: int, *,
                       exclusive: bool = False) -> FileInfo:
        """Store one LTX file atomically; ``timestamp_ms`` is its header Timestamp.

        Readers never see a partial file: they see the old state or the whole new file.
        ``exclusive`` (used for L0 uploads): create only if absent; an existing file with the
        same bytes is success (our own retried upload), other bytes raise :class:`ConflictError`
        — two writers on one replica path must never interleave TXIDs silently.
        """

    @abc.abstractmethod
    def delete_ltx_files(self, infos: Iterable[FileInfo]) -> None:
        """Delete the given files; files already gone are not an error."""

    @abc.abstractmethod
    def delete_all(self) -> None:
        """Delete every LTX file of this replica (``litestream reset`` of the remote side)."""

    # Objects beside ``ltx/``, which Litestream 0.5 never reads: v0.3 generations (v3.py, read
    # only) and our lineage records (lineage.py). Optional for a backend: without them, v0.3
    # restores and lineage records are not available on it.

    def list_objects(self, subdir: str) -> list[ObjectInfo]:
        """The entries of ``<replica>/<subdir>`` (none when it is missing)."""
        raise _no_objects(self, "list")

    def open_object(self, relpath: str) -> BinaryIO:
        """A reader of the object ``<replica>/<relpath>``; ReplicaClientError when missing."""
        raise _no_objects(self, "open")

    def write_object(self, relpath: str, data: bytes) -> None:
        """Store a small object ``<replica>/<relpath>`` atomically (replacing one of that name)."""
        raise _no_objects(self, "write")

    def close(self) -> None:
        """Release connections and threads. The client is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- instrumentation ------------------------------------------------------------------------

    @contextmanager
    def _operation(self, operation: str):
        """Count one backend operation in the replica metrics.

        Yields a one-element list; the body adds the bytes it moved to ``[0]``. An exception
        counts as an error with its ``code`` (S3 error code, errno name or exception class).
        """
        moved = [0]
        start = time.perf_counter()
        labels = (self.type, operation)
        try:
            yield moved
        except BaseException as e:
            if not isinstance(e, (GeneratorExit, KeyboardInterrupt)):
                code = getattr(e, "code", None) or type(e).__name__
                metrics.replica_operation_errors_total.labels(*labels, str(code)).inc()
            raise
        else:
            metrics.replica_operation_total.labels(*labels).inc()
            if moved[0]:
                metrics.replica_operation_bytes.labels(*labels).inc(moved[0])
        finally:
            metrics.replica_operation_duration_seconds.labels(*labels).observe(
                time.perf_counter() - start)

    @staticmethod
    def _filter_sorted(infos: Iterable[FileInfo], seek: int) -> list[FileInfo]:
        return sorted((i for i in infos if i.min_txid >= seek),
                      key=lambda i: (i.min_txid, i.max_txid))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url if hasattr(self, 'url') else ''}>"


def _no_objects(client: ReplicaClient, verb: str) -> ReplicaClientError:
    return ReplicaClientError(
        f"{client.type}: this backend cannot {verb} objects beside ltx/",
        hint="v0.3 restores and lineage records (positions that name a history) need a "
             "backend with list_objects, open_object and write_object, as file and s3 have")


# --- registry ----------------------------------------------------------------------------------

_CLIENT_TYPES: dict[str, type[ReplicaClient]] = {}

#: Modules holding the built-in backends, imported on first lookup (boto3 is slow to import).
_BUILTIN_BACKENDS = {
    "file": "replication.file_replica_client",
    "s3": "replication.s3_replica_client",
}

#: Types Litestream knows but this project does not implement (for a precise error).
_LITESTREAM_ONLY_TYPES = ("gs", "abs", "sftp", "webdav", "webdavs", "nats", "oss")


def register_client(scheme: str) -> Callable[[type[ReplicaClient]], type[ReplicaClient]]:
    """Class decorator: make ``cls`` the backend of ``scheme``.

    The class implements ``from_url(url, **overrides)`` and ``from_config(replica_config)``.
    """
    def decorator(cls: type[ReplicaClient]) -> type[ReplicaClient]:
        _CLIENT_TYPES[scheme] = cls
        if not cls.type:
            cls.type = scheme
        return cls
    return decorator


def supported_schemes() -> list[str]:
    return sorted(set(_CLIENT_TYPES) | set(_BUILTIN_BACKENDS))


def client_class(scheme: str) -> type[ReplicaClient]:
    """The backend class for ``scheme``; ReplicationError naming the supported ones."""
    scheme = (scheme or "").lower()
    if scheme not in _CLIENT_TYPES and scheme in _BUILTIN_BACKENDS:
        importlib.import_module(_BUILTIN_BACKENDS[scheme])
    try:
        return _CLIENT_TYPES[scheme]
    except KeyError:
        supported = ", ".join(supported_schemes())
        what = "is a Litestream replica type this server does not implement" \
            if scheme in _LITESTREAM_ONLY_TYPES else "is not a known replica type"
        raise ReplicationError(f"replica type {scheme!r} {what}",
                               hint=f"supported replica types: {supported}") from None


def replica_url_scheme(url: str) -> str:
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ReplicationError(f"replica URL {url!r} has no scheme",
                               hint=f"use one of: {', '.join(s + '://' for s in supported_schemes())}")
    return scheme


def client_from_url(url: str, **overrides) -> ReplicaClient:
    """A client for a replica URL such as ``s3://bucket/db?endpoint=…`` or ``file:///backups/db``.

    ``overrides`` are backend settings (``endpoint=``, ``access_key_id=``, …) that win over
    the URL and the environment.
    """
    return client_class(replica_url_scheme(url)).from_url(url, **overrides)


def client_from_config(replica_config: "ReplicaConfig") -> ReplicaClient:
    """A client for one ``replica:`` section of litestream.yml (:class:`config.ReplicaConfig`)."""
    kind = replica_url_scheme(replica_config.url) if replica_config.url else (replica_config.type or "file")
    return client_class(kind).from_config(replica_config)


# --- whole-file reads ----------------------------------------------------------------------

def read_whole_ltx_file(client: ReplicaClient, info: FileInfo) -> bytes:
    """One replica file's bytes, checked before they are used: as long as the listing says,
    and a whole LTX file (decoded, checksummed).

    A read shorter than the listing is read again (``SHORT_READ_ATTEMPTS``): a store can
    answer a GET with a cut body, and comparing or copying it as it came would call a good
    replica diverged or plant a truncated file in the meta dir. A file as long as its listing
    that does not decode is damaged: that fails at once.
    """
    from .defaults import SHORT_READ_ATTEMPTS, SHORT_READ_BACKOFF

    name = f"L{info.level}/{info.filename}"
    for attempt in range(1, SHORT_READ_ATTEMPTS + 1):
        try:
            data = _read_all(client.open_ltx_file(info.level, info.min_txid, info.max_txid))
        except ReplicaClientError:
            if attempt == SHORT_READ_ATTEMPTS:
                raise
        else:
            if len(data) >= info.size or attempt == SHORT_READ_ATTEMPTS:
                ltx.verify(data, name)
                return data
        time.sleep(SHORT_READ_BACKOFF * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# --- page-level reads (§2.7, used by the VFS-style readers) ----------------------------------

def _read_all(f: BinaryIO) -> bytes:
    try:
        return f.read()
    finally:
        f.close()


def fetch_ltx_header(client: ReplicaClient, level: int, min_txid: int, max_txid: int) -> "ltx.Header":
    """The 100-byte LTX header of one file, by a single range read."""
    data = _read_all(client.open_ltx_file(level, min_txid, max_txid, 0, ltx.HEADER_SIZE))
    return ltx.Header.unmarshal(data, ltx.format_filename(min_txid, max_txid))


def fetch_page_index(client: ReplicaClient, info: FileInfo) -> dict[int, tuple[int, int]]:
    """``{pgno: (frame offset, frame size)}`` of one file, read from its tail (§1.3)."""
    name = f"L{info.level}/{info.filename}"
    size = info.size
    tail_size = min(size, ESTIMATED_PAGE_INDEX_SIZE)
    tail = _read_all(client.open_ltx_file(info.level, info.min_txid, info.max_txid,
                                          size - tail_size, tail_size))
    if len(tail) < ltx.TRAILER_SIZE + 8:
        raise ReplicaClientError(f"{name}: short read of the page index ({len(tail)} bytes)")
    index_len = int.from_bytes(tail[-ltx.TRAILER_SIZE - 8:-ltx.TRAILER_SIZE], "big")
    start = size - ltx.TRAILER_SIZE - 8 - index_len
    if start <= size - tail_size and tail_size < size:
        # The index starts before our buffer: read exactly index + length + trailer.
        if start < ltx.HEADER_SIZE:
            raise ReplicaClientError(f"{name}: page index length {index_len} exceeds the file")
        tail = _read_all(client.open_ltx_file(info.level, info.min_txid, info.max_txid,
                                              start, size - start))
    return ltx.decode_page_index(tail, name)


def fetch_page(client: ReplicaClient, level: int, min_txid: int, max_txid: int,
               offset: int, size: int, page_size: int) -> tuple[int, bytes]:
    """Read and decode one page frame by its index entry: ``(pgno, page bytes)``."""
    frame = _read_all(client.open_ltx_file(level, min_txid, max_txid, offset, size))
    return ltx.decode_page_frame(frame, page_size, f"L{level}/{ltx.format_filename(min_txid, max_txid)}")
