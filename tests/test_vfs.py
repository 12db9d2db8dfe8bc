"""The read-replica VFS (replication/vfs.py): real replicas (ours and real Litestream 0.5.17,
file and SeaweedFS S3), real replicators following live writes, real compactions under
readers, the configuration layers, the SQL functions and the page cache. No mocks."""
from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest

import replication.vfs as lvfs
from replication import ltx
from replication.compactor import compact
from replication.file_replica_client import FileReplicaClient
from replication.replica_client import client_from_url, format_rfc3339_nano
from replication.restore import restore
from replication.vfs_config import VFSConfig, VFSConfigError

from tests.plugins.replicas import stop_process
from tests.test_restore import Workload, write_our_replica

OURS = [sys.executable, "-m", "replication", "replicate"]
PS = 4096
NOCHK = ltx.HEADER_FLAG_NO_CHECKSUM
LITESTREAM_ENV_VARS = ("LITESTREAM_REPLICA_URL", "LITESTREAM_WRITE_ENABLED",
                       "LITESTREAM_SYNC_INTERVAL", "LITESTREAM_BUFFER_PATH",
                       "LITESTREAM_HYDRATION_ENABLED", "LITESTREAM_HYDRATION_PATH")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in LITESTREAM_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    lvfs.register()


# --- helpers -------------------------------------------------------------------------------

def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot_of(conn) -> dict:
    """Everything a reader can see: the schema, every row of every table, integrity."""
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name NOT LIKE '_litestream%' ORDER BY name")]
    return {
        "schema": conn.execute("SELECT type, name, sql FROM sqlite_schema "
                               "WHERE name NOT LIKE '_litestream%' ORDER BY name").fetchall(),
        "rows": {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables},
        "integrity": conn.execute("PRAGMA integrity_check").fetchall(),
    }


def restored_snapshot(url: str, out: Path, **kw) -> tuple[dict, int]:
    client = client_from_url(url)
    try:
        result = restore(client, str(out), **kw)
    finally:
        client.close()
    conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return snapshot_of(conn), result.txid
    finally:
        conn.close()


def make_source(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)  # the replicators take the write lock to checkpoint
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
    conn.execute("CREATE INDEX items_name ON items(name)")
    return conn


def write_round(conn, i: int) -> None:
    with conn:
        conn.execute("INSERT INTO items(name, body) SELECT ?, randomblob(700) "
                     "FROM json_each(?)", (f"round-{i}", json.dumps(list(range(150)))))
        conn.execute("UPDATE items SET name = name || '!' WHERE id % 11 = ?", (i,))
        conn.execute("DELETE FROM items WHERE id % 17 = ?", (i,))


