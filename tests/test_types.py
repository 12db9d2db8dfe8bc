"""Columns declared JSON/JSONB and BOOLEAN come out as PostgREST shows them (#14 item 5)."""
from __future__ import annotations

import apsw
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE docs (id INTEGER PRIMARY KEY, body JSON, meta JSONB, done BOOLEAN, note TEXT);
INSERT INTO docs VALUES (1, '{"tags":["a","b"],"n":5}', '[1,2]', 1, '{"not":"json column"}'),
                        (2, 'not json at all', NULL, 0, NULL),
                        (3, NULL, '{}', NULL, NULL);
"""


@pytest.fixture
def client(tmp_path):
    conn = apsw.Connection(str(tmp_path / "types.db"))
    conn.execute(SCHEMA)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(tmp_path / "types.db"), allow_tables=("docs",),
                                  auth_disabled=True))
    with app.test_client() as c:
        yield c


def test_json_and_boolean_columns_are_json_values(client):
    r = client.get("/docs?order=id")
    assert r.get_json() == [
        {"id": 1, "body": {"tags": ["a", "b"], "n": 5}, "meta": [1, 2], "done": True,
         "note": '{"not":"json column"}'},  # a TEXT column stays a string
        {"id": 2, "body": "not json at all", "meta": None, "done": False, "note": None},
        {"id": 3, "body": None, "meta": {}, "done": None, "note": None},
    ]
    assert client.get("/docs?select=done,body&id=eq.1").get_json() == \
        [{"done": True, "body": {"tags": ["a", "b"], "n": 5}}]


def test_filters_and_paths_work_on_them(client):
    assert client.get("/docs?select=id&done=eq.true").get_json() == [{"id": 1}]
    assert client.get("/docs?select=id&done=is.false").get_json() == [{"id": 2}]
    assert client.get("/docs?select=id,first:body->tags->>0&body->>n=eq.5").get_json() == \
        [{"id": 1, "first": "a"}]


def test_json_values_go_in_as_json(client, tmp_path):
    r = client.post("/docs?select=id,body,done", json={"id": 9, "body": {"a": [1, None]},
                                                       "done": True},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.get_json() == [{"id": 9, "body": {"a": [1, None]}, "done": True}]
    conn = apsw.Connection(str(tmp_path / "types.db"))
    assert conn.execute("SELECT body, done FROM docs WHERE id = 9").fetchall() == \
        [('{"a":[1,null]}', 1)]
    conn.close()


@pytest.fixture
def tagged(tmp_path):
    conn = apsw.Connection(str(tmp_path / "tags.db"))
    conn.execute("""
        CREATE TABLE t (id INTEGER PRIMARY KEY, tags JSON, data JSON);
        INSERT INTO t VALUES (1, '["a","b","c"]', '{"k":1,"x":"y","n":{"z":[1]}}'),
                             (2, '["b"]', '{"k":2}'), (3, '[1,2]', NULL), (4, NULL, '[1,2,3]'),
                             (5, 'not json', '{}');
    """)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(tmp_path / "tags.db"), allow_tables=("t",),
                                  auth_disabled=True))
    with app.test_client() as c:
        yield c


@pytest.mark.parametrize("query,ids", [
    ("tags=cs.{a,b}", [1]),
    ("tags=cs.{b}", [1, 2]),
    ('tags=cs.["b"]', [1, 2]),
    ("tags=cs.{1}", [3]),                   # PostgreSQL's literal is text; JSON 1 matches
    ('tags=cs.{"a,b"}', []),
    ("tags=cd.{a,b,c,d}", [1, 2]),
    ("tags=ov.{c,2}", [1, 3]),
    ('data=cs.{"k":1}', [1]),
    ('data=cs.{"n":{"z":[1]}}', [1]),
    ("data->n->z=cs.{1}", [1]),
    ("tags=not.cs.{b}", [3]),               # NULL and non-JSON columns match neither way
    ('or=(tags.cs.{a,c},data.cs.{"k":2})', [1, 2]),
])
def test_containment_operators(tagged, query, ids):
    r = tagged.get("/t?select=id&order=id&" + query)
    assert r.status_code == 200, r.data
    assert [row["id"] for row in r.get_json()] == ids


@pytest.mark.parametrize("query", ["tags=cs.{a", "tags=cs.[1,", "tags=cs.x", "tags=ov.{a}}"])
def test_malformed_containment_values_are_400(tagged, query):
    r = tagged.get("/t?" + query)
    assert r.status_code == 400 and r.get_json()["code"] == "PGRST100"
