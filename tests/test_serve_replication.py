"""``sqlite-rest serve --replication-enabled``: the server and the replication core, end to end.

Real processes only: the ``sqlite-rest serve`` CLI (tests/plugins/server.py), SeaweedFS
(tests/plugins/s3.py; a private instance for the tests that stop S3), the real ``litestream``
0.5.17 for every "is the replica restorable" check, and postgrest-py for writes over HTTP.

What a write acknowledges: HTTP 2xx after COMMIT, with ``X-Replication-Txid`` naming the replica
position (TXID) that contains it. These tests hold the server to that: a restore of the replica
at that TXID contains the write, a SIGKILL'ed server restarted on a lost database serves every
acknowledged write, and a replica outage ends in a loud non-zero exit, never in a lost write.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import apsw
import httpx
import pytest
from postgrest import SyncPostgrestClient

from tests.plugins.replicas import (Replica, db_rows, descendants, file_replica,
                                    integrity, make_db, meta_dir, remove_db_files, s3_replica,
                                    sigkill_tree, txid_of, wait_for, write_config)
from tests.plugins.server import ServerProcess, _answers, start_server

TXID_HEADER = "X-Replication-Txid"
TXID = re.compile(r"^[0-9a-f]{16}$")
#: Start/refusal/exit deadlines, generous for a shared 2-core machine (seconds).
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0
#: The retry budget of the outage test (replica key `retry-budget`, a sqlite-rest extension).
OUTAGE_BUDGET_S = 5.0
WAYS_OUT = ("--replication-force-restore", "--replication-reset-replica")

pytestmark = pytest.mark.timeout(240)


# -- small helpers ---------------------------------------------------------------------------

@pytest.fixture
def replica_for(request, tmp_path, litestream_env):
    """``replica_for("file"|"s3")`` -> a fresh, empty Replica (S3: the session SeaweedFS)."""
    def make(backend: str, name: str = "replica") -> Replica:
        if backend == "file":
            return file_replica(tmp_path, litestream_env, name)
        return s3_replica(request.getfixturevalue("s3_server"))
    return make


# -- the server ------------------------------------------------------------------------------

@pytest.fixture
def servers():
    """``servers.start(db, config, *args, env=..., wait=...)``; all stopped by PID at teardown."""
    class Servers:
        def __init__(self):
            self.started: list = []

        def start(self, db: Path, config: Optional[Path], *extra, env=None, wait=True,
                  via_env=False) -> ServerProcess:
            args = list(extra)
            env = dict(env or {})
            if config is not None and via_env:
                env.update(SQLITEREST_REPLICATION_ENABLED="true",
                           SQLITEREST_REPLICATION_CONFIG=str(config))
            elif config is not None:
                args = ["--replication-enabled", "--replication-config", str(config), *args]
            server = start_server(db, "--security-allow-table", "items", *args, env=env,
                                  wait=wait)
            self.started.append(server)
            return server

    s = Servers()
    yield s
    for server in s.started:
        children = descendants(server.pid)
        try:
            if server.proc.poll() is None:
                server.stop()
        finally:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.unlink(server.log_path)
            except OSError:
                pass


def excerpt(server: ServerProcess, lines: int = 40) -> str:
    """The server's log without per-request lines, last ``lines`` lines (for failure messages)."""
    kept = [line for line in server.logs().splitlines() if '"sqlite_rest.request"' not in line]
    return "\n".join(kept[-lines:])


def wait_refused(server: ServerProcess, timeout: float = EXIT_TIMEOUT) -> tuple:
    """Wait for a start that must fail: (exit code, output, whether the API ever listened)."""
    listened = False
    deadline = time.monotonic() + timeout
    while server.proc.poll() is None:
        listened = listened or _answers(server.http_port)
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"serve did not exit within {timeout:g} s:\n{excerpt(server)}")
        time.sleep(0.05)
    return server.proc.returncode, server.logs(), listened


def assert_refused(server: ServerProcess, *fragments, any_of=()) -> str:
    code, out, listened = wait_refused(server)
    assert code != 0, f"serve exited 0 but must refuse:\n{excerpt(server)}"
    assert not listened, f"the API listened although the start is refused:\n{excerpt(server)}"
    assert "Traceback (most recent call last)" not in out, f"a stack trace instead of a message:\n{out}"
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one `error: …` line, got {errors}:\n{excerpt(server)}"
    line = errors[0]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing from the error line {line!r}"
    if any_of:
        assert any(f in line for f in any_of), f"none of {any_of} in the error line {line!r}"
    return line


def admin(server: ServerProcess, path: str) -> httpx.Response:
    return httpx.get(server.metrics_url + path, timeout=5)


def admin_status(server: ServerProcess, path: str) -> Optional[int]:
    try:
        return admin(server, path).status_code
    except httpx.TransportError:
        return None


def replication_status(server: ServerProcess) -> dict:
    return admin(server, "/status").json()["replication"]