def start_replicator(tmp_path: Path, db: Path, replica: Path, writer: str, request,
                     stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Ours or real Litestream replicating ``db`` to the file replica ``replica`` (100 ms
    monitor and sync intervals); stop it with stop_process."""
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    monitor-interval: 100ms\n    replica:\n"
                      f"      type: file\n      path: {replica}\n      sync-interval: 100ms\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    binary = [request.getfixturevalue("litestream_bin"), "replicate"] if writer == "litestream" \
        else OURS
    return subprocess.Popen([*binary, "-config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def count(conn, table="items") -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchall()[0][0]


# --- reads match a full restore, for replicas by us and by Litestream, file and S3 ----------

@pytest.mark.parametrize("backend", ["file", "s3"])
@pytest.mark.parametrize("writer", ["ours", "litestream"])
def test_reads_match_a_full_restore(tmp_path, backend, writer, request, monkeypatch):
    env = dict(os.environ)
    if backend == "s3":
        s3 = request.getfixturevalue("s3_server")
        url = s3.url(s3.bucket, s3.new_path() + "/app")
        env = s3.env()
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            monkeypatch.setenv(k, env[k])
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    else:
        url = f"file://{tmp_path / 'replica'}"
    if writer == "litestream":
        binary = [request.getfixturevalue("litestream_bin"), "replicate"]
        env.pop("AWS_CA_BUNDLE", None)
    else:
        binary = OURS
    src = make_source(tmp_path / "src.db")
    for i in range(4):
        write_round(src, i)
        proc = subprocess.run([*binary, "-once", str(tmp_path / "src.db"), url], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    src.close()

    want, txid = restored_snapshot(url, tmp_path / "restored.db")
    conn = lvfs.connect(lvfs.uri("app.db", url))
    try:
        assert snapshot_of(conn) == want
        assert want["integrity"] == [("ok",)] and len(want["rows"]["items"]) > 400
        assert one(conn, "SELECT litestream_txid()") == f"{txid:016x}"
        assert one(conn, "PRAGMA journal_mode") == "delete"  # WAL source, rollback view
        stats = lvfs.database(conn).stats()
        assert stats.txid == txid and stats.pages_fetched > 0 and stats.bytes_fetched > 0
        assert lvfs.database(conn) in lvfs.open_databases()
        with pytest.raises(apsw.ReadOnlyError):
            conn.execute("INSERT INTO items(name) VALUES ('no')")
    finally:
        conn.close()
    if backend == "file":  # the VFS never creates files beside the name it was given
        assert not list(Path.cwd().glob("app.db*"))


# --- following a live replica --------------------------------------------------------------

@pytest.mark.parametrize("writer", ["ours", "litestream"])
def test_follows_a_live_replica_and_keeps_each_transaction_on_one_txid(tmp_path, writer,
                                                                        request):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    src = make_source(db)
    write_round(src, 0)
    proc = start_replicator(tmp_path, db, replica, writer, request, stderr=subprocess.PIPE)
    conns = []
    try:
        wait_for(lambda: list(FileReplicaClient(str(replica)).ltx_files(0)), 30, "first upload")
        url = f"file://{replica}"
        reader = lvfs.connect(lvfs.uri("live.db", url, poll_interval="100ms"))
        probe = lvfs.connect(lvfs.uri("live.db", url, poll_interval="100ms"))
        conns += [reader, probe]
        n0 = count(src)
        wait_for(lambda: count(reader) == n0, 10, "the first rows")

        write_round(src, 1)
        n1 = count(src)
        started = time.monotonic()
        wait_for(lambda: count(reader) == n1, 10, "the new rows")
        assert time.monotonic() - started < 5  # sync 0.1 s + poll 0.1 s, with slack for CI

        reader.execute("BEGIN")
        inside = snapshot_of(reader)
        txid_inside = one(reader, "SELECT litestream_txid()")
        write_round(src, 2)
        n2 = count(src)
        wait_for(lambda: count(probe) == n2, 10, "the probe to see round 2")
        time.sleep(0.3)  # several polls of the reader while its transaction is open
        assert snapshot_of(reader) == inside
        assert one(reader, "SELECT litestream_txid()") == txid_inside
        assert count(reader) == n1
        reader.execute("COMMIT")
        assert count(reader) == n2
        assert one(reader, "SELECT litestream_txid()") > txid_inside
        stats = lvfs.database(reader).stats()
        assert stats.polls > 0 and stats.updates >= 2 and 0 <= stats.lag < 5
    finally:
        for c in conns:
            c.close()
        stop_process(proc)
        src.close()
    after = lvfs.connect(lvfs.uri("live2.db", f"file://{replica}"))
    try:
        assert snapshot_of(after) == restored_snapshot(f"file://{replica}", tmp_path / "final.db")[0]
    finally:
        after.close()


# --- files removed under a reader ----------------------------------------------------------

def _states(tmp_path: Path, steps: list[str]) -> list[bytes]:
    """Database states (rollback journal, so the file is the state) after each step."""
    path = tmp_path / "states.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    states = []
    for sql in steps:
        with conn:
            conn.execute(sql)
        states.append(path.read_bytes())
    conn.close()
    return states


def _write_l0(client, states: list[bytes], start: int, stop: int,
              base_ts: int) -> None:
    """L0 files for TXIDs start..stop: TXID 1 all pages, later ones the pages that changed."""
    for txid in range(start, stop + 1):
        pages = {i // PS + 1: states[txid - 1][i:i + PS] for i in range(0, len(states[txid - 1]), PS)}
        prev = {} if txid == 1 else {i // PS + 1: states[txid - 2][i:i + PS]
                                     for i in range(0, len(states[txid - 2]), PS)}
        changed = [p for p in sorted(pages) if prev.get(p) != pages[p]]
        header = ltx.Header(NOCHK, PS, len(pages), txid, txid, base_ts + txid * 1000)
        buf = io.BytesIO()
        enc = ltx.Encoder(buf, header)
        for p in changed:
            enc.encode_page(p, pages[p])
        enc.close()
        client.write_ltx_file(0, txid, txid, buf.getvalue(), header.timestamp)


def _compact_l0_into_l1(client, upto: int = 0, keep_from: int = 0) -> None:
    """What a compaction plus L0 retention does: L0 files (up to TXID ``upto``) merged into
    one L1 file, and removed (but those from TXID ``keep_from`` on, which retention keeps
    while they are young)."""
    infos = [i for i in client.ltx_files(0) if not upto or i.max_txid <= upto]
    out = io.BytesIO()
    header, _ = compact([ltx.Decoder(io.BytesIO(client.open_ltx_file(0, i.min_txid, i.max_txid)
                                                .read())) for i in infos], out)
    client.write_ltx_file(1, infos[0].min_txid, infos[-1].max_txid, out.getvalue(),
                          header.timestamp)
    client.delete_ltx_files([i for i in infos if not keep_from or i.min_txid < keep_from])


STEPS = [
    "CREATE TABLE a(id INTEGER PRIMARY KEY, body BLOB); CREATE TABLE b(id INTEGER PRIMARY KEY, v);"
    "INSERT INTO a(body) SELECT randomblob(900) FROM json_each(json('[" + ",".join("0" * 300) + "]'))",
    "INSERT INTO b(v) SELECT value FROM json_each('[1,2,3,4,5]')",
    "UPDATE b SET v = v * 100",
    "INSERT INTO b(v) SELECT 'late' FROM json_each('[1,2]')",
    "INSERT INTO b(v) VALUES ('five')",
    "INSERT INTO b(v) VALUES ('six')",
    "INSERT INTO b(v) VALUES ('seven')",
]


@pytest.fixture
def store(replica_client, request, monkeypatch):
    """``(client, url)`` of a fresh replica on each backend (S3: the real SeaweedFS), with
    the credentials in the environment, where the VFS's S3 client finds them."""
    if replica_client.type == "s3":
        s3 = request.getfixturevalue("s3_server")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    return replica_client, replica_client.url


def _open_pinned(url: str, name: str) -> apsw.Connection:
    # No VFS page cache and a poller that never fires: every read goes to the replica and
    # updates arrive only when the test polls.
    return lvfs.connect(lvfs.uri(name, url, cache_size="0", poll_interval="1h"))


def test_compaction_under_a_reader_keeps_its_txid(tmp_path, store):
    states = _states(tmp_path, STEPS)
    client, url = store
    base_ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 2, base_ts)
    conn = _open_pinned(url, "c.db")
    try:
        conn.execute("BEGIN")
        assert count(conn, "b") == 5  # the transaction has read: it is pinned to TXID 2
        _compact_l0_into_l1(client)  # L1 1-2 replaces L0 1 and 2: TXID 2 is still reachable
        assert one(conn, "SELECT sum(length(body)) FROM a") == 300 * 900
        assert one(conn, "SELECT litestream_txid()") == f"{2:016x}"
        conn.execute("COMMIT")
        stats = lvfs.database(conn).stats()
        assert stats.not_found_recoveries >= 1 and stats.txid == 2
        assert conn.execute("SELECT v FROM b ORDER BY id").fetchall() == [(i,) for i in range(1, 6)]
    finally:
        conn.close()


