"""Hydration of the read-replica VFS (replication/hydration.py): a local copy restored in the
background and kept caught up, on real replicas (file and the real SeaweedFS). No mocks."""
from __future__ import annotations

import fcntl
import gc
import json
import os
import re
import threading
import time
from pathlib import Path

import apsw
import httpx
import pytest

import replication.vfs as lvfs
from replication.file_replica_client import FileReplicaClient
from replication.hydration import Hydrator
from replication.restore import restore

from tests import test_replica_server, test_vfs
from tests.test_vfs import (
    STEPS, _states, _write_l0, blocked_in, collections_off, count, forgotten, make_source, one,
    snapshot_of, start_replicator, stop_process, wait_for, write_round,
)

store = test_vfs.store  # the fixture: a fresh replica on file:// and on SeaweedFS

BASE_TS = int(time.time() * 1000) - 600_000
#: STEPS and one more that rewrites half of table a (TXID 8: a catch-up reads that whole file).
STEPS_H = STEPS + ["UPDATE a SET body = randomblob(900) WHERE id % 2 = 0"]


def replica_up_to(client, tmp_path, txid: int) -> list[bytes]:
    """The states of STEPS, and L0 files for TXIDs 1..txid of them on the replica."""
    states = _states(tmp_path, STEPS_H)
    _write_l0(client, states, 1, txid, BASE_TS)
    return states


def restored(client, out, **kw) -> dict:
    """What a full restore of the replica (``txid=``: at that TXID) holds, as a reader sees it."""
    restore(client, str(out), force=True, **kw)
    conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return snapshot_of(conn)
    finally:
        conn.close()


def hydrated_at(conn, txid: int):
    def ok():
        s = lvfs.database(conn).stats()
        return s.hydration == "ready" and s.hydration_txid == txid
    return ok


def open_hydrated(url, name, **params) -> apsw.Connection:
    # No VFS page cache and no poller tick during a test: pages come from the local file or
    # the replica, and new TXIDs arrive when the test polls.
    params = {"cache_size": "0", "poll_interval": "1h", "hydration_enabled": "true", **params}
    return lvfs.connect(lvfs.uri(name, url, **params))


def test_reads_equal_a_full_restore_while_hydrating_and_after(tmp_path, store):
    client, url = store
    states = replica_up_to(client, tmp_path, 4)
    want = restored(client, tmp_path / "want4.db")
    conn = open_hydrated(url, "h1.db")
    try:
        first = snapshot_of(conn)  # right after the open: the restore may still run
        assert first == want
        wait_for(hydrated_at(conn, 4), what="hydration")
        before = lvfs.database(conn).stats()
        assert before.hydration_progress == 1.0 and before.hydration_reused is False
        conn.execute("PRAGMA cache_size=0")  # SQLite's own cache: read every page again
        assert snapshot_of(conn) == want
        after = lvfs.database(conn).stats()
        assert after.hydration_reads > before.hydration_reads  # served by the local file
        assert after.pages_fetched == before.pages_fetched     # and not by the replica
        assert one(conn, "PRAGMA litestream_hydration_progress") == "1"
        assert os.path.exists(one(conn, "PRAGMA litestream_hydration_file"))

        # Following: new TXIDs are read at once (from the replica), then written locally.
        _write_l0(client, states, 5, 8, BASE_TS)
        assert lvfs.database(conn).poll()
        want8 = restored(client, tmp_path / "want8.db")
        assert snapshot_of(conn) == want8
        wait_for(hydrated_at(conn, 8), what="catch-up to TXID 8")
        assert lvfs.database(conn).stats().hydration_catch_ups >= 1
        reads = lvfs.database(conn).stats().hydration_reads
        assert snapshot_of(conn) == want8
        assert lvfs.database(conn).stats().hydration_reads > reads
        assert one(conn, "SELECT litestream_txid()") == f"{8:016x}"
    finally:
        conn.close()


