"""Replicas written by Litestream v0.3 (#12 part 1): restored as the real Litestream 0.5.17
restores them, byte for byte, on file:// and S3; picked up by `serve`, which then replicates in
the LTX format that real 0.5.17 restores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import apsw
import httpx
import pytest

from replication.errors import ReplicationError
from replication.replica_client import client_from_url
from replication.restore import choose_plan, restore
from replication.v3 import PlanV3

from tests.plugins.litestream import make_v3_replica
from tests.plugins.replicas import Replica, integrity, write_config

REPO = Path(__file__).resolve().parents[1]


def _file_yaml(root: Path) -> str:
    return (f"      - url: file://{root}\n"
            "        sync-interval: 100ms\n"
            "        snapshot-interval: 3s\n")


@pytest.fixture(scope="module", params=["file", "s3"])
def v3(request, litestream_v3_bin, litestream_env, tmp_path_factory):
    """(V3Replica, environment for clients): one replica per backend, made once."""
    work = tmp_path_factory.mktemp(f"v3-{request.param}")
    if request.param == "file":
        root = work / "replica"
        made = make_v3_replica(litestream_v3_bin, litestream_env, work, _file_yaml(root),
                               f"file://{root}")
        return made, dict(litestream_env)
    s3 = request.getfixturevalue("s3_server")
    path = s3.new_path("v3")
    yaml = (f"      - type: s3\n        bucket: {s3.bucket}\n        path: {path}\n"
            f"        endpoint: {s3.endpoint}\n        region: {s3.region}\n"
            "        force-path-style: true\n"
            f"        access-key-id: {s3.access_key}\n        secret-access-key: {s3.secret_key}\n"
            "        sync-interval: 100ms\n        snapshot-interval: 3s\n")
    made = make_v3_replica(litestream_v3_bin, s3.env(), work, yaml, s3.url(s3.bucket, path))
    return made, s3.env()


def db_rows(path: Path) -> list:
    con = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(r) for r in con.execute("SELECT id, v FROM t ORDER BY id")]
    finally:
        con.close()


def real_restore(litestream_bin, env, url: str, out: Path, *extra) -> None:
    proc = subprocess.run([litestream_bin, "restore", *extra, "-o", str(out), url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def client_for(url: str, env: dict):
    """A client of ``url`` with the S3 keys of ``env`` as settings (put into os.environ, they
    stayed there for every later test of the session)."""
    if not url.startswith("s3://"):
        return client_from_url(url)
    return client_from_url(url, access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                           secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"))


def test_the_replica_has_what_the_tests_need(v3):
    replica, env = v3
    client = client_for(replica.url, env)
    from replication import v3 as v3_mod

    gens = v3_mod.generations(client)
    assert len(gens) == 2, gens
    assert sum(len(v3_mod.snapshots(client, g)) for g in gens) >= 3
    indexes = {s.index for g in gens for s in v3_mod.wal_segments(client, g)}
    assert len(indexes) >= 3  # checkpoints started new WAL indexes


def test_latest_restore_matches_litestream_0517(v3, litestream_bin, tmp_path):
    replica, env = v3
    client = client_for(replica.url, env)
    plan = choose_plan(client)
    assert isinstance(plan, PlanV3)
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    result = restore(client, str(ours), integrity_check="full")
    real_restore(litestream_bin, env, replica.url, theirs)
    assert result.v3 is not None and integrity(ours) == "ok"
    assert ours.read_bytes() == theirs.read_bytes()
    assert db_rows(ours) == db_rows(replica.db)  # the source's every row, the offline one too


def test_restore_at_each_moment_matches_litestream_0517(v3, litestream_bin, tmp_path):
    replica, env = v3
    client = client_for(replica.url, env)
    from replication.restore import check_timestamp_in_bounds

    counts = []
    for i, moment in enumerate(replica.moments):
        ours, theirs = tmp_path / f"ours-{i}.db", tmp_path / f"theirs-{i}.db"
        stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        proc = subprocess.run([litestream_bin, "restore", "-timestamp", stamp, "-o", str(theirs),
                               replica.url], env=env, capture_output=True, text=True, timeout=120)
        if "timestamp does not exist" in proc.stderr:  # past the last backup: ours refuses too
            with pytest.raises(ReplicationError, match="timestamp does not exist"):
                check_timestamp_in_bounds(client, moment)
            continue
        assert proc.returncode == 0, proc.stderr
        check_timestamp_in_bounds(client, moment)
        restore(client, str(ours), timestamp=moment)
        assert ours.read_bytes() == theirs.read_bytes(), f"moment {i} ({stamp})"
        counts.append(len(db_rows(ours)))
    assert counts == sorted(counts) and len(set(counts)) >= 3, counts


def test_dry_run_shows_the_v3_plan(v3, tmp_path):
    replica, env = v3
    proc = subprocess.run([sys.executable, "-m", "replication", "restore", "-dry-run", "-json",
                           "-o", str(tmp_path / "x.db"), replica.url],
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "v0.3" and doc["files"][0]["kind"] == "snapshot"
    assert all(f["kind"] == "wal" for f in doc["files"][1:])
    assert not (tmp_path / "x.db").exists()


def test_a_timestamp_before_every_backup_is_refused(v3, tmp_path):
    replica, env = v3
    client = client_for(replica.url, env)
    from replication.restore import check_timestamp_in_bounds

    with pytest.raises(ReplicationError, match="timestamp does not exist"):
        check_timestamp_in_bounds(client, replica.moments[0] - timedelta(days=1))


def _damage(request, url: str, relpath: str, data: bytes | None) -> None:
    """Remove (``data=None``) or overwrite one object of the replica."""
    if url.startswith("file://"):
        path = Path(url[len("file://"):]) / relpath
        if data is None:
            os.remove(path)
        else:
            path.write_bytes(data)
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    s3 = request.getfixturevalue("s3_server").client()
    key = f"{parts.path.strip('/')}/{relpath}"
    if data is None:
        s3.delete_object(Bucket=parts.netloc, Key=key)
    else:
        s3.put_object(Bucket=parts.netloc, Key=key, Body=data)


def test_a_missing_segment_or_a_damaged_snapshot_fails_with_nothing_left(v3, request,
                                                                         tmp_path):
    """Removes a segment of the first generation (the later tests restore the latest, in the
    second) and damages the latest snapshot for a moment."""
    replica, env = v3
    client = client_for(replica.url, env)
    from replication import v3 as v3_mod

    latest_generation = choose_plan(client).snapshot.generation
    first = [g for g in v3_mod.generations(client) if g != latest_generation][0]
    for segment in v3_mod.wal_segments(client, first):  # a moment whose plan has a middle
        moment = segment.created_at
        plan = choose_plan(client, timestamp=moment)
        middle = [s for s in plan.segments if s.offset > 0 and s is not plan.segments[-1]]
        if isinstance(plan, PlanV3) and middle:
            break
    else:
        pytest.fail("no restore point in the first generation spans several segments")
    _damage(request, replica.url, middle[0].path, None)
    out = tmp_path / "out.db"
    with pytest.raises(ReplicationError, match="missing WAL segment"):
        restore(client, str(out), timestamp=moment)
    assert not any(p.name.startswith("out.db") for p in tmp_path.iterdir())
    latest = choose_plan(client).snapshot
    with client.open_object(latest.path) as f:
        original = f.read()
    _damage(request, replica.url, latest.path, b"not lz4")
    try:
        with pytest.raises(ReplicationError, match="not a valid LZ4 frame"):
            restore(client, str(out))
        assert not any(p.name.startswith("out.db") for p in tmp_path.iterdir())
    finally:  # the later tests restore the latest
        _damage(request, replica.url, latest.path, original)
        if replica.url.startswith("file://"):
            stamp = latest.created_at.timestamp()
            os.utime(Path(replica.url[len("file://"):]) / latest.path, (stamp, stamp))


def test_replicate_restores_a_v3_replica_then_continues_in_ltx(v3, request, litestream_v3_bin,
                                                               litestream_bin, tmp_path):
    """`replicate -once -restore-if-db-not-exists` on a fresh v0.3 replica of the same backend
    (the module's replica must stay v0.3-only for the tests above)."""
    replica, env = v3
    work = tmp_path / "made"
    if replica.url.startswith("file://"):
        root = tmp_path / "replica"
        fresh = make_v3_replica(litestream_v3_bin, env, work, _file_yaml(root), f"file://{root}")
    else:
        s3 = request.getfixturevalue("s3_server")
        path = s3.new_path("v3-replicate")
        yaml = (f"      - type: s3\n        bucket: {s3.bucket}\n        path: {path}\n"
                f"        endpoint: {s3.endpoint}\n        region: {s3.region}\n"
                "        force-path-style: true\n"
                f"        access-key-id: {s3.access_key}\n"
                f"        secret-access-key: {s3.secret_key}\n"
                "        sync-interval: 100ms\n        snapshot-interval: 3s\n")
        fresh = make_v3_replica(litestream_v3_bin, env, work, yaml, s3.url(s3.bucket, path))
    db = tmp_path / "app.db"
    proc = subprocess.run([sys.executable, "-m", "replication", "replicate", "-once",
                           "-restore-if-db-not-exists", str(db), fresh.url],
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "v0.3 backup" in proc.stderr
    assert db_rows(db) == db_rows(fresh.db)
    client = client_for(fresh.url, env)
    assert not isinstance(choose_plan(client), PlanV3)  # the LTX snapshot is the newer backup
    out = tmp_path / "restored.db"
    real_restore(litestream_bin, env, fresh.url, out)
    assert db_rows(out) == db_rows(fresh.db)


def test_serve_restores_a_v3_replica_then_replicates_in_ltx(v3, serve, litestream_bin,
                                                            tmp_path):
    """The migration path: `serve` on a lost database restores the v0.3 backup, serves it, and
    its writes go to the replica as LTX, which the real 0.5.17 then restores (newer than v0.3)."""
    replica, env = v3
    db = tmp_path / "app.db"
    if replica.url.startswith("file://"):
        target = Replica(url=replica.url, litestream_env=env, root=Path(replica.url[7:]))
    else:
        target = Replica(url=replica.url, litestream_env=env, server_env={
            k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    config = write_config(tmp_path / "litestream.yml", db, target)
    srv = serve(db, "--replication-enabled", "--replication-config", config,
                "--security-allow-table", "t", env={**env, **target.server_env})
    served = httpx.get(srv.base_url + "/t", params={"select": "id,v"}).json()
    assert [(r["id"], r["v"]) for r in served] == db_rows(replica.db)
    created = httpx.post(srv.base_url + "/t", json={"v": "after the migration"})
    assert created.status_code == 201
    assert srv.stop() == 0, srv.logs()
    assert "v0.3 backup" in srv.logs()
    out = tmp_path / "restored.db"
    real_restore(litestream_bin, env, replica.url, out)
    assert db_rows(out) == db_rows(replica.db) + [(len(served) + 1, "after the migration")]
