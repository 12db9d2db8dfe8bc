"""The functions file (``--functions-file``): named, parameterised SQL statements served as
PostgREST functions under ``/rpc/<name>`` (the calls themselves are rpc.py's).

SQLite has no stored procedures, so a "function" is declared in a YAML file::

    functions:
      books_by:
        description: Books of one author, oldest first
        params:
          author: integer                    # short form: required
          since: {type: integer, default: 0} # with a default: optional
        sql: SELECT id, title, year FROM books WHERE author_id = :author AND year >= :since
        returns: rows

`FILE_KEYS` and `PARAM_KEYS` document every key, `PARAM_TYPES` every type (the README's tables
are generated from them). The file is checked in two steps, each failure one message naming
the file, the function and the key: `parse_functions_file` reads the YAML (no database), and
`prepare_functions` prepares every statement on the database without running it
(apsw.ext.query_info): unknown tables or columns, undeclared or unused parameters, a statement
that writes in a function declared read-only, transaction control or PRAGMA statements are all
refused at start-up.

A read-only function's last statement is a SELECT that the table SQL builder (sql.py) wraps as a
common table expression, ``WITH "<alias>" AS (<the function's SELECT>) SELECT … FROM "<alias>"
WHERE … ORDER BY … LIMIT …``, so filters, select, order, limit/offset, Range and counts work on
its rows as on a table's: `FunctionResult` is a schema `Table` made from the statement's result
columns. When the rows are rows of a table (`table:`, or inferred: `table_of_rows`),
`rows_result` gives them that table's relationships, and resource embedding builds over the
CTE as over the table (design/rpc.md).
"""
from __future__ import annotations

import functools
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import apsw
import apsw.ext
import orjson

from ..errors import closest_name
from .query import INT64_MAX, INT64_MIN, int64, shown_text
from .schema import Column, Table, affinity_of, is_exposable, quote_identifier

log = logging.getLogger("sqlite_rest.functions")

#: The name the function's rows have in the SQL the builder writes around them (a CTE name;
#: chosen so that no function's own SQL names it).
RESULT_ALIAS = "__sqlite_rest_rpc_result"
#: PostgREST names functions by schema; SQLite has one, shown as PostgREST's default.
SCHEMA_NAME = "public"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class FunctionsFileError(ValueError):
    """The functions file cannot be used: one line naming the file, function and key."""


class ArgumentError(Exception):
    """An argument value that its declared type cannot take."""

    def __init__(self, type_name: str, value):
        super().__init__(type_name)
        self.type_name = type_name
        self.value = value


# -- parameter types ---------------------------------------------------------------------

_BOOLEAN_TEXT = {"true": 1, "t": 1, "yes": 1, "y": 1, "on": 1, "1": 1,
                 "false": 0, "f": 0, "no": 0, "n": 0, "off": 0, "0": 0}
_FLOAT = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*\Z")


def _integer_from_text(text: str):
    value = int64(text.strip())
    if value is None:
        raise ArgumentError("integer", text)
    return value


def _integer_from_json(value):
    if type(value) is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise ArgumentError("integer", value)
    if type(value) is float and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    if type(value) is str:
        return _integer_from_text(value)
    raise ArgumentError("integer", value)


def _real_from_text(text: str):
    if not _FLOAT.match(text):
        raise ArgumentError("real", text)
    value = float(text)
    if math.isinf(value):
        raise ArgumentError("real", text)
    return value


def _real_from_json(value):
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    if type(value) is str:
        return _real_from_text(value)
    raise ArgumentError("real", value)


def _text_from_json(value):
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) in (int, float):
        return orjson.dumps(value).decode()
    return orjson.dumps(value).decode()  # an object or array: its JSON text


def _boolean_from_text(text: str):
    value = _BOOLEAN_TEXT.get(text.strip().lower())
    if value is None:
        raise ArgumentError("boolean", text)
    return value


def _boolean_from_json(value):
    if type(value) is bool:
        return 1 if value else 0
    if type(value) is int and value in (0, 1):
        return value
    if type(value) is str:
        return _boolean_from_text(value)
    raise ArgumentError("boolean", value)


