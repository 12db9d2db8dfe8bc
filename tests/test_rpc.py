"""RPC: the functions of --functions-file under /rpc/<name> (api/functions.py, api/rpc.py).

Statuses and error bodies follow PostgREST's (test/spec/Feature/Query/RpcSpec.hs): 404
PGRST202 with its message, details and hint; 405 PGRST101 for other verbs; 405 25006 for a
writing function called by GET; 204 without Content-Type for a function returning nothing.
"""
from __future__ import annotations

import threading

import apsw
import orjson
import pytest

from sqlite_rest.api.functions import FunctionsFileError, load_functions
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from tests.plugins.server import free_port
from tests.test_cli import run_cli

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author_id INTEGER REFERENCES authors(id),
    year INTEGER,
    tags TEXT DEFAULT '[]'
);
CREATE TABLE log (id INTEGER PRIMARY KEY, what TEXT NOT NULL);
INSERT INTO authors VALUES (1, 'Ursula K. Le Guin'), (2, 'Frank Herbert');
INSERT INTO books (id, title, author_id, year, tags) VALUES
  (1, 'A Wizard of Earthsea', 1, 1968, '["fantasy"]'),
  (2, 'The Left Hand of Darkness', 1, 1969, '["sf"]'),
  (3, 'The Dispossessed', 1, 1974, '["sf"]'),
  (4, 'Dune', 2, 1965, '["sf","classic"]');
"""

FUNCTIONS = """
functions:
  books_by:
    description: Books of one author, optionally since a year
    params:
      author: integer
      since: {type: integer, default: 0}
    sql: SELECT id, title, year FROM books WHERE author_id = :author AND year >= :since
  books_below:
    params: {id: integer}
    sql: SELECT id, title FROM books WHERE id < :id
  newest:
    sql: SELECT id, year FROM books ORDER BY year DESC
  add_them:
    params: {a: integer, b: integer}
    sql: SELECT :a + :b AS sum
    returns: value
  nothing_found:
    sql: SELECT title FROM books WHERE 0
    returns: value
  book:
    params: {id: integer}
    sql: SELECT id, title, year FROM books WHERE id = :id
    returns: row
  stats:
    sql: SELECT json_object('books', count(*), 'first', min(year)) AS stats FROM books
    returns: value
    json_columns: [stats]
  tagged:
    params: {tags: json}
    sql: SELECT id, title, tags FROM books WHERE tags = json(:tags)
    json_columns: [tags]
  echo:
    params: {doc: json}
    sql: SELECT json(:doc) AS doc
    returns: value
    json_columns: [doc]
  kinds:
    params:
      i: {type: integer, default: null}
      r: {type: real, default: null}
      t: {type: text, default: null}
      b: {type: boolean, default: null}
      j: {type: json, default: null}
    sql: SELECT :i AS i, typeof(:i) AS ti, :r AS r, typeof(:r) AS tr, :t AS t, :b AS b, :j AS j
    returns: row
  add_book:
    description: Adds a book and returns it
    params: {title: text, author: integer, year: {type: integer, default: null}}
    sql: |
      INSERT INTO books (title, author_id, year) VALUES (:title, :author, :year);
      INSERT INTO log (what) VALUES ('added ' || :title);
      SELECT id, title, year FROM books WHERE id = (SELECT max(id) FROM books)
    returns: row
  add_books:
    params: {author: integer, titles: json}
    sql: |
      INSERT INTO books (title, author_id) SELECT value, :author FROM json_each(:titles);
      SELECT id, title FROM books WHERE author_id = :author ORDER BY id
  retitle:
    params: {id: integer, title: text}
    sql: UPDATE books SET title = :title WHERE id = :id RETURNING id, title
  clear_log:
    sql: DELETE FROM log
    returns: nothing
  noop:
    sql: SELECT 1
    returns: nothing