def test_compaction_past_a_readers_txid_serves_only_unchanged_pages(tmp_path, store):
    states = _states(tmp_path, STEPS)
    client, url = store
    base_ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 2, base_ts)
    conn = _open_pinned(url, "p.db")
    try:
        conn.execute("BEGIN")
        assert count(conn, "b") == 5  # pinned to TXID 2
        _write_l0(client, states, 3, 4, base_ts)
        # L1 1-4 and the young L0 3 and 4 are left: no file ends at TXID 2 any more.
        _compact_l0_into_l1(client, keep_from=3)
        # Table a did not change after TXID 2 (L0 3 and 4 do not hold its pages): its pages
        # come from L1 1-4.
        assert one(conn, "SELECT sum(length(body)) FROM a") == 300 * 900
        assert one(conn, "SELECT litestream_txid()") == f"{2:016x}"
        conn.execute("COMMIT")
        assert conn.execute("SELECT v FROM b ORDER BY id").fetchall() == \
            [(i * 100,) for i in range(1, 6)] + [("late",), ("late",)]
        assert one(conn, "SELECT litestream_txid()") == f"{4:016x}"
        assert lvfs.database(conn).stats().not_found_recoveries >= 1
    finally:
        conn.close()


def test_a_changed_page_gone_from_the_replica_is_busy_not_torn(tmp_path, store):
    """The one case without a consistent answer: the transaction still needs a page of its
    TXID that changed later and whose file is gone. SQLITE_BUSY, never a newer page."""
    states = _states(tmp_path, STEPS)
    client, url = store
    _write_l0(client, states, 1, 2, int(time.time() * 1000) - 60_000)
    conn = _open_pinned(url, "busy.db")
    try:
        conn.execute("BEGIN")
        assert one(conn, "SELECT count(*) FROM a WHERE id < 3") == 2  # pinned, b not read
        _write_l0(client, states, 3, 3, int(time.time() * 1000) - 60_000)
        _compact_l0_into_l1(client)
        with pytest.raises(apsw.BusyError, match="no longer on the replica"):
            conn.execute("SELECT v FROM b").fetchall()
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT v FROM b ORDER BY id").fetchall() == \
            [(i * 100,) for i in range(1, 6)]
    finally:
        conn.close()


def test_an_idle_reader_moves_past_removed_files(tmp_path, store):
    states = _states(tmp_path, STEPS)
    client, url = store
    base_ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 2, base_ts)
    conn = _open_pinned(url, "idle.db")
    try:
        assert count(conn, "b") == 5
        _write_l0(client, states, 3, 4, base_ts)
        _compact_l0_into_l1(client)
        # The next transaction's first read finds its file gone: nothing read yet, so it
        # moves to the newest state without an error (before any poll).
        assert count(conn, "b") == 7
        assert one(conn, "SELECT litestream_txid()") == f"{4:016x}"
        # ...and a poll that finds a gap in L0 (5-6 compacted away before it looked)
        # rebuilds from the higher levels.
        _write_l0(client, states, 5, 7, base_ts)
        _compact_l0_into_l1(client, upto=6)
        assert [i.min_txid for i in client.ltx_files(0)] == [7]
        assert lvfs.database(conn).poll()
        assert one(conn, "SELECT litestream_txid()") == f"{7:016x}"
        assert conn.execute("SELECT v FROM b WHERE id > 7 ORDER BY id").fetchall() == \
            [("five",), ("six",), ("seven",)]
    finally:
        conn.close()


# --- configuration: URI > registry > environment ------------------------------------------

@pytest.fixture
def two_replicas(tmp_path):
    states = _states(tmp_path, STEPS)
    a, b = FileReplicaClient(str(tmp_path / "a")), FileReplicaClient(str(tmp_path / "b"))
    ts = int(time.time() * 1000) - 60_000
    _write_l0(a, states, 1, 2, ts)
    _write_l0(b, states, 1, 4, ts)
    return f"file://{tmp_path / 'a'}", f"file://{tmp_path / 'b'}"