def _json_from_text(text: str):
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ArgumentError("json", text) from None
    return text


def _json_from_json(value):
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class ParamType:
    name: str
    #: What the SQL receives (bound as a parameter, never pasted into the SQL).
    doc: str
    #: An argument given as text: in the query string (GET) or a form body.
    from_text: Callable[[str], Any]
    #: An argument given as a JSON value (POST body).
    from_json: Callable[[Any], Any]
    #: Swagger 2.0 (type, format) in the OpenAPI description.
    swagger: tuple[str, str]


PARAM_TYPES: dict[str, ParamType] = {t.name: t for t in (
    ParamType("integer", "a 64-bit INTEGER; JSON integers, integral numbers and decimal text",
              _integer_from_text, _integer_from_json, ("integer", "integer")),
    ParamType("real", "a REAL; JSON numbers and numeric text",
              _real_from_text, _real_from_json, ("number", "double precision")),
    ParamType("text", "TEXT; a JSON number or boolean as its JSON text, an object or array "
              "as its JSON text", str, _text_from_json, ("string", "text")),
    ParamType("boolean", "INTEGER 1 or 0; JSON true/false, 1/0, and the text true/false, "
              "t/f, yes/no, on/off, 1/0", _boolean_from_text, _boolean_from_json,
              ("boolean", "boolean")),
    ParamType("json", "the JSON text of any JSON value (use it with SQLite's json "
              "functions); text must be valid JSON", _json_from_text, _json_from_json,
              ("string", "json")),
)}

RETURNS = {
    "rows": "a set of rows: a JSON array of objects; filters, select, order, limit/offset, "
            "Range, Prefer: count and the object/CSV media types apply as on a table",
    "row": "one row: a JSON object (the first row; null when there is none); select applies",
    "value": "one value: the first column of the first row as a bare JSON value (null when "
             "there is no row)",
    "nothing": "no body: 204, like a PostgREST function returning void",
}
VOLATILITIES = {
    "immutable": "read-only (as stable)",
    "stable": "read-only: runs on a read-only connection, by GET, HEAD or POST",
    "volatile": "may write: runs in one write transaction (group commit, X-Replication-Txid, "
                "Prefer: tx=rollback), by POST only",
}

#: Every key of a function, for the docs: (key, required?, meaning).
FILE_KEYS = (
    ("sql", "yes", "One SQL statement, or several separated by `;` (run in order, in one "
     "transaction; the result is the last one's rows). Arguments are named parameters "
     "`:name`, always bound, never pasted. No `?` parameters, PRAGMA, ATTACH, BEGIN/COMMIT "
     "or SAVEPOINT."),
    ("params", "no", "The parameters, in order: `name: type` (required) or `name: {type: T, "
     "default: V, description: D}` (optional when it has a `default`, which may be `null`). "
     "Every parameter must occur in `sql` and every `:name` in `sql` must be declared."),
    ("returns", "no", "`rows` (default), `row`, `value` or `nothing`: " + "; ".join(
        f"`{k}` — {v}" for k, v in RETURNS.items()) + "."),
    ("volatility", "no", "`immutable`, `stable` or `volatile`; default: `stable` when every "
     "statement is read-only, else `volatile`. A read-only (`stable`/`immutable`) function "
     "whose SQL writes is refused at start-up. " + "; ".join(
         f"`{k}` — {v}" for k, v in VOLATILITIES.items()) + "."),
    ("table", "no", "The table (or view) the rows are rows of, PostgREST's `RETURNS SETOF "
     "<table>` (`returns: rows`) or `RETURNS <table>` (`returns: row`): resource embedding "
     "then follows its relationships (`select=title,authors(name)`), as on the table. "
     "Default: the table every result column comes from under its own name, when SQLite "
     "reports one (not through a UNION, INTERSECT or EXCEPT); `null`: none. The result must "
     "hold the columns a relationship joins on (its key columns on this side), else embedding "
     "through it is 400 `42703`. Only with `rows`/`row` and a last statement that is a "
     "SELECT."),
    ("json_columns", "no", "Result columns whose text is JSON, sent as JSON rather than as "
     "a string (for `value`: the value's column)."),
    ("description", "no", "Shown in the OpenAPI description."),
)
PARAM_KEYS = ("type", "default", "description")
_FUNCTION_KEYS = frozenset(k for k, _, _ in FILE_KEYS)
#: Authorizer actions a function's SQL may not contain: they would change the connection
#: (PRAGMA query_only=0 on the read-only connection) or the transaction the server manages.
_REFUSED_ACTIONS = {
    "SQLITE_PRAGMA": "PRAGMA statements",
    "SQLITE_TRANSACTION": "BEGIN, COMMIT or ROLLBACK",
    "SQLITE_SAVEPOINT": "SAVEPOINT or RELEASE",
    "SQLITE_ATTACH": "ATTACH",
    "SQLITE_DETACH": "DETACH",
}


