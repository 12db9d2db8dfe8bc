"""Group commit (db.py `Database.write`): writes that queue up behind a transaction share the
next one, each in its own SAVEPOINT, answered after one COMMIT."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import apsw
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig, parse_dsn
from sqlite_rest import db as db_module
from sqlite_rest.db import Database

REPO = Path(__file__).resolve().parents[1]


class CountingHook:
    """A writer hook that counts COMMITs and answers each with its number as the position."""

    owns_checkpoints = False

    def __init__(self):
        self.commits = 0

    def watch_connection(self, conn) -> None:
        pass

    def before_commit(self) -> None:
        self.commits += 1

    def __call__(self) -> str:
        return f"{self.commits:016x}"


@pytest.fixture
def db_path(tmp_path) -> Path:
    path = tmp_path / "g.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    conn.close()
    return path


def rows(path: Path) -> list:
    conn = apsw.Connection(str(path))
    try:
        return conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


def queued_together(db: Database, calls: list) -> list:
    """Run each call on its own thread while the write turn is held, so they all queue up,
    then let them go: the first to get the turn takes them all into one batch. Returns what
    each returned or raised, in order."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    with db._write_turn:
        queued = 0
        for t, call in zip(threads, calls):
            t.start()  # one at a time, so they queue in this order
            if getattr(call, "alone", False):
                time.sleep(0.05)  # it waits for the turn itself, outside the queue
                continue
            queued += 1
            deadline = time.monotonic() + 10
            while len(db._pending) < queued:
                assert time.monotonic() < deadline, "the writes never queued up"
                time.sleep(0.002)
    for t in threads:
        t.join(30)
    return results


def insert(db: Database, row_id: int, name):
    return lambda: db.write(lambda conn: conn.execute(
        "INSERT INTO items VALUES (?, ?)", (row_id, name)) and row_id)


def test_queued_writes_share_one_commit_and_its_position(db_path):
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)
    results = queued_together(db, [insert(db, i, f"n{i}") for i in range(1, 9)])
    assert [value for value, _ in results] == list(range(1, 9))
    assert hook.commits == 1
    assert {position for _, position in results} == {f"{1:016x}"}
    assert rows(db_path) == [(i, f"n{i}") for i in range(1, 9)]


def test_writes_that_arrive_while_another_process_writes_join_the_waiting_leader(db_path):
    """The leader takes its batch once SQLite's write lock is its own: writes queued while it
    waited for another connection's transaction (another worker process) commit with it."""
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)
    other = apsw.Connection(str(db_path))  # stands for another worker process
    other.execute("BEGIN IMMEDIATE")
    results: dict = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: insert(db, i, f"n{i}")()}))
               for i in range(1, 5)]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not db._leading:  # the first leads, and waits in BEGIN IMMEDIATE for `other`
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(0.05)  # the leader is in BEGIN IMMEDIATE's busy waits
    for t in threads[1:]:
        queued = len(db._pending)
        t.start()
        while len(db._pending) == queued:
            assert time.monotonic() < deadline, "the writes never queued up"
            time.sleep(0.002)
    other.execute("COMMIT")
    for t in threads:
        t.join(30)
    other.close()
    assert sorted(results) == [1, 2, 3, 4]
    assert hook.commits == 1 and {position for _, position in results.values()} == {f"{1:016x}"}
    assert rows(db_path) == [(i, f"n{i}") for i in range(1, 5)]


