"""Aggregates in select (#14 item 2): PostgREST 12's total.sum(), count(), avg/min/max, the
implied GROUP BY, casts on input and result, switched on by --aggregates-enabled."""
from __future__ import annotations

import apsw
import pytest

from sqlite_rest.api.query import SelectItem, parse_select
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, status TEXT);
INSERT INTO orders VALUES (1, 1, 10.5, 'paid'), (2, 1, 20, 'paid'), (3, 2, 5, 'open'),
                          (4, 2, 7.25, 'paid'), (5, 3, 100, 'open'), (6, NULL, NULL, 'open');
"""


@pytest.fixture
def db(tmp_path):
    conn = apsw.Connection(str(tmp_path / "agg.db"))
    conn.execute(SCHEMA)
    conn.close()
    return tmp_path / "agg.db"


def client(db, enabled=True):
    return create_app(ServerConfig(db_dsn=str(db), allow_tables=("orders",), auth_disabled=True,
                                   aggregates_enabled=enabled)).test_client()


def test_the_grammar():
    items = parse_select("customer_id,total.sum(),n:count(),t:total::int.max()::text")
    assert items[1] == SelectItem(items[1].column, None, None, "sum")
    assert (items[2].column, items[2].alias, items[2].aggregate) == (None, "n", "count")
    assert (items[3].cast, items[3].aggregate, items[3].result_cast) == ("int", "max", "text")
    assert [i.output_name for i in items] == ["customer_id", "sum", "n", "t"]


@pytest.mark.parametrize("query,rows", [
    ("select=customer_id,total.sum(),count()&order=customer_id.nullsfirst",
     [{"customer_id": None, "sum": None, "count": 1},
      {"customer_id": 1, "sum": 30.5, "count": 2},
      {"customer_id": 2, "sum": 12.25, "count": 2},
      {"customer_id": 3, "sum": 100.0, "count": 1}]),
    ("select=total.avg(),total.max(),total.min(),total.count()",
     [{"avg": 28.55, "max": 100.0, "min": 5.0, "count": 5}]),
    ("select=count()", [{"count": 6}]),
    ("select=status,n:count()&order=status", [{"status": "open", "n": 3},
                                               {"status": "paid", "n": 3}]),
    ("select=customer_id,total.sum()::int&status=eq.paid&order=customer_id",
     [{"customer_id": 1, "sum": 30}, {"customer_id": 2, "sum": 7}]),
    ("select=total::int.sum()", [{"sum": 142}]),
    ("select=count()::text", [{"count": "6"}]),
    ("select=status,customer_id,count()&status=eq.paid&order=customer_id",
     [{"status": "paid", "customer_id": 1, "count": 2},
      {"status": "paid", "customer_id": 2, "count": 1}]),
])
def test_aggregates_group_by_the_other_columns(db, query, rows):
    r = client(db).get("/orders?" + query)
    assert r.status_code == 200, r.data
    assert r.get_json() == rows


def test_off_by_default_and_never_in_a_write(db):
    r = client(db, enabled=False).get("/orders?select=total.sum()")
    assert r.status_code == 400 and r.get_json()["code"] == "PGRST123"
    r = client(db).post("/orders?select=total.sum()", json={"total": 1},
                        headers={"Prefer": "return=representation"})
    assert r.status_code == 400 and r.get_json()["code"] == "PGRST123"
    conn = apsw.Connection(str(db))
    assert conn.execute("SELECT count(*) FROM orders").fetchall() == [(6,)]
    conn.close()


@pytest.mark.parametrize("select,code", [
    ("id.sum", "PGRST100"), ("id.median()", "PGRST100"), ("total.sum()x", "PGRST100"),
    ("count(id)", "PGRST200"),  # as in PostgREST: an embedding of a table named count
])
def test_malformed_aggregates_are_400(db, select, code):
    r = client(db).get(f"/orders?select={select}")
    assert r.status_code == 400 and r.get_json()["code"] == code, r.data


def test_an_embedding_groups_like_a_column(tmp_path):
    # AggregateFunctionsSpec: project_id,total:invoice_total.sum(),projects(name) groups by the
    # embedded project too (was a 500: the implied GROUP BY took the embedding for a column)
    path = tmp_path / "embed.db"
    conn = apsw.Connection(str(path))
    conn.execute("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                             total REAL);
        INSERT INTO customers VALUES (1, 'Ann'), (2, 'Bob');
        INSERT INTO orders VALUES (1, 1, 10), (2, 1, 20), (3, 2, 5), (4, NULL, 1);""")
    conn.close()
    c = create_app(ServerConfig(db_dsn=str(path), allow_tables=("customers,orders",),
                                auth_disabled=True, aggregates_enabled=True)).test_client()
    r = c.get("/orders?select=customer_id,s:total.sum(),customers(name)&order=customer_id")
    assert (r.status_code, r.get_json()) == (200, [
        {"customer_id": 1, "s": 30.0, "customers": {"name": "Ann"}},
        {"customer_id": 2, "s": 5.0, "customers": {"name": "Bob"}},
        {"customer_id": None, "s": 1.0, "customers": None}])
    r = c.get("/orders?select=customers(name),count()&customer_id=not.is.null")
    assert sorted(r.get_json(), key=lambda row: row["count"]) == [
        {"customers": {"name": "Bob"}, "count": 1}, {"customers": {"name": "Ann"}, "count": 2}]
    # a spread's columns are its own select's: refused beside an aggregate, not a 500
    r = c.get("/orders?select=...customers(name),count()")
    assert (r.status_code, r.get_json()["code"]) == (400, "PGRST100")
