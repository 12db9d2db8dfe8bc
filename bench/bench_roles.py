"""Cost of roles and row-level security (--permissions-file) per request, in-process.

Two apps over the same 10,000-row ``items(id, owner, name, qty)`` database, both with HS256
authentication and the same token (``sub`` = one owner):

- ``plain``: no permissions file; the request names the owner itself (``owner=eq.<sub>``),
  so it runs the same SQL as the roles app.
- ``roles``: ``--permissions-file`` with ``rows: owner=eq.{sub}`` and ``read_columns``; the
  request does not name the owner, the row filter adds it from the token.

Each request goes through the whole WSGI app (auth, routing, plan cache, SQL, JSON, the
request log and metrics middleware), called directly (no sockets: the network and HTTP server
cost the same for both and would only add noise on a shared machine). Scenarios: one row by
primary key (random ids), and 100 rows. The two apps alternate in batches of 250 requests;
reported: the median and the best batch of microseconds per request, and roles ÷ plain (the
target: at most 1.10).

    python bench/bench_roles.py [--rounds 5] [--requests 5000]
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import apsw
import jwt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlite_rest.app import create_app  # noqa: E402
from sqlite_rest.config import ServerConfig  # noqa: E402

ROWS = 10_000
OWNERS = 20
SECRET = b"bench-roles-secret-0123456789abcdef0123456789"
PERMISSIONS = """
default_role: user
roles:
  user:
    items:
      verbs: [GET]
      read_columns: [id, owner, name, qty]
      rows: owner=eq.{sub}
"""


def make_db(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT, "
                 "qty INTEGER); CREATE INDEX items_owner ON items(owner, id)")
    with conn:
        conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?)",
                         ((i, f"user{i % OWNERS}", f"item {i}", i % 100)
                          for i in range(1, ROWS + 1)))
    conn.close()


def wsgi_call(app, path: str, query: str, authorization: str) -> bytes:
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.version": (1, 0), "HTTP_AUTHORIZATION": authorization, "REMOTE_ADDR": "127.0.0.1",
    }
    status = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:200])
    return body


def run(app, queries, authorization) -> float:
    start = time.perf_counter()
    for query in queries:
        wsgi_call(app, "/items", query, authorization)
    return (time.perf_counter() - start) / len(queries) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-roles-"))
    db = tmp / "items.db"
    make_db(db)
    (tmp / "secret").write_bytes(SECRET)
    (tmp / "perm.yml").write_text(PERMISSIONS)
    common = dict(db_dsn=str(db), allow_tables=("items",), auth_token_file=str(tmp / "secret"))
    plain = create_app(ServerConfig(**common))
    roles = create_app(ServerConfig(**common, permissions_file=str(tmp / "perm.yml")))
    owner = "user3"
    authorization = "Bearer " + jwt.encode({"sub": owner, "exp": int(time.time()) + 3600},
                                           SECRET, algorithm="HS256")
    rng = random.Random(1)
    own_ids = [i for i in range(1, ROWS + 1) if i % OWNERS == 3]
    pk_ids = [rng.choice(own_ids) for _ in range(args.requests)]
    scenarios = {
        "get_pk": ([f"id=eq.{i}&owner=eq.{owner}" for i in pk_ids],
                   [f"id=eq.{i}" for i in pk_ids]),
        "get_100": ([f"owner=eq.{owner}&limit=100"] * args.requests, ["limit=100"] * args.requests),
    }
    # same answers
    for name, (plain_q, roles_q) in scenarios.items():
        assert wsgi_call(plain, "/items", plain_q[0], authorization) == \
            wsgi_call(roles, "/items", roles_q[0], authorization), name
    print(f"{'scenario':10} {'plain us/req':>13} {'roles us/req':>13} {'roles/plain':>12} "
          f"{'best plain':>11} {'best roles':>11} {'best ratio':>11}")
    batch = 250
    for name, (plain_q, roles_q) in scenarios.items():
        results: dict = {"plain": [], "roles": []}
        for _ in range(args.rounds):
            # alternate in small batches, so load from other processes hits both alike
            for start in range(0, len(plain_q), batch):
                results["plain"].append(run(plain, plain_q[start:start + batch], authorization))
                results["roles"].append(run(roles, roles_q[start:start + batch], authorization))
        p = statistics.median(results["plain"])
        r = statistics.median(results["roles"])
        bp, br = min(results["plain"]), min(results["roles"])
        print(f"{name:10} {p:13.1f} {r:13.1f} {r / p:12.3f} {bp:11.1f} {br:11.1f} "
              f"{br / bp:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
