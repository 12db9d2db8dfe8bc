"""api/dispatch.py: the API routes answered without Flask's request context give exactly the
answers Flask's own routing gives for them (the same views behind both), and every other path
still reaches Flask."""
from __future__ import annotations

import shutil

import apsw
import pytest
from werkzeug.test import Client

from sqlite_rest.api.dispatch import ApiDispatch
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, price REAL);
CREATE TABLE "größe" (id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE live (id INTEGER PRIMARY KEY);
CREATE TABLE rpc (id INTEGER PRIMARY KEY, note TEXT);
INSERT INTO items VALUES (1, 'a', 1.5), (2, 'b', NULL), (3, 'c', 3.0);
INSERT INTO "größe" VALUES (1, 'x');
INSERT INTO rpc VALUES (1, 'a table named rpc');
"""

FUNCTIONS = """
functions:
  add:
    sql: SELECT :a + :b
    params: {a: integer, b: integer}
    returns: value
"""

#: (method, path with query, body, headers): each is sent to both entries in this order.
REQUESTS = [
    ("GET", "/items?id=eq.2", None, {}),
    ("GET", "/items?select=id,name&order=id.desc&limit=2", None, {"Prefer": "count=exact"}),
    ("HEAD", "/items", None, {}),
    ("GET", "/items?id=eq.1", None, {"Accept": "text/csv"}),
    ("GET", "/items?id=gt.1", None, {"Accept": "application/vnd.pgrst.object+json"}),
    ("GET", "/items?nope=eq.1", None, {}),
    ("GET", "/items?id=zz.1", None, {}),
    ("GET", "/items/", None, {}),
    ("GET", "/nowhere", None, {}),
    ("GET", "/live", None, {}),
    ("GET", "/rpc", None, {}),
    ("GET", "/größe?v=eq.x", None, {}),
    ("OPTIONS", "/items", None, {"Access-Control-Request-Headers": "Prefer"}),
    ("POST", "/items", b'{"name":"d","price":4}', {"Content-Type": "application/json"}),
    ("POST", "/items", b'{"name":"d"}', {"Content-Type": "application/json"}),
    ("POST", "/items", b'{"name":', {"Content-Type": "application/json"}),
    ("POST", "/items?select=id,name", b'[{"name":"e"},{"name":"f"}]',
     {"Content-Type": "application/json", "Prefer": "return=representation"}),
    ("PATCH", "/items?id=eq.2", b'{"price":9}',
     {"Content-Type": "application/json", "Prefer": "return=representation"}),
    ("DELETE", "/items?id=eq.3", None, {}),
    ("DELETE", "/items", None, {}),
    ("PUT", "/items?id=eq.1", b'{"id":1,"name":"a2","price":null}',
     {"Content-Type": "application/json"}),
    ("TRACE", "/items", None, {}),
    ("GET", "/rpc/add?a=1&b=2", None, {}),
    ("POST", "/rpc/add", b'{"a":2,"b":40}', {"Content-Type": "application/json"}),
    ("POST", "/rpc/add", b'{"a":"x"}', {"Content-Type": "application/json"}),
    ("GET", "/rpc/missing", None, {}),
    ("GET", "/rpc/add/", None, {}),
    ("GET", "/items/1", None, {}),
    ("GET", "//items", None, {}),
]


def _db(path):
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    return path


def _app(db, functions):
    return create_app(ServerConfig(
        db_dsn=str(db), allow_tables=("items", "größe", "live", "rpc"), auth_disabled=True,
        functions_file=str(functions)))


def _dispatch_of(app) -> ApiDispatch:
    entry = app.wsgi_app
    while not isinstance(entry, ApiDispatch):
        entry = entry.wsgi_app
    return entry


def _wsgi(path: str) -> str:
    """A path as a WSGI server puts it in PATH_INFO (its UTF-8 bytes as latin-1)."""
    return path.encode().decode("latin-1")


def _answers(wsgi_app, requests):
    client = Client(wsgi_app)
    answers = []
    for method, target, body, headers in requests:
        path, _, query = target.partition("?")
        r = client.open("/", method=method, query_string=query, data=body, headers=headers,
                        environ_overrides={"PATH_INFO": _wsgi(path)})
        answers.append((method, target, r.status_code,
                        [(k, v) for k, v in r.headers.items() if k != "Date"], r.get_data()))
    return answers


@pytest.fixture
def two_apps(tmp_path):
    functions = tmp_path / "functions.yml"
    functions.write_text(FUNCTIONS)
    first = _db(tmp_path / "a.db")
    second = tmp_path / "b.db"
    shutil.copy(first, second)
    return _app(first, functions), _app(second, functions)


def test_the_dispatched_routes_answer_as_flask_routing_does(two_apps):
    dispatched, flask_only = two_apps
    # the whole chain (request log, metrics, dispatch) against Flask's routing alone
    ours = _answers(dispatched, REQUESTS)
    flasks = _answers(_dispatch_of(flask_only).fallback, REQUESTS)
    for got, expected in zip(ours, flasks):
        assert got == expected
    statuses = {target: status for _method, target, status, _h, _b in ours}
    assert statuses["/items?id=eq.2"] == 200
    assert statuses["/nowhere"] == 404
    assert statuses["/items/1"] == 404


def test_only_plain_api_paths_skip_flask(two_apps, monkeypatch):
    app, _ = two_apps
    dispatch = _dispatch_of(app)
    fell_back = []
    inner = dispatch.fallback
    monkeypatch.setattr(dispatch, "fallback", lambda environ, start_response: (
        fell_back.append(environ["PATH_INFO"]), inner(environ, start_response))[1])
    client = Client(app)
    for path in ("/items", "/rpc/add", "/rpc", _wsgi("/größe")):
        client.get("/", environ_overrides={"PATH_INFO": path})
    assert fell_back == []
    odd = ["/", "/live", "/ready", "/items/", "//items", "/rpc/", "/rpc/add/x", "", "items"]
    for path in odd:
        client.get("/", environ_overrides={"PATH_INFO": path})
    client.open("/items", method="TRACE")
    assert fell_back == odd + ["/items"]


def test_a_table_named_like_a_route_of_flask_stays_hidden_behind_it(two_apps):
    app, _ = two_apps
    r = Client(app).get("/live")
    assert r.status_code == 200 and r.get_json() == {"status": "live"}
    r = Client(app).get("/rpc")
    assert r.get_json() == [{"id": 1, "note": "a table named rpc"}]


def test_a_non_ascii_table_name_is_decoded_as_werkzeug_decodes_it(two_apps):
    app, _ = two_apps
    r = Client(app).get("/größe")
    assert r.status_code == 200 and r.get_json() == [{"id": 1, "v": "x"}]


def test_an_unexpected_failure_in_a_dispatched_view_is_a_json_500_without_details(
        two_apps, monkeypatch, caplog):
    app, _ = two_apps
    dispatch = _dispatch_of(app)

    def boom(environ, name):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(dispatch, "table_view", boom)
    r = Client(app).get("/items")
    assert r.status_code == 500
    assert r.get_json()["code"] == "XX000"
    assert b"secret internal detail" not in r.get_data()
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "secret internal detail" in caplog.text  # logged, with its traceback
