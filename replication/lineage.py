"""Lineages: which history a TXID belongs to (design/read-replicas.md, "Positions and their
identity").

A TXID alone does not name a state. A primary killed before it uploaded TXID 4, restored from
its replica at 3, writes a *different* TXID 4; a client holding the lost write's position 4
would be told a replica has it. So every local history carries a **lineage**: a random id,
begun whenever the local database was not carried forward by the replicator itself (a new
database, a restore, a database whose meta dir was lost or replaced), with the TXID it began
after. Before any LTX file of a new lineage is uploaded, its record is stored beside ``ltx/``::

    lineage/<created, ms since the epoch, 16 hex>-<began after TXID, 16 hex>-<id, 16 hex>

Names sort in creation order, and a listing is the replica's whole history of lineages (never
deleted: ``reset-replica`` keeps them, so positions of the deleted history read as lost).
Litestream never reads this directory, so replicas stay what Litestream 0.5 reads and writes.

A position ``<txid>@<lineage>`` (the primary's ``X-Replication-Position``) is **lost** when a
lineage recorded after its own began after a lower TXID: that restore did not hold the write.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

#: Directory of the lineage records, beside ``ltx/`` on the replica.
LINEAGE_DIR = "lineage"
#: File in the meta dir holding the local history's lineage.
LOCAL_LINEAGE_FILE = "sqlite-rest.lineage"
#: Environment variable giving a primary's HTTP workers the lineage of their writes.
LINEAGE_ENV = "SQLITEREST_LINEAGE"

OK, LOST, UNKNOWN = "ok", "lost", "unknown"


@dataclass(frozen=True)
class Lineage:
    id: str              # 16 lower-hex digits, random
    after_txid: int      # the history began after this TXID (0: a new database)
    created_ms: int      # when it began (orders the records)

    @classmethod
    def begin(cls, after_txid: int) -> "Lineage":
        return cls(os.urandom(8).hex(), after_txid, int(time.time() * 1000))

    @property
    def record_name(self) -> str:
        return f"{self.created_ms:016x}-{self.after_txid:016x}-{self.id}"

    @classmethod
    def from_record_name(cls, name: str) -> Optional["Lineage"]:
        parts = name.split("-")
        if len(parts) != 3 or any(len(p) != 16 for p in parts):
            return None
        try:
            created, after = int(parts[0], 16), int(parts[1], 16)
            int(parts[2], 16)
        except ValueError:
            return None
        return cls(parts[2], after, created)


def parse_id(text: str) -> Optional[str]:
    """A lineage id as a position carries it (16 hex digits), or None."""
    text = text.strip().lower()
    if len(text) != 16:
        return None
    try:
        int(text, 16)
    except ValueError:
        return None
    return text


# -- the replica's side -----------------------------------------------------------------------

def _as_json(lineage: Lineage) -> str:
    """The body of a record, and the local file: the name's fields, for people."""
    return json.dumps({"id": lineage.id, "after_txid": f"{lineage.after_txid:016x}",
                       "created_ms": lineage.created_ms})


def upload(client, lineage: Lineage) -> None:
    client.write_object(f"{LINEAGE_DIR}/{lineage.record_name}", _as_json(lineage).encode())


def history(client) -> list[Lineage]:
    """The replica's lineages, oldest first (one LIST)."""
    found = (Lineage.from_record_name(o.name) for o in client.list_objects(LINEAGE_DIR)
             if not o.is_dir)
    return sorted((x for x in found if x is not None), key=lambda x: (x.created_ms, x.id))


def position_state(lineages: list[Lineage], txid: int, lineage_id: str) -> tuple[str, Optional[Lineage]]:
    """Whether position ``txid@lineage_id`` still belongs to the replica's history: (OK, None),
    (UNKNOWN, None) when no record names the lineage, or (LOST, the lineage that replaced it)."""
    for i, entry in enumerate(lineages):
        if entry.id == lineage_id:
            for later in lineages[i + 1:]:
                if later.after_txid < txid:
                    return LOST, later
            return OK, None
    return UNKNOWN, None


class HistoryCache:
    """A replica's lineages as one process last listed them, for position checks.

    A cached "lost" stays true (records are never deleted). A cached "ok" is only trusted when
    the listing started after this process first saw its current view: a lineage's record is
    uploaded before its first LTX file, so a listing made after a view was listed names every
    lineage that view's files belong to. Otherwise, and for an unknown lineage, list again —
    one LIST per new view that a position check meets, none while idle."""

    def __init__(self):
        self._mu = threading.Lock()
        self._lineages: list[Lineage] = []
        self._listed_at: Optional[float] = None   # monotonic start of the last listing
        self._view_txid = -1
        self._view_seen_at = 0.0

    def state(self, client, txid: int, lineage_id: str, view_txid: int, *,
              listing: bool = True) -> tuple[str, Optional[Lineage]]:
        """``position_state`` against the records; ``listing=False`` answers from the cache
        alone (UNKNOWN when it cannot be trusted)."""
        with self._mu:
            if view_txid != self._view_txid:
                self._view_txid, self._view_seen_at = view_txid, time.monotonic()
            found = position_state(self._lineages, txid, lineage_id)
            if found[0] == LOST or (found[0] == OK and self._listed_at is not None
                                    and self._listed_at >= self._view_seen_at):
                return found
            if not listing:
                return UNKNOWN, None
            started = time.monotonic()
            self._lineages, self._listed_at = history(client), started
            return position_state(self._lineages, txid, lineage_id)


_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def history_cache(client) -> HistoryCache:
    """The process's cache of the lineages on the replica ``client`` reads (one per client:
    the VFS shares one per replica, already connected, so the first check pays no setup)."""
    with _caches_lock:
        cache = _caches.get(client)
        if cache is None:
            cache = _caches[client] = HistoryCache()
        return cache


# -- the primary's side -----------------------------------------------------------------------

def read_local(meta_path: str) -> Optional[Lineage]:
    try:
        with open(os.path.join(meta_path, LOCAL_LINEAGE_FILE)) as f:
            data = json.load(f)
        return Lineage(str(data["id"]), int(data["after_txid"], 16), int(data["created_ms"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_local(meta_path: str, lineage: Lineage) -> None:
    path = os.path.join(meta_path, LOCAL_LINEAGE_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(_as_json(lineage))
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def remove_local(meta_path: str) -> None:
    try:
        os.unlink(os.path.join(meta_path, LOCAL_LINEAGE_FILE))
    except FileNotFoundError:
        pass


def settle(client, meta_path: str, *, carried_forward: bool, after_txid: int) -> Lineage:
    """The lineage the replicator continues: the local one when the database was carried
    forward, otherwise a new one, recorded on the replica *before* any of its LTX files (a
    replica that lists a file of it must also list its record) and then kept locally."""
    current = read_local(meta_path) if carried_forward else None
    if current is not None:
        return current
    lineage = Lineage.begin(after_txid)
    upload(client, lineage)
    write_local(meta_path, lineage)
    log.info("new lineage %s, after TXID %016x", lineage.id, after_txid)
    return lineage


# -- positions ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def current_id() -> Optional[str]:
    """The lineage of this process's writes (a primary's HTTP worker), or None. Read once: the
    supervisor sets it before the workers start, and every write asks."""
    return parse_id(os.environ.get(LINEAGE_ENV, ""))