def functions_markdown() -> str:
    rows = ["| key | required | meaning |", "|---|---|---|"]
    for key, required, meaning in FILE_KEYS:
        rows.append(f"| `{key}` | {required} | {meaning} |")
    rows += ["", "| parameter type | bound as |", "|---|---|"]
    for t in PARAM_TYPES.values():
        rows.append(f"| `{t.name}` | {t.doc} |")
    return "\n".join(rows) + "\n"


# -- the file ---------------------------------------------------------------------------

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: Any = _NO_DEFAULT
    description: Optional[str] = None

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT


@dataclass(frozen=True)
class FunctionSpec:
    """A function as the file declares it (checked without the database)."""

    name: str
    params: tuple[Param, ...]
    sql: str
    returns: str
    volatility: Optional[str]  # None: derived from the SQL
    json_columns: tuple[str, ...]
    description: Optional[str]
    #: The table the rows are rows of (`table:`); None: inferred from the result columns,
    #: unless `table_declared` (the file said `table: null`).
    table: Optional[str] = None
    table_declared: bool = False


def parse_functions_file(path: str) -> dict[str, FunctionSpec]:
    """The functions of a file, in file order; FunctionsFileError on anything wrong."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        raise FunctionsFileError(f"--functions-file {path}: cannot read it: "
                                 f"{exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise FunctionsFileError(f"--functions-file {path}: not valid YAML{at}: "
                                 f"{getattr(exc, 'problem', None) or exc}") from None
    except UnicodeDecodeError as exc:
        raise FunctionsFileError(f"--functions-file {path}: not UTF-8 text: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"functions"}:
        raise FunctionsFileError(f"--functions-file {path}: expected one top-level key "
                                 "'functions:' holding a mapping of function names")
    functions = document["functions"]
    if functions is None:
        return {}
    if not isinstance(functions, dict):
        raise FunctionsFileError(f"--functions-file {path}: 'functions' must be a mapping "
                                 "of function names to their definitions")
    return {str(name): _parse_function(path, name, body) for name, body in functions.items()}


def _parse_function(path: str, name, body) -> FunctionSpec:
    def fail(key: Optional[str], message: str):
        where = f"function {name!r}" + (f", key '{key}'" if key else "")
        raise FunctionsFileError(f"--functions-file {path}: {where}: {message}")

    if not isinstance(name, str) or not _NAME.match(name):
        raise FunctionsFileError(f"--functions-file {path}: function name {name!r} is not a "
                                 "name (letters, digits, _; not starting with a digit)")
    if not isinstance(body, dict):
        fail(None, "expected a mapping with at least 'sql'")
    unknown = sorted(str(k) for k in body if k not in _FUNCTION_KEYS)
    if unknown:
        fail(unknown[0], f"unknown key (keys: {', '.join(k for k, _, _ in FILE_KEYS)})")
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        fail("sql", "missing or empty: give the SQL statement(s) as text")
    returns = body.get("returns", "rows")
    if returns not in RETURNS:
        fail("returns", f"{returns!r} is not one of {', '.join(RETURNS)}")
    volatility = body.get("volatility")
    if volatility is not None and volatility not in VOLATILITIES:
        fail("volatility", f"{volatility!r} is not one of {', '.join(VOLATILITIES)}")
    json_columns = body.get("json_columns", [])
    if not isinstance(json_columns, list) or not all(isinstance(c, str) for c in json_columns):
        fail("json_columns", "expected a list of result column names")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        fail("description", "expected text")
    table = body.get("table")
    if table is not None and (not isinstance(table, str) or not table):
        fail("table", "expected the name of a table or view (or null for none)")
    if table is not None and returns not in ("rows", "row"):
        fail("table", f"only a function returning rows or row has a table (returns: {returns})")
    params = []
    raw_params = body.get("params") or {}
    if not isinstance(raw_params, dict):
        fail("params", "expected a mapping of parameter names to types")
    for pname, pbody in raw_params.items():
        if not isinstance(pname, str) or not _NAME.match(pname):
            fail("params", f"parameter name {pname!r} is not a name")
        default = _NO_DEFAULT
        pdescription = None
        if isinstance(pbody, dict):
            unknown = sorted(str(k) for k in pbody if k not in PARAM_KEYS)
            if unknown:
                fail(f"params.{pname}.{unknown[0]}",
                     f"unknown key (keys: {', '.join(PARAM_KEYS)})")
            type_name = pbody.get("type")
            if "default" in pbody:
                default = pbody["default"]
            pdescription = pbody.get("description")
        else:
            type_name = pbody
        ptype = PARAM_TYPES.get(type_name) if isinstance(type_name, str) else None
        if ptype is None:
            fail(f"params.{pname}", f"type {type_name!r} is not one of "
                                    f"{', '.join(PARAM_TYPES)}")
        if default is not _NO_DEFAULT and default is not None:
            try:
                default = ptype.from_json(default)
            except ArgumentError:
                fail(f"params.{pname}.default", f"{default!r} is not a {ptype.name}")
        params.append(Param(pname, ptype, default, pdescription))
    return FunctionSpec(name, tuple(params), sql, returns, volatility, tuple(json_columns),
                        description, table, "table" in body)


# -- prepared on the database -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FunctionResult(Table):
    """The rows of a function as a table the SQL builder can select from (under
    RESULT_ALIAS). With ``rows_of`` (its table, `rows_result`) it has that table's
    relationships, so embeddings correlate on RESULT_ALIAS as they would on the table."""

    #: The name of the table the rows are rows of; None: no relationships.
    rows_of: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "quoted", quote_identifier(RESULT_ALIAS))

    @property
    def relation_name(self) -> str:
        return self.rows_of or self.name


@functools.lru_cache(maxsize=256)
def rows_result(function: "Function", table: Table) -> FunctionResult:
    """The function's result with the relationships of `table` (the schema cache's, so a new
    schema makes a new one)."""
    result = function.result
    return FunctionResult(result.name, result.kind, result.columns, (),
                          relations=table.relations, rows_of=table.name)


@dataclass(frozen=True)
class Step:
    """One statement of a function and the parameter names it binds, in position order."""

    sql: str
    names: tuple[str, ...]

    def bind(self, values: dict) -> list:
        return [values[name] for name in self.names]


@dataclass(frozen=True, eq=False)
class Function:
    spec: FunctionSpec
    #: Every statement but the last.
    before: tuple[Step, ...]
    #: The last statement as written (run as is when it cannot be wrapped).
    last: Step
    #: ``WITH "<alias>" AS (<last>) `` when the last statement is a SELECT the builder can
    #: wrap, else None (its rows come as they are: no filters, select or order).
    wrap_prefix: Optional[str]
    #: Its result columns as a table (None for `returns: nothing`).
    result: Optional[FunctionResult]
    writes: bool
    #: The verb of its first writing statement (INSERT, UPDATE, …), for 25006 on GET.
    verb: Optional[str] = None
    #: The table its rows are rows of (declared or inferred; `table_of_rows`), None: none.
    table: Optional[str] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def params(self) -> tuple[Param, ...]:
        return self.spec.params

    @property
    def returns(self) -> str:
        return self.spec.returns

    @property
    def volatility(self) -> str:
        return self.spec.volatility or ("volatile" if self.writes else "stable")


def split_statements(conn: apsw.Connection, sql: str, fail) -> list:
    """The statements of `sql`, each with apsw's QueryDetails (prepared, never run)."""
    out = []
    remaining = sql
    while remaining and remaining.strip():
        try:
            info = apsw.ext.query_info(conn, remaining, actions=True)
        except apsw.Error as exc:
            fail("sql", f"SQLite cannot prepare it: {exc}")
        text = info.first_query.strip()
        if text and text != ";":
            out.append(info)
        remaining = info.query_remaining
    if not out:
        fail("sql", "no SQL statement in it")
    return out


