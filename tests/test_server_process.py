"""The real `sqlite-rest serve` process: supervisor + granian workers (design/process-model.md)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import apsw
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sqlite_rest.process.http_server import DRAIN_SIGNAL
from tests.plugins.server import free_port


SLOW_ROWS = 3_000_000  # a recursive CTE this long takes ~1 s: an "in-flight" request


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "data.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
    conn.execute(f"CREATE VIEW slow AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
                 f"FROM c WHERE x < {SLOW_ROWS}) SELECT max(x) AS m FROM c")
    with conn:
        conn.executemany("INSERT INTO items VALUES(?,?,?,?)",
                         ((i, f"item-{i}", i / 2, i % 10) for i in range(1, 101)))
    conn.close()
    return path


def metric_value(metrics_url, name, **labels) -> float:
    text = httpx.get(metrics_url + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_two_workers_serve_requests_and_metrics_add_up(serve, db):
    srv = serve(db, "--security-allow-table", "items,slow", "--workers", "2")
    assert wait_for(lambda: len(srv.worker_pids()) == 2)
    n = 40
    for i in range(1, n + 1):
        # a fresh connection each time, so both workers get requests
        r = httpx.get(f"{srv.base_url}/items", params={"id": f"eq.{i}"}, headers={"Connection": "close"})
        assert r.status_code == 200 and r.json()[0]["id"] == i
    r = httpx.post(f"{srv.base_url}/items", json={"name": "new", "price": 1.5, "qty": 1})
    assert r.status_code == 201
    # a worker writes its counts within metrics.FLUSH_INTERVAL_S of a request
    assert wait_for(lambda: metric_value(
        srv.metrics_url, "sqlite_rest_http_requests_total", target="items",
        operation="queryTableOrView", http_code="200") == n and metric_value(
        srv.metrics_url, "sqlite_rest_http_requests_total", operation="insertTable",
        http_code="201") == 1 and metric_value(
        srv.metrics_url, "sqlite_rest_http_request_duration_milliseconds_count",
        target="items", operation="queryTableOrView") == n, timeout=5)
    assert metric_value(srv.metrics_url, "sqlite_rest_database_size_bytes") > 0
    assert httpx.get(srv.metrics_url + "/live").status_code == 200
    ready = httpx.get(srv.metrics_url + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    status = httpx.get(srv.metrics_url + "/status").json()
    assert status["ready"] is True and status["checks"] == {"http": True}
    assert status["process"]["pid"] == srv.pid and status["http"]["workers"] == 2


def test_without_replication_workers_signal_no_commits(serve, db):
    """Commit signals wake the replicator; with none, workers are not given the socket, so a
    write flood costs no datagram per commit nor a wake-up of the supervisor (#11: ~7 % of a
    core in the supervisor under a POST flood)."""
    srv = serve(db, "--security-allow-table", "items")
    assert wait_for(lambda: len(srv.worker_pids()) == 2)
    for pid in srv.worker_pids():
        with open(f"/proc/{pid}/environ", "rb") as f:
            names = {entry.split(b"=", 1)[0] for entry in f.read().split(b"\0")}
        assert b"SQLITEREST_COMMIT_SOCKET" not in names
    for i in range(5):
        assert httpx.post(f"{srv.base_url}/items", json={"name": f"c{i}"}).status_code == 201
    httpx.patch(f"{srv.base_url}/items", params={"id": "eq.1"}, json={"qty": 7})
    assert httpx.get(f"{srv.base_url}/items", params={"name": "like.c*"}).json()[4]["name"] == "c4"
    status = httpx.get(srv.metrics_url + "/status").json()
    assert status["commit_signals"] == {"received": 0}


def test_sigterm_finishes_in_flight_requests_and_exits_zero(serve, db):
    srv = serve(db, "--security-allow-table", "items,slow")
    result = {}

    def slow_request():
        try:
            result["response"] = httpx.get(f"{srv.base_url}/slow", timeout=30)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    httpx.get(f"{srv.base_url}/slow", timeout=30)  # warm: both the worker and the page cache
    thread = threading.Thread(target=slow_request)
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)
    os.kill(srv.pid, signal.SIGTERM)
    thread.join(30)
    assert "error" not in result, result
    assert result["response"].status_code == 200
    assert result["response"].json() == [{"m": SLOW_ROWS}]
    assert srv.proc.wait(30) == 0
    assert time.monotonic() - started < 30
    logs = srv.logs()
    assert "received SIGTERM" in logs and "sqlite-rest stopped" in logs
    # nothing left behind: the HTTP port is free again
    assert _port_free(srv.http_port)


def test_killed_worker_is_replaced_and_counts_survive(serve, db):
    srv = serve(db, "--security-allow-table", "items")
    assert wait_for(lambda: len(srv.worker_pids()) == 2)
    for _ in range(10):
        httpx.get(f"{srv.base_url}/items?limit=1", headers={"Connection": "close"})
    # counts a worker has written survive its death (it writes within FLUSH_INTERVAL_S)
    assert wait_for(lambda: metric_value(srv.metrics_url, "sqlite_rest_http_requests_total",
                                         target="items") == 10, timeout=5)
    before = set(srv.worker_pids())
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(set(srv.worker_pids()) - before) == 1 and
                    len(srv.worker_pids()) == 2, timeout=20), srv.logs()
    assert victim not in srv.worker_pids()
    for _ in range(10):
        assert httpx.get(f"{srv.base_url}/items?limit=1",
                         headers={"Connection": "close"}).status_code == 200
    assert "died; replacing it" in srv.logs()
    # the dead worker's counts are kept: 20 requests in all (the last ones written within
    # metrics.FLUSH_INTERVAL_S)
    assert wait_for(lambda: metric_value(srv.metrics_url, "sqlite_rest_http_requests_total",
                                         target="items") == 20, timeout=5)
    assert srv.proc.poll() is None


def test_worker_crash_loop_stops_the_server_with_exit_1(serve, db):
    srv = serve(db, "--security-allow-table", "items", "--workers", "1")
    assert wait_for(lambda: len(srv.worker_pids()) == 1)
    first = srv.worker_pids()[0]
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: srv.worker_pids() and srv.worker_pids()[0] != first, timeout=10)
    os.kill(srv.worker_pids()[0], signal.SIGKILL)  # dies again within ~5 s: a crash loop
    assert srv.proc.wait(30) == 1
    logs = srv.logs()
    assert "HTTP server exited unexpectedly" in logs


def test_supervisor_killed_takes_the_http_server_with_it(serve, db):
    srv = serve(db, "--security-allow-table", "items")
    http_server = [p for p in _children(srv.pid)]
    assert http_server
    os.kill(srv.pid, signal.SIGKILL)
    srv.proc.wait(10)
    assert wait_for(lambda: not any(_alive(p) for p in http_server), timeout=30)
    assert wait_for(lambda: _port_free(srv.http_port), timeout=30)


class _Flood:
    """Writes in flight while a test kills something (a thread POSTing until stopped)."""

    def __init__(self, base_url):
        self.base_url, self.stop, self.acked = base_url, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        with httpx.Client(base_url=self.base_url, timeout=5) as http:
            while not self.stop.is_set():
                try:
                    if http.post("/items", json={"name": "x"}).status_code == 201:
                        self.acked += 1
                except httpx.HTTPError:
                    time.sleep(0.01)

    def __enter__(self):
        wait_for(lambda: self.acked > 20, timeout=30)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def test_killed_supervisor_takes_every_http_process_at_once(serve, db):
    """#9: a drained, graceful stop kept answering (and committing) writes with no supervisor,
    so no replicator; now every HTTP process is SIGKILLed with it, under load too."""
    srv = serve(db, "--security-allow-table", "items")
    with _Flood(srv.base_url):
        http_processes = [p for child in _children(srv.pid) for p in (child, *_children(child))]
        assert len(http_processes) == 3  # the granian master and two workers
        os.kill(srv.pid, signal.SIGKILL)
        srv.proc.wait(10)
        assert wait_for(lambda: not any(_alive(p) for p in http_processes), timeout=5)
    assert "Shutting down granian" not in srv.logs()  # killed, not drained


def test_killed_http_server_takes_its_workers_and_fails_the_supervisor(serve, db):
    srv = serve(db, "--security-allow-table", "items")
    with _Flood(srv.base_url):
        [master] = _children(srv.pid)
        workers = _children(master)
        assert len(workers) == 2
        os.kill(master, signal.SIGKILL)
        assert wait_for(lambda: not any(_alive(p) for p in workers), timeout=5)
        assert srv.proc.wait(60) == 1
    assert "HTTP server exited unexpectedly" in srv.logs()


def test_a_banner_says_where_it_serves_and_auth_warns_once(serve, db):
    """#10: the URL was buried in JSON on stderr, and the --auth-disabled warning came once
    per process."""
    srv = serve(db, "--security-allow-table", "items")
    wait_for(lambda: "serving http://" in srv.logs(), timeout=30)
    logs = srv.logs()
    assert f"serving http://127.0.0.1:{srv.http_port}/ (2 workers;" in logs
    assert logs.count("AUTHENTICATION IS DISABLED") == 1


def test_an_allow_list_entry_naming_no_table_is_warned_about(serve, db):
    """#10: accepted silently before. Warned once at start, and when a schema change makes an
    allow-listed table go away."""
    srv = serve(db, "--security-allow-table", "items,itmes")
    wait_for(lambda: "serving http://" in srv.logs(), timeout=30)
    logs = srv.logs()
    assert logs.count("names tables the database does not have: itmes") == 1
    conn = apsw.Connection(str(db))
    conn.execute("DROP TABLE items")
    conn.close()
    for _ in range(4):  # every worker notices the change on its next request
        httpx.get(srv.base_url + "/items")
    wait_for(lambda: "schema no longer has: items" in srv.logs(), timeout=10)


def test_busy_port_is_a_one_line_error(db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
        result = subprocess.run(
            [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", str(db),
             "--auth-disabled", "--http-addr", f"127.0.0.1:{port}", "--metrics-addr", ""],
            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "cannot be bound" in result.stderr


def test_http_server_that_cannot_start_is_reported(db, tmp_path):
    """A child that dies during startup: exit 1, the cause on the last line, nothing left."""
    hook = tmp_path / "hook"
    hook.mkdir()
    # sitecustomize runs in every interpreter on PYTHONPATH; it breaks only the HTTP child
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('SQLITEREST_CHILD_SPEC'):\n"
        "    sys.stderr.write('simulated HTTP server failure\\n'); sys.stderr.flush(); os._exit(3)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env.get('PYTHONPATH', '')}"
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", str(db), "--auth-disabled",
         "--security-allow-table", "items", "--http-addr", f"127.0.0.1:{port}",
         "--metrics-addr", ""], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: HTTP server failed to start (exit code 3) (hint: see the log lines above)"
    assert _port_free(port)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _port_free(port):
    """No listener on the port (TIME_WAIT leftovers of closed connections are fine)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_supervisor_hooks_in_process(db, tmp_path):
    """The seams the replicator will use: before/after hooks, commit callbacks, request_stop."""
    from sqlite_rest.config import ServerConfig
    from sqlite_rest.process.supervisor import ServeOptions, Supervisor

    port = free_port()
    supervisor = Supervisor(
        ServerConfig(db_dsn=str(db), allow_tables=("items",), auth_disabled=True),
        ServeOptions(http_addr=f"127.0.0.1:{port}", metrics_addr="", workers=1))
    events = []
    commits = []
    supervisor.before_http_start.append(lambda: events.append("before"))
    supervisor.after_http_stop.append(lambda: events.append("after"))  # None: not a failure
    supervisor.on_commit_signal(commits.append)
    supervisor.health.add_ready_check("replication", lambda: True)

    def client():
        try:
            assert wait_for(lambda: supervisor.health.ready(), timeout=30)
            for i in range(3):
                r = httpx.post(f"http://127.0.0.1:{port}/items", json={"name": f"h{i}"})
                events.append(r.status_code)
            wait_for(lambda: sum(commits) == 3, timeout=10)
        finally:
            supervisor.request_stop("replication gave up", failed=True)

    thread = threading.Thread(target=client)
    thread.start()
    code = supervisor.run()  # signal handlers need the main thread
    thread.join(30)
    assert events == ["before", 201, 201, 201, "after"]
    assert sum(commits) == 3
    assert code == 1  # request_stop(failed=True)
    assert _port_free(port)


