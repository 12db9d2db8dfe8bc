"""The floor under `bench_http.py`'s three requests: the least a Python server on granian and
apsw can do for them, to tell how much of a request's cost is ours and how much is the stack's.

    python bench/bench_http.py --compare-command 'python bench/floor_app.py {db} {port}'

A bare WSGI callable (no Flask, no parsing beyond the one query shape, no schema, no auth, no
metrics, no request log) under granian with sqlite-rest's process shape (2 workers x 8
threads, `WORKERS` / `THREADS` to change), per-thread apsw connections in WAL with
synchronous=NORMAL, one transaction per POST (no group commit):

- ``GET /items?id=eq.N``: the row as a JSON array;
- ``GET /items?id=gt.N&limit=100``: 100 rows;
- ``POST /items`` with one JSON object: INSERT, 201 with no body (PostgREST's return=minimal).

Anything else is 404. It answers exactly what bench_http's scenarios send, nothing more: it is
a measuring stick, not a server.
"""
from __future__ import annotations

import os
import sys
import threading

import apsw
import orjson

DB_ENV = "FLOOR_APP_DB"
_local = threading.local()
_JSON = [("Content-Type", "application/json")]


def _conn() -> apsw.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = apsw.Connection(os.environ[DB_ENV])
        conn.set_busy_timeout(5000)
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _rows(cursor) -> bytes:
    names = [d[0] for d in cursor.getdescription()]
    return orjson.dumps([dict(zip(names, row)) for row in cursor])


def app(environ, start_response):
    method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
    if environ.get("PATH_INFO") != "/items":
        start_response("404 Not Found", _JSON)
        return [b"{}"]
    conn = _conn()
    if method == "GET" and query.startswith("id=eq."):
        body = _rows(conn.execute("SELECT id, name, price, qty FROM items WHERE id = ?",
                                  (int(query[6:]),)))
    elif method == "GET" and query.startswith("id=gt."):
        low = int(query[6:].partition("&")[0])
        body = _rows(conn.execute("SELECT id, name, price, qty FROM items WHERE id > ? "
                                  "ORDER BY id LIMIT 100", (low,)))
    elif method == "POST":
        row = orjson.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        with conn:  # one transaction
            conn.execute("INSERT INTO items(name, price, qty) VALUES(?, ?, ?)",
                         (row["name"], row["price"], row["qty"]))
        start_response("201 Created", [("Content-Length", "0")])
        return [b""]
    else:
        start_response("404 Not Found", _JSON)
        return [b"{}"]
    start_response("200 OK", _JSON + [("Content-Length", str(len(body)))])
    return [body]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: floor_app.py DB PORT", file=sys.stderr)
        return 2
    from granian.constants import Interfaces
    from granian.server import Server

    os.environ[DB_ENV] = os.path.abspath(argv[0])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    Server("floor_app:app", address="127.0.0.1", port=int(argv[1]),
           interface=Interfaces.WSGI, websockets=False,
           workers=int(os.environ.get("WORKERS", "2")),
           blocking_threads=int(os.environ.get("THREADS", "8"))).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
