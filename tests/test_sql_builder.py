"""The SQL builder: query -> SQL + params, and the same queries run on a real DB."""
from urllib.parse import parse_qsl

import apsw
import pytest

from sqlite_rest.api.query import QueryError, UnknownColumnError, parse_read_query
from sqlite_rest.api.schema import SchemaCache
from sqlite_rest.api.sql import (BodyColumnError, ConflictTargetError, OutputColumn, PayloadError,
                             build_count, build_delete, build_insert, build_select, build_update,
                             ilike_to_like, like_to_glob, primary_key_values, register_functions)

SCHEMA = r"""
CREATE TABLE people(
    id INTEGER PRIMARY KEY,
    name TEXT,
    age INT,
    score REAL,
    big INTEGER,
    data JSON,
    active BOOLEAN NOT NULL DEFAULT 1,
    email TEXT UNIQUE,
    note TEXT DEFAULT 'none'
);
CREATE VIEW people_v AS
    SELECT id, age * 2 AS double_age, name || '!' AS shout, name, '7' AS seven_text FROM people;
CREATE TABLE pairs(a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE TABLE untyped(x, y);
"""

PEOPLE = [
    (1, "Alice", 30, 1.5, 9007199254740993,
     '{"tags":["a","b"],"addr":{"city":"Paris","zip":"75001"},"n":5}', 1, "alice@x"),
    (2, "bob", None, 2.5, None, '{"addr":{"city":"berlin"},"n":7}', 0, "bob@x"),
    (3, "Carol", 25, None, -9223372036854775808, None, 1, None),
    (4, "a,b", 40, 0.5, 9223372036854775807, '{"n":"5"}', 0, "ab@x"),
    (5, "100%_*[x]?", 30, 3.0, 2, '{"n":null}', 1, "odd@x"),
    (6, None, 20, 1.0, 3, None, 0, None),
]


@pytest.fixture
def db():
    conn = apsw.Connection(":memory:")
    register_functions(conn)
    conn.execute(SCHEMA)
    with conn:
        conn.executemany("INSERT INTO people(id, name, age, score, big, data, active, email) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", PEOPLE)
        conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [(1, "x", "one-x"), (1, "y", "one-y"),
                                                                (2, "x", "two-x")])
        conn.executemany("INSERT INTO untyped VALUES (?, ?)", [(1, "a"), ("1", "b"), ("x", "c")])
    return conn


@pytest.fixture
def schema(db):
    return SchemaCache().get(db)


def query(qs: str):
    return parse_read_query(parse_qsl(qs, keep_blank_values=True))


def run(db, statement):
    return db.execute(statement.sql, statement.params).fetchall()


# --------------------------------------------------------------------------
# SQL text and parameters

