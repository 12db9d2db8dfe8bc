"""Numbers beyond what SQLite's 64-bit INTEGER holds, anywhere in a request (Range header,
limit, offset, Prefer, filter values, JSON paths, bodies, Content-Length), get a 4xx in
PostgREST's four-key JSON shape, or, for filter values, an ordinary non-matching comparison;
never a 500 (issue 10: `Range: 0-99999999999999999999` answered 500 XX000).

Two roots: apsw refuses to bind a Python int past 64 bits (OverflowError), and Python's int()
refuses a text past 4300 digits (ValueError). Every request integer now goes through
query.int64()."""
from __future__ import annotations

import random

import apsw
import orjson
import pytest

from sqlite_rest.api.query import INT64_MAX, INT64_MIN, int64, is_decimal
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data TEXT);
CREATE TABLE strict_items (id INTEGER PRIMARY KEY, n INTEGER, r REAL, t TEXT) STRICT;
INSERT INTO items VALUES (1, 'apple', 3, 1.5, '{"a": [1, 2]}'), (2, 'pear', 5, 2.5, '[7]');
INSERT INTO strict_items VALUES (1, 1, 1.0, 'x'), (2, 2, 2.0, 'y');
"""
TABLES = ("items", "strict_items")
JSON = {"Content-Type": "application/json"}

#: Out of range, at the edges, and past Python's int() digit limit.
HUGE = [
    str(INT64_MAX + 1),                  # 9223372036854775808
    "99999999999999999999",              # the example
    str(2 ** 64),                        # past what orjson keeps as an int
    str(2 ** 70),
    "1" * 400,
    "7" * 5000,                          # int("7" * 5000) raises ValueError
    "0" * 5000 + "1",                    # 1, spelled with 5001 digits
]
NEGATIVE_HUGE = [str(INT64_MIN - 1), "-" + "9" * 30, "-" + "9" * 4301]
FLOATS = ["1e400", "-1e400", "1e" + "9" * 30, "0." + "1" * 5000]


@pytest.fixture
def client(tmp_path):
    path = tmp_path / "numbers.db"
    conn = apsw.Connection(str(path))
    conn.execute(SCHEMA)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(path), allow_tables=TABLES, auth_disabled=True))
    return app.test_client()


def short(value) -> str:
    """A readable test id for a number of any length."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}…{len(text)}chars"


def error(response, status, code):
    assert response.status_code == status, response.data[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(response.data)
    assert set(body) == {"code", "message", "details", "hint"}
    assert body["code"] == code, body
    return body


def rows(response):
    assert response.status_code == 200, response.data[:300]
    return orjson.loads(response.data)


# -- the one parser of request integers ---------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("0", 0), ("42", 42), ("-42", -42), ("+7", 7), ("007", 7), ("0" * 5000 + "1", 1),
    (str(INT64_MAX), INT64_MAX), (str(INT64_MIN), INT64_MIN),
    (str(INT64_MAX + 1), None), (str(INT64_MIN - 1), None), ("9" * 5000, None),
    ("", None), ("-", None), ("1.5", None), ("1e3", None), ("1_000", None), (" 1", None),
    ("1\n", None), ("١٢", None), ("²", None),
], ids=lambda v: short(v) if isinstance(v, str) else "")
def test_int64(text, value):
    assert int64(text) == value


def test_is_decimal_tells_too_big_from_not_a_number():
    assert is_decimal("9" * 5000) and int64("9" * 5000) is None
    assert not is_decimal("12a") and not is_decimal("١٢")


# -- Range header -------------------------------------------------------------------------

@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("header", [
    "0-99999999999999999999",               # the request
    "99999999999999999999-",
    f"0-{INT64_MAX + 1}",
    f"{INT64_MAX + 1}-{INT64_MAX + 2}",
    "items=" + "9" * 5000 + "-",
    "0-" + "1" * 5000,
], ids=short)
def test_range_beyond_64_bits_is_416(client, table, header):
    for prefer in ({}, {"Prefer": "count=exact"}):
        body = error(client.get(f"/{table}", headers={"Range": header, **prefer}), 416, "PGRST103")
        assert str(INT64_MAX) in body["details"]
    assert client.head(f"/{table}", headers={"Range": header}).status_code == 416


def test_range_to_the_largest_index_is_every_row(client):
    # 0-9223372036854775807 is 2**63 rows: one more than SQLite's LIMIT can say.
    r = client.get("/items", headers={"Range": f"0-{INT64_MAX}"})
    assert [row["id"] for row in rows(r)] == [1, 2]
    assert r.headers["Content-Range"] == "0-1/*"
    r = client.get("/items", headers={"Range": f"0-{INT64_MAX}", "Prefer": "count=exact"})
    assert r.status_code == 200 and r.headers["Content-Range"] == "0-1/2"
    r = client.get("/items?select=id", headers={"Range": f"1-{INT64_MAX}"})
    assert rows(r) == [{"id": 2}]
    r = client.get(f"/items?select=id&limit={INT64_MAX}", headers={"Range": "1-"})
    assert rows(r) == [{"id": 2}]
    assert rows(client.get("/items", headers={"Range": f"{INT64_MAX}-"})) == []
    error(client.get("/items", headers={"Range": f"{INT64_MAX}-", "Prefer": "count=exact"}),
          416, "PGRST103")


