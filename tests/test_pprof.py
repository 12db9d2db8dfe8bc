"""--pprof-addr: the supervisor's /debug/pprof/ analogue (off by default)."""
from __future__ import annotations

import threading

import apsw
import httpx
import pytest

from sqlite_rest import pprof
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
    for link in ("goroutine", "profile?seconds=", "heap", "py-spy dump --pid"):
        assert link in r.text


def test_thread_stacks_show_the_supervisor_threads(server):
    r = httpx.get(server.pprof_url + "/debug/pprof/goroutine")
    assert r.status_code == 200
    assert "[commit-listener]" in r.text and "[MainThread]" in r.text
    assert "_receive_commits" in r.text  # a real stack, not just names
    assert httpx.get(server.pprof_url + "/debug/pprof/threads").text.startswith("threads: ")


def test_cpu_profile(server):
    r = httpx.get(server.pprof_url + "/debug/pprof/profile", params={"seconds": 1}, timeout=30)
    assert r.status_code == 200
    assert r.text.startswith("CPU profile of the sqlite-rest supervisor")
    assert "flat%" in r.text and "top stacks" in r.text
    assert httpx.get(server.pprof_url + "/debug/pprof/profile?seconds=abc").status_code == 400


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
    from sqlite_rest.server import ServeOptions, Supervisor

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
        report = pprof.cpu_profile(0.5, hz=200)
    finally:
        stop.set()
        worker.join()
    assert "burn_cpu_in_a_named_function" in report


def test_unknown_path_is_404(server):
    assert httpx.get(server.pprof_url + "/debug/pprof/nope").status_code == 404
    assert httpx.get(server.metrics_url + "/debug/pprof/").status_code == 404