def prepare_function(conn: apsw.Connection, spec: FunctionSpec, path: str) -> Function:
    def fail(key: Optional[str], message: str):
        where = f"function {spec.name!r}" + (f", key '{key}'" if key else "")
        raise FunctionsFileError(f"--functions-file {path}: {where}: {message}")

    statements = split_statements(conn, spec.sql, fail)
    declared = {p.name for p in spec.params}
    used: set[str] = set()
    writes = False
    verb = None
    steps = []
    for info in statements:
        refused = sorted({_REFUSED_ACTIONS[a.action_name] for a in (info.actions or ())
                          if a.action_name in _REFUSED_ACTIONS})
        if refused:
            fail("sql", f"{', '.join(refused)} may not be used in a function (the server "
                        "manages connections and transactions)")
        if info.bindings_count and (not info.bindings_names or None in info.bindings_names):
            fail("sql", "use named parameters (:name), not '?'")
        names = tuple(info.bindings_names or ())
        undeclared = sorted(set(names) - declared)
        if undeclared:
            fail("sql", f"parameter :{undeclared[0]} is not declared in 'params'")
        used.update(names)
        if not info.is_readonly and verb is None:
            writes = True
            verb = (info.first_query.split(None, 1) or ["WRITE"])[0].upper()
        steps.append(Step(info.first_query.strip().rstrip(";").strip(), names))
    if spec.volatility == "volatile" and not writes:
        writes = True  # declared: run it as a write (POST only, write transaction)
        verb = "a volatile function"
    unused = [p.name for p in spec.params if p.name not in used]
    if unused:
        fail(f"params.{unused[0]}", "declared but not used in 'sql'")
    if writes and spec.volatility in ("stable", "immutable"):
        fail("volatility", f"the function is declared {spec.volatility} (read-only) but its "
                           "SQL writes; declare it volatile (POST only) or remove the write")
    last_info = statements[-1]
    description = last_info.description_full or ()
    result = None
    wrap_prefix = None
    if spec.returns != "nothing":
        if not description:
            fail("returns", f"'{spec.returns}' needs rows, but the last statement returns no "
                            "columns (end it with a SELECT or a RETURNING clause, or declare "
                            "returns: nothing)")
        names = [d[0] for d in description]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            fail("sql", f"the result has two columns named {duplicate!r}; give them "
                        "distinct names with AS")
        unknown = sorted(set(spec.json_columns) - set(names))
        if unknown:
            fail("json_columns", f"{unknown[0]!r} is not a result column "
                                 f"(columns: {', '.join(names)})")
        columns = tuple(Column(d[0], d[1] or "", affinity_of(d[1] or ""), False, None, 0)
                        for d in description)
        result = FunctionResult(spec.name, "view", columns, ())
        if last_info.is_readonly:
            prefix = "WITH " + quote_identifier(RESULT_ALIAS) + " AS (" + steps[-1].sql + ") "
            try:
                wrapped = apsw.ext.query_info(conn, prefix + "SELECT * FROM "
                                              + quote_identifier(RESULT_ALIAS))
            except apsw.Error:
                wrapped = None
            if wrapped is not None and tuple(wrapped.bindings_names or ()) == steps[-1].names:
                wrap_prefix = prefix
    table = table_of_rows(conn, spec, steps[-1].sql, description, wrap_prefix is not None,
                          fail)
    return Function(spec, tuple(steps[:-1]), steps[-1], wrap_prefix, result, writes, verb,
                    table)