@pytest.mark.parametrize("writer", ["ours", "litestream"])
def test_follows_a_live_replicator_after_hydration(tmp_path, writer, request):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    src = make_source(db)
    write_round(src, 0)
    proc = start_replicator(tmp_path, db, replica, writer, request)
    conn = None
    try:
        wait_for(lambda: list(FileReplicaClient(str(replica)).ltx_files(0)), 30, "first upload")
        conn = open_hydrated(f"file://{replica}", "live-h.db", poll_interval="100ms")
        wait_for(lambda: lvfs.database(conn).stats().hydration == "ready", what="hydration")
        conn.execute("PRAGMA cache_size=0")
        for i in range(1, 4):
            write_round(src, i)
            n = count(src)
            wait_for(lambda: count(conn) == n, 15, f"round {i}")
            txid = lvfs.database(conn).txid
            wait_for(hydrated_at(conn, txid), what=f"the catch-up of round {i}")
        stats = lvfs.database(conn).stats()
        assert stats.hydration_catch_ups >= 3 and stats.hydration_reads > 0
        conn.execute("BEGIN")  # one TXID for the snapshot and its position
        seen, txid = snapshot_of(conn), lvfs.database(conn).txid
        conn.execute("COMMIT")
        assert seen == restored(FileReplicaClient(str(replica)), tmp_path / "at.db", txid=txid)
    finally:
        if conn is not None:
            conn.close()
        stop_process(proc)
        src.close()
    client = FileReplicaClient(str(replica))
    after = open_hydrated(f"file://{replica}", "live-h2.db")
    try:  # a fresh hydration of the final replica: what a restore gives
        wait_for(hydrated_at(after, lvfs.database(after).txid), what="hydration")
        after.execute("PRAGMA cache_size=0")
        assert snapshot_of(after) == restored(client, tmp_path / "final.db")
    finally:
        after.close()


def test_a_transaction_open_across_a_catch_up_keeps_its_txid(tmp_path, store):
    client, url = store
    states = replica_up_to(client, tmp_path, 2)
    conn = open_hydrated(url, "h2.db")
    try:
        wait_for(hydrated_at(conn, 2), what="hydration")
        conn.execute("PRAGMA cache_size=0")
        conn.execute("BEGIN")
        assert one(conn, "SELECT count(*) FROM a") == 300  # pinned to TXID 2; b not read yet
        _write_l0(client, states, 3, 3, BASE_TS)  # UPDATE b SET v = v * 100
        assert lvfs.database(conn).poll()
        wait_for(hydrated_at(conn, 3), what="catch-up to TXID 3")
        # b's page in the local file is TXID 3's now; this transaction still reads TXID 2.
        assert conn.execute("SELECT v FROM b ORDER BY id").fetchall() == [(i,) for i in range(1, 6)]
        assert one(conn, "SELECT litestream_txid()") == f"{2:016x}"
        conn.execute("COMMIT")
        reads = lvfs.database(conn).stats().hydration_reads
        assert conn.execute("SELECT v FROM b ORDER BY id").fetchall() == \
            [(i * 100,) for i in range(1, 6)]
        assert lvfs.database(conn).stats().hydration_reads > reads  # now from the file
    finally:
        conn.close()


def test_a_hydration_file_is_reused_on_restart_unless_the_replica_regressed(tmp_path, store):
    client, url = store
    states = replica_up_to(client, tmp_path, 4)
    path = tmp_path / "hydrated.db"

    def run(txid, reused):
        conn = open_hydrated(url, "h3.db", hydration_path=str(path))
        try:
            wait_for(hydrated_at(conn, txid), what=f"hydration at TXID {txid}")
            stats = lvfs.database(conn).stats()
            assert stats.hydration_reused is reused
            conn.execute("PRAGMA cache_size=0")
            assert snapshot_of(conn) == restored(client, tmp_path / f"want{txid}.db")
            return stats.bytes_fetched
        finally:
            conn.close()

    db_size = len(states[3])
    full = run(4, False)
    assert full > db_size / 2  # the restore read every page (LTX pages are compressed)
    assert path.stat().st_size >= db_size and os.path.exists(f"{path}.meta")
    # The same replica: the file is taken as it is (index, header and checks only).
    assert run(4, True) < full / 4  # the page indexes (32 KiB tail reads) and a header
    # New TXIDs since: reused, and caught up with their pages only.
    _write_l0(client, states, 5, 6, BASE_TS)
    assert run(6, True) < full / 4

    # The replica wiped and written again with fewer TXIDs: rebuilt.
    client.delete_ltx_files([i for level in (0, 1, 9) for i in client.ltx_files(level)])
    _write_l0(client, states, 1, 3, BASE_TS)
    assert run(3, False) > db_size / 2
    # ...and with as many TXIDs again but another history (other timestamps): rebuilt too.
    client.delete_ltx_files(list(client.ltx_files(0)))
    _write_l0(client, states, 1, 3, BASE_TS + 5000)
    assert run(3, False) > db_size / 2


def test_hydration_path_needs_hydration_enabled(tmp_path, store):
    client, url = store
    replica_up_to(client, tmp_path, 1)
    with pytest.raises(apsw.CantOpenError, match="hydration_path without hydration_enabled"):
        lvfs.connect(lvfs.uri("h4.db", url, hydration_path=str(tmp_path / "h")))


