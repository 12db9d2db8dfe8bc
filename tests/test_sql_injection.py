"""No SQL can be smuggled through any position of the query string or body.

Every identifier position x every attack string: the request either fails with a
client error (QueryError / UnknownColumnError / BodyColumnError / ConflictTargetError)
or runs as plain data; the database is unchanged and the `secret` table, which is
not exposed, never leaks (the Go server's issue #17: `select=(select … from other)`).
"""
from urllib.parse import quote

import apsw
import pytest

from sqlite_rest.api.query import RequestError, parse_read_query
from sqlite_rest.errors import ApiError
from sqlite_rest.api.schema import SchemaCache
from sqlite_rest.api.sql import (build_count, build_delete, build_insert, build_select, build_update,
                             register_functions)

SECRET = "TOP-SECRET-VALUE"

ATTACKS = [
    "id;drop table secret",
    "id; DROP TABLE items; --",
    "(select value from secret)",
    "id,(select value from secret)",
    "(select value from secret) as x",
    "name)--",
    "name) OR 1=1--",
    'id"--',
    'id" FROM secret --',
    '"id" FROM secret --',
    '"id"" FROM secret --"',
    "id' OR '1'='1",
    "id\x00",
    "id\x00; drop table items",
    "ïd",
    "id\u202e",
    "id/**/",
    "id--",
    "*,(select 1)",
    "sqlite_schema",
    "secret.value",
    "id OR 1=1",
    "count(*)",
    "randomblob(1000000000)",
    "load_extension('x')",
    "abs(-1)",
    "value",               # a column of the hidden table, not of items
    "rowid",
    "id COLLATE nocase",
    "id::text)--",
    "x" * 5000,
]

DUMP = "SELECT 'items', id, name, data FROM items UNION ALL SELECT 'secret', id, value, NULL FROM secret"

#: A refused request: a parse or schema error, or (a name followed by "(…)" reads as a
#: resource embedding) PGRST200, no relationship: nothing reaches SQLite either way.
REFUSED = (RequestError, ApiError)


@pytest.fixture
def db():
    conn = apsw.Connection(":memory:")
    register_functions(conn)
    conn.execute("""
        CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, data JSON);
        CREATE TABLE secret(id INTEGER PRIMARY KEY, value TEXT);
        INSERT INTO items VALUES (1, 'one', '{"a":1}'), (2, 'two', '{"a":2}');
    """)
    conn.execute("INSERT INTO secret VALUES (1, ?)", (SECRET,))
    return conn


@pytest.fixture
def items(db):
    return SchemaCache().get(db).table("items")


def _read_positions(attack: str):
    """(position name, query args) for every place an identifier appears in a read."""
    return [
        ("filter column", [(attack, "eq.1")]),
        ("filter column json", [(f"{attack}->a", "eq.1")]),
        ("logic column", [("or", f"({attack}.eq.1)")]),
        ("nested logic column", [("and", f"(id.gt.0,or({attack}.eq.1,id.eq.2))")]),
        ("logic quoted column", [("or", '("' + attack.replace('"', '\\"') + '".eq.1)')]),
        ("select", [("select", attack)]),
        ("select quoted", [("select", '"' + attack.replace('"', '\\"') + '"')]),
        ("select cast", [("select", f"id::{attack}")]),
        ("select json base", [("select", f"{attack}->>a")]),
        ("order", [("order", attack)]),
        ("order direction", [("order", f"id.{attack}")]),
        ("order json base", [("order", f"{attack}->>a")]),
        ("operator", [("id", f"{attack}.1")]),
        ("negated operator", [("id", f"not.{attack}.1")]),
        ("quantifier", [("name", f"like({attack}).{{a}}")]),
        ("limit", [("limit", attack)]),
        ("offset", [("offset", attack)]),
    ]


# Positions where the attack is *data* (a bound value or a quoted output name):
# the query runs, returns no secret and changes nothing.
def _data_positions(attack: str):
    return [
        ("filter value", [("name", f"eq.{attack}")]),
        ("in value", [("name", "in.(" + '"' + attack.replace("\\", "\\\\").replace('"', '\\"')
                       + '")')]),
        ("like value", [("name", f"like.{attack}")]),
        ("ilike value", [("name", f"ilike.{attack}")]),
        ("json key", [("data->" + '"' + attack.replace("\\", "\\\\").replace('"', '\\"') + '"',
                       "eq.1")]),
        ("json key select", [("select", "x:data->>" + '"' + attack.replace("\\", "\\\\")
                              .replace('"', '\\"') + '"')]),
        ("alias", [("select", '"' + attack.replace("\\", "\\\\").replace('"', '\\"')
                    + '":id')]),
    ]


def _dump(db):
    return db.execute(DUMP).fetchall()


def _assert_no_secret(rows):
    assert SECRET not in repr(rows)


CASES = [(pos, attack, args) for attack in ATTACKS for pos, args in _read_positions(attack)]


@pytest.mark.parametrize("position,attack,args", CASES,
                         ids=[f"{p}:{quote(a[:30])}" for p, a, _ in CASES])
def test_identifier_positions_reject(db, items, position, attack, args):
    before = _dump(db)
    with pytest.raises(REFUSED):
        query = parse_read_query(args)
        statement = build_select(items, query)
        # if it were to build, it must not be able to run anything else
        _assert_no_secret(db.execute(statement.sql, statement.params).fetchall())
    assert _dump(db) == before