def forgotten(conn: apsw.Connection) -> "lvfs.ReplicaDatabase":
    """Leave ``conn`` in a reference cycle: only the collector closes it (the caller drops
    its own reference). Its database, which does not keep it alive."""
    db = lvfs.database(conn)
    cycle = [conn]
    cycle.append(cycle)
    return db


@contextmanager
def collections_off():
    """No automatic collection: a finalizer runs where the test collects, on the thread it
    chose, and not before."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def blocked_in(thread: threading.Thread, function: str) -> bool:
    """``thread`` runs ``function`` now (e.g. waits there for a lock: no other frame above)."""
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code.co_name == function


def _forget_a_connection(url: str) -> None:
    """Leave a connection to ``url`` in a reference cycle: only the collector closes it."""
    forgotten(lvfs.connect(lvfs.uri("gc-a.db", url, poll_interval="1h")))


def _open_with_collections_off(url: str):
    """Open ``url`` on a thread, automatic collections off (the tests place one); (the
    thread, after at most 20 s; the list that holds the connection once opened)."""
    opened = []
    gc.disable()
    try:
        worker = threading.Thread(target=lambda: opened.append(
            lvfs.connect(lvfs.uri("gc-b.db", url, poll_interval="1h"))), daemon=True)
        worker.start()
        worker.join(20)
    finally:
        gc.enable()
    return worker, opened


def test_a_connection_collected_while_another_source_opens_does_not_deadlock(two_replicas,
                                                                            monkeypatch):
    """The garbage collector may finalize a forgotten connection (closing it releases its
    source) on a thread that is building another source under the registry's lock."""
    url_a, url_b = two_replicas
    _forget_a_connection(url_a)
    plan = lvfs._Source.plan

    def plan_after_a_collection(self, *args, **kwargs):
        gc.collect()  # finalizes the forgotten connection here, inside _acquire_source
        return plan(self, *args, **kwargs)

    monkeypatch.setattr(lvfs._Source, "plan", plan_after_a_collection)
    worker, opened = _open_with_collections_off(url_b)
    assert not worker.is_alive(), "deadlocked: a finalized connection waited for the open"
    assert count(opened[0], "b") == 7
    opened[0].close()


def test_a_connection_collected_on_a_starting_poller_does_not_deadlock(two_replicas,
                                                                     monkeypatch):
    """The same finalizer on another thread: a collection on the new source's poller thread
    before ``Thread.start()`` returns (CI 2026-12-05, test_errors_contract hung 600 s). The
    build waits for that thread, so it must not hold the lock the finalizer needs."""
    url_a, url_b = two_replicas
    _forget_a_connection(url_a)
    set_ident = threading.Thread._set_ident

    def set_ident_then_collect(self):  # on the new thread, before start() returns in the opener
        set_ident(self)
        if self.name.startswith("litestream-vfs-poll"):
            gc.collect()

    monkeypatch.setattr(threading.Thread, "_set_ident", set_ident_then_collect)
    worker, opened = _open_with_collections_off(url_b)
    assert not worker.is_alive(), "deadlocked: the poller's finalizer waited for the open"
    assert count(opened[0], "b") == 7
    opened[0].close()


def test_a_connection_collected_under_its_sources_lock_does_not_wait_for_the_poller(
        two_replicas):
    """A thread that holds a source's lock (``stats()`` builds its answer under it) may
    collect, and so finalize the source's last connection, while the poller waits for that
    lock. Closing the source right there joined the poller, which could not stop before the
    lock was released: the finalizer stalled VFS_POLLER_JOIN_TIMEOUT (5 s). Now the source
    is only marked closed there, and the closer thread closes it."""
    url_a, _ = two_replicas
    with collections_off():
        # What collecting this process's heap costs now, with nothing to finalize (late in a
        # full run, on a host stealing a third of the CPU, the collection below took 1.2 s).
        started = time.monotonic()
        gc.collect()
        baseline = time.monotonic() - started
        db = forgotten(lvfs.connect(lvfs.uri("gc-mu.db", url_a, poll_interval="20ms")))
        source, poller = db._source, db._source._poller
        with source.mu:
            wait_for(lambda: blocked_in(poller, "_list"), 10, "the poller to wait for the lock")
            started = time.monotonic()
            gc.collect()  # finalizes the forgotten connection here, under the source's lock
            elapsed = time.monotonic() - started
            assert source.closed
    assert elapsed < baseline + 1.0, \
        f"the finalizer waited {elapsed - baseline:.1f} s for the poller"
    poller.join(10)
    assert not poller.is_alive()
    assert lvfs._sources.get((source.name, source.config)) is None


def _opened(target: str):
    conn = lvfs.connect(target)
    try:
        db = lvfs.database(conn)
        return db.txid, db.config.poll_interval, db.config.cache_size
    finally:
        conn.close()


