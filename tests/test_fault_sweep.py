"""Fault injection, APSW-style: every call of the replication path fails in turn.

For each operation — a ``ReplicaClient`` method, or a file operation of the local meta dir or of
a file replica — the 1st, 2nd, … call fails, once (transient) or from then on (persistent),
while a real SQLite database takes commits and the real upload loop (``Replica.monitor``) runs.
A position whose call never comes ends the sweep of that operation. After each case:

1. transient: replication recovers by itself; after the final sync a restore gives exactly the
   DB (``integrity_check`` ok, same content; for a sample also the real ``litestream restore``);
2. persistent: the loop stops loudly within its retry budget (the error says what failed),
   never uploads past a gap, and the replica restores to the exact state of some TXID; once the
   fault is gone a restart catches up;
3. compaction / snapshots / retention under faults never delete the only copy of a TXID range;
4. a restore under faults succeeds with the right content or fails with a clear error, and never
   leaves a partial output (nor touches an existing one it was told to replace).

Everything is real (files, SQLite, the file replica client); the faults are injected at the seam
by a wrapper client and at the OS by a stand-in ``open``/``os`` of the module that does the I/O.
Run with ``-s`` to see every case. About 460 cases, ~55 s on a shared 2-CPU machine.

The S3 variant (the ``test_s3_*`` tests, at the end) runs the same cases and checks with the
real S3 client against a real SeaweedFS (tests/plugins/s3.py), the faults injected below our
code, in HTTP, by a proxy between boto3 and the server (tests/plugins/fault_proxy.py): the Nth
PUT / GET / LIST / DELETE answered with a 500 or 503 <Error>, a reset, a lost answer (the
request done, the connection reset), a body cut half-way, or an answer held past the read
timeout; once or from then on. Its positions are **sampled**, not all: 1, 2, 3, then every
3rd (S3_POSITIONS), and the kinds of fault per operation are the ones that take a different
path (a 500 and a 503 are retried alike by boto3). About 185 cases, 100-150 s with SeaweedFS's
start and stop on a shared 2-CPU machine.
"""
from __future__ import annotations

import builtins
import errno
import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import apsw
import botocore.retries.standard
import pytest

import replication.db
import replication.defaults
import replication.file_replica_client
import replication.replica
import replication.restore
from replication.config import Config, DBConfig, ReplicaConfig
from replication.db import DB
from replication.errors import ReplicationError
from replication.file_replica_client import FileReplicaClient
from replication.replica import Replica
from replication.replica_client import ConflictError, ReplicaClient, UnreachableError
from replication.restore import restore
from replication.s3_replica_client import S3ReplicaClient
from replication.store import CompactionTooEarly, Store
from tests.plugins.fault_proxy import FaultProxy, HttpFault