def wait_ready(server: ServerProcess, timeout: float = READY_TIMEOUT) -> None:
    def ready():
        if server.proc.poll() is not None:
            raise AssertionError(f"serve exited with {server.proc.returncode}:\n{excerpt(server)}")
        try:
            return (admin(server, "/ready").status_code == 200
                    and httpx.get(server.base_url + "/ready", timeout=5).status_code == 200)
        except httpx.TransportError:
            return False
    try:
        wait_for(ready, timeout, "/ready = 200 on the admin and API servers", 0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{excerpt(server)}") from None


def wait_replica_reaches(replica: Replica, txid: int, server: Optional[ServerProcess] = None,
                         timeout: float = 30.0) -> None:
    try:
        wait_for(lambda: replica.max_txid() >= txid, timeout,
                 f"the replica to reach TXID {txid:016x}", 0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (replica at {replica.max_txid():016x})\n"
                             f"{excerpt(server) if server else ''}") from None


class Writer:
    """postgrest-py on one server, recording each write's status and X-Replication-Txid."""

    def __init__(self, server: ServerProcess):
        self.client = SyncPostgrestClient(server.base_url, retry_enabled=False)
        self.responses: list = []  # (method, status, txid header or None)
        self.client.session.event_hooks["response"].append(self._record)

    def _record(self, response: httpx.Response) -> None:
        if response.request.method in ("POST", "PATCH", "PUT", "DELETE"):
            self.responses.append((response.request.method, response.status_code,
                                   response.headers.get(TXID_HEADER)))

    def _last_txid(self) -> int:
        method, status, header = self.responses[-1]
        assert 200 <= status < 300, (method, status)
        assert header is not None, f"{method} {status} has no {TXID_HEADER} header"
        assert TXID.match(header), f"{TXID_HEADER}: {header!r} is not 16 lower-case hex digits"
        return int(header, 16)

    def insert(self, *names) -> tuple:
        res = self.client.table("items").insert([{"name": n} for n in names]).execute()
        return [(r["id"], r["name"]) for r in res.data], self._last_txid()

    def rename(self, row_id: int, name: str) -> int:
        self.client.table("items").update({"name": name}).eq("id", row_id).execute()
        return self._last_txid()

    def delete(self, row_id: int) -> int:
        self.client.table("items").delete().eq("id", row_id).execute()
        return self._last_txid()

    def rows(self) -> list:
        res = self.client.table("items").select("id,name").order("id").execute()
        return [(r["id"], r["name"]) for r in res.data]

    def close(self) -> None:
        self.client.session.close()


def write_workload(writer: Writer, tag: str) -> tuple:
    """Inserts (single and bulk), an update, a delete, each acknowledged with a TXID.
    Returns (the rows now, [(txid, the rows at that txid)]). Writes don't wait for a sync
    round, so consecutive writes can share one TXID: the rows at it are those after the
    last write acknowledged with it."""
    model: dict = {}
    history = []

    def acked(txid: int) -> None:
        if history and history[-1][0] == txid:
            history.pop()
        history.append((txid, dict(model)))

    for i in range(6):
        rows, txid = writer.insert(f"{tag}-{i}")
        model.update(rows)
        acked(txid)
    rows, txid = writer.insert(*(f"{tag}-bulk-{i}" for i in range(3)))
    model.update(rows)
    acked(txid)
    first_id, second_id = sorted(model)[:2]
    txid = writer.rename(first_id, f"{tag}-renamed")
    model[first_id] = f"{tag}-renamed"
    acked(txid)
    txid = writer.delete(second_id)
    del model[second_id]
    acked(txid)
    txids = [t for t, _ in history]
    assert txids == sorted(txids), f"{TXID_HEADER} went backwards for one client: {txids}"
    return model, history


def as_rows(model: dict) -> list:
    return sorted(model.items())


# -- 1. crash, lost database, restore --------------------------------------------------------

@pytest.mark.parametrize("backend", ["file", "s3"])
@pytest.mark.parametrize("keep_meta", [True, False], ids=["keep-meta", "delete-meta"])
def test_sigkill_and_lost_database_restores_every_acknowledged_write(
        backend, keep_meta, tmp_path, replica_for, servers, litestream_bin):
    db = tmp_path / "app.db"
    replica = replica_for(backend)
    config = write_config(tmp_path / "litestream.yml", db, replica)
    make_db(db)
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)

    status = replication_status(server)
    for key in ("local_txid", "replica_txid", "lag_seconds", "last_error", "ready"):
        assert key in status, f"/status replication lacks {key}: {status}"
    assert status["ready"] is True and status["last_error"] in (None, "")
    metrics = admin(server, "/metrics").text
    assert "sqlite_rest_" in metrics and "litestream_" in metrics

    writer = Writer(server)
    model, history = write_workload(writer, backend)
    writer.close()
    last_txid = history[-1][0]
    if keep_meta:
        # Acknowledged and in the local meta dir (local L0): the crash may come before the
        # upload; the next start must upload it before restoring.
        wait_for(lambda: txid_of(replication_status(server)["local_txid"]) >= last_txid, 15,
                 "the local position to reach the last acknowledged TXID")
    else:
        # Without the meta dir the replica is the only copy left: wait for it, as a reader would.
        wait_replica_reaches(replica, last_txid, server)
    sigkill_tree(server)

    remove_db_files(db)
    if not keep_meta:
        shutil.rmtree(meta_dir(db))
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    assert Writer(server).rows() == as_rows(model), excerpt(server)
    assert integrity(db) == "ok"

    # The real Litestream restores the same content; at each acknowledged write's TXID the
    # replica holds that write (X-Replication-Txid is the position containing it).
    wait_replica_reaches(replica, txid_of(replication_status(server)["local_txid"]), server)
    replica.restore(litestream_bin, tmp_path / "latest.db")
    assert db_rows(tmp_path / "latest.db") == as_rows(model)
    for i, (txid, expected) in enumerate(history[::3] + history[-1:]):
        out = tmp_path / f"at-{i}.db"
        replica.restore(litestream_bin, out, "-txid", f"{txid:016x}")
        assert db_rows(out) == as_rows(expected), f"restore at {TXID_HEADER} {txid:016x}"


