"""Which production WSGI server runs the workers? Measures the candidates on a minimal
Flask + apsw GET-by-primary-key app (the shape of sqlite-rest's hottest request), with wrk
(2 threads x 32 connections, 10 s, 127.0.0.1, random ids over 100,000 rows).

    python bench/bench_process_model.py [--runs 2] [--duration 10]

Candidates: granian (WSGI, N worker processes), gunicorn (sync and gthread workers), waitress
(one process, threads). Missing servers are skipped. The results are in design/process-model.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import parse_wrk  # noqa: E402

APP = textwrap.dedent("""
    import os, threading, apsw, orjson
    from flask import Flask, Response, request
    DB = os.environ["BENCH_DB"]
    _local = threading.local()
    def conn():
        c = getattr(_local, "c", None)
        if c is None:
            c = _local.c = apsw.Connection(DB, flags=apsw.SQLITE_OPEN_READWRITE)
            c.set_busy_timeout(5000)
        return c
    app = Flask(__name__)
    @app.get("/items")
    def items():
        v = int(request.args.get("id", "eq.1")[3:])
        cur = conn().execute("SELECT id, name, price, qty FROM items WHERE id = ?", (v,))
        cols = [d[0] for d in cur.getdescription()]
        return Response(orjson.dumps([dict(zip(cols, r)) for r in cur]),
                        content_type="application/json")
""")

LUA = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/items?id=eq." .. math.random(1, 100000))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def candidates(port: int, workers: int):
    bind = f"127.0.0.1:{port}"
    return {
        f"granian wsgi, {workers} workers": ["granian", "--interface", "wsgi", "--workers",
                                             str(workers), "--host", "127.0.0.1", "--port",
                                             str(port), "--no-log", "bench_app:app"],
        f"gunicorn sync, {workers} workers": ["gunicorn", "-w", str(workers), "-k", "sync",
                                              "-b", bind, "bench_app:app"],
        f"gunicorn gthread, {workers} workers x 4 threads": [
            "gunicorn", "-w", str(workers), "-k", "gthread", "--threads", "4", "-b", bind,
            "bench_app:app"],
        "waitress, 1 process x 8 threads": ["waitress-serve", f"--listen={bind}", "--threads=8",
                                            "bench_app:app"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pm-"))
    try:
        db = tmp / "items.db"
        conn = apsw.Connection(str(db))
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
        with conn:
            conn.executemany("INSERT INTO items VALUES(?,?,?,?)",
                             ((i, f"item-{i}", i * 0.5, i % 100) for i in range(1, 100_001)))
        conn.close()
        (tmp / "bench_app.py").write_text(APP)
        (tmp / "rand.lua").write_text(LUA)
        env = {**os.environ, "BENCH_DB": str(db)}
        port = free_port()
        for name, cmd in candidates(port, args.workers).items():
            if shutil.which(cmd[0]) is None:
                print(f"{name}: skipped ({cmd[0]} not installed)")
                continue
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}/items"
                for _ in range(100):
                    if subprocess.run(["curl", "-sf", url + "?id=eq.5"],
                                      capture_output=True).returncode == 0:
                        break
                    time.sleep(0.1)
                wrk = ["wrk", "-t2", "-c32", "--latency", "-s", str(tmp / "rand.lua")]
                subprocess.run(wrk + ["-d2s", url], capture_output=True)
                runs = [parse_wrk(subprocess.run(wrk + [f"-d{args.duration}s", url],
                                                 capture_output=True, text=True).stdout)
                        for _ in range(args.runs)]
                print(f"{name:45s} {statistics.median(r['rps'] for r in runs):8.0f} req/s  "
                      f"p50 {statistics.median(r['p50_ms'] for r in runs):6.2f} ms  "
                      f"p99 {statistics.median(r['p99_ms'] for r in runs):6.2f} ms")
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
