"""Reads through the HTTP API: create_app(...).test_client() against real apsw DB files."""
from __future__ import annotations

import base64
import csv
import io

import apsw
import orjson
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    year INTEGER,
    price REAL,
    data TEXT,
    cover BLOB,
    author_id INTEGER REFERENCES authors(id)
);
CREATE TABLE secret (id INTEGER PRIMARY KEY, pin TEXT);
CREATE VIEW book_years AS SELECT id, year + 0 AS y, title || '' AS t FROM books;
INSERT INTO authors VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO books VALUES
    (1, 'Alpha', 2001, 9.5, '{"tags":["a","b"],"meta":{"pages":100}}', x'00ff10', 1),
    (2, 'beta', 2002, NULL, NULL, NULL, 1),
    (3, 'Gamma', NULL, 1.25, '{"meta":{"pages":300}}', NULL, 2),
    (4, 'delta, with comma', 2004, 4.0, NULL, NULL, NULL),
    (5, 'Big', 9007199254740993, NULL, NULL, NULL, NULL);
INSERT INTO secret VALUES (1, '1234');
"""


def make_db(path, schema=SCHEMA):
    conn = apsw.Connection(str(path))
    conn.execute(schema)
    conn.close()
    return str(path)


@pytest.fixture
def client(tmp_path):
    db = make_db(tmp_path / "read.db")
    app = create_app(ServerConfig(db_dsn=db, allow_tables=("books,authors", "book_years"),
                                  auth_disabled=True))
    with app.test_client() as c:
        yield c


def ids(response):
    return [row["id"] for row in response.get_json()]


def test_get_all_rows_with_types_and_content_range(client):
    r = client.get("/books?order=id")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Content-Range"] == "0-4/*"
    rows = orjson.loads(r.data)
    assert rows[0] == {"id": 1, "title": "Alpha", "year": 2001, "price": 9.5,
                       "data": '{"tags":["a","b"],"meta":{"pages":100}}',
                       "cover": base64.b64encode(b"\x00\xff\x10").decode(), "author_id": 1}
    assert list(rows[0]) == ["id", "title", "year", "price", "data", "cover", "author_id"]
    # 2**53 + 1 survives exactly (never via float)
    assert b"9007199254740993" in r.data
    assert rows[4]["year"] == 9007199254740993


def test_filters_and_select_rename_cast_json_path(client):
    r = client.get("/books?select=id,name:title,year::text,pages:data->meta->>pages"
                   "&id=in.(1,3)&order=id.desc")
    assert r.status_code == 200
    # ->> is text, as PostgreSQL's (-> keeps the JSON number)
    assert r.get_json() == [{"id": 3, "name": "Gamma", "year": None, "pages": "300"},
                            {"id": 1, "name": "Alpha", "year": "2001", "pages": "100"}]
    r = client.get("/books?select=id,data->tags&id=eq.1")
    assert r.get_json() == [{"id": 1, "tags": ["a", "b"]}]


def test_operators_like_ilike_is_or(client):
    assert ids(client.get("/books?title=like.*e*&order=id")) == [2, 4]
    assert ids(client.get("/books?title=like.*E*&order=id")) == []  # like is case-sensitive
    assert ids(client.get("/books?title=ilike.*E*&order=id")) == [2, 4]
    assert ids(client.get("/books?title=ilike.A*&order=id")) == [1]
    assert ids(client.get("/books?year=is.null")) == [3]
    assert ids(client.get("/books?or=(id.eq.1,price.lt.2)&order=id")) == [1, 3]
    assert ids(client.get("/books?year=ge.2002&year=le.2004&order=id")) == [2, 4]
    assert ids(client.get('/books?title=in.("delta, with comma",beta)&order=id')) == [2, 4]
    assert ids(client.get("/books?id=eq.2")) == [2]
    assert ids(client.get("/books?id=eq.%272%27")) == []  # '2' with quotes is text, not 2


def test_filter_text_value_coerced_for_view_expression_column(client):
    r = client.get("/book_years?y=eq.2002")
    assert r.status_code == 200
    assert ids(r) == [2]


def test_order_nulls_like_postgrest(client):
    asc = ids(client.get("/books?order=year&select=id,year"))
    assert asc[-1] == 3  # NULL last for ASC
    desc = ids(client.get("/books?order=year.desc&select=id,year"))
    assert desc[0] == 3  # NULL first for DESC
    assert ids(client.get("/books?order=year.desc.nullslast"))[-1] == 3


def test_limit_offset_and_count_exact(client):
    r = client.get("/books?order=id&limit=2&offset=1", headers={"Prefer": "count=exact"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "1-2/5"
    assert r.headers["Preference-Applied"] == "count=exact"
    assert ids(r) == [2, 3]
    full = client.get("/books", headers={"Prefer": "count=exact"})
    assert full.status_code == 200
    assert full.headers["Content-Range"] == "0-4/5"
    only_offset = client.get("/books?order=id&offset=3")
    assert ids(only_offset) == [4, 5]
    assert only_offset.headers["Content-Range"] == "3-4/*"


def test_range_header(client):
    r = client.get("/books?order=id", headers={"Range": "1-2", "Range-Unit": "items"})
    assert ids(r) == [2, 3]
    assert r.headers["Content-Range"] == "1-2/*"
    r = client.get("/books?order=id", headers={"Range": "3-"})
    assert ids(r) == [4, 5]
    # intersected with limit/offset
    r = client.get("/books?order=id&limit=10&offset=1", headers={"Range": "0-1"})
    assert ids(r) == [2]


def test_empty_result_content_range(client):
    r = client.get("/books?id=eq.999")
    assert r.status_code == 200
    assert r.get_json() == []
    assert r.headers["Content-Range"] == "*/*"  # PostgREST: no count asked, no total given
    r = client.get("/books?id=eq.999", headers={"Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "*/0"
    assert r.status_code == 200


def test_unsatisfiable_range_is_416(client):
    r = client.get("/books?offset=10", headers={"Prefer": "count=exact"})
    assert r.status_code == 416
    body = r.get_json()
    assert body["code"] == "PGRST103"
    assert r.headers["Content-Range"] == "*/5"


def test_csv(client):
    r = client.get("/books?select=id,title,cover&order=id&id=lte.4", headers={"Accept": "text/csv"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(r.data.decode())))
    assert table[0] == ["id", "title", "cover"]
    assert table[1] == ["1", "Alpha", base64.b64encode(b"\x00\xff\x10").decode()]
    assert table[4] == ["4", "delta, with comma", ""]


def test_singular_object(client):
    accept = {"Accept": "application/vnd.pgrst.object+json"}
    r = client.get("/books?id=eq.2&select=id,title", headers=accept)
    assert r.status_code == 200
    assert r.get_json() == {"id": 2, "title": "beta"}
    assert r.headers["Content-Type"].startswith("application/vnd.pgrst.object+json")
    for query in ("/books", "/books?id=eq.999"):
        r = client.get(query, headers=accept)
        assert r.status_code == 406
        assert r.get_json()["code"] == "PGRST116"


def test_accept_negotiation(client):
    assert client.get("/books", headers={"Accept": "*/*"}).status_code == 200
    assert client.get("/books", headers={"Accept": "application/json, text/plain;q=0.5"}
                      ).status_code == 200
    r = client.get("/books", headers={"Accept": "text/xml"})
    assert r.status_code == 406
    assert r.get_json()["code"] == "PGRST107"
    r = client.get("/books", headers={"Accept": "text/plain;q=0.1, text/csv"})
    assert r.headers["Content-Type"].startswith("text/csv")


def test_head_has_headers_no_body(client):
    r = client.head("/books?order=id&limit=2")
    assert r.status_code == 200
    assert r.data == b""
    assert r.headers["Content-Range"] == "0-1/*"


def test_not_allow_listed_answers_like_unknown(client):
    hidden = client.get("/secret")
    missing = client.get("/no_such_table")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_json()["code"] == missing.get_json()["code"] == "PGRST205"
    assert "pin" not in hidden.get_data(as_text=True)


def test_tolerated_headers(client):
    r = client.get("/books?id=eq.1", headers={
        "Accept-Profile": "public", "Content-Type": "application/json",
        "apikey": "anything", "Range-Unit": "items"})
    assert r.status_code == 200
    assert ids(r) == [1]


def test_cors_headers_and_preflight(client):
    r = client.get("/books")
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    exposed = r.headers["Access-Control-Expose-Headers"]
    for name in ("Content-Range", "Range-Unit", "Location", "Preference-Applied",
                 "X-Replication-Txid"):
        assert name in exposed
    r = client.options("/books", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization,prefer"})
    assert r.status_code == 200
    assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "authorization,prefer"
    err = client.get("/nope")
    assert err.headers["Access-Control-Allow-Origin"] == "*"


def test_schema_change_is_seen_without_restart(client, tmp_path):
    conn = apsw.Connection(str(tmp_path / "read.db"))
    conn.execute("ALTER TABLE authors ADD COLUMN born INTEGER; UPDATE authors SET born = 1970")
    conn.close()
    r = client.get("/authors?select=id,born&id=eq.1")
    assert r.status_code == 200
    assert r.get_json() == [{"id": 1, "born": 1970}]


def test_a_read_planned_before_a_schema_change_answers_with_the_new_schema(client, tmp_path):
    """Reads are planned on the cached schema and confirmed after their statement ran
    (routes.read_table): a column added since is in the answer, a table created since is
    found, a table dropped since is 404."""
    assert client.get("/authors?id=eq.1").get_json() == [{"id": 1, "name": "Ann"}]
    conn = apsw.Connection(str(tmp_path / "read.db"))
    conn.execute("ALTER TABLE authors ADD COLUMN born INTEGER; UPDATE authors SET born = 1970")
    assert client.get("/authors?id=eq.1").get_json() == [{"id": 1, "name": "Ann", "born": 1970}]
    conn.execute("DROP VIEW book_years; CREATE TABLE book_years(y INTEGER); "
                 "INSERT INTO book_years VALUES (1999)")
    assert client.get("/book_years").get_json() == [{"y": 1999}]
    conn.execute("DROP TABLE book_years")
    r = client.get("/book_years")
    assert r.status_code == 404 and r.get_json()["code"] == "PGRST205"
    conn.close()


def test_reads_ask_for_the_schema_only_after_the_database_changed(client, tmp_path):
    """No `PRAGMA schema_version` per read (#11: 9 % of a GET by key): the read connection's
    data version tells whether any transaction changed the database since the schema was last
    confirmed on it; after a write (by anyone) the next read asks once."""
    reader = client.application.extensions["sqlite_rest"].db.reader()
    statements = []
    reader.exec_trace = lambda cursor, sql, bindings: statements.append(sql) or True
    asked = lambda: sum("schema_version" in sql for sql in statements)  # noqa: E731
    assert client.get("/authors?id=eq.1").status_code == 200  # may load the schema
    before = asked()
    for i in range(5):
        assert client.get(f"/authors?id=eq.{i}").status_code == 200
    assert asked() == before
    writer = apsw.Connection(str(tmp_path / "read.db"))
    writer.execute("INSERT INTO authors(name) VALUES ('Zed')")
    writer.close()
    assert client.get("/authors?name=eq.Zed").get_json()[0]["name"] == "Zed"
    assert asked() == before + 1
    assert client.get("/authors?id=eq.1").status_code == 200
    assert asked() == before + 1


def test_openapi_lists_only_allow_listed(client):
    r = client.get("/")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["swagger"] == "2.0"
    assert set(doc["definitions"]) == {"books", "authors", "book_years"}
    assert "/secret" not in doc["paths"]
    assert doc["definitions"]["books"]["properties"]["id"]["type"] == "integer"
    assert "Primary Key" in doc["definitions"]["books"]["properties"]["id"]["description"]
    assert "post" not in doc["paths"]["/book_years"]
    assert doc["definitions"]["authors"]["required"] == ["name"]


def test_live_and_ready(client):
    assert client.get("/live").status_code == 200
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.get_json()["status"] == "ready"


def test_ready_hook_and_read_only_dsn(tmp_path):
    db = make_db(tmp_path / "ro.db")
    state = {"ready": False}
    app = create_app(ServerConfig(db_dsn=f"file:{db}?mode=ro&_busy_timeout=100",
                                  allow_tables=("books",), auth_disabled=True,
                                  ready=lambda: state["ready"]))
    c = app.test_client()
    assert c.get("/ready").status_code == 503
    state["ready"] = True
    assert c.get("/ready").status_code == 200
    assert ids(c.get("/books?id=eq.1")) == [1]


def test_max_rows_caps_unlimited_reads(tmp_path):
    db = make_db(tmp_path / "cap.db")
    app = create_app(ServerConfig(db_dsn=db, allow_tables=("books",), auth_disabled=True,
                                  max_rows=2))
    r = app.test_client().get("/books?order=id", headers={"Prefer": "count=exact"})
    assert ids(r) == [1, 2]
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "0-1/5"


def test_postgrest_py_style_request(client):
    """The exact request shape postgrest-py sends for .select('*').eq('id', 1)."""
    r = client.get("/books?select=%2A&id=eq.1", headers={
        "Accept": "application/json", "Content-Type": "application/json",
        "Accept-Profile": "public", "Prefer": "count=exact"})
    assert r.status_code == 200
    assert ids(r) == [1]
    assert r.headers["Content-Range"] == "0-0/1"


@pytest.mark.parametrize("dsn,path,mode,busy,sync", [
    ("data.db", "data.db", "rwc", 5000, "NORMAL"),
    ("data.db?_journal_mode=WAL&_busy_timeout=250", "data.db", "rwc", 250, "NORMAL"),
    ("file:data.db?mode=ro", "data.db", "ro", 5000, "NORMAL"),
    ("file:///abs/data.db?mode=rw&_timeout=9&_sync=FULL&_fk=1", "/abs/data.db", "rw", 9, "FULL"),
])
def test_dsn_parsing(dsn, path, mode, busy, sync):
    from sqlite_rest.config import parse_dsn

    parsed = parse_dsn(dsn)
    assert (parsed.path, parsed.mode, parsed.busy_timeout_ms, parsed.synchronous) == \
        (path, mode, busy, sync)


@pytest.mark.parametrize("dsn", ["", "?mode=ro", ":memory:", "x.db?mode=bogus",
                                 "x.db?_busy_timeout=abc", "x.db?_fk=maybe"])
def test_bad_dsn_is_refused(dsn):
    from sqlite_rest.config import DSNError, parse_dsn

    with pytest.raises(DSNError):
        parse_dsn(dsn)


def test_allow_tables_split_and_deduplicated(tmp_path):
    config = ServerConfig(db_dsn=str(tmp_path / "x.db"), allow_tables=("a, b", "b,c", ""),
                          auth_disabled=True)
    assert config.allow_tables == ("a", "b", "c")