def test_a_failed_hydration_is_retried_and_reads_go_on(tmp_path, store):
    client, url = store
    replica_up_to(client, tmp_path, 4)
    want = restored(client, tmp_path / "want.db")
    path = tmp_path / "h" / "app.db"
    with pytest.raises(apsw.CantOpenError, match=r"hydration_path .*h/app.db: No such file"):
        open_hydrated(url, "h6.db", hydration_path=str(path))
    path.parent.mkdir()
    Path(f"{path}.tmp").mkdir()  # where the restore writes: it cannot
    conn = open_hydrated(url, "h6.db", hydration_path=str(path), poll_interval="100ms")
    try:
        wait_for(lambda: lvfs.database(conn).stats().hydration == "failed", what="a failure")
        assert snapshot_of(conn) == want  # from the replica meanwhile
        Path(f"{path}.tmp").rmdir()
        wait_for(hydrated_at(conn, 4), what="the retried hydration")
        conn.execute("PRAGMA cache_size=0")
        assert snapshot_of(conn) == want
        assert lvfs.database(conn).stats().hydration_reads > 0
    finally:
        conn.close()


def test_hydration_shows_on_the_replica_metrics(tmp_path, store):
    from sqlite_rest.observability.metrics import ReplicaCollector

    client, url = store
    replica_up_to(client, tmp_path, 2)
    conn = open_hydrated(url, "h5.db")
    try:
        wait_for(hydrated_at(conn, 2), what="hydration")
        stats = {**lvfs.database(conn).stats().__dict__}
        samples = {m.name: m.samples[0].value
                   for m in ReplicaCollector(lambda: stats).collect() if m.samples}
        assert samples["sqlite_rest_read_replica_hydration_progress"] == 1.0
        assert samples["sqlite_rest_read_replica_hydration_txid"] == 2
        assert "sqlite_rest_read_replica_hydration_reads" in samples
    finally:
        conn.close()


# --- closing from a finalizer (a collection on any thread) --------------------------------------

def _file_replica(tmp_path):
    client = FileReplicaClient(str(tmp_path / "replica"))
    return client, f"file://{tmp_path / 'replica'}"


def _assert_ended(*threads):
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), f"{thread.name} did not end"


def test_a_connection_collected_on_its_hydrator_thread_releases_the_hydration_file(
        tmp_path, monkeypatch):
    """A collection on a hydrator thread may finalize the last connection of its own source.
    Closing the source there joined the hydrator, the current thread: RuntimeError, and the
    rest of the close never ran (the file's lock, the client stayed open for good). Now the
    source is only marked closed there; the hydrator ends after the finalizer and releases
    the file (its lock: the path can be hydrated again)."""
    client, url = _file_replica(tmp_path)
    replica_up_to(client, tmp_path, 2)
    path = tmp_path / "gc-hydrated.db"
    forgot, collected = threading.Event(), threading.Event()
    catch_up = Hydrator._catch_up

    def collect_then_catch_up(self):
        if self.path == str(path) and not collected.is_set():
            forgot.wait(10)
            gc.collect()  # on the hydrator thread: finalizes the forgotten connection here
            collected.set()
        return catch_up(self)

    monkeypatch.setattr(Hydrator, "_catch_up", collect_then_catch_up)
    with collections_off():
        source = forgotten(open_hydrated(url, "gc-h1.db", hydration_path=str(path)))._source
        forgot.set()
        assert collected.wait(20), "the hydrator did not collect"
    hydrator = source.hydrator
    _assert_ended(hydrator._thread, source._poller)
    assert hydrator.state == "closed"
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: still owned
    finally:
        os.close(fd)


def test_a_connection_collected_on_the_poller_while_the_hydrator_waits_does_not_deadlock(
        tmp_path, monkeypatch):
    """The poller publishes a view under the source's lock and wakes the hydrator, whose
    catch-up then waits for that lock. A collection on the poller there that finalized the
    source's last connection closed the source on the poller: it joined the hydrator with no
    timeout, and the hydrator waited for the lock the poller held — both, forever."""
    client, url = _file_replica(tmp_path)
    states = replica_up_to(client, tmp_path, 2)
    armed, collected = threading.Event(), threading.Event()
    notify = Hydrator.notify

    def notify_then_collect(self, view):  # on the poller, under the source's lock
        notify(self, view)  # wakes the hydrator: its catch-up waits for our lock
        if armed.is_set() and not collected.is_set() and self._source.name == "gc-h2.db":
            wait_for(lambda: blocked_in(self._thread, "_catch_up"), 10,
                     "the hydrator to wait for the source's lock")
            gc.collect()  # finalizes the forgotten connection here
            collected.set()

    monkeypatch.setattr(Hydrator, "notify", notify_then_collect)
    with collections_off():
        source = forgotten(open_hydrated(url, "gc-h2.db", poll_interval="20ms"))._source
        wait_for(lambda: source.hydrator.state == "ready", what="hydration")
        armed.set()
        _write_l0(client, states, 3, 4, BASE_TS)  # the poller publishes TXID 4
        assert collected.wait(20), "deadlocked: the poller's finalizer joined the hydrator"
    _assert_ended(source._poller, source.hydrator._thread)
    assert source.hydrator.state == "closed"


