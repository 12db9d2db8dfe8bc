"""The serve lifecycle's replication steps (sqlite_rest/replicator.py), without HTTP:
restore before open, pending-upload rescue, divergence guard, the one-replicator lock, and the
replication position of a commit (X-Replication-Txid). Real apsw DBs, real file replicas."""
from __future__ import annotations

import os
import shutil
import threading
import time

import apsw
import pytest

from replication.errors import ConfigError
from replication.file_replica_client import FileReplicaClient
from replication.notify import CommitListener, CommitWaiter
from replication.restore import restore
from replication.primary import DivergedError, Primary, ReplicationStartupError


@pytest.fixture
def env(tmp_path):
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replica:\n      url: file://{replica}\n")
    return db, replica, config


def make(db, config, **kw) -> Primary:
    return Primary.from_config_file(str(db), str(config), **kw)


def write_rows(db, values):
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    for v in values:
        conn.execute("INSERT INTO t(v) VALUES (?)", (v,))
    conn.close()


def rows(db):
    conn = apsw.Connection(str(db))
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY id")]
    finally:
        conn.close()


def run_until_replicated(rep: Primary, timeout=20.0, **start):
    rep.start(**start)
    deadline = time.monotonic() + timeout
    while not rep.ready():
        assert time.monotonic() < deadline, rep.status()
        time.sleep(0.05)


def replicate_rows(db, config, values):
    """Write ``values``, replicate them to the replica, stop cleanly."""
    write_rows(db, values)
    rep = make(db, config)
    rep.prepare()
    run_until_replicated(rep)
    assert rep.stop(10)


def remove_db(db):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")


def test_missing_db_and_empty_replica_start_empty(env):
    db, replica, config = env
    rep = make(db, config)
    rep.prepare()
    assert db.exists() and rep.restored_txid is None  # created empty, in WAL mode
    rep.release_lock()


def test_db_missing_is_restored_from_the_replica(env):
    db, replica, config = env
    write_rows(db, ["a", "b"])
    rep = make(db, config)
    rep.prepare()
    run_until_replicated(rep)
    write_rows(db, ["c"])
    assert rep.stop(10)
    remove_db(db)
    rep2 = make(db, config)
    rep2.prepare()
    assert rep2.restored_txid and rows(db) == ["a", "b", "c"]
    rep2.release_lock()


def test_pending_local_files_are_uploaded_before_the_restore(env):
    """Killed between commit and upload, then the DB was lost: the meta dir's L0 files hold
    acknowledged writes; they go to the replica first, so the restore includes them."""
    from replication.db import DB

    db, replica, config = env
    replicate_rows(db, config, ["a"])
    write_rows(db, ["acknowledged but never uploaded"])
    local = DB(str(db))
    local.open()
    assert local.sync()  # L0 written locally, no replica upload
    local.close()
    remove_db(db)
    rep2 = make(db, config)
    rep2.prepare()
    assert rows(db) == ["a", "acknowledged but never uploaded"]
    rep2.release_lock()


def test_a_different_db_at_the_same_path_is_refused(env):
    db, replica, config = env
    replicate_rows(db, config, ["a"])
    remove_db(db)
    shutil.rmtree(db.parent / ".app.db-litestream")
    write_rows(db, ["something else"])
    with pytest.raises(DivergedError) as info:
        make(db, config).prepare()
    message = str(info.value)
    assert "differs" in message
    assert "--replication-force-restore" in message and "--replication-reset-replica" in message


def test_the_same_content_without_local_history_is_adopted(env):
    db, replica, config = env
    replicate_rows(db, config, ["a"])
    shutil.rmtree(db.parent / ".app.db-litestream")
    rep2 = make(db, config)
    rep2.prepare()  # no error: the DB holds exactly the replica's latest content
    run_until_replicated(rep2)
    write_rows(db, ["b"])
    assert rep2.stop(10)
    out = db.parent / "out.db"
    restore(FileReplicaClient(str(replica)), str(out))
    assert rows(out) == ["a", "b"]


def test_a_db_restored_from_an_older_point_then_written_is_refused(env):
    db, replica, config = env
    write_rows(db, ["a"])
    rep = make(db, config)
    rep.prepare()
    run_until_replicated(rep)
    old_txid = rep.local_txid()
    write_rows(db, ["b", "c"])
    assert rep.stop(10)
    remove_db(db)
    restore(FileReplicaClient(str(replica)), str(db), txid=old_txid)
    write_rows(db, ["local only"])
    with pytest.raises(DivergedError):
        make(db, config).prepare()
    # The way out that keeps the replica: restore over the local DB.
    rep3 = make(db, config, force_restore=True)
    rep3.prepare()
    assert rows(db) == ["a", "b", "c"]
    rep3.release_lock()