SQL_CASES = [
    ("id=eq.5", 'SELECT "id", "name" FROM "people" WHERE "id" = ?', (5,)),
    ("id=not.eq.5", 'SELECT "id", "name" FROM "people" WHERE NOT ("id" = ?)', (5,)),
    ("id=in.(1,2)", 'SELECT "id", "name" FROM "people" WHERE "id" IN (?, ?)', (1, 2)),
    ("id=in.()", 'SELECT "id", "name" FROM "people" WHERE "id" IN ()', ()),
    ("name=is.null", 'SELECT "id", "name" FROM "people" WHERE "name" IS NULL', ()),
    ("name=like.A*", 'SELECT "id", "name" FROM "people" WHERE "name" GLOB ?', ("A*",)),
    ("name=ilike.a*", "SELECT \"id\", \"name\" FROM \"people\" WHERE \"name\" LIKE ? ESCAPE '\\'",
     ("a%",)),
    ("name=match.^A", 'SELECT "id", "name" FROM "people" WHERE "name" REGEXP ?', ("^A",)),
    ("name=isdistinct.x", 'SELECT "id", "name" FROM "people" WHERE "name" IS NOT ?', ("x",)),
    ("age=gte.1.5", 'SELECT "id", "name" FROM "people" WHERE "age" >= ?', (1.5,)),
    ("age=lt.abc", 'SELECT "id", "name" FROM "people" WHERE "age" < ?', ("abc",)),
    ("name=eq.5", 'SELECT "id", "name" FROM "people" WHERE "name" = ?', ("5",)),
    ("or=(id.eq.1,and(age.gte.1,age.lte.2))",
     'SELECT "id", "name" FROM "people" WHERE ("id" = ? OR ("age" >= ? AND "age" <= ?))',
     (1, 1, 2)),
    ("id=gt.1&not.or=(age.is.null,name.eq.x)",
     'SELECT "id", "name" FROM "people" WHERE ("id" > ? AND NOT (("age" IS NULL OR "name" = ?)))',
     (1, "x")),
    ("order=age.desc,name", 'SELECT "id", "name" FROM "people" '
     'ORDER BY "age" DESC NULLS FIRST, "name" ASC NULLS LAST', ()),
    ("order=id.desc", 'SELECT "id", "name" FROM "people" ORDER BY "id" DESC', ()),  # never NULL
    ("order=active", 'SELECT "id", "name" FROM "people" ORDER BY "active" ASC', ()),  # NOT NULL
    # the limit is written in the SQL (a bound one makes SQLite prepare again at each run)
    ("limit=2&offset=4", 'SELECT "id", "name" FROM "people" LIMIT 2 OFFSET ?', (4,)),
    ("offset=4", 'SELECT "id", "name" FROM "people" LIMIT -1 OFFSET ?', (4,)),
    ("limit=9223372036854775807", 'SELECT "id", "name" FROM "people" LIMIT 9223372036854775807',
     ()),
    # JSON path keys are bound; a non-numeric value vs a no-affinity expression: text only
    ("data->addr->>city=eq.Paris",
     'SELECT "id", "name" FROM "people" WHERE (CASE WHEN json_valid("data") THEN "data" -> ? ->> ? END) = ?',
     ('$."addr"', '$."city"', "Paris")),
    # a numeric-looking one matches the number or the text
    ("data->>n=eq.5",
     'SELECT "id", "name" FROM "people" WHERE (CASE WHEN json_valid("data") THEN "data" ->> ? END) IN (?, ?)', ('$."n"', 5, "5")),
    ("name=like(any).{a*,b*}",
     'SELECT "id", "name" FROM "people" WHERE ("name" GLOB ? OR "name" GLOB ?)', ("a*", "b*")),
]


@pytest.mark.parametrize("qs,sql,params", SQL_CASES, ids=[c[0] for c in SQL_CASES])
def test_sql_text(schema, db, qs, sql, params):
    statement = build_select(schema.table("people"), query("select=id,name&" + qs))
    assert statement.sql == sql
    assert statement.params == params
    sql_, params_ = statement  # unpacks as a pair
    assert (sql_, params_) == (sql, params)
    run(db, statement)  # and SQLite accepts it


def test_select_items_sql(schema):
    statement = build_select(schema.table("people"),
                             query("select=ident:id,name::text,data->addr,zip:data->addr->>zip,"
                                   "flag:active::boolean,raw:data::json"))
    zip_json = '(CASE WHEN json_valid("data") THEN "data" -> ? -> ? END)'
    assert statement.sql == (
        'SELECT "id" AS "ident", CAST("name" AS TEXT) AS "name", (CASE WHEN json_valid("data") THEN "data" -> ? END) AS "addr", '
        # ->> selected is text for every JSON value, as PostgreSQL's ("5", "true")
        f"(CASE json_type({zip_json}) WHEN 'text' THEN {zip_json} ->> '$' WHEN 'null' THEN NULL "
        f'ELSE {zip_json} END) AS "zip", '
        'CAST("active" AS INTEGER) AS "flag", "data" AS "raw" '
        'FROM "people"')
    assert statement.params == ('$."addr"',) + ('$."addr"', '$."zip"') * 3
    assert statement.columns == (OutputColumn("ident"), OutputColumn("name"),
                                 OutputColumn("addr", "json"), OutputColumn("zip"),
                                 OutputColumn("flag", "boolean"), OutputColumn("raw", "json"))


def test_star_expands_to_schema_columns(schema):
    statement = build_select(schema.table("people"), query(""))
    assert statement.sql == ('SELECT "id", "name", "age", "score", "big", "data", "active", '
                             '"email", "note" FROM "people"')
    assert [c.name for c in statement.columns][:3] == ["id", "name", "age"]


