"""POST, PATCH, PUT and DELETE on `/<table>`.

Every write runs inside a ``BEGIN IMMEDIATE`` transaction, in a SAVEPOINT of its own when a
group commit takes several (db.py: `Database.write`), and the response is sent only after
COMMIT. Checks that can fail after the SQL ran (max-affected, a singular Accept) raise inside
the transaction, so the request's writes are rolled back.
"""
from __future__ import annotations

import csv
import functools
import io
import re
from urllib.parse import parse_qsl, quote

import orjson
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request

from ..responses import CORS_HEADERS, ApiResponse
from ..auth.policy import ACCESS_ENVIRON, ROLE_ENVIRON
from ..errors import api_error
from .query import (INT64_MAX, INT64_MIN, And, ColumnRef, Filter, SelectItem, has_aggregates,
                    int64, shown_text)
from .positions import commit_headers
from .replica_reads import refuse_write
from .embedding import check_embedded, embedded_tables, embeds_under_role
from .representation import CONTENT_TYPES, negotiate, render, shape_of, singular
from .sql import build_delete, build_insert, build_update

#: Status of a successful write: (method, return=representation?) -> HTTP status.
WRITE_STATUS = {
    ("POST", False): 201, ("POST", True): 201,
    ("PATCH", False): 204, ("PATCH", True): 200,
    ("DELETE", False): 204, ("DELETE", True): 200,
    ("PUT", False): 204, ("PUT", True): 200,
}

#: What PostgreSQL would call the statement (for the 25006 read-only message).
SQL_VERB = {"POST": "INSERT", "PATCH": "UPDATE", "PUT": "INSERT", "DELETE": "DELETE"}

_RESOLUTION = {"merge-duplicates": "merge", "ignore-duplicates": "ignore"}
#: last_insert_rowid while no row has been inserted (a rowid no table uses in practice).
_NO_INSERT = INT64_MIN


# -- request bodies --------------------------------------------------------------------

_BODY_MEDIA = {
    "application/json": "json",
    "application/vnd.pgrst.object+json": "json",
    "application/vnd.pgrst.object": "json",
    "application/vnd.pgrst.array+json": "json",
    "text/csv": "csv",
    "application/x-www-form-urlencoded": "form",
}


@functools.lru_cache(maxsize=256)
def _content_kind_of(content_type: str | None) -> str:
    if not content_type:
        return "json"
    kind = _BODY_MEDIA.get(content_type.split(";", 1)[0].strip().lower())
    if kind is None:
        raise api_error("unsupported_content_type", content_type=content_type[:100])
    return kind


def _body_bytes(environ, max_bytes: int) -> bytes:
    """The raw body, read once (a write planned again after a schema change reads it again:
    routes.write_table). A plain Content-Length within the limit is read straight from the
    WSGI stream; anything else (chunked, too large → 413) goes through werkzeug."""
    data = environ.get(BODY_ENVIRON)
    if data is not None:
        return data
    length = environ.get("CONTENT_LENGTH")
    size = int64(length) if length and length.isdigit() else None
    if size is not None and size <= max_bytes:
        data = environ["wsgi.input"].read(size) if size else b""
        if len(data) != size:
            raise ClientDisconnected()
    else:
        slow = Request(environ)
        slow.max_content_length = max_bytes  # werkzeug answers 413 past it
        data = slow.get_data(cache=False)
    environ[BODY_ENVIRON] = data
    return data


#: The environ key of the request body once read (_body_bytes).
BODY_ENVIRON = "sqlite_rest.body"
#: Set in the environ once a write committed (or was forwarded): an error after that point
#: must not make routes.write_table run it again.
WRITTEN_ENVIRON = "sqlite_rest.written"


class SchemaMoved(Exception):
    """A write's transaction found another schema than the one it was planned on
    (SchemaCache.holds): nothing of it ran; routes.write_table plans it again."""