def test_replica_ahead_of_local_history_is_refused_and_reset_replica_recovers(env, tmp_path):
    db, replica, config = env
    replicate_rows(db, config, ["a"])
    # Another writer advanced the replica: fake it with a copy of the newest file at TXID+1.
    client = FileReplicaClient(str(replica))
    newest = max(client.ltx_files(0), key=lambda f: f.max_txid)
    with client.open_ltx_file(0, newest.min_txid, newest.max_txid) as f:
        data = f.read()
    client.write_ltx_file(0, newest.max_txid + 1, newest.max_txid + 1, data, 1_700_000_000_000)
    with pytest.raises(DivergedError) as info:
        make(db, config).prepare()
    assert "beyond" in str(info.value)
    rep2 = make(db, config, reset_replica=True)
    rep2.prepare()
    run_until_replicated(rep2)
    assert rep2.stop(10)
    out = tmp_path / "out.db"
    restore(client, str(out))
    assert rows(out) == ["a"]


def test_a_meta_dir_that_cannot_be_made_is_a_one_line_error(env):
    """(#10: it was a traceback.) A file where the meta dir must go fails as a read-only
    directory does, for root too."""
    db, replica, config = env
    write_rows(db, ["a"])
    rep = make(db, config)
    with open(rep.meta_path, "w"):
        pass
    with pytest.raises(ReplicationStartupError) as info:
        rep.prepare()
    assert "cannot create the replication lock" in info.value.message
    assert "writable" in info.value.hint


def test_one_replicator_per_database(env):
    db, replica, config = env
    write_rows(db, ["a"])
    first = make(db, config)
    first.prepare()
    with pytest.raises(ReplicationStartupError) as info:
        make(db, config).prepare()
    assert "is still used by another server" in str(info.value) and str(os.getpid()) in str(info.value)
    first.release_lock()


def test_a_start_waits_for_the_processes_of_a_killed_server(env):
    """The lock outlives a killed supervisor in its HTTP processes for the milliseconds their
    parent-death signal takes: a start waits for them instead of refusing."""
    import subprocess
    import sys

    db, replica, config = env
    write_rows(db, ["a"])
    first = make(db, config)
    first.prepare()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"],
                              pass_fds=[first.lock_fd])
    first.release_lock()  # only the "worker" holds it now
    started = time.monotonic()
    second = make(db, config)
    second.prepare()
    assert holder.poll() is not None and time.monotonic() - started >= 0.5
    second.release_lock()


def test_db_not_in_config_is_an_error_naming_the_key(env, tmp_path):
    db, replica, config = env
    with pytest.raises(ConfigError) as info:
        make(tmp_path / "other.db", config)
    assert "dbs" in str(info.value) and "other.db" in str(info.value)


def test_commit_position_is_the_txid_that_contains_it(env, tmp_path):
    db, replica, config = env
    write_rows(db, ["a"])
    rep = make(db, config)
    rep.prepare()
    listener = CommitListener(str(tmp_path / "commit.sock"))
    run_until_replicated(rep, commit_listener=listener)
    stop = threading.Event()

    def receive():  # what the supervisor's receive thread does
        import select
        # poll(), as the supervisor: select() refuses descriptors past 1023, which a long
        # suite's process can hold (CI, 2026-12-06).
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        while not stop.is_set():
            if poller.poll(100):
                n = listener.drain()
                if n:
                    rep.notify_commit(n)

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    waiter = CommitWaiter(listener.path, timeout=10)
    conn = apsw.Connection(str(db))
    positions = []
    try:
        for v in ("x", "y", "z"):
            conn.execute("INSERT INTO t(v) VALUES (?)", (v,))
            positions.append(waiter())
    finally:
        conn.close()
        stop.set()
        t.join()
    assert all(p and len(p) == 16 for p in positions), positions
    txids = [int(p, 16) for p in positions]
    assert txids == sorted(txids) and txids[0] > 0
    assert rep.stop(10)
    listener.close()
    # Restoring exactly at a write's position gives a DB containing that write.
    for value, txid in zip(("x", "y", "z"), txids):
        out = tmp_path / f"at-{txid}.db"
        restore(FileReplicaClient(str(replica)), str(out), txid=txid)
        assert value in rows(out)
