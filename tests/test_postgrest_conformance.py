"""PostgREST's behaviour, case by case, as its own spec suite states it (test/spec/Feature/…),
on a small SQLite schema of our own. Each test names the spec file its cases come from; the
cases are restated here, not copied.

Areas checked and found equal are not repeated here (they live in test_api_read/write,
test_embedding, test_types, test_query_parser); this module holds the cases that differed.
"""
from __future__ import annotations

import apsw
import orjson
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY);
CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                       client_id INTEGER REFERENCES clients(id));
CREATE TABLE tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                    project_id INTEGER REFERENCES projects(id));
CREATE TABLE langs (name TEXT PRIMARY KEY, rank INTEGER);
CREATE TABLE no_pk (a TEXT, b TEXT);
CREATE TABLE with_default (id INTEGER PRIMARY KEY, note TEXT DEFAULT 'none');
INSERT INTO items VALUES (1), (2), (3), (4), (5);
INSERT INTO clients VALUES (1, 'Acme'), (2, 'Globex');
INSERT INTO projects VALUES (1, 'Rocket', 1), (2, 'Anvil', 1), (3, 'Laser', 2), (4, 'Lone', NULL);
INSERT INTO tasks VALUES (1, 'Design rocket', 1), (2, 'Build rocket', 1), (3, 'Design anvil', 2);
INSERT INTO langs VALUES ('Go', 1), ('Rust', 2), ('Zig', 3);
INSERT INTO no_pk VALUES ('1', '0'), ('2', '0'), (NULL, NULL);
"""

TABLES = "items,clients,projects,tasks,langs,no_pk,with_default"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "conformance.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    return str(path)


@pytest.fixture
def client(db):
    app = create_app(ServerConfig(db_dsn=db, allow_tables=(TABLES,), auth_disabled=True))
    with app.test_client() as c:
        yield c


def rows(db, sql):
    conn = apsw.Connection(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def body(response):
    return orjson.loads(response.data)


# --- QuerySpec: a parameter for an embedding select does not have ----------------------------

@pytest.mark.parametrize("url, name", [
    ("/clients?select=*&missing_projects.name=like.*x*", "missing_projects"),
    ("/clients?select=*,acme:projects(*)&acmes.name=eq.x", "acmes"),
    # a nested level names only the unknown embedding, not its path
    ("/clients?select=id,projects(id,tasks(id))&projects.tasks2.name=like.D*", "tasks2"),
])
def test_a_parameter_of_an_unknown_embedding_is_pgrst108(client, url, name):
    r = client.get(url)
    assert r.status_code == 400
    assert body(r) == {
        "code": "PGRST108", "details": None,
        "message": f"'{name}' is not an embedded resource in this request",
        "hint": f"Verify that '{name}' is included in the 'select' query parameter."}
