"""litestream.yml loading: env expansion, Go durations, byte sizes, defaults, warnings, errors."""
from __future__ import annotations

import logging
import os
import textwrap

import pytest

from replication.config import (
    Config, ConfigError, expand, expand_env, format_duration, load_config, parse_bool,
    parse_byte_size, parse_config, parse_duration,
)

SPEC_EXAMPLE = """\
addr: ":9090"
access-key-id: ${AWS_ACCESS_KEY_ID}          # global default for all replicas
secret-access-key: ${AWS_SECRET_ACCESS_KEY}
levels: [{interval: 30s}, {interval: 5m}, {interval: 1h}]
snapshot: {interval: 24h, retention: 72h}
l0-retention: 5m
logging: {level: info, type: json}
dbs:
  - path: /data/app.db
    checkpoint-interval: 1m
    replica:
      url: s3://my-bucket/app?endpoint=fly.storage.tigris.dev&region=auto
      sync-interval: 1s
  - path: /data/other.db
    replica: {type: file, path: /backups/other}
"""


def parse(text: str, **kw) -> Config:
    return parse_config(textwrap.dedent(text), filename="litestream.yml", **kw)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Each test starts without the variables the parser reads, and every later test finds
    them as they were: load_config() itself writes AWS_* (it copies LITESTREAM_*, as
    Litestream does). A bare ``delenv(raising=False)`` of an unset variable records nothing,
    so what load_config() wrote stayed for the rest of the session: setenv first makes
    monkeypatch note the variable (unset) and remove it at teardown whoever set it."""
    for name in ("LOG_LEVEL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


# --- the spec example ----------------------------------------------------------------------------

def test_spec_example(monkeypatch, caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    with caplog.at_level(logging.WARNING, logger="replication"):
        cfg = parse(SPEC_EXAMPLE)
    assert not caplog.records  # every key of the example is known
    assert cfg.addr == ":9090"
    assert cfg.levels == [30.0, 300.0, 3600.0]
    assert (cfg.snapshot_interval, cfg.snapshot_retention) == (86400.0, 3 * 86400.0)
    assert cfg.l0_retention == 300.0
    assert (cfg.logging.level, cfg.logging.type) == ("info", "json")
    app, other = cfg.dbs
    assert app.path == "/data/app.db" and app.checkpoint_interval == 60.0
    r = app.replica
    assert r.type == "s3"
    assert r.url == "s3://my-bucket/app?endpoint=fly.storage.tigris.dev&region=auto"
    assert r.sync_interval == 1.0
    assert (r.access_key_id, r.secret_access_key) == ("AKIDEXAMPLE", "s3cr3t")  # inherited
    assert (other.path, other.replica.type, other.replica.path) == ("/data/other.db", "file", "/backups/other")
    assert other.replica.access_key_id == "AKIDEXAMPLE"   # inherited by every replica
    assert cfg.db_for_path("/data/other.db") is other
    assert cfg.db_for_path("/data/../data/app.db") is app
    assert cfg.db_for_path("/data/none.db") is None


def test_spec_example_builds_clients():
    from replication.replica_client import client_from_config

    cfg = parse(SPEC_EXAMPLE, expand_env=False)
    s3 = client_from_config(cfg.dbs[0].replica)
    assert (s3.bucket, s3.path, s3.endpoint, s3.region, s3.force_path_style) == (
        "my-bucket", "app", "https://fly.storage.tigris.dev", "auto", True)
    assert client_from_config(cfg.dbs[1].replica).path == "/backups/other"


def test_defaults():
    cfg = parse("dbs: [{path: /x.db}]")
    assert cfg.levels == [30.0, 300.0, 3600.0]
    assert (cfg.snapshot_interval, cfg.snapshot_retention) == (86400.0, 86400.0)
    assert (cfg.l0_retention, cfg.l0_retention_check_interval) == (300.0, 15.0)
    assert cfg.retention_enabled is True and cfg.verify_compaction is False
    assert (cfg.shutdown_sync_timeout, cfg.shutdown_sync_interval) == (30.0, 0.5)
    assert (cfg.heartbeat_interval, cfg.addr, cfg.exec) == (300.0, "", None)
    assert (cfg.logging.level, cfg.logging.type, cfg.logging.stderr) == ("info", "text", False)
    db = cfg.dbs[0]
    assert (db.monitor_interval, db.checkpoint_interval, db.busy_timeout) == (1.0, 60.0, 1.0)
    assert (db.min_checkpoint_page_count, db.truncate_page_n, db.max_sync_wal_bytes) == (1000, 121359, 64 << 20)
    assert db.restore_if_db_not_exists is False and db.replica is None and db.meta_path is None


def test_every_db_and_top_level_key():
    cfg = parse("""
        levels: [{interval: 10s}]
        snapshot: {interval: 1h}
        l0-retention: 0
        l0-retention-check-interval: 30s
        retention: {enabled: false}
        verify-compaction: true
        validation: {interval: 10m}
        shutdown-sync-timeout: 10s
        shutdown-sync-interval: 250ms
        heartbeat-url: https://hc.example/ping
        heartbeat-interval: 2m
        exec: "sleep 10"
        logging: {level: DEBUG, type: text, stderr: true, source: true}
        socket: {enabled: true, path: /tmp/ls.sock, permissions: 0660}
        mcp-addr: ":3001"
        sync-interval: 10s
        dbs:
          - path: sqlite:///srv/x.db
            meta-path: /srv/meta
            monitor-interval: 250ms
            checkpoint-interval: 30s
            busy-timeout: 5s
            min-checkpoint-page-count: 10
            truncate-page-n: 5000
            max-sync-wal-bytes: 16MiB
            restore-if-db-not-exists: true
            replica:
              url: s3://b/x?endpoint=http://127.0.0.1:9000
              max-sync-ltx-files: 0
              auto-recover: true
              part-size: 8MB
              concurrency: 2
              sign-payload: false
              require-content-md5: false
              skip-verify: true
              force-path-style: true
              storage-class: STANDARD
              sse-kms-key-id: key-1
    """)
    assert cfg.levels == [10.0]                      # replaces the default list
    assert cfg.snapshot_interval == 3600.0 and cfg.snapshot_retention == 86400.0
    assert cfg.l0_retention == 0.0 and cfg.l0_retention_check_interval == 30.0
    assert cfg.retention_enabled is False and cfg.verify_compaction is True
    assert cfg.validation_interval == 600.0
    assert (cfg.shutdown_sync_timeout, cfg.shutdown_sync_interval) == (10.0, 0.25)
    assert (cfg.heartbeat_url, cfg.heartbeat_interval) == ("https://hc.example/ping", 120.0)
    assert cfg.exec == "sleep 10" and cfg.mcp_addr == ":3001"
    assert (cfg.logging.level, cfg.logging.stderr, cfg.logging.source) == ("debug", True, True)
    assert (cfg.socket.enabled, cfg.socket.path, cfg.socket.permissions) == (True, "/tmp/ls.sock", 0o660)
    db = cfg.dbs[0]
    assert db.path == "/srv/x.db" and db.meta_path == "/srv/meta"
    assert (db.monitor_interval, db.checkpoint_interval, db.busy_timeout) == (0.25, 30.0, 5.0)
    assert (db.min_checkpoint_page_count, db.truncate_page_n, db.max_sync_wal_bytes) == (10, 5000, 16 << 20)
    assert db.restore_if_db_not_exists is True
    r = db.replica
    assert r.sync_interval == 10.0                    # inherited from the top level
    assert (r.max_sync_ltx_files, r.auto_recover, r.part_size, r.concurrency) == (0, True, 8_000_000, 2)
    assert (r.sign_payload, r.require_content_md5, r.skip_verify, r.force_path_style) == (False, False, True, True)
    assert (r.storage_class, r.sse_kms_key_id) == ("STANDARD", "key-1")


def test_replica_overrides_global_setting():
    cfg = parse("""
        sync-interval: 10s
        region: eu-west-1
        dbs:
          - path: /a.db
            replica: {type: s3, bucket: b, path: a, sync-interval: 2s}
    """)
    r = cfg.dbs[0].replica
    assert (r.sync_interval, r.region, r.bucket) == (2.0, "eu-west-1", "b")


def test_db_path_normalisation(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    cfg = parse("""
        dbs:
          - path: rel/x.db
          - path: ~/y.db
          - path: sqlite3://z.db
          - path: ./a/../w.db
            replica: {path: ~/backup}
    """)
    assert [d.path for d in cfg.dbs] == [f"{tmp_path}/rel/x.db", "/home/someone/y.db",
                                         f"{tmp_path}/z.db", f"{tmp_path}/w.db"]
    assert cfg.dbs[3].replica.path == "/home/someone/backup"
    assert cfg.db_for_path("rel/x.db") is cfg.dbs[0]


def test_single_replicas_list_is_accepted():
    cfg = parse("dbs: [{path: /a.db, replicas: [{url: 'file:///b'}]}]")
    assert cfg.dbs[0].replica.url == "file:///b" and cfg.dbs[0].replica.type == "file"


# --- env expansion ------------------------------------------------------------------------------

def test_env_expansion(monkeypatch):
    monkeypatch.setenv("BUCKET", "prod-bkt")
    monkeypatch.setenv("DBDIR", "/var/lib/app")
    cfg = parse("""
        dbs:
          - path: ${DBDIR}/app.db
            meta-path: /tmp/meta-$PID
            replica: {url: "s3://$BUCKET/db-${UNSET_VAR_XYZ}x"}
    """)
    db = cfg.dbs[0]
    assert db.path == "/var/lib/app/app.db"
    assert db.meta_path == f"/tmp/meta-{os.getpid()}"
    assert db.replica.url == "s3://prod-bkt/db-x"


def test_env_expansion_disabled(monkeypatch):
    monkeypatch.setenv("DBDIR", "/var/lib/app")
    cfg = parse("dbs: [{path: '/x/${DBDIR}/app.db'}]", expand_env=False)
    assert cfg.dbs[0].path == "/x/${DBDIR}/app.db"


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("$A-${A}", "va-va"),
    ("a$", "a$"),                  # trailing $ stays
    ("$ x", "$ x"),                # $ before a non-name char stays
    ("$%x", "$%x"),
    ("$$", ""),                    # special shell names expand to ""
    ("$1x", "x"),
    ("$*x", "x"),
    ("${1}x", "x"),
    ("${}x", "x"),                 # bad syntax, eaten
    ("x${A", "xA"),                # unterminated ${ is swallowed
    ("${A:-def}", ""),             # no shell defaults: the name is "A:-def"
    ("$A_B1.c", "vab1.c"),
    ("pa$$word", "paword"),        # why secrets with $ get mangled
])
def test_go_os_expand_quirks(monkeypatch, text, expected):
    monkeypatch.setenv("A", "va")
    monkeypatch.setenv("A_B1", "vab1")
    monkeypatch.delenv("1", raising=False)
    assert expand_env(text) == expected


def test_expand_mapping_sees_names():
    seen = []
    expand("$a ${b.c} $$ $9", lambda n: seen.append(n) or "")
    assert seen == ["a", "b.c", "$", "9"]


# --- scalars ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0), ("1s", 1.0), ("500ms", 0.5), ("1.5s", 1.5), ("1h30m", 5400.0), ("2h45m10s", 9910.0),
    ("-1m", -60.0), ("+5s", 5.0), ("100us", 1e-4), ("100µs", 1e-4), ("10ns", 1e-8), (".5s", 0.5),
    ("1.s", 1.0), ("24h", 86400.0),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "s", "1.5", "1h x", "h1", "--1s", "1e3s", "."])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(x) for x in (0, 0.5, 1.5, 60, 5400, 86400, 0.001)] == [
        "0s", "500ms", "1.5s", "1m0s", "1h30m0s", "24h0m0s", "1ms"]


@pytest.mark.parametrize("text, size", [
    ("5MB", 5_000_000), ("5MiB", 5 * 1024 * 1024), ("5mib", 5 * 1024 * 1024), ("1.5 GB", 1_500_000_000),
    ("1,024", 1024), ("42", 42), ("10k", 10_000), ("10Ki", 10_240), ("1 B", 1), (7, 7), ("2TiB", 2 << 40),
])
def test_byte_sizes(text, size):
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["5XB", "MB", "abc", "-5MB", True, 1.5])
def test_bad_byte_sizes(text):
    with pytest.raises(ValueError):
        parse_byte_size(text)


def test_go_bools():
    assert [parse_bool(v) for v in ("1", "t", "TRUE", "True", "0", "f", "FALSE", "false")] == [
        True] * 4 + [False] * 4
    with pytest.raises(ValueError):
        parse_bool("yes")


# --- warnings and errors --------------------------------------------------------------------------

def test_unknown_keys_are_warned_with_file_line_and_key(caplog):
    text = """\
        addr: ":9090"
        adr: ":9091"
        dbs:
          - path: /a.db
            checkpoint-intervall: 1m
            replica:
              type: file
              path: /b
              sync-intervall: 5s
              retention: 24h
        logging: {lvl: debug}
    """
    with caplog.at_level(logging.WARNING, logger="replication.config"):
        cfg = parse(text)
    messages = [r.getMessage() for r in caplog.records]
    assert "litestream.yml:2: adr: unknown key, ignored" in messages
    assert "litestream.yml:5: dbs[0].checkpoint-intervall: unknown key, ignored" in messages
    assert "litestream.yml:9: dbs[0].replica.sync-intervall: unknown key, ignored" in messages
    assert "litestream.yml:10: dbs[0].replica.retention: has no effect in Litestream 0.5, ignored" in messages
    assert "litestream.yml:11: logging.lvl: unknown key, ignored" in messages
    assert cfg.dbs[0].replica.sync_interval == 1.0 and cfg.addr == ":9090"  # not fatal


def test_malformed_yaml_names_file_and_line():
    with pytest.raises(ConfigError) as e:
        parse("dbs:\n  - path: /a.db\n   replica: [\n")
    assert str(e.value).startswith("litestream.yml:")
    assert "malformed YAML" in str(e.value)


@pytest.mark.parametrize("text, key, value", [
    ("dbs: [{path: /a.db, replica: {path: /b, sync-interval: 1d}}]", "dbs[0].replica.sync-interval", "1d"),
    ("dbs: [{path: /a.db, replica: {path: /b, sync-interval: 0s}}]", "dbs[0].replica.sync-interval", "0s"),
    ("dbs: [{path: /a.db, checkpoint-interval: soon}]", "dbs[0].checkpoint-interval", "soon"),
    ("dbs: [{path: /a.db, max-sync-wal-bytes: 12XB}]", "dbs[0].max-sync-wal-bytes", "12XB"),
    ("dbs: [{path: /a.db, min-checkpoint-page-count: many}]", "dbs[0].min-checkpoint-page-count", "many"),
    ("dbs: [{path: /a.db, restore-if-db-not-exists: maybe}]", "dbs[0].restore-if-db-not-exists", "maybe"),
    ("l0-retention: 5 minutes", "l0-retention", "5 minutes"),
    ("levels: [{interval: 0s}]", "levels[0].interval", "0s"),
    ("snapshot: {interval: 1w}", "snapshot.interval", "1w"),
    ("logging: {level: loud}", "logging.level", "loud"),
    ("sync-interval: fast\ndbs: [{path: /a.db}]", "sync-interval", "fast"),
    ("dbs: [{path: /a.db, replica: {url: 's3://b/x', part-size: huge}}]", "dbs[0].replica.part-size", "huge"),
])
def test_bad_values_name_file_key_and_value(text, key, value):
    with pytest.raises(ConfigError) as e:
        parse(text)
    message = str(e.value)
    assert message.startswith("litestream.yml:1:") or message.startswith("litestream.yml:2:")
    assert f" {key}: " in message
    assert value in message


def test_negative_l0_retention():
    with pytest.raises(ConfigError, match="l0-retention"):
        parse("l0-retention: -1m")


def test_replica_and_replicas_are_exclusive():
    with pytest.raises(ConfigError, match=r"dbs\[0\]\.replicas: cannot use both"):
        parse("dbs: [{path: /a.db, replica: {path: /b}, replicas: [{path: /c}]}]")


def test_more_than_one_replica_is_an_error():
    with pytest.raises(ConfigError, match="exactly one") as e:
        parse("dbs: [{path: /a.db, replicas: [{path: /b}, {path: /c}]}]")
    assert "dbs[0].replicas" in str(e.value)


def test_age_is_rejected():
    with pytest.raises(ConfigError, match=r"dbs\[0\]\.replica\.age: age encryption is not supported"):
        parse("dbs: [{path: /a.db, replica: {path: /b, age: {identities: [x], recipients: [y]}}}]")


def test_url_cannot_be_combined_with_path():
    with pytest.raises(ConfigError, match="cannot combine"):
        parse("dbs: [{path: /a.db, replica: {url: 's3://b/x', path: y}}]")


def test_path_must_not_be_a_url():
    with pytest.raises(ConfigError, match="not a URL"):
        parse("dbs: [{path: /a.db, replica: {type: file, path: 's3://b/x'}}]")


def test_too_many_levels():
    with pytest.raises(ConfigError, match="at most 8"):
        parse("levels: [" + ", ".join(["{interval: 1s}"] * 9) + "]")


def test_db_needs_path_or_dir():
    with pytest.raises(ConfigError, match=r"dbs\[0\]: exactly one of 'path' or 'dir'"):
        parse("dbs: [{checkpoint-interval: 1m}]")
    with pytest.raises(ConfigError, match="pattern"):
        parse("dbs: [{dir: /data}]")


def test_per_db_snapshot_settings_must_agree():
    cfg = parse("dbs: [{path: /a.db, snapshot: {interval: 1h}}, {path: /b.db, snapshot: {interval: 1h}}]")
    assert cfg.snapshot_interval == 3600.0
    with pytest.raises(ConfigError, match="differs"):
        parse("dbs: [{path: /a.db, snapshot: {interval: 1h}}, {path: /b.db, snapshot: {interval: 2h}}]")


def test_bare_integer_duration_is_nanoseconds_like_yaml_v2():
    cfg = parse("l0-retention: 0\nshutdown-sync-timeout: 1000000000")
    assert cfg.l0_retention == 0.0 and cfg.shutdown_sync_timeout == 1.0


def test_log_level_env_overrides(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    assert parse("logging: {level: warn}").logging.level == "debug"


# --- load_config ----------------------------------------------------------------------------------

def test_load_config_reads_file_and_copies_litestream_keys(tmp_path, monkeypatch):
    path = tmp_path / "litestream.yml"
    path.write_text("dbs:\n  - path: /a.db\n    replica: {url: 's3://b/x'}\n")
    monkeypatch.setenv("LITESTREAM_ACCESS_KEY_ID", "lk")
    monkeypatch.setenv("LITESTREAM_SECRET_ACCESS_KEY", "ls")
    cfg = load_config(path)
    assert cfg.filename == str(path) and cfg.dbs[0].replica.url == "s3://b/x"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("lk", "ls")
    monkeypatch.setenv("LITESTREAM_ACCESS_KEY_ID", "other")
    load_config(path)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "lk"  # AWS_* already set: not overwritten


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(tmp_path / "nope.yml")
    assert "LITESTREAM_CONFIG" in e.value.hint


def test_error_names_the_real_file(tmp_path):
    path = tmp_path / "ls.yml"
    path.write_text("dbs:\n  - path: /a.db\n    busy-timeout: forever\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:3: dbs[0].busy-timeout: invalid value 'forever'")


def test_fixture_config_parses(tmp_path):
    from tests.plugins.litestream import FIXTURE_0517

    text = (FIXTURE_0517 / "litestream.yml").read_text()
    cfg = parse_config(text, filename="fixture.yml")
    assert cfg.levels == [3.0, 9.0] and cfg.snapshot_interval == 12.0 and cfg.l0_retention == 3600.0
    db = cfg.dbs[0]
    assert (db.checkpoint_interval, db.min_checkpoint_page_count) == (4.0, 8)
    assert (db.replica.type, db.replica.path) == ("file", "/ABSOLUTE/PATH/replica")


def test_replica_type_is_checked():
    with pytest.raises(ConfigError, match=r"dbs\[0\]\.replica\.type: invalid value 'ftp'") as e:
        parse("dbs: [{path: /a.db, replica: {type: ftp, path: /x}}]")
    assert "s3" in e.value.hint
    with pytest.raises(ConfigError, match=r"dbs\[0\]\.replica\.bucket: required"):
        parse("dbs: [{path: /a.db, replica: {type: s3, path: x}}]")
    cfg = parse("dbs: [{path: /a.db, replica: {type: gs, bucket: b, path: x}}]")
    assert cfg.dbs[0].replica.type == "gs"  # parsed; building a client says it is not implemented
    with pytest.raises(ConfigError, match=r"dbs\[0\]\.replica\.url: invalid value 'ftp://h/x': unknown scheme"):
        parse("dbs: [{path: /a.db, replica: {url: 'ftp://h/x'}}]")
