"""Litestream v0.3 replicas: read (restored) as Litestream 0.5 does, never written.

A v0.3 replica (Litestream's ``v3.go``; the layout of its early ``db.go``) holds, under the
replica path, on every backend::

    generations/<gen>/snapshots/<index %08x>.snapshot.lz4        an LZ4 frame of the DB file
    generations/<gen>/wal/<index %08x>_<offset %08x>.wal.lz4     an LZ4 frame of WAL bytes

``<gen>`` is 16 lower-hex digits, a new one whenever WAL continuity broke. A WAL segment holds
the bytes at ``offset`` of WAL file number ``index`` (offset 0 starts with the WAL header).
Timestamps are the objects' mtimes / LastModified; there is no manifest.

The restore is Litestream 0.5's ``Replica.RestoreV3``: the newest snapshot of any generation
(or the newest at or before a timestamp), then that generation's WAL segments from the
snapshot's index on (created at or before the timestamp), each WAL index rebuilt from its
segments (offsets contiguous from 0) beside the database and checkpointed with
``wal_checkpoint(TRUNCATE)``. ``choose`` picks v0.3 over the LTX chain when v0.3 holds the
newer backup, as ``Replica.shouldUseV3Restore`` does. A replica client supports v0.3 when it
has ``list_objects(subdir)`` and ``open_object(path)`` (file and s3 do: the objects beside
``ltx/``, replica_client.py).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Optional

import apsw
import lz4.frame

from replication.errors import ReplicationError

GENERATIONS_DIR = "generations"
_GENERATION = re.compile(r"[0-9a-f]{16}\Z")
_SNAPSHOT = re.compile(r"([0-9a-f]{8})\.snapshot\.lz4\Z")
_WAL_SEGMENT = re.compile(r"([0-9a-f]{8})_([0-9a-f]{8,16})\.wal\.lz4\Z")
#: Bytes per read while decompressing a snapshot or a segment.
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class SnapshotV3:
    generation: str
    index: int
    size: int
    created_at: datetime

    @property
    def path(self) -> str:
        return f"{GENERATIONS_DIR}/{self.generation}/snapshots/{self.index:08x}.snapshot.lz4"


@dataclass(frozen=True)
class WALSegmentV3:
    generation: str
    index: int
    offset: int
    size: int
    created_at: datetime

    @property
    def path(self) -> str:
        return f"{GENERATIONS_DIR}/{self.generation}/wal/{self.index:08x}_{self.offset:08x}.wal.lz4"


@dataclass
class PlanV3:
    """What a v0.3 restore applies: one snapshot, then WAL segments in (index, offset) order."""

    snapshot: SnapshotV3
    segments: list = field(default_factory=list)

    @property
    def files(self) -> list:
        return [self.snapshot, *self.segments]

    @property
    def created_at(self) -> datetime:
        return max(f.created_at for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def supports_v3(client) -> bool:
    from .replica_client import ReplicaClient

    base = ReplicaClient.list_objects
    return getattr(type(client), "list_objects", base) is not base


# --- listing -----------------------------------------------------------------------------------

def generations(client) -> list[str]:
    return sorted(o.name for o in client.list_objects(GENERATIONS_DIR)
                  if o.is_dir and _GENERATION.match(o.name))


def snapshots(client, generation: str) -> list[SnapshotV3]:
    out = []
    for o in client.list_objects(f"{GENERATIONS_DIR}/{generation}/snapshots"):
        m = _SNAPSHOT.match(o.name)
        if m and not o.is_dir:
            out.append(SnapshotV3(generation, int(m.group(1), 16), o.size, o.created_at))
    return sorted(out, key=lambda s: s.index)


def wal_segments(client, generation: str) -> list[WALSegmentV3]:
    out = []
    for o in client.list_objects(f"{GENERATIONS_DIR}/{generation}/wal"):
        m = _WAL_SEGMENT.match(o.name)
        if m and not o.is_dir:
            out.append(WALSegmentV3(generation, int(m.group(1), 16), int(m.group(2), 16),
                                    o.size, o.created_at))
    return sorted(out, key=lambda s: (s.index, s.offset))


def all_snapshots(client) -> list[SnapshotV3]:
    """Every generation's snapshots, oldest first (stable: by index within a generation)."""
    found = [s for gen in generations(client) for s in snapshots(client, gen)]
    return sorted(found, key=lambda s: s.created_at)


def time_bounds(client) -> tuple[Optional[datetime], Optional[datetime]]:
    """Earliest and latest CreatedAt of every snapshot and WAL segment, or (None, None)."""
    if not supports_v3(client):
        return None, None
    stamps = [f.created_at for gen in generations(client)
              for f in (*snapshots(client, gen), *wal_segments(client, gen))]
    return (min(stamps), max(stamps)) if stamps else (None, None)


# --- plan --------------------------------------------------------------------------------------

def best_snapshot(found: list, timestamp: Optional[datetime]) -> Optional[SnapshotV3]:
    """The newest snapshot, or the newest created at or before ``timestamp``."""
    if timestamp is None:
        return found[-1] if found else None
    for snapshot in reversed(found):
        if snapshot.created_at <= timestamp:
            return snapshot
    return None


