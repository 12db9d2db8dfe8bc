"""Positions that name a history (#13 item 6; replication/lineage.py, api/positions.py).

A TXID alone does not name a state: a primary killed before it uploaded TXID T, restored from
its replica, writes a *different* T. Each local history has a lineage, recorded on the replica
before its first LTX file; the primary's writes answer ``X-Replication-Position: T@lineage``,
and a replica refuses a position whose lineage its history abandoned.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from replication import lineage
from replication.lineage import LOST, OK, UNKNOWN, Lineage, position_state
from replication.primary import Primary
from replication.replica_client import client_from_url
from tests.plugins.replicas import (db_rows, file_replica, make_db, meta_dir, remove_db_files,
                                    s3_replica, sigkill_tree, wait_for, write_config)
from tests.plugins.server import start_server
from tests.test_replica_server import replica_dsn

POSITION = re.compile(r"^([0-9a-f]{16})@([0-9a-f]{16})$")
#: No compaction while a test runs: the lost write is removed from L0 only.
NO_COMPACTION = {"levels": [{"interval": "1h"}]}

pytestmark = pytest.mark.timeout(240)


# -- the rule ---------------------------------------------------------------------------------

def test_a_position_is_lost_when_a_later_lineage_began_below_it():
    first, second, third = Lineage("a" * 16, 0, 1), Lineage("b" * 16, 3, 2), Lineage("c" * 16, 9, 3)
    history = [first, second, third]
    assert position_state(history, 3, first.id) == (OK, None)      # kept by the restore at 3
    assert position_state(history, 4, first.id) == (LOST, second)   # written after, never uploaded
    assert position_state(history, 9, second.id) == (OK, None)
    assert position_state(history, 10, second.id) == (LOST, third)
    assert position_state(history, 10 ** 6, third.id) == (OK, None)
    assert position_state(history, 1, "d" * 16) == (UNKNOWN, None)


def test_record_names_sort_in_creation_order_and_parse_back():
    old = Lineage.begin(after_txid=5)
    time.sleep(0.002)
    new = Lineage.begin(after_txid=2)  # a later lineage may begin lower (a restore to a TXID)
    assert sorted([new.record_name, old.record_name]) == [old.record_name, new.record_name]
    assert Lineage.from_record_name(new.record_name) == new
    for junk in ("x", "0-0-0", f"{'g' * 16}-{'0' * 16}-{'0' * 16}", new.record_name + "-x"):
        assert Lineage.from_record_name(junk) is None


# -- the primary's lineages across restarts -----------------------------------------------------

def _prepare(config: Path, db: Path, **kwargs) -> Primary:
    primary = Primary.from_config_file(str(db), str(config), **kwargs)
    primary.prepare()
    primary.release_lock()
    return primary


def test_a_lineage_begins_with_each_history_and_is_kept_while_the_database_is(tmp_path,
                                                                              litestream_env):
    replica = file_replica(tmp_path, litestream_env)
    db = tmp_path / "app.db"
    make_db(db, ["a"])
    config = write_config(tmp_path / "litestream.yml", db, replica)
    client = client_from_url(replica.url)

    first = _prepare(config, db).lineage
    assert first.after_txid == 0 and lineage.history(client) == [first]
    assert _prepare(config, db).lineage == first  # carried forward: no new record
    assert lineage.history(client) == [first]

    # Replicate a few TXIDs, then lose the database: the restore begins a new lineage after
    # the replica's latest TXID, recorded after the first.
    server = start_server(db, "--replication-enabled", "--replication-config", config,
                          "--security-allow-table", "items")
    try:
        for name in ("b", "c"):
            assert httpx.post(f"{server.base_url}/items", json={"name": name},
                              timeout=10).status_code == 201
        wait_for(lambda: replica.max_txid() >= 3, 30, "the uploads")
    finally:
        server.stop()
    top = replica.max_txid()
    remove_db_files(db)
    restored = _prepare(config, db).lineage
    assert restored.id != first.id and restored.after_txid == top
    assert lineage.history(client) == [first, restored]

    # A reset of the replica deletes its LTX files but keeps the records: positions of the
    # deleted history read as lost, not as unknown.
    reset = _prepare(config, db, reset_replica=True).lineage
    assert reset.after_txid == 0 and lineage.history(client) == [first, restored, reset]
    assert position_state(lineage.history(client), top, restored.id)[0] == LOST


# -- the lost write, end to end ----------------------------------------------------------------

def _delete_from_replica(replica, txid: int) -> None:
    """The replica as it is when the primary died before uploading ``txid``: its L0 files
    from ``txid`` on are not there (compaction is off, so no other level holds them)."""
    for level in (1, 2, 3, 9):
        assert all(mx < txid for _, mx in replica.spans(level)), replica.describe()
    keys = {} if replica.root else {"access_key_id": replica.s3.access_key,
                                    "secret_access_key": replica.s3.secret_key}
    client = client_from_url(replica.url, **keys)
    try:
        client.delete_ltx_files([i for i in client.ltx_files(0) if i.max_txid >= txid])
    finally:
        client.close()
    assert replica.max_txid() == txid - 1


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_write_lost_with_its_primary_is_refused_by_a_replica_not_served(
        request, tmp_path, litestream_env, litestream_bin, backend):
    replica = (file_replica(tmp_path, litestream_env) if backend == "file"
               else s3_replica(request.getfixturevalue("s3_server")))
    db = tmp_path / "app.db"
    make_db(db, ["seed"])
    config = write_config(tmp_path / "litestream.yml", db, replica, top=NO_COMPACTION)
    args = ("--security-allow-table", "items", "--replication-enabled",
            "--replication-config", config)
    started = []
    try:
        primary = start_server(db, *args, env=replica.server_env)
        started.append(primary)
        with httpx.Client(timeout=10) as http:
            kept = http.post(f"{primary.base_url}/items", json={"name": "kept"})
            lost = http.post(f"{primary.base_url}/items", json={"name": "lost"})
        assert kept.status_code == lost.status_code == 201
        kept_txid, first = POSITION.match(kept.headers["X-Replication-Position"]).groups()
        lost_txid, same = POSITION.match(lost.headers["X-Replication-Position"]).groups()
        assert same == first and lost.headers["X-Replication-Txid"] == lost_txid
        wait_for(lambda: replica.max_txid() >= int(lost_txid, 16), 30, "the uploads")

        # The primary dies with its disk before the last write reached the replica.
        sigkill_tree(primary)
        _delete_from_replica(replica, int(lost_txid, 16))
        remove_db_files(db)
        shutil.rmtree(meta_dir(db))

        primary = start_server(db, *args, env=replica.server_env)  # restores at lost - 1
        started.append(primary)
        with httpx.Client(timeout=10) as http:
            new = http.post(f"{primary.base_url}/items", json={"name": "new"})
        assert new.status_code == 201
        new_txid, second = POSITION.match(new.headers["X-Replication-Position"]).groups()
        assert second != first and int(new_txid, 16) >= int(lost_txid, 16)  # a TXID reused

        server = start_server(replica_dsn(tmp_path, replica), "--security-allow-table", "items",
                              "--replica-wait-timeout", "5", env=replica.server_env)
        started.append(server)
        with httpx.Client(timeout=20) as http:
            def read(position):
                return http.get(f"{server.base_url}/items?select=name&order=id",
                                headers={"X-Replication-Min-Txid": position})

            begun = time.monotonic()
            refused = read(lost.headers["X-Replication-Position"])
            assert refused.status_code == 409, refused.text
            assert time.monotonic() - begun < 3  # refused, not waited for
            body = refused.json()
            assert body["code"] == "40003" and lost_txid in body["message"]
            assert second in body["details"] and f"{int(lost_txid, 16) - 1:016x}" in body["details"]

            served = read(new.headers["X-Replication-Position"])
            assert served.status_code == 200, served.text
            assert [r["name"] for r in served.json()] == ["seed", "kept", "new"]
            # A position of the old lineage the restore kept is still good.
            assert read(kept.headers["X-Replication-Position"]).status_code == 200
            # An unknown lineage is not this replica's history.
            other = read(f"{kept_txid}@{'0' * 16}")
            assert other.status_code == 409 and "no lineage" in other.json()["details"]
            # The bare TXID cannot tell the two histories apart (the reason for the lineage).
            assert read(lost_txid).status_code == 200
    finally:
        for server in started:
            server.stop()
    # The records beside ltx/ do not disturb the real Litestream's restore.
    out = tmp_path / "litestream-restored.db"
    replica.restore(litestream_bin, out)
    assert [r[1] for r in db_rows(out)] == ["seed", "kept", "new"]
