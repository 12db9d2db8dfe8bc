"""The upload loop (``replication.replica.Replica``) on a real DB and a real file replica."""
from __future__ import annotations

import os
import shutil
import threading
import time

import apsw
import pytest

from replication.db import DB
from replication.errors import ReplicationError
from replication.file_replica_client import FileReplicaClient
from replication.ltx import Decoder, Header
from replication.replica import ChainError, Replica
from replication.restore import restore


class ReplicaConfig:
    """Only the fields ``Replica`` reads (units as in ``replication.config.ReplicaConfig``)."""

    def __init__(self, sync_interval=1.0, max_sync_ltx_files=256, auto_recover=False):
        self.sync_interval = sync_interval
        self.max_sync_ltx_files = max_sync_ltx_files
        self.auto_recover = auto_recover


def make_db(path) -> apsw.Connection:
    con = apsw.Connection(str(path))
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    return con


def commit(con, n=1, size=100):
    for _ in range(n):
        con.execute("INSERT INTO t(v) VALUES (?)", ("x" * size,))


def rows(path):
    con = apsw.Connection(str(path))
    try:
        return con.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def l0_names(client):
    return [(f.min_txid, f.max_txid) for f in client.ltx_files(0)]


def assert_contiguous(client, level=0):
    files = list(client.ltx_files(level))
    assert files, f"L{level} is empty"
    assert files[0].min_txid == 1 or level != 0
    for prev, cur in zip(files, files[1:]):
        assert cur.min_txid == prev.max_txid + 1, (prev, cur)


@pytest.fixture
def setup(tmp_path):
    con = make_db(tmp_path / "src.db")
    db = DB(tmp_path / "src.db")
    db.open()
    client = FileReplicaClient(str(tmp_path / "replica"))
    client.init()
    yield tmp_path, con, db, client
    db.close()
    con.close()


def test_uploads_local_l0_files_in_order_with_their_timestamps(setup):
    tmp_path, con, db, client = setup
    replica = Replica(db, client, ReplicaConfig())
    replica.merge_backlog = False
    for _ in range(3):
        commit(con)
        db.sync()
    n = replica.sync()
    local = db.local_ltx_files(0)
    assert n == len(local) >= 3
    assert l0_names(client) == [(f.min_txid, f.max_txid) for f in local]
    assert_contiguous(client)
    for f in client.ltx_files(0):
        with db.open_local_ltx(0, f.min_txid, f.max_txid) as lf:
            local_bytes = lf.read()
        with client.open_ltx_file(0, f.min_txid, f.max_txid) as rf:
            assert rf.read() == local_bytes
        ts = Header.unmarshal(local_bytes[:100]).timestamp
        assert abs(f.created_at.timestamp() * 1000 - ts) < 1  # mtime = header timestamp
    assert replica.pos() == db.pos().txid
    assert replica.sync() == 0  # caught up: nothing to do
    out = tmp_path / "out.db"
    restore(client, str(out))
    assert rows(out) == rows(tmp_path / "src.db")


def test_max_sync_ltx_files_bounds_one_round(setup):
    _, con, db, client = setup
    for _ in range(5):
        commit(con)
        db.sync()
    total = len(db.local_ltx_files(0))
    replica = Replica(db, client, ReplicaConfig(max_sync_ltx_files=2))
    replica.merge_backlog = False
    assert replica.sync() == 2
    assert replica.sync() == 2
    assert replica.sync() == total - 4
    assert_contiguous(client)


def test_position_comes_from_the_replica_listing(setup):
    _, con, db, client = setup
    commit(con)
    db.sync()
    Replica(db, client, ReplicaConfig()).sync()
    commit(con)
    db.sync()
    # A new Replica (a restart) learns the position from L0 and uploads only the new file.
    fresh = Replica(db, client, ReplicaConfig())
    assert fresh.calc_pos() == db.pos().txid - 1
    assert fresh.sync() == 1
    assert_contiguous(client)