# orjson reads an integer literal beyond its range (-2**63 .. 2**64-1) as a float, silently
# rounded (2**70 -> 1.1805916207174113e+21). A body with a run of 19 digits somewhere is
# scanned for such literals, outside strings; the common body never is.
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{19}")
_JSON_STRING_OR_NUMBER = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"|(-?[0-9]+)((?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)', re.S)


def _refuse_huge_integers(data: bytes) -> None:
    """400 PGRST102 for an integer literal SQLite's 64-bit INTEGER cannot hold (`data` is
    JSON that orjson accepted). Integers from 2**63 to 2**64-1, which orjson keeps as ints,
    are refused by sql._to_sql_value the same way."""
    for m in _JSON_STRING_OR_NUMBER.finditer(data):
        digits = m.group(1)
        if digits is not None and not m.group(2) and int64(digits.decode()) is None:
            raise api_error("invalid_body", message="integer out of range",
                            details=shown_text(digits.decode(), 60),
                            hint=f"integers must fit in 64 bits ({INT64_MIN}..{INT64_MAX}); "
                                 "send a larger number as a string")


def parse_json_body(data: bytes) -> object:
    """A JSON request body; integers beyond 64 bits are refused, never rounded."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise api_error("invalid_body", details=str(exc)[:300]) from None
    if _LONG_DIGIT_RUN.search(data):
        _refuse_huge_integers(data)
    return body


def _read_body(environ, max_bytes: int) -> object:
    """The request body as JSON-like data (dict or list of dicts)."""
    kind = _content_kind_of(environ.get("CONTENT_TYPE"))
    data = _body_bytes(environ, max_bytes)
    if kind == "json":
        if not data.strip():
            raise api_error("invalid_body", details="the request body is empty")
        return parse_json_body(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise api_error("invalid_body", details=f"the body is not UTF-8: {exc}") from None
    if kind == "form":
        return dict(parse_qsl(text, keep_blank_values=True))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise api_error("invalid_body", details="the CSV body has no header row") from None
    except csv.Error as exc:
        raise api_error("invalid_body", details=f"CSV: {exc}") from None
    rows = []
    try:
        for line in reader:
            if not line:
                continue
            if len(line) != len(header):
                raise api_error("invalid_body",
                                message="All lines must have same number of fields",
                                details=f"CSV line {reader.line_num} has {len(line)} fields, "
                                        f"the header has {len(header)}",
                                hint="give every CSV line as many fields as its header")
            # NULL is SQL NULL (PostgREST), and so is an empty field (CSV cannot tell NULL
            # from '').
            rows.append({k: (None if v == "" or v == "NULL" else v) for k, v in zip(header, line)})
    except csv.Error as exc:
        raise api_error("invalid_body", details=f"CSV: {exc}") from None
    return rows


def _objects(body) -> list[dict]:
    if type(body) is dict:
        return [body]
    if type(body) is list and all(type(item) is dict for item in body):
        return body
    raise api_error("invalid_body", message="Expected a JSON object or an array of objects",
                    details=f"got a JSON {type(body).__name__}")


# -- PUT ---------------------------------------------------------------------------------

def _put_key(table, query) -> dict[str, str]:
    """The primary key given by PUT's filters (eq on exactly the key columns)."""
    if query.limit is not None or query.offset is not None:
        raise api_error("put_with_limit")
    if not table.primary_key:
        raise api_error("invalid_put", details=f"{table.name} has no primary key")
    key: dict[str, str] = {}
    for item in query.filters.items:
        if (type(item) is not Filter or item.op != "eq" or item.negated or item.quantifier
                or item.column.json_path or item.column.name in key
                or item.column.name not in table.primary_key):
            raise api_error("invalid_put")
        key[item.column.name] = item.value
    if set(key) != set(table.primary_key):
        raise api_error("invalid_put")
    return key