def test_a_connection_collected_inside_the_hydrators_wake_up_does_not_deadlock(
        tmp_path, monkeypatch):
    """Event.set() notifies under the Event's plain lock, and notifying allocates: a
    collection may run there — on the poller, waking the hydrator for a view it publishes.
    Closing the source there set that same Event again: the poller waited for itself."""
    client, url = _file_replica(tmp_path)
    states = replica_up_to(client, tmp_path, 2)
    armed, collected = threading.Event(), threading.Event()
    wake: dict = {}
    cond_notify = threading.Condition.notify

    def collect_then_notify(self, n=1):
        if armed.is_set() and not collected.is_set() and self is wake.get("cond"):
            gc.collect()  # inside the wake-up Event's set(), its lock held
            collected.set()
        return cond_notify(self, n)

    monkeypatch.setattr(threading.Condition, "notify", collect_then_notify)
    with collections_off():
        source = forgotten(open_hydrated(url, "gc-h3.db", poll_interval="20ms"))._source
        wait_for(lambda: source.hydrator.state == "ready", what="hydration")
        wake["cond"] = source.hydrator._wake._cond
        armed.set()
        _write_l0(client, states, 3, 4, BASE_TS)  # the poller publishes: wakes the hydrator
        assert collected.wait(20), "deadlocked: the finalizer set the Event it was setting"
    _assert_ended(source._poller, source.hydrator._thread)
    assert source.hydrator.state == "closed"


# --- a hydrated replica server ---------------------------------------------------------------

cluster = test_replica_server.cluster  # the fixture: a replicating primary, replica servers


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_hydrated_replica_server_reads_its_writes_and_reports_hydration(cluster, backend,
                                                                          tmp_path):
    c = cluster(backend)
    path = tmp_path / "hydrated-app.db"
    replica = c.replica_server(hydration_enabled="true", hydration_path=str(path))
    with httpx.Client(timeout=10) as http:
        wait_for(lambda: http.get(replica.metrics_url + "/status").json()["replica"]
                 ["hydration"] == "ready", 60, "the supervisor's hydration")
        for i in range(30):
            w = http.post(f"{c.primary.base_url}/items", json={"name": f"h{i}"})
            assert w.status_code == 201, w.text
            r = http.get(f"{replica.base_url}/items?name=eq.h{i}",
                         headers={"X-Replication-Min-Txid": w.headers["X-Replication-Txid"]})
            assert r.status_code == 200 and [row["name"] for row in r.json()] == [f"h{i}"]
        position = int(w.headers["X-Replication-Txid"], 16)
        wait_for(lambda: int(http.get(replica.metrics_url + "/status").json()["replica"]
                             ["hydration_txid"], 16) >= position, 30, "the hydration to catch up")
        status = http.get(replica.metrics_url + "/status").json()["replica"]
        assert status["hydration_progress"] == 1.0 and status["hydration_catch_ups"] >= 1
        metrics = http.get(replica.metrics_url + "/metrics").text
        assert re.search(r"^sqlite_rest_read_replica_hydration_progress 1\.0$", metrics, re.M)
        assert float(re.search(r"^sqlite_rest_read_replica_hydration_txid (\S+)$", metrics,
                               re.M).group(1)) >= position
        # The hydrated file is a database: the same rows as the primary's.
        rows = http.get(f"{c.primary.base_url}/items?order=id").json()

    def file_txid():  # the process that owns the path caught up too (it may be a worker)
        try:
            return json.loads(Path(f"{path}.meta").read_text())["txid"]
        except (OSError, ValueError):
            return 0
    wait_for(lambda: file_txid() >= position, 30, "the hydration file to catch up")
    want = [(row["id"], row["name"]) for row in rows]
    replica.stop()
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("SELECT id, name FROM items ORDER BY id").fetchall() == want
    finally:
        conn.close()
