"""Relationships of views declared in --relationships-file (#14 item 1): SQLite views have no
FOREIGN KEYs, so the file declares them, and they embed exactly as real ones — many-to-one,
one-to-many, many-to-many through a junction, hints, PGRST200/PGRST201, roles, one SQL
statement — and a bad file refuses the start in one line naming the entry."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import apsw
import jwt
import pytest
import requests

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from tests.test_embedding import get

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER,
                    author_id INTEGER REFERENCES authors(id), editor_id INTEGER,
                    owner TEXT);
CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE book_tags (book_id INTEGER, tag_id INTEGER REFERENCES tags(id),
                        PRIMARY KEY (book_id, tag_id));
CREATE VIEW books_view AS SELECT id, title, year, author_id, editor_id, owner FROM books
    WHERE year IS NOT NULL;
CREATE VIEW authors_view AS SELECT id, upper(name) AS name FROM authors;
CREATE VIEW tags_view AS SELECT id, label FROM tags;
INSERT INTO authors VALUES (1, 'Le Guin'), (2, 'Herbert'), (3, 'Nobody');
INSERT INTO books VALUES (1, 'Earthsea', 1968, 1, 2, 'alice'), (2, 'Left Hand', 1969, 1, NULL, 'bob'),
                         (3, 'Dune', 1965, 2, 1, 'alice'), (4, 'Draft', NULL, 2, NULL, 'alice');
INSERT INTO tags VALUES (1, 'fantasy'), (2, 'sf');
INSERT INTO book_tags VALUES (1, 1), (2, 2), (3, 2), (4, 1);
"""
TABLES = ("authors", "books", "tags", "book_tags", "books_view", "authors_view", "tags_view")

RELATIONSHIPS = """
relationships:
  - from: books_view
    columns: [author_id]
    to: authors
  - from: books_view
    columns: editor_id
    to: authors
    to_columns: [id]
    name: books_view_editor
  - from: books                   # a table may reference a view too
    columns: [author_id]
    to: authors_view
    to_columns: [id]
  - from: book_tags               # the junction's key to the view: books_view <-> tags
    columns: [book_id]
    to: books_view
    to_columns: [id]
"""


def make_db(tmp_path):
    path = tmp_path / "lib.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    return path


@pytest.fixture
def client(tmp_path):
    db = make_db(tmp_path)
    (tmp_path / "rel.yml").write_text(RELATIONSHIPS)
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=TABLES, auth_disabled=True,
                                  relationships_file=str(tmp_path / "rel.yml")))
    with app.test_client() as c:
        c.db = db
        c.rel = tmp_path / "rel.yml"
        yield c


def test_without_the_file_a_view_has_no_relationship(tmp_path):
    app = create_app(ServerConfig(db_dsn=str(make_db(tmp_path)), allow_tables=TABLES,
                                  auth_disabled=True))
    body = get(app.test_client(), "/books_view?select=title,authors!author_id(name)", 400)
    assert body["code"] == "PGRST200"


def test_many_to_one_from_a_view(client):
    assert get(client, "/books_view?select=title,author:authors!author_id(name)&order=id") == [
        {"title": "Earthsea", "author": {"name": "Le Guin"}},
        {"title": "Left Hand", "author": {"name": "Le Guin"}},
        {"title": "Dune", "author": {"name": "Herbert"}}]
    assert get(client, "/books_view?select=title,authors!books_view_editor(name)&order=id") == [
        {"title": "Earthsea", "authors": {"name": "Herbert"}},
        {"title": "Left Hand", "authors": None},
        {"title": "Dune", "authors": {"name": "Le Guin"}}]