# -- limit, offset ----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["limit", "offset"])
@pytest.mark.parametrize("value", HUGE[:-1], ids=short)
def test_limit_and_offset_beyond_64_bits_are_400(client, key, value):
    body = error(client.get(f"/items?{key}={value}"), 400, "PGRST100")
    assert str(INT64_MAX) in body["details"]


def test_negative_limit_and_offset_of_any_size_are_postgrests(client):
    """A negative limit is an unsatisfiable range, a negative offset none at all."""
    for value in ("-1", "-" + "9" * 30):
        error(client.get(f"/items?limit={value}"), 416, "PGRST103")
        assert len(rows(client.get(f"/items?offset={value}"))) == 2


def test_limit_and_offset_spelled_with_many_zeros_are_their_value(client):
    zeros = "0" * 5000
    assert rows(client.get(f"/items?select=id&limit={zeros}1&offset={zeros}1")) == [{"id": 2}]
    assert len(rows(client.get(f"/items?limit={INT64_MAX}&offset=0"))) == 2


# -- filter values: just a comparison that matches nothing (as SQLite would) ---------------

@pytest.mark.parametrize("value", HUGE[:-1] + NEGATIVE_HUGE, ids=short)
@pytest.mark.parametrize("table,column", [("items", "id"), ("items", "qty"),
                                          ("strict_items", "id"), ("strict_items", "n")])
def test_huge_integer_filter_values_match_nothing(client, table, column, value):
    for query in (f"{column}=eq.{value}", f"{column}=in.({value})",
                  f"{column}=eq(any).{{{value}}}", f"or=({column}.eq.{value})",
                  f"select=id::int&{column}=eq.{value}"):
        assert rows(client.get(f"/{table}?{query}")) == [], query
    assert len(rows(client.get(f"/{table}?{column}=neq.{value}"))) == 2
    # Compared as the number it spells (SQLite's numeric affinity): above or below every row.
    expected = 2 if not value.startswith("-") else 0
    assert len(rows(client.get(f"/{table}?{column}=lt.{value}"))) == expected


@pytest.mark.parametrize("value", FLOATS, ids=short)
def test_huge_float_filter_values_are_plain_comparisons(client, value):
    for query in (f"price=eq.{value}", f"id=eq.{value}", f"qty=gt.{value}"):
        rows(client.get(f"/items?{query}"))


@pytest.mark.parametrize("value", HUGE[:-1] + NEGATIVE_HUGE, ids=short)
def test_huge_json_array_index_is_400(client, value):
    error(client.get(f"/items?select=data->{value}"), 400, "PGRST100")
    error(client.get(f"/items?data->a->>{value}=eq.1"), 400, "PGRST100")


# -- bodies ---------------------------------------------------------------------------------

@pytest.mark.parametrize("number", [
    str(INT64_MAX + 1), str(2 ** 64 - 1),
    str(2 ** 64), str(2 ** 70), str(INT64_MIN - 1), "-" + "9" * 25,  # orjson: silently floats
])
@pytest.mark.parametrize("method,url", [("post", "/items"), ("patch", "/items?id=eq.1"),
                                        ("post", "/strict_items")])
def test_body_integer_beyond_64_bits_is_400(client, method, url, number):
    column, other = ("n", "t") if "strict" in url else ("qty", "data")
    bodies = [f'{{"{column}": {number}}}',
              f'{{"{column}": 1, "{other}": {{"deep": [1.5, "{number}", {number}]}}}}']
    if method == "post":
        bodies.append(f'[{{"{column}": 1}}, {{"{column}": {number}}}]')
    for body in bodies:
        r = getattr(client, method)(url, data=body.encode(), headers=JSON)
        assert "out of range" in error(r, 400, "PGRST102")["message"], body
    assert rows(client.get("/items?select=id,qty&order=id")) == [
        {"id": 1, "qty": 3}, {"id": 2, "qty": 5}]


@pytest.mark.parametrize("body", [b'{"qty": 1e400}', b'{"price": -1e400}',
                                  b'{"price": 1e99999999999999999999}',
                                  b'{"qty": ' + b"7" * 5000 + b"}"],
                         ids=lambda b: short(b.decode()))
def test_body_number_beyond_a_double_is_400(client, body):
    error(client.post("/items", data=body, headers=JSON), 400, "PGRST102")


