"""Per-request CPU cost of the API inside the Flask app (no HTTP server).

Three requests against ``items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)``
(the table of bench/bench_http.py):

* ``get_pk``  — ``GET /items?id=eq.N`` (random N)
* ``get_100`` — ``GET /items?id=gt.N&limit=100`` (random N)
* ``post``    — ``POST /items`` with one JSON object

For each it prints CPU microseconds per request through a direct WSGI call (what granian does),
the same app instrumented as a server worker (metrics.py and logs.py hooks, request log lines
written to fd 2 = /dev/null by logs.py's writer thread, as in production), and the floor of a
trivial Flask route, so the app's own share is visible. Each figure is the best of --batches
slices (the machine is shared: other processes only ever add time). `--profile` adds a
pyinstrument profile of the direct call.

    python bench/api_get_by_pk.py [--rows 100000] [--requests 20000] [--batches 5] [--auth]
                                  [--profile] [--scenario get_pk|get_100|post ...]
"""
from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time

import apsw
import jwt
from flask import Flask, Response
from werkzeug.test import EnvironBuilder

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

POST_BODY = b'{"name":"bench","price":1.5,"qty":3}'


def _start_response(status, headers, exc_info=None):
    return None


def _best_us(app, environs, batches: int) -> float:
    """The lowest per-request CPU time of `batches` equal slices (other processes on a
    shared machine only ever add time, so the minimum is the least noisy figure)."""
    size = max(len(environs) // batches, 1)
    return min(_wsgi_us(app, environs[i:i + size]) for i in range(0, len(environs), size))


def _wsgi_us(app, environs) -> float:
    """CPU microseconds per request; request bodies are rewound per call."""
    start = time.process_time()
    for environ in environs:
        environ = dict(environ)
        if environ["REQUEST_METHOD"] == "POST":
            environ["wsgi.input"] = io.BytesIO(POST_BODY)
        b"".join(app(environ, _start_response))
    return (time.process_time() - start) / len(environs) * 1e6


def _environs(scenario: str, rows: int, n: int, headers: dict) -> list[dict]:
    out = []
    for _ in range(n):
        if scenario == "get_pk":
            builder = EnvironBuilder(path="/items", query_string=f"id=eq.{random.randint(1, rows)}",
                                     headers=headers)
        elif scenario == "get_100":
            builder = EnvironBuilder(
                path="/items", query_string=f"id=gt.{random.randint(0, rows - 100)}&limit=100",
                headers=headers)
        else:
            builder = EnvironBuilder(path="/items", method="POST", data=POST_BODY,
                                     content_type="application/json", headers=headers)
        out.append(builder.get_environ())
    return out


def make_db(path: str, rows: int) -> None:
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
    with conn:
        conn.executemany("INSERT INTO items VALUES(?,?,?,?)",
                         ((i, f"item-{i}", i * 0.25, i % 100) for i in range(1, rows + 1)))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--auth", action="store_true", help="HS256 JWT on every request")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--batches", type=int, default=5,
                        help="report the best of this many slices of the requests")
    parser.add_argument("--scenario", action="append", choices=("get_pk", "get_100", "post"))
    args = parser.parse_args()
    scenarios = args.scenario or ["get_pk", "get_100", "post"]

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        make_db(path, args.rows)
        headers = {}
        options = {"auth_disabled": True}
        if args.auth:
            secret = b"bench-secret-" * 5
            key = os.path.join(tmp, "secret")
            with open(key, "wb") as f:
                f.write(secret)
            options = {"auth_token_file": key}
            headers["Authorization"] = "Bearer " + jwt.encode({"sub": "bench"}, secret, "HS256")
        app = create_app(ServerConfig(db_dsn=path, allow_tables=("items",), **options))

        # The same app as a server worker runs it: create_app wires the metrics always, and
        # the request log once logging is set up as in production (JSON lines on fd 2, here
        # pointed at /dev/null).
        from sqlite_rest.observability import logs

        logs.configure(logs.DEFAULT_LOG_LEVEL)
        stderr_fd = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        worker = create_app(ServerConfig(db_dsn=path, allow_tables=("items",), **options))

        floor = Flask("floor")
        floor.add_url_rule("/<t>", "t", lambda t: Response(b"[]", content_type="application/json"),
                           methods=["GET", "POST"])

        print(f"{args.rows} rows, {args.requests} requests per figure (best of {args.batches} "
              f"slices), auth={'HS256' if args.auth else 'off'}, CPU time per request")
        print(f"  {'scenario':8s} {'app (WSGI)':>12s} {'+request log':>13s} {'Flask floor':>12s}"
              f" {'app share':>10s}")
        for scenario in scenarios:
            environs = _environs(scenario, args.rows, args.requests, headers)
            # Warm connections and caches with other random ids than the measured ones.
            warm = _environs(scenario, args.rows, 2000, headers)
            _wsgi_us(app, warm)
            wsgi_us = _best_us(app, environs, args.batches)
            os.dup2(devnull, 2)
            try:
                _wsgi_us(worker, warm)
                worker_us = _best_us(worker, environs, args.batches)
            finally:
                os.dup2(stderr_fd, 2)
            _wsgi_us(floor, warm)
            floor_us = _best_us(floor, environs, args.batches)
            print(f"  {scenario:8s} {wsgi_us:9.1f} us {worker_us:10.1f} us {floor_us:9.1f} us"
                  f" {wsgi_us - floor_us:7.1f} us")
            if args.profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002)
                profiler.start()
                _wsgi_us(app, environs)
                profiler.stop()
                print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