def test_one_to_many_into_a_view(client):
    # the view leaves out the book without a year: so does the embedding
    assert get(client, "/authors?select=name,books_view!author_id(title)&order=id") == [
        {"name": "Le Guin", "books_view": [{"title": "Earthsea"}, {"title": "Left Hand"}]},
        {"name": "Herbert", "books_view": [{"title": "Dune"}]},
        {"name": "Nobody", "books_view": []}]
    # a table referencing a view: the view's side is one-to-many
    assert get(client, "/authors_view?select=name,books(title)&id=eq.2") == [
        {"name": "HERBERT", "books": [{"title": "Dune"}, {"title": "Draft"}]}]
    assert get(client, "/books?select=title,authors_view(name)&id=eq.4") == [
        {"title": "Draft", "authors_view": {"name": "HERBERT"}}]


def test_many_to_many_through_a_junction(client):
    assert get(client, "/books_view?select=title,tags(label)&order=id") == [
        {"title": "Earthsea", "tags": [{"label": "fantasy"}]},
        {"title": "Left Hand", "tags": [{"label": "sf"}]},
        {"title": "Dune", "tags": [{"label": "sf"}]}]
    assert get(client, "/tags?select=label,books_view(title)&order=id"
                       "&books_view.order=title") == [
        {"label": "fantasy", "books_view": [{"title": "Earthsea"}]},
        {"label": "sf", "books_view": [{"title": "Dune"}, {"title": "Left Hand"}]}]


def test_ambiguity_names_the_declared_keys(client):
    body = get(client, "/books_view?select=title,authors(name)", 300)
    assert body["code"] == "PGRST201"
    assert [d["relationship"] for d in body["details"]] == [
        "books_view_author_id_fkey using books_view(author_id) and authors(id)",
        "books_view_editor using books_view(editor_id) and authors(id)"]
    assert "'authors!books_view_author_id_fkey'" in body["hint"]
    body = get(client, "/authors?select=name,books_view(title)", 300)
    assert {d["cardinality"] for d in body["details"]} == {"one-to-many"}
    assert get(client, "/authors?select=name,books_view!books_view_editor(title)&id=eq.2") == [
        {"name": "Herbert", "books_view": [{"title": "Earthsea"}]}]


def test_unrelated_view_is_pgrst200(client):
    assert get(client, "/books_view?select=title,tags_view(label)", 400)["code"] == "PGRST200"
    assert get(client, "/books_view?select=title,authors!nope(name)", 400)["code"] == "PGRST200"


def test_embedded_filters_inner_spread_and_is_null(client):
    assert get(client, "/authors?select=name,books_view!author_id!inner(title)"
                       "&books_view.year=gte.1969&order=id") == [
        {"name": "Le Guin", "books_view": [{"title": "Left Hand"}]}]
    assert get(client, "/authors?select=name,books_view!author_id()"
                       "&books_view=is.null") == [{"name": "Nobody"}]
    assert get(client, "/books_view?select=title,...authors!author_id(author:name)&id=eq.3") == [
        {"title": "Dune", "author": "Herbert"}]
    # a to-many spread of a view: no rowid, so its rows are ordered by every column
    assert get(client, "/authors?select=name,...books_view!author_id(title,year)&order=id"
                       "&id=lt.3") == [
        {"name": "Le Guin", "title": ["Earthsea", "Left Hand"], "year": [1968, 1969]},
        {"name": "Herbert", "title": ["Dune"], "year": [1965]}]


def test_write_representation_embeds_through_a_view(client):
    r = client.post("/books?select=title,authors_view(name)", json={
        "id": 9, "title": "Dawn", "year": 1987, "author_id": 1},
        headers={"Prefer": "return=representation"})
    assert r.status_code == 201, r.data
    assert r.get_json() == [{"title": "Dawn", "authors_view": {"name": "LE GUIN"}}]