def test_ctrl_c_to_the_whole_process_group_exits_zero(db):
    """A terminal's Ctrl-C hits the supervisor, the HTTP server and every worker at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", str(db), "--auth-disabled",
         "--security-allow-table", "items", "--http-addr", f"127.0.0.1:{port}",
         "--metrics-addr", "", "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own process group, so killpg cannot hit pytest
    try:
        assert wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/items?limit=1").status_code == 200
                        if not _port_free(port) else False, timeout=30)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, out
        assert "received SIGINT" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _port_free(port)


def test_http_socket_like_the_go_server(db, tmp_path):
    sock = tmp_path / "api.sock"
    sock.write_bytes(b"")  # a regular file in the way is refused, not deleted
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    args = [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", str(db),
            "--auth-disabled", "--security-allow-table", "items", "--metrics-addr", "",
            "--workers", "1"]
    refused = subprocess.run(args + ["--http-socket", str(sock)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 1 and "is not a socket" in refused.stderr
    sock.unlink()
    proc = subprocess.Popen(args, env={**env, "SQLITEREST_HTTP_SOCKET": str(sock)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)))
        assert wait_for(lambda: sock.exists() and _uds_answers(client), timeout=30)
        r = client.get("http://sqlite-rest/items", params={"id": "eq.3"})
        assert r.status_code == 200 and r.json()[0]["id"] == 3
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _uds_answers(client) -> bool:
    try:
        return client.get("http://sqlite-rest/items?limit=1").status_code == 200
    except httpx.TransportError:
        return False


def test_sigterm_to_every_process_at_once_exits_zero(serve, db):
    """systemd's default KillMode=control-group sends SIGTERM to every process of the unit."""
    srv = serve(db, "--security-allow-table", "items")
    assert wait_for(lambda: len(srv.worker_pids()) == 2)
    everyone = [srv.pid, *_children(srv.pid), *srv.worker_pids()]
    for pid in everyone:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # already stopped by its parent's SIGTERM
    assert srv.proc.wait(30) == 0, srv.logs()
    assert wait_for(lambda: not any(_alive(p) for p in everyone), timeout=10)