def test_config_precedence_uri_over_registry_over_environment(two_replicas, monkeypatch):
    url_a, url_b = two_replicas
    name = "prec.db"
    monkeypatch.setenv("LITESTREAM_REPLICA_URL", url_a)
    assert _opened(name) == (2, 1.0, 10 * 1024 * 1024)  # env, then Litestream's defaults
    lvfs.set_vfs_config(name, VFSConfig(replica_url=url_b, poll_interval=5.0, cache_size=4096))
    try:
        assert _opened(name) == (4, 5.0, 4096)  # registry over env
        assert _opened(lvfs.uri(name, url_a, poll_interval="250ms")) == (2, 0.25, 4096)
        assert _opened(lvfs.uri(name, cache_size="1MiB")) == (4, 5.0, 1 << 20)
        assert _opened(lvfs.uri("other.db", cache_size="2MB")) == (2, 1.0, 2_000_000)  # by name
    finally:
        lvfs.delete_vfs_config(name)
    assert _opened(name) == (2, 1.0, 10 * 1024 * 1024)
    monkeypatch.delenv("LITESTREAM_REPLICA_URL")
    with pytest.raises(apsw.CantOpenError, match="no replica URL for database 'prec.db'"):
        lvfs.connect(name)


def test_registry_keeps_copies_and_validates():
    cfg = VFSConfig(replica_url="file:///x", poll_interval=2.0)
    lvfs.set_vfs_config("copy.db", cfg)
    try:
        cfg.poll_interval = 99.0
        got = lvfs.get_vfs_config("copy.db")
        assert got.poll_interval == 2.0
        got.replica_url = "file:///changed"
        assert lvfs.get_vfs_config("copy.db").replica_url == "file:///x"
        with pytest.raises(VFSConfigError, match="poll_interval"):
            lvfs.set_vfs_config("bad.db", VFSConfig(poll_interval=-1.0))
        assert lvfs.get_vfs_config("bad.db") is None
        lvfs.set_vfs_config("copy.db", VFSConfig(poll_interval="750ms"))  # text is parsed
        assert lvfs.get_vfs_config("copy.db").poll_interval == 0.75
    finally:
        lvfs.delete_vfs_config("copy.db")
    assert lvfs.get_vfs_config("copy.db") is None


@pytest.mark.parametrize("params, message", [
    ({"poll_interval": "soon"}, r"URI parameter poll_interval='soon'.*positive Go duration"),
    ({"poll_interval": "0s"}, r"poll_interval='0s'.*positive Go duration"),
    ({"cache_size": "lots"}, r"cache_size='lots'.*byte size"),
    ({"cache_size": "-5"}, r"cache_size='-5'.*byte size"),
    ({"write_enabled": "true"}, r"write_enabled=true is not supported: this VFS is read-only"),
    ({"write_enabled": "maybe"}, r"write_enabled='maybe'.*boolean"),
    ({"sync_interval": "1s"}, r"sync_interval is not supported: it configures write mode"),
    ({"buffer_path": "/tmp/b"}, r"buffer_path is not supported"),
    ({"hydration_enabled": "maybe"}, r"hydration_enabled='maybe'.*boolean"),
    ({"hydration_path": "/tmp/h"}, r"hydration_path without hydration_enabled=true"),
    ({"immutable": "1"}, r"immutable=1 is not supported"),
    ({"nolock": "true"}, r"nolock=1 is not supported"),
])
def test_bad_or_unsupported_parameters_fail_the_open_by_name(two_replicas, params, message):
    with pytest.raises(apsw.CantOpenError, match=message):
        lvfs.connect(lvfs.uri("bad.db", two_replicas[0], **params))


def test_write_enabled_false_is_accepted_and_env_values_are_checked(two_replicas, monkeypatch):
    assert _opened(lvfs.uri("ok.db", two_replicas[0], write_enabled="false"))[0] == 2
    monkeypatch.setenv("LITESTREAM_WRITE_ENABLED", "true")
    with pytest.raises(apsw.CantOpenError, match="write_enabled=true is not supported"):
        lvfs.connect(lvfs.uri("ok.db", two_replicas[0]))
    monkeypatch.setenv("LITESTREAM_WRITE_ENABLED", "yes please")
    with pytest.raises(apsw.CantOpenError,
                       match=r"environment variable LITESTREAM_WRITE_ENABLED \(write_enabled\)"):
        lvfs.connect(lvfs.uri("ok.db", two_replicas[0]))


def test_a_missing_or_empty_replica_fails_the_open(tmp_path):
    with pytest.raises(apsw.CantOpenError, match="no matching backup files available"):
        lvfs.connect(lvfs.uri("none.db", f"file://{tmp_path / 'empty'}"))
    with pytest.raises(apsw.CantOpenError, match="host part"):
        lvfs.connect(lvfs.uri("none.db", "file://relative/path"))


# --- SQL functions and time travel ---------------------------------------------------------

