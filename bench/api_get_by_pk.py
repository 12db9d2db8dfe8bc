"""Per-request cost of GET /t?id=eq.N inside the Flask app (no HTTP server).

Prints CPU microseconds per request through (a) Flask's test client and (b) a direct WSGI call
(what a server such as granian/gunicorn does), plus the floor of a trivial Flask route, so the
app's own share is visible. `--profile` adds a pyinstrument profile of (b).

    python bench/api_get_by_pk.py [--rows 100000] [--requests 20000] [--auth] [--profile]
"""
from __future__ import annotations

import argparse
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


def _start_response(status, headers, exc_info=None):
    return None


def _wsgi_us(app, environs) -> float:
    start = time.process_time()
    for environ in environs:
        b"".join(app(dict(environ), _start_response))
    return (time.process_time() - start) / len(environs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--auth", action="store_true", help="HS256 JWT on every request")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        conn = apsw.Connection(path)
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v INTEGER)")
        with conn:
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                             ((i, f"name {i}", i * 3) for i in range(1, args.rows + 1)))
        conn.close()
        headers = {}
        options = {"auth_disabled": True}
        if args.auth:
            secret = b"bench-secret-" * 5
            key = os.path.join(tmp, "secret")
            with open(key, "wb") as f:
                f.write(secret)
            options = {"auth_token_file": key}
            headers["Authorization"] = "Bearer " + jwt.encode({"sub": "bench"}, secret, "HS256")
        app = create_app(ServerConfig(db_dsn=path, allow_tables=("t",), **options))
        ids = [random.randint(1, args.rows) for _ in range(args.requests)]
        environs = [EnvironBuilder(path="/t", query_string=f"id=eq.{i}", headers=headers
                                   ).get_environ() for i in ids]
        _wsgi_us(app, environs[:2000])  # warm caches and connections

        client = app.test_client()
        start = time.process_time()
        for i in ids:
            response = client.get(f"/t?id=eq.{i}", headers=headers)
            assert response.status_code == 200
        client_us = (time.process_time() - start) / len(ids) * 1e6
        wsgi_us = _wsgi_us(app, environs)

        # The same app as a server worker runs: plus S3's metrics and request-log hooks.
        from prometheus_client import CollectorRegistry

        from sqlite_rest import logs
        from sqlite_rest.metrics import RequestMetrics

        worker = create_app(ServerConfig(db_dsn=path, allow_tables=("t",), **options))
        RequestMetrics(CollectorRegistry()).instrument(worker)
        logs.instrument(worker)
        _wsgi_us(worker, environs[:2000])
        worker_us = _wsgi_us(worker, environs)

        floor = Flask("floor")
        floor.add_url_rule("/<t>", "t", lambda t: Response(b"[]", content_type="application/json"))
        _wsgi_us(floor, environs[:2000])
        floor_us = _wsgi_us(floor, environs)

        print(f"GET by PK, {args.rows} rows, {args.requests} requests, auth={'HS256' if args.auth else 'off'}")
        print(f"  test client:          {client_us:8.1f} us/request (CPU)")
        print(f"  direct WSGI call:     {wsgi_us:8.1f} us/request (CPU) = {1e6 / wsgi_us:,.0f} req/s/core")
        print(f"  + metrics + logs:     {worker_us:8.1f} us/request (CPU, as a server worker)")
        print(f"  trivial Flask route:  {floor_us:8.1f} us/request (CPU floor)")
        print(f"  sqlite-rest's share:  {wsgi_us - floor_us:8.1f} us/request")
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            profiler.start()
            _wsgi_us(app, environs)
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
