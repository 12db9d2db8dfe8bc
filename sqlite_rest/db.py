"""The SQLite connection model (apsw only).

- Every connection is opened by `open_connection()`, which applies the settings below, one
  small function each, so each setting is documented and testable on its own.
- Each thread owns its connections (`threading.local`): one reader (``query_only``, so a
  smuggled write cannot succeed even if the SQL builder had a bug) and one writer. apsw
  connections are never shared across threads and never across `fork()`: a fork generation is
  recorded and a child process reopens instead of reusing an inherited handle.
- Writes run in ``BEGIN IMMEDIATE`` transactions (take the write lock up front, so a
  transaction never fails half-way with SQLITE_BUSY on lock upgrade), committed in groups:
  the writes that queue up behind a transaction share the next one, each in its own SAVEPOINT
  (`Database.write`). A replication `WriterHook` (replication.primary) is called around each
  COMMIT: it wakes the replicator and returns the TXID that contains the writes.
- apsw caches prepared statements per connection, so reusing connections reuses plans.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, Optional, TypeVar

import apsw

from .config import DatabaseDSN

if TYPE_CHECKING:
    from replication.primary import WriterHook

log = logging.getLogger("sqlite_rest.db")

T = TypeVar("T")

#: Prepared statements apsw keeps per connection (its default is 16; our SQL has many
#: shapes: one per table x filter columns x select list).
STATEMENT_CACHE_SIZE = 256

# Bumped in every forked child, so per-thread connections notice a fork without a getpid()
# system call per request.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def force_wal(conn: apsw.Connection, busy_timeout_ms: int = 5000) -> None:
    """Run the database in WAL mode: readers never block the writer, and Litestream-style
    replication reads the WAL. The mode is persistent in the file, so a read-only connection
    only checks it.

    The switch upgrades a read transaction to a write one, and SQLite answers a busy upgrade
    at once, without the busy handler: the first requests of several threads on a fresh file
    all tried it and one got SQLITE_BUSY → 503 (test_concurrent_writers_in_threads_all_commit,
    1 run in 10). So a busy switch is retried until another connection has made it or
    `busy_timeout_ms` has passed."""
    deadline = time.monotonic() + busy_timeout_ms / 1000.0
    while True:
        mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        if str(mode).lower() == "wal":
            return
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.001)


def set_busy_timeout(conn: apsw.Connection, milliseconds: int) -> None:
    """Wait up to `milliseconds` for a lock before failing with SQLITE_BUSY (→ 503)."""
    conn.set_busy_timeout(milliseconds)


#: Sleep between retries of a busy write lock (seconds): SQLite's own busy_timeout handler
#: sleeps 1, 2, 5, 10 … 100 ms, far longer than one of our write transactions (~0.1 ms), so
#: contending writers of different worker processes would mostly sleep (p99 of POST ≈ 160 ms).
#: The last sleep repeats: 0.5 ms, not 2 (#11, 2026-12-06: a group commit holds the lock for
#: ~0.3-0.6 ms, and a leader that slept 2 ms past it kept its batch waiting; p99 of POST lower
#: in 9 of 10 rounds, 11.9 / 12.9 and 10.9 / 11.7 ms, POST rate within noise). Polling a lock
#: held for the whole 5 s busy timeout costs 10,000 wake-ups.
BUSY_RETRY_SLEEPS_S = (0.0001, 0.0002, 0.0005)


def set_short_busy_waits(conn: apsw.Connection, milliseconds: int) -> None:
    """Like `set_busy_timeout`, but retry a busy lock after short sleeps (see
    BUSY_RETRY_SLEEPS_S); give up (SQLITE_BUSY → 503) after `milliseconds`."""
    deadline = [0.0]
    sleeps = BUSY_RETRY_SLEEPS_S
    last = len(sleeps) - 1

    def busy_handler(attempts: int) -> bool:
        now = time.monotonic()
        if attempts == 0:  # a new wait for this connection
            deadline[0] = now + milliseconds / 1000.0
        elif now >= deadline[0]:
            return False
        time.sleep(sleeps[min(attempts, last)])
        return True

    conn.set_busy_handler(busy_handler)


def enable_foreign_keys(conn: apsw.Connection) -> None:
    """Enforce FOREIGN KEY constraints (SQLite leaves them off per connection by default)."""
    conn.execute("PRAGMA foreign_keys=ON")


def set_synchronous(conn: apsw.Connection, level: str = "NORMAL") -> None:
    """NORMAL is durable across application crashes in WAL mode and much faster than FULL;
    FULL additionally survives power loss at the cost of an fsync per commit."""
    if level not in ("NORMAL", "FULL"):
        raise ValueError(f"unsupported synchronous level {level!r}")
    conn.execute(f"PRAGMA synchronous={level}")


#: WAL size (pages) past which the background checkpointer runs (SQLite's auto-checkpoint
#: default, ~4 MB).
CHECKPOINT_AFTER_PAGES = 1000
#: WAL size (pages) past which the checkpointer also rewinds the WAL (~40 MB).
RESTART_AFTER_PAGES = 10_000
#: How long a rewind waits for other processes' writers and readers (milliseconds).
RESTART_WAIT_MS = 200
#: Least time between two background checkpoints (seconds).
CHECKPOINT_MIN_INTERVAL_S = 0.05
#: The checkpointer thread exits (and closes its connection) after this many idle seconds.
CHECKPOINTER_IDLE_EXIT_S = 30.0


class BackgroundCheckpointer:
    """PASSIVE WAL checkpoints on a thread of its own instead of in a writer's COMMIT.

    SQLite's auto-checkpoint runs inside the COMMIT that crosses the threshold, and a
    checkpoint fsyncs the WAL and the database: measured 100-260 ms on a loaded disk, during
    which that request (and every writer queued behind it) waits. A PASSIVE checkpoint never
    blocks writers, so here it runs beside them; `wal_hook` replaces the writers'
    auto-checkpoint hook. With replication the replicator's read transaction still bounds
    what any checkpoint may copy, exactly as it bounded the auto-checkpoint.
    """

    def __init__(self, path: str, busy_timeout_ms: int, synchronous: str,
                 write_turn: threading.Lock, after_pages: int = CHECKPOINT_AFTER_PAGES,
                 restart_after_pages: int = RESTART_AFTER_PAGES):
        self.path = path
        self.write_turn = write_turn  # the Database's: held while restarting the WAL
        self.restart_after_pages = restart_after_pages
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.after_pages = after_pages
        self._wake = threading.Event()
        self._generation = None  # fork generation the thread runs in
        self._lock = threading.Lock()

    def wal_hook(self, _conn, _name: str, pages: int) -> int:
        # Called after every commit; a pending request needs no second wake-up.
        if pages >= self.after_pages and not self._wake.is_set():
            self.request()
        return apsw.SQLITE_OK

    def request(self) -> None:
        """Ask for a checkpoint soon (starts the thread if none runs in this process)."""
        with self._lock:
            if self._generation != _fork_generation:
                threading.Thread(target=self._run, name="wal-checkpoint", daemon=True).start()
                self._generation = _fork_generation
            self._wake.set()

    def _run(self) -> None:
        conn = None
        try:
            while True:
                if not self._wake.wait(CHECKPOINTER_IDLE_EXIT_S):
                    with self._lock:  # idle: exit, so idle apps hold no thread/connection
                        if not self._wake.is_set():
                            self._generation = None
                            return
                self._wake.clear()
                try:
                    if conn is None:
                        conn = open_connection(self.path, create=False,
                                               busy_timeout_ms=self.busy_timeout_ms,
                                               synchronous=self.synchronous)
                    _busy, wal_pages, _done = conn.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                    if wal_pages >= self.restart_after_pages:
                        self._restart(conn)
                except apsw.Error as exc:  # the next commit past the threshold retries
                    log.warning("background WAL checkpoint failed: %s", exc)
                # Under a write storm every commit asks again: at most one checkpoint (two
                # fsyncs) per interval, as SQLite's per-commit attempts would thrash the disk.
                time.sleep(CHECKPOINT_MIN_INTERVAL_S)
        finally:
            if conn is not None:
                conn.close()

    def _restart(self, conn: apsw.Connection) -> None:
        """Rewind a WAL that writers never let go of. A writer rewinds the WAL only when it
        starts while every frame is already copied back, which a steady stream of commits
        from several threads and processes prevents, so the WAL would grow without bound.
        RESTART copies the few frames written since the PASSIVE pass and rewinds; it blocks
        writers meanwhile, so this process's writers wait on their turn lock (one fsync or
        two, once per RESTART_AFTER_PAGES) and other processes' writers are waited for at
        most RESTART_WAIT_MS."""
        with self.write_turn:
            conn.set_busy_timeout(RESTART_WAIT_MS)
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0][0]
            finally:
                conn.set_busy_timeout(self.busy_timeout_ms)
        if busy:
            log.info("WAL restart postponed: the database stayed busy for %d ms",
                     RESTART_WAIT_MS)


def make_query_only(conn: apsw.Connection) -> None:
    """Reader connections refuse every write (defence in depth for the read path)."""
    conn.execute("PRAGMA query_only=ON")


def _regexp(pattern, value):
    if pattern is None or value is None:
        return None
    return 1 if re.search(str(pattern), str(value)) else 0


def register_functions(conn: apsw.Connection) -> None:
    """SQL functions the query builder relies on (REGEXP for match/imatch)."""
    try:
        from .api import sql as sql_builder
    except ImportError:  # pragma: no cover - only while sql.py is absent
        sql_builder = None
    if sql_builder is not None and hasattr(sql_builder, "register_functions"):
        sql_builder.register_functions(conn)
    else:  # pragma: no cover
        conn.create_scalar_function("regexp", _regexp, 2, deterministic=True)


def open_connection(
    path: str,
    *,
    read_only: bool = False,
    query_only: bool = False,
    create: bool = True,
    busy_timeout_ms: int = 5000,
    synchronous: str = "NORMAL",
    short_busy_waits: bool = False,
    replica_params: Optional[dict] = None,
) -> apsw.Connection:
    """Open one connection with every setting of the connection model applied.
    short_busy_waits: poll a busy lock every 0.1-2 ms (writers) instead of SQLite's
    1-100 ms backoff. replica_params: read ``path`` from its replica through the Litestream
    VFS with these URI parameters (a read replica; always read-only)."""
    if replica_params is not None:
        from replication.primary import replica_install_functions, replica_uri

        conn = apsw.Connection(replica_uri(path, replica_params),
                               flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
                               statementcachesize=STATEMENT_CACHE_SIZE)
        try:
            set_busy_timeout(conn, busy_timeout_ms)
            make_query_only(conn)
            register_functions(conn)
            replica_install_functions(conn)
        except BaseException:
            conn.close()
            raise
        return conn
    if read_only:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(path, flags=flags, statementcachesize=STATEMENT_CACHE_SIZE)
    try:
        if short_busy_waits:
            set_short_busy_waits(conn, busy_timeout_ms)
        else:
            set_busy_timeout(conn, busy_timeout_ms)
        if not read_only:
            force_wal(conn, busy_timeout_ms)
            set_synchronous(conn, synchronous)
        enable_foreign_keys(conn)
        if query_only:
            make_query_only(conn)
        register_functions(conn)
    except BaseException:
        conn.close()
        raise
    return conn


#: Most requests one group commit takes (the rest wait for the next one): bounds the time a
#: request waits behind others in one transaction.
MAX_GROUP_COMMIT = 64


class _PendingWrite:
    """One request's part of a group commit: its work, and what came of it."""

    __slots__ = ("work", "value", "error", "commit_result", "done", "wake")

    def __init__(self, work):
        self.work = work
        self.value = None
        self.error: Optional[BaseException] = None
        self.commit_result: object = None
        self.done = False
        #: Held until this write's thread may go on; released once, by the leader whose batch
        #: answered it (`done`) or that hands it the lead (not `done`).
        self.wake = threading.Lock()
        self.wake.acquire()