def test_a_busy_write_lock_is_polled_in_short_sleeps_until_the_timeout(db_path, monkeypatch):
    """Another process's write lock is polled every BUSY_RETRY_SLEEPS_S (at most 0.5 ms), not
    with SQLite's 1-100 ms sleeps, and given up after the busy timeout (SQLITE_BUSY)."""
    sleeps: list = []
    real_sleep = time.sleep
    monkeypatch.setattr(db_module.time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    holder = apsw.Connection(str(db_path))
    holder.execute("BEGIN IMMEDIATE")
    conn = db_module.open_connection(str(db_path), busy_timeout_ms=300, short_busy_waits=True)
    threading.Timer(0.05, lambda: holder.execute("COMMIT")).start()
    conn.execute("BEGIN IMMEDIATE")  # waits ~50 ms, then gets the lock
    conn.execute("COMMIT")
    assert sleeps and max(sleeps) == db_module.BUSY_RETRY_SLEEPS_S[-1] <= 0.0005
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(apsw.BusyError):
        conn.execute("BEGIN IMMEDIATE")
    assert 0.25 <= time.monotonic() - started < 2
    holder.execute("ROLLBACK")
    for c in (conn, holder):
        c.close()


def test_one_failing_write_rolls_back_only_its_own(db_path):
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)

    def two_rows_then_fail(conn):
        conn.execute("INSERT INTO items VALUES (100, 'partial')")
        conn.execute("INSERT INTO items VALUES (101, NULL)")  # NOT NULL: fails

    results = queued_together(db, [insert(db, 1, "a"), lambda: db.write(two_rows_then_fail),
                                   insert(db, 2, "a"), insert(db, 3, "c")])
    assert results[0] == (1, f"{1:016x}") and results[3] == (3, f"{1:016x}")
    assert isinstance(results[1], apsw.ConstraintError) and "NOT NULL" in str(results[1])
    assert isinstance(results[2], apsw.ConstraintError) and "UNIQUE" in str(results[2])
    assert hook.commits == 1
    assert rows(db_path) == [(1, "a"), (3, "c")]


def test_a_lone_write_commits_at_once(db_path):
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)
    for i in range(1, 6):
        assert db.write(lambda conn, i=i: conn.execute(
            "INSERT INTO items VALUES (?, 'x' || ?)", (i, i)) and i) == (i, f"{i:016x}")
    assert hook.commits == 5


def test_a_rolled_back_write_runs_alone(db_path):
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)
    seen = []

    def rolled_back():
        return db.write(lambda conn: seen.append(conn.execute(
            "INSERT INTO items VALUES (50, 'gone') RETURNING id").fetchall()), rollback=True)
    rolled_back.alone = True

    results = queued_together(db, [insert(db, 1, "a"), rolled_back, insert(db, 2, "b")])
    assert results[1] == (None, None) and seen == [[(50,)]]
    assert rows(db_path) == [(1, "a"), (2, "b")]
    assert hook.commits == 1


class CountingTurn:
    """The write turn, counting how often it is taken."""

    def __init__(self, lock):
        self.lock, self.taken = lock, 0

    def __enter__(self):
        self.lock.acquire()
        self.taken += 1

    def __exit__(self, *exc):
        self.lock.release()


def test_writes_answered_by_a_batch_never_take_the_write_turn(db_path):
    """Only the leader takes the turn; the others sleep until their answer is ready (they
    used to take the turn one after another just to find their write done: #11)."""
    db = Database(parse_dsn(str(db_path)), writer_hook=CountingHook())
    turn = db._write_turn = CountingTurn(db._write_turn)
    results = queued_together(db, [insert(db, i, f"n{i}") for i in range(1, 9)])
    assert [value for value, _ in results] == list(range(1, 9))
    assert turn.taken == 2  # queued_together's own hold, and the leader's


class Interrupted(BaseException):
    """What a signal handler may raise in a thread waiting for its answer (KeyboardInterrupt
    in a library caller's main thread)."""


def interrupt_waits(monkeypatch, marked):
    """Writes whose work is in `marked` have their wait for an answer interrupted: at once
    (`"queued"`), or once their thread is woken (`"woken"`: answered or handed the lead)."""
    import sqlite_rest.db as db_module

    class Wake:
        def __init__(self, when):
            self.real, self.when = threading.Lock(), when
            self.real.acquire()

        def acquire(self, blocking=True):
            if not blocking:
                return self.real.acquire(False)
            if self.when == "woken":
                self.real.acquire()
                self.real.release()  # woken, and still looks so to _withdraw
            raise Interrupted()

        def release(self):
            self.real.release()

    class PendingWrite(db_module._PendingWrite):
        def __init__(self, work):
            super().__init__(work)
            if work in marked:
                self.wake = Wake(marked[work])

    monkeypatch.setattr(db_module, "_PendingWrite", PendingWrite)


def test_a_write_interrupted_while_queued_is_never_run(db_path, monkeypatch):
    db = Database(parse_dsn(str(db_path)), writer_hook=CountingHook())
    gone = lambda conn: conn.execute("INSERT INTO items VALUES (2, 'never')") and 2  # noqa: E731
    interrupt_waits(monkeypatch, {gone: "queued"})
    outcome = []

    def interrupted():
        try:
            db.write(gone)
        except Interrupted:
            outcome.append("interrupted")
    interrupted.alone = True  # it leaves the queue at once: queued_together must not wait for it

    results = queued_together(db, [insert(db, 1, "a"), interrupted, insert(db, 3, "c")])
    assert outcome == ["interrupted"] and results[0][0] == 1 and results[2][0] == 3
    assert rows(db_path) == [(1, "a"), (3, "c")]
    assert not db._pending and not db._leading
    assert db.write(lambda conn: conn.execute("INSERT INTO items VALUES (4, 'd')") and 4)[0] == 4


