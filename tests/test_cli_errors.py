"""The CLI never shows a traceback: every failure is one line with the cause and a hint,
exit non-zero, nothing lost (issue #10). And every command logs the same way."""
from __future__ import annotations

import os
import subprocess
import sys

import apsw

from tests.test_cli import run_cli


def assert_fails_in_one_line(proc, *fragments):
    """Exit non-zero, no traceback, the cause on the last line (log lines may come first)."""
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
    proc = run_cli(["restore", "-o", not_a_dir / "out.db", f"file://{replica}"])
    assert_fails_in_one_line(proc, "cannot write", "out.db")


def test_an_unset_environment_variable_in_the_config_is_named(tmp_path):
    """`${AWS_ACCESS_KEY_ID}` unset used to read "invalid value None: expected a string"."""
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {tmp_path}/app.db\n    replica:\n"
                      f"      url: s3://bucket/app\n"
                      f"      access-key-id: ${{SQLITE_REST_TEST_UNSET_KEY}}\n")
    proc = run_cli(["serve", "--db-dsn", tmp_path / "app.db", "--auth-disabled",
                    "--http-addr", "127.0.0.1:0", "--metrics-addr", "",
                    "--replication-enabled", "--replication-config", config])
    last = assert_fails_in_one_line(proc, "${SQLITE_REST_TEST_UNSET_KEY} is not set",
                                 "access-key-id")
    assert "None" not in last


#: Values a user may type by mistake, for any flag or environment variable.
_BAD_VALUES = ("abc", "-1", "0", "99999999999999999999", "", " ", "1.5", "true", ":",
               "/nonexistent/dir/x", "{path}", "${UNSET_VAR}", "\u00e9\u00e8", "127.0.0.1:99999")
_SERVE_FLAGS = ("--db-dsn", "--log-level", "--http-addr", "--http-socket", "--auth-token-file",
                "--auth-rsa-public-key", "--security-allow-table", "--metrics-addr",
                "--pprof-addr", "--max-rows", "--max-body-bytes", "--primary-url", "--workers",
                "--threads", "--server", "--replication-config")
_COMMANDS = (("restore", "-o"), ("restore", "-txid"), ("restore", "-timestamp"),
             ("replicate", "-config"), ("ltx", ""), ("migrate", "--dir"), ("restore", "-if-db-not-exists"))


def test_fuzzed_command_lines_never_show_a_traceback(tmp_path):
    """Random flags, environment values and paths: whatever fails, fails in one line."""
    import random
    import socket

    rng = random.Random(10)
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("not yaml: [")
    (tmp_path / "broken-link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)  # not UTF-8, not SQLite, not YAML
    paths = (tmp_path / "a-dir", tmp_path / "a-file", tmp_path / "missing.db",
             tmp_path / "a-file" / "below-a-file.db", tmp_path / "broken-link",
             tmp_path / "binary")
    with socket.socket() as busy:  # serve must never get as far as listening
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        for _ in range(int(os.environ.get("SQLITEREST_FUZZ_RUNS", "40"))):
            values = _BAD_VALUES + tuple(map(str, paths))
            if rng.random() < 0.6:
                args = ["serve", "--db-dsn", str(rng.choice(paths)), "--http-addr", addr,
                        "--auth-disabled"]
                for flag in rng.sample(_SERVE_FLAGS, rng.randint(1, 3)):
                    args += [flag, rng.choice(values)]
                env = {f"SQLITEREST_{rng.choice(_SERVE_FLAGS)[2:].upper().replace('-', '_')}":
                       rng.choice(values)}
            else:
                command, flag = rng.choice(_COMMANDS)
                args = [command] + ([flag, rng.choice(values)] if flag else []) + \
                    [rng.choice(values)]
                env = {}
            proc = run_cli(args, env=env, cwd=tmp_path)  # relative paths land there
            assert "Traceback" not in proc.stderr + proc.stdout, (args, env, proc.stderr)
            assert proc.returncode != 0, (args, env, proc.stdout)
            assert proc.stderr.strip(), (args, env)


def test_litestream_commands_log_like_serve(tmp_path):
    """`sqlite-rest replicate` logged Litestream's text lines while `serve` logs JSON; both
    now honour --log-level/--log-devel (and their SQLITEREST_* mirrors) the same way."""
    def fresh_db(name):  # a first sync logs its snapshot at info level
        db = tmp_path / name
        conn = apsw.Connection(str(db))
        conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(x)")
        conn.close()
        return db

    proc = run_cli(["replicate", "-once", fresh_db("1.db"), f"file://{tmp_path}/r1"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith('{"ts":') and '"logger":"replication.db"' in proc.stderr
    proc = run_cli(["--log-devel", "replicate", "-once", fresh_db("2.db"), f"file://{tmp_path}/r2"])
    assert proc.returncode == 0 and "INFO    replication.db" in proc.stderr, proc.stderr
    proc = run_cli(["replicate", "-once", fresh_db("3.db"), f"file://{tmp_path}/r3"],
                   env={"SQLITEREST_LOG_LEVEL": "-2"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_process_counts_are_bounded_and_long_values_are_not_echoed_whole():
    """A huge --workers crashed the granian child with OverflowError (a traceback); a
    5000-digit one was echoed twice in a 10 KB line."""
    for value in ("99999999999999999999999", "5000", "9" * 5000):
        for args, env in ((["--workers", value], {}), ([], {"SQLITEREST_WORKERS": value})):
            proc = run_cli(["serve", "--db-dsn", "x.db", "--auth-disabled", *args], env=env)
            last = assert_fails_in_one_line(proc, "is more than 1024")
            assert len(last) < 300, last