def test_missing_database_and_empty_replica_start_empty(tmp_path, replica_for, servers):
    db = tmp_path / "app.db"
    replica = replica_for("file")
    config = write_config(tmp_path / "litestream.yml", db, replica)
    server = servers.start(db, config)
    wait_ready(server)
    assert db.exists()
    assert "no replica data" in server.logs().lower(), excerpt(server)
    status = replication_status(server)
    assert status["ready"] is True and txid_of(status["replica_txid"]) >= 1


# -- 2. replica outage: fail fast, lose nothing ----------------------------------------------

class BackgroundWriter(threading.Thread):
    """POSTs one row every ``period`` until stopped or the server is gone."""

    def __init__(self, base_url: str, tag: str, period: float = 0.05):
        super().__init__(daemon=True)
        self.base_url, self.tag, self.period = base_url, tag, period
        self.acked: dict = {}  # name -> txid header
        self.failures: list = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            n = 0
            while not self.halt.is_set():
                name = f"{self.tag}-{n}"
                n += 1
                try:
                    r = http.post("/items", json={"name": name})
                except httpx.TransportError as exc:
                    self.failures.append((name, type(exc).__name__))
                    if isinstance(exc, httpx.ConnectError):
                        return  # the server is gone
                    continue
                if r.status_code == 201:
                    self.acked[name] = r.headers.get(TXID_HEADER)
                else:
                    self.failures.append((name, r.status_code))
                self.halt.wait(self.period)


def test_s3_outage_fails_fast_and_the_next_start_uploads_everything(
        tmp_path, own_s3, servers, litestream_bin):
    db = tmp_path / "app.db"
    replica = s3_replica(own_s3.server)
    config = write_config(tmp_path / "litestream.yml", db, replica,
                          retry_budget=f"{OUTAGE_BUDGET_S:g}s")
    make_db(db)
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    writer = BackgroundWriter(server.base_url, "outage")
    writer.start()
    wait_for(lambda: len(writer.acked) >= 5, 10, "a few writes before the outage")

    acked_before_outage = len(writer.acked)
    down_at = time.monotonic()
    own_s3.stop()
    gone_at = time.monotonic()
    wait_for(lambda: server.proc.poll() is not None or admin_status(server, "/ready") == 503,
             OUTAGE_BUDGET_S + 10, "/ready to turn 503 while S3 is down")
    assert server.proc.poll() is None, "the server exited before /ready reported the outage"
    # The workers' /ready mirrors the supervisor's through a file refreshed every
    # READY_FILE_INTERVAL_S (0.25 s): allow that propagation, not an instant agreement.
    api_ready = None
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            api_ready = httpx.get(server.base_url + "/ready", timeout=5).status_code
        except httpx.TransportError:
            api_ready = None  # stopped in between: nothing to check
            break
        if api_ready == 503:
            break
        time.sleep(0.05)
    try:
        code = server.proc.wait(OUTAGE_BUDGET_S + 30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve still running {OUTAGE_BUDGET_S + 30:g} s after S3 went down "
                             f"(retry-budget {OUTAGE_BUDGET_S:g}s):\n{excerpt(server)}") from None
    exited_after = time.monotonic() - down_at
    s3_gone_after = time.monotonic() - gone_at
    writer.halt.set()
    writer.join(30)
    out = server.logs()
    assert code != 0, f"serve exited 0 after losing its replica:\n{excerpt(server)}"
    # The cause of the stop (the supervisor's one line), not one of the retried errors.
    causes = [line for line in out.splitlines()
              if ("stopping" in line.lower() or line.startswith("error:")) and "s3" in line.lower()]
    assert causes, f"no stop cause naming the S3 replica:\n{excerpt(server)}"
    print(f"exit {code} {exited_after:.1f} s after S3 went down ({s3_gone_after:.1f} s after "
          f"it was gone at {time.time() - s3_gone_after:.3f}): {causes[-1]}\n{excerpt(server, 25)}"
          f"\nclient failures: {writer.failures[:10]}; API /ready during the outage: {api_ready}")
    assert len(writer.acked) > acked_before_outage, "no write was acknowledged during the outage"

    own_s3.start()
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    local = txid_of(replication_status(server)["local_txid"])
    wait_replica_reaches(replica, local, server)
    spans = replica.spans(0)
    assert spans and spans[0][0] == 1, f"the replica's L0 does not start at TXID 1: {spans[:3]}"
    gaps = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] != a[1] + 1]
    assert not gaps, f"TXID gaps in the replica's L0: {gaps}"
    assert spans[-1][1] == local
    served = {name for _, name in Writer(server).rows()}
    lost = set(writer.acked) - served
    assert not lost, f"{len(lost)} acknowledged writes lost: {sorted(lost)[:5]}"
    replica.restore(litestream_bin, tmp_path / "restored.db")
    assert {name for _, name in db_rows(tmp_path / "restored.db")} == served
    # Checked last, so that the catch-up above is checked either way; both reported at once.
    problems = []
    if api_ready not in (503, None):
        problems.append(f"the API's /ready answered {api_ready} while S3 was down")
    # Fail fast: the stop comes about one retry round after the budget, and a server whose
    # replica is gone does not spend long on a final sync that cannot succeed.
    if s3_gone_after > OUTAGE_BUDGET_S + 8:
        problems.append(f"serve exited {s3_gone_after:.1f} s after S3 was gone (retry-budget "
                        f"{OUTAGE_BUDGET_S:g}s, allowed {OUTAGE_BUDGET_S + 8:g} s)")
    assert not problems, "; ".join(problems)