def calc_plan(client, timestamp: Optional[datetime] = None) -> Optional[PlanV3]:
    """The v0.3 restore plan, or None when the replica has no v0.3 snapshot that qualifies."""
    if not supports_v3(client):
        return None
    snapshot = best_snapshot(all_snapshots(client), timestamp)
    if snapshot is None:
        return None
    segments = [s for s in wal_segments(client, snapshot.generation)
                if s.index >= snapshot.index
                and (timestamp is None or s.created_at <= timestamp)]
    return PlanV3(snapshot, segments)


def choose(client, timestamp: Optional[datetime], ltx_latest: Optional[datetime],
           ltx_snapshot_before: Callable[[], Optional[datetime]]) -> Optional[PlanV3]:
    """The v0.3 plan when v0.3 holds the better backup (Litestream's shouldUseV3Restore), else
    None: without a timestamp the newest backup of either format wins; with one, the newest
    snapshot at or before it. ``ltx_snapshot_before()`` gives the CreatedAt of the newest LTX
    snapshot before the timestamp (called only when both formats have backups)."""
    if not supports_v3(client):
        return None
    _, v3_latest = time_bounds(client)
    if v3_latest is None:
        return None
    if ltx_latest is not None:
        if timestamp is None:
            if v3_latest <= ltx_latest:
                return None
        else:
            snapshot = best_snapshot(all_snapshots(client), timestamp)
            ltx_snapshot = ltx_snapshot_before()
            if snapshot is None or (ltx_snapshot is not None
                                    and snapshot.created_at <= ltx_snapshot):
                return None
    return calc_plan(client, timestamp)


# --- restore -----------------------------------------------------------------------------------

def write_database(client, plan: PlanV3, path: str,
                   progress: Optional[Callable[[int, int], None]] = None) -> tuple[int, int]:
    """Build the database at ``path`` from ``plan``: (page size, page count). The WAL files are
    rebuilt at ``<path>-wal`` one index at a time and checkpointed into ``path``."""
    total, done = plan.size, 0
    with open(path, "wb") as out:
        _decompress_into(client, plan.snapshot.path, out)
        out.flush()
        os.fsync(out.fileno())
    done += plan.snapshot.size
    if progress:
        progress(done, total)

    wal_path = path + "-wal"
    wal = None
    expected_index, offset = plan.snapshot.index, 0
    try:
        for segment in plan.segments:
            if segment.offset == 0:
                if wal is not None:
                    wal.close()
                    wal = None
                    _checkpoint(path)
                if segment.index != expected_index:
                    raise ReplicationError(
                        f"v0.3 replica: missing WAL index: expected "
                        f"{expected_index:08x}/00000000, got {segment.index:08x}/"
                        f"{segment.offset:08x} (generation {segment.generation})",
                        hint="the replica lost a WAL segment; restore an earlier snapshot "
                             "with -timestamp")
                wal = open(wal_path, "wb")
                offset = 0
                expected_index += 1
            elif wal is None or segment.offset != offset:
                raise ReplicationError(
                    f"v0.3 replica: missing WAL segment: expected {segment.index:08x}/"
                    f"{offset:08x}, got {segment.index:08x}/{segment.offset:08x} "
                    f"(generation {segment.generation})",
                    hint="the replica lost a WAL segment; restore an earlier snapshot with "
                         "-timestamp")
            offset += _decompress_into(client, segment.path, wal)
            done += segment.size
            if progress:
                progress(done, total)
        if wal is not None:
            wal.close()
            wal = None
            _checkpoint(path)
    finally:
        if wal is not None:
            wal.close()
        for suffix in ("-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise ReplicationError(f"v0.3 replica: snapshot {plan.snapshot.path} is not a SQLite "
                               "database")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    return page_size, os.path.getsize(path) // page_size


def _decompress_into(client, relpath: str, out) -> int:
    """Decompress one LZ4-framed object into ``out``; the number of bytes written."""
    written = 0
    src = client.open_object(relpath)
    try:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        while True:
            chunk = src.read(COPY_CHUNK)
            if not chunk:
                break
            data = decompressor.decompress(chunk)
            out.write(data)
            written += len(data)
        if not decompressor.eof:
            raise ReplicationError(f"v0.3 replica: {relpath} is truncated (the LZ4 frame "
                                   "does not end)")
    except RuntimeError as e:  # lz4's error for a damaged frame
        raise ReplicationError(f"v0.3 replica: {relpath} is not a valid LZ4 frame: {e}") from e
    finally:
        src.close()
    return written


def _checkpoint(path: str) -> None:
    """Apply ``<path>-wal`` to ``path`` (what Litestream's checkpointV3 does)."""
    conn = apsw.Connection(path)
    try:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        if busy:
            raise ReplicationError(f"v0.3 restore: the checkpoint of {path}-wal was blocked")
    finally:
        conn.close()
