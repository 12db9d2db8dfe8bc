"""Hostile and broken input: each request gets its documented error, and the database is
unchanged afterwards (checked by a snapshot of every table, with sqlite_schema)."""
from __future__ import annotations

import apsw
import orjson
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER DEFAULT 0);
CREATE TABLE private (id INTEGER PRIMARY KEY, secret TEXT);
INSERT INTO items VALUES (1, 'apple', 3), (2, 'pear', 5);
INSERT INTO private VALUES (1, 'hunter2');
"""


@pytest.fixture
def env(tmp_path):
    path = tmp_path / "bad.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(path), allow_tables=("items",), auth_disabled=True))
    return app.test_client(), path


def snapshot(path):
    conn = apsw.Connection(str(path))
    try:
        return (conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall(),
                conn.execute("SELECT * FROM items ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM private ORDER BY id").fetchall())
    finally:
        conn.close()


def check(response, status, code):
    assert response.status_code == status, response.data
    assert response.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(response.data)
    assert set(body) == {"code", "message", "details", "hint"}
    assert body["code"] == code, body
    assert "Traceback" not in response.get_data(as_text=True)
    assert "hunter2" not in response.get_data(as_text=True)
    return body


JSON = {"Content-Type": "application/json"}

CASES = [
    # (method, url, kwargs, status, code)
    ("post", "/items", {"data": b"{\"name\": ", "headers": JSON}, 400, "PGRST102"),
    ("post", "/items", {"data": b"", "headers": JSON}, 400, "PGRST102"),
    ("post", "/items", {"data": b"[1, 2]", "headers": JSON}, 400, "PGRST102"),
    ("post", "/items", {"data": b"\"text\"", "headers": JSON}, 400, "PGRST102"),
    ("post", "/items", {"data": b"\xff\xfe{}", "headers": JSON}, 400, "PGRST102"),
    ("post", "/items", {"data": b"{\"name\": \"\\ud800\"}", "headers": JSON}, 400, "PGRST102"),
    # one object in an array is the object (PostgREST); of several none would be "the" update
    ("patch", "/items?id=eq.1", {"data": b"[{\"name\":\"x\"},{\"name\":\"y\"}]", "headers": JSON},
     400, "PGRST102"),
    ("post", "/items", {"data": b"name=x", "headers": {"Content-Type": "text/plain"}}, 415,
     "PGRST107"),
    ("post", "/items", {"data": b"<a/>", "headers": {"Content-Type": "application/xml"}}, 415,
     "PGRST107"),
    ("get", "/nope", {}, 404, "PGRST205"),
    ("get", "/private", {}, 404, "PGRST205"),
    ("post", "/private", {"json": {"id": 2, "secret": "x"}}, 404, "PGRST205"),
    ("delete", "/private", {}, 404, "PGRST205"),
    ("get", "/items?nope=eq.1", {}, 400, "42703"),
    ("get", "/items?select=nope", {}, 400, "42703"),
    ("get", "/items?order=nope", {}, 400, "42703"),
    ("post", "/items", {"json": {"name": "x", "nope": 1}}, 400, "PGRST204"),
    ("get", "/items?id=zz.1", {}, 400, "PGRST100"),
    ("get", "/items?id=eq", {}, 400, "PGRST100"),
    ("get", "/items?id=in.()", {}, None, None),  # valid: matches nothing
    ("get", "/items?id=in.(1", {}, 400, "PGRST100"),
    ("get", "/items?limit=-1", {}, 416, "PGRST103"),  # PostgREST; a negative offset is a no-op
    ("get", "/items?limit=abc", {}, 400, "PGRST100"),
    ("get", "/items", {"headers": {"Range": "5"}}, 416, "PGRST103"),
    ("get", "/items", {"headers": {"Range": "5-2"}}, 416, "PGRST103"),
    ("get", "/items", {"headers": {"Range": "a-b"}}, 416, "PGRST103"),
    ("get", "/items?select=*,private(*)", {}, 400, "PGRST200"),  # as if unrelated: no leak
    ("get", "/items?id=eq.1;DROP TABLE items", {}, None, None),  # a value: no match, no harm
    ("delete", "/items?id=eq.1 OR 1=1", {}, None, None),
    ("patch", "/items?limit=1", {"json": {"qty": 1}}, 400, "PGRST100"),
]


@pytest.mark.parametrize("method,url,kwargs,status,code", CASES,
                         ids=[f"{c[0]} {c[1]} {c[2].get('headers', '')}"[:80] for c in CASES])
def test_bad_input(env, method, url, kwargs, status, code):
    client, path = env
    before = snapshot(path)
    response = getattr(client, method)(url, **kwargs)
    if status is None:  # harmless: answered normally without matching anything
        assert response.status_code in (200, 204), response.data
        if method == "get":
            assert response.get_json() == []
    else:
        check(response, status, code)
    assert snapshot(path) == before


INJECTIONS = [
    'id"; DROP TABLE items; --',
    "id) FROM private; --",
    "(select secret from private)",
    "secret",
    "items.id",
    "private.secret",
    "id/**/",
    "sqlite_version()",
    "json_extract(name,'$')",
    'id" FROM private --',
]


@pytest.mark.parametrize("ident", INJECTIONS)
def test_injection_in_every_identifier_position(env, ident):
    client, path = env
    before = snapshot(path)
    urls = [
        ("get", f"/items?select={ident}", None),
        ("get", f"/items?select=alias:{ident}", None),
        ("get", f"/items?{ident}=eq.1", None),
        ("get", f"/items?order={ident}", None),
        ("get", f"/items?or=({ident}.eq.1)", None),
        ("get", f"/items?select=id::{ident}", None),
        ("get", f"/items?select={ident}->>a", None),
        ("post", f"/items?columns={ident}", {"name": "x"}),
        ("post", f"/items?on_conflict={ident}", {"id": 1, "name": "x"}),
        ("post", "/items", {ident: 1}),
        ("patch", "/items?id=eq.1", {ident: 1}),
        ("get", f"/{ident}", None),
    ]
    for method, url, body in urls:
        kwargs = {"json": body} if body is not None else {}
        if method == "post" and "on_conflict" in url:
            kwargs["headers"] = {"Prefer": "resolution=merge-duplicates"}
        response = getattr(client, method)(url, **kwargs)
        assert response.status_code in (400, 404), (url, response.status_code, response.data)
        body_json = orjson.loads(response.data)
        assert set(body_json) == {"code", "message", "details", "hint"}
        assert "hunter2" not in response.get_data(as_text=True)
    assert snapshot(path) == before


def test_body_of_10_mb_is_413(env):
    client, path = env
    before = snapshot(path)
    big = orjson.dumps([{"name": "x" * 1000}] * 10_000)
    assert len(big) > 10_000_000
    response = client.post("/items", data=big, headers=JSON)
    check(response, 413, None)
    assert snapshot(path) == before


def test_nul_bytes_round_trip(env):
    client, path = env
    r = client.post("/items", json={"id": 10, "name": "a\x00b"},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.get_json()[0]["name"] == "a\x00b"
    conn = apsw.Connection(str(path))
    assert conn.execute("SELECT name, length(CAST(name AS BLOB)) FROM items WHERE id = 10"
                        ).fetchall() == [("a\x00b", 3)]
    conn.close()
    r = client.get("/items?name=eq.a%00b&select=id")
    assert r.get_json() == [{"id": 10}]
    r = client.get("/items%00x")
    check(r, 404, "PGRST205")
    r = client.get("/items?na%00me=eq.1")
    check(r, 400, "PGRST100")  # the parser refuses NUL in names outright


UNICODE = ["ünïcödé", "日本語テキスト", "emoji 😀🎉", "rtl \u202e txt", "zero\u200bwidth",
           "combining e\u0301", "'; DROP TABLE items; --", "%_*\\", "\"quoted\""]


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_values(env, text):
    client, _ = env
    r = client.post("/items", json={"name": text}, headers={"Prefer": "return=representation"})
    assert r.status_code == 201, r.data
    new_id = r.get_json()[0]["id"]
    r = client.get("/items", query_string={"id": f"eq.{new_id}", "select": "name"})
    assert r.get_json() == [{"name": text}]
    r = client.get("/items", query_string={"name": f"eq.{text}", "select": "id"})
    assert r.get_json() == [{"id": new_id}]
    r = client.get("/items", query_string={"name": f'in.("{text.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}")',
                                           "select": "id"})
    assert r.get_json() == [{"id": new_id}]


def test_unicode_table_and_column_names(tmp_path):
    path = tmp_path / "uni.db"
    conn = apsw.Connection(str(path))
    conn.execute('CREATE TABLE "bücher" ("tïtel" TEXT, "wert €" INTEGER);'
                 "INSERT INTO \"bücher\" VALUES ('x', 1)")
    conn.close()
    c = create_app(ServerConfig(db_dsn=str(path), allow_tables=("bücher",),
                                auth_disabled=True)).test_client()
    r = c.get("/b%C3%BCcher", query_string={"select": 'tïtel,"wert €"', "tïtel": "eq.x"})
    assert r.status_code == 200, r.data
    assert r.get_json() == [{"tïtel": "x", "wert €": 1}]


def test_invalid_utf8_in_url_is_clean(env):
    client, path = env
    before = snapshot(path)
    r = client.get("/items?name=eq.%ff%fe")
    assert r.status_code == 200
    assert r.get_json() == []
    r = client.get("/%ff%fe")
    check(r, 404, "PGRST205")
    assert snapshot(path) == before


def test_huge_integer_in_body_is_refused(env):
    client, path = env
    before = snapshot(path)
    r = client.post("/items", data=b'{"name": "x", "qty": 18446744073709551615}', headers=JSON)
    check(r, 400, "PGRST102")
    assert snapshot(path) == before


def test_deeply_nested_logic_is_refused(env):
    client, _ = env
    nested = "or=(" * 200 + "id.eq.1" + ")" * 200
    r = client.get("/items?" + nested)
    check(r, 400, "PGRST100")


def test_empty_and_whitespace_identifiers(env):
    client, _ = env
    check(client.get("/items?select=,"), 400, "PGRST100")
    check(client.get("/items?=eq.1"), 400, "PGRST100")
    check(client.get("/items?order="), 400, "PGRST100")