#: Query plan steps of a compound SELECT: SQLite reports the first SELECT's tables as the
#: origin of its columns, though the other SELECTs give rows too.
_COMPOUND_STEPS = ("COMPOUND QUERY", "MERGE (")


def table_of_rows(conn: apsw.Connection, spec: FunctionSpec, sql: str, description,
                  wrapped: bool, fail) -> Optional[str]:
    """The table a function's rows are rows of: the declared one (checked: it exists, and the
    result has a column of it), else the one SQLite reports every result column comes from
    under the column's own name, else None."""
    if spec.returns not in ("rows", "row"):
        return None
    names = [d[0] for d in description]
    if spec.table_declared:
        if spec.table is None:
            return None
        if not wrapped:
            fail("table", "the last statement is not a SELECT, so its rows take no select "
                          "or embedding: end the function with a SELECT, or remove 'table'")
        columns = [c for (c,) in conn.execute(
            "SELECT name FROM pragma_table_xinfo(?, 'main') WHERE hidden IN (0, 2, 3)",
            (spec.table,))]
        if not columns or not is_exposable(spec.table):
            fail("table", f"no table or view named {spec.table!r} in the database")
        if not set(names) & set(columns):
            fail("table", f"none of the result columns ({', '.join(names)}) is a column of "
                          f"{spec.table} ({', '.join(columns)}): no relationship of "
                          f"{spec.table} could join on them")
        return spec.table
    if not wrapped:
        return None
    origins = {(d[2], d[3]) for d in description}
    if len(origins) != 1 or any(d[4] != d[0] for d in description):
        return None  # an expression, a renamed column, or columns of several tables
    database, table = origins.pop()
    if database != "main" or not is_exposable(table):
        return None
    plan = apsw.ext.query_info(conn, sql, explain_query_plan=True).query_plan
    if _has_step(plan, _COMPOUND_STEPS):
        return None
    return table


