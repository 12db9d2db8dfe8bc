"""`python -m replication restore|ltx`: Litestream's flags, outputs and exit codes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replication import ltx

from tests.plugins.litestream import FIXTURE_0517 as FIXTURE
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
LATEST_SHA = EXPECTED["restore_latest"]["file_sha256"]


def ours(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replication", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("cli") / "replica"
    shutil.copytree(FIXTURE / "replica", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
        if p.suffix == ".ltx":
            ts = ltx.Header.unmarshal(p.read_bytes()[:ltx.HEADER_SIZE]).timestamp
            os.utime(p, ns=(ts * 1_000_000, ts * 1_000_000))
    return dst


@pytest.fixture()
def url(replica) -> str:
    return f"file://{replica}"


def theirs(binary, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=env)


# --- restore -------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["single", "double", "equals"])
def test_restore_latest_flag_spellings(url, tmp_path, style):
    out = tmp_path / "out.db"
    flag = {"single": ["-o", out], "double": ["--o", out], "equals": [f"-o={out}"]}[style]
    proc = ours("restore", *flag, url)
    assert proc.returncode == 0, proc.stderr
    assert sha256(out) == LATEST_SHA


def test_restore_txid_and_timestamp(url, tmp_path):
    txid = "000000000000000c"
    proc = ours("restore", "-txid", txid, "-o", tmp_path / "t.db", url)
    assert proc.returncode == 0, proc.stderr
    assert sha256(tmp_path / "t.db") == EXPECTED["restore_by_txid"][txid]["file_sha256"]
    ts = sorted(k for k, v in EXPECTED["restore_by_timestamp"].items() if "file_sha256" in v)[5]
    proc = ours("restore", "--timestamp", ts, "-o", tmp_path / "ts.db", url)
    assert proc.returncode == 0, proc.stderr
    assert sha256(tmp_path / "ts.db") == EXPECTED["restore_by_timestamp"][ts]["file_sha256"]


def test_restore_json_summary_and_integrity_check(url, tmp_path):
    proc = ours("restore", "-json", "-integrity-check", "full", "-o", tmp_path / "j.db", url)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["db_path"] == str(tmp_path / "j.db") and doc["replica"] == "file"
    assert doc["txid"] == "0000000000000019" and doc["integrity_check"] == "full"


@pytest.mark.parametrize("extra", [[], ["-txid", "0000000000000007"],
                                   ["-timestamp", "2026-11-21T16:33:20Z"]])
def test_dry_run_matches_litestream(url, tmp_path, litestream_bin, litestream_env, extra):
    target = tmp_path / "plan.db"
    for as_json in (True, False):
        flags = ["-dry-run"] + (["-json"] if as_json else []) + extra + ["-o", target, url]
        mine, real = ours("restore", *flags), theirs(litestream_bin, litestream_env, "restore",
                                                       *flags)
        assert mine.returncode == real.returncode == 0, mine.stderr + real.stderr
        if as_json:
            assert json.loads(mine.stdout) == json.loads(real.stdout)
        else:
            assert mine.stdout == real.stdout
    assert not target.exists()


def test_restore_from_config_by_db_path(replica, tmp_path, monkeypatch):
    db = tmp_path / "app.db"
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replica:\n      type: file\n"
                      f"      path: ${{REPLICA_DIR}}\n")
    env = dict(os.environ, REPLICA_DIR=str(replica))
    proc = ours("restore", "-config", config, db, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sha256(db) == LATEST_SHA  # -o defaults to the DB path
    env["LITESTREAM_CONFIG"] = str(config)
    proc = ours("ltx", "-level", "9", db, env=env)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 5, proc.stderr
    proc = ours("restore", "-no-expand-env", "-o", tmp_path / "x.db", db, env=env)
    assert proc.returncode == 1  # ${REPLICA_DIR} left unexpanded: no such replica
    proc = ours("restore", "-o", tmp_path / "y.db", tmp_path / "unknown.db", env=env)
    assert proc.returncode == 1 and "database not found in config" in proc.stderr


# --- refusals: exit 1, one `error:` line, nothing written ----------------------------------

def _assert_error(proc, fragment: str):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


@pytest.mark.parametrize("args, fragment", [
    (["-txid", "12"], 'invalid value "12" for flag -txid'),
    (["-txid", "0000000000000001", "-timestamp", "2026-11-21T16:33:20Z"], "cannot specify both"),
    (["-timestamp", "yesterday"], "invalid -timestamp"),
    (["-timestamp", "2030-01-01T00:00:00Z"], "timestamp does not exist"),
    (["-integrity-check", "sometimes"], "invalid -integrity-check value"),
    (["-bogus"], "flag provided but not defined: -bogus"),
    (["-txid", "0000000000001000"], "no matching backup files available"),
])
def test_bad_flags(url, tmp_path, args, fragment):
    out = tmp_path / "out.db"
    _assert_error(ours("restore", *args, "-o", out, url), fragment)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_arguments(url, tmp_path):
    _assert_error(ours("restore", "-o", tmp_path / "o.db"), "database path or replica URL required")
    _assert_error(ours("restore", url), "-o is required")
    _assert_error(ours("restore", "-o", tmp_path / "o.db", url, "extra"), "too many arguments")


def test_unknown_url_scheme(tmp_path):
    _assert_error(ours("restore", "-o", tmp_path / "o.db", "foo://bucket/db"), "foo")
    _assert_error(ours("ltx", "foo://bucket/db"), "foo")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(url, tmp_path):
    out = tmp_path / "out.db"
    out.write_bytes(b"keep me")
    _assert_error(ours("restore", "-o", out, url), "already exists")
    assert out.read_bytes() == b"keep me"
    proc = ours("restore", "-if-db-not-exists", "-o", out, url)
    assert proc.returncode == 0 and out.read_bytes() == b"keep me"
    (tmp_path / "out.db-wal").write_bytes(b"stale wal")
    proc = ours("restore", "-force", "-o", out, url)
    assert proc.returncode == 0, proc.stderr
    assert sha256(out) == LATEST_SHA and not (tmp_path / "out.db-wal").exists()


def test_unwritable_output_directory(url, tmp_path):
    _assert_error(ours("restore", "-o", tmp_path / "missing" / "o.db", url), "cannot write")


def test_follow_mode_is_refused_clearly(url, tmp_path):
    _assert_error(ours("restore", "-f", "-o", tmp_path / "o.db", url), "follow mode")
    assert list(tmp_path.iterdir()) == []


def test_empty_replica(tmp_path):
    empty = f"file://{tmp_path / 'empty'}"
    _assert_error(ours("restore", "-o", tmp_path / "o.db", empty), "no matching backup files")
    proc = ours("restore", "-if-replica-exists", "-o", tmp_path / "o.db", empty)
    assert proc.returncode == 0 and not (tmp_path / "o.db").exists()


def test_corrupt_replica_file(replica, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(replica, bad)
    victim = bad / "ltx" / "9" / ltx.format_filename(1, 0x19)
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = tmp_path / "o.db"
    _assert_error(ours("restore", "-o", out, f"file://{bad}"),
                  "9/0000000000000001-0000000000000019.ltx: file checksum mismatch")
    assert not out.exists() and not Path(f"{out}.tmp").exists()


# --- ltx -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [[], ["-level", "all"], ["--level=9"], ["-level", "1", "-json"],
                                   ["-json", "-level", "all"]])
def test_ltx_listing_matches_litestream(url, litestream_bin, litestream_env, flags):
    mine, real = ours("ltx", *flags, url), theirs(litestream_bin, litestream_env, "ltx", *flags, url)
    assert mine.returncode == real.returncode == 0, mine.stderr + real.stderr
    assert mine.stdout == real.stdout


def test_ltx_json_matches_fixture_listing(url):
    proc = ours("wal", "-json", "-level", "all", url)  # `wal`: Litestream's deprecated alias
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == EXPECTED["ltx_listing"]


def test_ltx_bad_level(url):
    _assert_error(ours("ltx", "-level", "10", url), "level must be between 0 and 9")


def test_unknown_command():
    proc = ours("frobnicate")
    assert proc.returncode == 1 and "unknown command" in proc.stderr
