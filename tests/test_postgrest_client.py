"""The real PostgREST client (postgrest-py, sync) against a real `sqlite-rest serve`.

postgrest-py sends ``Accept-Profile``/``Content-Profile: public`` and ``Prefer`` headers the
way it does for PostgREST; the server must tolerate and honour them.
"""
from __future__ import annotations

import time
from pathlib import Path

import apsw
import jwt
import pytest
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError

from tests.plugins.postgrest_js import POSTGREST_JS_VERSION, run_node
from tests.plugins.server import start_server

SECRET = b"a-secret-for-the-postgrest-client-test-0123456789"
ROWS = [
    {"id": 1, "name": "apple", "price": 1.5, "qty": 10},
    {"id": 2, "name": "banana", "price": 0.25, "qty": 100},
    {"id": 3, "name": "cherry", "price": 4.0, "qty": 0},
    {"id": 4, "name": "Apricot", "price": None, "qty": 7},
]
FUNCTIONS = """
functions:
  cheaper_than:
    params: {price: real}
    sql: SELECT id, name, price FROM items WHERE price < :price
  total_qty:
    params: {min_qty: {type: integer, default: 0}}
    sql: SELECT sum(qty) AS total FROM items WHERE qty >= :min_qty
    returns: value
  restock:
    params: {id: integer, qty: integer}
    sql: |
      UPDATE items SET qty = qty + :qty WHERE id = :id;
      SELECT id, name, qty FROM items WHERE id = :id
    returns: row
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("postgrest")
    db = tmp / "shop.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, "
                 "qty INTEGER NOT NULL DEFAULT 0)")
    conn.close()
    secret = tmp / "secret"
    secret.write_bytes(SECRET)
    functions = tmp / "functions.yml"
    functions.write_text(FUNCTIONS)
    srv = start_server(db, "--security-allow-table", "items", "--auth-token-file", secret,
                       "--functions-file", functions, "--aggregates-enabled", metrics=False)
    srv.db_path = db
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server):
    conn = apsw.Connection(str(server.db_path))
    conn.set_busy_timeout(5000)
    with conn:
        conn.execute("DELETE FROM items")
        conn.executemany("INSERT INTO items VALUES(:id, :name, :price, :qty)", ROWS)
    conn.close()
    token = jwt.encode({"sub": "tester", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    with SyncPostgrestClient(server.base_url) as c:
        c.auth(token)
        yield c


def ids(response):
    return [row["id"] for row in response.data]


def test_select_with_filters_and_order(client):
    r = client.from_("items").select("id,name").gte("qty", 7).order("id", desc=True).execute()
    assert r.data == [{"id": 4, "name": "Apricot"}, {"id": 2, "name": "banana"},
                      {"id": 1, "name": "apple"}]
    assert ids(client.from_("items").select("*").in_("id", [1, 3]).execute()) == [1, 3]
    assert ids(client.from_("items").select("*").ilike("name", "ap%").order("id").execute()) == [1, 4]
    assert ids(client.from_("items").select("*").like("name", "ap%").execute()) == [1]
    assert ids(client.from_("items").select("*").is_("price", "null").execute()) == [4]
    assert ids(client.from_("items").select("*").neq("id", 1).lt("price", 1).execute()) == [2]
    r = client.from_("items").select("*").or_("id.eq.1,qty.eq.0").order("id").execute()
    assert ids(r) == [1, 3]
    single = client.from_("items").select("name").eq("id", 2).single().execute()
    assert single.data == {"name": "banana"}


def test_count_and_range(client):
    r = client.from_("items").select("*", count="exact").range(0, 1).order("id").execute()
    assert ids(r) == [1, 2]
    assert r.count == 4
    r = client.from_("items").select("*", count="exact").gt("qty", 5).execute()
    assert r.count == 3 and len(r.data) == 3


def test_insert_and_bulk_insert(client):
    r = client.from_("items").insert({"id": 10, "name": "date", "price": 2.0, "qty": 1}).execute()
    assert r.data == [{"id": 10, "name": "date", "price": 2.0, "qty": 1}]
    rows = [{"id": 11, "name": "elder", "price": 1.0, "qty": 2},
            {"id": 12, "name": "fig", "price": 3.0, "qty": 3}]
    r = client.from_("items").insert(rows).execute()
    assert r.data == rows
    assert client.from_("items").select("*", count="exact").execute().count == 7


def test_insert_conflict_is_an_api_error(client):
    with pytest.raises(APIError) as info:
        client.from_("items").insert({"id": 1, "name": "dup"}).execute()
    assert info.value.code == "23505"


def test_upsert(client):
    r = client.from_("items").upsert({"id": 1, "name": "APPLE", "price": 2.0, "qty": 11},
                                     on_conflict="id").execute()
    assert r.data == [{"id": 1, "name": "APPLE", "price": 2.0, "qty": 11}]
    r = client.from_("items").upsert([{"id": 2, "name": "BANANA", "price": 0.5, "qty": 1},
                                      {"id": 20, "name": "grape", "price": 5.0, "qty": 2}]).execute()
    assert sorted(ids(r)) == [2, 20]
    got = client.from_("items").select("id,name").in_("id", [1, 2, 20]).order("id").execute().data
    assert got == [{"id": 1, "name": "APPLE"}, {"id": 2, "name": "BANANA"}, {"id": 20, "name": "grape"}]


def test_update(client):
    r = client.from_("items").update({"qty": 42}).lt("price", 2).execute()
    assert sorted(ids(r)) == [1, 2]
    assert all(row["qty"] == 42 for row in r.data)
    assert client.from_("items").select("qty").eq("id", 3).single().execute().data == {"qty": 0}


def test_delete(client):
    r = client.from_("items").delete().eq("qty", 0).execute()
    assert ids(r) == [3]
    assert client.from_("items").select("*", count="exact").execute().count == 3


def test_without_token_the_client_gets_401(server):
    with SyncPostgrestClient(server.base_url) as anonymous:
        with pytest.raises(APIError) as info:
            anonymous.from_("items").select("*").execute()
    assert info.value.code in ("PGRST302", "42501")


# -- RPC: client.rpc() ---------------------------------------------------------------------

def test_rpc_rows_with_filters_order_and_limit(client):
    r = client.rpc("cheaper_than", {"price": 2}).execute()
    assert r.data == [{"id": 1, "name": "apple", "price": 1.5},
                      {"id": 2, "name": "banana", "price": 0.25}]
    r = client.rpc("cheaper_than", {"price": 5}).gte("price", 1).order("price", desc=True) \
        .limit(1).execute()
    assert r.data == [{"id": 3, "name": "cherry", "price": 4.0}]
    r = client.rpc("cheaper_than", {"price": 5}).select("name").eq("id", 2).execute()
    assert r.data == [{"name": "banana"}]
    r = client.rpc("cheaper_than", {"price": 5}, count="exact").order("id").range(0, 0).execute()
    assert r.count == 3 and ids(r) == [1]
    single = client.rpc("cheaper_than", {"price": 5}).eq("id", 3).single().execute()
    assert single.data == {"id": 3, "name": "cherry", "price": 4.0}


def test_rpc_by_get_and_a_scalar(client):
    assert client.rpc("total_qty", {}).execute().data == 117
    assert client.rpc("total_qty", {"min_qty": 10}, get=True).execute().data == 110
    r = client.rpc("cheaper_than", {"price": "2"}, get=True).order("id", desc=True).execute()
    assert ids(r) == [2, 1]


def test_rpc_writing_function(client):
    r = client.rpc("restock", {"id": 3, "qty": 5}).execute()
    assert r.data == {"id": 3, "name": "cherry", "qty": 5}
    assert client.from_("items").select("qty").eq("id", 3).single().execute().data == {"qty": 5}
    with pytest.raises(APIError) as info:
        client.rpc("restock", {"id": 3, "qty": 5}, get=True).execute()
    assert info.value.code == "25006"


def test_rpc_errors_are_api_errors(client):
    with pytest.raises(APIError) as info:
        client.rpc("cheaper", {"price": 1}).execute()
    assert info.value.code == "PGRST202"
    assert info.value.hint is None
    with pytest.raises(APIError) as info:
        client.rpc("cheaper_than", {"cost": 1}).execute()
    assert info.value.code == "PGRST202"
    assert info.value.hint == "Perhaps you meant to call the function public.cheaper_than(price)"


# -- RPC through postgrest-js (Node) ------------------------------------------------------

JS_SCRIPT = Path(__file__).resolve().parent / "js" / "postgrest_js_rpc.cjs"


def test_rpc_through_postgrest_js(client, server, postgrest_js):
    """The same calls with Supabase's JavaScript client (tests/js/postgrest_js_rpc.cjs)."""
    token = jwt.encode({"sub": "tester", "exp": int(time.time()) + 600}, SECRET,
                       algorithm="HS256")
    out = run_node(postgrest_js, JS_SCRIPT, server.base_url, token)
    ok = {"error": None, "count": None, "status": 200}
    assert out["rows"] == {**ok, "data": [{"id": 3, "name": "cherry", "price": 4.0}]}
    assert out["selected"] == {**ok, "data": [{"name": "banana"}]}
    assert out["counted"] == {**ok, "status": 206, "count": 3,
                              "data": [{"id": 1, "name": "apple", "price": 1.5}]}
    assert out["single"] == {**ok, "data": {"id": 3, "name": "cherry", "price": 4.0}}
    assert out["by_get"] == {**ok, "data": 110}
    assert out["scalar"] == {**ok, "data": 117}
    assert out["write"] == {**ok, "data": {"id": 3, "name": "cherry", "qty": 5}}
    assert out["write_by_get"]["status"] == 405
    assert out["write_by_get"]["error"]["code"] == "25006"
    assert out["unknown"]["status"] == 404
    assert out["unknown"]["error"] == {
        "code": "PGRST202",
        "message": "Could not find the function public.cheaper_thn(price) in the schema cache",
        "details": "Searched for the function public.cheaper_thn with parameter price or with "
                   "a single unnamed json/jsonb parameter, but no matches were found in the "
                   "schema cache.",
        "hint": "Perhaps you meant to call the function public.cheaper_than"}
    # the write went through once (the GET was refused before running)
    assert client.from_("items").select("qty").eq("id", 3).single().execute().data == {"qty": 5}


def test_ci_installs_the_pinned_postgrest_js():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert f"'@supabase/postgrest-js@{POSTGREST_JS_VERSION}'" in ci
    assert f".tools/postgrest-js-{POSTGREST_JS_VERSION} " in ci


def test_aggregates_through_the_client(client):
    """PostgREST 12 aggregates, as supabase-style code writes them."""
    r = client.from_("items").select("qty.sum(), n:count()").execute()
    assert r.data == [{"sum": 117, "n": 4}]
    r = client.from_("items").select("price.max(), price.avg()").gt("qty", 0).execute()
    assert r.data == [{"max": 1.5, "avg": 0.875}]
