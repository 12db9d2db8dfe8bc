"""The README's "Roles and row-level security" example, run as written: its permissions file
on a real server, and each curl line with alice's token, status as its comment states."""
from __future__ import annotations

import os
import shutil
import time

import apsw
import jwt

from tests.plugins.readme import block, run_curl_lines
from tests.plugins.server import start_server

SECRET = b"roles-readme-secret-0123456789abcdef"


def test_readme_roles_example_runs_as_written(tmp_path):
    assert shutil.which("curl"), "the README's examples need curl (.ci/run installs it)"
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("""
        CREATE TABLE notes (id INTEGER PRIMARY KEY, owner_id TEXT, body TEXT, secret TEXT,
                            created_at TEXT DEFAULT CURRENT_TIMESTAMP);
        CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT);
        INSERT INTO notes (id, owner_id, body, secret) VALUES (1, 'alice', 'a', 's1'),
                                                              (2, 'bob', 'b', 's2');
        INSERT INTO books VALUES (1, 'Dune');
    """)
    conn.close()
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "perm.yml").write_text(block("### Roles and row-level security", "yaml"))
    (tmp_path / "functions.yml").write_text(
        "functions:\n  my_notes:\n    sql: SELECT id, body FROM notes "
        "WHERE owner_id = request_claim('sub')\n")
    server = start_server(db, "--security-allow-table", "notes,books", "--auth-token-file",
                          tmp_path / "secret", "--permissions-file", tmp_path / "perm.yml",
                          "--functions-file", tmp_path / "functions.yml", metrics=False)
    try:
        alice = jwt.encode({"sub": "alice", "role": "authenticated",
                            "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
        env = dict(os.environ, ALICE=alice)
        ran = run_curl_lines(block("### Roles and row-level security", "bash roles"),
                             server.base_url, env)
        assert ran >= 6
        conn = apsw.Connection(str(db))
        assert conn.execute("SELECT owner_id, body FROM notes WHERE id = 2").fetchall() == \
            [("bob", "b")]  # nothing of bob's changed
        conn.close()
    finally:
        server.stop()
