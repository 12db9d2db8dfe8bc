"""Resource embedding's cost: embedded GETs against the plain GET of 100 rows, in-process.

    python bench/bench_embedding.py [--batches 20] [--batch 200]

The real app (create_app) through its WSGI test client (no network: the HTTP layer is the same
for all, bench_http.py measures it), on 1,000 authors and 3,000 books (3 per author). Batches
of each request alternate; µs per request is the median over batches. Issue #14's targets: an
embedded GET of 100 parents with their children (one-to-many) ≥ 0.6× the req/s of the plain
GET of 100 rows, a many-to-one embedding of 100 rows ≥ 0.8×.
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
from sqlite_rest.app import create_app  # noqa: E402
from sqlite_rest.config import ServerConfig  # noqa: E402

REQUESTS = {
    "plain: /books?limit=100": "/books?limit=100",
    "many-to-one: /books?select=*,authors(*)&limit=100": "/books?select=*,authors(*)&limit=100",
    "plain: /authors?limit=100": "/authors?limit=100",
    "one-to-many: /authors?select=*,books(*)&limit=100": "/authors?select=*,books(*)&limit=100",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    db = Path(tempfile.mkdtemp(prefix="bench-embed-")) / "lib.db"
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
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("authors", "books"),
                                  auth_disabled=True))
    client = app.test_client()
    times = {name: [] for name in REQUESTS}
    for name, url in REQUESTS.items():  # warm: plans, schema, page cache
        assert client.get(url).status_code == 200
    for _ in range(args.batches):
        for name, url in REQUESTS.items():
            start = time.perf_counter()
            for _ in range(args.batch):
                client.get(url)
            times[name].append((time.perf_counter() - start) / args.batch * 1e6)
    print(f"bench_embedding.py: {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load {os.getloadavg()}; "
          f"{args.batches} batches of {args.batch}")
    med = {name: statistics.median(v) for name, v in times.items()}
    print("| request | µs/request | req/s ÷ plain 100 rows |")
    print("|---|---|---|")
    for name in REQUESTS:
        plain = med["plain: /books?limit=100"] if "books" in name.split(":")[1].split("?")[0] \
            else med["plain: /authors?limit=100"]
        print(f"| `{name.split(': ', 1)[1]}` | {med[name]:.0f} | {plain / med[name]:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