def test_body_edges_round_trip_exactly(client):
    body = [{"qty": INT64_MAX, "name": "9" * 30, "price": 12345678901234567890123.5},
            {"qty": INT64_MIN, "name": "-" + "9" * 30, "price": -1e300}]
    r = client.post("/items?select=qty,name,price", json=body,
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 201, r.data
    assert orjson.loads(r.data) == body
    r = client.get(f"/items?select=qty&qty=eq.{INT64_MAX}")
    assert rows(r) == [{"qty": INT64_MAX}]


@pytest.mark.parametrize("kind,body", [
    ("text/csv", f"id,name\n{'9' * 25},x\n"),
    ("text/csv", f"id,name\n{'9' * 5000},x\n"),
    ("application/x-www-form-urlencoded", f"id={'9' * 25}&name=x"),
], ids=["csv", "csv-5000-digits", "form"])
def test_csv_and_form_bodies_leave_big_numbers_to_sqlite(client, kind, body):
    # Text values: SQLite's affinity decides; an INTEGER PRIMARY KEY takes no REAL.
    error(client.post("/items", data=body.encode(), headers={"Content-Type": kind}),
          400, "22P02")


# -- Prefer, Content-Length ---------------------------------------------------------------

@pytest.mark.parametrize("value", HUGE[:-1] + ["-1", "+1", "1e3"], ids=short)
def test_prefer_max_affected_beyond_64_bits_is_an_invalid_preference(client, value):
    prefer = f"max-affected={value}, handling=strict"
    for method, url, kwargs in (("delete", "/items?id=gt.100", {}),
                                ("patch", "/items?id=gt.100", {"json": {"qty": 1}})):
        r = getattr(client, method)(url, headers={"Prefer": prefer}, **kwargs)
        body = error(r, 400, "PGRST122")
        assert value[:40] in body["details"]
    r = client.delete("/items?id=gt.100", headers={"Prefer": f"max-affected={value}"})
    assert r.status_code == 204  # lenient: ignored


def test_prefer_max_affected_at_the_edge_still_works(client):
    r = client.delete("/items?id=gt.100",
                      headers={"Prefer": f"max-affected={INT64_MAX}, handling=strict"})
    assert r.status_code == 204


@pytest.mark.parametrize("length", ["9" * 25, "9" * 5000], ids=short)
def test_huge_content_length_is_a_client_error(client, length):
    r = client.post("/items", data=b'{"name": "x"}', headers=JSON,
                    environ_overrides={"CONTENT_LENGTH": length})
    assert 400 <= r.status_code < 500, r.data
    assert set(orjson.loads(r.data)) == {"code", "message", "details", "hint"}


# -- fuzz ---------------------------------------------------------------------------------

NUMBERS = (HUGE + NEGATIVE_HUGE + FLOATS
           + [str(INT64_MAX), str(INT64_MIN), "0", "1", "-0", "00", "+1", "1.5", "1_0"])


def _fuzz_request(rng: random.Random):
    n = lambda: rng.choice(NUMBERS)  # noqa: E731
    table = rng.choice(TABLES)
    column = rng.choice(["id", "qty", "price", "n", "r", "name"])
    op = rng.choice(["eq", "neq", "gt", "lt", "gte", "lte", "is", "like"])
    params = rng.sample([
        f"{column}={op}.{n()}", f"limit={n()}", f"offset={n()}", f"{column}=in.({n()},{n()})",
        f"or=({column}.{op}.{n()},id.eq.{n()})", f"select=id,data->{n()}",
        f"select=data->>{n()}::int", "order=id.desc", f"{column}=not.{op}.{n()}",
        f"data->{n()}=eq.{n()}",
    ], rng.randint(0, 3))
    headers = {}
    if rng.random() < 0.6:
        headers["Range"] = rng.choice([f"{n()}-{n()}", f"{n()}-", f"0-{n()}", f"items={n()}-{n()}"])
    prefer = [p for p in ("count=exact", f"max-affected={n()}", "handling=strict",
                          "return=representation") if rng.random() < 0.3]
    if prefer:
        headers["Prefer"] = ", ".join(prefer)
    method = rng.choice(["get", "get", "get", "head", "post", "patch", "delete"])
    kwargs = {"headers": headers}
    if method in ("post", "patch"):
        headers.update(JSON)
        value = n().lstrip("+").replace("_", "")
        try:
            float(value)
        except ValueError:
            value = "0"
        if value.startswith("0") and len(value) > 1 and not value.startswith("0."):
            value = "0"
        kwargs["data"] = f'{{"{column}": {value}}}'.encode()
        if method == "patch" and not params:
            params = [f"id=eq.{n()}"]
    if method == "delete" and not params:
        params = [f"id=eq.{n()}"]
    return method, f"/{table}?" + "&".join(params), kwargs


def test_fuzz_numbers_never_500(client):
    rng = random.Random(1010)
    for _ in range(1500):
        method, url, kwargs = _fuzz_request(rng)
        r = getattr(client, method)(url, **kwargs)
        where = (method, url[:200], {k: v[:80] for k, v in kwargs["headers"].items()},
                 kwargs.get("data", b"")[:80])
        assert r.status_code < 500, (where, r.data[:300])
        if r.status_code >= 400 and method != "head":
            assert r.headers["Content-Type"].startswith("application/json"), where
            assert set(orjson.loads(r.data)) == {"code", "message", "details", "hint"}, where
        assert b"Traceback" not in r.data