def _same_key_value(body_value, url_text: str) -> bool:
    if type(body_value) is bool:
        return url_text.lower() in (("true", "1", "t") if body_value else ("false", "0", "f"))
    if type(body_value) is int:
        try:
            return int(url_text) == body_value
        except ValueError:
            return False
    if type(body_value) is float:
        try:
            return float(url_text) == body_value
        except ValueError:
            return False
    return body_value is not None and str(body_value) == url_text


def _put_row(table, query, body, writable=None) -> dict:
    key = _put_key(table, query)
    if type(body) is list:
        if not body:
            raise api_error("invalid_body", message="PUT takes one object",
                            details="got an empty array")
        body = body[0]  # PostgREST puts the first element of an array
    if type(body) is not dict:
        raise api_error("invalid_body", message="Expected a JSON object")
    for name, url_value in key.items():
        if name not in body or not _same_key_value(body[name], url_value):
            raise api_error("put_key_mismatch",
                            details=f"{name}: URL has {url_value!r}, body has "
                                    f"{body.get(name, '<missing>')!r}")
    missing = [c.name for c in table.columns if not c.generated and c.name not in body
               and (writable is None or c.name in writable)]  # roles: its writable columns
    if missing:
        raise api_error("invalid_body",
                        message="You must specify all columns in the payload when using PUT",
                        details="missing: " + ", ".join(missing[:20]))
    return body


def _rls_violation(rule, table, using: bool = False):
    error = api_error("rls_violation", table=table.name,
                      status=401 if rule.anonymous else 403)
    if using:  # PostgreSQL's words for an ON CONFLICT DO UPDATE on a row USING hides
        error.message = ("new row violates row-level security policy (USING expression) for "
                         f"table {table.name}")
    return error


# -- the write --------------------------------------------------------------------------

