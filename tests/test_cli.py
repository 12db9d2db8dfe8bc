"""`sqlite-rest` command line: flags, environment mirrors, --help, one-line startup errors."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import apsw
import pytest

from sqlite_rest import cli
from sqlite_rest.cli import COMMON_FLAGS, SERVE_FLAGS, parse
from tests.plugins.server import free_port

GO_SERVE_DEFAULTS = {
    # the Go server's flag names and defaults (b4fun/sqlite-rest main.go, server.go, ...)
    "http_addr": ":8080",
    "metrics_addr": ":8081",
    "pprof_addr": "",
    "auth_token_file": None,
    "auth_rsa_public_key": None,
    "security_allow_table": (),
}


def test_serve_defaults_match_the_go_server():
    command, common, flags = parse(["serve"], {})
    assert command == "serve"
    assert common == {"db_dsn": None, "log_level": 5, "log_devel": False}
    for key, value in GO_SERVE_DEFAULTS.items():
        assert flags[key] == value, key
    assert flags["auth_disabled"] is False
    assert flags["replication_enabled"] is False
    assert flags["server"] == "granian"


def test_flags_are_parsed():
    _, common, flags = parse([
        "serve", "--db-dsn", "x.db?_busy_timeout=100", "--http-addr", "127.0.0.1:9000",
        "--auth-token-file", "/k", "--security-allow-table", "a,b", "--security-allow-table", "c",
        "--metrics-addr", "", "--pprof-addr", ":6060", "--log-level", "8", "--log-devel",
        "--workers", "3", "--threads", "4", "--replication-enabled",
        "--replication-config", "ls.yml"], {})
    assert common == {"db_dsn": "x.db?_busy_timeout=100", "log_level": 8, "log_devel": True}
    assert flags["http_addr"] == "127.0.0.1:9000"
    assert flags["auth_token_file"] == "/k"
    assert flags["security_allow_table"] == ["a", "b", "c"]
    assert flags["metrics_addr"] == ""
    assert flags["pprof_addr"] == ":6060"
    assert (flags["workers"], flags["threads"]) == (3, 4)
    assert flags["replication_enabled"] is True
    assert flags["replication_config"] == "ls.yml"


def test_global_flags_before_the_subcommand_like_cobra_persistent_flags():
    _, common, _ = parse(["--db-dsn", "a.db", "--log-level", "-1", "serve"], {})
    assert common["db_dsn"] == "a.db" and common["log_level"] == -1


@pytest.mark.parametrize("flag", COMMON_FLAGS + SERVE_FLAGS, ids=lambda f: f.name)
def test_every_serve_flag_has_an_env_mirror(flag):
    samples = {"log-level": ("7", 7), "workers": ("3", 3), "threads": ("2", 2),
               "max-rows": ("50", 50), "max-body-bytes": ("1024", 1024),
               "security-allow-table": ("a,b", ["a", "b"]),
               "replica-max-lag": ("1.5", 1.5), "replica-wait-timeout": ("0.5", 0.5)}
    raw, expected = samples.get(flag.name, ("true", True) if flag.boolean else ("v", "v"))
    env = {flag.env: raw}
    assert flag.env == "SQLITEREST_" + flag.name.upper().replace("-", "_")
    _, common, flags = parse(["serve"], env)
    assert {**common, **flags}[flag.dest] == expected


def test_flag_wins_over_env():
    env = {"SQLITEREST_DB_DSN": "env.db", "SQLITEREST_HTTP_ADDR": ":1111",
           "SQLITEREST_SECURITY_ALLOW_TABLE": "envtable", "SQLITEREST_LOG_DEVEL": "true",
           "SQLITEREST_REPLICATION_ENABLED": "true", "SQLITEREST_WORKERS": "5"}
    _, common, flags = parse(["serve", "--db-dsn", "flag.db", "--http-addr", ":2222",
                              "--security-allow-table", "flagtable", "--log-devel=false",
                              "--replication-enabled=false", "--workers", "1"], env)
    assert common["db_dsn"] == "flag.db"
    assert common["log_devel"] is False
    assert flags["http_addr"] == ":2222"
    assert flags["security_allow_table"] == ["flagtable"]  # not appended to the env list
    assert flags["replication_enabled"] is False
    assert flags["workers"] == 1
    # and without flags the env applies
    _, common, flags = parse(["serve"], env)
    assert (common["db_dsn"], flags["http_addr"], flags["workers"]) == ("env.db", ":1111", 5)
    assert common["log_devel"] is True and flags["replication_enabled"] is True


def test_empty_env_metrics_addr_disables_metrics():
    _, _, flags = parse(["serve"], {"SQLITEREST_METRICS_ADDR": ""})
    assert flags["metrics_addr"] == ""


def test_help_lists_every_flag_with_its_env_mirror():
    out = subprocess.run([sys.executable, "-m", "sqlite_rest.cli", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in COMMON_FLAGS + SERVE_FLAGS:
        assert f"--{flag.name}" in out
        assert f"Env: {flag.env}." in " ".join(out.split())
    assert "__false__" not in out
    top = subprocess.run([sys.executable, "-m", "sqlite_rest.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("serve", "migrate", "restore", "ltx", "replicate"):
        assert command in top


# -- startup errors: one line on stderr, non-zero exit -------------------------------------

def run_cli(args, env=None, timeout=60, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sqlite_rest.cli", *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "data.db"
    apsw.Connection(str(path)).execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    return path


def serve_args(db, *extra):
    return ["serve", "--db-dsn", str(db), "--http-addr", f"127.0.0.1:{free_port()}",
            "--metrics-addr", "", *extra]


def test_missing_db_dsn():
    assert_one_line_error(run_cli(["serve", "--auth-disabled"]), "--db-dsn is required")


def test_missing_auth_flag_without_auth_disabled(db):
    assert_one_line_error(run_cli(serve_args(db)), "authentication is required",
                          "--auth-disabled")


def test_bad_flag_value():
    assert_one_line_error(run_cli(["serve", "--workers", "zero"]), "--workers")
    assert_one_line_error(run_cli(["serve", "--log-level", "500"]), "--log-level")
    assert_one_line_error(run_cli(["serve", "--log-devel=maybe"]), "--log-devel")


def test_bad_env_value(db):
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled"),
                                  env={"SQLITEREST_WORKERS": "many"}), "SQLITEREST_WORKERS")


def test_bad_http_addr(db):
    args = ["serve", "--db-dsn", str(db), "--auth-disabled", "--http-addr", "nonsense"]
    assert_one_line_error(run_cli(args), "--http-addr")


def test_missing_db_directory(tmp_path):
    args = serve_args(tmp_path / "nope" / "data.db", "--auth-disabled")
    assert_one_line_error(run_cli(args), "does not exist")


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    assert_one_line_error(run_cli(serve_args(path, "--auth-disabled")), "cannot open database")


def test_unreadable_key_file(db, tmp_path):
    assert_one_line_error(run_cli(serve_args(db, "--auth-token-file", str(tmp_path / "missing"))),
                          "--auth-token-file", "missing or unreadable")


def test_bad_rsa_key_file(db, tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("not a pem")
    assert_one_line_error(run_cli(serve_args(db, "--auth-rsa-public-key", str(key))), "auth key")


def test_busy_http_port(db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["serve", "--db-dsn", str(db), "--auth-disabled", "--metrics-addr", "",
                          "--http-addr", f"127.0.0.1:{port}"])
    assert_one_line_error(result, "--http-addr", str(port), "cannot be bound")


def test_busy_metrics_port(db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["serve", "--db-dsn", str(db), "--auth-disabled",
                          "--http-addr", f"127.0.0.1:{free_port()}",
                          "--metrics-addr", f"127.0.0.1:{port}"])
    assert_one_line_error(result, "--metrics-addr", "cannot be bound")


def test_replication_flags_are_validated(db, tmp_path):
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled", "--replication-enabled")),
                          "--replication-config")
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled", "--replication-enabled",
                                             "--replication-config", str(tmp_path / "no.yml"))),
                          "missing or unreadable")
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled"),
                                  env={"SQLITEREST_REPLICATION_CONFIG": str(tmp_path / "x.yml")}),
                          "--replication-enabled")
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled", "--replication-force-restore")),
                          "--replication-enabled")
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled", "--replication-enabled",
                                             "--replication-force-restore",
                                             "--replication-reset-replica")), "exclude each other")


def test_replication_config_must_name_the_database(db, tmp_path):
    other = tmp_path / "other.yml"
    other.write_text(f"dbs:\n  - path: {tmp_path}/else.db\n    replica:\n      url: file://{tmp_path}/r\n")
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled", "--replication-enabled",
                                             "--replication-config", str(other))),
                          "no entry has path")
    broken = tmp_path / "broken.yml"
    broken.write_text("dbs: [\n")
    assert_one_line_error(run_cli(serve_args(db, "--auth-disabled"),
                                  env={"SQLITEREST_REPLICATION_ENABLED": "true",
                                       "SQLITEREST_REPLICATION_CONFIG": str(broken)}),
                          str(broken))


def test_passthrough_to_litestream_commands():
    result = run_cli(["restore", "-h"])
    assert "restore" in (result.stdout + result.stderr).lower()


def test_no_command_prints_help():
    result = run_cli([])
    assert result.returncode == 2
    assert "serve" in result.stderr


def test_main_returns_codes_in_process(db, capsys):
    assert cli.main(["serve", "--db-dsn", str(db)]) == 1
    assert "authentication is required" in capsys.readouterr().err
