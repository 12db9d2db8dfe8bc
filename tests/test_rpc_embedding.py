"""Resource embedding on the rows of a function (#14): a function whose rows are rows of a
table (its `table`, declared or inferred; api/functions.py) embeds as that table does, in one
statement correlated on the function's CTE (api/rpc.py), under the embedded tables'
allow-list and roles. PostgREST: `GET /rpc/search_authors?select=name,books(title)` on a
function `RETURNS SETOF authors`."""
from __future__ import annotations


import apsw
import orjson
import pytest

from sqlite_rest.api.functions import FunctionsFileError, load_functions
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from tests.plugins.server import start_server
from tests.test_roles_embedding import ALICE, BOB, SECRET

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE publishers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE books (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER,
    author_id INTEGER REFERENCES authors(id),
    publisher_id INTEGER REFERENCES publishers(id),
    printer_id INTEGER REFERENCES publishers(id)
);
CREATE TABLE reviews (id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES books(id),
                      stars INTEGER, reviewer TEXT);
CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT);
CREATE TABLE book_tags (book_id INTEGER REFERENCES books(id), tag_id INTEGER REFERENCES tags(id),
                        PRIMARY KEY (book_id, tag_id));
INSERT INTO authors VALUES (1, 'Ursula K. Le Guin'), (2, 'Frank Herbert'), (3, 'Octavia Butler');
INSERT INTO publishers VALUES (1, 'Ace'), (2, 'Gollancz');
INSERT INTO books VALUES
  (1, 'A Wizard of Earthsea', 1968, 1, 1, 2),
  (2, 'The Left Hand of Darkness', 1969, 1, 1, 1),
  (3, 'Dune', 1965, 2, 2, 2),
  (4, 'The Dispossessed', 1974, 1, 2, 1);
INSERT INTO reviews VALUES (1, 1, 5, 'alice'), (2, 1, 3, 'bob'), (3, 3, 4, 'alice'),
                           (4, 2, 2, 'bob');
INSERT INTO tags VALUES (1, 'fantasy'), (2, 'sf');
INSERT INTO book_tags VALUES (1, 1), (2, 2), (3, 2), (4, 1), (4, 2);
"""
TABLES = ("authors", "publishers", "books", "reviews", "tags", "book_tags")

FUNCTIONS = """
functions:
  search_authors:            # rows of authors, inferred from the result columns
    params: {q: {type: text, default: ''}}
    sql: SELECT id, name FROM authors WHERE name LIKE '%' || :q || '%' ORDER BY id
  books_since:               # declared
    params: {year: integer}
    sql: SELECT * FROM books WHERE year >= :year ORDER BY id
    table: books
  author:
    params: {id: integer}
    sql: SELECT id, name FROM authors WHERE id = :id
    returns: row
    table: authors
  book_titles:               # lacks the foreign key columns
    sql: SELECT id, title FROM books ORDER BY id
    table: books
  shouted_authors:           # an expression: no table inferred
    sql: SELECT id, upper(name) AS name FROM authors ORDER BY id
  no_table:
    sql: SELECT id, name FROM authors ORDER BY id
    table: null
  everyone:                  # a UNION: SQLite names the first SELECT's table only
    sql: SELECT id, name FROM authors UNION ALL SELECT id, name FROM publishers
  review:
    params: {book: integer, stars: integer, reviewer: text}
    sql: |
      INSERT INTO reviews (book_id, stars, reviewer) VALUES (:book, :stars, :reviewer);
      SELECT * FROM books WHERE id = :book
    returns: row