# --------------------------------------------------------------------------
# Results from a real database

RESULT_CASES = [
    # comparisons and type coercion
    ("people", "id=eq.1", [1]),
    ("people", "id=eq.01", [1]),
    ("people", "id=eq.1.0", [1]),
    ("people", "id=neq.1", [2, 3, 4, 5, 6]),
    ("people", "age=gt.25", [1, 4, 5]),
    ("people", "age=ge.30", [1, 4, 5]),
    ("people", "age=le.25", [3, 6]),
    ("people", "score=eq.1", [6]),
    ("people", "score=lt.1.5", [4, 6]),
    ("people", "big=eq.9007199254740993", [1]),        # 2^53+1: exact, never via float
    ("people", "big=neq.9007199254740992", [1, 3, 4, 5, 6]),
    ("people", "big=eq.9223372036854775807", [4]),
    ("people", "big=eq.-9223372036854775808", [3]),
    ("people", "big=gt.9223372036854775807", []),
    ("people", "big=in.(9007199254740993,2)", [1, 5]),
    ("people", "active=eq.true", [1, 3, 5]),
    ("people", "active=is.false", [2, 4, 6]),
    ("people", "active=is.true", [1, 3, 5]),
    ("people", "name=eq.5", []),
    # NULL tests
    ("people", "age=is.null", [2]),
    ("people", "age=not.is.null", [1, 3, 4, 5, 6]),
    ("people", "age=is.not_null", [1, 3, 4, 5, 6]),
    ("people", "age=is.unknown", [2]),
    ("people", "name=isdistinct.bob", [1, 3, 4, 5, 6]),
    ("people", "age=isdistinct.30", [2, 3, 4, 6]),
    ("people", "age=not.eq.30", [3, 4, 6]),  # NULL is neither equal nor not equal
    # like: case-sensitive; ilike: case-insensitive; wildcards and literal metacharacters
    ("people", "name=like.a*", [4]),
    ("people", "name=like.A*", [1]),
    ("people", "name=like.%o%", [2, 3]),
    ("people", "name=like.?", []),
    ("people", "name=like.*[x]*", [5]),          # [ is literal, not a GLOB class
    ("people", "name=like.*?", [5]),             # ? is literal
    ("people", "name=like.100\\%*", [5]),        # \% is a literal %
    ("people", "name=like.___", [2, 4]),         # _ is one character
    ("people", "name=ilike.a*", [1, 4]),
    ("people", "name=ilike.*O*", [2, 3]),
    ("people", "name=ilike.100\\%\\_*", [5]),
    ("people", "name=not.ilike.a*", [2, 3, 5]),
    ("people", "name=like(any).{A*,b*}", [1, 2]),
    ("people", "name=ilike(all).{*a*,*l*}", [1, 3]),
    ("people", "name=ilike(any).{}", []),
    ("people", "age=gt(any).{35,39}", [4]),
    ("people", "age=eq(any).{20,25}", [3, 6]),
    # regular expressions
    ("people", "name=match.^[A-Z]", [1, 3]),
    ("people", "name=imatch.^[a-c]", [1, 2, 3, 4]),
    ("people", "name=not.match.o", [1, 4, 5]),
    ("people", "age=match.^3", [1, 5]),            # numbers are matched as their text
    ("people", "data=imatch.PARIS", [1]),
    # in with PostgREST quoting
    ("people", 'name=in.(bob,"a,b")', [2, 4]),
    ("people", 'name=in.("100%_*[x]?",Carol)', [3, 5]),
    ("people", "name=not.in.(bob)", [1, 3, 4, 5]),
    ("people", "id=in.()", []),
    ("people", "id=not.in.()", [1, 2, 3, 4, 5, 6]),
    # logic
    ("people", "or=(id.eq.1,id.eq.2)", [1, 2]),
    ("people", "or=(age.lt.21,and(age.gte.30,name.like.A*))", [1, 6]),
    ("people", "not.or=(age.is.null,age.lt.30)", [1, 4, 5]),
    ("people", "not.and=(age.gte.30,active.is.true)", [2, 3, 4, 6]),
    ("people", "id=gt.2&or=(age.eq.30,age.eq.40)", [4, 5]),
    ("people", 'or=(name.eq."a,b",name.eq."100%_*[x]?")', [4, 5]),
    ("people", "or=(id.in.(1,2),not.and(age.gt.0,age.lt.100))", [1, 2]),
    # JSON paths
    ("people", "data->addr->>city=eq.Paris", [1]),
    ("people", "data->>n=eq.5", [1, 4]),           # JSON 5 and JSON "5"
    # SQLite orders numbers before text: the JSON string "5" is > 6
    ("people", "data->>n=gt.6", [2, 4]),
    ("people", "data->tags->>0=eq.a", [1]),
    ("people", "data->tags->>-1=eq.b", [1]),
    ("people", "data->n=eq.7", [2]),
    ("people", 'data->n=eq."5"', [4]),
    ("people", "data->>n=is.null", [3, 5, 6]),
    ("people", "data->addr->>city=ilike.B*", [2]),
    ("people", "name->>a=eq.1", []),                # not JSON: NULL, not an SQL error
    ("people", "name->a=is.null", [1, 2, 3, 4, 5, 6]),
    # views: expression columns have no declared type
    ("people_v", "double_age=eq.60", [1, 5]),
    ("people_v", "double_age=gt.50", [1, 4, 5]),
    ("people_v", "double_age=in.(40,50)", [3, 6]),
    ("people_v", "double_age=neq.60", [3, 4, 6]),
    ("people_v", "shout=eq.bob!", [2]),
    ("people_v", "seven_text=eq.7", [1, 2, 3, 4, 5, 6]),  # text '7' matches too
    ("people_v", "name=eq.Carol", [3]),
    # untyped table columns (no affinity): stored 1 and '1' both match
    ("untyped", "x=eq.1", [1, 2]),
    ("untyped", "x=eq.x", [3]),
    ("untyped", "x=in.(1)", [1, 2]),
    ("untyped", "x=neq.1", [3]),
]


