"""Fail fast on time: the retry budget fires while a failing round is still in flight.

Fault injection over a real file replica client: the first upload fails at once, every later
one hangs (like boto's own retries against a dead S3) before failing.
"""
from __future__ import annotations

import threading
import time

import apsw

from replication.db import DB
from replication.errors import ReplicaClientError
from replication.file_replica_client import FileReplicaClient
from replication.replica import Replica


class HangingReplica(FileReplicaClient):
    def __init__(self, path, hang: float):
        super().__init__(path)
        self.hang = hang
        self.calls = 0

    def write_ltx_file(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            time.sleep(self.hang)
        raise ReplicaClientError("injected: replica unreachable")


def test_budget_fires_while_a_round_still_hangs(tmp_path):
    db_path = tmp_path / "app.db"
    conn = apsw.Connection(str(db_path))
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("CREATE TABLE t(x)")
    client = HangingReplica(str(tmp_path / "replica"), hang=5.0)
    client.init()
    db = DB(str(db_path))
    db.open()
    fired = threading.Event()
    replica = Replica(db, client, retry_budget=1.0, on_fatal=lambda exc: fired.set())
    replica.sync_interval = 0.05
    db.sync()
    started = time.monotonic()
    replica.start()
    try:
        assert fired.wait(4.0), "the budget did not fire while the second round hung"
        took = time.monotonic() - started
        assert took < 3.0, f"fatal after {took:.1f}s with a 1s budget"
        assert client.calls >= 2  # the second round was in flight (hanging) when it fired
        assert replica.health.fatal
    finally:
        assert replica.stop(0.1) is False  # fatal: no final rounds against a dead replica
        db.close()
        conn.close()
