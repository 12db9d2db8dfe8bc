"""Resource embedding through FOREIGN KEYs (#14 item 1): PostgREST's forms and output shapes,
exact bodies and statuses, on a small library schema."""
from __future__ import annotations

import apsw
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born INTEGER);
CREATE TABLE books (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER,
    author_id INTEGER REFERENCES authors(id),
    editor_id INTEGER,
    CONSTRAINT books_editor FOREIGN KEY (editor_id) REFERENCES authors(id)
);
CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT NOT NULL, extra JSON, hot BOOLEAN);
CREATE TABLE book_tags (book_id INTEGER REFERENCES books(id), tag_id INTEGER REFERENCES tags(id),
                        PRIMARY KEY (book_id, tag_id));
CREATE TABLE reviews (id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES books(id),
                      stars INTEGER);
CREATE TABLE secrets (id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES books(id), code TEXT);
INSERT INTO authors VALUES (1, 'Le Guin', 1929), (2, 'Herbert', 1920), (3, 'Nobody', 2000);
INSERT INTO books VALUES (1, 'Earthsea', 1968, 1, 2), (2, 'Left Hand', 1969, 1, NULL),
                         (3, 'Dune', 1965, 2, 1);
INSERT INTO tags VALUES (1, 'fantasy', '{"k":[1]}', 1), (2, 'sf', NULL, 0), (3, 'classic', NULL, NULL);
INSERT INTO book_tags VALUES (1, 1), (2, 2), (3, 2), (3, 3);
INSERT INTO reviews VALUES (1, 1, 5), (2, 1, 4), (3, 3, 5);
INSERT INTO secrets VALUES (1, 1, 'x');
"""
TABLES = ("authors", "books", "tags", "book_tags", "reviews")


@pytest.fixture
def client(tmp_path):
    conn = apsw.Connection(str(tmp_path / "lib.db"))
    conn.execute(SCHEMA)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(tmp_path / "lib.db"), allow_tables=TABLES,
                                  auth_disabled=True))
    with app.test_client() as c:
        c.db = tmp_path / "lib.db"
        yield c


def get(client, url, status=200, **kw):
    r = client.get(url, **kw)
    assert r.status_code == status, r.data
    return r.get_json()


def test_many_to_one_is_an_object_or_null(client):
    assert get(client, "/books?select=title,author:authors!author_id(name)&order=id") == [
        {"title": "Earthsea", "author": {"name": "Le Guin"}},
        {"title": "Left Hand", "author": {"name": "Le Guin"}},
        {"title": "Dune", "author": {"name": "Herbert"}}]
    assert get(client, "/books?select=title,authors!books_editor(name)&order=id") == [
        {"title": "Earthsea", "authors": {"name": "Herbert"}},
        {"title": "Left Hand", "authors": None},
        {"title": "Dune", "authors": {"name": "Le Guin"}}]


def test_one_to_many_is_an_array_and_empty_when_none(client):
    assert get(client, "/authors?select=name,books!author_id(title)&order=id") == [
        {"name": "Le Guin", "books": [{"title": "Earthsea"}, {"title": "Left Hand"}]},
        {"name": "Herbert", "books": [{"title": "Dune"}]},
        {"name": "Nobody", "books": []}]


def test_many_to_many_through_a_junction(client):
    assert get(client, "/books?select=title,tags(label)&order=id") == [
        {"title": "Earthsea", "tags": [{"label": "fantasy"}]},
        {"title": "Left Hand", "tags": [{"label": "sf"}]},
        {"title": "Dune", "tags": [{"label": "sf"}, {"label": "classic"}]}]
    assert get(client, "/tags?select=label,books(title)&id=eq.2") == [
        {"label": "sf", "books": [{"title": "Left Hand"}, {"title": "Dune"}]}]


def test_nested_star_and_types_inside_embeddings(client):
    rows = get(client, "/authors?select=name,books!author_id(title,reviews(stars),tags(*))"
                       "&id=eq.1")
    assert rows == [{"name": "Le Guin", "books": [
        {"title": "Earthsea", "reviews": [{"stars": 5}, {"stars": 4}],
         "tags": [{"id": 1, "label": "fantasy", "extra": {"k": [1]}, "hot": True}]},
        {"title": "Left Hand", "reviews": [], "tags": [{"id": 2, "label": "sf", "extra": None,
                                                        "hot": False}]}]}]


def test_filters_order_limit_offset_on_an_embedding(client):
    assert get(client, "/authors?select=name,books!author_id(title,year)&id=eq.1"
                       "&books.order=year.desc&books.limit=1&books.offset=0") == [
        {"name": "Le Guin", "books": [{"title": "Left Hand", "year": 1969}]}]
    assert get(client, "/authors?select=name,books!author_id(title)&id=eq.1"
                       "&books.year=gte.1969") == [
        {"name": "Le Guin", "books": [{"title": "Left Hand"}]}]
    assert get(client, "/authors?select=name,books!author_id(title,reviews(stars))&id=eq.1"
                       "&books.reviews.stars=eq.5&books.or=(year.eq.1968,year.eq.1900)") == [
        {"name": "Le Guin", "books": [{"title": "Earthsea", "reviews": [{"stars": 5}]}]}]


def test_limits_are_written_in_the_sql_and_offsets_bound(client):
    """A bound LIMIT makes SQLite prepare the statement again at every run (sql.limit_sql):
    limits are written in the SQL, offsets stay bound, and pages of one size (one statement
    text, prepared once) still each get their own rows, at both levels."""
    from urllib.parse import parse_qsl

    from sqlite_rest.api.query import parse_read_query
    from sqlite_rest.api.schema import SchemaCache
    from sqlite_rest.api.sql import build_select

    url = ("/authors?select=name,books!author_id(title)&order=id&limit=2&offset={}"
           "&books.order=year.desc&books.limit=1&books.offset={}")
    pages = {(0, 0): [{"name": "Le Guin", "books": [{"title": "Left Hand"}]},
                      {"name": "Herbert", "books": [{"title": "Dune"}]}],
             (0, 1): [{"name": "Le Guin", "books": [{"title": "Earthsea"}]},
                      {"name": "Herbert", "books": []}],
             (1, 1): [{"name": "Herbert", "books": []}, {"name": "Nobody", "books": []}],
             (2, 0): [{"name": "Nobody", "books": []}]}
    for _ in range(2):  # the second time from the statement cache
        for (offset, books_offset), body in pages.items():
            assert get(client, url.format(offset, books_offset)) == body
    conn = apsw.Connection(str(client.db))
    statement = build_select(SchemaCache().get(conn).table("authors"), parse_read_query(
        parse_qsl(url.format(1, 1).split("?", 1)[1])))
    assert "LIMIT ?" not in statement.sql
    assert statement.sql.count(" OFFSET ?") == 2
    assert " LIMIT 1 OFFSET ?))" in statement.sql and statement.sql.endswith(" LIMIT 2 OFFSET ?")
    assert statement.params == (1, 1)


def test_inner_drops_parents_without_a_match(client):
    assert get(client, "/authors?select=name,books!author_id!inner(title)"
                       "&books.year=lt.1966") == [{"name": "Herbert",
                                                   "books": [{"title": "Dune"}]}]


def test_a_nested_inner_drops_the_parents_whose_embedding_it_empties(client):
    """books!inner shows no author with an empty books array: a book whose reviews!inner
    matches nothing is not shown, so an author with only such books has none (PostgREST's
    inner joins nest). Le Guin's Earthsea has a 4-star review; Herbert's Dune only 5."""
    url = "/authors?select=name,books!author_id!inner(title,reviews!inner(stars))&order=id"
    assert get(client, url + "&books.reviews.stars=eq.4") == [
        {"name": "Le Guin", "books": [{"title": "Earthsea", "reviews": [{"stars": 4}]}]}]
    assert get(client, url + "&books.reviews.stars=eq.3") == []
    # and the count is of the same rows
    r = client.get(url + "&books.reviews.stars=eq.4", headers={"Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "0-0/1"
    # without !inner on the books, the authors stay, with what is left of their books
    assert get(client, "/authors?select=name,books!author_id(title,reviews!inner(stars))"
                       "&books.reviews.stars=eq.4&id=lt.3&order=id") == [
        {"name": "Le Guin", "books": [{"title": "Earthsea", "reviews": [{"stars": 4}]}]},
        {"name": "Herbert", "books": []}]
    # a nested is.null: authors with a book that has no review (Left Hand)
    assert get(client, "/authors?select=name,books!author_id!inner(title,reviews())"
                       "&books.reviews=is.null") == [
        {"name": "Le Guin", "books": [{"title": "Left Hand"}]}]


def test_is_null_on_an_embedding_is_an_anti_join(client):
    assert get(client, "/authors?select=name,books!author_id()&books=is.null") == [
        {"name": "Nobody"}]
    assert get(client, "/authors?select=name,books!author_id()&books=not.is.null"
                       "&order=id") == [{"name": "Le Guin"}, {"name": "Herbert"}]


def test_exact_count_counts_what_inner_and_is_null_keep(client):
    # the count is of the rows the page comes from, as PostgREST counts its inner joins
    r = client.get("/authors?select=name,books!author_id!inner(title)&books.year=lt.1966",
                   headers={"Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "0-0/1"
    r = client.get("/authors?select=name,books!author_id()&books=is.null&limit=0",
                   headers={"Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "*/1"
    r = client.get("/authors?select=name,books!author_id()&books=not.is.null&offset=1",
                   headers={"Prefer": "count=exact"})
    assert r.status_code == 206 and r.headers["Content-Range"] == "1-1/2"


def test_spread_merges_a_to_one_embedding(client):
    assert get(client, "/books?select=title,...authors!author_id(name,born)&id=eq.3") == [
        {"title": "Dune", "name": "Herbert", "born": 1920}]
    # a filter on a to-one spread empties its columns, as it nulls an embedded object
    assert get(client, "/books?select=title,...authors!author_id(name)&authors.born=lt.1925"
                       "&order=id") == [{"title": "Earthsea", "name": None},
                                        {"title": "Left Hand", "name": None},
                                        {"title": "Dune", "name": "Herbert"}]
    err = get(client, "/books?select=title,...authors!author_id(name)&authors.order=name", 400)
    assert err["code"] == "PGRST100" and "to-one" in err["message"]


# Spread of a to-many (PostgREST 13, SpreadQueriesSpec): correlated arrays, one per column.

def test_spread_of_a_one_to_many_gives_correlated_arrays(client):
    assert get(client, "/authors?select=name,...books!author_id(titles:title,years:year)"
                       "&books.order=year.desc&order=id") == [
        {"name": "Le Guin", "titles": ["Left Hand", "Earthsea"], "years": [1969, 1968]},
        {"name": "Herbert", "titles": ["Dune"], "years": [1965]},
        {"name": "Nobody", "titles": [], "years": []}]
    # limit and offset page the arrays together; filters drop values, never parents
    assert get(client, "/authors?select=name,...books!author_id(title)&books.order=year"
                       "&books.limit=1&books.offset=1&books.year=gt.1900&order=id") == [
        {"name": "Le Guin", "title": ["Left Hand"]}, {"name": "Herbert", "title": []},
        {"name": "Nobody", "title": []}]
    # a row whose value is NULL is a null in the array, not a missing element
    assert get(client, "/books?select=title,...authors!books_editor(born)&order=id") == [
        {"title": "Earthsea", "born": 1920}, {"title": "Left Hand", "born": None},
        {"title": "Dune", "born": 1929}]
    assert get(client, "/authors?select=name,...books!books_editor(editor_of:title)&order=id"
                       ) == [{"name": "Le Guin", "editor_of": ["Dune"]},
                             {"name": "Herbert", "editor_of": ["Earthsea"]},
                             {"name": "Nobody", "editor_of": []}]


def test_spread_of_a_many_to_many_and_nested_levels(client):
    assert get(client, "/books?select=title,...tags(labels:label,hot)&tags.order=label"
                       "&order=id") == [
        {"title": "Earthsea", "labels": ["fantasy"], "hot": [True]},
        {"title": "Left Hand", "labels": ["sf"], "hot": [False]},
        {"title": "Dune", "labels": ["classic", "sf"], "hot": [None, False]}]
    # a to-many inside a spread to-many: arrays of arrays; an embedding: arrays of its JSON
    assert get(client, "/authors?select=name,...books!author_id(title,...reviews(stars),"
                       "editor:authors!books_editor(name))&books.order=id&order=id&id=lt.3") == [
        {"name": "Le Guin", "title": ["Earthsea", "Left Hand"], "stars": [[5, 4], []],
         "editor": [{"name": "Herbert"}, None]},
        {"name": "Herbert", "title": ["Dune"], "stars": [[5]], "editor": [{"name": "Le Guin"}]}]


def test_spread_to_many_takes_inner_and_is_null_and_other_formats(client):
    assert get(client, "/authors?select=name,...books!author_id(title)&books=is.null") == [
        {"name": "Nobody", "title": []}]
    assert get(client, "/authors?select=name,...books!author_id!inner(title)"
                       "&books.year=lt.1966") == [{"name": "Herbert", "title": ["Dune"]}]
    one = {"Accept": "application/vnd.pgrst.object+json"}
    assert get(client, "/authors?select=name,...books!author_id(title)&id=eq.2", headers=one
               ) == {"name": "Herbert", "title": ["Dune"]}


def test_spread_to_many_arrays_stay_correlated_whatever_index_reads_them(tmp_path):
    # Each column's subquery is served by its own covering index, in that column's order.
    db = tmp_path / "c.db"
    conn = apsw.Connection(str(db))
    conn.execute("""
        CREATE TABLE parents (id INTEGER PRIMARY KEY);
        CREATE TABLE kids (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parents(id),
                           name TEXT, age INTEGER);
        CREATE INDEX kids_by_parent_name ON kids (parent_id, name);
        CREATE INDEX kids_by_parent_age ON kids (parent_id, age);
        INSERT INTO parents VALUES (1);
        INSERT INTO kids VALUES (1, 1, 'zed', 10), (2, 1, 'amy', 30), (3, 1, 'kim', 20);""")
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("parents", "kids"),
                                  auth_disabled=True))
    with app.test_client() as c:
        body = get(c, "/parents?select=...kids(name,age)")[0]
    assert dict(zip(body["name"], body["age"])) == {"zed": 10, "amy": 30, "kim": 20}


def test_ambiguity_and_missing_relationships_are_postgrests_errors(client):
    err = get(client, "/books?select=title,authors(name)", 300)
    assert err["code"] == "PGRST201"
    assert err["message"] == ("Could not embed because more than one relationship was found "
                              "for 'books' and 'authors'")
    assert err["details"] == [
        {"cardinality": "many-to-one", "embedding": "books with authors",
         "relationship": "books_author_id_fkey using books(author_id) and authors(id)"},
        {"cardinality": "many-to-one", "embedding": "books with authors",
         "relationship": "books_editor using books(editor_id) and authors(id)"}]
    assert "authors!books_author_id_fkey" in err["hint"]
    err = get(client, "/books?select=title,reviewz(*)", 400)
    assert err["code"] == "PGRST200"
    assert err["message"] == ("Could not find a relationship between 'books' and 'reviewz' in "
                              "the schema cache")
    assert err["hint"] == "Perhaps you meant 'reviews' instead of 'reviewz'."
    # a table outside the allow-list is answered as if unrelated (names never leak)
    assert get(client, "/books?select=title,secrets(code)", 400)["code"] == "PGRST200"


@pytest.mark.parametrize("url", [
    "/books?select=title,authors!author_id(name",
    "/books?select=title,authors!author_id(nope)",
    "/books?select=*,authors!author_id(*)&authors.nope=eq.1",
    "/books?select=*&nope.title=eq.1",
])
def test_malformed_embeddings_are_400(client, url):
    r = client.get(url)
    assert r.status_code == 400, r.data
    assert r.get_json()["code"] in ("PGRST100", "PGRST108", "42703")


def test_embedding_in_a_write_response(client):
    r = client.post("/books?select=title,author:authors!author_id(name)",
                    json={"title": "Dawn", "author_id": 3},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.get_json() == [{"title": "Dawn", "author": {"name": "Nobody"}}]
    r = client.patch("/books?id=eq.3&select=title,reviews(stars)", json={"year": 1966},
                     headers={"Prefer": "return=representation"})
    assert r.get_json() == [{"title": "Dune", "reviews": [{"stars": 5}]}]
    r = client.post("/books?select=title,secrets(code)", json={"title": "x"},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 400  # refused before anything is written
    conn = apsw.Connection(str(client.db))
    assert conn.execute("SELECT count(*) FROM books WHERE title = 'x'").fetchall() == [(0,)]
    conn.close()


def test_one_statement_per_request(client, monkeypatch):
    """N parents, one SQL statement: the embedding is a correlated subquery, not a query per
    parent row."""
    statements = []
    import sqlite_rest.db as dbmod
    real = dbmod.open_connection

    def tracing(*a, **k):
        conn = real(*a, **k)
        conn.exec_trace = lambda cursor, sql, b: statements.append(sql) or True
        return conn
    monkeypatch.setattr(dbmod, "open_connection", tracing)
    app = create_app(ServerConfig(db_dsn=str(client.db), allow_tables=TABLES,
                                  auth_disabled=True))
    with app.test_client() as c:
        c.get("/authors")  # warm the schema cache
        statements.clear()
        assert len(c.get("/authors?select=name,books!author_id(title,tags(label))").get_json()) == 3
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements


# -- the JSON body SQLite writes for reads with embeddings (embedding.json_body_sql) ---------

ODD_SCHEMA = '''
CREATE TABLE owners (id INTEGER PRIMARY KEY, "Näme 'q' ""x""" TEXT);
CREATE TABLE things (id INTEGER PRIMARY KEY, owner_id INTEGER REFERENCES owners(id),
                     price REAL, flag BOOLEAN, doc JSON, raw BLOB, loose);
