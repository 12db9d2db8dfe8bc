"""The SQL builder: a parsed query (query.py) + a schema Table -> SQL and parameters.

Safety rules, enforced here and nowhere else:

* Every identifier in the SQL text comes from the schema cache (`Table`,
  `Column`), looked up by exact name and quoted; a name the request made up
  raises `UnknownColumnError` before any SQL exists.
* Every value from the request is a bound parameter (`?`), JSON path keys
  included. Cast types come from a whitelist, operators from `operators.py`.

Value coercion (filter values arrive as text):

* INTEGER / REAL / NUMERIC affinity: a decimal integer is bound as a Python
  int (exact 64-bit, never via float), another number as float, anything else
  as text. Columns declared BOOL… also take true/false.
* TEXT affinity: bound as text.
* No affinity (a view's expression column, an untyped column, a `->>` JSON
  value): a numeric-looking value must match a stored number *or* the same
  text, so eq/neq/in/isdistinct compare against both (`col IN (5, '5')`);
  ordering comparisons bind the number.
* like/ilike/match patterns are always text.
"""
from __future__ import annotations

import functools
import re
import secrets
import warnings
from dataclasses import dataclass

import orjson
import regex

from .operators import OPERATOR_BY_NAME, QUANTIFIERS, ValueKind
from .query import (AGGREGATES, CASTS, INT64_MAX, INT64_MIN, And, ColumnRef, Filter, JsonStep,
                    Embed, Not, QueryError, SelectItem, count_fields,
                    RequestError, Star, UnknownColumnError, int64, is_decimal, shown_text)
from .embedding import EmbedContext, embed_exists, embed_sql
from .fulltext import fts5_query
from .schema import Column, Table, quote_identifier


class BodyColumnError(RequestError):
    """A key of the request body (or of `columns`) is not a writable column."""

    key = "unknown_body_column"


class PayloadError(RequestError):
    """The body's shape cannot be inserted (mixed keys, out-of-range integer)."""

    key = "invalid_body"


class ConflictTargetError(RequestError):
    """on_conflict does not name a primary key or unique constraint."""

    key = "conflict_target"


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One column of a result row: its JSON key and how to render the value.

    kind: "value" (as stored), "json" (the text is JSON: embed it),
    "boolean" (0/1 -> false/true).
    """

    name: str
    kind: str = "value"


class Statement:
    """SQL text, its positional parameters, and the result columns (if any).

    Unpacks as ``sql, params = statement``.
    """

    __slots__ = ("sql", "params", "columns")

    def __init__(self, sql: str, params: tuple, columns: tuple[OutputColumn, ...] = ()):
        self.sql = sql
        self.params = params
        self.columns = columns

    def __iter__(self):
        return iter((self.sql, self.params))

    def __repr__(self):
        return f"Statement({self.sql!r}, {self.params!r})"


class BatchStatement:
    """One SQL text run once per parameter tuple (`cursor.executemany`)."""

    __slots__ = ("sql", "params_seq", "columns")

    def __init__(self, sql: str, params_seq: list[tuple], columns: tuple[OutputColumn, ...] = ()):
        self.sql = sql
        self.params_seq = params_seq
        self.columns = columns

    def __repr__(self):
        return f"BatchStatement({self.sql!r}, {len(self.params_seq)} rows)"


# --------------------------------------------------------------------------
# Columns and values

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_NUMERIC_AFFINITIES = frozenset({"INTEGER", "REAL", "NUMERIC"})
_BOOLEAN_WORDS = {"true": 1, "false": 0, "t": 1, "f": 0}

# SQLite's default SQLITE_MAX_VARIABLE_NUMBER: more bound values cannot be prepared.
MAX_PARAMETERS = 32766
# SQLite's default SQLITE_MAX_LIKE_PATTERN_LENGTH, in UTF-8 bytes.
MAX_PATTERN_BYTES = 50000


def _number(text: str):
    """The number a text spells (int exactly, else float), or None."""
    number = int64(text)
    if number is not None or is_decimal(text):
        # Beyond 64 bits: None, so it is bound as text and SQLite's affinity decides (a
        # numeric column compares it as the REAL it spells: it equals no 64-bit INTEGER).
        return number
    if _NUMBER.match(text):
        return float(text)
    return None


def _unknown_column(table: Table, name: str):
    raise UnknownColumnError(
        f"column {table.name}.{shown_text(name)} does not exist",
        details=None,
        hint=f"columns of {table.name}: {', '.join(c.name for c in table.columns)}")


def _column(table: Table, name: str) -> Column:
    column = table.by_name.get(name)
    if column is None:
        _unknown_column(table, name)
    return column


def _json_path_param(key: str | int):
    """SQLite's -> / ->> take an int (array index) or a JSON path; quote labels."""
    if isinstance(key, int):
        return key
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _column_expr(table: Table, ref: ColumnRef) -> tuple[str, tuple, str, Column]:
    """SQL for a column (with JSON path) -> (sql, its params, affinity, column)."""
    column = _column(table, ref.name)
    if not ref.json_path:
        return column.quoted, (), column.affinity, column
    # A value that is not JSON gives NULL (as a missing key would), not an SQL error.
    parts = ["(CASE WHEN json_valid(", column.quoted, ") THEN ", column.quoted]
    for step in ref.json_path:
        parts.append(" ->> ?" if step.as_text else " -> ?")
    parts.append(" END)")
    path_params = tuple(_json_path_param(step.key) for step in ref.json_path)
    # ->> yields an SQL value of any type (no affinity); -> yields JSON text.
    affinity = "BLOB" if ref.json_path[-1].as_text else "TEXT"
    return "".join(parts), path_params, affinity, column