DATA_CASES = [(pos, attack, args) for attack in ATTACKS for pos, args in _data_positions(attack)
              if not (pos in ("alias", "json key", "json key select") and "\x00" in attack)]


@pytest.mark.parametrize("position,attack,args", DATA_CASES,
                         ids=[f"{p}:{quote(a[:30])}" for p, a, _ in DATA_CASES])
def test_value_positions_are_data(db, items, position, attack, args):
    before = _dump(db)
    query = parse_read_query(args)
    for statement in (build_select(items, query), build_count(items, query)):
        rows = db.execute(statement.sql, statement.params).fetchall()
        _assert_no_secret(rows)
        assert statement.sql.count(";") == 0 or position == "alias"
    if position == "alias":
        statement = build_select(items, query)
        assert [c.name for c in statement.columns] == [attack]
        assert [row for row in db.execute(statement.sql, statement.params)] == [(1,), (2,)]
    assert _dump(db) == before


@pytest.mark.parametrize("args", [[("select", '"a\x00b":id')], [("select", "data->'a\x00'")],
                                  [("select", 'data->>"a\x00"')], [("data->a\x00", "eq.1")]])
def test_nul_in_names_is_rejected(items, args):
    with pytest.raises(RequestError):
        parse_read_query(args)


@pytest.mark.parametrize("attack", ATTACKS, ids=[quote(a[:30]) for a in ATTACKS])
def test_write_positions(db, items, attack):
    before = _dump(db)
    attempts = [
        lambda: build_insert(items, [{attack: 1}]),
        lambda: build_insert(items, [{"id": 9}], columns=(attack,)),
        lambda: build_insert(items, [{"id": 9}], on_conflict=(attack,), resolution="merge"),
        lambda: build_insert(items, [{"id": 9}], on_conflict=(attack,), resolution="ignore"),
        lambda: build_insert(items, [{"id": 9}], missing_default=True,
                             returning=parse_read_query([("select", attack)]).select),
        lambda: build_update(items, {attack: 1}, parse_read_query([]).filters),
        lambda: build_update(items, {"name": "x"}, parse_read_query([(attack, "eq.1")]).filters),
        lambda: build_delete(items, parse_read_query([(attack, "eq.1")]).filters),
        lambda: build_delete(items, parse_read_query([("id", "eq.1")]).filters,
                             returning=parse_read_query([("order", attack)]).order),
    ]
    for attempt in attempts:
        with pytest.raises(REFUSED):
            attempt()
    assert _dump(db) == before


@pytest.mark.parametrize("attack", ATTACKS, ids=[quote(a[:30]) for a in ATTACKS])
def test_write_values_are_data(db, items, attack):
    with db:
        for statement in build_insert(items, [{"id": 9, "name": attack, "data": {attack: attack}}],
                                      resolution="merge"):
            db.cursor().executemany(statement.sql, statement.params_seq)
        statement = build_update(items, {"name": attack},
                                 parse_read_query([("name", f"eq.{attack}")]).filters)
        db.execute(statement.sql, statement.params)
    assert db.execute("SELECT name FROM items WHERE id = 9").fetchall() == [(attack,)]
    assert db.execute("SELECT value FROM secret").fetchall() == [(SECRET,)]
    assert db.execute("SELECT count(*) FROM items").fetchall() == [(3,)]


def test_hidden_table_is_not_in_schema(db):
    schema = SchemaCache().get(db)
    assert schema.table("secret") is not None  # exposure is the allow-list's job (S2)
    for name in ("sqlite_schema", "sqlite_master", "items;", "items --", '"items"'):
        assert schema.table(name) is None


# --------------------------------------------------------------------------
# Fuzz: any query string either is a client error or runs without an SQL error.

FUZZ_PIECES = ["id", "name", "data", "a", "0", "-1", ".", ",", ":", "::", "(", ")", "{", "}",
               '"', "\\", "->", "->>", "eq", "in", "is", "not", "null", "like", "ilike", "match",
               "imatch", "isdistinct", "any", "all", "or", "and", "desc", "asc", "nullsfirst",
               "*", "%", "_", "text", "int", "json", ";", "'", "--", " ", "select", "x", "é",
               "9223372036854775808", "1.5e3", "[", "?"]
FUZZ_KEYS = ["id", "name", "data->a", "data->>a", "data->9223372036854775807", "data->>-1", "or", "and", "not.or", "select", "order",
             "limit", "offset", "name->>x"]


def test_fuzzed_queries_never_raise_sql_errors(db, items):
    import random
    rng = random.Random(1234)
    before = _dump(db)
    outcomes = {"client error": 0, "ran": 0}
    for _ in range(4000):
        args = []
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(FUZZ_KEYS)
            value = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(0, 8)))
            if rng.random() < 0.5 and key not in ("select", "order", "limit", "offset"):
                value = rng.choice(["eq.", "in.(", "like.", "ilike.", "match.", "imatch.",
                                    "not.is.", "gt.", "like(any).{", "isdistinct."]) + value
            args.append((key, value))
        try:
            statement = build_select(items, parse_read_query(args))
        except RequestError:
            outcomes["client error"] += 1
            continue
        _assert_no_secret(db.execute(statement.sql, statement.params).fetchall())
        outcomes["ran"] += 1
    assert _dump(db) == before
    assert outcomes["ran"] > 100 and outcomes["client error"] > 100