"""


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "library.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    return path


def make_client(db, tmp_path, functions=FUNCTIONS, **config):
    (tmp_path / "functions.yml").write_text(functions)
    config.setdefault("allow_tables", TABLES)
    config.setdefault("auth_disabled", True)
    app = create_app(ServerConfig(db_dsn=str(db), functions_file=str(tmp_path / "functions.yml"),
                                  **config))
    return app.test_client()


@pytest.fixture
def client(db, tmp_path):
    with make_client(db, tmp_path) as c:
        yield c


def get(client, url, status=200, **kw):
    r = client.get(url, **kw)
    assert r.status_code == status, r.data
    return orjson.loads(r.data)


# -- every shape, exactly as on the table ---------------------------------------------------

#: (function call, the same read on the table): the function returns all of the table's
#: rows, so the two answers are the same, body for body.
SAME_AS_THE_TABLE = [
    ("/rpc/books_since?year=0&select=title,author:authors(name)",
     "/books?order=id&select=title,author:authors(name)",
     [{"title": "A Wizard of Earthsea", "author": {"name": "Ursula K. Le Guin"}},
      {"title": "The Left Hand of Darkness", "author": {"name": "Ursula K. Le Guin"}},
      {"title": "Dune", "author": {"name": "Frank Herbert"}},
      {"title": "The Dispossessed", "author": {"name": "Ursula K. Le Guin"}}]),
    # one-to-many with the embedding's order, limit and offset
    ("/rpc/search_authors?select=name,books(title,year)&books.order=year.desc&books.limit=2"
     "&books.offset=1",
     "/authors?order=id&select=name,books(title,year)&books.order=year.desc&books.limit=2"
     "&books.offset=1",
     [{"name": "Ursula K. Le Guin", "books": [
         {"title": "The Left Hand of Darkness", "year": 1969},
         {"title": "A Wizard of Earthsea", "year": 1968}]},
      {"name": "Frank Herbert", "books": []},
      {"name": "Octavia Butler", "books": []}]),
    # many-to-many through book_tags, with an embedded filter
    ("/rpc/books_since?year=1969&select=title,tags(label)&tags.label=eq.sf",
     "/books?order=id&year=gte.1969&select=title,tags(label)&tags.label=eq.sf",
     [{"title": "The Left Hand of Darkness", "tags": [{"label": "sf"}]},
      {"title": "The Dispossessed", "tags": [{"label": "sf"}]}]),
    # nested and renamed
    ("/rpc/search_authors?q=Herbert&select=name,works:books(title,reviews(stars))",
     "/authors?name=like.*Herbert*&select=name,works:books(title,reviews(stars))",
     [{"name": "Frank Herbert", "works": [{"title": "Dune", "reviews": [{"stars": 4}]}]}]),
    # !inner with an embedded filter: only authors with such books
    ("/rpc/search_authors?select=name,books!inner(title)&books.year=lt.1966",
     "/authors?order=id&select=name,books!inner(title)&books.year=lt.1966",
     [{"name": "Frank Herbert", "books": [{"title": "Dune"}]}]),
    # is.null: authors without books (an anti-join)
    ("/rpc/search_authors?select=name,books()&books=is.null",
     "/authors?order=id&select=name,books()&books=is.null",
     [{"name": "Octavia Butler"}]),
    # hints: two foreign keys to publishers, by column and by constraint name
    ("/rpc/books_since?year=1974&select=title,publishers!printer_id(name),"
     "p:publishers!books_publisher_id_fkey(name)",
     "/books?year=gte.1974&select=title,publishers!printer_id(name),"
     "p:publishers!books_publisher_id_fkey(name)",
     [{"title": "The Dispossessed", "publishers": {"name": "Ace"}, "p": {"name": "Gollancz"}}]),
    # spreads: to-one (columns in the row) and to-many (one array per column)
    ("/rpc/books_since?year=1969&select=title,...authors(author:name),"
     "...reviews(stars)&reviews.order=stars",
     "/books?order=id&year=gte.1969&select=title,...authors(author:name),"
     "...reviews(stars)&reviews.order=stars",
     [{"title": "The Left Hand of Darkness", "author": "Ursula K. Le Guin", "stars": [2]},
      {"title": "The Dispossessed", "author": "Ursula K. Le Guin", "stars": []}]),
    # the function's own filters, order and limit around the embedding
    ("/rpc/books_since?year=0&select=id,authors(name)&author_id=eq.1&order=year.desc&limit=1",
     "/books?select=id,authors(name)&author_id=eq.1&order=year.desc&limit=1",
     [{"id": 4, "authors": {"name": "Ursula K. Le Guin"}}]),
]


@pytest.mark.parametrize("call,table_read,expected", SAME_AS_THE_TABLE)
def test_embedding_on_a_function_is_the_tables(client, call, table_read, expected):
    assert get(client, call) == expected
    assert get(client, table_read) == expected


def test_post_and_the_object_media_type(client):
    r = client.post("/rpc/search_authors?select=name,books(title)&books.order=year",
                    json={"q": "Le Guin"})
    assert r.status_code == 200
    assert orjson.loads(r.data) == [{"name": "Ursula K. Le Guin", "books": [
        {"title": "A Wizard of Earthsea"}, {"title": "The Left Hand of Darkness"},
        {"title": "The Dispossessed"}]}]
    r = client.get("/rpc/search_authors?q=Herbert&select=name,books(title)",
                   headers={"Accept": "application/vnd.pgrst.object+json"})
    assert orjson.loads(r.data) == {"name": "Frank Herbert", "books": [{"title": "Dune"}]}


def test_a_row_function_embeds_in_its_object(client):
    assert get(client, "/rpc/author?id=2&select=name,books(title,publishers!printer_id(name))") \
        == {"name": "Frank Herbert", "books": [{"title": "Dune",
                                                "publishers": {"name": "Gollancz"}}]}
    assert get(client, "/rpc/author?id=9&select=name,books(title)") is None


@pytest.mark.parametrize("url", ["/rpc/search_authors?select=name,books!inner(title)",
                                 "/authors?select=name,books!inner(title)&order=id"])
def test_count_and_range_with_an_inner_embedding(client, url):
    # the count is of the rows the page comes from: authors with books (Butler has none)
    r = client.get(url, headers={"Prefer": "count=exact", "Range": "0-0"})
    assert r.status_code == 206 and r.headers["Content-Range"] == "0-0/2"
    assert orjson.loads(r.data) == [{"name": "Ursula K. Le Guin", "books": [
        {"title": "A Wizard of Earthsea"}, {"title": "The Left Hand of Darkness"},
        {"title": "The Dispossessed"}]}]
    r = client.get(url.replace("!inner(title)", "(title)&books=is.null"),
                   headers={"Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "0-0/1"


def test_a_writing_function_embeds_what_it_wrote(client, db):
    r = client.post("/rpc/review?select=title,reviews(stars,reviewer)&reviews.order=id",
                    json={"book": 3, "stars": 1, "reviewer": "carol"})
    assert r.status_code == 200
    assert orjson.loads(r.data) == {"title": "Dune", "reviews": [
        {"stars": 4, "reviewer": "alice"}, {"stars": 1, "reviewer": "carol"}]}
    # a failing embedding rolls the whole function back
    r = client.post("/rpc/review?select=title,nope(*)",
                    json={"book": 3, "stars": 2, "reviewer": "dave"})
    assert r.status_code == 400 and orjson.loads(r.data)["code"] == "PGRST200"
    conn = apsw.Connection(str(db))
    assert conn.execute("SELECT reviewer FROM reviews WHERE book_id = 3 ORDER BY id"
                        ).fetchall() == [("alice",), ("carol",)]
    conn.close()


def test_one_statement_correlated_on_the_functions_rows(client, db, monkeypatch):
    """The function's SELECT is the CTE and the embeddings are subqueries of the one statement
    over it: one execute, whatever the number of rows and embeddings."""
    import sqlite_rest.api.rpc as rpc

    statements = []
    real_call = rpc.call

    def traced_call(state, *args, **kw):
        reader = state.db.reader()
        reader.exec_trace = lambda cursor, sql, bindings: statements.append(sql) or True
        try:
            return real_call(state, *args, **kw)
        finally:
            reader.exec_trace = None

    client.get("/rpc/search_authors?select=name,books(title)")  # loads the schema cache
    monkeypatch.setattr(rpc, "call", traced_call)
    assert get(client, "/rpc/search_authors?select=name,books(title,reviews(stars)),"
                       "n:books!inner(count)&order=id&limit=1") == [
        {"name": "Ursula K. Le Guin",
         "books": [{"title": "A Wizard of Earthsea", "reviews": [{"stars": 5}, {"stars": 3}]},
                   {"title": "The Left Hand of Darkness", "reviews": [{"stars": 2}]},
                   {"title": "The Dispossessed", "reviews": []}],
         "n": [{"count": 3}]}]
    calls = [s for s in statements if s != "PRAGMA schema_version"]
    assert len(calls) == 1, statements
    assert calls[0].startswith('WITH "__sqlite_rest_rpc_result" AS (SELECT id, name FROM')
    assert '"__sqlite_rest_rpc_result"."id"' in calls[0]  # correlated on the function's rows


@pytest.mark.parametrize("select", ["year.sum()", "title,authors(id.count())"])
def test_aggregates_need_aggregates_enabled_as_on_a_table(db, tmp_path, select):
    with make_client(db, tmp_path) as client:
        body = get(client, f"/rpc/books_since?year=0&select={select}", 400)
        assert body["code"] == "PGRST123"
        assert body == get(client, f"/books?select={select}", 400)
        # a bare count is the rows' count, not an aggregate (the supabase idiom)
        assert get(client, "/rpc/search_authors?select=name,books(count)&limit=1") == [
            {"name": "Ursula K. Le Guin", "books": [{"count": 3}]}]
    with make_client(db, tmp_path, aggregates_enabled=True) as client:
        assert get(client, "/rpc/books_since?year=1969&select=year.sum(),authors(name)") == [
            {"sum": 3943, "authors": {"name": "Ursula K. Le Guin"}}]


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,table_read,status,code", [
    ("/rpc/books_since?year=0&select=title,publishers(name)",
     "/books?select=title,publishers(name)", 300, "PGRST201"),
    ("/rpc/books_since?year=0&select=title,auhtors(name)",
     "/books?select=title,auhtors(name)", 400, "PGRST200"),
    ("/rpc/books_since?year=0&select=title,authors!nope(name)",
     "/books?select=title,authors!nope(name)", 400, "PGRST200"),
    ("/rpc/search_authors?select=name,books(nope)",
     "/authors?select=name,books(nope)", 400, "42703"),
])
def test_relationship_errors_are_the_tables(client, call, table_read, status, code):
    body = get(client, call, status)
    assert body["code"] == code
    assert body == get(client, table_read, status)


def test_pgrst201_details(client):
    assert get(client, "/rpc/books_since?year=0&select=title,publishers(name)", 300) == {
        "code": "PGRST201",
        "message": "Could not embed because more than one relationship was found for 'books' "
                   "and 'publishers'",
        "details": [
            {"cardinality": "many-to-one", "embedding": "books with publishers",
             "relationship": "books_printer_id_fkey using books(printer_id) and "
                             "publishers(id)"},
            {"cardinality": "many-to-one", "embedding": "books with publishers",
             "relationship": "books_publisher_id_fkey using books(publisher_id) and "
                             "publishers(id)"}],
        "hint": "Try changing 'publishers' to one of the following: "
                "'publishers!books_printer_id_fkey', 'publishers!books_publisher_id_fkey'. "
                "Find the desired relationship in the 'details' key."}


def test_a_result_without_the_join_columns_is_42703(client):
    assert get(client, "/rpc/book_titles?select=title,authors(name)", 400) == {
        "code": "42703",
        "message": "column book_titles.author_id does not exist",
        "details": "'book_titles' returns rows of 'books', and its relationship "
                   "books_author_id_fkey to 'authors' joins on books(author_id)",
        "hint": "select author_id in the SQL of 'book_titles' (the functions file)"}
    # a relationship it has the columns of works (books.id for reviews)
    assert get(client, "/rpc/book_titles?select=title,reviews(stars)&limit=1") == [
        {"title": "A Wizard of Earthsea", "reviews": [{"stars": 5}, {"stars": 3}]}]


@pytest.mark.parametrize("function", ["shouted_authors", "no_table", "everyone"])
def test_a_function_without_a_table_refuses_embedding_saying_how_to_name_one(client, function):
    assert get(client, f"/rpc/{function}?select=name,books(title)", 400) == {
        "code": "PGRST200",
        "message": f"Could not find a relationship between '{function}' and 'books' in the "
                   "schema cache",
        "details": f"Searched for a foreign key relationship between '{function}' and "
                   "'books' in the schema, but no matches were found.",
        "hint": f"function public.{function} returns rows of no known table: name it in the "
                "function's entry of the functions file, 'table: <table>' (PostgreSQL: "
                "RETURNS SETOF <table>)"}
    # without an embedding it is served as before
    assert get(client, f"/rpc/{function}?select=name&id=eq.1") == [
        {"name": "URSULA K. LE GUIN" if function == "shouted_authors" else "Ursula K. Le Guin"}
    ] + ([{"name": "Ace"}] if function == "everyone" else [])


def test_a_table_outside_the_allow_list_is_unrelated(db, tmp_path):
    with make_client(db, tmp_path, allow_tables=("authors",)) as client:
        # the function's own table needs no listing (the functions file is its allow-list);
        # an embedded one does, with the table path's answer
        body = get(client, "/rpc/books_since?year=0&select=title,authors(name)&limit=1")
        assert body == [{"title": "A Wizard of Earthsea", "authors": {"name": "Ursula K. Le Guin"}}]
        assert get(client, "/rpc/search_authors?select=name,books(title)", 400) == {
            "code": "PGRST200",
            "message": "Could not find a relationship between 'authors' and 'books' in the "
                       "schema cache",
            "details": "Searched for a foreign key relationship between 'authors' and 'books' "
                       "in the schema, but no matches were found.",
            "hint": None}


# -- the functions file ---------------------------------------------------------------------

def functions_of(db, tmp_path, text):
    path = tmp_path / "f.yml"
    path.write_text(text)
    conn = apsw.Connection(str(db))
    try:
        return load_functions(str(path), conn)
    finally:
        conn.close()


@pytest.mark.parametrize("sql,table", [
    ("SELECT id, name FROM authors", "authors"),
    ("SELECT * FROM books WHERE year > :y", "books"),
    ("SELECT b.id, b.title FROM books b JOIN authors a ON a.id = b.author_id", "books"),
    ("SELECT author_id FROM books GROUP BY author_id", "books"),
    ("SELECT id AS author_id FROM books", None),           # renamed: not books.author_id
    ("SELECT b.id, a.name FROM books b JOIN authors a ON a.id = b.author_id", None),
    ("SELECT id, name || '!' AS name FROM authors", None),  # an expression
    ("SELECT id FROM authors UNION SELECT id FROM books", None),
    ("SELECT x.id FROM (SELECT id FROM books UNION ALL SELECT id FROM authors) x", None),
    ("SELECT 1 AS id", None),
])
def test_the_table_is_inferred_only_when_every_column_is_one_tables(db, tmp_path, sql, table):
    params = "    params: {y: integer}\n" if ":y" in sql else ""
    functions = functions_of(db, tmp_path, f"functions:\n  f:\n{params}    sql: {sql}\n")
    assert functions["f"].table == table


def test_a_declared_table_wins_and_null_declares_none(db, tmp_path):
    functions = functions_of(db, tmp_path, """