def test_a_local_disk_that_refuses_the_meta_dir_fails_fast_and_loses_nothing(
        tmp_path, replica_for, servers, litestream_bin):
    """Step 4 of the product for the local side: syncs that keep failing (here the next L0
    file cannot be written: its temporary name is taken by a directory) stop `serve` with a
    non-zero exit and one line saying so, within the retry budget; what was acknowledged is
    in the DB, and the next start, with the disk repaired, uploads it."""
    db = tmp_path / "app.db"
    replica = replica_for("file")
    config = write_config(tmp_path / "litestream.yml", db, replica,
                          retry_budget=f"{OUTAGE_BUDGET_S:g}s")
    make_db(db)
    server = servers.start(db, config)
    wait_ready(server)
    writer = Writer(server)
    _, txid = writer.insert("before")
    wait_replica_reaches(replica, txid, server)
    wait_for(lambda: txid_of(replication_status(server)["local_txid"]) == txid, 10,
             "the local side to settle")
    blocked = meta_dir(db) / "ltx" / "0" / f"{txid + 1:016x}-{txid + 1:016x}.ltx.tmp"
    blocked.mkdir()
    # committed and acknowledged (its TXID is known at commit), though no L0 file can hold it
    r = httpx.post(server.base_url + "/items", json={"name": "after"}, timeout=60)
    assert r.status_code == 201, r.text
    try:
        code = server.proc.wait(OUTAGE_BUDGET_S + 30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve still running {OUTAGE_BUDGET_S + 30:g} s after its local "
                             f"syncs began to fail:\n{excerpt(server)}") from None
    assert code != 0, f"serve exited 0 with its local side failing:\n{excerpt(server)}"
    assert "local syncs have failed" in server.logs(), excerpt(server)
    blocked.rmdir()
    server = servers.start(db, config)
    wait_ready(server)
    local = txid_of(replication_status(server)["local_txid"])
    wait_replica_reaches(replica, local, server)
    served = {name for _, name in Writer(server).rows()}
    assert {"before", "after"} <= served
    replica.restore(litestream_bin, tmp_path / "restored.db")
    assert {name for _, name in db_rows(tmp_path / "restored.db")} == served


def test_writes_acknowledged_while_s3_is_down_survive_a_crash_and_a_lost_database(
        tmp_path, own_s3, servers, litestream_bin):
    """Acknowledged, in the local meta dir, not uploaded: the next start uploads then restores."""
    db = tmp_path / "app.db"
    replica = s3_replica(own_s3.server)
    config = write_config(tmp_path / "litestream.yml", db, replica)
    make_db(db)
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    writer = Writer(server)
    model, history = write_workload(writer, "before")
    wait_replica_reaches(replica, history[-1][0], server)
    own_s3.stop()
    rows, txid = writer.insert("during-outage-1", "during-outage-2")
    model.update(rows)
    writer.close()
    wait_for(lambda: txid_of(replication_status(server)["local_txid"]) >= txid, 15,
             "the local position to reach the last acknowledged TXID")
    sigkill_tree(server)
    remove_db_files(db)

    own_s3.start()
    assert replica.max_txid() < txid, "the write reached S3 although S3 was down"
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    assert Writer(server).rows() == as_rows(model), excerpt(server)
    wait_replica_reaches(replica, txid_of(replication_status(server)["local_txid"]), server)
    replica.restore(litestream_bin, tmp_path / "restored.db")
    assert db_rows(tmp_path / "restored.db") == as_rows(model)