"""


def rows(path, sql):
    conn = apsw.Connection(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class RecordingHook:
    """A WriterHook that answers a made-up replication position per commit."""

    owns_checkpoints = False

    def __init__(self):
        self.commits = []

    def watch_connection(self, conn):
        pass

    def before_commit(self):
        pass

    def __call__(self):
        self.commits.append(threading.get_ident())
        return f"{len(self.commits):016x}"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "rpc.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    return path


@pytest.fixture
def functions_file(tmp_path):
    path = tmp_path / "functions.yml"
    path.write_text(FUNCTIONS)
    return path


@pytest.fixture
def hook():
    return RecordingHook()


@pytest.fixture
def client(db, functions_file, hook):
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("books",), auth_disabled=True,
                                  functions_file=str(functions_file), writer_hook=hook))
    with app.test_client() as c:
        yield c


def json_of(response):
    return orjson.loads(response.data)


def not_found(message, details, hint):
    return {"code": "PGRST202", "message": message, "details": details, "hint": hint}


# -- set-returning functions --------------------------------------------------------------

def test_rows_by_get_and_post(client):
    expected = [{"id": 1, "title": "A Wizard of Earthsea", "year": 1968},
                {"id": 2, "title": "The Left Hand of Darkness", "year": 1969},
                {"id": 3, "title": "The Dispossessed", "year": 1974}]
    r = client.get("/rpc/books_by?author=1")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["Content-Range"] == "0-2/*"
    assert json_of(r) == expected
    r = client.post("/rpc/books_by", json={"author": 1})
    assert r.status_code == 200 and json_of(r) == expected
    assert "X-Replication-Txid" not in r.headers  # a read-only function commits nothing
    # the optional argument, by GET and POST
    assert json_of(client.get("/rpc/books_by?author=1&since=1969")) == expected[1:]
    assert json_of(client.post("/rpc/books_by", json={"author": 1, "since": 1970})) == \
        expected[2:]


def test_filters_select_order_limit_on_the_result(client):
    r = client.get("/rpc/books_by?author=1&select=title&year=gt.1968&order=year.desc")
    assert json_of(r) == [{"title": "The Dispossessed"}, {"title": "The Left Hand of Darkness"}]
    r = client.get("/rpc/books_by?author=1&select=id&order=id.desc&limit=1&offset=1")
    assert json_of(r) == [{"id": 2}]
    assert r.headers["Content-Range"] == "1-1/*"
    r = client.post("/rpc/books_by?select=id,name:title&title=like.*Dark*", json={"author": 1})
    assert json_of(r) == [{"id": 2, "name": "The Left Hand of Darkness"}]
    r = client.get("/rpc/books_by", query_string={"author": "1", "or": "(id.eq.1,id.eq.3)",
                                                 "select": "id"})
    assert json_of(r) == [{"id": 1}, {"id": 3}]
    # an unknown result column: the table's 400 42703, naming the function's columns
    r = client.get("/rpc/books_by?author=1&select=nope")
    assert r.status_code == 400 and json_of(r)["code"] == "42703"
    assert json_of(r)["hint"] == "columns of books_by: id, title, year"


def test_the_functions_own_order_holds_without_an_order(client):
    assert [b["id"] for b in json_of(client.get("/rpc/newest"))] == [3, 2, 1, 4]
    assert [b["id"] for b in json_of(client.get("/rpc/newest?year=lt.1970&limit=2"))] == [2, 1]
    assert [b["id"] for b in json_of(client.get("/rpc/newest?order=id"))] == [1, 2, 3, 4]


def test_an_argument_and_a_filter_of_the_same_name(client):
    """PostgREST's get_projects_below?id=5&id=gt.2: the plain value is the argument, the
    `op.value` one a filter on the result."""
    r = client.get("/rpc/books_below?id=4&id=gt.1&select=id")
    assert json_of(r) == [{"id": 2}, {"id": 3}]
    r = client.get("/rpc/books_below?id=4&id=not.gt.1&select=id")
    assert json_of(r) == [{"id": 1}]


def test_range_and_exact_count(client):
    r = client.get("/rpc/books_by?author=1", headers={"Range": "0-1", "Prefer": "count=exact"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "0-1/3"
    assert r.headers["Preference-Applied"] == "count=exact"
    assert [b["id"] for b in json_of(r)] == [1, 2]
    r = client.get("/rpc/books_by?author=1&year=gte.1969", headers={"Prefer": "count=exact"})
    assert r.status_code == 200 and r.headers["Content-Range"] == "0-1/2"
    # PostgREST ignores Range on POST; limit/offset still apply
    r = client.post("/rpc/books_by?limit=2&offset=1", json={"author": 1},
                    headers={"Range": "0-0", "Prefer": "count=exact"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "1-2/3"
    assert [b["id"] for b in json_of(r)] == [2, 3]
    r = client.get("/rpc/books_by?author=1&offset=5", headers={"Prefer": "count=exact"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "*/3"
    assert json_of(r)["code"] == "PGRST103"


def test_head_reads_without_a_body(client):
    r = client.head("/rpc/books_by?author=1", headers={"Prefer": "count=exact"})
    assert r.status_code == 200 and r.data == b""
    assert r.headers["Content-Range"] == "0-2/3"


def test_csv_and_singular_object(client):
    r = client.get("/rpc/books_by?author=1&select=id,title&order=id",
                   headers={"Accept": "text/csv"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.data == (b"id,title\n1,A Wizard of Earthsea\n2,The Left Hand of Darkness\n"
                      b"3,The Dispossessed")  # PostgREST: no trailing newline
    obj = "application/vnd.pgrst.object+json"
    r = client.get("/rpc/books_by?author=2", headers={"Accept": obj})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == obj + "; charset=utf-8"
    assert json_of(r) == {"id": 4, "title": "Dune", "year": 1965}
    r = client.get("/rpc/books_by?author=1", headers={"Accept": obj})
    assert r.status_code == 406
    assert json_of(r) == {"code": "PGRST116",
                          "message": "Cannot coerce the result to a single JSON object",
                          "details": "The result contains 3 rows", "hint": None}


def test_json_columns_are_sent_as_json(client):
    r = client.post("/rpc/tagged", json={"tags": ["sf"]})
    assert json_of(r) == [{"id": 2, "title": "The Left Hand of Darkness", "tags": ["sf"]},
                          {"id": 3, "title": "The Dispossessed", "tags": ["sf"]}]
    r = client.get("/rpc/tagged", query_string={"tags": '["sf","classic"]', "select": "tags"})
    assert json_of(r) == [{"tags": ["sf", "classic"]}]


# -- one row, one value, nothing -------------------------------------------------------------

def test_row_function_is_an_object(client):
    r = client.post("/rpc/book", json={"id": 4})
    assert r.status_code == 200
    assert json_of(r) == {"id": 4, "title": "Dune", "year": 1965}
    assert r.headers["Content-Range"] == "0-0/*"  # PostgREST: the one result is row 0
    assert json_of(client.get("/rpc/book?id=4&select=title")) == {"title": "Dune"}
    r = client.get("/rpc/book?id=99")
    assert r.status_code == 200 and r.data == b"null"
    r = client.get("/rpc/book?id=4&select=id,title", headers={"Accept": "text/csv"})
    assert r.data == b"id,title\n4,Dune"


def test_value_function_is_a_bare_json_value(client):
    r = client.post("/rpc/add_them", json={"a": 1, "b": 2})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.data == b"3"
    assert client.get("/rpc/add_them?a=40&b=2").data == b"42"
    assert client.post("/rpc/nothing_found").data == b"null"
    assert json_of(client.get("/rpc/stats")) == {"books": 4, "first": 1965}
    assert json_of(client.post("/rpc/echo", json={"doc": {"a": [1, None]}})) == {"a": [1, None]}
    r = client.get("/rpc/add_them?a=1&b=2", headers={"Accept": "text/csv"})
    assert r.data == b"sum\n3"
    # select, filters and order do not apply to a value
    r = client.get("/rpc/add_them?a=1&b=2&select=sum")
    assert r.status_code == 400
    assert json_of(r) == {
        "code": "PGRST100",
        "message": "function public.add_them returns a value: select, filters, order, limit "
                   "and offset do not apply",
        "details": "got select=sum", "hint": "call it without them"}


def test_function_returning_nothing_is_204(client, db, hook):
    rows_before = rows(db, "SELECT count(*) FROM books")
    r = client.post("/rpc/noop", json={})
    assert r.status_code == 204
    assert r.data == b""
    assert "Content-Type" not in r.headers and "Content-Length" not in r.headers
    client.post("/rpc/add_book", json={"title": "X", "author": 2})
    assert rows(db, "SELECT count(*) FROM log") == [(1,)]
    r = client.post("/rpc/clear_log")
    assert r.status_code == 204 and "Content-Type" not in r.headers
    assert len(r.headers["X-Replication-Txid"]) == 16
    assert rows(db, "SELECT count(*) FROM log") == [(0,)]
    assert rows(db, "SELECT count(*) FROM books")[0][0] == rows_before[0][0] + 1


# -- PGRST202: no function takes these arguments ------------------------------------------

def test_unknown_function_hints_the_closest_name(client):
    r = client.get("/rpc/book_by?author=1")
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json_of(r) == not_found(
        "Could not find the function public.book_by(author) in the schema cache",
        "Searched for the function public.book_by with parameter author, but no matches were "
        "found in the schema cache.",
        "Perhaps you meant to call the function public.books_by")
    r = client.get("/rpc/zzz")
    assert json_of(r) == not_found(
        "Could not find the function public.zzz without parameters in the schema cache",
        "Searched for the function public.zzz without parameters, but no matches were found "
        "in the schema cache.", None)
    # POST with a JSON body: PostgREST also searched for a single unnamed json parameter
    r = client.post("/rpc/zzz", json={})
    assert r.status_code == 404
    assert json_of(r)["details"] == (
        "Searched for the function public.zzz without parameters or with a single unnamed "
        "json/jsonb parameter, but no matches were found in the schema cache.")


def test_wrong_arguments_hint_the_signature(client):
    r = client.get("/rpc/books_by?autor=1")
    assert r.status_code == 404
    assert json_of(r) == not_found(
        "Could not find the function public.books_by(autor) in the schema cache",
        "Searched for the function public.books_by with parameter autor, but no matches were "
        "found in the schema cache.",
        "Perhaps you meant to call the function public.books_by(author, since)")
    # an extra argument is not ignored
    r = client.get("/rpc/add_them?a=1&b=2&smthelse=blabla")
    assert json_of(r) == not_found(
        "Could not find the function public.add_them(a, b, smthelse) in the schema cache",
        "Searched for the function public.add_them with parameters a, b, smthelse, but no "
        "matches were found in the schema cache.",
        "Perhaps you meant to call the function public.add_them(a, b)")
    # a missing required argument
    r = client.post("/rpc/add_them", json={"b": 2})
    assert r.status_code == 404
    assert json_of(r) == not_found(
        "Could not find the function public.add_them(b) in the schema cache",
        "Searched for the function public.add_them with parameter b or with a single unnamed "
        "json/jsonb parameter, but no matches were found in the schema cache.",
        "Perhaps you meant to call the function public.add_them(a, b)")
    r = client.get("/rpc/books_by")
    assert r.status_code == 404
    assert json_of(r)["message"] == \
        "Could not find the function public.books_by without parameters in the schema cache"


# -- arguments --------------------------------------------------------------------------------

def test_arguments_are_coerced_by_their_declared_type(client):
    r = client.get("/rpc/kinds", query_string={"i": "7", "r": "2.5", "t": "007", "b": "true",
                                              "j": '{"a":1}'})
    assert json_of(r) == {"i": 7, "ti": "integer", "r": 2.5, "tr": "real", "t": "007", "b": 1,
                          "j": '{"a":1}'}
    r = client.post("/rpc/kinds", json={"i": "8", "r": 3, "t": 5, "b": False,
                                        "j": {"a": [1]}})
    assert json_of(r) == {"i": 8, "ti": "integer", "r": 3.0, "tr": "real", "t": "5", "b": 0,
                          "j": '{"a":[1]}'}
    r = client.post("/rpc/kinds", json={"i": None, "t": None})
    assert json_of(r) == {"i": None, "ti": "null", "r": None, "tr": "null", "t": None,
                          "b": None, "j": None}
    # a form body: text arguments, as in a query string
    r = client.post("/rpc/add_them", data={"a": "2", "b": "3"})
    assert r.data == b"5"


@pytest.mark.parametrize("args, type_, shown", [
    ({"i": "x"}, "integer", '"x"'),
    ({"i": "1.5"}, "integer", '"1.5"'),
    ({"i": "9223372036854775808"}, "integer", '"9223372036854775808"'),
    ({"r": "abc"}, "real", '"abc"'),
    ({"b": "maybe"}, "boolean", '"maybe"'),
    ({"j": "{nope"}, "json", '"{nope"'),
])
def test_an_argument_its_type_cannot_take_is_22P02(client, args, type_, shown):
    r = client.get("/rpc/kinds", query_string=args)
    assert r.status_code == 400
    name = next(iter(args))
    assert json_of(r) == {"code": "22P02",
                          "message": f"invalid input syntax for type {type_}: {shown}",
                          "details": f"argument {name} of function public.kinds", "hint": None}


def test_json_arguments_of_the_wrong_type(client):
    r = client.post("/rpc/add_them", json={"a": 1.5, "b": 1})
    assert r.status_code == 400
    assert json_of(r)["message"] == 'invalid input syntax for type integer: "1.5"'
    r = client.post("/rpc/kinds", json={"b": [1]})
    assert json_of(r)["message"] == 'invalid input syntax for type boolean: "[1]"'
    r = client.post("/rpc/add_them", data=b'{"a": 99999999999999999999, "b": 1}',
                    content_type="application/json")
    assert r.status_code == 400 and json_of(r)["code"] == "PGRST102"


def test_post_bodies(client):
    assert client.post("/rpc/stats", data=b"").status_code == 200  # empty body: no arguments
    # PostgREST: an array passes its first object (its objects must share their keys)
    assert json_of(client.post("/rpc/add_them", json=[{"a": 1, "b": 2}])) == 3
    r = client.post("/rpc/add_them", json=[{"a": 1, "b": 2}, {"a": 1}])
    assert r.status_code == 400
    assert json_of(r)["code"] == "PGRST102"
    assert json_of(r)["message"] == "All object keys must match"
    r = client.post("/rpc/add_them", data=b"{nope", content_type="application/json")
    assert r.status_code == 400 and json_of(r)["code"] == "PGRST102"
    r = client.post("/rpc/add_them", data=b"a,b\n1,2\n", content_type="text/csv")
    assert r.status_code == 415 and json_of(r)["code"] == "PGRST107"


def test_prefer_params_single_object(client):
    r = client.post("/rpc/echo", json={"x": [1, 2]}, headers={"Prefer": "params=single-object"})
    assert r.status_code == 200
    assert json_of(r) == {"x": [1, 2]}
    assert r.headers["Preference-Applied"] == "params=single-object"
    r = client.post("/rpc/add_them", json={"a": 1, "b": 2},
                    headers={"Prefer": "params=single-object"})
    assert r.status_code == 404
    assert json_of(r) == not_found(
        "Could not find the function public.add_them in the schema cache",
        "Searched for the function public.add_them with a single json/jsonb parameter, but no "
        "matches were found in the schema cache.", None)


# -- verbs ----------------------------------------------------------------------------------

def test_a_writing_function_by_get_is_405_25006(client, db):
    for method in ("GET", "HEAD"):
        r = client.open("/rpc/add_book?title=X&author=1", method=method)
        assert r.status_code == 405
        assert r.headers["Allow"] == "POST, OPTIONS"
    r = client.get("/rpc/add_book?title=X&author=1")
    assert json_of(r) == {"code": "25006",
                          "message": "cannot execute INSERT in a read-only transaction",
                          "details": None, "hint": "This function writes: call it with POST"}
    assert rows(db, "SELECT count(*) FROM books WHERE title = 'X'") == [(0,)]
    # with wrong arguments it is still PostgREST's 404 first
    assert client.get("/rpc/add_book?nope=1").status_code == 404


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "PUT"])
def test_other_verbs_are_405_pgrst101(client, method):
    r = client.open("/rpc/books_by", method=method)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert json_of(r) == {"code": "PGRST101",
                          "message": f"Cannot use the {method} method on RPC",
                          "details": None, "hint": None}


def test_preflight(client):
    r = client.options("/rpc/books_by", headers={"Access-Control-Request-Method": "POST"})
    assert r.status_code == 200
    assert "POST" in r.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("name, allow", [
    ("books_by", "OPTIONS,GET,HEAD,POST"),   # reads: stable
    ("add_book", "OPTIONS,POST"),            # writes: volatile
    ("clear_log", "OPTIONS,POST"),
])
def test_options_says_how_a_function_may_be_called(client, name, allow):
    """PostgREST's OptionsSpec: a plain OPTIONS (no Access-Control-Request-Method) of a
    function answers its verbs, of an unknown one 404 PGRST202, of the root GET and HEAD."""
    r = client.options(f"/rpc/{name}")
    assert r.status_code == 200 and r.data == b""
    assert r.headers["Allow"] == allow


def test_options_of_an_unknown_function_and_of_the_root(client):
    r = client.options("/rpc/nope")
    assert r.status_code == 404 and json_of(r)["code"] == "PGRST202"
    r = client.options("/")
    assert r.status_code == 200 and r.data == b""
    assert r.headers["Allow"] == "OPTIONS,GET,HEAD"


# -- writing functions ----------------------------------------------------------------------

def test_writing_function_commits_once_with_the_replication_txid(client, db, hook):
    r = client.post("/rpc/add_book", json={"title": "Children of Dune", "author": 2,
                                           "year": 1976})
    assert r.status_code == 200
    assert json_of(r) == {"id": 5, "title": "Children of Dune", "year": 1976}
    assert r.headers["X-Replication-Txid"] == "0000000000000001"
    assert len(hook.commits) == 1
    assert rows(db, "SELECT what FROM log") == [("added Children of Dune",)]
    r = client.post("/rpc/retitle", json={"id": 4, "title": "Dune!"})
    assert json_of(r) == [{"id": 4, "title": "Dune!"}]
    assert r.headers["X-Replication-Txid"] == "0000000000000002"
    # a last statement that is not a SELECT (RETURNING) cannot be filtered
    r = client.post("/rpc/retitle?select=id", json={"id": 4, "title": "Dune"})
    assert r.status_code == 400 and json_of(r)["code"] == "PGRST100"
    assert rows(db, "SELECT title FROM books WHERE id = 4") == [("Dune!",)]


def test_writing_function_result_takes_filters(client):
    r = client.post("/rpc/add_books?select=title&id=gt.4&order=title.desc",
                    json={"author": 2, "titles": ["Dune Messiah", "Children of Dune"]},
                    headers={"Prefer": "count=exact"})
    assert r.status_code == 200
    assert json_of(r) == [{"title": "Dune Messiah"}, {"title": "Children of Dune"}]
    assert r.headers["Content-Range"] == "0-1/2"
    assert len(r.headers["X-Replication-Txid"]) == 16


def test_a_failing_statement_rolls_back_the_whole_function(client, db, hook):
    # the second INSERT fails (NOT NULL on log.what: the title is NULL)... after the first
    r = client.post("/rpc/add_book", json={"title": None, "author": 1})
    assert r.status_code == 400
    assert json_of(r)["code"] == "23502"
    assert "X-Replication-Txid" not in r.headers
    assert rows(db, "SELECT count(*) FROM books") == [(4,)]
    assert rows(db, "SELECT count(*) FROM log") == [(0,)]
    # a foreign key violation in the first statement
    r = client.post("/rpc/add_book", json={"title": "Orphan", "author": 99})
    assert r.status_code == 409 and json_of(r)["code"] == "23503"
    assert rows(db, "SELECT count(*) FROM books") == [(4,)]
    assert hook.commits == []


def test_concurrent_writing_calls_share_group_commits_and_fail_alone(db, functions_file):
    """Calls from many threads go through the group commit (db.py) like table writes: each in
    its own savepoint, so the one that fails undoes only its own statements."""
    hook = RecordingHook()
    app = create_app(ServerConfig(db_dsn=str(db), auth_disabled=True, writer_hook=hook,
                                  functions_file=str(functions_file)))
    results = {}
    start = threading.Barrier(12)

    def call(i):
        client = app.test_client()
        start.wait()
        author = 99 if i == 5 else 1 + i % 2  # author 99 does not exist: 409
        results[i] = client.post("/rpc/add_book", json={"title": f"T{i}", "author": author})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[5].status_code == 409
    assert "X-Replication-Txid" not in results[5].headers
    ok = [r for i, r in results.items() if i != 5]
    assert all(r.status_code == 200 for r in ok)
    assert all(len(r.headers["X-Replication-Txid"]) == 16 for r in ok)
    assert sorted(json_of(r)["title"] for r in ok) == sorted(f"T{i}" for i in range(12)
                                                             if i != 5)
    assert rows(db, "SELECT count(*) FROM books WHERE title GLOB 'T[0-9]*'") == [(11,)]
    assert rows(db, "SELECT count(*) FROM log") == [(11,)]
    assert 1 <= len(hook.commits) <= 11, hook.commits


def test_a_singular_accept_that_fails_rolls_back(client, db):
    r = client.post("/rpc/add_books", json={"author": 2, "titles": ["A", "B"]},
                    headers={"Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 406 and json_of(r)["code"] == "PGRST116"
    assert rows(db, "SELECT count(*) FROM books") == [(4,)]


def test_prefer_tx_rollback(client, db, hook):
    r = client.post("/rpc/add_book", json={"title": "Kindred", "author": 1},
                    headers={"Prefer": "tx=rollback"})
    assert r.status_code == 200
    assert json_of(r) == {"id": 5, "title": "Kindred", "year": None}
    assert r.headers["Preference-Applied"] == "tx=rollback"
    assert "X-Replication-Txid" not in r.headers
    assert rows(db, "SELECT count(*) FROM books") == [(4,)]
    assert rows(db, "SELECT count(*) FROM log") == [(0,)]
    assert hook.commits == []


def test_a_read_only_function_runs_on_the_read_only_connection(client, db):
    """Defence in depth beside the start-up check: the connection a read-only function runs
    on refuses writes (PRAGMA query_only)."""
    client.get("/rpc/stats")
    state = client.application.extensions["sqlite_rest"]
    reader = state.db.reader()
    assert reader.execute("PRAGMA query_only").fetchall() == [(1,)]
    with pytest.raises(apsw.ReadOnlyError):
        reader.execute("DELETE FROM log")


def test_functions_are_prepared_again_when_the_schema_moves(db, tmp_path, caplog):
    path = tmp_path / "functions.yml"
    path.write_text("functions:\n  everything: {sql: 'SELECT * FROM log'}\n"
                    "  tags: {sql: 'SELECT DISTINCT tags FROM books'}\n")
    app = create_app(ServerConfig(db_dsn=str(db), auth_disabled=True, functions_file=str(path)))
    client = app.test_client()
    assert json_of(client.get("/rpc/everything")) == []
    conn = apsw.Connection(str(db))
    conn.execute("ALTER TABLE log ADD COLUMN at TEXT; INSERT INTO log VALUES (1, 'x', 'now');"
                 "DROP TABLE books")
    conn.close()
    # the new column is a column of the result: in *, and to select and filter on
    assert json_of(client.get("/rpc/everything")) == [{"id": 1, "what": "x", "at": "now"}]
    assert json_of(client.get("/rpc/everything?select=at&at=eq.now")) == [{"at": "now"}]
    # a function whose table is gone answers SQLite's error, and the log says why
    r = client.get("/rpc/tags")
    assert r.status_code == 400
    assert json_of(r)["details"] == "no such table: books"
    assert "after a schema change" in caplog.text and "no such table: books" in caplog.text


def test_authentication_applies(db, functions_file, tmp_path):
    key = tmp_path / "secret.key"
    key.write_bytes(b"rpc-secret-0123456789abcdef-0123456789")
    app = create_app(ServerConfig(db_dsn=str(db), auth_token_file=str(key),
                                  functions_file=str(functions_file)))
    r = app.test_client().get("/rpc/stats")
    assert r.status_code == 401 and json_of(r)["code"] == "PGRST302"


def test_without_a_functions_file_every_function_is_404(db):
    app = create_app(ServerConfig(db_dsn=str(db), auth_disabled=True))
    r = app.test_client().post("/rpc/stats", json={})
    assert r.status_code == 404
    assert json_of(r)["code"] == "PGRST202"
    assert json_of(r)["hint"] is None


def test_metrics_count_each_function(db, functions_file):
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    app = create_app(ServerConfig(db_dsn=str(db), auth_disabled=True,
                                  functions_file=str(functions_file)), metrics_registry=registry)
    client = app.test_client()
    assert client.get("/rpc/stats").status_code == 200
    assert client.post("/rpc/add_them", json={"a": 1, "b": 2}).status_code == 200
    assert client.post("/rpc/nope", json={}).status_code == 404
    text = generate_latest(registry).decode()
    assert 'target="rpc/stats"' in text and 'target="rpc/add_them"' in text
    assert "nope" not in text


# -- OpenAPI ---------------------------------------------------------------------------------

def test_openapi_describes_the_functions(client):
    doc = json_of(client.get("/"))
    read = doc["paths"]["/rpc/books_by"]
    assert set(read) == {"get", "post"}
    assert read["get"]["parameters"][:2] == [
        {"name": "author", "in": "query", "required": True, "type": "integer",
         "format": "integer"},
        {"name": "since", "in": "query", "required": False, "type": "integer",
         "format": "integer", "default": 0}]
    assert {"$ref": "#/parameters/select"} in read["get"]["parameters"]
    assert read["get"]["summary"] == "Books of one author, optionally since a year"
    body = read["post"]["parameters"][0]
    assert body == {"name": "args", "in": "body", "required": True, "schema": {
        "type": "object", "required": ["author"],
        "properties": {"author": {"type": "integer", "format": "integer"},
                       "since": {"type": "integer", "format": "integer", "default": 0}}}}
    write = doc["paths"]["/rpc/add_book"]
    assert set(write) == {"post"}
    assert write["post"]["parameters"][0]["schema"]["required"] == ["title", "author"]
    assert "204" in doc["paths"]["/rpc/noop"]["post"]["responses"]


# -- the functions file ---------------------------------------------------------------------

BAD_FILES = [
    ("functions: [a]", "'functions' must be a mapping"),
    ("other: 1", "expected one top-level key 'functions:'"),
    ("functions:\n  f: {sql: SELECT 1, retruns: rows}", "function 'f', key 'retruns': "
     "unknown key"),
    ("functions:\n  f: {returns: rows}", "function 'f', key 'sql': missing or empty"),
    ("functions:\n  f: {sql: SELECT 1, returns: table}", "function 'f', key 'returns': "
     "'table' is not one of rows, row, value, nothing"),
    ("functions:\n  f: {sql: 'SELECT :a', params: {a: int}}", "function 'f', key 'params.a': "
     "type 'int' is not one of integer, real, text, boolean, json"),
    ("functions:\n  f: {sql: 'SELECT :a', params: {a: {type: integer, default: x}}}",
     "function 'f', key 'params.a.default': 'x' is not a integer"),
    ("functions:\n  f: {sql: SELECT 1, volatility: sometimes}",
     "function 'f', key 'volatility': 'sometimes' is not one of immutable, stable, volatile"),
    ("functions:\n  2f: {sql: SELECT 1}", "function name '2f' is not a name"),
    ("functions:\n  f: {sql: SELEC 1}", "function 'f', key 'sql': SQLite cannot prepare it: "
     'near "SELEC": syntax error'),
    ("functions:\n  f: {sql: SELECT * FROM nope}", "function 'f', key 'sql': SQLite cannot "
     "prepare it: no such table: nope"),
    ("functions:\n  f: {sql: 'SELECT :b'}", "function 'f', key 'sql': parameter :b is not "
     "declared in 'params'"),
    ("functions:\n  f: {sql: 'SELECT 1', params: {a: text}}", "function 'f', key 'params.a': "
     "declared but not used in 'sql'"),
    ("functions:\n  f: {sql: 'SELECT ?'}", "function 'f', key 'sql': use named parameters"),
    ("functions:\n  f: {sql: DELETE FROM log, volatility: stable}", "function 'f', key "
     "'volatility': the function is declared stable (read-only) but its SQL writes"),
    ("functions:\n  f: {sql: 'SELECT 1; INSERT INTO log (what) VALUES (1)', "
     "volatility: immutable}", "declared immutable (read-only) but its SQL writes"),
    ("functions:\n  f: {sql: 'PRAGMA query_only = 0'}", "function 'f', key 'sql': PRAGMA "
     "statements may not be used in a function"),
    ("functions:\n  f: {sql: 'BEGIN; DELETE FROM log; COMMIT', returns: nothing}",
     "BEGIN, COMMIT or ROLLBACK may not be used"),
    ("functions:\n  f: {sql: DELETE FROM log}", "function 'f', key 'returns': 'rows' needs "
     "rows, but the last statement returns no columns"),
    ("functions:\n  f: {sql: 'SELECT 1 AS a, 2 AS a'}", "the result has two columns named 'a'"),
    ("functions:\n  f: {sql: 'SELECT 1 AS a', json_columns: [b]}", "function 'f', key "
     "'json_columns': 'b' is not a result column (columns: a)"),
    ("functions: {f: {sql: 'SELECT 1'}\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m[:40] for _, m in BAD_FILES])
def test_a_bad_functions_file_is_refused_naming_function_and_key(db, tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    conn = apsw.Connection(str(db))
    try:
        with pytest.raises(FunctionsFileError) as info:
            load_functions(str(path), conn)
    finally:
        conn.close()
    assert str(info.value).startswith(f"--functions-file {path}: ")
    assert message in str(info.value)


def test_a_volatile_read_only_function_and_derived_volatility(db, tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text("functions:\n  r: {sql: SELECT 1 AS x}\n  w: {sql: DELETE FROM log, "
                    "returns: nothing}\n  v: {sql: SELECT 1 AS x, volatility: volatile}\n")
    conn = apsw.Connection(str(db))
    try:
        functions = load_functions(str(path), conn)
    finally:
        conn.close()
    assert {n: f.volatility for n, f in functions.items()} == \
        {"r": "stable", "w": "volatile", "v": "volatile"}
    # declared volatile: run as a write (POST only) even though its SQL only reads
    assert {n: f.writes for n, f in functions.items()} == {"r": False, "w": True, "v": True}


@pytest.mark.parametrize("text, message", [
    ("functions:\n  f: {sql: SELECT 1, retruns: rows}", "function 'f', key 'retruns': "
     "unknown key"),
    ("functions:\n  f: {sql: SELECT * FROM nope}", "function 'f', key 'sql': SQLite cannot "
     "prepare it: no such table: nope"),
    ("functions:\n  f: {sql: DELETE FROM log, volatility: stable}", "function 'f', key "
     "'volatility': the function is declared stable (read-only) but its SQL writes"),
])
def test_serve_refuses_a_bad_functions_file_in_one_line(db, tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    proc = run_cli(["serve", "--db-dsn", db, "--auth-disabled", "--http-addr", f"127.0.0.1:{free_port()}",
                    "--metrics-addr", "", "--functions-file", path])
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"--functions-file {path}: " in last and message in last, last


def test_a_real_server_serves_the_functions(db, tmp_path):
    """`sqlite-rest serve --functions-file` (supervisor check, then every worker): a function
    using REGEXP (registered on the server's connections) is accepted and called."""
    import httpx

    from tests.plugins.server import start_server

    path = tmp_path / "functions.yml"
    path.write_text("functions:\n  matching:\n    params: {pattern: text}\n"
                    "    sql: SELECT id FROM books WHERE title REGEXP :pattern\n")
    srv = start_server(db, "--functions-file", path, metrics=False)
    try:
        r = httpx.get(srv.base_url + "/rpc/matching", params={"pattern": "^The", "order": "id"})
        assert r.status_code == 200, r.text
        assert r.json() == [{"id": 2}, {"id": 3}]
        r = httpx.post(srv.base_url + "/rpc/matching?id=gt.2", json={"pattern": "^The"})
        assert r.json() == [{"id": 3}]
    finally:
        srv.stop()


def test_serve_reads_the_functions_file_from_the_environment(db, tmp_path):
    path = tmp_path / "missing.yml"
    proc = run_cli(["serve", "--db-dsn", db, "--auth-disabled", "--http-addr", f"127.0.0.1:{free_port()}",
                    "--metrics-addr", ""], env={"SQLITEREST_FUNCTIONS_FILE": str(path)})
    assert proc.returncode == 1, proc
    last = proc.stderr.strip().splitlines()[-1]
    assert f"--functions-file {path}: cannot read it: No such file or directory" in last