#: Seconds of continuous failure before the loop gives up: short where the case waits for it
#: (a persistent fault), long where it must not run out on a slow machine (a transient one).
BUDGET = 0.1
TRANSIENT_BUDGET = 5.0
SYNC_INTERVAL = 0.01   # seconds between upload rounds, and the first backoff
MAX_BACKOFF = 0.03     # seconds
#: A sweep of one operation stops here even if the fault still fires (a runaway guard).
MAX_POSITIONS = 80


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """Short waits: the budget watchdog, and re-reads of a short body."""
    monkeypatch.setattr(replication.replica, "BUDGET_CHECK_INTERVAL", 0.01)
    monkeypatch.setattr(replication.replica, "LOCAL_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(replication.defaults, "SHORT_READ_BACKOFF", 0.0)
    monkeypatch.setattr(replication.restore, "SHORT_READ_BACKOFF", 0.0)


# --- the faults ---------------------------------------------------------------------------------

@dataclass
class Fault:
    """Fail call number ``at`` of ``target`` (and every later one when ``persistent``).

    ``how``: ``raise`` (nothing happens, an error comes back), ``after`` (the call takes effect,
    then its answer is lost: an error), ``partial`` (a delete removes half its files, then
    fails), ``cut`` (a read breaks off half-way with an error), ``short`` (a read ends half-way
    without one, as a cut HTTP body can).
    """

    target: str
    at: int
    persistent: bool = False
    how: str = "raise"
    fired: int = 0

    def hits(self, n: int) -> bool:
        return n == self.at or (self.persistent and n > self.at)

    def __str__(self) -> str:
        return (f"{self.target}[{self.how}] call {self.at} "
                f"{'persistent' if self.persistent else 'transient'}")


class Injected(UnreachableError):
    """What a replica backend raises when it fails (a retryable ReplicaClientError)."""


class FaultyClient(ReplicaClient):
    """A real client whose calls fail as ``fault`` says, once :attr:`armed`."""

    restore_parallelism = 1

    def __init__(self, inner: ReplicaClient, fault: Fault | None = None):
        self.inner = inner
        self.type = inner.type
        self.url = getattr(inner, "url", "")
        self.fault = fault
        self.armed = False
        self.calls: Counter = Counter()
        self._lock = threading.Lock()

    def arm(self) -> None:
        """Faults on from now; call positions count from here."""
        with self._lock:
            self.calls.clear()
            self.armed = True

    def _trip(self, method: str) -> str | None:
        with self._lock:
            self.calls[method] += 1
            f = self.fault
            if self.armed and f is not None and f.target == method and f.hits(self.calls[method]):
                f.fired += 1
                return f.how
        return None

    def _error(self, method: str) -> Injected:
        return Injected(f"injected fault: {method} call {self.calls[method]} failed",
                        hint="a test fault")

    def init(self) -> None:
        self.inner.init()

    def ltx_files(self, level, seek=0, use_metadata=False):
        if self._trip("ltx_files"):
            raise self._error("ltx_files")
        return self.inner.ltx_files(level, seek, use_metadata)

    def open_ltx_file(self, level, min_txid, max_txid, offset=0, size=0):
        how = self._trip("open_ltx_file")
        if how == "raise":
            raise self._error("open_ltx_file")
        f = self.inner.open_ltx_file(level, min_txid, max_txid, offset, size)
        if how:
            return _BrokenBody(f, how, self._error("open_ltx_file"))
        return f

    def write_ltx_file(self, level, min_txid, max_txid, data, timestamp_ms, *, exclusive=False):
        how = self._trip("write_ltx_file")
        if how == "raise":
            raise self._error("write_ltx_file")
        info = self.inner.write_ltx_file(level, min_txid, max_txid, data, timestamp_ms,
                                         exclusive=exclusive)
        if how:  # "after": stored, but the answer never came
            raise self._error("write_ltx_file")
        return info

    def delete_ltx_files(self, infos):
        infos = list(infos)
        how = self._trip("delete_ltx_files")
        if how == "raise":
            raise self._error("delete_ltx_files")
        if how == "partial":
            self.inner.delete_ltx_files(infos[:len(infos) // 2])
            raise self._error("delete_ltx_files")
        self.inner.delete_ltx_files(infos)
        if how:
            raise self._error("delete_ltx_files")

    def delete_all(self):
        if self._trip("delete_all"):
            raise self._error("delete_all")
        self.inner.delete_all()

    def list_objects(self, subdir):
        if self._trip("list_objects"):
            raise self._error("list_objects")
        return self.inner.list_objects(subdir)

    def open_object(self, relpath):
        if self._trip("open_object"):
            raise self._error("open_object")
        return self.inner.open_object(relpath)

    def write_object(self, relpath, data):
        if self._trip("write_object"):
            raise self._error("write_object")
        self.inner.write_object(relpath, data)

    def close(self):
        self.inner.close()


class _BrokenBody:
    """A body that delivers the first half of the file, then breaks off (``cut``: with an
    error) or ends (``short``: a clean EOF, as a cut HTTP body can)."""

    def __init__(self, f, how: str, error: Exception):
        try:
            data = f.read()
        finally:
            f.close()
        self._data = memoryview(data[:len(data) // 2])
        self._how, self._error = how, error

    def read(self, n: int = -1) -> bytes:
        if not self._data:
            if self._how == "cut":
                raise self._error
            return b""
        n = len(self._data) if n is None or n < 0 else n
        out, self._data = bytes(self._data[:n]), self._data[n:]
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The file operations of one module, under one directory. ``module.open`` and ``module.os``
# are replaced by stand-ins that count the files written there (each ``open(..., "w…")`` of a
# ``.tmp`` file starts the next "write"; its data, fsync, rename/link and directory fsync belong
# to it) and the files read there, and fail the chosen step of the chosen one.
class Disk:
    def __init__(self, monkeypatch, module, root: str, fault: Fault | None):
        self.root = os.path.realpath(root)
        self.fault = fault
        self.armed = False
        self.writes = 0   # files opened for writing so far (the index of the current one)
        self.reads = 0
        monkeypatch.setattr(module, "open", self._open, raising=False)
        monkeypatch.setattr(module, "os", _OS(self))

    def arm(self) -> None:
        """Faults on from now; positions count from here."""
        self.writes = self.reads = 0
        self.armed = True

    def _under(self, path) -> bool:
        return os.path.realpath(os.fspath(path)).startswith(self.root + os.sep)

    def trip(self, step: str) -> bool:
        f = self.fault
        n = self.reads if step == "read" else self.writes
        if self.armed and f is not None and f.target == step and f.hits(n):
            f.fired += 1
            return True
        return False

    def error(self, step: str, code: int = errno.EIO) -> OSError:
        return OSError(code, f"{os.strerror(code)} (injected: {step})")

    def _open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if not isinstance(path, (str, bytes, os.PathLike)) or not self._under(path):
            return f
        if "w" in mode:
            self.writes += 1
            return _FaultyFile(f, self, "write")
        if "r" in mode and "b" in mode:
            self.reads += 1
            return _FaultyFile(f, self, "read")
        return f


class _FaultyFile:
    """A real file whose writes fail with ENOSPC after half the bytes (a full disk), or whose
    reads fail with EIO (a bad sector), when its disk says so."""

    def __init__(self, f, disk: Disk, kind: str):
        self._f, self._disk, self._kind = f, disk, kind
        self._failing = False

    def write(self, data) -> int:
        if not self._failing and self._disk.trip("write"):
            self._failing = True
        if self._failing:
            half = bytes(data)[:len(data) // 2]
            self._f.write(half)
            raise self._disk.error("write", errno.ENOSPC)
        return self._f.write(data)

    def read(self, n=-1):
        if not self._failing and self._kind == "read" and self._disk.trip("read"):
            self._failing = True
        if self._failing:
            raise self._disk.error("read")
        return self._f.read(n)

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


class _OS:
    """The ``os`` module as one module sees it, with faults in its write path."""

    def __init__(self, disk: Disk):
        self._disk = disk

    def __getattr__(self, name):
        return getattr(os, name)

    def _fd_under(self, fd: int) -> tuple[bool, bool]:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False, False
        return self._disk._under(target), os.path.isdir(target)

    def _sync(self, real, fd):
        under, is_dir = self._fd_under(fd)
        if under and self._disk.trip("dirfsync" if is_dir else "fsync"):
            raise self._disk.error("dirfsync" if is_dir else "fsync")
        return real(fd)

    def fsync(self, fd):
        return self._sync(os.fsync, fd)

    def fdatasync(self, fd):
        return self._sync(os.fdatasync, fd)

    def _move(self, real, src, dst):
        if self._disk._under(dst) and self._disk.trip("rename"):
            raise self._disk.error("rename")
        return real(src, dst)

    def rename(self, src, dst):
        return self._move(os.rename, src, dst)

    def replace(self, src, dst):
        return self._move(os.replace, src, dst)

    def link(self, src, dst):
        return self._move(os.link, src, dst)


# --- the database and what it held at each TXID -------------------------------------------------

def series(lo: int, hi: int) -> str:
    """``SELECT value`` over lo..hi (this SQLite has no generate_series)."""
    return (f"WITH RECURSIVE s(value) AS (SELECT {lo} UNION ALL SELECT value + 1 FROM s "
            f"WHERE value < {hi}) SELECT value FROM s")


#: One transaction per entry; together they touch many pages (splits, an index, a new table, a
#: drop), so a TXID whose frames went missing shows as wrong content or a failed restore.
WORKLOAD = [
    ["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
     "INSERT INTO t(v) VALUES ('first')"],
    ["INSERT INTO t(v) SELECT printf('%0300d', value) FROM (" + series(1, 30) + ")"],
    ["CREATE TABLE u(k INTEGER, w TEXT)", "CREATE INDEX u_k ON u(k)",
     "INSERT INTO u SELECT value, printf('%0100d', value) FROM (" + series(1, 20) + ")"],
    ["UPDATE t SET v = v || 'x' WHERE id % 3 = 0", "DELETE FROM t WHERE id % 4 = 0"],
    ["INSERT INTO u SELECT value, printf('%0200d', value) FROM (" + series(100, 140) + ")"],
    ["CREATE TABLE w AS SELECT * FROM t WHERE id % 2 = 1", "DROP INDEX u_k"],
    ["UPDATE u SET w = 'y' || w WHERE k % 5 = 0", "INSERT INTO t(v) VALUES ('last')"],
]


def connect(path) -> apsw.Connection:
    con = apsw.Connection(str(path))
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    return con


def content(path) -> tuple:
    """Schema and rows of the user tables: what a restore must reproduce."""
    con = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        schema = con.execute("SELECT type, name, sql FROM sqlite_master "
                             "WHERE name NOT LIKE '\\_litestream%' ESCAPE '\\' "
                             "ORDER BY name").fetchall()
        tables = {name: con.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
                  for kind, name, _ in schema if kind == "table"}
        return schema, tables
    finally:
        con.close()


def commit(con, i: int) -> None:
    with con:
        if i < len(WORKLOAD):
            for sql in WORKLOAD[i]:
                con.execute(sql)
        else:
            con.execute("INSERT INTO t(v) VALUES (?)", (f"more {i}",))
            con.execute("UPDATE u SET w = ? WHERE k % 7 = ?", (f"{i}", i % 7))


def db_config(path) -> DBConfig:
    # A low PASSIVE threshold and no pause between checkpoints: checkpoints (and their barrier
    # syncs and WAL restarts) happen during the run, so their L0 writes are faulted too.
    return DBConfig(path=str(path), monitor_interval=0.0, min_checkpoint_page_count=8,
                    replica=ReplicaConfig(type="file", path=str(path) + "-replica",
                                          sync_interval=SYNC_INTERVAL))


class History:
    """The DB's content at every TXID it wrote: the test drives ``DB.sync`` itself (as the
    monitor does, retrying after an error), and no commit happens between a commit's sync
    attempts, so every TXID written since the last look holds the content of now."""

    def __init__(self, path, db: DB):
        self.path, self.db = path, db
        self.at: dict[int, tuple] = {}
        self.seen = 0
        self.sync_errors: list[BaseException] = []

    def sync(self) -> bool:
        try:
            self.db.sync()
            ok = True
        except Exception as exc:  # noqa: BLE001 - the DB's monitor logs it and retries
            self.sync_errors.append(exc)
            ok = False
        txid = self.db.pos().txid
        if txid > self.seen:
            now = content(self.path)
            for t in range(self.seen + 1, txid + 1):
                self.at[t] = now
            self.seen = txid
        return ok


def l0_chain(client) -> list[tuple[int, int]]:
    return [(f.min_txid, f.max_txid) for f in client.ltx_files(0)]


def assert_no_gap(client) -> None:
    chain = l0_chain(client)
    if chain:
        assert chain[0][0] == 1, chain
    for (_, hi), (lo, _) in zip(chain, chain[1:]):
        assert lo == hi + 1, f"gap in the replica's L0 chain: {chain}"


def assert_restores_to_a_txid(client, out, history: History, *, txid: int = 0) -> int:
    """A restore (latest, or at ``txid``) passes integrity_check and is exactly the DB as it
    was at the restored TXID. Returns that TXID."""
    res = restore(client, str(out), txid=txid, integrity_check="full")
    assert res.txid in history.at, f"restored TXID {res.txid} was never written"
    assert content(out) == history.at[res.txid], f"restore at TXID {res.txid} differs from the DB"
    os.remove(out)
    return res.txid


def litestream_restores(binary, env, url, out, expected) -> None:
    proc = subprocess.run([binary, "restore", "-o", str(out), url],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert content(out) == expected
    os.remove(out)


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.003)
    return cond()


# --- sweep 1 and 2: the upload path under replica and disk faults -------------------------------

@dataclass
class Outcome:
    fired: int
    fatal: list = field(default_factory=list)


def open_case_db(case) -> tuple:
    """A DB with its first transaction, opened for replication: (path, con, dbc, db)."""
    path = case / "app.db"
    con = connect(path)
    commit(con, 0)
    dbc = db_config(path)
    db = DB(path, dbc)
    db.open()
    return path, con, dbc, db


def injected(exc) -> bool:
    """The error names the fault (a seam or disk fault says "injected")."""
    return "injected" in str(exc)


def upload_case(tmp_path, monkeypatch, fault: Fault, where: str, *, litestream=None) -> Outcome:
    """One run: commit the workload with the real upload loop running and ``fault`` armed in
    ``where`` ("client": the seam; "meta": the meta dir's files; "replica": the file replica's
    files), then check the invariants for the fault's kind."""
    case = tmp_path / f"case-{where}-{fault.target}-{fault.how}-{fault.at}-{fault.persistent}"
    case.mkdir()
    path, con, dbc, db = open_case_db(case)
    inner = FileReplicaClient(str(case / "replica"))
    client = FaultyClient(inner, fault if where == "client" else None)
    disk = None
    if where == "meta":
        disk = Disk(monkeypatch, replication.db, db.meta_path, fault)
    elif where == "replica":
        disk = Disk(monkeypatch, replication.file_replica_client, inner.path, fault)
    if litestream is not None:
        litestream = (*litestream, f"file://{inner.path}")
    return check_upload(case, path, con, dbc, db, client, inner, disk or client, fault,
                        local=where == "meta", litestream=litestream)


def check_upload(case, path, con, dbc, db, client, inner, injector, fault, *, local: bool,
                 clear=injected, litestream=None, settle: float = 1.0) -> Outcome:
    """Run the workload through ``client`` (the loop's, faulted by ``injector``: ``arm()``,
    ``armed``) and check the invariants against ``inner`` (the same replica, no faults).
    ``local``: the fault is in the meta dir, not the replica; ``clear(exc)``: the error says
    what failed; ``settle``: seconds one faulted call may take (a slow S3 answer); closes
    ``db`` and ``con``."""
    fatal: list = []
    budget = BUDGET if fault.persistent else TRANSIENT_BUDGET
    replica = Replica(db, client, dbc.replica, retry_budget=budget, on_fatal=fatal.append,
                      max_backoff=MAX_BACKOFF)
    db.subscribe(replica.wake)
    history = History(path, db)
    try:
        injector.arm()  # call positions count from the first one
        history.sync()
        replica.start()
        for i in range(1, len(WORKLOAD)):
            wait_for(lambda: fatal or replica.health.consecutive_failures
                     or replica.pos() == db.pos().txid, settle)
            commit(con, i)
            history.sync()
            # Let the loop take this TXID (or fail on it) before the next commit: the calls then
            # come in the same order in every run, so call positions mean the same thing.
            wait_for(lambda: fatal or replica.health.consecutive_failures
                     or replica.pos() == db.pos().txid, settle)
        for _ in range(3):  # the monitor's retries of a failed local sync
            if not history.sync_errors or history.sync():
                break
        if fault.persistent and fault.fired and not (not local and wait_for(
                lambda: fatal or (replica.pos() == db.pos().txid
                                  and not replica.health.consecutive_failures), BUDGET + 2)
                and not fatal):
            # (A fault that fires only while there is work can end with the work: a stored
            # upload whose answer was lost leaves nothing to retry. That run recovered.)
            # The loop gives up on a failing replica, or on a local file it cannot read; a
            # local write that keeps failing leaves it with nothing to upload.
            if not local or fault.target == "read":
                assert wait_for(lambda: fatal, BUDGET + 2), f"{fault}: the loop never gave up"
                assert clear(fatal[0]), f"{fault}: unclear error: {fatal[0]}"
                assert replica.health.fatal
                assert wait_for(lambda: not replica._thread.is_alive(), 2 * settle), \
                    f"{fault}: the loop goes on after giving up"
                assert not replica.stop(timeout=1, interval=0.01)
            else:
                # A local disk that keeps failing: every sync says so (the loop has nothing new
                # to upload; the lag shows it: design/replication.md, "Ready").
                assert history.sync_errors and "injected" in str(history.sync_errors[-1])
                replica.stop(timeout=0.05, interval=0.01)
            injector.armed = False
            # What the replica holds is a chain without a gap, restoring to an exact state.
            assert_no_gap(inner)
            if l0_chain(inner):
                assert_restores_to_a_txid(inner, case / "partial.db", history)
            # The fault is gone: a restart uploads what is pending (nothing committed is lost).
            history.sync()
            again = Replica(db, inner, dbc.replica)
            again.sync()
            assert again.pos() == db.pos().txid
        else:
            injector.armed = False  # a transient fault fired; let the final sync run
            history.sync()
            assert not fatal, f"{fault}: a transient fault was fatal: {fatal}"
            assert replica.stop(timeout=3, interval=0.01), f"{fault}: the final sync failed"
        assert_no_gap(inner)
        assert history.sync()
        latest = assert_restores_to_a_txid(inner, case / "out.db", history)
        assert latest == db.pos().txid
        assert history.at[latest] == content(path)
        if litestream is not None:
            litestream_restores(*litestream, case / "ls.db", history.at[latest])
    finally:
        replica.stop(timeout=0.5, interval=0.01)
        db.close()
        con.close()
    return Outcome(fault.fired, fatal)


def sweep(run, make_fault, positions=range(1, MAX_POSITIONS + 1)) -> list[str]:
    """Run ``make_fault(at)`` for at = 1, 2, … (or the given positions) until a case where the
    fault never fired. Returns one line per case (for the failure message)."""
    log = []
    for at in positions:
        fault = make_fault(at)
        out = run(fault)
        log.append(f"{fault}: fired {out.fired}x")
        print(log[-1])  # with -s: the cases run
        if not out.fired:
            return log
    raise AssertionError(f"the sweep never ran out of calls: {log}")


UPLOAD_SWEEPS = [
    # (where, target, how)
    ("client", "ltx_files", "raise"),
    ("client", "write_ltx_file", "raise"),
    ("client", "write_ltx_file", "after"),
    ("meta", "write", "raise"),      # ENOSPC half-way through an L0 file
    ("meta", "fsync", "raise"),      # fdatasync of the L0 file
    ("meta", "rename", "raise"),     # its rename into place
    ("meta", "dirfsync", "raise"),   # the meta dir's fsync after the rename
    ("meta", "read", "raise"),       # a read of a local L0 file (upload, continuity check)
    ("replica", "write", "raise"),
    ("replica", "fsync", "raise"),
    ("replica", "rename", "raise"),  # link(2) of an L0 upload
    ("replica", "dirfsync", "raise"),
]


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("where,target,how", UPLOAD_SWEEPS,
                         ids=[f"{w}-{t}-{h}" for w, t, h in UPLOAD_SWEEPS])
def test_upload_path_under_faults(tmp_path, monkeypatch, where, target, how, persistent,
                                  litestream_bin, litestream_env):
    def run(fault):
        # The real litestream restores a sample: the first two positions of each sweep.
        ls = (litestream_bin, litestream_env) if fault.at <= 2 and not persistent else None
        with monkeypatch.context() as mp:
            return upload_case(tmp_path, mp, fault, where, litestream=ls)

    log = sweep(run, lambda at: Fault(target, at, persistent, how))
    assert len(log) >= 2, f"the fault never fired: {log}"


# --- sweep 3: compaction, snapshots and retention under replica faults --------------------------

def make_store(case, fault: Fault | None, make_client=None) -> tuple[Store, apsw.Connection,
                                                                     FaultyClient, History]:
    """A Store over one DB whose replica client is a FaultyClient (disarmed), or what
    ``make_client(replica_config)`` makes, driven by hand (``open(monitor=False)``, as
    ``replicate -once`` and the Store tests do)."""
    path = case / "app.db"
    con = connect(path)
    commit(con, 0)
    dbc = db_config(path)
    clients: list = []

    def client_factory(rc):
        clients.append(make_client(rc) if make_client else
                       FaultyClient(FileReplicaClient(rc.path), fault))
        return clients[-1]

    store = Store(Config(dbs=[dbc], levels=[1.0, 2.0], l0_retention=0.001,
                         snapshot_retention=1.0), client_factory=client_factory,
                  retry_budget=None)
    store.open(monitor=False)
    return store, con, clients[0], History(path, store.dbs[0])


def round_trip(store, con, history: History, i: int) -> None:
    commit(con, i)
    assert history.sync()
    store.replicas[history.db.path].sync()


def maintain(store, db, now: float) -> list[BaseException]:
    """One pass of every maintenance step, each on its own as its monitor runs it (an error is
    logged and the next tick tries again)."""
    errors = []
    for step in (lambda: store.compact_db(db, 1, now=now),
                 lambda: store.compact_db(db, 2, now=now),
                 lambda: store.snapshot_db(db, force=True, now=now),
                 lambda: store.enforce_l0_retention(db, now=now),
                 lambda: store.enforce_snapshot_retention(db, now=now)):
        try:
            step()
        except CompactionTooEarly:
            pass
        except ReplicationError as exc:
            errors.append(exc)
    return errors


def how_short(fault: Fault) -> bool:
    return fault.how == "short"


def maintenance_case(tmp_path, fault: Fault) -> Outcome:
    case = tmp_path / f"case-{fault.target}-{fault.how}-{fault.at}-{fault.persistent}"
    case.mkdir()
    store, con, client, history = make_store(case, fault)
    return check_maintenance(case, store, con, client.inner, client, history, fault,
                             clear=lambda exc: injected(exc) or (
                                 how_short(fault) and "truncated" in str(exc)))


def check_maintenance(case, store, con, inner, injector, history, fault, *, clear) -> Outcome:
    """Compaction, a snapshot and retention with ``fault`` armed in ``injector``, then the
    invariants against ``inner`` (the replica without faults); closes the store."""
    db = store.dbs[0]
    try:
        assert history.sync()
        store.replicas[db.path].sync()
        t = time.time() + 3600
        for i in range(1, 3):
            round_trip(store, con, history, i)
        assert not maintain(store, db, t)           # L1, L2 and a snapshot of TXIDs 1..n
        for i in range(3, 6):
            round_trip(store, con, history, i)
        before = max(f.max_txid for f in inner.ltx_files(0))
        injector.arm()
        errors = maintain(store, db, t + 7200)      # the old snapshot is out of retention now
        injector.armed = False
        for exc in errors:
            # A short body without an error (how="short") shows as the file it cut.
            assert clear(exc), f"{fault}: unclear error: {exc!r}"
        # Whatever the fault interrupted, the newest TXID is still on the replica, with the
        # exact content it had, and so is the restore the replica allowed before.
        out = case / "out.db"
        assert assert_restores_to_a_txid(inner, out, history) == before
        assert_restores_to_a_txid(inner, out, history, txid=before)
        # The next ticks (no fault) repair what the faulted one left half done.
        assert not maintain(store, db, t + 3 * 7200)
        round_trip(store, con, history, 6)
        assert not maintain(store, db, t + 4 * 7200)
        assert assert_restores_to_a_txid(inner, out, history) == db.pos().txid
    finally:
        store.close(timeout=1)
        con.close()
    return Outcome(fault.fired)


MAINTENANCE_SWEEPS = [
    ("ltx_files", "raise"),
    ("open_ltx_file", "raise"),
    ("open_ltx_file", "cut"),
    ("open_ltx_file", "short"),
    ("write_ltx_file", "raise"),
    ("write_ltx_file", "after"),
    ("delete_ltx_files", "raise"),
    ("delete_ltx_files", "partial"),
    ("delete_ltx_files", "after"),
]


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("target,how", MAINTENANCE_SWEEPS,
                         ids=[f"{t}-{h}" for t, h in MAINTENANCE_SWEEPS])
def test_maintenance_under_faults_never_loses_a_txid_range(tmp_path, target, how, persistent):
    log = sweep(lambda fault: maintenance_case(tmp_path, fault),
                lambda at: Fault(target, at, persistent, how))
    assert len(log) >= 2, f"the fault never fired: {log}"


# --- sweep 4: restore under faults -----------------------------------------------------------

@pytest.fixture(scope="module")
def replica_with_levels(tmp_path_factory):
    """A replica with a snapshot, L1/L2 files and L0 files after them (a plan of several
    files from several levels), and the DB's content at its newest TXID."""
    case = tmp_path_factory.mktemp("restore-source")
    inner, expected = build_levels(case)
    return inner.path, expected


def build_levels(case, make_client=None) -> tuple:
    """Replicate the workload with compactions and a snapshot between its commits (the
    client: a FileReplicaClient, or what ``make_client`` makes); returns the replica's
    client and the DB's content at its newest TXID."""
    store, con, client, history = make_store(case, None, make_client)
    client = getattr(client, "inner", client)
    db = store.dbs[0]
    try:
        assert history.sync()
        store.replicas[db.path].sync()
        t = time.time() + 3600
        for i in range(1, 4):
            round_trip(store, con, history, i)
        assert not maintain(store, db, t)
        for i in range(4, 7):
            round_trip(store, con, history, i)
        store.compact_db(db, 1, now=t + 7200)
        for i in range(7, 9):
            round_trip(store, con, history, i)
        latest = db.pos().txid
    finally:
        store.close(timeout=1)
        con.close()
    plan = replication.restore.calc_restore_plan(client)
    assert len({f.level for f in plan}) >= 2 and len(plan) >= 3, plan
    return client, history.at[latest]


def restore_case(tmp_path, monkeypatch, source, fault: Fault, where: str) -> Outcome:
    replica_path, expected = source
    case = tmp_path / f"case-{where}-{fault.target}-{fault.how}-{fault.at}-{fault.persistent}"
    case.mkdir()
    inner = FileReplicaClient(replica_path)
    client = FaultyClient(inner, fault if where == "client" else None)
    disk = Disk(monkeypatch, replication.file_replica_client, inner.path,
                fault) if where == "replica" else None

    def may_fail(exc) -> None:
        # A transfer that breaks off once is read again (SHORT_READ_ATTEMPTS), on every
        # backend; a failed listing or open is not retried: the restore says so.
        assert fault.persistent or fault.how != "raise" or fault.target != "read", \
            f"{fault}: a read that failed once failed the restore: {exc}"
        assert fault.persistent or fault.how not in ("cut", "short"), \
            f"{fault}: a read that broke off once failed the restore: {exc}"

    return check_restore(case, client, disk or client, fault, expected, may_fail=may_fail,
                         clear=lambda exc: injected(exc) or (
                             how_short(fault) and "truncated" in str(exc)))


def check_restore(case, client, injector, fault, expected, *, may_fail, clear) -> Outcome:
    """Restore through ``client`` with ``fault`` armed in ``injector``, to a new output and
    over an existing one (-force): the right content, or a clear error (``clear``) that
    ``may_fail(exc)`` allows, leaving nothing behind."""
    injector.arm()
    # A new output, and an existing database the restore was told to replace (-force).
    for force in (False, True):
        out = case / f"out-{force}.db"
        if force:
            con = apsw.Connection(str(out))
            con.execute("CREATE TABLE old(x); INSERT INTO old VALUES ('keep me')")
            con.close()
            old = out.read_bytes()
        try:
            res = restore(client, str(out), integrity_check="full", force=force)
        except Exception as exc:  # noqa: BLE001 - checked below
            may_fail(exc)
            assert "cannot write" not in str(exc), f"{fault}: blames the output: {exc}"
            assert isinstance(exc, ReplicationError), f"{fault}: not a clear error: {exc!r}"
            assert clear(exc), f"{fault}: the error hides its cause: {exc}"
            left = sorted(p.name for p in case.iterdir() if p.name.startswith(out.name))
            if force:
                assert left == [out.name] and out.read_bytes() == old, f"{fault}: {left}"
            else:
                assert left == [], f"{fault}: a failed restore left {left}"
        else:
            assert content(out) == expected, f"{fault}: restored {res.txid} with other content"
        if fault.persistent:
            break  # the second run would fail the same way from its first call
    return Outcome(fault.fired)


RESTORE_SWEEPS = [
    ("client", "ltx_files", "raise"),
    ("client", "open_ltx_file", "raise"),
    ("client", "open_ltx_file", "cut"),
    ("client", "open_ltx_file", "short"),
    ("replica", "read", "raise"),      # EIO reading a replica file (the file client's own I/O)
]


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("where,target,how", RESTORE_SWEEPS,
                         ids=[f"{w}-{t}-{h}" for w, t, h in RESTORE_SWEEPS])
def test_restore_under_faults_is_right_or_fails_cleanly(tmp_path, monkeypatch, replica_with_levels,
                                                        where, target, how, persistent):
    def run(fault):
        with monkeypatch.context() as mp:
            return restore_case(tmp_path, mp, replica_with_levels, fault, where)

    log = sweep(run, lambda at: Fault(target, at, persistent, how))
    assert len(log) >= 2, f"the fault never fired: {log}"


# --- the S3 variant: the real S3 client on a real SeaweedFS, faults in its HTTP ------------------
#
# The same cases and invariants, with the replica on S3 (``weed mini``, tests/plugins/s3.py)
# and the faults below our code, where real S3 failures happen: a proxy between boto3 and the
# server (tests/plugins/fault_proxy.py) answers the Nth request of a kind (PUT, GET, LIST,
# DELETE) with a 500 or 503 <Error>, a reset connection, a forwarded request whose answer is
# lost (the object is stored, the delete done), a body cut half-way, or an answer held past
# the client's read timeout; once (transient) or from then on (persistent).
#
# boto3 retries a failed request itself (S3_ATTEMPTS attempts), so a transient fault mostly
# stays inside the client, as in production: what it must get right there is the retried
# conditional create of an L0 file after a lost answer (the object exists: 412, compared, no
# false conflict). A persistent one reaches the loop, which must stop within its budget.
# Positions are sampled (S3_POSITIONS: 1, 2, 3, then every 3rd) to keep the S3 part near a
# minute and a half on a shared 2-CPU machine.

#: Seconds a held answer takes to fail one attempt; attempts per call (production: 4): one
#: retry by boto3 itself, without its backoff sleep (the ``s3_fast`` fixture).
S3_READ_TIMEOUT = 0.3
S3_ATTEMPTS = 2
S3_POSITIONS = (1, 2, 3, *range(6, MAX_POSITIONS + 1, 3))

#: What an error must show of each fault's cause (besides "s3: " and the operation).
S3_CAUSES = {
    "500": ("InternalError",),
    "503": ("SlowDown",),
    "reset": ("Connection was closed",),
    "lost": ("Connection was closed",),
    "cut": ("Connection was closed", "IncompleteRead"),
    "slow": ("Read timeout",),
}


def s3_clear(fault: HttpFault):
    def clear(exc) -> bool:
        text = str(exc)
        return "s3: " in text and any(cause in text for cause in S3_CAUSES[fault.how])
    return clear


@pytest.fixture
def s3_fast(monkeypatch):
    """No sleep between boto3's own attempts (it waits up to 2^n s, jittered)."""
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount",
                        lambda self, context: 0.0)


@pytest.fixture(scope="module")
def fault_proxy(s3_server):
    proxy = FaultProxy(s3_server.endpoint)
    yield proxy
    proxy.close()


class S3Replicas:
    """Fresh replica paths in the shared bucket, each seen by a client through the proxy (the
    faulted one) and a direct one (the checks). One sweep's cases share its two boto3 clients
    (making one costs ~0.2 s), each case has a path of its own."""

    def __init__(self, s3_server, proxy: FaultProxy):
        self.s3_server, self.proxy = s3_server, proxy
        self._boto: dict = {}

    def pair(self, prefix: str) -> tuple[S3ReplicaClient, S3ReplicaClient]:
        path = self.s3_server.new_path(prefix)
        return self.client(self.proxy.endpoint, path), self.client(self.s3_server.endpoint, path)

    def client(self, endpoint: str, path: str) -> S3ReplicaClient:
        s3 = self.s3_server
        c = S3ReplicaClient.from_url(
            s3.url(s3.bucket, path), endpoint=endpoint, access_key_id=s3.access_key,
            secret_access_key=s3.secret_key, read_timeout=S3_READ_TIMEOUT,
            connect_timeout=S3_READ_TIMEOUT, max_attempts=S3_ATTEMPTS)
        if endpoint in self._boto:
            c._client = self._boto[endpoint]
        else:
            c.init()
            self._boto[endpoint] = c.s3
        c.close = lambda: None  # the boto3 client is the sweep's: closed at its end
        return c

    def close(self) -> None:
        for boto in self._boto.values():
            boto.close()


@pytest.fixture
def s3_replicas(s3_server, fault_proxy, s3_fast):
    replicas = S3Replicas(s3_server, fault_proxy)
    yield replicas
    replicas.close()


def s3_upload_case(tmp_path, replicas: S3Replicas, fault: HttpFault, *, restart: bool,
                   litestream=None) -> Outcome:
    case = tmp_path / f"case-s3-{fault.kind}-{fault.how}-{fault.at}-{fault.persistent}"
    case.mkdir()
    path, con, dbc, db = open_case_db(case)
    client, inner = replicas.pair("sweep")
    proxy, s3_server = replicas.proxy, replicas.s3_server
    try:
        if restart:
            # A previous run uploaded TXID 1: positioning reads that file's trailer (a GET).
            db.sync()
            Replica(db, inner, dbc.replica).sync()
        proxy.fault = fault
        if litestream is not None:
            binary, env = litestream
            litestream = (binary, s3_server.env(env),
                          s3_server.url(s3_server.bucket, inner.path))
        return check_upload(case, path, con, dbc, db, client, inner, proxy, fault, local=False,
                            clear=s3_clear(fault), litestream=litestream,
                            settle=S3_ATTEMPTS * S3_READ_TIMEOUT + 1)
    finally:
        proxy.armed, proxy.fault = False, None


S3_UPLOAD_SWEEPS = [
    # (kind, how): every PUT is an L0 file's conditional create (If-None-Match: *)
    ("PUT", "503"),
    ("PUT", "reset"),
    ("PUT", "lost"),     # stored, the answer lost: boto3's retry finds it (412, same bytes)
    ("PUT", "slow"),     # stored, the answer past the read timeout: the same, by time
    ("LIST", "500"),     # the LISTs: positioning (every level)
    ("LIST", "cut"),
    ("GET", "500"),      # the GET: a restart's check of the replica's newest file (trailer)
    ("GET", "cut"),
]


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("kind,how", S3_UPLOAD_SWEEPS,
                         ids=[f"{k}-{h}" for k, h in S3_UPLOAD_SWEEPS])
def test_s3_upload_path_under_http_faults(tmp_path, s3_replicas, kind, how, persistent,
                                          litestream_bin, litestream_env):
    def run(fault):
        # The real litestream restores a sample: the first position of each transient sweep.
        ls = (litestream_bin, litestream_env) if fault.at == 1 and not persistent else None
        return s3_upload_case(tmp_path, s3_replicas, fault, restart=kind == "GET",
                              litestream=ls)

    log = sweep(run, lambda at: HttpFault(kind, at, persistent, how), S3_POSITIONS)
    assert len(log) >= 2, f"the fault never fired: {log}"


def s3_maintenance_case(tmp_path, replicas: S3Replicas, fault: HttpFault) -> Outcome:
    case = tmp_path / f"case-s3-{fault.kind}-{fault.how}-{fault.at}-{fault.persistent}"
    case.mkdir()
    client, inner = replicas.pair("maint")
    store, con, _, history = make_store(case, None, lambda rc: client)
    replicas.proxy.fault = fault
    try:
        return check_maintenance(case, store, con, inner, replicas.proxy, history, fault,
                                 clear=s3_clear(fault))
    finally:
        replicas.proxy.armed, replicas.proxy.fault = False, None


S3_MAINTENANCE_SWEEPS = [
    ("LIST", "cut"),
    ("GET", "cut"),      # compaction reading its sources: a cut body is not retried by boto3
    ("GET", "slow"),
    ("PUT", "500"),      # the PUTs: L1, L2 and snapshot files (plain, not conditional)
    ("PUT", "lost"),
    ("DELETE", "lost"),  # retention (DeleteObjects): deleted, the answer lost; the retry
    ("DELETE", "cut"),   # deletes nothing, quietly
]


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("kind,how", S3_MAINTENANCE_SWEEPS,
                         ids=[f"{k}-{h}" for k, h in S3_MAINTENANCE_SWEEPS])
def test_s3_maintenance_under_http_faults_never_loses_a_txid_range(tmp_path, s3_replicas, kind,
                                                                   how, persistent):
    log = sweep(lambda fault: s3_maintenance_case(tmp_path, s3_replicas, fault),
                lambda at: HttpFault(kind, at, persistent, how), S3_POSITIONS)
    assert len(log) >= 2, f"the fault never fired: {log}"


@pytest.fixture(scope="module")
def s3_replica_with_levels(tmp_path_factory, s3_server, fault_proxy):
    """As replica_with_levels, on S3: (its path, the DB's content at its newest TXID)."""
    replicas = S3Replicas(s3_server, fault_proxy)
    try:
        _, inner = replicas.pair("levels")
        _, expected = build_levels(tmp_path_factory.mktemp("s3-restore-source"),
                                   lambda rc: inner)
        return inner.path, expected
    finally:
        replicas.close()


def s3_restore_case(tmp_path, replicas: S3Replicas, source, fault: HttpFault) -> Outcome:
    path, expected = source
    case = tmp_path / f"case-s3-{fault.kind}-{fault.how}-{fault.at}-{fault.persistent}"
    case.mkdir()
    client = replicas.client(replicas.proxy.endpoint, path)

    def may_fail(exc) -> None:
        # boto3 retries a failed request, and the restore reads a cut body again: a fault
        # that fires once never fails a restore from S3.
        assert fault.persistent, f"{fault}: a fault that fired once failed the restore: {exc}"

    replicas.proxy.fault = fault
    try:
        return check_restore(case, client, replicas.proxy, fault, expected, may_fail=may_fail,
                             clear=s3_clear(fault))
    finally:
        replicas.proxy.armed, replicas.proxy.fault = False, None


S3_RESTORE_SWEEPS = [
    ("LIST", "reset"),
    ("GET", "500"),
    ("GET", "cut"),
    ("GET", "slow"),
]


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("kind,how", S3_RESTORE_SWEEPS,
                         ids=[f"{k}-{h}" for k, h in S3_RESTORE_SWEEPS])
def test_s3_restore_under_http_faults_is_right_or_fails_cleanly(tmp_path, s3_replicas,
                                                                s3_replica_with_levels, kind,
                                                                how, persistent):
    log = sweep(lambda fault: s3_restore_case(tmp_path, s3_replicas, s3_replica_with_levels,
                                              fault),
                lambda at: HttpFault(kind, at, persistent, how), S3_POSITIONS)
    assert len(log) >= 2, f"the fault never fired: {log}"


@pytest.mark.parametrize("how", ["lost", "slow"])
@pytest.mark.parametrize("attempts", [1, S3_ATTEMPTS], ids=["caller-retries", "boto3-retries"])
def test_s3_exclusive_create_retried_after_a_lost_answer(s3_replicas, how, attempts):
    """An L0 file's conditional create (If-None-Match: *) that S3 stored but whose answer was
    lost (reset, or held past the read timeout), retried by boto3 itself or by the caller:
    the retry meets our own object (412) and is no conflict; against another writer's bytes
    it is one, and those bytes stay."""
    proxy = s3_replicas.proxy
    client, inner = s3_replicas.pair("excl")
    client.max_attempts = attempts
    client._client = None  # a boto3 client of its own, with this many attempts
    mine, theirs = b"our L0 file " * 50, b"another writer's L0 file " * 20
    proxy.fault = HttpFault("PUT", 1, how=how)
    try:
        proxy.arm()
        if attempts == 1:
            with pytest.raises(UnreachableError):
                client.write_ltx_file(0, 1, 1, mine, 1_700_000_000_000, exclusive=True)
        client.write_ltx_file(0, 1, 1, mine, 1_700_000_000_000, exclusive=True)
        assert proxy.fault.fired == 1
        assert [k for k, _, _ in proxy.log].count("PUT") == 2  # the lost one, then the retry
        with inner.open_ltx_file(0, 1, 1) as f:
            assert f.read() == mine
        # Another writer's TXID 2 is there: our create of TXID 2, its answer lost, retried.
        inner.write_ltx_file(0, 2, 2, theirs, 1_700_000_000_000)
        proxy.fault = HttpFault("PUT", 1, how=how)
        proxy.arm()
        for _ in range(2 if attempts == 1 else 1):
            with pytest.raises((ConflictError, UnreachableError)) as info:
                client.write_ltx_file(0, 2, 2, mine, 1_700_000_000_000, exclusive=True)
        assert isinstance(info.value, ConflictError), info.value
        with inner.open_ltx_file(0, 2, 2) as f:
            assert f.read() == theirs
    finally:
        proxy.armed, proxy.fault = False, None
        if client._client is not None:
            client._client.close()


def test_s3_stop_keeps_its_timeout_while_s3_holds_every_answer(tmp_path, s3_server, fault_proxy,
                                                              s3_fast):
    """``Replica.stop(timeout)`` (shutdown-sync-timeout) while S3 holds every PUT's answer
    past the read timeout (the sweep's PUT-slow): one call lasts attempts x read timeout
    (about 47 s with the defaults), longer than the whole timeout. stop() waited for the
    loop's call to end (the sync lock), then made a final call of its own: about
    timeout + 2 calls (a 30 s shutdown took about two minutes). It returns at its deadline,
    False; the pending file is in the meta dir for the next start."""
    replicas = S3Replicas(s3_server, fault_proxy)
    call = S3_ATTEMPTS * 1.0
    client = S3ReplicaClient.from_url(
        s3_server.url(s3_server.bucket, s3_server.new_path("stop")),
        endpoint=fault_proxy.endpoint, access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key, read_timeout=call / S3_ATTEMPTS,
        max_attempts=S3_ATTEMPTS)
    path, con, dbc, db = open_case_db(tmp_path)
    replica = Replica(db, client, dbc.replica, retry_budget=None)
    db.subscribe(replica.wake)
    fault_proxy.fault = HttpFault("PUT", 1, persistent=True, how="slow")
    try:
        fault_proxy.arm()
        db.sync()
        replica.start()
        assert wait_for(lambda: fault_proxy.fault.fired, 5)  # the loop's PUT is held
        commit(con, 1)
        db.sync()
        started = time.monotonic()
        assert replica.stop(timeout=0.3, interval=0.05) is False
        took = time.monotonic() - started
        assert took < 0.3 + call / 2, f"stop(0.3) took {took:.2f}s (one S3 call: {call:.0f}s)"
    finally:
        fault_proxy.armed, fault_proxy.fault = False, None
        # The held calls end (no request of theirs may reach the next test's armed proxy).
        for thread in (replica._thread, replica._final_thread):
            if thread is not None:
                thread.join(2 * call + 1)
                assert not thread.is_alive()
        db.close()
        con.close()
        client.close()
        replicas.close()