functions:
  declared: {sql: 'SELECT id, name FROM authors', table: publishers}
  none: {sql: 'SELECT id, name FROM authors', table: null}
  a_row: {sql: 'SELECT id, title FROM books', returns: row, table: books}
""")
    assert functions["declared"].table == "publishers"
    assert functions["none"].table is None
    assert functions["a_row"].table == "books"


@pytest.mark.parametrize("entry,message", [
    ("{sql: 'SELECT id FROM books', table: nope}",
     "function 'f', key 'table': no table or view named 'nope' in the database"),
    ("{sql: 'SELECT id FROM books', table: [books]}",
     "function 'f', key 'table': expected the name of a table or view (or null for none)"),
    ("{sql: 'SELECT count(*) AS n FROM books', returns: value, table: books}",
     "function 'f', key 'table': only a function returning rows or row has a table "
     "(returns: value)"),
    ("{sql: 'SELECT title FROM books', table: authors}",
     "function 'f', key 'table': none of the result columns (title) is a column of authors "
     "(id, name): no relationship of authors could join on them"),
    ("{sql: 'UPDATE books SET year = year RETURNING id, title', table: books}",
     "function 'f', key 'table': the last statement is not a SELECT, so its rows take no "
     "select or embedding: end the function with a SELECT, or remove 'table'"),
    ("{sql: 'SELECT id FROM books', table: sqlite_schema}",
     "function 'f', key 'table': no table or view named 'sqlite_schema' in the database"),
])
def test_a_bad_table_is_refused_at_load_naming_file_function_and_key(db, tmp_path, entry,
                                                                    message):
    with pytest.raises(FunctionsFileError) as caught:
        functions_of(db, tmp_path, f"functions:\n  f: {entry}\n")
    assert str(caught.value) == f"--functions-file {tmp_path / 'f.yml'}: {message}"


# -- roles: the embedded tables' rules apply -------------------------------------------------

PERMISSIONS = """
anonymous: anon
roles:
  anon:
    books: {verbs: [GET]}
    publishers: {verbs: [POST]}
  member:
    authors: {verbs: [GET]}
    books: {verbs: [GET], read_columns: [id, title, author_id]}
    reviews: {verbs: [GET], rows: "reviewer=eq.{sub}"}
    publishers: {verbs: [POST]}