def _ids(db, table, statement):
    key = "x" if table == "untyped" else "id"
    rows = db.execute(f"SELECT {key}, rowid FROM ({statement.sql})"
                      if table == "untyped" else statement.sql, statement.params).fetchall()
    return rows


@pytest.mark.parametrize("table,qs,expected", RESULT_CASES,
                         ids=[f"{t}?{q}" for t, q, _ in RESULT_CASES])
def test_results(db, schema, table, qs, expected):
    t = schema.table(table)
    if table == "untyped":
        statement = build_select(t, query("select=y&" + qs))
        got = sorted({"a": 1, "b": 2, "c": 3}[r[0]] for r in run(db, statement))
    else:
        statement = build_select(t, query("select=id&" + qs))
        got = sorted(r[0] for r in run(db, statement))
    assert got == expected


ORDER_CASES = [
    ("order=age", [6, 3, 1, 5, 4, 2]),                    # NULLs last for ASC
    ("order=age.desc", [2, 4, 1, 5, 3, 6]),               # NULLs first for DESC
    ("order=age.nullsfirst", [2, 6, 3, 1, 5, 4]),
    ("order=age.desc.nullslast", [4, 1, 5, 3, 6, 2]),
    ("order=age.asc.nullslast,id.desc", [6, 3, 5, 1, 4, 2]),
    ("order=name", [5, 1, 3, 4, 2, 6]),                  # binary collation
    ("order=data->>n.desc,id", [3, 5, 6, 4, 2, 1]),      # text > numbers
    ("order=age.desc&limit=2", [2, 4]),
    ("order=id&limit=2&offset=3", [4, 5]),
    ("order=id&offset=5", [6]),
    ("order=id&limit=0", []),
]


@pytest.mark.parametrize("qs,expected", ORDER_CASES, ids=[q for q, _ in ORDER_CASES])
def test_order_and_pagination(db, schema, qs, expected):
    statement = build_select(schema.table("people"), query("select=id&" + qs))
    assert [r[0] for r in run(db, statement)] == expected


def test_limit_offset_override(db, schema):
    statement = build_select(schema.table("people"), query("select=id&order=id&limit=1"),
                             limit=2, offset=1)
    assert [r[0] for r in run(db, statement)] == [2, 3]


