"""``python -m replication replicate``: Litestream's forms, signals, -once, -exec, metrics."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import apsw
import pytest

from replication.file_replica_client import FileReplicaClient
from tests.plugins.server import free_port

CLI = [sys.executable, "-m", "replication", "replicate"]


def make_db(path, n=3) -> None:
    con = apsw.Connection(str(path))
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(n):
        con.execute("INSERT INTO t(v) VALUES (?)", (f"row{i}",))
    con.close()


def insert(path, n, tag="x"):
    con = apsw.Connection(str(path))
    con.execute("PRAGMA busy_timeout=5000")
    for i in range(n):
        con.execute("INSERT INTO t(v) VALUES (?)", (f"{tag}{i}",))
    con.close()


def rows(path):
    con = apsw.Connection(str(path))
    try:
        return con.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def spans(root, level):
    return [(f.min_txid, f.max_txid) for f in FileReplicaClient(str(root)).ltx_files(level)]


def run(args, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60, **kw)


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon():
    procs = []

    def start(args, **kw):
        p = subprocess.Popen(CLI + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, **kw)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_positional_form_sigterm_does_a_final_sync_and_exits_0(tmp_path, daemon,
                                                               litestream_bin, litestream_env):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    make_db(db)
    p = daemon([str(db), f"file://{replica}"])
    wait_for(lambda: spans(replica, 0), what="the first upload")
    insert(db, 5)
    p.send_signal(signal.SIGTERM)  # at once: only the final sync can carry these rows
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    out = tmp_path / "out.db"
    subprocess.run([litestream_bin, "restore", "-o", str(out), f"file://{replica}"],
                   check=True, env=litestream_env, capture_output=True, timeout=60)
    assert rows(out) == rows(db)
    assert len(rows(out)) == 8


def test_double_dash_once_force_snapshot(tmp_path):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    make_db(db)
    r = run(["--once", "--force-snapshot", str(db), f"file://{replica}"])
    assert r.returncode == 0, r.stderr
    assert spans(replica, 0)
    assert spans(replica, 9) == [(1, spans(replica, 0)[-1][1])]
    insert(db, 2)
    r = run(["-once=true", str(db), f"file://{replica}"])  # Go's -flag=value form
    assert r.returncode == 0, r.stderr
    assert len(spans(replica, 9)) == 1 and spans(replica, 0)[-1][1] > spans(replica, 9)[0][1]


def test_config_file_from_env_and_enforce_retention(tmp_path):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    make_db(db)
    cfg = tmp_path / "litestream.yml"
    cfg.write_text(f"""
snapshot:
  retention: 1ms
dbs:
  - path: {db}
    replica:
      type: file
      path: ${{REPLICA_DIR}}
""")
    env = dict(os.environ, LITESTREAM_CONFIG=str(cfg), REPLICA_DIR=str(replica))
    assert run(["-once", "-force-snapshot"], env=env).returncode == 0
    insert(db, 1)
    assert run(["-once", "-force-snapshot"], env=env).returncode == 0
    assert len(spans(replica, 9)) == 2
    time.sleep(0.05)
    r = run(["-config", str(cfg), "-once", "-enforce-retention"], env=env)
    assert r.returncode == 0, r.stderr
    assert len(spans(replica, 9)) == 1  # the older snapshot is past its retention


def test_no_expand_env_keeps_dollar_literal(tmp_path):
    db = tmp_path / "src.db"
    make_db(db)
    cfg = tmp_path / "ls.yml"
    cfg.write_text(f"dbs:\n  - path: {db}\n    replica:\n      url: $REPLICA_URL\n")
    env = dict(os.environ, REPLICA_URL=f"file://{tmp_path / 'replica'}")
    assert run(["-config", str(cfg), "-once"], env=env).returncode == 0
    assert spans(tmp_path / "replica", 0)
    r = run(["-config", str(cfg), "-no-expand-env", "-once"], env=env)
    assert r.returncode != 0 and "REPLICA_URL" in r.stderr


def test_restore_if_db_not_exists(tmp_path):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    make_db(db, n=4)
    assert run(["-once", str(db), f"file://{replica}"]).returncode == 0
    expected = rows(db)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    r = run(["-once", "-restore-if-db-not-exists", str(db), f"file://{replica}"])
    assert r.returncode == 0, r.stderr
    assert rows(db) == expected
    # No backup at all is fine: start empty.
    fresh = tmp_path / "fresh.db"
    r = run(["-once", "-restore-if-db-not-exists", str(fresh), f"file://{tmp_path / 'empty'}"])
    assert r.returncode == 0, r.stderr


def test_exec_stops_when_the_child_exits_with_its_code(tmp_path, daemon):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    make_db(db)
    child = f"{sys.executable} -c 'import time, sys; time.sleep(1.5); sys.exit(3)'"
    p = daemon(["-exec", child, str(db), f"file://{replica}"])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 3, err
    assert spans(replica, 0)


def test_metrics_endpoint_serves_litestream_and_lag_metrics(tmp_path, daemon):
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    make_db(db)
    port = free_port()
    cfg = tmp_path / "ls.yml"
    cfg.write_text(f"addr: 127.0.0.1:{port}\ndbs:\n  - path: {db}\n    replica:\n"
                   f"      url: file://{replica}\n")
    p = daemon(["-config", str(cfg)])
    wait_for(lambda: spans(replica, 0), what="the first upload")
    body = ""

    def scraped():
        nonlocal body
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return False
        return "sqlite_rest_replica_last_sync_timestamp_seconds" in body
    wait_for(scraped, what="/metrics")
    assert 'litestream_replica_operation_total{operation="PUT",replica_type="file"}' in body
    assert f'sqlite_rest_replica_lag_seconds{{db="{db}"}}' in body
    assert f'litestream_txid{{db="{db}"}}' in body
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 0


@pytest.mark.parametrize("args, message", [
    (["-config", "/x.yml", "db", "file:///r"], "cannot specify a replica URL and the -config"),
    (["db"], "must specify at least one replica URL"),
    (["-force-snapshot", "db", "file:///r"], "need -once"),
    (["-bogus"], "flag provided but not defined"),
    (["-config", "/nonexistent/litestream.yml"], "not found"),
    (["-log-level", "loud", "db", "file:///r"], "unknown log level"),
])
def test_usage_errors_are_clear(args, message):
    r = run(args)
    assert r.returncode != 0
    assert message in r.stderr