def test_one_statement_per_request(client, monkeypatch):
    statements = []
    import sqlite_rest.db as dbmod
    real = dbmod.open_connection

    def tracing(*a, **k):
        conn = real(*a, **k)
        conn.exec_trace = lambda cursor, sql, b: statements.append(sql) or True
        return conn
    monkeypatch.setattr(dbmod, "open_connection", tracing)
    app = create_app(ServerConfig(db_dsn=str(client.db), allow_tables=TABLES,
                                  auth_disabled=True, relationships_file=str(client.rel)))
    with app.test_client() as c:
        c.get("/authors")  # warm the schema cache
        statements.clear()
        body = c.get("/authors?select=name,books_view!author_id(title,tags(label))").get_json()
        assert len(body) == 3 and body[0]["books_view"][0]["tags"] == [{"label": "fantasy"}]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements


def test_a_schema_change_keeps_what_still_fits(client, caplog):
    """A migration that drops a view's column leaves that entry out (PGRST200, logged), the
    others keep working, and putting the column back brings the relationship back."""
    get(client, "/books_view?select=title,authors!books_view_editor(name)")  # loaded
    conn = apsw.Connection(str(client.db))
    conn.execute("DROP VIEW books_view; CREATE VIEW books_view AS SELECT id, title, year, "
                 "author_id FROM books WHERE year IS NOT NULL")
    assert get(client, "/books_view?select=title,authors!books_view_editor(name)",
               400)["code"] == "PGRST200"
    assert "relationships[1] (books_view -> authors) no longer fits the schema: view " \
           "books_view has no column 'editor_id'" in caplog.text
    assert len(get(client, "/books_view?select=title,authors(name)")) == 3  # no longer ambiguous
    conn.execute("DROP VIEW books_view; CREATE VIEW books_view AS SELECT id, title, year, "
                 "author_id, editor_id FROM books WHERE year IS NOT NULL")
    conn.close()
    assert get(client, "/books_view?select=title,authors!books_view_editor(name)&id=eq.3") == [
        {"title": "Dune", "authors": {"name": "Le Guin"}}]


# -- roles -------------------------------------------------------------------------------------

SECRET = b"a-long-enough-hmac-secret-for-view-relationships-0123456789"

PERMISSIONS = """
roles:
  reader:
    books_view: {verbs: [GET], read_columns: [id, title, author_id], rows: "owner=eq.{sub}"}
    authors: {verbs: [GET]}
    tags: {verbs: [GET]}
    book_tags: {verbs: [GET]}
  no_authors:
    books_view: {verbs: [GET]}
"""


@pytest.fixture
def role_client(tmp_path):
    db = make_db(tmp_path)
    (tmp_path / "rel.yml").write_text(RELATIONSHIPS)
    (tmp_path / "perm.yml").write_text(PERMISSIONS)
    (tmp_path / "secret").write_bytes(SECRET)
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=TABLES,
                                  auth_token_file=str(tmp_path / "secret"),
                                  permissions_file=str(tmp_path / "perm.yml"),
                                  relationships_file=str(tmp_path / "rel.yml")))
    with app.test_client() as c:
        yield c


def auth(sub, role):
    token = jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 600}, SECRET,
                       algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def test_roles_apply_inside_view_embeddings(role_client):
    alice = auth("alice", "reader")
    # the view's row filter applies inside the one-to-many: bob's book is not alice's to see
    assert get(role_client, "/authors?select=name,books_view!author_id(*)&order=id",
               headers=alice) == [
        {"name": "Le Guin", "books_view": [{"id": 1, "title": "Earthsea", "author_id": 1}]},
        {"name": "Herbert", "books_view": [{"id": 3, "title": "Dune", "author_id": 2}]},
        {"name": "Nobody", "books_view": []}]
    assert get(role_client, "/tags?select=label,books_view(title)&order=id", headers=alice) == [
        {"label": "fantasy", "books_view": [{"title": "Earthsea"}]},
        {"label": "sf", "books_view": [{"title": "Dune"}]}]
    assert get(role_client, "/books_view?select=title,authors!author_id(name)&order=id",
               headers=alice) == [{"title": "Earthsea", "authors": {"name": "Le Guin"}},
                                  {"title": "Dune", "authors": {"name": "Herbert"}}]
    # editor_id is not readable: the correlation would reveal it
    body = get(role_client, "/books_view?select=title,authors!books_view_editor(name)", 403,
               headers=alice)
    assert body["code"] == "42501" and "editor_id" in body["message"]
    # a role without a rule for authors: as if unrelated
    body = get(role_client, "/books_view?select=title,authors!author_id(name)", 400,
               headers=auth("alice", "no_authors"))
    assert body["code"] == "PGRST200"


