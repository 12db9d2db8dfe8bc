"""HTTP benchmark of the real `sqlite-rest serve` with wrk.

Creates ``items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)`` with 100,000 rows,
starts the real server (CLI subprocess, 127.0.0.1, default flags + --auth-disabled), and runs
wrk (2 threads x 32 connections, 10 s by default) for each scenario several times, printing
req/s and p50/p99 latency per run and the medians.

    python bench/bench_http.py [--runs 3] [--duration 10] [--workers 2] [--scenario get_pk ...]

Targets on a 2-core machine: >= 5,000 req/s GET by PK, >= 2,500 GET 100 rows, >= 3,300 POST,
p99 <= 40 ms. Needs `wrk` on PATH (Debian: apt-get install wrk).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import apsw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugins.server import start_server  # noqa: E402

ROWS = 100_000

SCENARIOS = {
    # name: (wrk Lua script, description)
    "get_pk": ("""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/items?id=eq." .. math.random(1, %(rows)d))
end
""", "GET one row by primary key (random ids)"),
    "get_100": ("""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/items?id=gt." .. math.random(0, %(rows)d - 100) .. "&limit=100")
end
""", "GET 100 rows (random id range)"),
    "post": ("""
wrk.method = "POST"
wrk.body = '{"name":"bench","price":1.5,"qty":3}'
wrk.headers["Content-Type"] = "application/json"
""", "POST one row"),
}

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def make_db(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
    with conn:
        conn.executemany("INSERT INTO items VALUES(?,?,?,?)",
                         ((i, f"item-{i}", i * 0.25, i % 100) for i in range(1, ROWS + 1)))
    conn.close()


def parse_wrk(output: str) -> dict:
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = m.group(1).strip() if m else ""
    return result


def run_wrk(url: str, script: Path, args) -> dict:
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.duration}s",
           "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `serve` argument (repeatable), e.g. --server-arg=--log-level=-1")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk not found (hint: apt-get install wrk)", file=sys.stderr)
        return 1
    scenarios = args.scenario or list(SCENARIOS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    server = None
    try:
        db = tmp / "items.db"
        make_db(db)
        server = start_server(db, "--security-allow-table", "items", "--workers", args.workers,
                              *args.server_arg, metrics=False)
        print(f"sqlite-rest serve: {args.workers} workers, wrk -t{args.wrk_threads} "
              f"-c{args.connections} -d{args.duration}s, {args.runs} runs, cpus={os.cpu_count()}")
        summary = []
        for name in scenarios:
            template, description = SCENARIOS[name]
            script = tmp / f"{name}.lua"
            script.write_text(template % {"rows": ROWS})
            # warm-up: every worker thread opens its connections, statement caches fill
            warm = argparse.Namespace(**{**vars(args), "duration": 2})
            url = server.base_url + "/items"  # request() overrides the path for GETs
            run_wrk(url, script, warm)
            runs = []
            for i in range(args.runs):
                r = run_wrk(url, script, args)
                runs.append(r)
                print(f"  {name:8s} run {i + 1}: {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non2xx']}"
                      + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""))
            med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
            summary.append((name, description, med, sum(r["non2xx"] for r in runs)))
        print("\nmedians:")
        for name, description, med, non2xx in summary:
            print(f"  {name:8s} {med['rps']:9.0f} req/s  p50 {med['p50_ms']:6.2f} ms  "
                  f"p99 {med['p99_ms']:6.2f} ms  non-2xx {non2xx}  ({description})")
        if server is not None:
            server.stop()
            rows = apsw.Connection(str(db)).execute("SELECT count(*) FROM items").fetchall()[0][0]
            print(f"\nrows after the run: {rows}")
    finally:
        if server is not None:
            server.stop()
            os.unlink(server.log_path)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
