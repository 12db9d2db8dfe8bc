"""Our ``replicate`` against the real Litestream: its restores read our replicas (0.5.17 and the
frame-only 0.5.15), hand-over works both ways, foreign checkpoints and SIGKILL lose nothing.

The replicator always runs as a subprocess (``python -m replication replicate``) and the writer
is this test process (or a child of it): the same process layout as production.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import apsw
import pytest

from replication.ltx import Decoder, Header, lock_pgno
from replication.replica_client import client_from_url
from replication.restore import restore

OURS = [sys.executable, "-m", "replication", "replicate"]


# --- helpers -----------------------------------------------------------------------------------

class Replicator:
    """One replicator subprocess (ours or Litestream's), stopped by PID at teardown."""

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self, sig=signal.SIGTERM, timeout=40) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]


@pytest.fixture
def replicators():
    started: list[Replicator] = []

    def start(cmd, env, log_path):
        r = Replicator(cmd, env, log_path)
        started.append(r)
        return r
    yield start
    for r in started:
        if r.proc.poll() is None:
            r.kill()


class Target:
    """A replica URL, a client on it, and the environment for child processes."""

    def __init__(self, url, env, client):
        self.url, self.env, self.client = url, env, client

    def remote_max(self) -> int:
        best = 0
        for level in (0, 9):
            for f in self.client.ltx_files(level):
                best = max(best, f.max_txid)
        return best


@pytest.fixture(params=["file", "s3"])
def target(request, tmp_path, litestream_env):
    if request.param == "file":
        url = f"file://{tmp_path / 'replica'}"
        return Target(url, dict(litestream_env), client_from_url(url))
    s3 = request.getfixturevalue("s3_server")
    url = s3.url(s3.new_bucket(), "db")
    client = client_from_url(url, access_key_id=s3.access_key, secret_access_key=s3.secret_key)
    return Target(url, s3.env(litestream_env), client)


@pytest.fixture
def file_target(tmp_path, litestream_env):
    url = f"file://{tmp_path / 'replica'}"
    return Target(url, dict(litestream_env), client_from_url(url))


def connect(path) -> apsw.Connection:
    con = apsw.Connection(str(path))
    con.execute("PRAGMA busy_timeout=10000")
    return con


def make_db(path):
    con = connect(path)
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    con.close()


def dump(path) -> dict:
    """Schema and every row of every table: the content a restore must reproduce."""
    con = connect(path)
    try:
        out = {"__schema__": con.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()}
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            if name == "_litestream_seq":
                continue  # the replicator's own counter: it moves on its own after checkpoints
            out[name] = con.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
        return out
    finally:
        con.close()


def integrity(path) -> str:
    con = connect(path)
    try:
        return con.execute("PRAGMA integrity_check").fetchall()[0][0]
    finally:
        con.close()


def local_max(db_path) -> int:
    d = os.path.join(os.path.dirname(db_path), f".{os.path.basename(db_path)}-litestream", "ltx", "0")
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return 0
    return max((int(n[17:33], 16) for n in names if n.endswith(".ltx")), default=0)