def test_sql_functions_and_time_travel(tmp_path, workload_states):
    client = write_our_replica(tmp_path / "replica", workload_states)  # L0 + L1 2-4 + L9 1-3
    ts = {i.max_txid: i.created_at for i in client.ltx_files(0)}
    url = f"file://{tmp_path / 'replica'}"
    latest = len(workload_states)

    def items_at(txid):
        path = tmp_path / f"state-{txid}.db"
        path.write_bytes(workload_states[txid - 1])
        c = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return c.execute("SELECT id, name, body FROM items ORDER BY id").fetchall()
        finally:
            c.close()

    conn = lvfs.connect(lvfs.uri("tt.db", url, poll_interval="50ms"))
    try:
        assert one(conn, "SELECT litestream_txid()") == f"{latest:016x}"
        assert one(conn, "SELECT litestream_time()") == format_rfc3339_nano(ts[latest])
        assert one(conn, "SELECT litestream_lag()") == -1 or one(conn, "SELECT litestream_lag()") >= 0
        wait_for(lambda: one(conn, "SELECT litestream_lag()") >= 0, 5, "a poll")
        assert one(conn, "SELECT typeof(litestream_lag())") == "integer"
        assert conn.execute("PRAGMA litestream_txid").fetchall() == [(f"{latest:016x}",)]

        # Between TXIDs 3 and 4: files created strictly before the target (spec §2.6).
        target = ts[3] + (ts[4] - ts[3]) / 2
        assert one(conn, "SELECT litestream_set_time(?)", format_rfc3339_nano(target)) is None
        assert one(conn, "SELECT litestream_txid()") == f"{3:016x}"
        assert one(conn, "SELECT litestream_time()") == format_rfc3339_nano(target)
        assert conn.execute("SELECT id, name, body FROM items ORDER BY id").fetchall() == items_at(3)
        time.sleep(0.2)  # polls are off while time travelling
        assert one(conn, "SELECT litestream_txid()") == f"{3:016x}"
        assert lvfs.database(conn).stats().time_travel == format_rfc3339_nano(target)

        conn.execute("BEGIN")  # inside a read transaction the change waits for its end
        assert len(conn.execute("SELECT id FROM items").fetchall()) == len(items_at(3))
        conn.execute("SELECT litestream_set_time('LATEST')").fetchall()
        assert one(conn, "SELECT count(*) FROM items") == len(items_at(3))
        conn.execute("COMMIT")
        assert conn.execute("SELECT id, name, body FROM items ORDER BY id").fetchall() == \
            items_at(latest)
        assert one(conn, "SELECT litestream_txid()") == f"{latest:016x}"

        with pytest.raises(apsw.SQLError, match="cannot parse 'yesterday-ish'"):
            conn.execute("SELECT litestream_set_time('yesterday-ish')").fetchall()
        with pytest.raises(apsw.SQLError, match="no matching backup files"):
            conn.execute("SELECT litestream_set_time('30 days ago')").fetchall()
        assert one(conn, "SELECT litestream_txid()") == f"{latest:016x}"  # unchanged
    finally:
        conn.close()


def test_time_travel_to_a_txid(tmp_path, workload_states):
    """set_time(<int TXID>): exactly that state; a TXID the replica keeps only inside a
    compacted file (its L0 files gone), or past the latest, is TxNotAvailableError."""
    from replication.errors import TxNotAvailableError

    write_our_replica(tmp_path / "replica", workload_states)  # L0 + L1 2-4 + L9 1-3
    latest = len(workload_states)
    conn = lvfs.connect(lvfs.uri("tx.db", f"file://{tmp_path / 'replica'}", poll_interval="1h"))
    try:
        db = lvfs.database(conn)
        for txid in (2, 4, 1):
            db.set_time(txid)
            assert one(conn, "SELECT litestream_txid()") == f"{txid:016x}"
            assert db.stats().time_travel == f"{txid:016x}"
            expected = tmp_path / f"state-{txid}.db"
            expected.write_bytes(workload_states[txid - 1])
            plain = apsw.Connection(str(expected), flags=apsw.SQLITE_OPEN_READONLY)
            assert conn.execute("SELECT * FROM items ORDER BY id").fetchall() == \
                plain.execute("SELECT * FROM items ORDER BY id").fetchall()
            plain.close()
        with pytest.raises(TxNotAvailableError):
            db.set_time(latest + 5)
        for level, txid in ((0, 2), (0, 3), (0, 4), (9, 3)):  # 3 now lives only in L1 2-4
            (tmp_path / "replica" / "ltx" / str(level)).joinpath(
                ltx.format_filename(*(((1, 3) if level == 9 else (txid, txid))))).unlink()
        with pytest.raises(TxNotAvailableError):
            db.set_time(3)
        assert one(conn, "SELECT litestream_txid()") == f"{1:016x}"  # unchanged by a refusal
        db.set_time(None)
        assert one(conn, "SELECT litestream_txid()") == f"{latest:016x}"
    finally:
        conn.close()


@pytest.fixture(scope="module")
def workload_states(tmp_path_factory) -> list[bytes]:
    return Workload(tmp_path_factory.mktemp("workload") / "src.db").run()


def test_functions_need_a_litestream_connection(tmp_path):
    plain = apsw.Connection(str(tmp_path / "plain.db"))
    with pytest.raises(ValueError, match="not opened through the 'litestream' VFS"):
        lvfs.install_functions(plain)
    plain.close()
    assert lvfs.register() is lvfs.register()
    assert lvfs.uri("a b.db", "s3://b/p?endpoint=http://h:1&x=y", poll_interval="5s") == \
        ("file:a%20b.db?vfs=litestream&replica_url=s3%3A%2F%2Fb%2Fp%3Fendpoint%3Dhttp%3A%2F%2F"
         "h%3A1%26x%3Dy&poll_interval=5s")


# --- the page cache is bounded -------------------------------------------------------------