INSERT INTO owners VALUES (1, 'o''ne'), (2, NULL);
INSERT INTO things VALUES
  (1, 1, 0.30000000000000004, 1, '{"a": [1, 2.5, "x"]}', x'00ff', 'text'),
  (2, 1, -2.5e-7, 0, 'not json', NULL, 12),
  (3, NULL, 1e20, 'yes', '7', x'', 3.5),
  (4, 2, NULL, '', '"s"', NULL, x'41'),
  (5, 2, 12345678901234.5, 2, NULL, NULL, NULL),
  (6, 1, 1.0, NULL, '[]', NULL, 'tab	and "quote" and \\ and é and ☃');
'''


@pytest.mark.parametrize("url", [
    "/things?select=*,owners(*)&order=id",
    "/things?select=id,o:owners(*),price,flag,doc,raw,loose&order=id.desc",
    "/owners?select=*,things(id,price,flag,doc)&order=id",  # BLOBs: not inside embeddings
    "/owners?select=id,things(price,doc,flag)&things.order=id.desc&things.limit=2",
    "/owners?select=*,things(id)&id=eq.99",                       # no row: []
    "/things?select=flag::boolean,doc->a,t:doc->>a,x:owners(id)&order=id",
    "/things?select=id,...owners(*)&order=id",
    "/owners?select=*,things!inner(id)&order=id",
])
def test_json_body_written_by_sqlite_equals_the_row_path(tmp_path, url):
    """The whole body SQLite writes (json_body_sql) says what the Python row path says, for
    every kind of value: REAL, BOOLEAN truth, JSON and non-JSON text, no affinity, odd names,
    null embeddings, empty results, order; with a BLOB the server takes the row path (base64)."""
    import orjson

    from sqlite_rest.api import routes
    from sqlite_rest.api.representation import render
    from sqlite_rest.state import state_of

    conn = apsw.Connection(str(tmp_path / "odd.db"))
    conn.execute(ODD_SCHEMA)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(tmp_path / "odd.db"), allow_tables=(
        "owners", "things"), auth_disabled=True))
    state = state_of(app)
    path, _, query = url.partition("?")
    reader = state.db.reader()
    table = state.schema_cache.get(reader).table(path[1:])
    plan, values = routes.read_plan(table, query, None, None, False)
    rows = reader.execute(plan.statement.sql, plan.params(values)).fetchall()
    expected = orjson.loads(render("application/json", plan.output, rows))
    has_blob = any(type(v) is bytes for row in rows for v in row)
    if "embed" in plan.output.kinds:
        assert plan.json_sql is not None
        try:
            text, count = reader.execute(plan.json_sql, plan.params(values)).fetchall()[0]
            assert orjson.loads(text) == expected and count == len(rows)
            assert not has_blob
        except apsw.SQLError:  # JSON has no BLOB: the server falls back to the row path
            assert has_blob
    with app.test_client() as c:
        r = c.get(url)
        assert r.status_code == 200, r.data
        assert orjson.loads(r.data) == expected
        assert r.headers["Content-Range"] == (f"0-{len(rows) - 1}/*" if rows else "*/*")
    assert expected or "id=eq.99" in url  # the other cases are not vacuous


def test_names_sqlite_would_confuse_keep_the_row_path(client):
    from sqlite_rest.api import routes
    from sqlite_rest.state import state_of

    table = state_of(client.application).schema_cache.get(
        state_of(client.application).db.reader()).table("authors")
    plan, _ = routes.read_plan(table, "select=id,ID:name,books!author_id(id)", None, None,
                               False)
    assert plan.json_sql is None  # SQLite matches names case-insensitively
    assert get(client, "/authors?select=id,ID:name,books!author_id(id)&id=eq.2") == [
        {"id": 2, "ID": "Herbert", "books": [{"id": 3}]}]


def test_a_foreign_key_that_is_also_a_key_is_one_to_one_both_ways(tmp_path):
    # PostgREST (EmbedDisambiguationSpec, one-to-one): a FOREIGN KEY whose columns are the
    # PRIMARY KEY or a UNIQUE key of their table holds each parent at most once, so both
    # sides embed an object (or null), never an array.
    db = tmp_path / "o2o.db"
    conn = apsw.Connection(str(db))
    conn.execute("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE profiles (user_id INTEGER PRIMARY KEY REFERENCES users(id), bio TEXT);
        CREATE TABLE badges (id INTEGER PRIMARY KEY, owner INTEGER UNIQUE REFERENCES users(id),
                             label TEXT);
        CREATE TABLE posts (id INTEGER PRIMARY KEY, author INTEGER REFERENCES users(id));
        INSERT INTO users VALUES (1, 'ann'), (2, 'bob');
        INSERT INTO profiles VALUES (1, 'hi');
        INSERT INTO badges VALUES (7, 2, 'gold');
        INSERT INTO posts VALUES (1, 1), (2, 1);""")
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(db), auth_disabled=True,
                                  allow_tables=("users", "profiles", "badges", "posts")))
    with app.test_client() as c:
        assert get(c, "/users?select=name,profiles(bio),badges(label),posts(id)&order=id") == [
            {"name": "ann", "profiles": {"bio": "hi"}, "badges": None, "posts": [{"id": 1}, {"id": 2}]},
            {"name": "bob", "profiles": None, "badges": {"label": "gold"}, "posts": []}]
        assert get(c, "/profiles?select=bio,users(name)") == [{"bio": "hi", "users": {"name": "ann"}}]
        # a spread of a one-to-one is a to-one spread: plain values
        assert get(c, "/users?select=name,...badges(label)&order=id") == [
            {"name": "ann", "label": None}, {"name": "bob", "label": "gold"}]
        body = get(c, "/users?select=*,profiles!inner(*)&profiles.bio=eq.nope")
        assert body == []
        # the cardinality PGRST201 shows is one-to-one too
        conn = apsw.Connection(str(db))
        conn.execute("ALTER TABLE badges ADD COLUMN second INTEGER REFERENCES users(id)")
        conn.execute("CREATE UNIQUE INDEX badges_second ON badges(second)")
        conn.close()
        err = get(c, "/users?select=badges(label)", 300)
        assert {d["cardinality"] for d in err["details"]} == {"one-to-one"}
