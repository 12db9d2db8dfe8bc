"""`sqlite-rest demo`: the README's first command — serve a demo DB replicated to a local
directory; delete the DB and it is restored from the replica on the next start."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(directory):
    http, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlite_rest.cli", "demo", str(directory),
         "--http-addr", f"127.0.0.1:{http}", "--metrics-addr", f"127.0.0.1:{metrics}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{metrics}/ready", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{http}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("demo did not become ready: " + proc.stdout.read())


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_serves_replicates_and_restores(tmp_path):
    directory = tmp_path / "demo"
    proc, url = start_demo(directory)
    try:
        books = httpx.get(f"{url}/books?select=title&author_id=eq.1&order=year").json()
        assert [b["title"] for b in books] == ["A Wizard of Earthsea", "The Left Hand of Darkness"]
        r = httpx.post(f"{url}/books", json={"title": "The Dispossessed", "author_id": 1,
                                             "year": 1974})
        assert r.status_code == 201 and len(r.headers["X-Replication-Txid"]) == 16
    finally:
        assert stop(proc) == 0
    for suffix in ("", "-wal", "-shm"):
        path = directory / f"demo.db{suffix}"
        if path.exists():
            os.unlink(path)
    proc, url = start_demo(directory)
    try:
        titles = [b["title"] for b in httpx.get(f"{url}/books?author_id=eq.1").json()]
        assert "The Dispossessed" in titles and len(titles) == 3
    finally:
        assert stop(proc) == 0