_TEMPLATE_TOKEN = re.compile(r"(\{col\}|\?)")


@functools.lru_cache(maxsize=64)
def _template_tokens(template: str) -> tuple[str, ...]:
    return tuple(t for t in _TEMPLATE_TOKEN.split(template) if t)


def _render(template: str, col_sql: str, col_params: tuple, values, params: list) -> str:
    """Fill an operator template; parameters follow the order of `{col}` and `?`."""
    if not col_params:
        params.extend(values)
        return template.replace("{col}", col_sql)
    out = []
    values = iter(values)
    for token in _template_tokens(template):
        if token == "{col}":
            out.append(col_sql)
            params.extend(col_params)
        elif token == "?":
            out.append("?")
            params.append(next(values))
        else:
            out.append(token)
    return "".join(out)


def _coerce(text: str, affinity: str, column: Column):
    """Filter text -> (value, alternative text or None). See the module docstring."""
    if affinity == "TEXT":
        return text, None
    if affinity in _NUMERIC_AFFINITIES:
        number = _number(text)
        if number is not None:
            return number, None
        if "BOOL" in column.declared_type.upper():
            word = _BOOLEAN_WORDS.get(text.lower())
            if word is not None:
                return word, None
        return text, None
    number = _number(text)  # no affinity: match the number or the text
    if number is not None:
        return number, text
    return text, None


_GLOB_TOKEN = re.compile(r"\\(.)|([%*])|(_)|([\[?])", re.S)


def _glob_replace(m: re.Match) -> str:
    escaped, star, underscore, meta = m.groups()
    if escaped is not None:
        return "[" + escaped + "]" if escaped in "[?*" else escaped
    if star is not None:
        return "*"
    if underscore is not None:
        return "?"
    return "[" + meta + "]"


@functools.lru_cache(maxsize=1024)
def like_to_glob(pattern: str) -> str:
    """PostgREST like pattern (`%`/`*` any run, `_` one char, `\\x` literal) -> GLOB."""
    return _GLOB_TOKEN.sub(_glob_replace, pattern)


def ilike_to_like(pattern: str) -> str:
    """PostgREST ilike pattern -> SQLite LIKE pattern with ESCAPE '\\' (`*` -> `%`)."""
    return pattern.replace("*", "%") if "*" in pattern else pattern


# A user's pattern runs inside SQLite on every row; `regex` (unlike `re`) can stop a
# catastrophic backtrack, so one request cannot pin a worker thread.
REGEX_TIMEOUT_SECONDS = 0.1  # per matched value


@functools.lru_cache(maxsize=256)
def _compile_regex(pattern: str, ignore_case: bool):
    with warnings.catch_warnings():  # FutureWarnings about user patterns are noise in logs
        warnings.simplefilter("ignore")
        return regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)


def _check_regex(pattern: str, ignore_case: bool) -> str:
    try:
        _compile_regex(pattern, ignore_case)
    except (regex.error, ValueError, OverflowError) as e:
        raise QueryError(f"invalid regular expression {shown_text(pattern, 60)!r}: {e}",
                         hint="match/imatch use Python regular expression syntax") from None
    return pattern


