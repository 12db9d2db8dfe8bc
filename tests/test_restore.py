"""Restore: plan and bytes against the real Litestream (fixture replica and live round trips)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import apsw
import pytest

from replication import ltx
from replication.compactor import compact
from replication.defaults import SHORT_READ_ATTEMPTS
from replication.errors import LTXError, ReplicationError, TruncatedLTXError, TxNotAvailableError
from replication.file_replica_client import FileReplicaClient
from replication.replica_client import read_whole_ltx_file
from replication.restore import calc_restore_plan, restore

from tests.plugins.litestream import FIXTURE_0517 as FIXTURE
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
PS = 4096
NOCHK = ltx.HEADER_FLAG_NO_CHECKSUM


# --- helpers -------------------------------------------------------------------------------

def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def set_mtimes_from_headers(root: Path) -> None:
    """git and cp lose mtimes; a file replica's CreatedAt is the mtime = header Timestamp."""
    for path in root.rglob("*.ltx"):
        with open(path, "rb") as f:
            ts = ltx.Header.unmarshal(f.read(ltx.HEADER_SIZE)).timestamp
        os.utime(path, ns=(ts * 1_000_000, ts * 1_000_000))


def copy_fixture_replica(tmp_path: Path) -> Path:
    dst = tmp_path / "replica"
    shutil.copytree(FIXTURE / "replica", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    set_mtimes_from_headers(dst)
    return dst


def parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


def litestream_restore(binary, env, url, out, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "restore", *extra, "-o", str(out), url],
                          env=env, capture_output=True, text=True, timeout=120)


def encode_file(header: ltx.Header, pages, encoding="frame") -> bytes:
    import io
    buf = io.BytesIO()
    enc = ltx.Encoder(buf, header, encoding=encoding)
    for pgno, data in pages:
        enc.encode_page(pgno, data)
    enc.close()
    return buf.getvalue()