def test_a_commit_reaches_the_replica_within_milliseconds(setup):
    _, con, db, client = setup
    db.sync()
    replica = Replica(db, client, ReplicaConfig(sync_interval=30.0))  # timer cannot be the cause
    db.subscribe(replica.wake)
    stop = threading.Event()
    monitor = threading.Thread(target=db.monitor, args=(stop,), daemon=True)
    monitor.start()
    replica.start()
    try:
        time.sleep(0.3)
        before = max(f.max_txid for f in client.ltx_files(0))
        t0 = time.monotonic()
        commit(con)
        while max(f.max_txid for f in client.ltx_files(0)) == before:
            assert time.monotonic() - t0 < 5, "the commit never reached the replica"
            time.sleep(0.002)
        # Far below the 30s sync-interval: driven by the DB's notify (or the file poll).
        assert time.monotonic() - t0 < 2.0
        wait = time.monotonic() + 5
        while replica.health.replica_txid != db.pos().txid and time.monotonic() < wait:
            time.sleep(0.002)
        h = replica.health
        assert h.replica_txid == db.pos().txid and h.last_sync_at is not None
    finally:
        stop.set()
        assert replica.stop(timeout=5)
        monitor.join(5)


def test_handover_replica_ahead_continues_remote_txids(setup):
    tmp_path, con, db, client = setup
    for _ in range(3):
        commit(con)
        db.sync()
    Replica(db, client, ReplicaConfig()).sync()
    remote_max = max(f.max_txid for f in client.ltx_files(0))
    # Lose the meta dir (as after a restore onto a new machine): the local position is 0.
    db.close()
    shutil.rmtree(db.meta_path)
    commit(con, 2)
    db2 = DB(tmp_path / "src.db")
    db2.open()
    try:
        replica = Replica(db2, client, ReplicaConfig())
        replica.sync()  # finds the replica ahead, continues from it
        assert db2.pos().txid == remote_max
        db2.sync()  # cannot verify against the WAL: a full-page L0 at remote max + 1
        assert replica.sync() >= 1
        files = list(client.ltx_files(0))
        assert any(f.min_txid == remote_max + 1 for f in files)
        assert_contiguous(client)
        out = tmp_path / "out.db"
        restore(client, str(out))
        assert rows(out) == rows(tmp_path / "src.db")
    finally:
        db2.close()


def test_gap_in_local_files_stops_loudly_and_uploads_nothing_past_it(setup):
    _, con, db, client = setup
    commit(con)
    db.sync()
    fatal = []
    replica = Replica(db, client, ReplicaConfig(sync_interval=0.05), on_fatal=fatal.append)
    replica.sync()
    pos = replica.pos()
    for _ in range(3):
        commit(con)
        db.sync()
    # The next file the replica needs disappears from the meta dir.
    os.unlink(db.ltx_path(0, pos + 1, pos + 1))
    with pytest.raises(ChainError) as err:
        replica.sync()
    assert err.value.hint
    assert max(f.max_txid for f in client.ltx_files(0)) == pos
    # The loop treats it as fatal at once (no retry can fix a gap).
    replica.start()
    deadline = time.monotonic() + 5
    while not fatal and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fatal and isinstance(fatal[0], ChainError)
    assert replica.health.fatal
    assert max(f.max_txid for f in client.ltx_files(0)) == pos
    replica.stop(timeout=0.2, interval=0.05)


def test_gap_with_auto_recover_is_bridged_by_a_snapshot(setup):
    tmp_path, con, db, client = setup
    commit(con)
    db.sync()
    replica = Replica(db, client, ReplicaConfig(sync_interval=0.05, auto_recover=True))
    replica.sync()
    pos = replica.pos()
    for _ in range(3):
        commit(con)
        db.sync()
    os.unlink(db.ltx_path(0, pos + 1, pos + 1))
    replica.start()
    try:
        deadline = time.monotonic() + 10
        while replica.pos() != db.pos().txid and time.monotonic() < deadline:
            time.sleep(0.02)
        assert replica.pos() == db.pos().txid
        snaps = list(client.ltx_files(9))
        assert snaps and snaps[-1].min_txid == 1
        out = tmp_path / "out.db"
        restore(client, str(out))
        assert rows(out) == rows(tmp_path / "src.db")
    finally:
        replica.stop(timeout=2)


