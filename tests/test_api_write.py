"""Writes through the HTTP API: POST/PATCH/PUT/DELETE, Prefer, transactions, commit hook."""
from __future__ import annotations

import threading
import time

import apsw
import orjson
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from sqlite_rest.db import open_connection

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    year INTEGER,
    status TEXT NOT NULL DEFAULT 'draft',
    author_id INTEGER REFERENCES authors(id)
);
CREATE TABLE pairs (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
INSERT INTO authors VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO books VALUES (1, 'Alpha', 2001, 'published', 1), (2, 'Beta', 2002, 'draft', 2);
"""


def rows(path, sql):
    conn = apsw.Connection(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "write.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    return path


@pytest.fixture
def commits():
    return []


class RecordingHook:
    """A WriterHook (replication.primary) that records which thread committed."""

    owns_checkpoints = False

    def __init__(self, commits, answer=lambda n: f"txid-{n}"):
        self.commits, self.answer = commits, answer

    def watch_connection(self, conn):
        pass

    def before_commit(self):
        pass

    def __call__(self):
        self.commits.append(threading.get_ident())
        return self.answer(len(self.commits))


@pytest.fixture
def client(db, commits):
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books", "authors", "pairs"),
                                  auth_disabled=True, writer_hook=RecordingHook(commits)))
    with app.test_client() as c:
        yield c


def test_post_single_minimal(client, db, commits):
    r = client.post("/books", json={"id": 3, "title": "Gamma"})
    assert r.status_code == 201
    assert r.data == b""
    assert r.headers["X-Replication-Txid"] == "txid-1"
    assert len(commits) == 1
    assert rows(db, "SELECT id, title, status FROM books WHERE id = 3") == [(3, "Gamma", "draft")]


def test_post_bulk_one_transaction_and_representation(client, db):
    r = client.post("/books?select=id,title", json=[{"id": 10, "title": "X"}, {"id": 11, "title": "Y"}],
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.get_json() == [{"id": 10, "title": "X"}, {"id": 11, "title": "Y"}]
    assert r.headers["Preference-Applied"] == "return=representation"
    # a failing row rolls back the whole bulk insert
    r = client.post("/books", json=[{"id": 20, "title": "ok"}, {"id": 21, "title": None}])
    assert r.status_code == 400
    assert r.get_json()["code"] == "23502"
    assert rows(db, "SELECT count(*) FROM books WHERE id IN (20, 21)") == [(0,)]


def test_several_prefer_headers(client):
    r = client.delete("/books?id=eq.1", headers=[("Prefer", "return=representation"),
                                                 ("Prefer", "count=exact, handling=lenient")])
    assert r.status_code == 200
    assert r.headers["Content-Range"] == "*/1"
    assert r.headers["Preference-Applied"] == \
        "return=representation, count=exact, handling=lenient"
    assert r.get_json()[0]["id"] == 1


def test_invalid_preference_is_ignored_when_lenient(client):
    r = client.post("/books", json={"title": "x"}, headers={"Prefer": "return=everything"})
    assert r.status_code == 201
    assert "Preference-Applied" not in r.headers


def test_post_big_integer_stays_exact(client, db):
    r = client.post("/books", json={"id": 9007199254740993, "title": "big", "year": -(2**63)},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert b'"id":9007199254740993' in r.data
    assert rows(db, "SELECT year FROM books WHERE id = 9007199254740993") == [(-(2**63),)]


def test_post_headers_only_location(client):
    r = client.post("/books", json={"title": "Auto"}, headers={"Prefer": "return=headers-only"})
    assert r.status_code == 201
    assert r.headers["Location"] == "/books?id=eq.3"
    r = client.post("/pairs", json={"a": "x y", "b": 2, "v": "v"},
                    headers={"Prefer": "return=headers-only"})
    assert r.headers["Location"] == "/pairs?a=eq.x%20y&b=eq.2"


def test_post_columns_param(client, db):
    r = client.post("/books?columns=id,title", json={"id": 5, "title": "T", "year": 1999})
    assert r.status_code == 201
    assert rows(db, "SELECT year FROM books WHERE id = 5") == [(None,)]
    r = client.post("/books?columns=id,nope", json={"id": 6, "title": "T"})
    assert r.status_code == 400
    assert r.get_json()["code"] == "PGRST204"


def test_missing_default(client, db):
    body = [{"id": 7, "title": "A", "status": "x"}, {"id": 8, "title": "B"}]
    r = client.post("/books", json=body, headers={"Prefer": "missing=default"})
    assert r.status_code == 201
    assert r.headers["Preference-Applied"] == "missing=default"
    assert rows(db, "SELECT id, status FROM books WHERE id IN (7, 8) ORDER BY id") == \
        [(7, "x"), (8, "draft")]
    # without missing=default, objects with different keys are refused
    r = client.post("/books", json=body)
    assert r.status_code == 400
    assert r.get_json()["code"] == "PGRST102"


def test_upsert_merge_and_ignore(client, db):
    r = client.post("/books", json=[{"id": 1, "title": "Alpha 2"}, {"id": 9, "title": "New"}],
                    headers={"Prefer": "resolution=merge-duplicates, return=representation"})
    assert r.status_code == 201
    assert [x["title"] for x in r.get_json()] == ["Alpha 2", "New"]
    assert rows(db, "SELECT title, status FROM books WHERE id = 1") == [("Alpha 2", "published")]
    r = client.post("/books", json={"id": 1, "title": "ignored"},
                    headers={"Prefer": "resolution=ignore-duplicates"})
    assert r.status_code == 201
    assert rows(db, "SELECT title FROM books WHERE id = 1") == [("Alpha 2",)]
    r = client.post("/authors?on_conflict=name", json={"id": 5, "name": "Ann"},
                    headers={"Prefer": "resolution=ignore-duplicates"})
    assert r.status_code == 201
    assert rows(db, "SELECT count(*) FROM authors") == [(2,)]


def test_patch(client, db):
    r = client.patch("/books?year=gte.2000", json={"status": "archived"},
                     headers={"Prefer": "return=representation"})
    assert r.status_code == 200
    assert sorted(x["id"] for x in r.get_json()) == [1, 2]
    r = client.patch("/books?id=eq.1", json={"year": 1999})
    assert r.status_code == 204
    assert rows(db, "SELECT year, status FROM books WHERE id = 1") == [(1999, "archived")]


def test_delete(client, db):
    r = client.delete("/books?id=eq.2", headers={"Prefer": "return=representation",
                                                  "Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.get_json()[0]["title"] == "Beta"
    r = client.delete("/books?id=eq.999")
    assert r.status_code == 204
    assert rows(db, "SELECT id FROM books") == [(1,)]


def test_filterless_delete_allowed_by_default(client, db):
    assert client.delete("/books").status_code == 204
    assert rows(db, "SELECT count(*) FROM books") == [(0,)]


def test_filterless_writes_can_be_refused(db):
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True,
                                  refuse_filterless_writes=True))
    c = app.test_client()
    r = c.delete("/books")
    assert r.status_code == 400
    assert r.get_json()["code"] == "21000"
    assert c.patch("/books", json={"year": 1}).status_code == 400
    assert rows(db, "SELECT count(*) FROM books") == [(2,)]
    assert c.delete("/books?id=eq.1").status_code == 204


def test_put_single_row_upsert(client, db):
    full = {"id": 7, "title": "Put", "year": 2020, "status": "s", "author_id": None}
    r = client.put("/books?id=eq.7", json=full)
    assert r.status_code == 204
    full["title"] = "Put again"
    r = client.put("/books?id=eq.7", json=full, headers={"Prefer": "return=representation"})
    assert r.status_code == 200
    assert r.get_json()[0]["title"] == "Put again"
    assert rows(db, "SELECT count(*) FROM books WHERE id = 7") == [(1,)]
    r = client.put("/pairs?a=eq.k&b=eq.1", json={"a": "k", "b": 1, "v": "one"})
    assert r.status_code == 204
    assert rows(db, "SELECT v FROM pairs") == [("one",)]


@pytest.mark.parametrize("url,body,status,code", [
    ("/books?id=gt.7", {"id": 7, "title": "x"}, 405, "PGRST105"),
    ("/books", {"id": 7, "title": "x"}, 405, "PGRST105"),
    ("/books?id=eq.7&title=eq.x", {"id": 7, "title": "x"}, 405, "PGRST105"),
    ("/books?id=eq.7", {"id": 8, "title": "x", "year": 1, "status": "s", "author_id": None},
     400, "PGRST115"),
    ("/books?id=eq.7&limit=1", {"id": 7}, 400, "PGRST114"),
    ("/books?id=eq.7", {"id": 7, "title": "x"}, 400, "PGRST102"),
])
def test_put_errors(client, db, url, body, status, code):
    r = client.put(url, json=body)
    assert r.status_code == status, r.data
    assert r.get_json()["code"] == code
    assert rows(db, "SELECT count(*) FROM books WHERE id IN (7, 8)") == [(0,)]


def test_max_affected_strict_rolls_back(client, db):
    r = client.patch("/books?id=gt.0", json={"year": 1},
                     headers={"Prefer": "handling=strict, max-affected=1"})
    assert r.status_code == 400
    assert r.get_json()["code"] == "PGRST124"
    assert rows(db, "SELECT year FROM books ORDER BY id") == [(2001,), (2002,)]
    r = client.patch("/books?id=eq.1", json={"year": 1},
                     headers={"Prefer": "handling=strict, max-affected=1"})
    assert r.status_code == 204
    assert "max-affected=1" in r.headers["Preference-Applied"]
    # lenient: max-affected is not enforced (PostgREST's rule)
    r = client.delete("/books?id=gt.0", headers={"Prefer": "max-affected=1"})
    assert r.status_code == 204


def test_tx_rollback(client, db, commits):
    r = client.post("/books", json={"id": 30, "title": "tmp"},
                    headers={"Prefer": "tx=rollback, return=representation"})
    assert r.status_code == 201
    assert r.get_json()[0]["id"] == 30
    assert "tx=rollback" in r.headers["Preference-Applied"]
    assert rows(db, "SELECT count(*) FROM books WHERE id = 30") == [(0,)]
    assert commits == []


def test_singular_write_rolls_back_when_not_one_row(client, db):
    r = client.patch("/books?id=gt.0", json={"year": 5}, headers={
        "Prefer": "return=representation", "Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 406
    assert r.get_json()["code"] == "PGRST116"
    assert rows(db, "SELECT year FROM books ORDER BY id") == [(2001,), (2002,)]
    r = client.patch("/books?id=eq.1", json={"year": 5}, headers={
        "Prefer": "return=representation", "Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 200
    assert r.get_json()["year"] == 5


def test_constraint_errors(client, db):
    r = client.post("/books", json={"id": 1, "title": "dup"})
    assert (r.status_code, r.get_json()["code"]) == (409, "23505")
    r = client.post("/books", json={"id": 50, "title": "fk", "author_id": 99})
    assert (r.status_code, r.get_json()["code"]) == (409, "23503")
    r = client.post("/authors", json={"id": 9, "name": "Ann"})
    assert (r.status_code, r.get_json()["code"]) == (409, "23505")
    assert rows(db, "SELECT count(*) FROM books") == [(2,)]


def test_csv_and_form_bodies(client, db):
    r = client.post("/books", data="id,title,year\n40,Csv One,2000\n41,\"Csv, Two\",\n",
                    headers={"Content-Type": "text/csv"})
    assert r.status_code == 201
    assert rows(db, "SELECT id, title, year FROM books WHERE id >= 40 ORDER BY id") == \
        [(40, "Csv One", 2000), (41, "Csv, Two", None)]
    r = client.post("/books", data={"id": "42", "title": "Form"})
    assert r.status_code == 201
    assert rows(db, "SELECT title FROM books WHERE id = 42") == [("Form",)]


def test_count_exact_on_write(client):
    r = client.delete("/books?id=gt.0", headers={"Prefer": "count=exact"})
    assert r.status_code == 204
    assert r.headers["Content-Range"] == "*/2"


def test_write_on_read_only_database(db):
    app = create_app(ServerConfig(db_dsn=f"file:{db}?mode=ro", allow_tables=("books",),
                                  auth_disabled=True, primary_url="http://primary:8080"))
    c = app.test_client()
    r = c.post("/books", json={"id": 60, "title": "x"})
    assert r.status_code == 405
    body = r.get_json()
    assert body["code"] == "25006"
    assert "http://primary:8080" in body["hint"]
    assert c.get("/books?id=eq.1").status_code == 200


def test_writer_hook_answer_is_the_replication_txid(db):
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True,
                                  writer_hook=RecordingHook([], answer=lambda n: "42")))
    r = app.test_client().post("/books", json={"title": "x"})
    assert r.headers["X-Replication-Txid"] == "42"


def test_failing_commit_hook_does_not_fail_a_committed_write(db, caplog):
    def broken(_n):
        raise RuntimeError("replicator gone")

    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True,
                                  writer_hook=RecordingHook([], answer=broken)))
    r = app.test_client().post("/books", json={"id": 90, "title": "kept"})
    assert r.status_code == 201
    assert "X-Replication-Txid" not in r.headers
    assert "commit hook failed" in caplog.text
    assert rows(db, "SELECT title FROM books WHERE id = 90") == [("kept",)]


def test_writes_after_fork_reopen_connections(db):
    """A worker forked after the app was used must not reuse the parent's connections."""
    import os

    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True))
    c = app.test_client()
    assert c.get("/books?id=eq.1").status_code == 200
    state = app.extensions["sqlite_rest"]
    parent_reader = state.db.reader()
    pid = os.fork()
    if pid == 0:  # child: must open its own connection and write through it
        code = 1
        try:
            if state.db.reader() is not parent_reader and \
                    c.post("/books", json={"id": 70, "title": "child"}).status_code == 201:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert state.db.reader() is parent_reader
    assert rows(db, "SELECT title FROM books WHERE id = 70") == [("child",)]