def test_select_values(db, schema):
    statement = build_select(schema.table("people"), query(
        "select=id,city:data->addr->>city,addr:data->addr,big,big_text:big::text,"
        "score::int,age_real:age::real,flag:active::boolean&id=eq.1"))
    assert run(db, statement) == [(1, "Paris", '{"city":"Paris","zip":"75001"}',
                                   9007199254740993, "9007199254740993", 1, 30.0, 1)]
    assert [c.name for c in statement.columns] == ["id", "city", "addr", "big", "big_text",
                                                   "score", "age_real", "flag"]


def test_count(db, schema):
    statement = build_count(schema.table("people"), query("age=gte.30&order=id&limit=1"))
    assert statement.sql == 'SELECT count(*) FROM "people" WHERE "age" >= ?'
    assert run(db, statement) == [(3,)]
    assert run(db, build_count(schema.table("people"), query(""))) == [(6,)]


UNKNOWN_COLUMNS = ["nope=eq.1", "select=nope", "select=id,nope::text", "order=nope",
                   "or=(id.eq.1,nope.eq.2)", "nope->a=eq.1", "select=x:nope->>a",
                   "ID=eq.1"]


@pytest.mark.parametrize("qs", UNKNOWN_COLUMNS)
def test_unknown_columns(schema, qs):
    with pytest.raises(UnknownColumnError) as info:
        build_select(schema.table("people"), query(qs))
    assert info.value.code == "42703" and info.value.status == 400
    assert "does not exist" in info.value.message


def test_invalid_regex_is_a_query_error(schema):
    with pytest.raises(QueryError, match="invalid regular expression"):
        build_select(schema.table("people"), query("name=match.(unclosed"))


def test_pattern_translation():
    assert like_to_glob("a*b%c_d") == "a*b*c?d"
    assert like_to_glob("[x]?") == "[[]x][?]"
    assert like_to_glob(r"\%\_\*\\") == "%_[*]\\"
    assert ilike_to_like("a*b%") == "a%b%"


# --------------------------------------------------------------------------
# Writes


def _all(db, sql="SELECT id, name, age, active, email, note FROM people ORDER BY id"):
    return db.execute(sql).fetchall()


def _execute_batches(db, statements):
    rows = []
    with db:
        for statement in statements:
            rows.extend(db.cursor().executemany(statement.sql, statement.params_seq))
    return rows


def test_insert_one_returning(db, schema):
    people = schema.table("people")
    statements = build_insert(people, [{"id": 10, "name": "Zed", "data": {"k": [1, 2]},
                                        "active": False}],
                              returning=query("select=id,name,data->k").select)
    assert len(statements) == 1
    assert statements[0].sql == ('INSERT INTO "people" ("id", "name", "data", "active") '
                                 'VALUES (?, ?, ?, ?) RETURNING "id", "name", (CASE WHEN json_valid("data") THEN "data" -> ? END) AS "k"')
    rows = _execute_batches(db, statements)
    assert rows == [(10, "Zed", "[1,2]")]
    assert db.execute("SELECT note, active, data FROM people WHERE id = 10").fetchall() == [
        ("none", 0, '{"k":[1,2]}')]


def test_insert_bulk_keeps_64bit_integers(db, schema):
    statements = build_insert(schema.table("people"), [
        {"id": 20, "big": 9007199254740993}, {"id": 21, "big": -9223372036854775808}])
    assert len(statements) == 1 and len(statements[0].params_seq) == 2
    _execute_batches(db, statements)
    assert db.execute("SELECT big FROM people WHERE id >= 20 ORDER BY id").fetchall() == [
        (9007199254740993,), (-9223372036854775808,)]


def test_insert_rejects_mixed_keys_and_bad_values(db, schema):
    people = schema.table("people")
    with pytest.raises(PayloadError, match="All object keys must match"):
        build_insert(people, [{"id": 1}, {"name": "x"}])
    with pytest.raises(PayloadError, match="out of range"):
        build_insert(people, [{"big": 1 << 63}])
    with pytest.raises(PayloadError):
        build_insert(people, ["not an object"])
    with pytest.raises(BodyColumnError) as info:
        build_insert(people, [{"id": 1, "nope": 2}])
    assert info.value.code == "PGRST204"
    with pytest.raises(BodyColumnError):
        build_insert(people, [{"id": 1}], columns=("id", "nope"))