def test_worker_given_drain_and_sigterm_together_stops(serve, db):
    """A cgroup-wide SIGTERM lands while the supervisor's drain signal is still pending: the
    kernel then hands SIGTERM to a non-main thread, and the stop must still happen, once
    (granian 2.8.7 hangs a worker whose stop event is set twice concurrently)."""
    srv = serve(db, "--security-allow-table", "items", "--workers", "4")
    assert wait_for(lambda: len(srv.worker_pids()) == 4)
    workers = srv.worker_pids()
    for pid in workers:
        os.kill(pid, DRAIN_SIGNAL)
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not any(_alive(p) for p in workers), timeout=15), srv.logs()
    assert wait_for(lambda: len(srv.worker_pids()) == 4, timeout=15), srv.logs()
    started = time.monotonic()
    assert srv.stop() == 0, srv.logs()
    assert time.monotonic() - started < 10, srv.logs()


def test_a_draining_worker_asks_clients_to_close(serve, db):
    srv = serve(db, "--security-allow-table", "items", "--workers", "2")
    assert wait_for(lambda: len(srv.worker_pids()) == 2)
    before = httpx.get(srv.base_url + "/items?limit=1")
    assert before.status_code == 200 and before.headers.get("connection") != "close"
    for pid in srv.worker_pids():
        os.kill(pid, DRAIN_SIGNAL)
    time.sleep(0.5)
    for _ in range(4):  # whichever worker answers
        r = httpx.get(srv.base_url + "/items?limit=1")
        assert r.status_code == 200 and r.headers["connection"] == "close", r.headers


