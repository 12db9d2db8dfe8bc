"""The Store: compaction levels, L9 snapshots, retention, several DBs (real DBs, file replicas)."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import apsw
import pytest
from prometheus_client import REGISTRY

from replication.config import Config, DBConfig, ReplicaConfig
from replication.ltx import Decoder
from replication.restore import restore
from replication.store import CompactionTooEarly, Store, next_tick, truncate

GO_ZERO_TO_UNIX = 62135596800


def make_db(path) -> apsw.Connection:
    con = apsw.Connection(str(path))
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    return con


def rows(path):
    con = apsw.Connection(str(path))
    try:
        return con.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def make_store(tmp_path, names=("a",), **settings) -> tuple[Store, dict]:
    dbs, cons = [], {}
    for name in names:
        path = tmp_path / f"{name}.db"
        cons[name] = make_db(path)
        dbs.append(DBConfig(path=str(path), replica=ReplicaConfig(
            type="file", path=str(tmp_path / f"replica-{name}"), sync_interval=0.05)))
    store = Store(Config(dbs=dbs, **settings))
    return store, cons


def round_trip(store, con, n=1):
    """Commit ``n`` transactions, each synced to its own L0 file and uploaded."""
    db = store.dbs[0]
    for _ in range(n):
        con.execute("INSERT INTO t(v) VALUES (?)", ("row %f" % time.time(),))
        db.sync()
        store.replicas[db.path].sync()  # as the notify-driven loop does: one file per sync


def spans(client, level):
    return [(f.min_txid, f.max_txid) for f in client.ltx_files(level)]


def restored_rows(client, tmp_path, name="out.db"):
    out = tmp_path / name
    restore(client, str(out))
    return rows(out)


def get_count(replica_type="file"):
    return REGISTRY.get_sample_value("litestream_replica_operation_total",
                                     {"replica_type": replica_type, "operation": "GET"}) or 0


@pytest.fixture
def one(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0, 2.0])
    store.open(monitor=False)
    db = store.dbs[0]
    yield store, cons["a"], db, store.replicas[db.path].client
    store.close(timeout=2)
    cons["a"].close()


def later(seconds=3600.0):
    return time.time() + seconds


# --- the schedule ----------------------------------------------------------------------

def test_truncate_is_gos_time_truncate():
    t = datetime(2026, 11, 21, 18, 53, 47, 456000, tzinfo=timezone.utc).timestamp()
    assert truncate(t, 30) == datetime(2026, 11, 21, 18, 53, 30, tzinfo=timezone.utc).timestamp()
    assert truncate(t, 3600) == datetime(2026, 11, 21, 18, 0, tzinfo=timezone.utc).timestamp()
    assert next_tick(t, 300) == datetime(2026, 11, 21, 18, 55, tzinfo=timezone.utc).timestamp()
    # An interval that does not divide a day is aligned to Go's zero time, not the Unix epoch.
    since_zero = t + GO_ZERO_TO_UNIX
    assert truncate(t, 7 * 3600) == since_zero - since_zero % (7 * 3600) - GO_ZERO_TO_UNIX
    assert truncate(t, 7 * 3600) != t - t % (7 * 3600)


# --- compaction ------------------------------------------------------------------------

def test_compaction_merges_all_new_source_files_into_one(one, tmp_path):
    store, con, db, client = one
    round_trip(store, con, 4)
    l0 = spans(client, 0)
    info = store.compact_db(db, 1, now=later())
    assert (info.min_txid, info.max_txid) == (l0[0][0], l0[-1][1])
    assert spans(client, 1) == [(l0[0][0], l0[-1][1])]
    with client.open_ltx_file(1, info.min_txid, info.max_txid) as f:
        dec = Decoder(f)
        assert dec.header.no_checksum and dec.header.wal_offset == 0
        with client.open_ltx_file(0, l0[-1][0], l0[-1][1]) as last:
            assert dec.header.timestamp == Decoder(last).header.timestamp  # last input's
        list(dec.pages())
        dec.close()

    round_trip(store, con, 3)
    second = store.compact_db(db, 1, now=later(7200))
    assert second.min_txid == info.max_txid + 1 and second.max_txid == db.pos().txid
    # L2 takes both L1 files.
    l2 = store.compact_db(db, 2, now=later(7200))
    assert (l2.min_txid, l2.max_txid) == (1, db.pos().txid)
    # Restores from the compacted levels give the source.
    client.delete_ltx_files(list(client.ltx_files(0))[:-1])
    client.delete_ltx_files(list(client.ltx_files(1)))
    assert restored_rows(client, tmp_path) == rows(db.path)


def test_compaction_is_skipped_when_too_early_or_nothing_is_new(one):
    store, con, db, client = one
    # "Too early" compares with now truncated to the hour: not across an hour boundary (a
    # CI run failed here at 13:59:5x).
    into_hour = time.time() % 3600
    if into_hour > 3590:
        time.sleep(3600 - into_hour + 0.5)
    round_trip(store, con, 2)
    store.compact_db(db, 1, now=later())
    # The newest L1 file's CreatedAt (its last input's timestamp) is after now.truncate(1h).
    with pytest.raises(CompactionTooEarly):
        store.compact_db(db, 1, now=time.time() + 0.001)
    assert store.compact_db(db, 1, now=later(7200)) is None  # no new L0 file
    assert len(spans(client, 1)) == 1


def test_l0_inputs_are_read_from_the_local_meta_dir(one):
    store, con, db, client = one
    round_trip(store, con, 3)
    before = get_count()
    store.compact_db(db, 1, now=later())
    assert get_count() == before  # no GET: every L0 input came from the meta dir
    round_trip(store, con, 1)
    store.compact_db(db, 1, now=later(7200))
    before = get_count()
    store.compact_db(db, 2, now=later(7200))
    assert get_count() > before  # L1 inputs only exist on the replica


def test_verify_compaction_detects_a_gap(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0], verify_compaction=True)
    store.open(monitor=False)
    try:
        db = store.dbs[0]
        client = store.replicas[db.path].client
        errors = lambda: REGISTRY.get_sample_value(  # noqa: E731
            "litestream_compaction_verify_error_count_total", {"db": db.path}) or \
            REGISTRY.get_sample_value("litestream_compaction_verify_error_count",
                                      {"db": db.path}) or 0
        start = errors()
        for i in range(3):
            round_trip(store, cons["a"], 2)
            store.compact_db(db, 1, now=later(3600 * (i + 1)))
        assert errors() == start
        client.delete_ltx_files([list(client.ltx_files(1))[1]])
        round_trip(store, cons["a"], 2)
        store.compact_db(db, 1, now=later(3600 * 9))
        assert errors() == start + 1
    finally:
        store.close(timeout=2)
        cons["a"].close()


# --- snapshots -------------------------------------------------------------------------

def test_snapshot_covers_the_position_and_is_not_repeated(one, tmp_path):
    store, con, db, client = one
    round_trip(store, con, 3)
    snap = store.snapshot_db(db, now=later())
    assert (snap.min_txid, snap.max_txid) == (1, db.pos().txid)
    assert store.snapshot_db(db, now=later(2 * 86400)) is None  # still covers the position
    round_trip(store, con, 1)
    with pytest.raises(CompactionTooEarly):
        store.snapshot_db(db, now=time.time())
    again = store.snapshot_db(db, now=later(2 * 86400))
    assert again.max_txid == db.pos().txid
    # A restore from the snapshot alone gives the DB.
    client.delete_ltx_files(list(client.ltx_files(0)))
    assert restored_rows(client, tmp_path) == rows(db.path)


# --- retention -------------------------------------------------------------------------

def test_l0_retention_deletes_only_old_files_covered_by_l1(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0], l0_retention=0.3)
    store.open(monitor=False)
    con = cons["a"]
    try:
        db = store.dbs[0]
        client = store.replicas[db.path].client
        round_trip(store, con, 4)
        assert store.enforce_l0_retention(db) == []  # nothing in L1 yet
        store.compact_db(db, 1, now=later())
        l1_max = spans(client, 1)[-1][1]
        assert store.enforce_l0_retention(db) == []  # covered, but too recent
        time.sleep(0.4)
        round_trip(store, con, 2)  # newer, not compacted
        deleted = store.enforce_l0_retention(db)
        assert [f.max_txid for f in deleted] == list(range(1, l1_max + 1))[: len(deleted)]
        assert max(f.max_txid for f in deleted) == l1_max
        remaining = spans(client, 0)
        assert remaining[0][0] == l1_max + 1  # no gap left behind
        local = [f.max_txid for f in db.local_ltx_files(0)]
        assert min(local) == l1_max + 1 and max(local) == db.pos().txid
        # Everything is still restorable (L1 + the remaining L0).
        assert restored_rows(client, tmp_path) == rows(db.path)
    finally:
        store.close(timeout=2)
        con.close()


def test_l0_retention_never_deletes_the_newest_and_zero_disables(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0], l0_retention=0.1)
    store.open(monitor=False)
    try:
        db = store.dbs[0]
        client = store.replicas[db.path].client
        round_trip(store, cons["a"], 3)
        store.compact_db(db, 1, now=later())
        time.sleep(0.2)
        store.enforce_l0_retention(db)
        assert spans(client, 0) == [(db.pos().txid, db.pos().txid)]
        store.l0_retention = 0
        round_trip(store, cons["a"], 2)
        store.compact_db(db, 1, now=later(7200))
        time.sleep(0.2)
        assert store.enforce_l0_retention(db) == []
        assert len(spans(client, 0)) == 3
    finally:
        store.close(timeout=2)
        cons["a"].close()


def _two_snapshots_and_l1(store, con, db):
    round_trip(store, con, 2)
    store.compact_db(db, 1, now=later(3600))
    round_trip(store, con, 2)
    store.compact_db(db, 1, now=later(7200))
    first = store.snapshot_db(db, now=later(7200))
    round_trip(store, con, 2)
    store.compact_db(db, 1, now=later(3 * 3600))
    second = store.snapshot_db(db, now=later(3 * 86400))
    return first, second


def test_snapshot_retention_deletes_old_snapshots_and_files_below_them(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0], snapshot_retention=0.5)
    store.open(monitor=False)
    try:
        db = store.dbs[0]
        client = store.replicas[db.path].client
        first, second = _two_snapshots_and_l1(store, cons["a"], db)
        l1_before = spans(client, 1)
        assert store.enforce_snapshot_retention(db) == []  # both younger than the retention
        time.sleep(0.6)
        deleted = store.enforce_snapshot_retention(db)
        assert spans(client, 9) == [(1, second.max_txid)]  # the newest is always kept
        # Floor = the newest deleted snapshot's MaxTXID: only the first L1 file is below it.
        assert len(l1_before) == 3 and l1_before[1][1] == first.max_txid
        assert spans(client, 1) == l1_before[1:]
        assert (9, 1, first.max_txid) in [(f.level, f.min_txid, f.max_txid) for f in deleted]
        assert restored_rows(client, tmp_path) == rows(db.path)
    finally:
        store.close(timeout=2)
        cons["a"].close()


def test_retention_disabled_deletes_nothing_remote_but_cleans_local(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0], snapshot_retention=0.1,
                             l0_retention=0.1, retention_enabled=False)
    store.open(monitor=False)
    try:
        db = store.dbs[0]
        client = store.replicas[db.path].client
        _two_snapshots_and_l1(store, cons["a"], db)
        before = {lv: spans(client, lv) for lv in (0, 1, 9)}
        time.sleep(0.2)
        assert store.enforce_snapshot_retention(db) == []
        store.enforce_l0_retention(db)
        assert {lv: spans(client, lv) for lv in (0, 1, 9)} == before
        assert len(db.local_ltx_files(0)) < len(before[0])  # local copies still cleaned
    finally:
        store.close(timeout=2)
        cons["a"].close()


# --- the whole store -------------------------------------------------------------------

def test_store_replicates_several_dbs_on_its_schedules(tmp_path):
    store, cons = make_store(tmp_path, names=("a", "b"), levels=[1.0, 2.0],
                             snapshot_interval=2.0, l0_retention=0.5,
                             l0_retention_check_interval=0.5)
    store.open()
    try:
        deadline = time.monotonic() + 5.2
        i = 0
        while time.monotonic() < deadline:
            for name, con in cons.items():
                con.execute("INSERT INTO t(v) VALUES (?)", (f"{name}{i}",))
            i += 1
            time.sleep(0.05)
        time.sleep(0.3)
        statuses = {s.path: s for s in store.status()}
        for db in store.dbs:
            st = statuses[db.path]
            assert st.healthy and st.last_error is None
            assert st.replica_txid == st.local_txid > 0 and st.lag_txids == 0
            assert store.status(db.path).path == db.path
    finally:
        assert store.close(timeout=5)
    for name, db in zip(("a", "b"), store.dbs):
        client = store.replicas[db.path].client
        assert spans(client, 1), f"{name}: no L1 compaction ran"
        assert spans(client, 2), f"{name}: no L2 compaction ran"
        assert spans(client, 9), f"{name}: no snapshot was taken"
        assert spans(client, 0)[0][0] > 1, f"{name}: L0 retention never ran"
        assert restored_rows(client, tmp_path, f"{name}-out.db") == rows(db.path)
        assert len(rows(db.path)) == i
    for con in cons.values():
        con.close()


def test_compaction_stops_at_a_gap_bridged_by_a_snapshot(tmp_path):
    store, cons = make_store(tmp_path, levels=[1.0])
    store.dbs[0].config.replica.auto_recover = True
    store.replicas[store.dbs[0].path].auto_recover = True
    store.open(monitor=False)
    con = cons["a"]
    try:
        db = store.dbs[0]
        replica = store.replicas[db.path]
        client = replica.client
        round_trip(store, con, 3)
        k = db.pos().txid
        for _ in range(3):
            con.execute("INSERT INTO t(v) VALUES ('lost')")
            db.sync()
        import os
        os.unlink(db.ltx_path(0, k + 1, k + 1))  # lost before it was uploaded
        replica.start()  # auto-recover bridges the gap with an L9 snapshot
        deadline = time.monotonic() + 10
        while replica.pos() != db.pos().txid and time.monotonic() < deadline:
            time.sleep(0.02)
        round_trip(store, con, 2)
        l0 = spans(client, 0)
        assert any(b[0] > a[1] + 1 for a, b in zip(l0, l0[1:])), "expected a gap in L0"
        first = store.compact_db(db, 1, now=later())
        assert (first.min_txid, first.max_txid) == (1, k)  # the run before the gap
        second = store.compact_db(db, 1, now=later(7200))
        assert second.min_txid > k + 1 and second.max_txid == db.pos().txid
        assert restored_rows(client, tmp_path) == rows(db.path)
    finally:
        store.close(timeout=2)
        con.close()


def test_a_snapshot_taken_while_the_replica_lags_does_not_skip_l0_files(one):
    store, con, db, client = one
    round_trip(store, con, 2)
    behind = db.pos().txid
    for _ in range(3):
        con.execute("INSERT INTO t(v) VALUES ('pending')")
        db.sync()
    store.snapshot_db(db, now=later())  # L9 1..pos while L0 still ends at `behind`
    replica = store.replicas[db.path]
    replica._pos = None  # as after an upload error: the position is listed again
    replica.merge_backlog = False
    assert replica.sync() == db.pos().txid - behind
    # Every TXID stays individually restorable (point-in-time granularity kept).
    assert spans(client, 0)[-(db.pos().txid - behind):] == [
        (t, t) for t in range(behind + 1, db.pos().txid + 1)]


def test_a_db_whose_local_syncs_keep_failing_is_fatal_once(tmp_path):
    """The store runs each DB's sync loop under the retry budget and tells on_fatal, once."""
    dbs = []
    path = tmp_path / "a.db"
    con = make_db(path)
    dbs.append(DBConfig(path=str(path), monitor_interval=0.02, replica=ReplicaConfig(
        type="file", path=str(tmp_path / "replica-a"), sync_interval=0.05)))
    fatal = []
    store = Store(Config(dbs=dbs), retry_budget=0.5,
                  on_fatal=lambda p, exc: fatal.append((p, exc)))
    store.open(monitor=True)
    try:
        db = store.dbs[0]
        deadline = time.monotonic() + 10
        while db.pos().txid == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        # The next L0 file's temporary name is taken by a directory: that file can never be
        # written, while the L0 directory still lists (the upload loop has nothing to fail on)
        os.mkdir(db.ltx_path(0, db.pos().txid + 1, db.pos().txid + 1) + ".tmp")
        con.execute("INSERT INTO t(v) VALUES ('lost locally')")
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert [p for p, _ in fatal] == [db.path]
        assert "local syncs have failed" in str(fatal[0][1])
    finally:
        store.close(timeout=1)
        con.close()