def test_insert_columns_param(db, schema):
    statements = build_insert(schema.table("people"),
                              [{"id": 30, "name": "a", "ignored": 1}, {"id": 31}],
                              columns=("id", "name", "note"))
    assert len(statements) == 1
    _execute_batches(db, statements)
    # without missing=default absent keys are NULL, even where a DEFAULT exists
    assert _all(db, "SELECT id, name, note FROM people WHERE id >= 30 ORDER BY id") == [
        (30, "a", None), (31, None, None)]


def test_insert_missing_default(db, schema):
    rows = [{"id": 40, "name": "a"}, {"id": 41, "name": "b"}, {"id": 42, "note": "mine"},
            {"id": 43, "name": "c"}, {}]
    statements = build_insert(schema.table("people"), rows, missing_default=True,
                              returning=query("select=id").select)
    # consecutive rows with the same keys share a statement; input order is kept
    assert [len(s.params_seq) for s in statements] == [2, 1, 1, 1]
    returned = _execute_batches(db, statements)
    assert [r[0] for r in returned][:4] == [40, 41, 42, 43]
    assert _all(db, "SELECT id, name, note, active FROM people WHERE id >= 40 ORDER BY id") == [
        (40, "a", "none", 1), (41, "b", "none", 1), (42, None, "mine", 1), (43, "c", "none", 1),
        (44, None, "none", 1)]


def test_insert_missing_default_with_columns(db, schema):
    statements = build_insert(schema.table("people"), [{"id": 50, "name": "a"}, {"id": 51}],
                              columns=("id", "name", "note"), missing_default=True)
    _execute_batches(db, statements)
    assert _all(db, "SELECT id, name, note FROM people WHERE id >= 50 ORDER BY id") == [
        (50, "a", "none"), (51, None, "none")]


def test_upsert_merge(db, schema):
    statements = build_insert(schema.table("people"),
                              [{"id": 1, "name": "Alice2", "age": 31},
                               {"id": 60, "name": "New", "age": 1}],
                              resolution="merge", returning=query("select=id,name").select)
    assert statements[0].sql.endswith(
        'ON CONFLICT("id") DO UPDATE SET "name" = excluded."name", "age" = excluded."age" '
        'RETURNING "id", "name"')
    assert _execute_batches(db, statements) == [(1, "Alice2"), (60, "New")]
    assert db.execute("SELECT name, age, email FROM people WHERE id = 1").fetchall() == [
        ("Alice2", 31, "alice@x")]  # untouched columns keep their values


def test_upsert_ignore(db, schema):
    statements = build_insert(schema.table("people"),
                              [{"id": 1, "name": "nope"}, {"id": 61, "name": "New"}],
                              resolution="ignore", returning=query("select=id").select)
    assert _execute_batches(db, statements) == [(61,)]
    assert db.execute("SELECT name FROM people WHERE id = 1").fetchall() == [("Alice",)]


def test_upsert_on_unique_column_and_composite_key(db, schema):
    statements = build_insert(schema.table("people"), [{"email": "bob@x", "name": "Robert"}],
                              on_conflict=("email",), resolution="merge")
    _execute_batches(db, statements)
    assert db.execute("SELECT id, name FROM people WHERE email = 'bob@x'").fetchall() == [
        (2, "Robert")]
    statements = build_insert(schema.table("pairs"), [{"a": 1, "b": "x", "v": "new"},
                                                      {"a": 3, "b": "z", "v": "three"}],
                              resolution="merge")
    assert 'ON CONFLICT("a", "b")' in statements[0].sql
    _execute_batches(db, statements)
    assert db.execute("SELECT * FROM pairs ORDER BY a, b").fetchall() == [
        (1, "x", "new"), (1, "y", "one-y"), (2, "x", "two-x"), (3, "z", "three")]


def test_upsert_errors(schema):
    with pytest.raises(ConflictTargetError) as info:
        build_insert(schema.table("people"), [{"id": 1}], on_conflict=("name",),
                     resolution="merge")
    assert info.value.code == "42P10"
    with pytest.raises(ConflictTargetError):
        build_insert(schema.table("untyped"), [{"x": 1}], resolution="merge")
    with pytest.raises(UnknownColumnError):
        build_insert(schema.table("people"), [{"id": 1}], on_conflict=("nope",),
                     resolution="merge")