def test_a_lead_handed_to_an_interrupted_write_passes_on(db_path, monkeypatch):
    """Without it every later write of the process would wait for a leader forever."""
    db = Database(parse_dsn(str(db_path)), writer_hook=CountingHook())
    gone = lambda conn: conn.execute("INSERT INTO items VALUES (2, 'never')") and 2  # noqa: E731
    interrupt_waits(monkeypatch, {gone: "woken"})
    outcome, results = [], {}
    running = threading.Event()

    def first(conn):  # leads alone; the next two queue behind it, for the next batch
        running.set()  # its batch is taken: the others queue for the next one
        deadline = time.monotonic() + 10
        while len(db._pending) < 2:
            assert time.monotonic() < deadline, "the next writes never queued up"
            time.sleep(0.002)
        return conn.execute("INSERT INTO items VALUES (1, 'a')") and 1

    def run(name, call):
        try:
            results[name] = call()
        except Interrupted:
            outcome.append(name)

    threads = [threading.Thread(target=run, args=("first", lambda: db.write(first)))]
    threads[0].start()
    assert running.wait(10)
    for name, call in (("gone", lambda: db.write(gone)), ("third", insert(db, 3, "c"))):
        threads.append(threading.Thread(target=run, args=(name, call)))
        threads[-1].start()
        while len(threads) - 1 > len(db._pending):
            time.sleep(0.001)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a write waited for a leader forever"
    assert outcome == ["gone"] and results["first"][0] == 1 and results["third"][0] == 3
    assert rows(db_path) == [(1, "a"), (3, "c")]
    assert not db._pending and not db._leading


def test_a_leader_interrupted_before_its_batch_leaves_no_write_waiting(db_path):
    """Interrupted while it waits for the write turn (held by the checkpointer, say), a
    leader's write is never run and the lead passes on: the next write is not stuck."""
    db = Database(parse_dsn(str(db_path)), writer_hook=CountingHook())

    class InterruptedOnce(CountingTurn):
        def __enter__(self):
            if self.taken == 0:
                self.taken = 1
                raise Interrupted()
            return super().__enter__()

    db._write_turn = InterruptedOnce(db._write_turn)
    with pytest.raises(Interrupted):
        insert(db, 1, "never")()
    after = threading.Thread(target=insert(db, 2, "b"), daemon=True)
    after.start()
    after.join(10)
    assert not after.is_alive(), "the next write waited for a leader forever"
    assert rows(db_path) == [(2, "b")]
    assert not db._pending and not db._leading


def test_a_transaction_lost_under_a_batch_fails_every_write_of_it(db_path):
    """SQLite rolls a whole transaction back on some errors (disk full, I/O): the writes that
    ran before it in the batch are gone too, so none of them may be answered as done."""
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)

    def lose_the_transaction(conn):
        conn.execute("ROLLBACK")
        raise apsw.IOError("simulated: the transaction was rolled back")

    results = queued_together(db, [insert(db, 1, "a"), lambda: db.write(lose_the_transaction),
                                   insert(db, 2, "b")])
    assert all(isinstance(r, apsw.IOError) for r in results), results
    assert rows(db_path) == [] and hook.commits == 0
    assert db.write(lambda conn: conn.execute("INSERT INTO items VALUES (9, 'after')") and 9)[0] == 9


def test_a_failing_commit_fails_the_batch(db_path):
    class FailingHook(CountingHook):
        def before_commit(self) -> None:
            raise apsw.IOError("simulated: COMMIT cannot happen")

    db = Database(parse_dsn(str(db_path)), writer_hook=FailingHook())
    results = queued_together(db, [insert(db, i, f"n{i}") for i in range(1, 4)])
    assert all(isinstance(r, apsw.IOError) for r in results), results
    assert rows(db_path) == []