_RELAY_CHILD = """
import signal, threading, sys
from sqlite_rest.process.http_server import relay_signals_from_any_thread
handled = threading.Event()
signal.signal(signal.SIGUSR2, lambda signum, frame: handled.set())
relay_signals_from_any_thread([signal.SIGUSR2])
# From here the main thread never takes SIGUSR2: the kernel hands it to another thread,
# as it does when the main thread already has a signal pending.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
print("ready", flush=True)
handled.wait()
print("handled", flush=True)
"""


def test_signal_taken_by_another_thread_still_runs_its_handler():
    """A handler must run while the main thread sleeps in Event.wait(), whichever thread the
    kernel delivered the signal to (the cause of a hung shutdown seen in CI)."""
    proc = subprocess.Popen([sys.executable, "-c", _RELAY_CHILD], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGUSR2)
        assert proc.wait(10) == 0
        assert proc.stdout.read().strip() == "handled"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_health_ready_names_the_failing_checks():
    import json as json_module

    from sqlite_rest.observability.health import Health

    health = Health()
    assert health.ready_route({})[0] == 200  # nothing registered: ready
    health.add_ready_check("http", lambda: True)
    health.add_ready_check("replication", lambda: False)
    health.add_ready_check("restore", lambda: 1 / 0)  # a raising check is "not ready"
    status, ctype, body = health.ready_route({})
    assert status == 503 and ctype == "application/json"
    assert json_module.loads(body) == {"status": "unavailable", "failing": ["replication", "restore"]}
    health.add_status("replication", lambda: {"lag_seconds": 0.5})
    status_body = json_module.loads(health.status_route({})[2])
    assert status_body["ready"] is False and status_body["replication"] == {"lag_seconds": 0.5}
    assert health.live_route({})[0] == 200