class Database:
    """Per-thread, per-process apsw connections to one database file."""

    def __init__(self, dsn: DatabaseDSN, *, writer_hook: Optional["WriterHook"] = None,
                 create_missing: bool = True):
        self.dsn = dsn
        self.writer_hook = writer_hook
        #: Create the file if it is missing (DSN mode rwc, and not replicated: see ServerConfig).
        self.create = dsn.mode == "rwc" and create_missing
        self._local = threading.local()
        # Write transactions of this process's threads take turns here instead of polling
        # SQLite's write lock against each other (only other processes are polled): the
        # leader of a group commit, a rolled-back write, the checkpointer.
        self._write_turn = threading.Lock()
        # Writes waiting for the next group commit, and whether a thread leads one (both
        # under _queue_lock): while one leads, the others wait on their own `wake`.
        self._pending: collections.deque = collections.deque()
        self._leading = False
        self._queue_lock = threading.Lock()
        self._held: Optional[tuple] = None  # (fork generation, connection): hold_replica_open
        self._hold_lock = threading.Lock()
        self.checkpointer = BackgroundCheckpointer(dsn.path, dsn.busy_timeout_ms,
                                                   dsn.synchronous, self._write_turn)

    # -- connections ------------------------------------------------------------------
    def _connections(self) -> threading.local:
        local = self._local
        if getattr(local, "generation", None) != _fork_generation:
            # Fresh thread, or a forked child holding the parent's handles: never reuse
            # inherited handles (SQLite forbids it); drop them without closing them, as
            # closing could touch the parent's locks.
            local.generation = _fork_generation
            local.reader = None
            local.writer = None
        return local

    def reader(self) -> apsw.Connection:
        """This thread's read connection (query_only)."""
        local = self._connections()
        conn = local.reader
        if conn is None:
            conn = local.reader = self._open_reader()
            if self.dsn.replica:
                self.hold_replica_open()
        return conn

    def _open_reader(self) -> apsw.Connection:
        return open_connection(
            self.dsn.path,
            read_only=self.dsn.read_only,
            query_only=True,
            create=self.create,
            busy_timeout_ms=self.dsn.busy_timeout_ms,
            replica_params=dict(self.dsn.vfs_params) if self.dsn.replica else None,
        )

    def hold_replica_open(self) -> None:
        """A read replica: keep one connection of this process open for its whole life.
        Connections to one replica share the VFS's index, page cache and poller, which live
        while one of them is open; request threads come and go, and a thread whose first
        connection opened during a replica-store outage failed with nothing to share, while
        the others served the last snapshot (test_a_replica_store_outage_keeps_reads_on_the_
        last_snapshot). Raises what opening raises (store unreachable: SQLITE_CANTOPEN)."""
        with self._hold_lock:
            if self._held is None or self._held[0] != _fork_generation:
                self._held = (_fork_generation, self._open_reader())

    def writer(self) -> apsw.Connection:
        """This thread's write connection. On a read-only DSN it is opened read-only, so
        writes fail with SQLITE_READONLY (→ 405 25006) like on a replica."""
        if self.dsn.replica:  # writes.py answers 405 25006 first; this is the backstop
            raise RuntimeError("a read replica has no write connection")
        local = self._connections()
        conn = local.writer
        if conn is None:
            conn = local.writer = open_connection(
                self.dsn.path,
                read_only=self.dsn.read_only,
                create=self.create,
                busy_timeout_ms=self.dsn.busy_timeout_ms,
                synchronous=self.dsn.synchronous,
                short_busy_waits=True,
            )
            hook = self.writer_hook
            if hook is not None and hook.owns_checkpoints:
                # Replication on: checkpoints belong to the replicator (PASSIVE at its
                # thresholds, never RESTART; design/local-sync.md), so workers never run one.
                conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
            elif not self.dsn.read_only:
                conn.set_wal_hook(self.checkpointer.wal_hook)
            if hook is not None:
                hook.watch_connection(conn)  # e.g. learns each commit's WAL frame
        return conn

    def close_thread_connections(self) -> None:
        """Close this thread's connections (tests, shutdown)."""
        local = self._connections()
        for name in ("reader", "writer"):
            conn = getattr(local, name)
            if conn is not None:
                conn.close()
                setattr(local, name, None)

    # -- transactions -----------------------------------------------------------------
    @contextlib.contextmanager
    def read(self) -> Iterator[apsw.Connection]:
        """A consistent snapshot for requests that run more than one statement (a page and
        its exact count)."""
        conn = self.reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")  # read-only: COMMIT just releases the snapshot

    def write(self, work: Callable[[apsw.Connection], T], *,
              rollback: bool = False) -> tuple[T, object]:
        """Run ``work(conn)`` in a write transaction: ``(what it returned, the writer hook's
        commit result)``, after COMMIT. An exception from ``work`` rolls back its writes, and
        only its own, and is raised here.

        Group commit: the writes of this process's threads that arrive while another
        transaction runs are taken together by the next leader, the thread of the oldest of
        them. They run one after another in one ``BEGIN IMMEDIATE`` transaction, each in a
        SAVEPOINT of its own, and one COMMIT (and one replicator wake-up) answers them all.
        Nobody waits for a batch to fill: a write that finds no leader leads at once, alone.
        The others sleep until their answer is ready: they never take the write turn just to
        find their write done (each did, one after another, until #11: 13 % of a worker's
        GIL time under a POST flood, measured with py-spy).

        ``rollback=True`` (``Prefer: tx=rollback``) runs ``work`` alone in a transaction of
        its own and rolls it back. ``work`` runs on whichever thread leads the batch, so it
        must not use Flask's request context.
        """
        if rollback:
            with self._write_turn:
                return self._run_alone_rolled_back(work), None
        pending = _PendingWrite(work)
        with self._queue_lock:
            self._pending.append(pending)
            leader = not self._leading
            self._leading = True
        if not leader:
            try:
                pending.wake.acquire()  # answered by a leader's batch, or handed the lead
            except BaseException:  # e.g. KeyboardInterrupt in a library caller's main thread
                self._withdraw(pending)
                raise
        if not pending.done:
            self._lead_batch(pending)
        if pending.error is not None:
            raise pending.error
        if not pending.done:  # never answer a write that no batch ran as done
            raise RuntimeError("internal error: a write was left out of every group commit")
        return pending.value, pending.commit_result

    def _begin(self) -> apsw.Connection:
        conn = self.writer()
        if conn.in_transaction:  # a previous request died mid-way; never inherit it
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        return conn

    def _run_alone_rolled_back(self, work):
        conn = self._begin()
        try:
            return work(conn)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _lead_batch(self, own: _PendingWrite) -> None:
        """One group commit of the oldest pending writes (`own` first), then wake the other
        writes of it and hand the lead to the oldest write still pending."""
        batch: list = []
        try:
            with self._write_turn:
                # The batch is taken once SQLite's write lock is ours: the writes that arrive
                # while the leader waits for another worker's transaction join this batch
                # instead of waiting for the next (#11: BEGIN IMMEDIATE waited 0.2 ms on
                # average under a POST flood on 2 workers; POST 1.07x, p99 13.1 -> 12.2 ms).
                conn = failed = None
                try:
                    conn = self._begin()
                except BaseException as exc:  # e.g. SQLITE_BUSY past the busy timeout
                    failed = exc
                with self._queue_lock:
                    pending = self._pending
                    while pending and len(batch) < MAX_GROUP_COMMIT:
                        batch.append(pending.popleft())
                if conn is None:  # no transaction: the whole batch fails with what BEGIN raised
                    self._finish(batch, failed)
                else:
                    self._run_batch(batch, conn)
        finally:
            if batch:
                with self._queue_lock:
                    self._pass_lead()
            else:  # interrupted before it took its batch (KeyboardInterrupt)
                self._withdraw(own, leading=True)
            for write in batch:
                if write is not own:
                    write.wake.release()

    def _pass_lead(self) -> None:
        """Under _queue_lock: the oldest pending write's thread leads next, or nobody."""
        if self._pending:
            self._pending[0].wake.release()
        else:
            self._leading = False

    def _withdraw(self, write: _PendingWrite, leading: bool = False) -> None:
        """A writer's thread stopped (an exception) before its write ran: the write is not run
        if still queued, and a lead it holds (`leading`) or was handed passes on, or every
        later write would wait forever."""
        with self._queue_lock:
            queued = write in self._pending
            if queued:
                self._pending.remove(write)
            # A queued write whose wake was released was handed the lead (one taken into a
            # batch is not queued).
            if leading or (queued and write.wake.acquire(False)):
                self._pass_lead()

    def _run_batch(self, batch: list, conn: apsw.Connection) -> None:
        """Under the write turn, in the transaction begun on `conn`: the writes of `batch`,
        one COMMIT; every one answered."""
        try:
            self._commit_batch(batch, conn)
        except BaseException as exc:  # noqa: BLE001 - e.g. a failing ROLLBACK TO: never
            # leave a taken write unanswered (its thread would find it neither done nor queued)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except apsw.Error:
                    pass
            self._finish(batch, exc)  # the writes not yet answered get the error

    def _commit_batch(self, batch: list, conn: apsw.Connection) -> None:
        alone = len(batch) == 1
        committed = []
        for write in batch:
            if not alone:
                conn.execute("SAVEPOINT request")
            try:
                write.value = write.work(conn)
            except BaseException as exc:  # noqa: BLE001 - handed to the request's thread
                write.error = exc
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error): the
                    # writes before this one are gone too, and were never acknowledged.
                    self._finish(batch, exc)
                    return
                conn.execute("ROLLBACK" if alone else "ROLLBACK TO request")
            else:
                committed.append(write)
            if not alone and conn.in_transaction:
                conn.execute("RELEASE request")
        if not committed:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._finish(batch, None)
            return
        try:
            if self.writer_hook is not None:
                self.writer_hook.before_commit()
            conn.execute("COMMIT")
        except BaseException as exc:  # nothing of the batch is written, nor acknowledged
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._finish(committed, exc)
            self._finish(batch, None)
            return
        result = self._after_commit()
        for write in committed:
            write.commit_result = result
        self._finish(batch, None)

    @staticmethod
    def _finish(batch: list, error: Optional[BaseException]) -> None:
        for write in batch:
            if error is not None and not write.done and write.error is None:
                write.error = error
            write.done = True

    def _after_commit(self) -> object:
        """Run the writer hook. The write is committed whatever it does, so a failing hook is
        logged loudly instead of turning a durable write into an error response."""
        if self.writer_hook is None:
            return None
        try:
            return self.writer_hook()
        except Exception:  # noqa: BLE001
            log.exception("commit hook failed (the write itself is committed)")
            return None

    def schema_version(self) -> int:
        return self.reader().execute("PRAGMA schema_version").fetchall()[0][0]

    def check_open(self) -> None:
        """Raise if the database cannot be opened and read (for /ready)."""
        self.reader().execute("SELECT count(*) FROM sqlite_schema").fetchall()