def _sqlite_rank(value) -> tuple:
    """A sort key in SQLite's order of types: NULL, numbers, text, blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)  # code point order is UTF-8 byte order: SQLite's BINARY collation
    return (3, bytes(value))


def _sorted_rows(rows: list, order, width: int) -> list:
    """Rows sorted by their trailing order keys (as ORDER BY with PostgREST's NULL placement
    would), the keys dropped. Stable sorts from the last term to the first."""
    rows = list(rows)
    for i in reversed(range(len(order))):
        term = order[i]
        nulls_first = term.descending if term.nulls_first is None else term.nulls_first
        col = width + i
        present = [r for r in rows if r[col] is not None]
        absent = [r for r in rows if r[col] is None]
        present.sort(key=lambda r: _sqlite_rank(r[col]), reverse=term.descending)
        rows = absent + present if nulls_first else present + absent
    return [r[:width] for r in rows]


def _location(table, row: tuple, key_columns) -> str:
    parts = [f"{quote(name, safe='')}=eq.{quote(str(value), safe='')}"
             for name, value in zip(key_columns, row)]
    return "/" + quote(table.name, safe="") + "?" + "&".join(parts)


def write(state, environ, table, prefs, method: str, query, schema=None) -> ApiResponse:
    """``schema``: the schema ``table`` is from, checked inside the write's transaction
    (SchemaMoved when it moved); None: not checked (the caller asked the database first)."""
    config = state.config
    if state.replica and config.forward_writes:
        from .forward import forward_write
        body = _body_bytes(environ, config.max_body_bytes)
        environ[WRITTEN_ENVIRON] = True  # the primary may have written it, whatever comes back
        return forward_write(state, environ, body)
    if state.replica:  # a read replica: the primary takes the writes
        refuse_write(config, SQL_VERB[method], "this server reads a replica of the database")
    return_ = prefs.return_
    representation = return_ == "representation"
    accept = environ.get("HTTP_ACCEPT")
    # Without a representation only the object media type matters: it still asks for exactly
    # one row (PostgREST answers 406 and rolls back a DELETE that matched five).
    media = negotiate(accept) if representation or (accept and "pgrst.object" in accept) \
        else None
    if method in ("PATCH", "DELETE"):
        if query.limit is not None or query.offset is not None:
            raise api_error("query_parse",
                            message=f"limit/offset are not supported on {method}",
                            hint="filter the rows to change instead")
        if config.refuse_filterless_writes and not query.filters.items:
            raise api_error("filterless_write", verb=SQL_VERB[method])

    # PostgREST ignores resolution= on a table with no key to conflict on (not echoed either)
    resolution = prefs.resolution if method == "POST" and (
        table.primary_key or query.on_conflict) else None
    if representation and has_aggregates(query.select):
        raise api_error("aggregates_disabled")
    # -- roles (--permissions-file, design/roles.md): the role's TableRule (policy.ROLE_ENVIRON)
    # restricts the columns named, the rows touched and the rows written
    rule, claims = environ.get(ROLE_ENVIRON) or (None, None)
    row_filter = check = None
    filters = query.filters
    if rule is not None:
        rule.check_query(table.name, query)
        if query.columns is not None:
            rule.check_writable(table.name, query.columns)
        row_filter, _readable = rule.read_filters(claims)
        if method != "DELETE":
            check = rule.write_check(claims)
        if row_filter is not None and method in ("PATCH", "DELETE"):
            filters = And((filters, row_filter))
    # --------------------------------------------------------------------------------------
    if representation:
        names = embedded_tables(query.select, table)
        if names:
            check_embedded(state.allowed_tables, table, names)
    returning = query.select if representation else None
    if rule is not None and returning is not None:
        returning = rule.readable_select(table, embeds_under_role(
            table, rule, returning, environ[ACCESS_ENVIRON].rule, claims))
    # order= sorts the rows a write returns (PostgREST); RETURNING has no ORDER BY, so the
    # order keys ride along as extra columns, sorted on here and dropped.
    order = query.order if representation else ()
    if order:
        returning = tuple(returning) + tuple(
            SelectItem(term.column, alias=f"__order_{i}") for i, term in enumerate(order))
    location_columns = None
    if method == "POST" and return_ == "headers-only" and table.primary_key and (
            rule is None or rule.read_columns is None
            or rule.read_columns.issuperset(table.primary_key)):  # roles: no hidden key
        location_columns = table.primary_key
        returning = tuple(SelectItem(ColumnRef(name)) for name in table.primary_key)

    if method == "DELETE":
        statements = [build_delete(table, filters, returning=returning)]
    else:
        body = _read_body(environ, config.max_body_bytes)
        if rule is not None and rule.write_columns is not None and query.columns is None:
            rule.check_writable(table.name, {key for row in (
                body if type(body) is list else [body]) if type(row) is dict for key in row})
        if method == "POST":
            statements = build_insert(
                table, _objects(body), columns=query.columns, on_conflict=query.on_conflict,
                resolution=_RESOLUTION.get(resolution),
                missing_default=prefs.missing == "default", returning=returning,
                update_where=row_filter, check=check)
        elif method == "PUT":
            row = _put_row(table, query, body,
                           rule.write_columns if rule is not None else None)
            statements = build_insert(table, [row], on_conflict=table.primary_key,
                                      resolution="merge", returning=returning,
                                      update_where=row_filter, check=check)
        else:  # PATCH
            if type(body) is list and len(body) <= 1:  # PostgREST: [] and [{…}] update too
                body = body[0] if body else {}
            if type(body) is not dict:
                raise api_error("invalid_body", message="PATCH takes one JSON object",
                                details=f"got a JSON {type(body).__name__}")
            if not body:  # nothing to set: PostgREST answers as for no matching row
                statements = []
            else:
                statements = [build_update(table, body, filters, returning=returning,
                                           columns=query.columns,
                                           missing_default=prefs.missing == "default",
                                           check=check)]

    strict = prefs.handling == "strict"
    # PostgREST checks max-affected on PATCH and DELETE only
    max_affected = prefs.max_affected if strict and method in ("PATCH", "DELETE") else None
    # A merging upsert answers 201 only when it inserted a row (PostgREST; ignore-duplicates
    # is always 201): SQLite moves last_insert_rowid on an insert, never on the update or
    # skip of a conflict.
    upsert = method == "PUT" or (method == "POST" and resolution == "merge-duplicates")
    watch_inserts = upsert and representation and not table.without_rowid
    columns = statements[0].columns if representation and statements else ()
    if check is not None and columns:
        columns = columns[:-1]  # the check column (sql.CHECK_COLUMN)
    # roles: an upsert must not skip a conflicting row the role cannot see (USING)
    guard_merge = row_filter is not None and (
        method == "PUT" or (method == "POST" and resolution == "merge-duplicates"))
    if order and columns:
        columns = columns[:-len(order)]

    schema_cache = state.schema_cache

    def work(conn) -> tuple[list, int, bytes]:
        """The request's statements and checks, inside the write transaction (group commit
        may run it on another request's thread: nothing here may touch Flask's request)."""
        rows: list = []
        affected = 0
        if schema is not None and conn is not None and not schema_cache.holds(conn, schema):
            raise SchemaMoved()
        if watch_inserts and conn is not None:
            conn.set_last_insert_rowid(_NO_INSERT)
        for statement in statements:
            params_seq = getattr(statement, "params_seq", None)
            for params in (params_seq if params_seq is not None else (statement.params,)):
                if check is not None:
                    got = conn.execute(statement.sql, params).fetchall()
                    for row in got:
                        if not row[-1]:
                            raise _rls_violation(rule, table)
                    if returning is not None:
                        rows.extend(row[:-1] for row in got)
                elif returning is not None:
                    rows.extend(conn.execute(statement.sql, params).fetchall())
                else:
                    conn.execute(statement.sql, params)
                changed = conn.changes()
                if guard_merge and changed == 0:
                    raise _rls_violation(rule, table, using=True)
                affected += changed
        if max_affected is not None and affected > max_affected:
            raise api_error("max_affected_exceeded",
                            details=f"The query affects {affected} rows")
        if order:
            rows = _sorted_rows(rows, order, len(columns))
        if singular(media) and (len(rows) if representation else affected) != 1:
            raise api_error("singular_not_one",
                            details=f"The result contains {len(rows) if representation else affected} rows")
        body = render(media, shape_of(columns), rows) if representation else b""
        inserted = (conn is not None and conn.last_insert_rowid() != _NO_INSERT) \
            if watch_inserts else None
        return rows, affected, body, inserted

    if statements:
        (rows, affected, body_bytes, inserted), commit_result = state.db.write(
            work, rollback=prefs.tx == "rollback")
        environ[WRITTEN_ENVIRON] = True  # committed: never run again (routes.write_table)
    else:  # an empty PATCH (or POST of []) writes nothing: no transaction, no position
        (rows, affected, body_bytes, inserted), commit_result = work(None), None
    headers = list(CORS_HEADERS)
    headers.extend(commit_headers(commit_result))
    if location_columns and rows:
        headers.append(("Location", _location(table, rows[0], location_columns)))
    # PostgREST: PATCH's range spans the rows it changed, POST's and DELETE's none (only the
    # count, when asked for); PUT has no Content-Range.
    total = str(affected) if prefs.count is not None else "*"
    if method == "PATCH" and affected:
        headers.append(("Content-Range", f"0-{affected - 1}/{total}"))
    elif method != "PUT":
        headers.append(("Content-Range", f"*/{total}"))
    skip = ("max-affected",) if not strict else ()
    if resolution is None:
        skip += ("resolution",)
    applied = prefs.applied(method, extra_skip=skip)
    if applied:
        headers.append(("Preference-Applied", applied))
    status = WRITE_STATUS[(method, representation)]
    if inserted is not None:
        status = 201 if inserted else 200
    if representation:
        return ApiResponse(body_bytes, status, headers, CONTENT_TYPES[media])
    return ApiResponse.without_body(status, headers)