def test_api_settings_reach_the_workers(serve, db):
    """Flags that configure the API (ServerConfig) are applied inside every worker."""
    srv = serve(db, "--security-allow-table", "items", "--max-rows", "5",
                "--refuse-filterless-writes", "--max-body-bytes", "200")
    assert len(httpx.get(f"{srv.base_url}/items").json()) == 5
    assert httpx.delete(f"{srv.base_url}/items").status_code == 400
    assert httpx.post(f"{srv.base_url}/items", json=[{"name": "x" * 300}]).status_code == 413
    assert httpx.get(f"{srv.base_url}/items", params={"id": "eq.7"}).json()[0]["id"] == 7


def test_workers_wait_for_the_replication_txid(db):
    """With replication on, a write's response names the position that contains it. The
    replicator's side of the seam is played by a thread answering on the real listener."""
    from sqlite_rest.config import ServerConfig
    from sqlite_rest.process.supervisor import ServeOptions, Supervisor

    port = free_port()
    supervisor = Supervisor(
        ServerConfig(db_dsn=str(db), allow_tables=("items",), auth_disabled=True),
        ServeOptions(http_addr=f"127.0.0.1:{port}", metrics_addr="", workers=2,
                     wait_for_replication_txid=True))
    position = {"txid": 0}

    def answer(n):  # runs on the listener thread right after it drained n datagrams
        position["txid"] += n
        supervisor.commit_listener.reply(supervisor.commit_listener.take_waiters(),
                                         position["txid"])

    supervisor.on_commit_signal(answer)
    headers = []

    def client():
        try:
            assert wait_for(lambda: supervisor.health.ready(), timeout=30)
            for i in range(3):
                r = httpx.post(f"http://127.0.0.1:{port}/items", json={"name": f"t{i}"})
                assert r.status_code == 201
                headers.append(r.headers.get("X-Replication-Txid"))
            r = httpx.get(f"http://127.0.0.1:{port}/items?limit=1")
            headers.append(r.headers.get("X-Replication-Txid"))
        finally:
            supervisor.request_stop("test done")

    thread = threading.Thread(target=client)
    thread.start()
    assert supervisor.run() == 0
    thread.join(30)
    assert headers == [f"{1:016x}", f"{2:016x}", f"{3:016x}", None]


