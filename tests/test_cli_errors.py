"""The CLI never shows a traceback: every failure is one line with the cause and a hint,
exit non-zero, nothing lost (issue #10)."""
from __future__ import annotations

import os
import subprocess
import sys

import apsw


def run_cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sqlite_rest.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=full_env)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last
    return last


def replica_of_one_row(tmp_path):
    db = tmp_path / "src.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    conn.close()
    replica = tmp_path / "replica"
    proc = subprocess.run([sys.executable, "-m", "replication", "replicate", "-once", str(db),
                           f"file://{replica}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return replica


def test_restore_into_an_unwritable_place_names_the_cause(tmp_path):
    """The cleanup's own failure used to hide the message (a traceback from os.remove)."""
    replica = replica_of_one_row(tmp_path)
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    proc = run_cli("restore", "-o", not_a_dir / "out.db", f"file://{replica}")
    assert_one_line_error(proc, "cannot write", "out.db")