def _has_step(node, prefixes) -> bool:
    return node is not None and (node.detail.startswith(prefixes)
                                 or any(_has_step(n, prefixes) for n in node.sub or ()))


def prepare_functions(conn: apsw.Connection, specs: dict[str, FunctionSpec],
                      path: str) -> dict[str, Function]:
    return {name: prepare_function(conn, spec, path) for name, spec in specs.items()}


def load_functions(path: str, conn: apsw.Connection) -> dict[str, Function]:
    """Read, check and prepare a functions file (FunctionsFileError on any problem)."""
    return prepare_functions(conn, parse_functions_file(path), path)


class FunctionCatalog:
    """The prepared functions of one app, prepared again when the database's schema moves
    (a migration added a column a ``SELECT *`` function returns, or changed a type).

    `current(conn)` costs one ``PRAGMA schema_version`` when nothing changed. A function that
    no longer prepares keeps its previous preparation (logged): its calls then get SQLite's
    own error, as any statement on a missing table would.
    """

    def __init__(self, path: str, conn: apsw.Connection):
        self.path = path
        self.specs = parse_functions_file(path)
        self._lock = threading.Lock()
        self._version = conn.execute("PRAGMA schema_version").get
        self._functions = prepare_functions(conn, self.specs, path)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def current(self, conn: apsw.Connection) -> dict[str, Function]:
        version = conn.execute("PRAGMA schema_version").get
        if version == self._version:
            return self._functions
        with self._lock:
            if version != self._version:
                # Preparing does not reload the connection's copy of the schema (a statement
                # that reads does): without this, the new preparation would be the old one.
                conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
                functions = dict(self._functions)
                for name, spec in self.specs.items():
                    try:
                        functions[name] = prepare_function(conn, spec, self.path)
                    except FunctionsFileError as exc:
                        log.error("after a schema change: %s (its calls fail until the "
                                  "schema or the file is fixed)", exc)
                self._functions, self._version = functions, version
            return self._functions