def wait_caught_up(db_path, target, timeout=30.0, settle=0.6):
    """Until the replica holds the replicator's newest local L0 file, stable for ``settle`` s."""
    deadline = time.monotonic() + timeout
    stable_since = None
    last = None
    while time.monotonic() < deadline:
        state = (local_max(db_path), target.remote_max())
        if state[0] and state[0] == state[1]:
            if state != last:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= settle:
                return state[0]
        else:
            stable_since = None
        last = state
        time.sleep(0.05)
    raise AssertionError(f"replica did not catch up: local {local_max(db_path)}, "
                         f"remote {target.remote_max()}")


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def litestream_restore(binary, target, out, txid):
    r = subprocess.run([binary, "restore", "-txid", f"{txid:016x}", "-o", str(out), target.url],
                       env=target.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{binary} restore failed: {r.stderr}"


def check_restores(tmp_path, tag, target, expected, bins):
    """Every tool restores ``expected``; our restore is byte-identical to Litestream 0.5.17's.

    All restores target the TXID the replica had when we looked, so a file the replicator
    uploads meanwhile (its seq bump after a checkpoint) cannot make them differ.
    """
    txid = target.remote_max()
    outs = {}
    for name, binary in bins.items():
        out = tmp_path / f"{tag}-{name}.db"
        litestream_restore(binary, target, out, txid)
        assert integrity(out) == "ok", name
        assert dump(out) == expected, f"{name} restore differs from the source at {tag}"
        outs[name] = out
    ours = tmp_path / f"{tag}-ours.db"
    restore(target.client, str(ours), txid=txid)
    assert dump(ours) == expected
    assert sha(ours) == sha(outs["0.5.17"]), "our restore is not byte-identical to Litestream's"


def assert_chain_ok(client):
    """Every remote file decodes and verifies; L0 is contiguous; restorable from TXID 1."""
    for level in range(10):
        files = list(client.ltx_files(level))
        for f in files:
            with client.open_ltx_file(level, f.min_txid, f.max_txid) as fh:
                dec = Decoder(fh, name=f"L{level}/{f.min_txid}-{f.max_txid}")
                for _ in dec.pages():
                    pass
                dec.close()
        if level == 0:
            for prev, cur in zip(files, files[1:]):
                assert cur.min_txid == prev.max_txid + 1, f"L0 gap: {prev} then {cur}"


# --- (1) randomized workload --------------------------------------------------------------------

@contextlib.contextmanager
def immediate(con):
    """A write transaction that takes the write lock up front: a read-then-write (deferred)
    transaction may get SQLITE_BUSY_SNAPSHOT when the replicator's own small writes (seq
    bump, checkpoint barrier) land in between, with Litestream as with us."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def workload(con, rng: random.Random, steps: int, phase: int):
    """Inserts, updates, deletes, schema changes and large blobs, in random transactions."""
    for step in range(steps):
        op = rng.random()
        with immediate(con):
            if op < 0.45:
                for _ in range(rng.randint(1, 20)):
                    con.execute("INSERT INTO t(v, n) VALUES (?, ?)",
                                (os.urandom(rng.randint(10, 400)).hex(), rng.randint(0, 1 << 40)))
            elif op < 0.6:
                con.execute("UPDATE t SET v = ?, n = n + 1 WHERE id % ? = 0",
                            (f"upd{phase}-{step}", rng.randint(3, 11)))
            elif op < 0.7:
                con.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)",
                            (rng.randint(1, 15),))
            elif op < 0.8:
                con.execute("INSERT INTO blobs(b) VALUES (?)",
                            (os.urandom(rng.randint(100_000, 600_000)),))
            elif op < 0.82:
                con.execute("DELETE FROM blobs WHERE rowid IN (SELECT rowid FROM blobs LIMIT 1)")
            elif op < 0.9:
                name = f"s{phase}_{step}"
                con.execute(f"CREATE TABLE {name}(a INTEGER, b TEXT)")
                con.execute(f"INSERT INTO {name} SELECT id, v FROM t LIMIT 50")
                con.execute(f"CREATE INDEX {name}_a ON {name}(a)")
            elif op < 0.95:
                cols = [r[1] for r in con.execute("PRAGMA table_info(t)").fetchall()]
                con.execute(f"ALTER TABLE t ADD COLUMN c{len(cols)} TEXT DEFAULT 'd{phase}'")
            else:
                tables = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 's%'").fetchall()]
                if tables:
                    con.execute(f"DROP TABLE {rng.choice(tables)}")


def test_randomized_workload_restores_with_real_litestream(tmp_path, target, replicators,
                                                           litestream_bin, litestream_old_bin):
    db = tmp_path / "src.db"
    make_db(db)
    con = connect(db)
    con.execute("CREATE TABLE blobs(b BLOB)")
    rep = replicators(OURS + [str(db), target.url], target.env, tmp_path / "ours.log")
    bins = {"0.5.17": litestream_bin, "0.5.15": litestream_old_bin}
    rng = random.Random(20261121)
    try:
        for phase in range(4):
            workload(con, rng, 60, phase)
            if phase == 2:
                con.execute("VACUUM")
            wait_caught_up(str(db), target)
            check_restores(tmp_path, f"phase{phase}", target, dump(db), bins)
        # Growth past several checkpoints: the WAL restarted (new salts) several times.
        salts = set()
        for f in target.client.ltx_files(0):
            with target.client.open_ltx_file(0, f.min_txid, f.max_txid, 0, 100) as fh:
                h = Header.unmarshal(fh.read())
            salts.add((h.wal_salt1, h.wal_salt2))
        assert len(salts) >= 3, f"only {len(salts)} WAL generations: the workload is too small"
        assert os.path.getsize(db) > 2 << 20
    finally:
        con.close()
        code = rep.stop()
    assert code == 0, rep.log()
    assert_chain_ok(target.client)
    check_restores(tmp_path, "final", target, dump(db), bins)


# --- (2) hand-over both ways --------------------------------------------------------------------

def _insert(con, n, tag):
    for i in range(n):
        con.execute("INSERT INTO t(v, n) VALUES (?, ?)", (f"{tag}{i}", i))


@pytest.mark.parametrize("first", ["litestream", "ours"])
def test_handover_continues_txids_without_a_gap(tmp_path, file_target, replicators, first,
                                                litestream_bin):
    target = file_target
    db = tmp_path / "src.db"
    make_db(db)
    con = connect(db)
    theirs = [litestream_bin, "replicate", str(db), target.url]
    order = [theirs, OURS + [str(db), target.url]]
    if first == "ours":
        order.reverse()
    maxes = []
    try:
        for i, cmd in enumerate(order):
            rep = replicators(cmd, target.env, tmp_path / f"rep{i}.log")
            for k in range(5):
                _insert(con, 20, f"r{i}b{k}")
                time.sleep(0.2)
            wait_caught_up(str(db), target, timeout=40)
            assert rep.stop() == 0, rep.log()
            maxes.append(target.remote_max())
    finally:
        con.close()
    assert maxes[1] > maxes[0]
    l0 = [(f.min_txid, f.max_txid) for f in target.client.ltx_files(0)]
    assert l0[0][0] == 1
    assert any(m == maxes[0] + 1 for m, _ in l0), "the second replicator did not continue the TXIDs"
    assert_chain_ok(target.client)
    # Litestream 0.5.17 wrote block-encoded files, so 0.5.15 cannot read this replica.
    check_restores(tmp_path, "handover", target, dump(db), {"0.5.17": litestream_bin})


# --- (3) another process checkpoints ---------------------------------------------------------------

CHECKPOINTER = r"""
import apsw, sys
path, rounds = sys.argv[1], int(sys.argv[2])
con = apsw.Connection(path)
con.execute("PRAGMA busy_timeout=200")
results = []
for r in range(rounds):
    with con:
        for i in range(30):
            con.execute("INSERT INTO t(v, n) VALUES (?, ?)", ("c%d-%d" % (r, i) + "x" * 300, i))
    results.append(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0])