def test_errors_back_off_and_the_retry_budget_fires_on_fatal(setup):
    tmp_path, con, db, client = setup
    commit(con)
    db.sync()
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the replica directory should be")
    broken = FileReplicaClient(str(blocker / "replica"))
    fatal = []
    replica = Replica(db, broken, ReplicaConfig(sync_interval=0.02), retry_budget=0.5,
                      on_fatal=fatal.append)
    replica.start()
    deadline = time.monotonic() + 10
    while not fatal and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fatal, "the retry budget never ran out"
    h = replica.health
    assert h.fatal and h.consecutive_failures >= 3 and h.last_error
    # Backoff doubles: far fewer attempts than 0.5s / 20ms.
    assert h.consecutive_failures <= 8
    assert isinstance(fatal[0], ReplicationError) and fatal[0].hint
    replica.stop(timeout=0.1, interval=0.05)


def test_the_loop_stops_once_the_budget_watchdog_gave_up(setup):
    """The fault sweep (tests/test_fault_sweep.py, write_ltx_file failing after the write):
    the watchdog declared the replica dead (on_fatal, health.fatal, "replication stopped")
    during a round that then succeeded, and the loop went on uploading: it only looked at the
    budget when a round failed. A server exits on on_fatal; a library caller was told the loop
    had stopped while it ran on."""
    from replication.replica_client import UnreachableError

    tmp_path, con, db, client = setup
    commit(con)
    db.sync()
    calls = {"writes": 0, "slow": 1}

    class SlowAfterAFailure(FileReplicaClient):
        def write_ltx_file(self, *args, **kwargs):
            calls["writes"] += 1
            if calls["writes"] == 1:
                raise UnreachableError("injected: the first upload fails")
            return super().write_ltx_file(*args, **kwargs)

        def ltx_files(self, *args, **kwargs):
            if calls["writes"] == 1 and calls["slow"]:
                calls["slow"] = 0
                time.sleep(0.6)  # the next round's listing outlasts the budget, then answers
            return super().ltx_files(*args, **kwargs)

    fatal = []
    replica = Replica(db, SlowAfterAFailure(client.path), ReplicaConfig(sync_interval=0.02),
                      retry_budget=0.2, on_fatal=fatal.append)
    db.subscribe(replica.wake)
    replica.start()
    try:
        deadline = time.monotonic() + 5
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fatal and replica.health.fatal
        deadline = time.monotonic() + 2
        while replica._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not replica._thread.is_alive(), "the loop runs on after it was declared dead"
        uploaded = max((f.max_txid for f in client.ltx_files(0)), default=0)
        commit(con)
        db.sync()
        time.sleep(0.2)
        assert max((f.max_txid for f in client.ltx_files(0)), default=0) == uploaded
    finally:
        replica.stop(timeout=0.1, interval=0.05)


def test_transient_errors_recover_and_reset_the_failure_count(setup):
    tmp_path, con, db, client = setup
    commit(con)
    db.sync()
    blocker = tmp_path / "later"
    blocker.write_text("x")
    flaky = FileReplicaClient(str(blocker / "replica"))
    replica = Replica(db, flaky, ReplicaConfig(sync_interval=0.02), retry_budget=None,
                      max_backoff=0.2)
    replica.start()
    try:
        deadline = time.monotonic() + 5
        while replica.health.consecutive_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert replica.health.consecutive_failures >= 2
        blocker.unlink()  # the "outage" ends
        deadline = time.monotonic() + 10
        while (replica.pos() != db.pos().txid or replica.health.consecutive_failures) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        h = replica.health
        assert replica.pos() == db.pos().txid
        assert h.consecutive_failures == 0 and h.total_failures >= 2 and not h.fatal
        assert h.lag_txids == 0 and h.lag_seconds == 0
    finally:
        replica.stop(timeout=2)