# -- matching a call to a function (PostgREST's PGRST202) ---------------------------------


def _qualified(name: str) -> str:
    return SCHEMA_NAME + "." + shown_text(name, 100)


def not_found(functions: dict, name: str, keys, *, json_body: bool,
              single_object: bool = False) -> dict:
    """message/details/hint of PostgREST's 404 PGRST202 for a call of `name` with argument
    names `keys` that no function takes."""
    keys = sorted(keys)
    func = _qualified(name)
    if single_object:
        return {"message": f"Could not find the function {func} in the schema cache",
                "details": f"Searched for the function {func} with a single json/jsonb "
                           "parameter, but no matches were found in the schema cache.",
                "hint": None}
    shown = [shown_text(k, 60) for k in keys[:50]]
    listed = ", ".join(shown)
    message = (f"Could not find the function {func}"
               + (f"({listed})" if keys else " without parameters") + " in the schema cache")
    searched = (f" with parameter{'s' if len(keys) > 1 else ''} {listed}" if keys
                else " without parameters")
    if json_body:
        searched += " or with a single unnamed json/jsonb parameter"
    details = (f"Searched for the function {func}{searched}, but no matches were found in "
               "the schema cache.")
    function = functions.get(name)
    if function is not None:
        signature = ", ".join(sorted(p.name for p in function.params))
        hint = f"Perhaps you meant to call the function {SCHEMA_NAME}.{name}({signature})"
    else:
        close = closest_name(name, list(functions))
        hint = (f"Perhaps you meant to call the function {SCHEMA_NAME}.{close}"
                if close else None)
    return {"message": message, "details": details, "hint": hint}


def accepts(function: Function, keys) -> bool:
    """Whether a call with argument names `keys` matches the function's parameters."""
    keys = set(keys)
    names = {p.name for p in function.params}
    return keys <= names and all(p.name in keys for p in function.params if p.required)


# -- OpenAPI ------------------------------------------------------------------------------

def _swagger_param(param: Param) -> dict:
    kind, fmt = param.type.swagger
    out = {"type": kind, "format": fmt}
    if not param.required and param.default is not None:
        out["default"] = param.default
    if param.description:
        out["description"] = param.description
    return out


def openapi_paths(functions: dict) -> dict:
    """The ``/rpc/<name>`` paths of the Swagger 2.0 description (openapi.py), shaped like
    PostgREST's: GET with query parameters for read-only functions, POST with a body object
    for all."""
    paths = {}
    ref = lambda name: {"$ref": "#/parameters/" + name}  # noqa: E731
    for name, function in functions.items():
        responses = ({"204": {"description": "No Content"}} if function.returns == "nothing"
                     else {"200": {"description": "OK"}})
        common: dict = {"tags": [f"(rpc) {name}"]}
        if function.spec.description:
            common["summary"] = function.spec.description
        readable = function.returns in ("rows", "row") and function.wrap_prefix is not None
        shaping = [ref("select")] if readable else []
        if readable and function.returns == "rows":
            shaping += [ref("order"), ref("offset"), ref("limit"), ref("preferCount")]
        properties = {p.name: _swagger_param(p) for p in function.params}
        schema: dict = {"type": "object"}
        required = [p.name for p in function.params if p.required]
        if required:
            schema["required"] = required
        schema["properties"] = properties
        body = {"name": "args", "in": "body", "required": True, "schema": schema}
        operations = {"post": {**common, "parameters": [body, ref("preferParams")] + shaping,
                               "responses": responses}}
        if not function.writes:
            query = [{"name": p.name, "in": "query", "required": p.required,
                      **_swagger_param(p)} for p in function.params]
            page = [ref("range"), ref("rangeUnit")] if function.returns == "rows" and readable \
                else []
            operations = {"get": {**common, "parameters": query + shaping + page,
                                  "responses": responses}, **operations}
        paths["/rpc/" + name] = operations
    return paths