def test_sigterm_while_the_replica_is_down_exits_non_zero_and_loses_nothing(
        tmp_path, own_s3, servers, litestream_bin):
    db = tmp_path / "app.db"
    replica = s3_replica(own_s3.server)
    config = write_config(tmp_path / "litestream.yml", db, replica,
                          top={"shutdown-sync-timeout": "2s"})
    make_db(db)
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    writer = Writer(server)
    model, _ = write_workload(writer, "before")
    own_s3.stop()
    rows, _ = writer.insert("during-outage")
    model.update(rows)
    writer.close()
    stopping = time.monotonic()
    code = server.stop(timeout=EXIT_TIMEOUT)
    assert code not in (0, None), f"the final sync cannot succeed, yet serve exited {code}:\n" \
                                  f"{excerpt(server)}"
    assert time.monotonic() - stopping < 20, "shutdown-sync-timeout 2s was not honoured"

    own_s3.start()
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    assert Writer(server).rows() == as_rows(model)
    wait_replica_reaches(replica, txid_of(replication_status(server)["local_txid"]), server)
    replica.restore(litestream_bin, tmp_path / "restored.db")
    assert db_rows(tmp_path / "restored.db") == as_rows(model)


# -- 3. divergence, locks, two writers -------------------------------------------------------

def _run_and_stop(servers, db, config, writes: int, tag: str, replica: Replica) -> tuple:
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    writer = Writer(server)
    txids = [writer.insert(f"{tag}-{i}")[1] for i in range(writes)]
    writer.close()
    wait_replica_reaches(replica, txids[-1], server)
    assert server.stop() == 0, excerpt(server)
    return txids


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_an_upload_cut_short_is_uploaded_again_at_the_next_start(backend, tmp_path, replica_for,
                                                                  servers, litestream_bin):
    """A SIGKILL in the middle of a PutObject once left a 0-byte L0 object on SeaweedFS (crash
    torture in CI): the next start refused the replica as unreadable. The local copy of that
    file is whole, so the start uploads it again, and the replica restores."""
    db = tmp_path / "app.db"
    replica = replica_for(backend)
    config = write_config(tmp_path / "litestream.yml", db, replica)
    make_db(db)
    txids = _run_and_stop(servers, db, config, 3, "before", replica)
    newest = max(replica.spans())
    name = f"{newest[0]:016x}-{newest[1]:016x}.ltx"
    if backend == "file":
        (replica.root / "ltx" / "0" / name).write_bytes(b"")
    else:
        replica.s3.client().put_object(Bucket=replica.bucket,
                                       Key=f"{replica.prefix}/0000/{name}", Body=b"")
    assert newest[1] == txids[-1]
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    assert "cut short" in server.logs() and "uploading it again" in server.logs()
    writer = Writer(server)
    _, txid = writer.insert("after")
    wait_replica_reaches(replica, txid, server)
    replica.restore(litestream_bin, tmp_path / "restored.db")
    assert db_rows(tmp_path / "restored.db") == writer.rows()


#: Divergence case -> how it is resolved (flag or its SQLITEREST_* mirror).
DIVERGENCES = {
    "other-db": "--replication-reset-replica",
    "other-db-keep-meta": "SQLITEREST_REPLICATION_FORCE_RESTORE",
    "old-point-then-written": "--replication-force-restore",
    "replica-beyond-local": "SQLITEREST_REPLICATION_RESET_REPLICA",
}