def db_pages(data: bytes) -> dict[int, bytes]:
    return {i // PS + 1: data[i:i + PS] for i in range(0, len(data), PS)}


@pytest.fixture(scope="module")
def fixture_replica(tmp_path_factory) -> Path:
    return copy_fixture_replica(tmp_path_factory.mktemp("fixture"))


# --- the fixture replica written by Litestream 0.5.17 --------------------------------------

def test_restore_latest_matches_litestream(fixture_replica, tmp_path):
    out = tmp_path / "out.db"
    result = restore(FileReplicaClient(str(fixture_replica)), str(out))
    assert sha256(out) == EXPECTED["restore_latest"]["file_sha256"]
    assert result.txid == 0x19 and result.page_count == EXPECTED["restore_latest"]["page_count"]
    assert leftovers(out) == ["out.db"]


@pytest.mark.parametrize("txid", sorted(EXPECTED["restore_by_txid"]))
def test_restore_by_txid_matches_litestream(fixture_replica, tmp_path, txid):
    want = EXPECTED["restore_by_txid"][txid]
    out = tmp_path / "out.db"
    restore(FileReplicaClient(str(fixture_replica)), str(out), txid=int(txid, 16))
    assert sha256(out) == want["file_sha256"]
    assert out.stat().st_size == want["file_size"]


@pytest.mark.parametrize("timestamp", sorted(EXPECTED["restore_by_timestamp"]))
def test_restore_by_timestamp_matches_litestream(fixture_replica, tmp_path, timestamp):
    want = EXPECTED["restore_by_timestamp"][timestamp]
    out = tmp_path / "out.db"
    client = FileReplicaClient(str(fixture_replica))
    if "error" in want:
        assert "no matching backup files available" in want["error"]
        with pytest.raises(TxNotAvailableError, match="no matching backup files available"):
            restore(client, str(out), timestamp=parse_ts(timestamp))
        assert leftovers(out) == []
    else:
        restore(client, str(out), timestamp=parse_ts(timestamp))
        assert sha256(out) == want["file_sha256"]


@pytest.mark.parametrize("txid", [None] + sorted(EXPECTED["restore_by_txid"])[::4])
def test_plan_matches_litestream_dry_run(fixture_replica, litestream_bin, litestream_env,
                                         tmp_path, txid):
    extra = ["-dry-run", "-json"] + (["-txid", txid] if txid else [])
    proc = litestream_restore(litestream_bin, litestream_env, f"file://{fixture_replica}",
                              tmp_path / "x.db", *extra)
    assert proc.returncode == 0, proc.stderr
    want = [(f["level"], int(f["min_txid"], 16), int(f["max_txid"], 16))
            for f in json.loads(proc.stdout)["files"]]
    plan = calc_restore_plan(FileReplicaClient(str(fixture_replica)),
                             txid=int(txid, 16) if txid else 0)
    assert [(i.level, i.min_txid, i.max_txid) for i in plan] == want


def test_integrity_checks_pass(fixture_replica, tmp_path):
    for mode in ("quick", "full"):
        out = tmp_path / f"{mode}.db"
        restore(FileReplicaClient(str(fixture_replica)), str(out), integrity_check=mode)
        assert sha256(out) == EXPECTED["restore_latest"]["file_sha256"]
        assert leftovers(out) == [out.name]


# --- replicas written by our encoder, restored by real Litestream --------------------------

class Workload:
    """Database states made with apsw (rollback journal, so the file *is* the state)."""

    def __init__(self, path: Path):
        self.path = path
        self.states: list[bytes] = []
        self.conn = apsw.Connection(str(path))
        self.conn.execute("PRAGMA page_size=4096")
        self.conn.execute("PRAGMA journal_mode=DELETE").fetchall()

    def step(self, sql: str, *args) -> None:
        with self.conn:
            self.conn.execute(sql, args)
        self.states.append(self.path.read_bytes())

    def run(self) -> list[bytes]:
        self.step("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
        self.step("INSERT INTO items(name, body) SELECT 'item-' || value, randomblob(300) "
                  "FROM json_each(?)", json.dumps(list(range(400))))
        self.step("UPDATE items SET name = upper(name) WHERE id % 7 = 0")
        self.step("INSERT INTO items(name, body) SELECT 'big', zeroblob(20000) "
                  "FROM json_each('[1,2,3,4,5]')")
        self.step("DELETE FROM items WHERE id > 40")
        self.conn.execute("VACUUM")  # the database shrinks: later Commit < earlier
        self.states.append(self.path.read_bytes())
        self.step("INSERT INTO items(name, body) VALUES ('after-vacuum', randomblob(5000))")
        self.conn.close()
        return self.states


def write_our_replica(root: Path, states: list[bytes], *, encoding="frame",
                      extra_levels=True) -> FileReplicaClient:
    """L0: TXID 1 = full snapshot of state 1, TXID k = pages changed since state k-1.
    Plus (``extra_levels``) an L1 compaction of TXIDs 2-4 by our compactor and an L9 snapshot
    at TXID 3, so restore plans mix levels the way real replicas do."""
    import io
    client = FileReplicaClient(str(root))
    base_ts = int(time.time() * 1000) - 100_000
    prev: dict[int, bytes] = {}
    l0 = {}
    for txid, state in enumerate(states, start=1):
        pages = db_pages(state)
        changed = sorted(p for p, d in pages.items() if prev.get(p) != d) if txid > 1 else sorted(pages)
        header = ltx.Header(NOCHK, PS, len(pages), txid, txid, base_ts + txid * 1000)
        data = encode_file(header, [(p, pages[p]) for p in changed], encoding)
        client.write_ltx_file(0, txid, txid, data, header.timestamp)
        l0[txid] = data
        prev = pages
    if extra_levels:
        out = io.BytesIO()
        header, _ = compact([ltx.Decoder(io.BytesIO(l0[t])) for t in (2, 3, 4)], out,
                            encoding=encoding)
        client.write_ltx_file(1, 2, 4, out.getvalue(), header.timestamp + 1)
        snap = db_pages(states[2])
        header = ltx.Header(NOCHK, PS, len(snap), 1, 3, base_ts + 3500)
        client.write_ltx_file(9, 1, 3, encode_file(header, sorted(snap.items()), encoding),
                              header.timestamp)
    return client


@pytest.fixture(scope="module")
def workload_states(tmp_path_factory) -> list[bytes]:
    return Workload(tmp_path_factory.mktemp("workload") / "src.db").run()


@pytest.mark.parametrize("encoding", ltx.ENCODINGS)
def test_our_replica_restored_by_litestream(tmp_path, workload_states, litestream_bin,
                                            litestream_env, encoding):
    client = write_our_replica(tmp_path / "replica", workload_states, encoding=encoding)
    url = f"file://{tmp_path / 'replica'}"
    for txid in range(1, len(workload_states) + 1):
        ours, theirs = tmp_path / f"ours-{txid}.db", tmp_path / f"theirs-{txid}.db"
        restore(client, str(ours), txid=txid)
        proc = litestream_restore(litestream_bin, litestream_env, url, theirs,
                                  "-txid", f"{txid:016x}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ours.read_bytes() == theirs.read_bytes() == workload_states[txid - 1], txid
    latest = tmp_path / "latest.db"
    proc = litestream_restore(litestream_bin, litestream_env, url, latest,
                              "-integrity-check", "full")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert latest.read_bytes() == workload_states[-1]


def test_frame_replica_restored_by_old_litestream(tmp_path, workload_states, litestream_old_bin,
                                                  litestream_env):
    write_our_replica(tmp_path / "frame", workload_states, encoding="frame")
    for txid in (2, 5, len(workload_states)):
        out = tmp_path / f"old-{txid}.db"
        proc = litestream_restore(litestream_old_bin, litestream_env, f"file://{tmp_path / 'frame'}",
                                  out, "-txid", f"{txid:016x}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert out.read_bytes() == workload_states[txid - 1]
    # ...and the test can tell: 0.5.15 cannot read the block encoding (page flag 0x1).
    write_our_replica(tmp_path / "block", workload_states, encoding="block", extra_levels=False)
    proc = litestream_restore(litestream_old_bin, litestream_env, f"file://{tmp_path / 'block'}",
                              tmp_path / "old-block.db")
    assert proc.returncode != 0


# --- replicas written by real `litestream replicate`, restored by us -----------------------

def _compare_all_restores(replica: Path, binary, env, tmp_path: Path) -> int:
    client = FileReplicaClient(str(replica))
    txids = sorted({i.max_txid for level in range(10) for i in client.ltx_files(level)})
    assert txids
    for txid in [0] + txids:
        ours, theirs = tmp_path / f"ours-{txid}.db", tmp_path / f"theirs-{txid}.db"
        extra = ["-txid", f"{txid:016x}"] if txid else []
        proc = litestream_restore(binary, env, f"file://{replica}", theirs, *extra)
        if proc.returncode != 0:  # e.g. a TXID only reachable through a gap: both must refuse
            with pytest.raises(ReplicationError):
                restore(client, str(ours), txid=txid)
            continue
        restore(client, str(ours), txid=txid)
        assert ours.read_bytes() == theirs.read_bytes(), f"txid {txid:x}"
    return len(txids)


def test_restore_of_litestream_replicate_once(tmp_path, litestream_bin, litestream_env):
    db = tmp_path / "src.db"
    conn = apsw.Connection(str(db))
    conn.setbusytimeout(10_000)  # Litestream takes the write lock briefly to checkpoint
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(4):
        with conn:
            conn.execute("INSERT INTO t(v) SELECT randomblob(2500) FROM json_each(?)",
                         (json.dumps(list(range(20 * (i + 1)))),))
        if i == 2:
            conn.execute("DELETE FROM t WHERE id % 3 = 0")
        proc = subprocess.run([litestream_bin, "replicate", "-once", str(db),
                               f"file://{tmp_path / 'replica'}"], env=litestream_env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    conn.close()
    assert _compare_all_restores(tmp_path / "replica", litestream_bin, litestream_env,
                                 tmp_path) >= 4


def test_restore_of_litestream_daemon_replica(tmp_path, litestream_bin, litestream_env):
    db = tmp_path / "src.db"
    config = tmp_path / "litestream.yml"
    config.write_text(f"""
levels:
  - interval: 1s
snapshot:
  interval: 2s
dbs:
  - path: {db}
    monitor-interval: 100ms
    checkpoint-interval: 1s
    min-checkpoint-page-count: 8
    replica:
      type: file
      path: {tmp_path / 'replica'}
      sync-interval: 100ms
""")
    conn = apsw.Connection(str(db))
    conn.setbusytimeout(10_000)  # Litestream takes the write lock briefly to checkpoint
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    proc = subprocess.Popen([litestream_bin, "replicate", "-config", str(config)],
                            env=litestream_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for i in range(12):
            with conn:
                conn.execute("INSERT INTO t(v) SELECT randomblob(1500) FROM json_each(?)",
                             (json.dumps(list(range(10))),))
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        conn.close()
    assert _compare_all_restores(tmp_path / "replica", litestream_bin, litestream_env,
                                 tmp_path) >= 3


# --- bad replicas and refusals -------------------------------------------------------------

def _l0_replica(root: Path, states, txids) -> FileReplicaClient:
    client = write_our_replica(root, states, extra_levels=False)
    keep = set(txids)
    client.delete_ltx_files([i for i in client.ltx_files(0) if i.min_txid not in keep])
    return client


def test_gap_in_chain_fails_latest_restore(tmp_path, workload_states, litestream_bin,
                                           litestream_env):
    client = _l0_replica(tmp_path / "replica", workload_states, [1, 2, 4, 5])
    out = tmp_path / "out.db"
    with pytest.raises(ReplicationError, match="non-contiguous ltx files"):
        restore(client, str(out))
    assert leftovers(out) == []
    assert litestream_restore(litestream_bin, litestream_env, f"file://{tmp_path / 'replica'}",
                              out).returncode != 0
    # a point before the gap is still restorable
    restore(client, str(out), txid=2)
    assert out.read_bytes() == workload_states[1]


def test_missing_snapshot_is_refused(tmp_path, workload_states, litestream_bin, litestream_env):
    client = _l0_replica(tmp_path / "replica", workload_states, [2, 3, 4])
    out = tmp_path / "out.db"
    with pytest.raises(TxNotAvailableError, match="no matching backup files available"):
        restore(client, str(out))
    assert leftovers(out) == []
    proc = litestream_restore(litestream_bin, litestream_env, f"file://{tmp_path / 'replica'}", out)
    assert proc.returncode != 0 and "no matching backup files available" in proc.stderr


def test_chain_that_never_supplies_a_page_is_refused(tmp_path, litestream_bin, litestream_env):
    client = FileReplicaClient(str(tmp_path / "replica"))
    snap = ltx.Header(NOCHK, PS, 2, 1, 1, 1_700_000_000_000)
    grow = ltx.Header(NOCHK, PS, 4, 2, 2, 1_700_000_001_000)  # commit 4, but only page 4 given
    client.write_ltx_file(0, 1, 1, encode_file(snap, [(1, b"a" * PS), (2, b"b" * PS)]),
                          snap.timestamp)
    client.write_ltx_file(0, 2, 2, encode_file(grow, [(4, b"d" * PS)]), grow.timestamp)
    out = tmp_path / "out.db"
    with pytest.raises(LTXError, match="first missing: page 3"):
        restore(client, str(out))
    assert leftovers(out) == []
    assert litestream_restore(litestream_bin, litestream_env, f"file://{tmp_path / 'replica'}",
                              out).returncode != 0
    restore(client, str(out), txid=1)
    assert out.read_bytes() == b"a" * PS + b"b" * PS


def test_empty_replica_has_no_backups(tmp_path):
    with pytest.raises(TxNotAvailableError, match="no matching backup files available"):
        restore(FileReplicaClient(str(tmp_path / "nothing")), str(tmp_path / "out.db"))
    with pytest.raises(TxNotAvailableError):
        calc_restore_plan(FileReplicaClient(str(tmp_path / "nothing")), txid=5)


def test_txid_beyond_replica_is_not_available(fixture_replica, tmp_path):
    with pytest.raises(TxNotAvailableError):
        restore(FileReplicaClient(str(fixture_replica)), str(tmp_path / "o.db"), txid=0x1000)


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_damaged_file_fails_without_partial_output(tmp_path, workload_states, damage):
    client = write_our_replica(tmp_path / "replica", workload_states, extra_levels=False)
    victim = tmp_path / "replica" / "ltx" / "0" / ltx.format_filename(3, 3)
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[-1] ^= 0x01  # the stored FileChecksum
    else:
        data[:4] = b"XTL1"
    victim.write_bytes(bytes(data))
    out = tmp_path / "out.db"
    with pytest.raises(LTXError, match=r"0/0000000000000003-0000000000000003\.ltx") as e:
        restore(client, str(out))
    assert {"truncate": "end of file", "flip": "checksum mismatch", "magic": "magic"}[damage] \
        in str(e.value)
    assert leftovers(out) == []


def test_existing_output_is_refused_then_forced(fixture_replica, tmp_path):
    client = FileReplicaClient(str(fixture_replica))
    out = tmp_path / "out.db"
    out.write_bytes(b"precious")
    with pytest.raises(ReplicationError, match="already exists"):
        restore(client, str(out))
    assert out.read_bytes() == b"precious" and leftovers(out) == ["out.db"]
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(out) + suffix).write_bytes(b"stale")
    restore(client, str(out), force=True)
    assert sha256(out) == EXPECTED["restore_latest"]["file_sha256"]
    assert leftovers(out) == ["out.db"]


def test_integrity_check_failure_leaves_no_output(tmp_path):
    client = FileReplicaClient(str(tmp_path / "replica"))
    conn = apsw.Connection(str(tmp_path / "src.db"))
    conn.execute("CREATE TABLE t(x); INSERT INTO t SELECT randomblob(900) FROM json_each('[1,2,3,4,5,6,7,8,9,10]')")
    conn.close()
    pages = db_pages((tmp_path / "src.db").read_bytes())
    pages[2] = b"\xff" * PS  # a garbage b-tree page
    header = ltx.Header(NOCHK, PS, len(pages), 1, 1, int(time.time() * 1000))
    client.write_ltx_file(0, 1, 1, encode_file(header, sorted(pages.items())), header.timestamp)
    out = tmp_path / "out.db"
    with pytest.raises(ReplicationError, match="integrity_check"):
        restore(client, str(out), integrity_check="full")
    assert leftovers(out) == []


def test_progress_reports_reach_the_total(fixture_replica, tmp_path):
    seen = []
    restore(FileReplicaClient(str(fixture_replica)), str(tmp_path / "o.db"), txid=0x0c,
            progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and all(a <= b for a, b in seen)


# --- short reads: a store's cut body is read again, a short file still fails ---------------

class ShortReads(FileReplicaClient):
    """Cuts the first ``cuts`` whole-file reads of one file to ``keep`` bytes (what a GET
    answered with a cut body looks like to the reader)."""

    def __init__(self, root: str, victim: tuple[int, int, int], keep: int, cuts: int):
        super().__init__(root)
        self.victim, self.keep, self.cuts, self.reads = victim, keep, cuts, 0

    def open_ltx_file(self, level, min_txid, max_txid, offset=0, size=0):
        f = super().open_ltx_file(level, min_txid, max_txid, offset, size)
        if (level, min_txid, max_txid) != self.victim or offset or size:
            return f
        self.reads += 1
        if self.reads > self.cuts:
            return f
        with f:
            return io.BytesIO(f.read()[:self.keep])


@pytest.fixture
def instant_rereads(monkeypatch):
    import replication.replica_client
    import replication.restore
    for module in (replication.restore, replication.replica_client):
        monkeypatch.setattr(module, "SHORT_READ_BACKOFF", 0.0, raising=False)
    import replication.defaults
    monkeypatch.setattr(replication.defaults, "SHORT_READ_BACKOFF", 0.0)


@pytest.mark.parametrize("keep", [0, 60, 4000])  # empty, inside the header, inside the pages
def test_a_short_read_is_read_again(fixture_replica, tmp_path, keep, instant_rereads, caplog):
    plan = calc_restore_plan(FileReplicaClient(str(fixture_replica)))
    victim = max(plan, key=lambda info: info.size)
    client = ShortReads(str(fixture_replica), (victim.level, victim.min_txid, victim.max_txid),
                        keep, cuts=SHORT_READ_ATTEMPTS - 1)
    restore(client, str(tmp_path / "o.db"))
    assert sha256(tmp_path / "o.db") == EXPECTED["restore_latest"]["file_sha256"]
    assert client.reads == SHORT_READ_ATTEMPTS
    assert "reading it again" in caplog.text


def test_a_file_short_on_every_read_fails_the_restore(fixture_replica, tmp_path,
                                                     instant_rereads):
    plan = calc_restore_plan(FileReplicaClient(str(fixture_replica)))
    victim = plan[-1]
    client = ShortReads(str(fixture_replica), (victim.level, victim.min_txid, victim.max_txid),
                        victim.size // 2, cuts=10**6)
    out = tmp_path / "o.db"
    with pytest.raises(TruncatedLTXError, match="unexpected end of file"):
        restore(client, str(out))
    assert client.reads == SHORT_READ_ATTEMPTS
    assert leftovers(out) == []


def test_a_whole_file_read_is_checked_and_read_again(fixture_replica, instant_rereads):
    info = calc_restore_plan(FileReplicaClient(str(fixture_replica)))[-1]
    key = (info.level, info.min_txid, info.max_txid)
    expected = FileReplicaClient(str(fixture_replica)).open_ltx_file(*key).read()
    client = ShortReads(str(fixture_replica), key, 30, cuts=2)
    assert read_whole_ltx_file(client, info) == expected and client.reads == 3
    never = ShortReads(str(fixture_replica), key, len(expected) - 1, cuts=10**6)
    with pytest.raises(LTXError, match="page index"):
        read_whole_ltx_file(never, info)
    assert never.reads == SHORT_READ_ATTEMPTS


def test_a_damaged_file_as_long_as_its_listing_fails_at_once(tmp_path, workload_states,
                                                              instant_rereads):
    write_our_replica(tmp_path / "replica", workload_states, extra_levels=False)
    victim = tmp_path / "replica" / "ltx" / "0" / ltx.format_filename(3, 3)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    counting = ShortReads(str(tmp_path / "replica"), (0, 3, 3), len(data), cuts=0)
    with pytest.raises(LTXError, match="checksum mismatch"):
        restore(counting, str(tmp_path / "out.db"))
    info = next(i for i in counting.ltx_files(0) if i.min_txid == 3)
    with pytest.raises(LTXError, match="checksum mismatch"):
        read_whole_ltx_file(counting, info)
    assert counting.reads == 2  # once each: never read again