def test_update(db, schema):
    statement = build_update(schema.table("people"), {"age": 99, "note": None},
                             query("age=gte.30&name=not.is.null").filters,
                             returning=query("select=id,age").select)
    assert statement.sql == ('UPDATE "people" SET "age" = ?, "note" = ? '
                             'WHERE ("age" >= ? AND NOT ("name" IS NULL)) RETURNING "id", "age"')
    with db:
        rows = run(db, statement)
    assert sorted(rows) == [(1, 99), (4, 99), (5, 99)]
    assert db.execute("SELECT count(*) FROM people WHERE note IS NULL").fetchall() == [(3,)]


def test_update_json_path_filter_param_order(db, schema):
    statement = build_update(schema.table("people"), {"name": "P"},
                             query("data->addr->>city=eq.Paris").filters,
                             returning=query("select=z:data->addr->>zip").select)
    assert statement.params == ("P", '$."addr"', '$."city"', "Paris") + ('$."addr"', '$."zip"') * 3
    with db:
        assert run(db, statement) == [("75001",)]


def test_update_errors(schema):
    with pytest.raises(PayloadError):
        build_update(schema.table("people"), {}, query("").filters)
    with pytest.raises(BodyColumnError):
        build_update(schema.table("people"), {"nope": 1}, query("").filters)
    with pytest.raises(UnknownColumnError):
        build_update(schema.table("people"), {"age": 1}, query("nope=eq.1").filters)


def test_delete(db, schema):
    statement = build_delete(schema.table("people"), query("id=in.(1,2,99)").filters,
                             returning=query("select=id").select)
    assert statement.sql == 'DELETE FROM "people" WHERE "id" IN (?, ?, ?) RETURNING "id"'
    with db:
        assert sorted(run(db, statement)) == [(1,), (2,)]
    assert db.execute("SELECT count(*) FROM people").fetchall() == [(4,)]
    statement = build_delete(schema.table("people"), query("").filters)
    assert statement.sql == 'DELETE FROM "people"'


def test_primary_key_values(schema):
    people, pairs = schema.table("people"), schema.table("pairs")
    assert primary_key_values(people, query("id=eq.5").filters) == {"id": 5}
    assert primary_key_values(pairs, query("a=eq.1&b=eq.x").filters) == {"a": 1, "b": "x"}
    for qs in ("", "id=gt.5", "id=eq.5&name=eq.x", "id=not.eq.5", "id=eq.1&id=eq.2"):
        assert primary_key_values(people, query(qs).filters) is None
    assert primary_key_values(pairs, query("a=eq.1").filters) is None


def test_catastrophic_regex_is_stopped(db, schema):
    with db:
        db.execute("INSERT INTO people(id, name) VALUES (100, ?)", ("a" * 40 + "b",))
    statement = build_select(schema.table("people"), query("select=id&name=match.(a|aa)%2B$"))
    with pytest.raises(QueryError, match="too slow"):
        run(db, statement)


@pytest.mark.parametrize("qs", [
    "or=(" + ",".join(f"id.eq.{i}" for i in range(3000)) + ")",
    "&".join(f"id=neq.{i}" for i in range(3000)),
    "name=like(any).{" + ",".join(f"x{i}*" for i in range(3000)) + "}",
])
def test_wide_logic_stays_within_sqlite_expression_depth(db, schema, qs):
    statement = build_select(schema.table("people"), query("select=id&" + qs))
    run(db, statement)  # a flat chain of 3000 would exceed SQLite's depth limit of 1000


def test_too_many_values_is_a_query_error(schema):
    with pytest.raises(QueryError, match="too many values"):
        build_select(schema.table("people"),
                     query("id=in.(" + ",".join(str(i) for i in range(40000)) + ")"))


def test_pattern_length_limit(db, schema):
    run(db, build_select(schema.table("people"), query("select=id&name=like." + "a" * 49000)))
    with pytest.raises(QueryError, match="pattern too long"):
        build_select(schema.table("people"), query("select=id&name=ilike." + "a" * 50001))