def test_the_api_answers_each_request_of_a_batch(db_path):
    """Through the app: a duplicate in a batch gets its 409, the others their 201 and the one
    position that holds them."""
    hook = CountingHook()
    app = create_app(ServerConfig(db_dsn=str(db_path), allow_tables=("items",),
                                  auth_disabled=True, writer_hook=hook))
    db = app.extensions["sqlite_rest"].db
    bodies = [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}, {"id": 3, "name": "c"},
              {"name": None}]

    def post(body):
        return lambda: app.test_client().post("/items", json=body)

    responses = queued_together(db, [post(b) for b in bodies])
    assert [r.status_code for r in responses] == [201, 409, 201, 400]
    assert responses[1].get_json()["code"] == "23505"
    assert {r.headers["X-Replication-Txid"] for r in responses if r.status_code == 201} == \
        {f"{1:016x}"}
    assert hook.commits == 1
    assert rows(db_path) == [(1, "a"), (3, "c")]


CRASH_CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from sqlite_rest.config import parse_dsn
    from sqlite_rest.db import Database

    db_path, acks_path = sys.argv[1], sys.argv[2]
    acks = open(acks_path, "a")

    class KillAtSecondCommit:
        owns_checkpoints = False
        commits = 0
        def watch_connection(self, conn): pass
        def before_commit(self):
            self.commits += 1
            if self.commits == 2:  # the batch: between its writes and its COMMIT
                os.kill(os.getpid(), signal.SIGKILL)
        def __call__(self): return None

    db = Database(parse_dsn(db_path), writer_hook=KillAtSecondCommit())

    def write(i):
        db.write(lambda conn: conn.execute("INSERT INTO items VALUES (?, ?)", (i, f"n{i}")))
        acks.write(f"{i}\\n"); acks.flush(); os.fsync(acks.fileno())

    write(1)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(2, 10)]
    with db._write_turn:
        for t in threads:
            t.start()
        while len(db._pending) < 8:
            time.sleep(0.005)
    for t in threads:
        t.join()
    print("never reached")
""")


def test_a_crash_before_the_batch_commits_loses_only_unanswered_writes(db_path, tmp_path):
    acks = tmp_path / "acks"
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(db_path), str(acks)],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9, proc.stderr
    assert acks.read_text().split() == ["1"]
    assert rows(db_path) == [(1, "n1")]


def test_an_unexpected_failure_inside_a_batch_answers_every_write_of_it(db_path, monkeypatch):
    """A ROLLBACK TO that fails (it should not) must not leave writes of the batch unanswered
    or answered as done: they were never committed."""
    hook = CountingHook()
    db = Database(parse_dsn(str(db_path)), writer_hook=hook)

    def fail(conn):
        raise apsw.ConstraintError("simulated: this write fails")

    real_writer = db.writer

    class Tripwire:
        """The writer connection, whose ROLLBACK TO raises."""

        def __init__(self, conn):
            self._conn = conn

        def execute(self, sql, *args):
            if sql.startswith("ROLLBACK TO"):
                raise apsw.IOError("simulated: ROLLBACK TO failed")
            return self._conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self._conn, name)

    monkeypatch.setattr(db, "writer", lambda: Tripwire(real_writer()))
    results = queued_together(db, [insert(db, 1, "a"), lambda: db.write(fail),
                                   insert(db, 2, "b")])
    assert isinstance(results[1], apsw.ConstraintError)
    assert isinstance(results[0], apsw.IOError) and isinstance(results[2], apsw.IOError)
    assert hook.commits == 0 and rows(db_path) == []


def test_a_write_is_seen_by_the_next_request_in_any_worker(tmp_path):
    """Through the real server (2 workers × 8 threads) under concurrent writers: every 201 is
    followed by a GET, on a new connection (so either worker may answer), that sees the row."""
    import httpx

    from tests.plugins.server import start_server

    db = tmp_path / "rw.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.close()
    server = start_server(db, "--security-allow-table", "items", metrics=False)
    misses: list = []

    def client(k: int) -> None:
        for i in range(40):
            name = f"c{k}-{i}"
            created = httpx.post(server.base_url + "/items", json={"name": name},
                                 headers={"Prefer": "return=representation",
                                          "Connection": "close"})
            assert created.status_code == 201, created.text
            row_id = created.json()[0]["id"]
            seen = httpx.get(server.base_url + "/items", params={"id": f"eq.{row_id}"},
                             headers={"Connection": "close"}).json()
            if seen != [{"id": row_id, "name": name}]:
                misses.append((row_id, name, seen))

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        server.stop()
        os.unlink(server.log_path)
    assert misses == []
    assert len(rows(db)) == 240
