"""--pprof-addr: the supervisor's /debug/pprof/ analogue (off by default)."""
from __future__ import annotations

import threading

import apsw
import httpx
import pytest

from sqlite_rest.observability import pprof
from tests.plugins.background import Background
from tests.plugins.server import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("pprof") / "p.db"
    apsw.Connection(str(db)).execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    srv = start_server(db, "--security-allow-table", "t", pprof=True)
    try:
        yield srv
    finally:
        srv.stop()


def test_index(server):
    r = httpx.get(server.pprof_url + "/debug/pprof/")
    assert r.status_code == 200
    for link in ("goroutine", "profile?seconds=", "heap", "target=supervisor|all"):
        assert link in r.text


def test_thread_stacks_show_the_supervisor_threads(server):
    r = httpx.get(server.pprof_url + "/debug/pprof/goroutine")
    assert r.status_code == 200
    assert "[commit-listener]" in r.text and "[MainThread]" in r.text
    assert "_receive_commits" in r.text  # a real stack, not just names
    assert httpx.get(server.pprof_url + "/debug/pprof/threads").text.startswith("threads: ")


def test_cpu_profile_of_the_supervisor_as_text(server):
    r = httpx.get(server.pprof_url + "/debug/pprof/profile",
                  params={"seconds": 1, "target": "supervisor", "format": "text"}, timeout=30)
    assert r.status_code == 200
    assert r.text.startswith(f"CPU profile of supervisor pid {server.pid}")
    assert "flat%" in r.text and "top stacks" in r.text
    for bad in ("seconds=abc", "target=nobody", "format=svg"):
        assert httpx.get(server.pprof_url + "/debug/pprof/profile?" + bad).status_code == 400


def load(server):
    """GET requests in a loop, so the workers have something to show."""
    def run(stop):
        with httpx.Client(base_url=server.base_url) as http:
            while not stop.is_set():
                http.get("/t?id=eq.1")
    return Background(run)


def test_workers_profile_as_folded_stacks(server):
    """#10: the profile covered only the supervisor, in text no profiler reads. The workers
    (where requests run) answer now, in the format speedscope/flamegraph.pl/inferno open."""
    with load(server):
        r = httpx.get(server.pprof_url + "/debug/pprof/profile", params={"seconds": 2},
                      timeout=30)
    assert r.status_code == 200
    workers = set(server.worker_pids())
    seen = set()
    for line in r.text.splitlines():
        stack, count = line.rsplit(" ", 1)
        assert int(count) > 0
        root = stack.split(";")[0]
        assert root.startswith("worker pid "), line
        seen.add(int(root.split()[-1]))
    assert seen == workers
    assert "sqlite_rest/api/routes.py" in r.text  # the request path, sampled in a worker


def test_a_speedscope_profile_of_everything(server):
    with load(server):
        r = httpx.get(server.pprof_url + "/debug/pprof/profile",
                      params={"seconds": 1, "target": "all", "format": "speedscope"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = {p["name"].split(" ", 3)[0] + " " + p["name"].split(" ", 3)[1] for p in doc["profiles"]}
    assert {"supervisor pid", "worker pid"} <= names
    frames = len(doc["shared"]["frames"])
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled" and len(profile["samples"]) == len(profile["weights"])
        assert all(0 <= i < frames for sample in profile["samples"] for i in sample)


def test_heap(server):
    first = httpx.get(server.pprof_url + "/debug/pprof/heap").text
    assert "traced: current" in first and "gc counts" in first
    second = httpx.get(server.pprof_url + "/debug/pprof/heap").text
    assert "tracemalloc started now" not in second
    assert " B " in second  # at least one allocation site
    assert httpx.get(server.pprof_url + "/debug/pprof/heap?stop=1").text == "tracemalloc stopped\n"


def test_pprof_is_off_by_default(tmp_path):
    from sqlite_rest.cli import parse
    from sqlite_rest.config import ServerConfig
    from sqlite_rest.process.supervisor import ServeOptions, Supervisor

    assert parse(["serve"], {})[2]["pprof_addr"] == ""
    supervisor = Supervisor(ServerConfig(db_dsn=str(tmp_path / "x.db"), auth_disabled=True),
                            ServeOptions(http_addr="127.0.0.1:1"))
    assert supervisor.pprof_bind is None


def test_cpu_profile_finds_a_busy_thread():
    stop = threading.Event()

    def burn_cpu_in_a_named_function():
        while not stop.is_set():
            sum(i * i for i in range(1000))

    worker = threading.Thread(target=burn_cpu_in_a_named_function)
    worker.start()
    try:
        stacks = pprof.sample_stacks(0.5, hz=200)
    finally:
        stop.set()
        worker.join()
    assert "burn_cpu_in_a_named_function" in pprof.text_report(stacks, 0.5, 200)
    folded = pprof.collapsed(stacks)
    assert any(line.split(";")[1].startswith(worker.name) and "burn_cpu_in_a_named_function"
               in line for line in folded.splitlines())


def test_unknown_path_is_404(server):
    assert httpx.get(server.pprof_url + "/debug/pprof/nope").status_code == 404
    assert httpx.get(server.metrics_url + "/debug/pprof/").status_code == 404
