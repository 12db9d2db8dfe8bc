"""The error contract: EVERY row of sqlite_rest.errors.ERROR_TABLE is triggered by a real
request, and the answer has the row's status and code, the four-key JSON shape and
Content-Type: application/json."""
from __future__ import annotations

import time

import apsw
import jwt
import orjson
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from sqlite_rest.errors import ERROR_TABLE, ERRORS, errors_markdown

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    pages INTEGER CHECK (pages > 0),
    data TEXT,
    author_id INTEGER REFERENCES authors(id)
);
CREATE TABLE guarded (id INTEGER PRIMARY KEY, v TEXT);
CREATE TRIGGER guarded_no_x BEFORE INSERT ON guarded WHEN NEW.v = 'x'
BEGIN SELECT RAISE(ABORT, 'x is not allowed'); END;
CREATE VIEW bad_json AS SELECT id, json_extract(data, '$.a') AS a FROM books;
CREATE TABLE duo (id INTEGER PRIMARY KEY, a INTEGER REFERENCES authors(id),
                  b INTEGER REFERENCES authors(id));
INSERT INTO authors VALUES (1, 'Ann');
INSERT INTO books VALUES (1, 'Alpha', 10, 'not json', 1), (2, 'Beta', 20, NULL, 1);
"""
TABLES = ("authors", "books", "guarded", "bad_json", "duo")
SECRET = b"contract-secret-0123456789abcdef"


class Env:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.db = tmp_path / "contract.db"
        conn = apsw.Connection(str(self.db))
        conn.execute(SCHEMA)
        conn.close()

    def app(self, dsn=None, **options):
        options.setdefault("allow_tables", TABLES)
        if "auth_token_file" not in options:
            options.setdefault("auth_disabled", True)
        return create_app(ServerConfig(db_dsn=dsn or str(self.db), **options))

    def client(self, **options):
        return self.app(**options).test_client()

    def rpc_client(self):
        """A client with one reading and one writing function (--functions-file)."""
        path = self.tmp_path / "functions.yml"
        path.write_text("functions:\n"
                        "  titles: {params: {n: integer}, sql: 'SELECT title FROM books "
                        "LIMIT :n'}\n"
                        "  add: {params: {t: text}, sql: 'INSERT INTO books (title) "
                        "VALUES (:t)', returns: nothing}\n")
        return self.client(functions_file=str(path))

    def auth_client(self):
        key = self.tmp_path / "secret.key"
        key.write_bytes(SECRET)
        return self.client(auth_token_file=str(key), auth_key_check_interval=0), key


def _replica_client(env, **options):
    """An app that reads ``env.db`` as a read replica: the database as one LTX snapshot in a
    file:// replica, opened through the VFS."""
    from urllib.parse import quote

    from tests.plugins.replicas import snapshot_replica

    url = snapshot_replica(env.db, env.tmp_path / "replica")
    return env.client(dsn=f"file:replica.db?vfs=litestream&replica_url={quote(url, safe='')}",
                      **options)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _busy(env):
    blocker = apsw.Connection(str(env.db))
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        client = env.client(dsn=f"{env.db}?_busy_timeout=50")
        return client.post("/books", json={"title": "x"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _schema_changing(env):
    """A migration that changes the schema again every time the server reloads it: the write
    is planned again at each reload (routes.write_table) and finally refused, with nothing
    written."""
    app = env.app()
    client = app.test_client()
    assert client.get("/books?limit=1").status_code == 200  # the schema is cached
    migrator = apsw.Connection(str(env.db))
    step = iter(range(1000))
    migrate = lambda: migrator.execute(f"CREATE TABLE migration_{next(step)}(x)")  # noqa: E731
    cache = app.extensions["sqlite_rest"].schema_cache
    cache.on_reload = lambda previous, schema: migrate()
    migrate()
    try:
        return client.post("/books", json={"title": "x"})
    finally:
        migrator.close()


def _disk_full(env):
    app = env.app()
    client = app.test_client()
    client.get("/books")  # opens this thread's connections
    writer = app.extensions["sqlite_rest"].db.writer()
    pages = writer.execute("PRAGMA page_count").fetchall()[0][0]
    writer.execute(f"PRAGMA max_page_count={pages}")
    return client.post("/books", json={"title": "x" * 200_000})


def _corrupt(env):
    bad = env.tmp_path / "garbage.db"
    bad.write_bytes(b"this is not an SQLite database " * 200)
    client = env.client(dsn=str(bad))
    response = client.get("/books")
    assert client.get("/ready").status_code == 503
    return response


def _jwt_key_unavailable(env):
    client, key = env.auth_client()
    token = jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")
    key.unlink()
    return client.get("/books", headers={"Authorization": f"Bearer {token}"})


def _internal(env):
    app = env.app()

    @app.route("/boom/now")  # two segments: Flask's routing (api/dispatch.py has its own test)
    def boom():
        raise RuntimeError("secret internal detail")

    response = app.test_client().get("/boom/now")
    assert b"secret internal detail" not in response.data
    assert b"Traceback" not in response.data
    return response


def _full_put_row(id_):
    return {"id": id_, "title": "t", "pages": 1, "data": None, "author_id": None}


def _roles_client(env):
    """A client whose token's role (--permissions-file) may read books and insert its own."""
    key = env.tmp_path / "secret.key"
    key.write_bytes(SECRET)
    perm = env.tmp_path / "perm.yml"
    perm.write_text("roles:\n  reader:\n    books:\n      verbs: [GET, POST]\n"
                    "      rows: title=eq.{sub}\n")
    client = env.client(auth_token_file=str(key), permissions_file=str(perm))
    token = jwt.encode({"role": "reader", "sub": "Alpha"}, SECRET, algorithm="HS256")
    return client, {"Authorization": f"Bearer {token}"}


def _permission_denied(env):
    client, headers = _roles_client(env)
    return client.delete("/books?id=eq.1", headers=headers)


def _rls_violation(env):
    client, headers = _roles_client(env)
    return client.post("/books", json={"title": "Not mine"}, headers=headers)


TRIGGERS = {
    "no_relationship": lambda e: e.client().get("/books?select=*,guarded(*)"),
    "ambiguous_relationship": lambda e: e.client().get("/duo?select=*,authors(*)"),
    "aggregates_disabled": lambda e: e.client().get("/books?select=pages.sum()"),
    "replica_behind": lambda e: _replica_client(e, replica_wait_timeout=0.05).get(
        "/books", headers={"X-Replication-Min-Txid": "00000000000fffff"}),
    # a lineage this replica never recorded (a position of another database's history)
    "position_lost": lambda e: _replica_client(e).get(
        "/books", headers={"X-Replication-Min-Txid": "0000000000000001@" + "0" * 16}),
    "replica_point_unavailable": lambda e: _replica_client(e).get(
        "/books", headers={"X-Replication-As-Of": "2001-01-01T00:00:00Z"}),
    "primary_unreachable": lambda e: _replica_client(
        e, forward_writes=True, primary_url=f"http://127.0.0.1:{_closed_port()}").post(
        "/books", json={"title": "x"}),
    "query_parse": lambda e: e.client().get("/books?id=zz.1"),
    "unknown_embed": lambda e: e.client().get("/books?select=*&authors.name=eq.x"),
    "invalid_body": lambda e: e.client().post(
        "/books", data=b"{bad", headers={"Content-Type": "application/json"}),
    "invalid_range": lambda e: e.client().get("/books", headers={"Range": "5"}),
    "invalid_put": lambda e: e.client().put("/books?id=gt.1", json=_full_put_row(1)),
    "unsupported_content_type": lambda e: e.client().post(
        "/books", data=b"<x/>", headers={"Content-Type": "text/xml"}),
    "not_acceptable": lambda e: e.client().get("/books", headers={"Accept": "text/xml"}),
    "put_with_limit": lambda e: e.client().put("/books?id=eq.1&limit=1", json=_full_put_row(1)),
    "put_key_mismatch": lambda e: e.client().put("/books?id=eq.1", json=_full_put_row(2)),
    "singular_not_one": lambda e: e.client().get(
        "/books", headers={"Accept": "application/vnd.pgrst.object+json"}),
    "method_not_allowed": lambda e: e.client().open("/books", method="TRACE"),
    "invalid_preference": lambda e: e.client().get(
        "/books", headers={"Prefer": "handling=strict, nonsense=1"}),
    "max_affected_exceeded": lambda e: e.client().delete(
        "/books?id=gt.0", headers={"Prefer": "handling=strict,max-affected=1"}),
    "max_affected_single": lambda e: e.rpc_client().post(
        "/rpc/add", json={"t": "x"}, headers={"Prefer": "handling=strict, max-affected=1"}),
    "invalid_path": lambda e: e.client().get("/books/1"),
    "rpc_method": lambda e: e.rpc_client().delete("/rpc/titles"),
    "rpc_write_by_get": lambda e: e.rpc_client().get("/rpc/add?t=x"),
    "rpc_invalid_argument": lambda e: e.rpc_client().get("/rpc/titles?n=many"),
    "rpc_not_found": lambda e: e.rpc_client().post("/rpc/title", json={"n": 1}),
    "filterless_write": lambda e: e.client(refuse_filterless_writes=True).delete("/books"),
    "unknown_body_column": lambda e: e.client().post("/books", json={"title": "t", "nope": 1}),
    "unknown_table": lambda e: e.client().get("/nope"),
    "unknown_column": lambda e: e.client().get("/books?nope=eq.1"),
    "unknown_cast": lambda e: e.client().get("/books?select=id::regclass"),
    "conflict_target": lambda e: e.client().post(
        "/books?on_conflict=title", json={"title": "Alpha"},
        headers={"Prefer": "resolution=merge-duplicates"}),
    "jwt_key_unavailable": _jwt_key_unavailable,
    "jwt_invalid": lambda e: e.auth_client()[0].get(
        "/books", headers={"Authorization": "Bearer not.a.jwt"}),
    "jwt_missing": lambda e: e.auth_client()[0].get("/books"),
    "jwt_claims": lambda e: e.auth_client()[0].get("/books", headers={
        "Authorization": "Bearer " + jwt.encode({"exp": int(time.time()) - 3600}, SECRET,
                                                algorithm="HS256")}),
    "unique_violation": lambda e: e.client().post("/books", json={"id": 1, "title": "dup"}),
    "foreign_key_violation": lambda e: e.client().post(
        "/books", json={"title": "t", "author_id": 99}),
    "not_null_violation": lambda e: e.client().post("/books", json={"title": None}),
    "check_violation": lambda e: e.client().post("/books", json={"title": "t", "pages": -1}),
    "constraint_violation": lambda e: e.client().post("/guarded", json={"v": "x"}),
    "datatype_mismatch": lambda e: e.client().post("/books", json={"id": "abc", "title": "t"}),
    "sql_data_error": lambda e: e.client().get("/bad_json"),
    "read_only": lambda e: e.client(dsn=f"file:{e.db}?mode=ro").post("/books", json={"title": "t"}),
    "busy": _busy,
    "disk_full": _disk_full,
    "schema_changing": _schema_changing,
    "database_corrupt": _corrupt,
    "database_unavailable": lambda e: e.client(dsn=str(e.tmp_path / "no" / "such" / "dir.db")
                                               ).get("/books"),
    "body_too_large": lambda e: e.client().post(
        "/books", data=b"[" + b" " * (10 * 1000 * 1000) + b"]",
        headers={"Content-Type": "application/json"}),
    "internal": _internal,
    "permission_denied": _permission_denied,
    "rls_violation": _rls_violation,
}


def test_every_row_has_a_trigger():
    assert set(TRIGGERS) == set(ERRORS)


@pytest.mark.parametrize("case", ERROR_TABLE, ids=[c.key for c in ERROR_TABLE])
def test_error_row(tmp_path, case):
    env = Env(tmp_path)
    before = _snapshot(env.db)
    response = TRIGGERS[case.key](env)
    assert response.status_code == case.status, response.data
    assert response.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(response.data)
    assert set(body) == {"code", "message", "details", "hint"}
    assert body["code"] == case.code
    assert isinstance(body["message"], str) and body["message"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    if case.key == "busy":
        assert response.headers["Retry-After"].isdigit()
    if case.status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if case.status == 405 and case.key == "method_not_allowed":
        assert "GET" in response.headers["Allow"]
    # a failed request never changes the data
    assert _snapshot(env.db) == before


def _snapshot(path):
    conn = apsw.Connection(str(path))
    try:
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("authors", "books", "guarded")]
    finally:
        conn.close()


def test_post_on_root_is_405_json(tmp_path):
    response = Env(tmp_path).client().post("/", json={})
    assert response.status_code == 405
    assert orjson.loads(response.data)["code"] == "PGRST117"


def test_markdown_renders_every_row():
    text = errors_markdown()
    for case in ERROR_TABLE:
        assert case.case.replace("|", "\\|") in text
    assert text.count("\n") == len(ERROR_TABLE) + 2


def test_werkzeug_http_errors_get_the_json_shape(tmp_path):
    from werkzeug.exceptions import BadRequest, Conflict

    app = Env(tmp_path).app()

    @app.route("/raise/bad-request")
    def bad_request():
        raise BadRequest("unreadable body")

    @app.route("/raise/conflict")
    def conflict():
        raise Conflict()

    client = app.test_client()
    r = client.get("/raise/bad-request")
    assert r.status_code == 400
    assert orjson.loads(r.data) == {"code": "PGRST102", "message": "Empty or invalid json",
                                    "details": "unreadable body",
                                    "hint": ERRORS["invalid_body"].hint}
    r = client.get("/raise/conflict")
    assert r.status_code == 409
    body = orjson.loads(r.data)
    assert set(body) == {"code", "message", "details", "hint"} and body["code"] is None
    assert r.headers["Content-Type"].startswith("application/json")