def test_wal_and_pragmas_applied(client, db):
    client.post("/books", json={"title": "wal"})
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    state = client.application.extensions["sqlite_rest"]
    writer = state.db.writer()
    assert writer.execute("PRAGMA foreign_keys").fetchall() == [(1,)]
    assert writer.execute("PRAGMA synchronous").fetchall() == [(1,)]  # NORMAL
    reader = state.db.reader()
    assert reader.execute("PRAGMA query_only").fetchall() == [(1,)]


def test_json_values_in_body(client, db):
    r = client.post("/books", json={"id": 80, "title": orjson.loads('"ünï €😀"'), "year": True})
    assert r.status_code == 201
    assert rows(db, "SELECT title, year FROM books WHERE id = 80") == [("ünï €😀", 1)]


def test_concurrent_writers_in_threads_all_commit(db):
    """Each thread has its own connections; BEGIN IMMEDIATE + busy_timeout serialise them."""
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True))
    statuses = []

    def worker(n):
        client = app.test_client()
        for i in range(25):
            statuses.append(client.post("/books", json={"id": 1000 + n * 100 + i,
                                                        "title": f"t{n}-{i}"}).status_code)
            client.get(f"/books?id=eq.{1000 + n * 100 + i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 100
    assert rows(db, "SELECT count(*) FROM books WHERE id >= 1000") == [(100,)]


def test_switching_to_wal_waits_for_a_writer_of_the_rollback_journal(tmp_path):
    """The switch to WAL upgrades a read transaction to a write one, and SQLite answers a busy
    upgrade at once, without the busy handler (it could deadlock): the first connections of
    several threads on a fresh file failed with 503 (1 run in 10 of the test above) while one
    of them was switching. force_wal retries until the lock is free."""
    path = str(tmp_path / "fresh.db")
    setup = apsw.Connection(path)
    setup.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    holder = apsw.Connection(path)
    holder.execute("BEGIN IMMEDIATE")  # the RESERVED lock of a rollback-journal writer
    probe = apsw.Connection(path)
    probe.set_busy_timeout(2000)
    started = time.monotonic()
    with pytest.raises(apsw.BusyError):  # what SQLite does on its own, despite the timeout
        probe.execute("PRAGMA journal_mode=WAL").fetchall()
    assert time.monotonic() - started < 1.0
    probe.close()
    # The holder waits for force_wal's momentary read locks to clear before it commits, as any
    # writer with a busy timeout does (without one, its COMMIT met one of them under load).
    holder.set_busy_timeout(5000)
    threading.Timer(0.2, lambda: holder.execute("COMMIT")).start()
    conn = open_connection(path)  # force_wal inside, with the default 5 s timeout
    assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    for c in (conn, holder, setup):
        c.close()


# --- PostgREST's finer points (#14 item 8), as its own test suite states them ---------------

def test_bodyless_write_answers_carry_no_content_type_and_a_range(client):
    # PATCH's range spans the rows it changed (UpdateSpec); POST's and DELETE's name none
    for response, status, range_ in (
            (client.post("/books", json={"id": 30, "title": "T"}), 201, "*/*"),
            (client.patch("/books?id=eq.30", json={"year": 1}), 204, "0-0/*"),
            (client.delete("/books?id=eq.30"), 204, "*/*")):
        assert response.status_code == status and response.data == b""
        assert "Content-Type" not in response.headers
        assert response.headers["Content-Range"] == range_
    r = client.delete("/books?id=gt.0", headers={"Prefer": "count=exact, tx=rollback"})
    assert r.headers["Content-Range"] == "*/2"
    r = client.post("/books?select=id", json={"id": 31, "title": "U"},
                    headers={"Prefer": "return=representation"})
    assert r.headers["Content-Range"] == "*/*" and r.get_json() == [{"id": 31}]


def test_object_accept_on_a_minimal_write_needs_exactly_one_row(client, db):
    r = client.delete("/books?id=gt.0", headers={"Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 406
    assert r.get_json()["code"] == "PGRST116"
    assert r.get_json()["details"] == "The result contains 2 rows"
    assert rows(db, "SELECT count(*) FROM books") == [(2,)]  # rolled back
    r = client.patch("/books?id=eq.1", json={"year": 1999},
                     headers={"Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 204
    assert rows(db, "SELECT year FROM books WHERE id = 1") == [(1999,)]


@pytest.mark.parametrize("body", [{}, [], [{}]])
def test_an_empty_patch_changes_nothing(client, db, body, commits):
    before = rows(db, "SELECT * FROM books ORDER BY id")
    r = client.patch("/books", json=body)
    assert (r.status_code, r.data, r.headers["Content-Range"]) == (204, b"", "*/*")
    r = client.patch("/books?select=id", json=body, headers={"Prefer": "return=representation"})
    assert (r.status_code, r.get_json(), r.headers["Content-Range"]) == (200, [], "*/*")
    assert rows(db, "SELECT * FROM books ORDER BY id") == before and commits == []


def test_order_sorts_the_rows_a_write_returns(client):
    r = client.post("/books?select=id,title&order=year.desc.nullsfirst,title",
                    json=[{"id": 40, "title": "b", "year": 1}, {"id": 41, "title": "a", "year": 1},
                          {"id": 42, "title": "z", "year": None}, {"id": 43, "title": "q", "year": 7}],
                    headers={"Prefer": "return=representation"})
    assert [row["id"] for row in r.get_json()] == [42, 43, 41, 40]
    assert list(r.get_json()[0]) == ["id", "title"]  # the order keys are not shown
    r = client.delete("/books?id=gte.40&order=id.desc&select=id",
                      headers={"Prefer": "return=representation"})
    assert r.get_json() == [{"id": 43}, {"id": 42}, {"id": 41}, {"id": 40}]


def test_missing_default_applies_to_patch(client, db):
    r = client.patch("/books?id=eq.1&columns=status,year", json={"year": 2020},
                     headers={"Prefer": "return=representation, missing=default"})
    assert r.get_json()[0]["status"] == "draft" and r.get_json()[0]["year"] == 2020
    r = client.patch("/books?id=eq.1&columns=title,year", json={"title": "New"},
                     headers={"Prefer": "return=representation"})
    assert r.get_json()[0]["year"] is None  # without it, a named column the body lacks is NULL


def test_upsert_status_says_whether_a_row_was_inserted(client):
    rep = "return=representation"
    assert client.put("/books?id=eq.50", json={"id": 50, "title": "P", "year": None, "status": "s",
                                               "author_id": None},
                      headers={"Prefer": rep}).status_code == 201
    r = client.put("/books?id=eq.50", json=[{"id": 50, "title": "Q", "year": None, "status": "s",
                                              "author_id": None}, {"id": 51}],
                   headers={"Prefer": rep, "Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 200 and r.get_json()["title"] == "Q"  # the first element is put
    merge = rep + ", resolution=merge-duplicates"
    assert client.post("/books", json=[{"id": 50, "title": "R"}],
                       headers={"Prefer": merge}).status_code == 200
    assert client.post("/books", json=[{"id": 50, "title": "R"}, {"id": 52, "title": "S"}],
                       headers={"Prefer": merge}).status_code == 201
    r = client.post("/books", json=[], headers={"Prefer": merge})
    assert (r.status_code, r.get_json()) == (200, [])
    # ignore-duplicates is always 201 (PostgREST: only merge-duplicates answers 200)
    assert client.post("/books", json=[{"id": 52, "title": "S"}],
                       headers={"Prefer": rep + ", resolution=ignore-duplicates"}).status_code == 201


def test_csv_null_in_and_no_trailing_newline_out(client, db):
    r = client.post("/books?select=id,year", data="id,title,year\n60,C,NULL\n61,D,1999",
                    headers={"Content-Type": "text/csv", "Accept": "text/csv",
                             "Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.data == b"id,year\n60,\n61,1999"
    assert rows(db, "SELECT year IS NULL FROM books WHERE id = 60") == [(1,)]


def test_a_write_planned_before_a_schema_change_is_planned_again(client, db):
    """Writes are planned on the cached schema; their transaction checks it before their
    first statement (SchemaCache.holds) and a write that finds it moved is planned again
    (routes.write_table), its body read once."""
    assert client.post("/books", json={"title": "warm"}).status_code == 201  # schema cached
    migrator = apsw.Connection(str(db))
    migrator.execute("ALTER TABLE books ADD COLUMN pages INTEGER NOT NULL DEFAULT 7")
    # the stale plan would return the old columns (a plan made before the check)
    r = client.post("/books", json={"id": 40, "title": "Delta"},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201, r.data
    assert r.get_json() == [{"id": 40, "title": "Delta", "year": None, "status": "draft",
                             "author_id": None, "pages": 7}]
    # the stale plan refuses a column it does not know (PGRST204) before any transaction
    migrator.execute("ALTER TABLE books ADD COLUMN isbn TEXT")
    r = client.post("/books", json={"id": 41, "title": "Eps", "isbn": "978"})
    assert r.status_code == 201, r.data
    # a table created since the last request
    migrator.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT)")
    migrator.close()
    assert rows(db, "SELECT id, pages, isbn FROM books WHERE id >= 40") == [
        (40, 7, None), (41, 7, "978")]


def test_writes_ask_for_the_schema_inside_their_transaction(client, db):
    """No read transaction for the schema per write (#11: 9 % of a POST in-process): the
    write's own transaction checks it, by its data version or at most one PRAGMA."""
    state = client.application.extensions["sqlite_rest"]
    assert client.post("/books", json={"title": "warm"}).status_code == 201
    asked = {"reader": 0, "writer": 0}
    for name, conn in (("reader", state.db.reader()), ("writer", state.db.writer())):
        def trace(cursor, sql, bindings, name=name):
            asked[name] += "schema_version" in sql
            return True
        conn.exec_trace = trace
    for i in range(5):
        assert client.post("/books", json={"title": f"t{i}"}).status_code == 201
    assert asked["reader"] == 0
    assert asked["writer"] <= 5


def test_a_write_that_fails_after_its_commit_is_never_run_twice(db, commits):
    """A write is planned again only when nothing of it committed (routes.write_table): here
    the schema moves and the answer fails after COMMIT; the row is written once, and the
    client gets the error."""
    migrator = apsw.Connection(str(db))

    class FailingPosition:
        def __str__(self):
            migrator.execute("CREATE TABLE IF NOT EXISTS moved(x)")  # the schema moves too
            raise RuntimeError("position lost after the commit")

    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True,
                                  writer_hook=RecordingHook(commits, lambda n: FailingPosition())))
    r = app.test_client().post("/books", json={"id": 50, "title": "once"})
    assert r.status_code == 500 and r.get_json()["code"] == "XX000", r.data
    assert len(commits) == 1
    assert rows(db, "SELECT count(*) FROM books WHERE id = 50") == [(1,)]
    migrator.close()