functions:
  anon: [search_authors]
  member: [search_authors, books_since]
"""


@pytest.fixture
def roles(db, tmp_path):
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "perm.yml").write_text(PERMISSIONS)
    with make_client(db, tmp_path, auth_disabled=False,
                     auth_token_file=str(tmp_path / "secret"),
                     permissions_file=str(tmp_path / "perm.yml")) as c:
        yield c


def test_an_embedding_shows_only_the_rows_the_role_may_read(roles):
    url = "/rpc/books_since?year=1965&select=title,reviews(stars)&title=neq.The Dispossessed"
    assert get(roles, url, headers=ALICE) == [
        {"title": "A Wizard of Earthsea", "reviews": [{"stars": 5}]},
        {"title": "The Left Hand of Darkness", "reviews": []},
        {"title": "Dune", "reviews": [{"stars": 4}]}]
    assert get(roles, url, headers=BOB) == [
        {"title": "A Wizard of Earthsea", "reviews": [{"stars": 3}]},
        {"title": "The Left Hand of Darkness", "reviews": [{"stars": 2}]},
        {"title": "Dune", "reviews": []}]
    # !inner, nested and spreads read through the same filter, which an embedded filter
    # cannot widen
    inner = "/rpc/books_since?year=0&select=title,reviews!inner(stars)"
    assert get(roles, inner, headers=ALICE) == [
        {"title": "A Wizard of Earthsea", "reviews": [{"stars": 5}]},
        {"title": "Dune", "reviews": [{"stars": 4}]}]
    assert get(roles, inner + "&reviews.reviewer=eq.bob", headers=ALICE) == []
    assert get(roles, "/rpc/search_authors?q=Guin&select=name,books(title,reviews(stars))"
                      "&books.order=id&books.limit=2", headers=BOB) == [
        {"name": "Ursula K. Le Guin", "books": [
            {"title": "A Wizard of Earthsea", "reviews": [{"stars": 3}]},
            {"title": "The Left Hand of Darkness", "reviews": [{"stars": 2}]}]}]
    assert get(roles, "/rpc/books_since?year=1968&select=title,...reviews(stars)&limit=1",
               headers=BOB) == [{"title": "A Wizard of Earthsea", "stars": [3]}]
    assert get(roles, "/rpc/search_authors?select=name,books()&books=is.null",
               headers=ALICE) == [{"name": "Octavia Butler"}]


def test_an_embedding_reads_only_the_roles_columns(roles):
    # books' star is its readable columns; a hidden one is 42501 as on the table
    assert get(roles, "/rpc/search_authors?q=Herbert&select=name,books(*)", headers=ALICE) == [
        {"name": "Frank Herbert", "books": [{"id": 3, "title": "Dune", "author_id": 2}]}]
    body = get(roles, "/rpc/search_authors?select=name,books(year)", 403, headers=ALICE)
    assert body == get(roles, "/authors?select=name,books(year)", 403, headers=ALICE)
    assert body["code"] == "42501" and "column year of table books" in body["message"]


def test_tables_the_role_may_not_read_are_answered_as_on_tables(roles):
    # no rule: as unrelated (PGRST200); a rule without GET: 42501 (401 anonymous)
    for select, status, code in (("title,tags(label)", 400, "PGRST200"),
                                 ("title,publishers!printer_id(name)", 403, "42501")):
        body = get(roles, f"/rpc/books_since?year=0&select={select}", status, headers=ALICE)
        assert body["code"] == code
        assert body == get(roles, f"/books?select={select}", status, headers=ALICE)
    # the anonymous role, nested: reviews has no rule for it, publishers no GET
    body = get(roles, "/rpc/search_authors?select=name,books(title,reviews(stars))", 400)
    assert body == get(roles, "/books?select=title,reviews(stars)", 400)
    assert body["code"] == "PGRST200"
    body = get(roles, "/rpc/search_authors?select=name,books(publishers!printer_id(name))", 401)
    assert body["code"] == "42501"
    assert body["message"] == "permission denied for table publishers"


def test_the_functions_own_rows_are_the_callers(roles):
    # the role reads authors only through the function (no rule for the anonymous role):
    # the function's columns are its own, the embedded table's rule applies
    assert get(roles, "/rpc/search_authors?q=Herbert&select=id,name") == [
        {"id": 2, "name": "Frank Herbert"}]
    assert get(roles, "/rpc/search_authors?q=Butler&select=name,books(title)") == [
        {"name": "Octavia Butler", "books": []}]


# -- the real postgrest-py against a real server ---------------------------------------------

def test_postgrest_py_embeds_on_a_function(tmp_path):
    from postgrest import SyncPostgrestClient
    from postgrest.exceptions import APIError

    db = tmp_path / "library.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute(SCHEMA)
    conn.close()
    (tmp_path / "functions.yml").write_text(FUNCTIONS)
    server = start_server(db, "--security-allow-table", ",".join(TABLES),
                          "--functions-file", tmp_path / "functions.yml", metrics=False)
    try:
        with SyncPostgrestClient(server.base_url) as client:
            r = client.rpc("search_authors", {"q": "Guin"}) \
                .select("name, books(title, tags(label))") \
                .order("year", desc=True, foreign_table="books").limit(2, foreign_table="books") \
                .execute()
            assert r.data == [{"name": "Ursula K. Le Guin", "books": [
                {"title": "The Dispossessed", "tags": [{"label": "fantasy"}, {"label": "sf"}]},
                {"title": "The Left Hand of Darkness", "tags": [{"label": "sf"}]}]}]
            r = client.rpc("books_since", {"year": 1965}, get=True) \
                .select("title, writer:authors!inner(name)").eq("writer.name", "Frank Herbert") \
                .execute()
            assert r.data == [{"title": "Dune", "writer": {"name": "Frank Herbert"}}]
            r = client.rpc("author", {"id": 2}).select("name, books(title)").execute()
            assert r.data == {"name": "Frank Herbert", "books": [{"title": "Dune"}]}
            with pytest.raises(APIError) as caught:
                client.rpc("no_table", {}).select("name, books(title)").execute()
            assert caught.value.code == "PGRST200"
            assert "table: <table>" in caught.value.hint
    finally:
        server.stop()