# -- the file refused at start ----------------------------------------------------------------

@pytest.mark.parametrize("text,needles", [
    ("relationships:\n  - {from: nope, columns: [a], to: authors}\n",
     ["relationships[0] (nope -> authors)", "no table or view named 'nope'"]),
    ("relationships:\n  - {from: books_view, columns: [writer_id], to: authors}\n",
     ["relationships[0] (books_view -> authors)", "view books_view has no column 'writer_id'"]),
    ("relationships:\n  - {from: books_view, columns: [author_id], to: authors,"
     " to_columns: [nope]}\n", ["table authors has no column 'nope'"]),
    ("relationships:\n  - {from: books, columns: [author_id], to: authors_view}\n",
     ["relationships[0] (books -> authors_view)", "view authors_view has no primary key"]),
    ("relationships:\n  - {from: books_view, columns: [author_id, editor_id], to: authors}\n",
     ["2 column(s) reference 1 column(s) of authors"]),
    ("relationships:\n  - {from: books_view, columns: [author_id], to: authors,"
     " to_columns: [id, name]}\n", ["relationships[0]", "1 column(s) in 'columns' but 2"]),
    ("relationships:\n  - {from: books_view, to: authors}\n", ["'columns' is missing"]),
    ("relationships:\n  - {from: books_view, columns: [a], to: authors, via: x}\n",
     ["relationships[0].via", "unknown key"]),
    ("relations: []\n", ["top level"]),
    ("relationships: [\n", ["not valid YAML"]),
    ('{"relationships": [{"from": "books_view", "columns": ["nope"], "to": "authors"}]}',
     ["view books_view has no column 'nope'"]),  # JSON is YAML
])
def test_bad_relationships_file_refuses_the_start(tmp_path, text, needles):
    from tests.plugins.server import free_port

    db = make_db(tmp_path)
    path = tmp_path / "rel.yml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    env["SQLITEREST_RELATIONSHIPS_FILE"] = str(path)
    result = subprocess.run(
        [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", str(db),
         "--auth-disabled", "--security-allow-table", ",".join(TABLES),
         "--http-addr", f"127.0.0.1:{free_port()}", "--metrics-addr", "", "--workers", "1"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- the README's example, run as written ------------------------------------------------------

def test_readme_views_example_runs_as_written(tmp_path):
    from tests.plugins.readme import block, run_curl_lines
    from tests.plugins.server import start_server

    assert shutil.which("curl"), "the README's examples need curl (.ci/run installs it)"
    db = make_db(tmp_path)
    (tmp_path / "rel.yml").write_text(block("### Relationships of views", "yaml"))
    server = start_server(db, "--security-allow-table", ",".join(TABLES),
                          "--relationships-file", tmp_path / "rel.yml", metrics=False)
    try:
        ran = run_curl_lines(block("### Relationships of views", "bash views"), server.base_url)
        assert ran == 4
        body = requests.get(f"{server.base_url}/books_view",
                            params={"select": "title,tags!book_tags_book(label)",
                                    "order": "id"}, timeout=10).json()
        assert body == [{"title": "Earthsea", "tags": [{"label": "fantasy"}]},
                        {"title": "Left Hand", "tags": [{"label": "sf"}]},
                        {"title": "Dune", "tags": [{"label": "sf"}]}]
    finally:
        server.stop()


def test_openapi_notes_the_declared_keys(client):
    column = get(client, "/")["definitions"]["books_view"]["properties"]["author_id"]
    assert "This is a Foreign Key to `authors.id`." in column["description"]