@pytest.mark.parametrize("case", sorted(DIVERGENCES))
def test_diverged_database_is_refused_then_resolved(case, tmp_path, replica_for, servers,
                                                   litestream_bin):
    db = tmp_path / "app.db"
    replica = replica_for("file")
    config = write_config(tmp_path / "litestream.yml", db, replica)
    make_db(db)
    if case == "replica-beyond-local":
        _run_and_stop(servers, db, config, 3, "first", replica)
        saved = tmp_path / "saved"
        saved.mkdir()
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copy2(f"{db}{suffix}", saved / f"app.db{suffix}")
        shutil.copytree(meta_dir(db), saved / "meta")
        _run_and_stop(servers, db, config, 3, "second", replica)
        remove_db_files(db)
        shutil.rmtree(meta_dir(db))
        for suffix in ("", "-wal"):
            if (saved / f"app.db{suffix}").exists():
                shutil.copy2(saved / f"app.db{suffix}", f"{db}{suffix}")
        shutil.copytree(saved / "meta", meta_dir(db))
        expected_word = ("beyond", "differ")
    else:
        txids = _run_and_stop(servers, db, config, 4, "first", replica)
        remove_db_files(db)
        if case != "other-db-keep-meta":
            shutil.rmtree(meta_dir(db))
        if case.startswith("other-db"):
            make_db(db, ["someone", "else"])
        else:
            replica.restore(litestream_bin, db, "-txid", f"{txids[1]:016x}")
            con = apsw.Connection(str(db))
            con.execute("INSERT INTO items(name) VALUES ('written-after-an-old-restore')")
            con.close()
        expected_word = ("differ", "beyond")
    replica_latest = tmp_path / "replica-latest.db"
    replica.restore(litestream_bin, replica_latest)
    before = Path(db).read_bytes()

    line = assert_refused(servers.start(db, config, wait=False), *WAYS_OUT, any_of=expected_word)
    print(f"refused ({case}): {line}")
    assert Path(db).read_bytes() == before, "a refused start changed the database"
    assert "differ" in line or "beyond" in line

    resolution = DIVERGENCES[case]
    local_rows = db_rows(db)
    if resolution.startswith("--"):
        server = servers.start(db, config, resolution)
    else:
        server = servers.start(db, config, env={resolution: "true"})
    wait_ready(server)
    writer = Writer(server)
    if "force-restore" in resolution.lower().replace("_", "-"):
        # the replica wins: the server serves the replica's content
        assert writer.rows() == db_rows(replica_latest)
        # ... and the replaced database is kept beside it, checkpointed, named when and why,
        # with the rows only it had (#9: an operator must not lose the only copy of them)
        [kept] = tmp_path.glob("app.db.replaced-by-force-restore-*")
        assert re.fullmatch(r"app\.db\.replaced-by-force-restore-\d{8}T\d{6}Z", kept.name)
        assert not Path(f"{kept}-wal").exists()  # (before a reader makes one)
        assert db_rows(kept) == local_rows and integrity(kept) == "ok"
        assert f"kept as {kept}" in server.logs()
    else:
        # the local database wins: the replica starts over from it
        assert writer.rows() == local_rows
        _, txid = writer.insert("after-reset")
        wait_replica_reaches(replica, txid, server)
        replica.restore(litestream_bin, tmp_path / "after-reset.db")
        assert db_rows(tmp_path / "after-reset.db") == writer.rows()
    assert integrity(db) == "ok"


def test_ready_turns_503_while_the_replica_lags_past_its_bound(tmp_path, own_s3, servers):
    """#9: under load a replica that stops keeping up makes /ready 503 (replica key
    `ready-max-lag`), before any retry budget is spent; it turns 200 when it catches up."""
    db = tmp_path / "app.db"
    replica = s3_replica(own_s3.server)
    config = write_config(tmp_path / "litestream.yml", db, replica, ready_max_lag="1s")
    make_db(db)
    server = servers.start(db, config, env=replica.server_env)
    wait_ready(server)
    writer = Writer(server)
    os.kill(own_s3.proc.pid, signal.SIGSTOP)  # uploads hang (no error) while it is paused
    try:
        writer.insert("while-paused")
        wait_for(lambda: admin_status(server, "/ready") == 503, 20, "/ready 503 while lagging")
        assert replication_status(server)["lag_seconds"] > 1
    finally:
        os.kill(own_s3.proc.pid, signal.SIGCONT)
    wait_for(lambda: admin_status(server, "/ready") == 200, 60, "/ready 200 once caught up")
    assert replication_status(server)["lag_seconds"] <= 1


def test_workers_never_create_a_lost_database(tmp_path, replica_for, servers):
    """#9: with replication, a missing database is restored by the primary, never created by
    a worker (a dying worker of a killed server made an empty one after the database was
    lost, and the next start refused it as a diverged history)."""
    db = tmp_path / "app.db"
    config = write_config(tmp_path / "litestream.yml", db, replica_for("file"))
    make_db(db)
    server = servers.start(db, config, "--threads", "8")
    wait_ready(server)
    remove_db_files(db)
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        statuses = {http.get("/items").status_code for _ in range(64)}  # new threads, new conns
    assert not db.exists(), f"a worker created {db} (answers {statuses})"
    assert 500 not in statuses


def test_second_server_on_the_same_database_is_refused(tmp_path, replica_for, servers):
    db = tmp_path / "app.db"
    replica = replica_for("file")
    config = write_config(tmp_path / "litestream.yml", db, replica)
    make_db(db)
    first = servers.start(db, config)
    wait_ready(first)
    assert_refused(servers.start(db, config, wait=False), "is still used by another server")
    writer = Writer(first)
    writer.insert("still-served")
    assert [n for _, n in writer.rows()] == ["still-served"]


def test_every_http_process_holds_the_replication_lock(tmp_path, replica_for, servers):
    """#9: a start must not proceed while a process of an earlier server may still write the
    database: the HTTP server and its workers inherit the lock, so it lives as long as any."""
    db = tmp_path / "app.db"
    config = write_config(tmp_path / "litestream.yml", db, replica_for("file"))
    make_db(db)
    server = servers.start(db, config)
    wait_ready(server)
    lock = str(meta_dir(db) / "sqlite-rest.lock")
    processes = descendants(server.pid)
    assert len(processes) == 3  # the granian master and two workers
    for pid in [server.pid, *processes]:
        fds = os.listdir(f"/proc/{pid}/fd")
        assert any(os.readlink(f"/proc/{pid}/fd/{fd}") == lock for fd in fds
                   if os.path.exists(f"/proc/{pid}/fd/{fd}")), f"process {pid} lacks the lock"


