"""The README's "Roles and row-level security" example, run as written: its permissions file
on a real server, and each curl line with alice's token, status as its comment states."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import apsw
import jwt

from tests.plugins.server import start_server

README = Path(__file__).resolve().parents[1] / "README.md"
SECRET = b"roles-readme-secret-0123456789abcdef"


def _block(after: str, fence: str) -> str:
    text = README.read_text()
    start = text.index(after)
    m = re.compile(rf"^```{fence}\n(.*?)^```", re.S | re.M).search(text, start)
    assert m, f"README: no ```{fence} block after {after!r}"
    return m.group(1)


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
    (tmp_path / "perm.yml").write_text(_block("### Roles and row-level security", "yaml"))
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
        host = server.base_url.removeprefix("http://")
        script = _block("### Roles and row-level security", "bash roles")
        commands = re.split(r"(?<!\\)\n", script.strip())
        ran = 0
        for command in commands:
            if not command.startswith("curl"):
                continue
            comment = command.rsplit("#", 1)[1] if " # " in command else ""
            run = subprocess.run(
                ["bash", "-c", command.replace("localhost:8080", host).replace(
                    "curl ", "curl -s -o /dev/null -w '%{http_code}' ", 1)],
                capture_output=True, text=True, timeout=30, env=env)
            status = int(run.stdout)
            m = re.match(r"\s*(\d{3})\b", comment)
            if m:
                assert status == int(m.group(1)), (command, status)
            else:
                assert 200 <= status < 300, (command, status)
            ran += 1
        assert ran >= 6
        conn = apsw.Connection(str(db))
        assert conn.execute("SELECT owner_id, body FROM notes WHERE id = 2").fetchall() == \
            [("bob", "b")]  # nothing of bob's changed
        conn.close()
    finally:
        server.stop()