def test_stop_runs_a_final_sync(setup):
    tmp_path, con, db, client = setup
    db.sync()
    replica = Replica(db, client, ReplicaConfig(sync_interval=30.0))
    replica.start()
    commit(con, 3)  # not synced by anyone yet
    assert replica.stop(timeout=5)
    assert max(f.max_txid for f in client.ltx_files(0)) == db.pos().txid
    out = tmp_path / "out.db"
    restore(client, str(out))
    assert rows(out) == rows(tmp_path / "src.db")


def test_stop_reports_failure_when_the_replica_stays_down(setup):
    tmp_path, con, db, client = setup
    blocker = tmp_path / "down"
    blocker.write_text("x")
    replica = Replica(db, FileReplicaClient(str(blocker / "r")), ReplicaConfig())
    commit(con)
    t0 = time.monotonic()
    assert replica.stop(timeout=0.5, interval=0.1) is False
    assert time.monotonic() - t0 < 3
    assert replica.health.last_error


def test_health_reports_lag_while_behind(setup):
    _, con, db, client = setup
    commit(con)
    db.sync()
    replica = Replica(db, client, ReplicaConfig(max_sync_ltx_files=1))
    for _ in range(3):
        commit(con)
        db.sync()
    replica.sync()
    h = replica.health
    assert h.lag_txids > 0 and h.local_txid == db.pos().txid
    time.sleep(0.05)
    assert replica.health.lag_seconds >= 0.05
    while replica.sync():
        pass
    h = replica.health
    assert h.lag_txids == 0 and h.lag_seconds == 0 and h.healthy


def test_an_empty_replica_of_a_db_with_pruned_history_starts_with_a_snapshot(setup):
    tmp_path, con, db, client = setup
    for _ in range(4):
        commit(con)
        db.sync()
    # The oldest local L0 files are gone (retention ran against another replica before).
    for f in db.local_ltx_files(0)[:-1]:
        os.unlink(db.ltx_path(0, f.min_txid, f.max_txid))
    commit(con)
    db.sync()
    replica = Replica(db, client, ReplicaConfig())
    while replica.sync():
        pass
    snaps = list(client.ltx_files(9))
    assert len(snaps) == 1 and snaps[0].min_txid == 1
    assert replica.pos() == db.pos().txid
    out = tmp_path / "out.db"
    restore(client, str(out))
    assert rows(out) == rows(tmp_path / "src.db")


def test_by_default_a_backlog_keeps_every_txid_a_restore_point(setup):
    """X-Replication-Txid promises `restore -txid <header>`: no merging unless asked for."""
    tmp_path, con, db, client = setup
    commit(con)
    db.sync()
    replica = Replica(db, client, ReplicaConfig())
    assert replica.sync() == 1
    for _ in range(4):
        commit(con, 3)
        db.sync()
    assert replica.sync() == 4
    assert [(f.min_txid, f.max_txid) for f in client.ltx_files(0)] == [(t, t) for t in range(1, 6)]


def test_a_backlog_is_uploaded_as_one_merged_l0_file(setup):
    tmp_path, con, db, client = setup
    commit(con)
    db.sync()
    replica = Replica(db, client, ReplicaConfig())
    replica.merge_backlog = True
    assert replica.sync() == 1  # TXID 1 (the full first file) goes up on its own
    for _ in range(5):
        commit(con, 3)
        db.sync()
    first = replica.pos() + 1
    assert replica.sync() == 1  # one PUT for the whole backlog
    assert l0_names(client)[-1] == (first, db.pos().txid)
    with client.open_ltx_file(0, first, db.pos().txid) as f:
        dec = Decoder(f)
        list(dec.pages())
        dec.close()
    with db.open_local_ltx(0, db.pos().txid, db.pos().txid) as last:
        assert dec.header.timestamp == Decoder(last).header.timestamp
    assert_contiguous(client)
    out = tmp_path / "out.db"
    restore(client, str(out))
    assert rows(out) == rows(tmp_path / "src.db")
    # A limit of one file per round still merges nothing beyond it.
    commit(con)
    db.sync()
    commit(con)
    db.sync()
    small = Replica(db, client, ReplicaConfig(max_sync_ltx_files=1))
    assert small.sync() == 1 and small.pos() == db.pos().txid - 1