def _search(pattern, value, ignore_case: bool):
    if pattern is None or value is None:
        return None
    if type(value) is not str:
        value = value.decode("utf-8", "replace") if type(value) is bytes else str(value)
    try:
        return _compile_regex(pattern, ignore_case).search(
            value, timeout=REGEX_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        raise QueryError(f"regular expression {shown_text(pattern, 60)!r} is too slow",
                         details=f"matching one value took over {REGEX_TIMEOUT_SECONDS} s",
                         hint="simplify the pattern (avoid nested repetition)") from None


def _regexp(pattern, value):
    return _search(pattern, value, False)


def _imatch(pattern, value):
    return _search(pattern, value, True)


def register_functions(conn) -> None:
    """Register REGEXP (match) and sqlite_rest_imatch (imatch) on an apsw connection.

    A pattern that backtracks for over REGEX_TIMEOUT_SECONDS on one value raises
    QueryError out of the statement (apsw re-raises the callback's exception)."""
    conn.create_scalar_function("regexp", _regexp, 2, deterministic=True)
    conn.create_scalar_function("sqlite_rest_imatch", _imatch, 2, deterministic=True)
    from ..auth.policy import request_claim  # roles: function SQL reads the caller's claims

    conn.create_scalar_function("request_claim", request_claim, 1, deterministic=False)


# --------------------------------------------------------------------------
# WHERE


def _filter_sql(table: Table, f: Filter, params: list) -> str:
    op = OPERATOR_BY_NAME[f.op]
    col_sql, col_params, affinity, column = _column_expr(table, f.column)
    kind = op.value
    if kind is ValueKind.FULLTEXT:
        sql = _fulltext_sql(table, f, op, params)
    elif kind is ValueKind.KEYWORD:
        sql = _render(op.keyword_map[f.value], col_sql, col_params, (), params)
    elif kind is ValueKind.LIST:
        values = []
        for item in f.value:
            value, alternative = _coerce(item, affinity, column)
            values.append(value)
            if alternative is not None:
                values.append(alternative)
        sql = _render(op.sql.replace("{list}", ", ".join("?" * len(values))), col_sql,
                      col_params, values, params)
    elif f.quantifier is not None:
        terms = [_scalar_sql(op, kind, col_sql, col_params, affinity, column, v, params)
                 for v in f.value]
        if not terms:
            sql = "0" if f.quantifier == "any" else "1"
        else:
            sql = _join(QUANTIFIERS[f.quantifier], terms)
    else:
        sql = _scalar_sql(op, kind, col_sql, col_params, affinity, column, f.value, params)
    return "NOT (" + sql + ")" if f.negated else sql


def _fulltext_sql(table: Table, f: Filter, op, params: list) -> str:
    """``col MATCH ?`` on an FTS5 table; on a table indexed by ``<table>_fts``, its rows whose
    rowid the index matches on the column of the same name."""
    if f.column.json_path:
        raise QueryError(f"{op.name} searches a column, not a JSON path",
                         hint="search the column itself")
    query = fts5_query(op.name, f.value)
    name = f.column.name
    if table.fts5:
        column = _column(table, name)
        params.append(query)
        return column.quoted + " MATCH ?"
    index = table.fts_index
    if index is None or index.column(name) is None:
        _column(table, name)  # an unknown column is 42703 first
        raise QueryError(f"no full-text index for column {name!r} of {table.name!r}",
                         hint=f"create one: CREATE VIRTUAL TABLE \"{table.name}_fts\" USING "
                              f"fts5({name}, content='{table.name}') (see the README, "
                              f"\"Full-text search\")")
    params.append(query)
    return (f"{table.quoted}.rowid IN (SELECT rowid FROM {index.quoted} "
            f"WHERE {index.column(name).quoted} MATCH ?)")


def _scalar_sql(op, kind, col_sql, col_params, affinity, column, text, params) -> str:
    if kind is ValueKind.PATTERN:
        pattern = like_to_glob(text) if op.name == "like" else ilike_to_like(text)
        if len(pattern) * 4 > MAX_PATTERN_BYTES and len(pattern.encode()) > MAX_PATTERN_BYTES:
            raise QueryError("like/ilike pattern too long",
                             details=f"SQLite accepts at most {MAX_PATTERN_BYTES} bytes",
                             hint="shorten the pattern")
        return _render(op.sql, col_sql, col_params, (pattern,), params)
    if kind is ValueKind.REGEX:
        pattern = _check_regex(text, op.name == "imatch")
        return _render(op.sql, col_sql, col_params, (pattern,), params)
    if kind is ValueKind.CONTAINER:  # already JSON text (query._container)
        return _render(op.sql, col_sql, col_params, (text,), params)
    value, alternative = _coerce(text, affinity, column)
    if alternative is not None and op.either_sql is not None:
        return _render(op.either_sql, col_sql, col_params, (value, alternative), params)
    return _render(op.sql, col_sql, col_params, (value,), params)


def _logic_sql(table: Table, node, params: list) -> str:
    if type(node) is Filter:
        return _filter_sql(table, node, params)
    if type(node) is Not:
        return "NOT (" + _logic_sql(table, node.item, params) + ")"
    items = node.items
    if not items:
        return "1" if type(node) is And else "0"
    if len(items) == 1:
        return _logic_sql(table, items[0], params)
    joiner = " AND " if type(node) is And else " OR "
    return _join(joiner, [_logic_sql(table, i, params) for i in items])


def _join(joiner: str, terms: list[str]) -> str:
    """`(a OR b OR …)`, nested as a balanced tree when long: SQLite parses a flat chain
    as a left-deep tree and refuses one deeper than 1000 (SQLITE_MAX_EXPR_DEPTH)."""
    if len(terms) <= 32:
        return "(" + joiner.join(terms) + ")"
    middle = len(terms) // 2
    return "(" + _join(joiner, terms[:middle]) + joiner + _join(joiner, terms[middle:]) + ")"



def _checked(sql: str, params: list, columns=()) -> Statement:
    if len(params) > MAX_PARAMETERS:
        raise QueryError(f"too many values in the query ({len(params)})",
                         details=f"SQLite binds at most {MAX_PARAMETERS} values per statement",
                         hint="split the request, or use fewer in.(…) values")
    return Statement(sql, tuple(params), columns)


def build_where(table: Table, filters, params: list) -> str:
    """` WHERE …` for a logic tree (empty string when there is no filter)."""
    if filters is None or (type(filters) is And and not filters.items):
        return ""
    return " WHERE " + _logic_sql(table, filters, params)


# --------------------------------------------------------------------------
# SELECT list and ORDER BY (cached per table and shape: they hold no request values
# other than JSON path keys, which are part of the shape)


def stored_kind(column: Column) -> str:
    """How a column's values are shown, by its declared type, as PostgREST shows the
    PostgreSQL types of the same names: JSON/JSONB as JSON values, BOOLEAN as true/false
    (SQLite stores them as text and 0/1)."""
    declared = column.declared_type.upper()
    if declared in ("JSON", "JSONB"):
        return "json"
    if declared in ("BOOLEAN", "BOOL"):
        return "boolean"
    return "value"


def _json_as_text(table: Table, ref: ColumnRef) -> tuple[str, tuple]:
    """A selected ``->>`` as PostgreSQL gives it: text for every JSON value (``5`` is "5",
    ``true`` is "true"), the string itself for a string, NULL for null. SQLite's own ``->>``
    gives numbers and 1/0 instead."""
    as_json = ColumnRef(ref.name, ref.json_path[:-1] + (JsonStep(ref.json_path[-1].key, False),))
    expr, params, _affinity, _column = _column_expr(table, as_json)
    sql = (f"(CASE json_type({expr}) WHEN 'text' THEN {expr} ->> '$' "
           f"WHEN 'null' THEN NULL ELSE {expr} END)")
    return sql, params * 3


@functools.lru_cache(maxsize=2048)
def compile_select(table: Table, select: tuple) -> tuple[str, tuple, tuple[OutputColumn, ...]]:
    """select items -> (SQL list, params, output columns)."""
    parts: list[str] = []
    params: list = []
    outputs: list[OutputColumn] = []
    ctx = None
    for item in select:
        if type(item) is Star:
            for column in table.columns:
                parts.append(column.quoted)
                outputs.append(OutputColumn(column.name, stored_kind(column)))
            continue
        if type(item) is Embed:
            if not item.select:
                continue  # name(): only filters the parent rows
            ctx = ctx or EmbedContext()
            for expr, name, kind in embed_sql(table, table.quoted, item, params, ctx,
                                              compile_item, build_where, compile_order):
                parts.append(expr + " AS " + quote_identifier(name))
                outputs.append(OutputColumn(name, kind))
            continue
        expr, name, kind = compile_item(table, item, params)
        if expr != quote_identifier(name):
            expr = expr + " AS " + quote_identifier(name)
        parts.append(expr)
        outputs.append(OutputColumn(name, kind))
    if not parts:
        raise QueryError("nothing to select", hint="select at least one column")
    return ", ".join(parts), tuple(params), tuple(outputs)


def compile_item(table: Table, item: SelectItem, params: list) -> tuple[str, str, str]:
    """One selected column, cast or aggregate: (SQL expression, output name, output kind)."""
    if item.column is None:  # count(): of rows
        expr, kind = "COUNT(*)", "value"
        if item.result_cast is not None:
            cast_type, kind = CASTS[item.result_cast]
            if cast_type is not None:
                expr = f"CAST({expr} AS {cast_type})"
        return expr, item.output_name, kind
    path = item.column.json_path
    if path and path[-1].as_text:
        expr, expr_params = _json_as_text(table, item.column)
    else:
        expr, expr_params, _affinity, _column_ = _column_expr(table, item.column)
    params.extend(expr_params)
    if path:
        kind = "json" if not path[-1].as_text else "value"
    else:
        kind = stored_kind(_column(table, item.column.name))
    if item.cast is not None:
        cast_type, kind = CASTS[item.cast]
        if cast_type is not None:
            expr = f"CAST({expr} AS {cast_type})"
    if item.aggregate is not None:
        expr = f"{AGGREGATES[item.aggregate]}({expr})"
        kind = "value" if item.aggregate in ("sum", "avg", "count") else kind
        if item.result_cast is not None:
            cast_type, kind = CASTS[item.result_cast]
            if cast_type is not None:
                expr = f"CAST({expr} AS {cast_type})"
    return expr, item.output_name, kind


@functools.lru_cache(maxsize=1024)
def embed_filters(table: Table, select: tuple) -> tuple[str, tuple]:
    """The parent rows' conditions of the top-level embeddings: `!inner` (a match exists),
    `name=is.null` (none does), `name=not.is.null`: (SQL, params), ANDed to the WHERE."""
    params: list = []
    conds = []
    ctx = EmbedContext()
    ctx.count = 1000  # distinct from the select list's aliases
    for item in select:
        if type(item) is Embed and (item.inner or item.null_filter is not None):
            exists = embed_exists(table, table.quoted, item, params, ctx, build_where,
                                  compile_order)
            conds.append(("NOT " if item.null_filter else "") + exists)
    return " AND ".join(conds), tuple(params)


@functools.lru_cache(maxsize=1024)
def compile_order(table: Table, order: tuple) -> tuple[str, tuple]:
    """order terms -> (` ORDER BY …`, params); NULL placement as PostgREST's."""
    if not order:
        return "", ()
    params: list = []
    parts = []
    for term in order:
        expr, expr_params, _affinity, column = _column_expr(table, term.column)
        params.extend(expr_params)
        nulls_first = term.descending if term.nulls_first is None else term.nulls_first
        sql = expr + (" DESC" if term.descending else " ASC")
        can_be_null = bool(term.column.json_path) or (
            not column.notnull and column.name != table.rowid_alias)
        if can_be_null:  # SQLite's default is the opposite of PostgREST's: say it
            sql += " NULLS FIRST" if nulls_first else " NULLS LAST"
        parts.append(sql)
    return " ORDER BY " + ", ".join(parts), tuple(params)


# --------------------------------------------------------------------------
# Reads


def _rows_where(table: Table, query, params: list) -> str:
    """The WHERE of the rows a read takes its page from (and counts): the filters, and the
    embeddings' !inner / is.null."""
    where = build_where(table, query.filters, params)
    inner_sql, inner_params = embed_filters(table, query.select)
    if inner_sql:
        where = (f" WHERE ({where[len(' WHERE '):]}) AND " if where else " WHERE ") + inner_sql
        params.extend(inner_params)
    return where


def build_select(table: Table, query, *, limit: int | None = None,
                 offset: int | None = None) -> Statement:
    """SELECT for a ReadQuery. limit/offset override the query's (e.g. from Range)."""
    select = count_fields(table, query.select)
    select_sql, select_params, outputs = compile_select(table, select)
    params = list(select_params)
    where = _rows_where(table, query, params)
    order_sql, order_params = compile_order(table, query.order)
    if order_params:
        params.extend(order_params)
    sql = ("SELECT " + select_sql + " FROM " + table.quoted + where
           + group_by(table, select) + order_sql)
    if limit is None:
        limit = query.limit
    if offset is None:
        offset = query.offset
    if limit is not None or offset:
        sql += limit_sql(limit)
        if offset:
            sql += " OFFSET ?"
            params.append(offset)
    return _checked(sql, params, outputs)


def limit_sql(limit: int | None) -> str:
    """`` LIMIT n`` with n written in the SQL (-1: no limit), never bound: SQLite (3.54)
    reads a bound LIMIT's value when it plans and so marks the statement stale at every
    bind, which makes it prepare the whole statement again at each execution (+8% of the
    one-to-many embedding's instructions, +19% of a plain 100-row GET's; bench/README.md).
    A page's limit is part of its plan (routes.read_plan), so the text stays one per plan;
    OFFSET, which SQLite does not read when it plans, stays bound so that pages of one
    size share one prepared statement."""
    return f" LIMIT {-1 if limit is None else int(limit):d}"


@functools.lru_cache(maxsize=1024)
def group_by(table: Table, select: tuple) -> str:
    """PostgREST's implied GROUP BY: with an aggregate in select, every other selected column
    groups the rows (by its position in the result)."""
    if not any(type(item) is SelectItem and item.aggregate for item in select):
        return ""
    positions, n = [], 0
    for item in select:
        if type(item) is Embed and item.spread:  # its width is its own select's
            raise QueryError("aggregates beside a spread embedding are not supported",
                             details=f"...{item.name}")
        width = len(table.columns) if type(item) is Star else 1
        # an embedding groups like a column (PostgREST: its one JSON value per group)
        if type(item) in (Star, Embed) or not item.aggregate:
            positions.extend(range(n + 1, n + width + 1))
        n += width
    return " GROUP BY " + ", ".join(map(str, positions)) if positions else ""


def build_count(table: Table, query) -> Statement:
    """SELECT count(*) over the query's filters and its embeddings' !inner / is.null (ignores
    the rest of select, order, limit): the rows the page is taken from."""
    params: list = []
    where = _rows_where(table, query, params)
    return _checked("SELECT count(*) FROM " + table.quoted + where, params,
                    (OutputColumn("count"),))


# --------------------------------------------------------------------------
# Statements prepared per query shape (query.query_shape): built once with a marker text in
# place of each lifted filter value, then bound per request. Only valid where the SQL text
# cannot depend on the value: see `value_binder`.

_SLOT_MARK = "\x00sqlite-rest-slot-" + secrets.token_hex(8) + "-"


def slot_text(index: int) -> str:
    """The marker standing for lifted value `index` while a shape's statement is built
    (a random per-process text that no request can guess, checked to occur exactly once)."""
    return _SLOT_MARK + str(index) + "\x00"


def _as_text(text: str) -> str:
    return text


def value_binder(column: Column):
    """text -> bound value for a one-value comparison (eq, gt, …) on a plain `column`, or
    None when the SQL text depends on the value: a column without affinity compares a
    numeric-looking value as number *or* text (`col IN (?, ?)`)."""
    affinity = column.affinity
    if affinity == "TEXT":
        return _as_text
    if affinity in _NUMERIC_AFFINITIES:
        return functools.partial(_coerced_value, affinity=affinity, column=column)
    return None


def _coerced_value(text: str, affinity: str, column: Column):
    return _coerce(text, affinity, column)[0]


class ShapeStatement:
    """A statement built for a query shape; `params(values)` binds one request's values."""

    __slots__ = ("sql", "columns", "_template", "_slots")

    def __init__(self, sql: str, columns: tuple, template: list, slots: tuple):
        self.sql = sql
        self.columns = columns
        self._template = template
        self._slots = slots  # ((parameter index, binder), …) in lifted-value order

    def params(self, values) -> list:
        params = self._template.copy()
        for (index, binder), text in zip(self._slots, values):
            params[index] = binder(text)
        return params


def shape_statement(table: Table, statement: Statement,
                    slot_columns: tuple[str, ...]) -> ShapeStatement | None:
    """Turn a statement built with `slot_text(i)` for lifted value i (on column
    slot_columns[i]) into a ShapeStatement, or None when the shape cannot be prepared (a
    marker is not exactly one parameter, or the column has no affinity)."""
    params = statement.params
    slots = []
    for i, name in enumerate(slot_columns):
        marker = slot_text(i)
        positions = [k for k, p in enumerate(params) if type(p) is str and p == marker]
        column = table.by_name.get(name)
        if len(positions) != 1 or column is None:
            return None
        binder = value_binder(column)
        if binder is None:
            return None
        slots.append((positions[0], binder))
    return ShapeStatement(statement.sql, statement.columns, list(params), tuple(slots))


# --------------------------------------------------------------------------
# Writes


def _to_sql_value(value, column_name: str):
    """A JSON body value -> an SQLite value."""
    t = type(value)
    if t is str or t is float or value is None:
        return value
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise PayloadError(f"integer out of range for column {column_name!r}",
                           details=str(value), hint="integers must fit in 64 bits")
    if t is bool:
        return 1 if value else 0
    if t is dict or t is list:
        return orjson.dumps(value).decode()
    raise PayloadError(f"unsupported value for column {column_name!r}")


def _writable_column(table: Table, name: str) -> Column:
    column = table.by_name.get(name)
    if column is None:
        raise BodyColumnError(f"Could not find the '{shown_text(name)}' column of '{table.name}' "
                              "in the schema cache",
                              hint=f"columns of {table.name}: "
                                   f"{', '.join(c.name for c in table.columns)}")
    if column.generated:
        raise BodyColumnError(f"column '{name}' of '{table.name}' is generated "
                              "and cannot be written")
    return column


def _returning(table: Table, returning, check=None) -> tuple[str, tuple, tuple]:
    """` RETURNING …`; with `check` (a logic tree: permissions' WITH CHECK, roles.md) a last
    column CHECK_COLUMN that is 1 when the written row passes it."""
    if returning is None and check is None:
        return "", (), ()
    sql, params, outputs = (compile_select(table, tuple(returning)) if returning is not None
                            else ("", (), ()))
    if check is not None:
        check_params: list = list(params)
        check_sql = "COALESCE((" + _logic_sql(table, check, check_params) + "), 0)"
        sql = (sql + ", " if sql else "") + check_sql + " AS " + quote_identifier(CHECK_COLUMN)
        params = tuple(check_params)
        outputs = outputs + (OutputColumn(CHECK_COLUMN),)
    return " RETURNING " + sql, params, outputs


#: The RETURNING column of a write's row-level security check (see `_returning`).
CHECK_COLUMN = "__sqlite_rest_check"


def _conflict_clause(table: Table, columns: list[Column], on_conflict, resolution,
                     update_where: str = "") -> str:
    if resolution is None:
        return ""
    if resolution not in ("merge", "ignore"):
        raise ValueError(f"resolution must be 'merge' or 'ignore', not {resolution!r}")
    if on_conflict:
        target = tuple(_column(table, name).name for name in on_conflict)
    else:
        target = table.primary_key
    if target:
        if table.kind == "table" and frozenset(target) not in {frozenset(k) for k in
                                                               table.unique_keys}:
            raise ConflictTargetError(
                "there is no unique or exclusion constraint matching the ON CONFLICT "
                "specification",
                hint="on_conflict must name the primary key or a UNIQUE constraint: " +
                     "; ".join(",".join(k) for k in table.unique_keys))
        target_sql = "(" + ", ".join(quote_identifier(n) for n in target) + ")"
    elif resolution == "merge":
        raise ConflictTargetError(f"table {table.name} has no primary key to merge on",
                                  hint="pass ?on_conflict=<unique columns>")
    else:
        target_sql = ""
    if resolution == "ignore":
        return " ON CONFLICT" + target_sql + " DO NOTHING"
    updates = [c for c in columns if c.name not in target] or \
        [table.by_name[target[0]]]
    return (" ON CONFLICT" + target_sql + " DO UPDATE SET " +
            ", ".join(f"{c.quoted} = excluded.{c.quoted}" for c in updates) + update_where)


def build_insert(table: Table, rows: list[dict], *, columns: tuple[str, ...] | None = None,
                 on_conflict: tuple[str, ...] | None = None, resolution: str | None = None,
                 missing_default: bool = False, returning=None, update_where=None,
                 check=None) -> list[BatchStatement]:
    """INSERT statements for a body (one object = a list of one).

    columns: `?columns=` — only these keys are read; absent keys are NULL, or
        the column DEFAULT with missing_default.
    Without columns every object must have the keys of the first (PostgREST's
    rule), except with missing_default, where absent keys take the DEFAULT.
    resolution: None (plain INSERT), "merge" (DO UPDATE) or "ignore" (DO NOTHING),
        on the on_conflict columns (default: the primary key).
    returning: select items for RETURNING (None = no RETURNING).
    update_where (roles): a logic tree an existing row must pass to be merged
        (`DO UPDATE … WHERE`); check (roles): see `_returning`.
    Consecutive rows with the same key set share one BatchStatement, so
    input order (and RETURNING order) is kept. Run them all in one transaction.
    """
    if not rows:
        return []
    returning_sql, returning_params, outputs = _returning(table, returning, check)
    where_sql, where_params = "", ()
    if update_where is not None and resolution == "merge":
        params_list: list = []
        where_sql = " WHERE " + _logic_sql(table, update_where, params_list)
        where_params = tuple(params_list)
    returning_params = where_params + returning_params
    if columns is not None:
        wanted = [_writable_column(table, name) for name in columns]
    else:
        first = rows[0]
        if type(first) is not dict:
            raise PayloadError("expected a JSON object or an array of objects")
        wanted = _writable_columns(table, tuple(first))
        if not missing_default:
            keys = first.keys()
            for row in rows:
                if type(row) is not dict:
                    raise PayloadError("expected a JSON object or an array of objects")
                if row.keys() != keys:
                    raise PayloadError("All object keys must match",
                                       hint="give every object the same keys, "
                                            "or use ?columns= or Prefer: missing=default")
    statements: list[BatchStatement] = []
    current_key = None
    for row in rows:
        if type(row) is not dict:
            raise PayloadError("expected a JSON object or an array of objects")
        if missing_default:
            if columns is None:
                present = tuple(_writable_column(table, n) for n in row)
            else:
                present = tuple(c for c in wanted if c.name in row)
        else:
            present = tuple(wanted)
        values = tuple(_to_sql_value(row.get(c.name), c.name) for c in present)
        key = tuple(c.name for c in present)
        if key != current_key:
            statements.append(BatchStatement(
                _insert_sql(table, present, on_conflict, resolution, where_sql) +
                returning_sql,
                [], outputs))
            current_key = key
        statements[-1].params_seq.append(values + returning_params)
    return statements


@functools.lru_cache(maxsize=1024)
def _writable_columns(table: Table, names: tuple[str, ...]) -> tuple[Column, ...]:
    return tuple(_writable_column(table, name) for name in names)


@functools.lru_cache(maxsize=1024)
def _insert_sql(table: Table, present: tuple[Column, ...], on_conflict, resolution,
                update_where: str = "") -> str:
    """INSERT text for one key set (cached: the same body shape gives the same SQL)."""
    head = "INSERT INTO " + table.quoted
    if not present:  # an empty object: every column takes its DEFAULT, nothing to merge
        return head + " DEFAULT VALUES"
    body = (" (" + ", ".join(c.quoted for c in present) + ") VALUES (" +
            ", ".join("?" * len(present)) + ")")
    return head + body + _conflict_clause(table, list(present), on_conflict, resolution,
                                          update_where)


def build_update(table: Table, values: dict, filters, *, returning=None,
                 columns: tuple[str, ...] | None = None,
                 missing_default: bool = False, check=None) -> Statement:
    """UPDATE … SET … WHERE <filters> [RETURNING …] (columns restricts the keys; a column it
    names that the body lacks is NULL, or its DEFAULT with missing_default)."""
    if type(values) is not dict:
        raise PayloadError("expected a JSON object")
    names = columns if columns is not None else tuple(values)
    targets = [_writable_column(table, name) for name in names]
    if not targets:
        raise PayloadError("nothing to update", hint="send at least one column")
    params: list = []
    assignments = []
    for c in targets:
        if missing_default and c.name not in values:
            # The schema's own DEFAULT expression (trusted SQL text); UPDATE has no DEFAULT.
            assignments.append(f"{c.quoted} = {c.default if c.default is not None else 'NULL'}")
        else:
            assignments.append(c.quoted + " = ?")
            params.append(_to_sql_value(values.get(c.name), c.name))
    sql = "UPDATE " + table.quoted + " SET " + ", ".join(assignments)
    sql += build_where(table, filters, params)
    returning_sql, returning_params, outputs = _returning(table, returning, check)
    params.extend(returning_params)
    return _checked(sql + returning_sql, params, outputs)


def build_delete(table: Table, filters, *, returning=None) -> Statement:
    """DELETE FROM … WHERE <filters> [RETURNING …]."""
    params: list = []
    sql = "DELETE FROM " + table.quoted + build_where(table, filters, params)
    returning_sql, returning_params, outputs = _returning(table, returning)
    params.extend(returning_params)
    return _checked(sql + returning_sql, params, outputs)


def primary_key_values(table: Table, filters) -> dict | None:
    """For PUT: {pk column: value} when the filters are exactly one `eq` per
    primary-key column (and nothing else), else None. Values are coerced like
    filter values, so they compare equal to the body's JSON values."""
    if not table.primary_key or type(filters) is not And:
        return None
    found = {}
    for item in filters.items:
        if (type(item) is not Filter or item.op != "eq" or item.negated or item.quantifier
                or item.column.json_path or item.column.name not in table.primary_key
                or item.column.name in found):
            return None
        column = table.by_name[item.column.name]
        found[column.name] = _coerce(item.value, column.affinity, column)[0]
    if len(found) != len(table.primary_key):
        return None
    return found
