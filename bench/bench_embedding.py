"""Resource embedding's cost: embedded GETs against the plain GET of 100 rows.

    python bench/bench_embedding.py [--batches 20] [--batch 200] [--wsgi]
    python bench/bench_embedding.py --http [--rounds 3] [--duration 5] [--workers N]

On 1,000 authors and 3,000 books (3 per author). In-process (default): the real app
(create_app) through its WSGI test client; batches of each request alternate and µs per
request is the median over batches; ``--wsgi``: direct WSGI calls (what granian does, no test
client) timed in CPU time, the best batch of each (other processes only ever add time). ``--http``: one real ``sqlite-rest serve`` (CLI
subprocess, 127.0.0.1, --auth-disabled) on that database, and wrk (bench_http.py's settings:
2 threads x 32 connections) on each request in turn, a warm-up before each run; every round
runs every request once, in the same order; req/s is the median over rounds. It also reads the
server's CPU time (all its processes, /proc) around each measured run: CPU µs per request does
not move with what else the machine runs, as req/s does on a shared one. Issue #14's
targets are about the server: an embedded GET of 100 parents with their children
(one-to-many) ≥ 0.6× the req/s of the plain GET of 100 rows on the same server, a many-to-one
embedding of 100 rows ≥ 0.8×.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_http
from sqlite_rest.app import create_app  # noqa: E402
from sqlite_rest.config import ServerConfig  # noqa: E402

REQUESTS = {
    "plain: /books?limit=100": "/books?limit=100",
    "many-to-one: /books?select=*,authors(*)&limit=100": "/books?select=*,authors(*)&limit=100",
    "plain: /authors?limit=100": "/authors?limit=100",
    "one-to-many: /authors?select=*,books(*)&limit=100": "/authors?select=*,books(*)&limit=100",
}


def make_db(db: Path) -> None:
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT, born INTEGER);"
                 "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT, year INTEGER, "
                 "author_id INTEGER REFERENCES authors(id));"
                 "CREATE INDEX books_author ON books(author_id);")
    with conn:
        conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000)"
                     " INSERT INTO authors SELECT x, 'author ' || x, 1900 + x % 100 FROM c")
        conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000)"
                     " INSERT INTO books SELECT x, 'book ' || x, 1950 + x % 70, 1 + x % 1000 FROM c")
    conn.close()


def plain_of(name: str) -> str:
    """The plain GET a request is compared with: the one of the same table."""
    table = name.split(": ", 1)[1].split("?")[0]
    return next(n for n in REQUESTS if n.startswith("plain") and n.endswith(table + "?limit=100"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--http", action="store_true", help="over HTTP: a real server and wrk")
    ap.add_argument("--wsgi", action="store_true",
                    help="in-process by direct WSGI calls, CPU time, best batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    db = Path(tempfile.mkdtemp(prefix="bench-embed-")) / "lib.db"
    make_db(db)
    if args.http:
        return over_http(db, args)
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("authors", "books"),
                                  auth_disabled=True))
    times = {name: [] for name in REQUESTS}
    if args.wsgi:
        from werkzeug.test import EnvironBuilder

        def start_response(status, headers, exc_info=None):
            assert status.startswith("200"), status

        environs = {name: EnvironBuilder(path=url.split("?")[0],
                                         query_string=url.split("?")[1]).get_environ()
                    for name, url in REQUESTS.items()}
        for name, environ in environs.items():  # warm: plans, schema, page cache
            b"".join(app(dict(environ), start_response))
        for _ in range(args.batches):
            for name, environ in environs.items():
                start = time.process_time()
                for _ in range(args.batch):
                    b"".join(app(dict(environ), start_response))
                times[name].append((time.process_time() - start) / args.batch * 1e6)
    else:
        client = app.test_client()
        for name, url in REQUESTS.items():  # warm: plans, schema, page cache
            assert client.get(url).status_code == 200
        for _ in range(args.batches):
            for name, url in REQUESTS.items():
                start = time.perf_counter()
                for _ in range(args.batch):
                    client.get(url)
                times[name].append((time.perf_counter() - start) / args.batch * 1e6)
    print(f"bench_embedding.py{' --wsgi' if args.wsgi else ''}: {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load {os.getloadavg()}; "
          f"{args.batches} batches of {args.batch}"
          + ("; CPU µs, best batch" if args.wsgi else "; wall µs, median batch"))
    pick = min if args.wsgi else statistics.median
    med = {name: pick(v) for name, v in times.items()}
    print("| request | µs/request | req/s ÷ plain 100 rows |")
    print("|---|---|---|")
    for name in REQUESTS:
        plain = med[plain_of(name)]
        print(f"| `{name.split(': ', 1)[1]}` | {med[name]:.0f} | {plain / med[name]:.2f}× |")
    return 0


def over_http(db: Path, args) -> int:
    """The same requests against a real server, with wrk (rounds, medians)."""
    import subprocess

    from bench_http import load, parse_wrk, proc_tree_ticks, stop
    from tests.plugins.server import start_server

    def wrk(url: str, seconds: int) -> dict:
        out = subprocess.run(["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}",
                              f"-d{seconds}s", "--latency", url],
                             capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)

    print(f"bench_embedding.py --http: sqlite-rest --workers {args.workers}; wrk "
          f"-t{args.wrk_threads} -c{args.connections} -d{args.duration}s after a {args.warmup} s "
          f"warm-up; {args.rounds} rounds; {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load at start {load()}")
    server = start_server(db, "--security-allow-table", "authors,books", "--workers",
                          args.workers, metrics=False)
    rps = {name: [] for name in REQUESTS}
    cpu = {name: [] for name in REQUESTS}  # server CPU µs per request
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    try:
        for round_ in range(args.rounds):
            for name, path in REQUESTS.items():
                url = server.base_url + path
                if args.warmup > 0:
                    wrk(url, args.warmup)
                before = sum(proc_tree_ticks(server.pid).values())
                r = wrk(url, args.duration)
                used = sum(proc_tree_ticks(server.pid).values()) - before
                assert r["non2xx"] == 0 and r["requests"], (name, r)
                rps[name].append(r["rps"])
                cpu[name].append(used * tick_us / r["requests"])
                print(f"  round {round_ + 1} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  server CPU {cpu[name][-1]:5.0f} µs/req  {path}",
                      flush=True)
    finally:
        stop(server)
    print(f"load at end {load()}; medians of {args.rounds} rounds:\n")
    med = {name: statistics.median(v) for name, v in rps.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu.items()}
    print("| request | req/s | ÷ plain 100 rows | median of the rounds' ratios "
          "| server CPU µs/req | plain's CPU ÷ this |")
    print("|---|---|---|---|---|---|")
    for name in REQUESTS:
        # the plain GET ran just before, in the same round: the same load on the machine
        ratios = [a / b for a, b in zip(rps[name], rps[plain_of(name)])]
        print(f"| `{name.split(': ', 1)[1]}` | {med[name]:,.0f} | "
              f"{med[name] / med[plain_of(name)]:.2f}× | {statistics.median(ratios):.2f}× | "
              f"{cpu_med[name]:.0f} | {cpu_med[plain_of(name)] / cpu_med[name]:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