def test_workers_signal_the_commits_the_replicator_has_not_started_on(tmp_path, replica_for,
                                                                       servers):
    """With replication every HTTP process gets the commit socket, and a write that needs a
    sync round not started yet wakes the replicator with a signal, counted on /status
    (without replication nobody listens, and workers get no socket: test_server_process)."""
    db = tmp_path / "app.db"
    config = write_config(tmp_path / "litestream.yml", db, replica_for("file"))
    make_db(db)
    server = servers.start(db, config)
    wait_ready(server)
    for pid in descendants(server.pid):
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert b"SQLITEREST_COMMIT_SOCKET=" in f.read(), f"process {pid} lacks the socket"

    def received() -> int:
        return admin(server, "/status").json()["commit_signals"]["received"]

    before = received()
    writer = Writer(server)
    txids = [writer.insert(f"signal-{i}")[1] for i in range(10)]
    assert txids == sorted(txids)
    wait_for(lambda: received() > before, 10, "a commit signal")


def test_different_database_on_a_used_replica_is_refused(tmp_path, replica_for, servers):
    replica = replica_for("file")
    db1, db2 = tmp_path / "one" / "app.db", tmp_path / "two" / "app.db"
    db1.parent.mkdir()
    db2.parent.mkdir()
    config1 = write_config(tmp_path / "one.yml", db1, replica)
    config2 = write_config(tmp_path / "two.yml", db2, replica)
    make_db(db1)
    make_db(db2, ["other", "rows"])
    first = servers.start(db1, config1)
    wait_ready(first)
    writer = Writer(first)
    _, txid = writer.insert("one")
    wait_replica_reaches(replica, txid, first)
    assert_refused(servers.start(db2, config2, wait=False), *WAYS_OUT, any_of=("differ", "beyond"))
    writer.insert("two")
    assert [n for _, n in writer.rows()] == ["one", "two"]


@pytest.mark.parametrize("case", ["both-new-on-empty-replica", "second-restored-from-live-replica"])
def test_two_servers_on_one_replica_never_corrupt_it(case, tmp_path, replica_for, servers,
                                                     litestream_bin):
    """Two primaries on one replica: at most one keeps running; the replica stays restorable
    and holds exactly the survivor's history."""
    replica = replica_for("file")
    dbs = [tmp_path / "one" / "app.db", tmp_path / "two" / "app.db"]
    configs = []
    for i, db in enumerate(dbs):
        db.parent.mkdir()
        configs.append(write_config(tmp_path / f"{i}.yml", db, replica))
    make_db(dbs[0])
    if case == "both-new-on-empty-replica":
        make_db(dbs[1])
        started = [servers.start(db, cfg, wait=False) for db, cfg in zip(dbs, configs)]
    else:
        first = servers.start(dbs[0], configs[0])
        wait_ready(first)
        _, txid = Writer(first).insert("before-second")
        wait_replica_reaches(replica, txid, first)
        started = [first, servers.start(dbs[1], configs[1], wait=False)]

    running = []
    for server in started:
        try:
            wait_for(lambda: server.proc.poll() is not None or _answers(server.http_port),
                     READY_TIMEOUT, "serve to listen or exit")
        except AssertionError:
            pass
        if server.proc.poll() is None:
            running.append(server)
    # Every running server writes; a conflict must stop one of them.
    deadline = time.monotonic() + 20
    n = 0
    while len([s for s in running if s.proc.poll() is None]) > 1 and time.monotonic() < deadline:
        for server in running:
            if server.proc.poll() is None:
                try:
                    httpx.post(server.base_url + "/items", json={"name": f"w{server.pid}-{n}"},
                               timeout=10)
                except httpx.TransportError:
                    pass
        n += 1
        time.sleep(0.1)
    alive = [s for s in running if s.proc.poll() is None]
    stopped = [s for s in started if s.proc.poll() is not None]
    assert len(alive) <= 1, ("two servers keep writing one replica:\n"
                             + "\n----\n".join(excerpt(s) for s in alive))
    for server in stopped:
        print(f"stopped: exit {server.proc.returncode}: {excerpt(server, 3)}")
        assert server.proc.returncode != 0
        out = server.logs().lower()
        assert any(w in out for w in ("conflict", "differ", "beyond", "already")), excerpt(server)
    if alive:
        survivor = alive[0]
        wait_ready(survivor)
        wait_replica_reaches(replica, txid_of(replication_status(survivor)["local_txid"]),
                             survivor)
        expected = Writer(survivor).rows()
        assert survivor.stop() == 0, excerpt(survivor)
    replica.restore(litestream_bin, tmp_path / "restored.db")
    if alive:
        assert db_rows(tmp_path / "restored.db") == expected


# -- 4. SIGTERM under load -------------------------------------------------------------------