def test_replication_enabled_serve_end_to_end(serve, db, tmp_path):
    """The wiring of cli._wire_replication with a file:// replica: ready after the first sync,
    writes carry the TXID that contains them, SIGTERM does a final sync and exits 0."""
    replica = tmp_path / "replica"
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replica:\n      url: file://{replica}\n")
    srv = serve(db, "--security-allow-table", "items", env={
        "SQLITEREST_REPLICATION_ENABLED": "true", "SQLITEREST_REPLICATION_CONFIG": str(config)})
    assert wait_for(lambda: httpx.get(srv.metrics_url + "/ready").status_code == 200, timeout=30), \
        srv.logs()
    txids = []
    for i in range(3):
        r = httpx.post(f"{srv.base_url}/items", json={"name": f"r{i}"}, timeout=10)
        assert r.status_code == 201
        txids.append(int(r.headers["X-Replication-Txid"], 16))
    assert txids == sorted(txids) and txids[0] >= 1
    status = httpx.get(srv.metrics_url + "/status").json()
    assert status["checks"] == {"http": True, "replication": True}
    # The header may name the round that starts next (known at commit, no wait): it is
    # written within moments.
    assert wait_for(lambda: int(httpx.get(srv.metrics_url + "/status").json()["replication"]
                                ["local_txid"], 16) >= txids[-1], timeout=5)
    assert srv.stop() == 0, srv.logs()
    assert any(replica.rglob("*.ltx"))


def test_keep_alive_clients_never_see_a_dropped_connection_on_sigterm(serve, db):
    """Drain before stop: after SIGTERM the workers answer with `Connection: close` for
    DRAIN_S, so clients leave their keep-alive connections before the server closes them.
    (A connection opened in the last milliseconds before the workers stop can still be closed
    unanswered: it was still in the listener's backlog when the listener shut. Each client
    loses at most that one request, and it was never served.)"""
    from sqlite_rest.process.supervisor import DRAIN_S

    srv = serve(db, "--security-allow-table", "items")
    outcomes = []
    stop_at = []
    lock = threading.Lock()

    def hammer(client: int):
        with httpx.Client(base_url=srv.base_url, timeout=10) as http:
            while not stop_at or time.monotonic() < stop_at[0] + 5:
                started = time.monotonic()
                try:
                    r = http.get("/items?limit=1")
                    outcome = (r.status_code, r.headers.get("connection"))
                except httpx.ConnectError:
                    return  # the listener is closed: the clean end
                except httpx.TransportError as exc:
                    outcome = (type(exc).__name__, client)
                with lock:
                    outcomes.append((started, outcome))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(outcomes) > 100, timeout=20)
    stop_at.append(time.monotonic())
    os.kill(srv.pid, signal.SIGTERM)
    for t in threads:
        t.join(40)
    assert srv.proc.wait(30) == 0
    # requests sent before or during most of the drain are all answered
    in_drain = [o for ts, o in outcomes if ts < stop_at[0] + 0.8 * DRAIN_S]
    errors = [o for o in in_drain if o[0] != 200]
    assert not errors, errors[:5]
    late_errors = [o for ts, o in outcomes if ts >= stop_at[0] + 0.8 * DRAIN_S and o[0] != 200]
    clients = [client for _, client in late_errors]
    assert len(clients) == len(set(clients)), f"a client lost more than one request: {late_errors}"
    after = [o for ts, o in outcomes if ts > stop_at[0]]
    assert ("close" in {o[1] for o in after}), "no response asked the client to close"
    assert "draining" in srv.logs()


def test_api_ready_follows_the_supervisor_checks(db):
    """/ready on the API port agrees with the supervisor (e.g. replication unhealthy -> 503)."""
    from sqlite_rest.config import ServerConfig
    from sqlite_rest.process.supervisor import ServeOptions, Supervisor

    port = free_port()
    supervisor = Supervisor(
        ServerConfig(db_dsn=str(db), allow_tables=("items",), auth_disabled=True),
        ServeOptions(http_addr=f"127.0.0.1:{port}", metrics_addr="", workers=1))
    healthy = {"replication": True}
    supervisor.health.add_ready_check("replication", lambda: healthy["replication"])
    seen = []

    def api_ready():
        return httpx.get(f"http://127.0.0.1:{port}/ready").status_code

    def client():
        try:
            assert wait_for(lambda: supervisor.health.ready(), timeout=30)
            seen.append(wait_for(lambda: api_ready() == 200, timeout=10))
            healthy["replication"] = False
            seen.append(wait_for(lambda: api_ready() == 503, timeout=10))
            healthy["replication"] = True
            seen.append(wait_for(lambda: api_ready() == 200, timeout=10))
        finally:
            supervisor.request_stop("test done")

    thread = threading.Thread(target=client)
    thread.start()
    assert supervisor.run() == 0
    thread.join(30)
    assert seen == [True, True, True]