def test_page_cache_is_bounded_and_counted(tmp_path, workload_states):
    write_our_replica(tmp_path / "replica", workload_states, extra_levels=False)
    url = f"file://{tmp_path / 'replica'}"
    page_count = len(workload_states[-1]) // PS

    def two_scans(cache_size):
        conn = lvfs.connect(lvfs.uri("cache.db", url, cache_size=cache_size, poll_interval="1h"))
        try:
            conn.execute("PRAGMA cache_size=0")  # SQLite's own cache: as small as it goes
            for _ in range(2):
                rows = conn.execute("SELECT id, name, body FROM items ORDER BY id").fetchall()
                conn.execute("PRAGMA integrity_check").fetchall()
            return rows, lvfs.database(conn).stats()
        finally:
            conn.close()

    rows_big, big = two_scans(str(10 * 1024 * 1024))
    rows_small, small = two_scans(str(4 * PS))
    assert rows_big == rows_small
    assert big.cache_capacity_pages == 2560
    assert big.cache_pages == big.pages_fetched <= page_count  # each page fetched once
    assert big.cache_bytes == big.cache_pages * PS
    assert big.cache_hits > 0
    assert small.cache_capacity_pages == 4 and small.cache_pages <= 4
    assert small.cache_bytes <= 4 * PS
    assert small.pages_fetched > big.pages_fetched  # evicted pages were fetched again
    assert small.cache_misses > big.cache_misses
    assert small.bytes_fetched > big.bytes_fetched


def test_a_poll_reads_a_small_new_file_whole_and_its_pages_need_no_fetch(tmp_path, store):
    """A poll that finds a small L0 file (what a POST makes) reads it whole, index, header and
    pages in one GET, and caches the pages no newer file replaces: the reads that follow the
    new TXID fetch nothing more (on SeaweedFS each was a GET of its own, in the follow lag)."""
    states = _states(tmp_path, STEPS)
    client, url = store
    base_ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 4, base_ts)
    conn = lvfs.connect(lvfs.uri("whole.db", url, poll_interval="1h"))
    try:
        assert count(conn, "b") == 7
        db = lvfs.database(conn)
        _write_l0(client, states, 5, 6, base_ts)  # two small files in one poll
        before = db.stats()
        assert db.poll() and db.txid == 6
        polled = db.stats()
        assert polled.pages_fetched > before.pages_fetched  # the new pages, cached by the poll
        assert [r[0] for r in conn.execute("SELECT v FROM b WHERE id > 7 ORDER BY id")] == \
            ["five", "six"]
        after = db.stats()
        assert after.pages_fetched == polled.pages_fetched
        assert after.bytes_fetched == polled.bytes_fetched
        assert after.cache_misses == polled.cache_misses
        assert after.cache_hits > polled.cache_hits
    finally:
        conn.close()


# --- under load: compaction and retention deleting files while readers read ----------------

