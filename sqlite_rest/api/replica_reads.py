"""Reads on a read replica (``--db-dsn 'file:app.db?vfs=litestream&replica_url=…'``).

Every answer names the position it read (``X-Replication-Txid``: the TXID of the read
transaction's snapshot, read inside that transaction, so it is exactly what was served).

- ``X-Replication-Min-Txid: <TXID>[@<lineage>]`` (what a write on the primary answered): the
  read waits until the replica has that position, polling it at once instead of at the next
  tick, for at most ``--replica-wait-timeout``; then 503 with ``Retry-After``. A position whose
  lineage the replica's history abandoned (the write was lost by a restore of the primary) is
  409 at once (positions.py, replication/lineage.py).
- ``X-Replication-As-Of: <RFC 3339 time | TXID>``: the database as it was then (the VFS's time
  travel); a TXID is the 16 hex digits of ``X-Replication-Txid`` and must be a state the
  replica keeps (not one inside a compacted file). A point the replica does not hold is 404.
"""
from __future__ import annotations

import fcntl
import math
import mmap
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from replication.errors import TxNotAvailableError
from replication.primary import (replica_catch_up, replica_position_state,  # noqa: F401
                                 replica_set_time, replica_txid)

from ..errors import api_error
from .positions import format_txid, parse_position

#: Environment variable naming the file that holds a replica server's read floor.
REPLICA_FLOOR_ENV = "SQLITEREST_REPLICA_FLOOR"
#: Seconds a read waits for its connection to reach the floor (another worker polled first).
FLOOR_WAIT = 1.0

MIN_TXID_HEADER = "HTTP_X_REPLICATION_MIN_TXID"
AS_OF_HEADER = "HTTP_X_REPLICATION_AS_OF"


def _parse_as_of(text: str) -> datetime | int:
    """A TXID (exactly 16 hex digits, as X-Replication-Txid: nothing else is read as one, so
    no time is ever taken for a TXID) or an RFC 3339 time."""
    text = text.strip()
    if len(text) == 16:
        try:
            return int(text, 16)
        except ValueError:
            pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise api_error("query_parse",
                        message=f"X-Replication-As-Of: {text[:60]!r} is not an RFC 3339 time "
                                "nor a TXID",
                        hint="e.g. X-Replication-As-Of: 2026-12-05T12:00:00Z, or the 16 hex "
                             "digits of an X-Replication-Txid") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class ReadFloor:
    """The highest position any worker of this server has served (8 bytes in a file the
    supervisor names, shared by every worker process).

    Each connection follows the replica on its own poller, so two workers (or two threads)
    can be a poll apart: without a floor, a client's next read could land on a connection one
    TXID behind the one that answered its previous read, and see time go backwards. A read
    first brings its connection up to the floor (polling at once), then raises the floor to
    what it read; the read-modify-write is under an flock so two raises cannot lower it."""

    def __init__(self, path: str | None):
        self._fd = self._map = None
        if path:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.fstat(self._fd).st_size < 8:
                os.ftruncate(self._fd, 8)  # zeros: floor 0 (a shorter file is only extended)
            # Read through a shared mapping: no system call per request (each one would hand
            # the GIL to another thread and wait to get it back).
            self._map = mmap.mmap(self._fd, 8)

    def get(self) -> int:
        if self._map is None:
            return 0
        return int.from_bytes(self._map[:8], "big")

    def raise_to(self, txid: int) -> None:
        if self._map is None or txid <= self.get():
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if txid > self.get():
                self._map[:8] = txid.to_bytes(8, "big")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


_floor: ReadFloor | None = None


def read_floor() -> ReadFloor:
    global _floor
    if _floor is None:
        _floor = ReadFloor(os.environ.get(REPLICA_FLOOR_ENV))
    return _floor


@contextmanager
def replica_snapshot(state, environ, conn) -> Iterator[list]:
    """Around one read on a replica connection: waits for X-Replication-Min-Txid, applies
    X-Replication-As-Of, and yields a list that holds, once the read ran inside the
    transaction, the position it read (``[txid]``)."""
    min_txid = environ.get(MIN_TXID_HEADER)
    if min_txid is not None:
        wanted, lineage = parse_position(min_txid, "X-Replication-Min-Txid")
        timeout = state.config.replica_wait_timeout
        if lineage is not None:  # a position known lost needs no wait
            _refuse_lost_position(conn, wanted, lineage, listing=False)
        if not replica_catch_up(conn, wanted, timeout):
            raise api_error("replica_behind", txid=format_txid(wanted),
                            details=f"the replica is at {format_txid(replica_txid(conn))}; "
                                    f"waited {timeout:g} s",
                            headers={"Retry-After": str(max(1, math.ceil(timeout)))})
        if lineage is not None:
            _refuse_lost_position(conn, wanted, lineage, listing=True)
    as_of = environ.get(AS_OF_HEADER)
    floor = read_floor()
    if as_of is None:
        behind = floor.get()
        if behind and replica_txid(conn) < behind:
            replica_catch_up(conn, behind, FLOOR_WAIT)
    if as_of is not None:
        when = _parse_as_of(as_of)
        try:
            replica_set_time(conn, when)
        except TxNotAvailableError:
            raise api_error("replica_point_unavailable", when=as_of.strip()[:60]) from None
    position: list = []
    try:
        yield position
        if as_of is None and position:
            floor.raise_to(int(position[0], 16))
    finally:
        if as_of is not None:
            replica_set_time(conn, None)  # the next request of this thread reads the latest


def _refuse_lost_position(conn, txid: int, lineage: str, *, listing: bool) -> None:
    """409 for a position whose write the replica's history no longer holds (its primary was
    restored from the replica before uploading it) or, once the replica reached its TXID, for
    a lineage the replica never recorded (lineage.py)."""
    found, replaced_by = replica_position_state(conn, txid, lineage, listing=listing)
    position = f"{format_txid(txid)}@{lineage}"
    if found == "lost":
        raise api_error("position_lost", position=position,
                        details=f"the primary was restored at TXID "
                                f"{format_txid(replaced_by.after_txid)} before this write "
                                f"reached its replica; the history continues as lineage "
                                f"{replaced_by.id}")
    if found == "unknown" and listing:
        raise api_error("position_lost", position=position,
                        details=f"the replica holds no lineage {lineage}: the position comes "
                                "from another database, or from a replica since deleted")


def refuse_write(config, verb: str, details: str, what: str = "send writes to"):
    """405 25006 for a write on a read replica, naming --primary-url when it is known."""
    primary = config.primary_url
    raise api_error("read_only", verb=verb, details=details,
                    hint=f"This server is a read replica; {what} the primary at {primary}"
                    if primary else None)
