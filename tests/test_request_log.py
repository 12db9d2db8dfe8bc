"""The request log and the request timer (observability/middleware.py, logs.py): one line per
request with its fields, written in batches by one thread, never lost at exit."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import apsw
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from sqlite_rest.observability.logs import REQUEST_LOGGER, _LineWriter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(tmp_path, caplog):
    db = tmp_path / "r.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);"
                 "INSERT INTO items VALUES (1, 'naïve')")
    conn.close()
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    return create_app(ServerConfig(db_dsn=str(db), allow_tables=("items",), auth_disabled=True))


def request_records(caplog) -> list:
    return [r for r in caplog.records if r.name == REQUEST_LOGGER]


def test_one_line_per_request_with_its_fields(app, caplog):
    client = app.test_client()
    ok = client.get("/items?id=eq.1", environ_base={"REMOTE_ADDR": "127.0.0.7"})
    created = client.post("/items", json={"name": "b"})
    missing = client.get("/n%C3%B6pe")
    client.get("/live")
    lines = request_records(caplog)
    assert [(r.method, r.path, r.status) for r in lines] == [
        ("GET", "/items", 200), ("POST", "/items", 201), ("GET", "/nöpe", 404), ("GET", "/live", 200)]
    assert lines[0].bytes == len(ok.data) > 0 and lines[1].bytes == len(created.data) == 0
    assert lines[2].bytes == len(missing.data) > 0
    assert lines[0].remote == "127.0.0.7"
    assert all(0 < r.duration_ms < 10_000 for r in lines)


def test_metrics_count_table_requests_only(app):
    client = app.test_client()
    client.get("/items")
    client.get("/items")
    client.get("/nope")
    client.get("/live")
    client.get("/ready")
    metrics = app.extensions["sqlite_rest.metrics"]
    metrics.flush()  # tallies are written 50 ms after a request, or when the registry is read
    counts = {tuple(sorted(s.labels.items())): s.value
              for family in metrics.requests_total.collect() for s in family.samples
              if s.name.endswith("_total")}
    assert counts == {
        (("http_code", "200"), ("operation", "queryTableOrView"), ("target", "items")): 2,
        (("http_code", "404"), ("operation", "queryTableOrView"), ("target", "(unknown)")): 1,
    }


def test_line_writer_batches_every_line_from_many_threads():
    read_fd, write_fd = os.pipe()
    writer = _LineWriter(write_fd)
    threads = [threading.Thread(target=lambda t=t: [writer.put(b"%d-%d\n" % (t, i))
                                                    for i in range(500)]) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    data = b""
    os.set_blocking(read_fd, False)
    while data.count(b"\n") < 4000 and time.monotonic() < deadline:
        time.sleep(writer.FLUSH_INTERVAL)
        try:
            data += os.read(read_fd, 1 << 20)
        except BlockingIOError:
            pass
    assert sorted(data.splitlines()) == sorted(b"%d-%d" % (t, i) for t in range(8)
                                               for i in range(500))
    os.close(read_fd)
    os.close(write_fd)


def test_pending_lines_are_written_at_exit(tmp_path):
    """A worker that exits right after its last request still logs it."""
    script = textwrap.dedent("""
        from sqlite_rest.observability.logs import _LineWriter
        _LineWriter.FLUSH_INTERVAL = 3600  # only the exit flush can write these
        w = _LineWriter(1)
        for i in range(3):
            w.put(b'{"n": %d}\\n' % i)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                         cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert [json.loads(line)["n"] for line in out.stdout.splitlines()] == [0, 1, 2]


def test_the_root_handler_writes_to_stderr_as_it_is_at_each_record(monkeypatch):
    """``cli.main()`` run in-process (tests) configures logging while ``sys.stderr`` is a
    captured stream, closed when the test ends: a handler bound to that stream failed every
    later record of the session ("--- Logging error ---", I/O operation on closed file)."""
    import io

    from sqlite_rest.observability import logs

    captured, later = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    logs.configure(logs.DEFAULT_LOG_LEVEL)
    logging.getLogger("sqlite_rest.test").info("during")
    captured.close()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("sqlite_rest.test").info("after")
    assert "Logging error" not in later.getvalue()
    assert [json.loads(line)["msg"] for line in later.getvalue().splitlines()] == ["after"]