@pytest.mark.parametrize("writer", ["ours", "litestream"])
def test_readers_never_see_a_torn_state_while_files_are_compacted_away(tmp_path, writer,
                                                                       request):
    """Transfers between accounts keep the total constant; every read transaction must see
    it (three reader threads, one source), while the replicator compacts every second and
    retention removes L0 files after 1 s and snapshots after 2 s. The VFS cache is small,
    so reads keep going to the replica."""
    import random
    import threading

    db, replica = tmp_path / "src.db", tmp_path / "replica"
    config = tmp_path / "litestream.yml"
    config.write_text(f"""
levels:
  - interval: 1s
snapshot:
  interval: 2s
  retention: 2s
l0-retention: 1s
l0-retention-check-interval: 500ms
dbs:
  - path: {db}
    monitor-interval: 100ms
    checkpoint-interval: 1s
    replica:
      type: file
      path: {replica}
      sync-interval: 100ms
""")
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    binary = [request.getfixturevalue("litestream_bin"), "replicate"] if writer == "litestream" \
        else OURS
    accounts, total = 300, 300 * 1000
    src = make_source(db)
    with src:
        src.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER, pad BLOB)")
        src.execute("INSERT INTO acct(balance, pad) SELECT 1000, randomblob(400) FROM json_each(?)",
                    (json.dumps(list(range(accounts))),))
    proc = subprocess.Popen([*binary, "-config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def transfers():
        rng = random.Random(7)
        while not stop.is_set():
            a, b = rng.sample(range(1, accounts + 1), 2)
            amount = rng.randint(1, 50)
            with src:
                src.execute("UPDATE acct SET balance = balance - ?, pad = randomblob(400) "
                            "WHERE id = ?", (amount, a))
                src.execute("UPDATE acct SET balance = balance + ? WHERE id = ?", (amount, b))
            time.sleep(0.005)

    writer_thread = threading.Thread(target=transfers)
    conn = None
    try:
        wait_for(lambda: list(FileReplicaClient(str(replica)).ltx_files(0)), 30, "first upload")
        writer_thread.start()
        target = lvfs.uri("load.db", f"file://{replica}", poll_interval="100ms",
                          cache_size=str(16 * PS))
        conn = lvfs.connect(target)
        # Three readers on their own threads and connections, sharing one source.
        seen, failures = set(), []

        def reader():
            c = lvfs.connect(target)
            try:
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:
                    c.execute("BEGIN")
                    first = one(c, "SELECT sum(balance) FROM acct")
                    time.sleep(0.02)  # let polls and deletions happen inside the transaction
                    rows = c.execute("SELECT id, balance, length(pad) FROM acct").fetchall()
                    txid = one(c, "SELECT litestream_txid()")
                    c.execute("COMMIT")
                    if not (first == total == sum(r[1] for r in rows) and len(rows) == accounts
                            and {r[2] for r in rows} == {400}):
                        failures.append((txid, first, len(rows)))
                    seen.add(txid)
            except Exception as e:  # surfaced by the assertion below
                failures.append(repr(e))
            finally:
                c.close()

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures, failures[:5]
        assert one(conn, "PRAGMA quick_check") == "ok"
        stats = lvfs.database(conn).stats()
        assert len(seen) > 10 and stats.poll_errors == 0
        assert stats.cache_pages <= 16
        l0 = [i.min_txid for i in FileReplicaClient(str(replica)).ltx_files(0)]
        assert l0 and l0[0] > 1  # retention did remove files during the run
        print(f"{writer}: {len(seen)} TXIDs seen, {stats.not_found_recoveries} vanished-file "
              f"recoveries, {stats.index_builds} index builds")
    finally:
        stop.set()
        if writer_thread.is_alive():
            writer_thread.join(10)
        if conn is not None:
            conn.close()
        stop_process(proc)
        src.close()


# --- the real Litestream VFS extension reads the same replica the same way ------------------

_REAL_VFS_SCRIPT = r"""
import hashlib, json, os, sys
import apsw, litestream_vfs
from urllib.parse import quote
loader = apsw.Connection(":memory:")
loader.enable_load_extension(True)
loader.load_extension(os.path.splitext(litestream_vfs.loadable_path())[0])
conn = apsw.Connection("file:app.db?vfs=litestream&replica_url=" + quote(sys.argv[1], safe=""),
                       flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
rows = conn.execute("SELECT * FROM items ORDER BY rowid").fetchall()
print(json.dumps({
    "txid": conn.execute("SELECT litestream_txid()").fetchall()[0][0],
    "rows": hashlib.sha256(repr(rows).encode()).hexdigest(),
    "count": len(rows),
    "schema": conn.execute("SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE "
                           "'_litestream%' ORDER BY name").fetchall(),
    "integrity": conn.execute("PRAGMA integrity_check").fetchall(),
}))
"""


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_same_answers_as_the_real_litestream_vfs_extension(tmp_path, backend, request,
                                                          litestream_bin, monkeypatch):
    import litestream_vfs  # noqa: F401  (a test extra: its absence must fail, not skip)
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    if backend == "s3":
        s3 = request.getfixturevalue("s3_server")
        url = s3.url(s3.bucket, s3.new_path() + "/app")
        env = s3.env()
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            monkeypatch.setenv(k, env[k])
    else:
        url = f"file://{tmp_path / 'replica'}"
    src = make_source(tmp_path / "src.db")
    for i in range(3):
        write_round(src, i)
        subprocess.run([litestream_bin, "replicate", "-once", str(tmp_path / "src.db"), url],
                       env=env, check=True, capture_output=True, timeout=120)
    src.close()
    script = tmp_path / "real_vfs.py"
    script.write_text(_REAL_VFS_SCRIPT)
    # Its own process: the extension registers a VFS named "litestream" too.
    proc = subprocess.run([sys.executable, str(script), url], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    conn = lvfs.connect(lvfs.uri("app.db", url))
    try:
        import hashlib
        rows = conn.execute("SELECT * FROM items ORDER BY rowid").fetchall()
        ours = {
            "txid": one(conn, "SELECT litestream_txid()"),
            "rows": hashlib.sha256(repr(rows).encode()).hexdigest(),
            "count": len(rows),
            "schema": [list(r) for r in conn.execute(
                "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE '_litestream%' "
                "ORDER BY name").fetchall()],
            "integrity": [list(r) for r in conn.execute("PRAGMA integrity_check").fetchall()],
        }
    finally:
        conn.close()
    assert ours == theirs and theirs["count"] > 300


def test_connections_to_one_replica_share_index_cache_and_poller(two_replicas):
    url_a, _ = two_replicas
    first = lvfs.connect(lvfs.uri("shared.db", url_a, poll_interval="1h"))
    second = lvfs.connect(lvfs.uri("shared.db", url_a, poll_interval="1h"))
    other = lvfs.connect(lvfs.uri("shared.db", url_a, poll_interval="1h", cache_size="1MB"))
    try:
        assert count(first, "b") == count(second, "b") == count(other, "b") == 5
        a, b, c = (lvfs.database(x).stats() for x in (first, second, other))
        assert a.connections == b.connections == 2 and c.connections == 1
        assert a.pages_fetched == b.pages_fetched  # one cache: the second read hit it
        assert b.cache_hits > 0 and c.pages_fetched == a.pages_fetched
        assert lvfs.database(first)._source is lvfs.database(second)._source
    finally:
        first.close()
        assert lvfs.database(second).stats().connections == 1
        second.close()
        other.close()
    assert not [d for d in lvfs.open_databases() if d.name == "shared.db"]
