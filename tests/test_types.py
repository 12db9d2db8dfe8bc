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