#: How a request that reached a stopping server without being served may fail.
UNSERVED_ERRORS = {"ConnectError", "ReadError", "RemoteProtocolError"}

def test_sigterm_under_load_finishes_in_flight_writes_and_replicates_them(
        tmp_path, replica_for, servers, litestream_bin):
    db = tmp_path / "app.db"
    replica = replica_for("file")
    config = write_config(tmp_path / "litestream.yml", db, replica)
    make_db(db)
    server = servers.start(db, config, via_env=True)  # SQLITEREST_REPLICATION_* mirrors
    wait_ready(server)
    signalled = threading.Event()
    sig_at = [0.0]
    results: list = []  # (started, name, outcome) outcome = status code or exception name
    lock = threading.Lock()

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            n = 0
            refused = 0
            while refused < 3 and not (signalled.is_set() and time.monotonic() > sig_at[0] + 10):
                name = f"load-{worker}-{n}"
                n += 1
                started = time.monotonic()
                try:
                    outcome = http.post("/items", json={"name": name},
                                        headers={"Prefer": "return=minimal"}).status_code
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                    refused += isinstance(exc, httpx.ConnectError)
                    time.sleep(0.05)
                with lock:
                    results.append((started, name, outcome))

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 200, 20, "load to build up")
    sig_at[0] = time.monotonic()
    signalled.set()
    os.kill(server.pid, signal.SIGTERM)
    try:
        code = server.proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {EXIT_TIMEOUT:g} s of SIGTERM:\n{excerpt(server)}") from None
    for t in threads:
        t.join(30)
    assert code == 0, f"SIGTERM must end in exit 0 after the final sync, got {code}:\n{excerpt(server)}"
    before = [r for r in results if r[0] < sig_at[0]]
    broken = [r for r in before if r[2] != 201]
    assert not broken, (f"{len(broken)} of {len(before)} requests started before SIGTERM did not "
                        f"finish with 201: {broken[:5]}")
    after_errors = {r[2] for r in results if r[0] >= sig_at[0] and r[2] not in (201, 503)}
    # A client that connects while the server stops is refused, or — its connection still
    # in the kernel's backlog when the listener shut — reset before any byte of an answer.
    # Either way its write must not have happened: no client may be left guessing.
    assert after_errors <= UNSERVED_ERRORS, f"after SIGTERM: {after_errors}"
    unserved = {name for _, name, outcome in results if outcome in UNSERVED_ERRORS}
    acked = {name for _, name, outcome in results if outcome == 201}
    after = [r[2] for r in results if r[0] >= sig_at[0]]
    print(f"{len(before)} requests before SIGTERM, {len(after)} after: "
          f"{ {o: after.count(o) for o in set(after)} }")
    restored = tmp_path / "restored.db"
    replica.restore(litestream_bin, restored)
    replicated = {name for _, name in db_rows(restored)}
    missing = acked - replicated
    assert not missing, f"{len(missing)} acknowledged writes are not in the replica: {sorted(missing)[:5]}"
    happened = unserved & ({name for _, name in db_rows(db)} | replicated)
    assert not happened, (f"writes answered with a reset were made: "
                          f"{[(round(t - sig_at[0], 3), n, o) for t, n, o in results if n in happened][:5]}\n{excerpt(server)}")


# -- 5. configuration errors -----------------------------------------------------------------

CONFIG_ERRORS = {
    # case: (config text or None for "no file", fragments the one error line must name)
    "db-not-in-config": ("dbs:\n  - path: {other}\n    replica: {{url: 'file://{tmp}/r'}}\n",
                         ("dbs", "app.db")),
    "missing-config-file": (None, ("missing.yml",)),
    "invalid-yaml": ("dbs:\n  - path: {db}\n    replica: {{url: 'file://{tmp}/r'\n",
                     ("litestream.yml",)),
    "bad-retry-budget": ("dbs:\n  - path: {db}\n    replica: {{url: 'file://{tmp}/r', "
                         "retry-budget: soon}}\n", ("retry-budget",)),
    "no-replica": ("dbs:\n  - path: {db}\n", ("replica",)),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
@pytest.mark.parametrize("via_env", [False, True], ids=["flags", "env"])
def test_config_errors_are_one_line_and_nothing_listens(case, via_env, tmp_path, servers):
    db = tmp_path / "app.db"
    make_db(db)
    text, fragments = CONFIG_ERRORS[case]
    config = tmp_path / ("missing.yml" if text is None else "litestream.yml")
    if text is not None:
        config.write_text(text.format(db=db, tmp=tmp_path, other=tmp_path / "other.db"))
    before = db.read_bytes()
    assert_refused(servers.start(db, config, wait=False, via_env=via_env), *fragments)
    assert db.read_bytes() == before


def test_replication_enabled_without_config_is_refused(tmp_path, servers):
    db = tmp_path / "app.db"
    make_db(db)
    assert_refused(servers.start(db, None, "--replication-enabled", wait=False),
                   "--replication-config")