print(results)
"""


def test_foreign_truncate_checkpoints_lose_no_frame(tmp_path, file_target, replicators,
                                                    litestream_bin):
    target = file_target
    db = tmp_path / "src.db"
    make_db(db)
    rep = replicators(OURS + [str(db), target.url], target.env, tmp_path / "ours.log")
    wait_caught_up(str(db), target)
    # While we replicate: another process writes and runs TRUNCATE checkpoints.
    subprocess.run([sys.executable, "-c", CHECKPOINTER, str(db), "15"], check=True, timeout=120)
    wait_caught_up(str(db), target)
    check_restores(tmp_path, "running", target, dump(db), {"0.5.17": litestream_bin})
    assert rep.stop() == 0, rep.log()
    before = target.remote_max()

    # While we are down: a TRUNCATE checkpoint that succeeds (nobody holds the WAL) resets it.
    con = connect(db)
    _insert(con, 50, "down")
    assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0] == 0
    assert os.path.getsize(f"{db}-wal") == 0
    _insert(con, 400, "after")  # a new WAL, larger than the old synced end
    con.close()
    rep = replicators(OURS + [str(db), target.url], target.env, tmp_path / "ours2.log")
    wait_caught_up(str(db), target)
    assert rep.stop() == 0, rep.log()
    nxt = [f for f in target.client.ltx_files(0) if f.min_txid == before + 1]
    assert nxt, "no file continues the chain after the restart"
    with target.client.open_ltx_file(0, nxt[0].min_txid, nxt[0].max_txid) as f:
        dec = Decoder(f)
        pgnos = [p for p, _ in dec.pages()]
        dec.close()
    commit = dec.header.commit
    expected = [p for p in range(1, commit + 1) if p != lock_pgno(dec.header.page_size)]
    assert pgnos == expected, "the file after a foreign WAL reset must be a full snapshot"
    assert_chain_ok(target.client)
    check_restores(tmp_path, "after-reset", target, dump(db), {"0.5.17": litestream_bin})


# --- (4) SIGKILL at random points ------------------------------------------------------------------

WRITER = r"""
import apsw, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
con = apsw.Connection(path)
con.execute("PRAGMA busy_timeout=10000")
start = time.time()
n = con.execute("SELECT COALESCE(MAX(id), 0) FROM t").fetchall()[0][0]
while time.time() - start < seconds:
    n += 1
    con.execute("INSERT INTO t(id, v, n) VALUES (?, ?, ?)", (n, "k" * (n % 700), n))
    if n % 97 == 0:
        con.execute("UPDATE t SET n = n + 1 WHERE id % 13 = 0")
    time.sleep(0.002)
print(n)
"""


def test_sigkill_never_corrupts_the_replica(tmp_path, file_target, replicators, litestream_bin):
    target = file_target
    db = tmp_path / "src.db"
    make_db(db)
    rng = random.Random(7)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "12"],
                              stdout=subprocess.PIPE, text=True)
    try:
        for i in range(5):
            rep = replicators(OURS + [str(db), target.url], target.env, tmp_path / f"k{i}.log")
            time.sleep(rng.uniform(1.5, 2.5))
            rep.kill()
            # Whatever the replica holds is a valid, contiguous chain and a prefix of the commits.
            assert_chain_ok(target.client)
            if target.remote_max():
                out = tmp_path / f"kill{i}.db"
                restore(target.client, str(out))
                assert integrity(out) == "ok"
                ids = [r[0] for r in connect(out).execute("SELECT id FROM t ORDER BY id").fetchall()]
                assert ids == list(range(1, len(ids) + 1)), "a transaction was torn or lost"
    finally:
        last = int(writer.communicate(timeout=60)[0])
    rep = replicators(OURS + [str(db), target.url], target.env, tmp_path / "final.log")
    wait_caught_up(str(db), target)
    assert rep.stop() == 0, rep.log()
    assert_chain_ok(target.client)
    expected = dump(db)
    assert len(expected["t"]) == last
    check_restores(tmp_path, "after-kills", target, expected, {"0.5.17": litestream_bin})
