"""The `/<table>` endpoint: reads (GET, HEAD), writes (POST, PATCH, PUT, DELETE; in
writes.py), OPTIONS (the verbs of the table in `Allow`) and the CORS preflight (OPTIONS with
Access-Control-Request-Method).

Order of checks on every request: auth -> allow-list -> schema cache -> query -> SQL. A table
that is not allow-listed answers exactly like a missing one (404 PGRST205), so the API never
reveals which tables exist.

Hot-path notes: one view function per route (no before/after_request hooks). Every GET is
served by one path from a `ReadPlan`, cached per query *shape* (the query string with its filter
values lifted out, query.query_shape), so `id=eq.1` and `id=eq.2` share the parsed query, the SQL
text and the output shape and only bind their values (a query without a shareable shape, or with
`Prefer: count`, has a plan of its own); statements are cached per connection by apsw; JSON is
written by orjson.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re

import apsw
import orjson

from ..responses import CORS_HEADERS, ApiResponse
from ..auth.authenticator import access_denied, bearer_token
from ..auth.policy import ACCESS_ENVIRON, ROLE_ENVIRON, _claim_text, claim_at
from ..errors import api_error, closest_name
from .prefer import DEFAULT as DEFAULT_PREFERENCES, parse_prefer
from .query import (INT64_MAX, And, Filter, Not, RequestError, has_aggregates, int64,
                    lifted_columns, parse_read_query, query_pairs, query_shape,
                    shape_pairs, shown_text)
from .representation import CONTENT_TYPES, JSON, negotiate, render, shape_of
from .sql import build_count, build_select, shape_statement, slot_text
from .embedding import check_embedded, embedded_tables, embeds_under_role, json_body_sql
from .positions import format_txid
from .replica_reads import replica_snapshot, replica_txid
from .writes import WRITTEN_ENVIRON, SchemaMoved, write

METHODS = ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]

PREFLIGHT_HEADERS = CORS_HEADERS + (
    ("Access-Control-Allow-Methods", ", ".join(METHODS)),
    ("Access-Control-Max-Age", "86400"),
    ("Allow", ", ".join(METHODS)),
)
DEFAULT_ALLOWED_REQUEST_HEADERS = (
    "Authorization, Content-Type, Accept, Prefer, Range, Range-Unit, apikey, "
    "Accept-Profile, Content-Profile, X-Client-Info"
)

_RANGE = re.compile(r"\s*(?:items\s*=\s*)?([0-9]+)\s*-\s*([0-9]*)\s*\Z")


def make_table_view(app, state):
    """The `/<table>` view, bound to one app's state: ``view(environ, table_name)`` ->
    ApiResponse. Called by api/dispatch.py (the WSGI environ is all it reads)."""
    authenticator = state.authenticator
    allowed_tables = state.allowed_tables
    schema_cache = state.schema_cache
    db = state.db
    policy = state.policy

    def table_endpoint(environ, table_name: str):
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            # a browser's CORS preflight: answered for any path and without a token, as
            # PostgREST's CORS middleware does (the request that follows is checked)
            return _preflight(environ)
        if policy is None:
            if not authenticator.disabled:
                authenticator.authenticate(app, environ.get("HTTP_AUTHORIZATION"))
            rule = None
        else:  # roles (auth/policy.py): the role's rule for this table, or 404 as unknown
            rule, claims = role_rule(app, authenticator, policy, environ, table_name, method)
            # in the environ, so that every read and write path of this request finds it
            environ[ROLE_ENVIRON] = (rule, claims)
        if table_name not in allowed_tables or (policy is not None and rule is None):
            access_denied.send(app, table=table_name)
            raise unknown_table(state, environ, table_name)
        # WSGI servers join repeated headers with ", ", so environ holds every Prefer value.
        prefer = environ.get("HTTP_PREFER")
        prefs = parse_prefer([prefer]) if prefer else DEFAULT_PREFERENCES
        if state.replica and (method == "GET" or method == "HEAD"):
            # One read transaction for the schema and the rows: one snapshot, and one round of
            # VFS callbacks (each takes the GIL back from the workers' other threads).
            with replica_snapshot(state, environ, db.reader()) as read_at, db.read() as conn:
                schema = schema_cache.get(conn)
                table = table_or_unknown(state, environ, schema, table_name)
                return _read(state, environ, table, prefs, method == "HEAD", (conn, read_at))
        if method == "GET" or method == "HEAD":
            return read_table(state, environ, table_name, prefs, method == "HEAD")
        if method == "OPTIONS":
            schema = schema_cache.get(db.reader())
            table = table_or_unknown(state, environ, schema, table_name)
            return _options(table, rule)
        return write_table(state, environ, table_name, prefs, method,
                           query_of(environ.get("QUERY_STRING", "")))

    return table_endpoint


#: Times a request is planned on a schema that then moved (a migration running) before a
#: read answers with its last attempt and a write with 503 PGRST002.
SCHEMA_RACE_ATTEMPTS = 10


def read_table(state, environ, table_name: str, prefs, head: bool) -> ApiResponse:
    """A GET or HEAD of a table (on a primary), planned on the cached schema and confirmed
    once its statements ran (api/schema.SchemaCache.confirm): no schema query per read while
    the database is unchanged. A read that raced a schema change, or failed on one (a column
    added since: 400 from a stale plan), runs again on the new schema."""
    conn = state.db.reader()  # the connection _read's statements run on (per thread)
    cache = state.schema_cache
    schema = cache.planned(conn)
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            table = table_or_unknown(state, environ, schema, table_name)
            response = _read(state, environ, table, prefs, head)
        except Exception:  # noqa: BLE001 - raised again unless the schema moved
            # It may have been raised before any statement ran: ask the database itself.
            current = _schema_now(cache, conn, schema)
            if current is schema or attempt == SCHEMA_RACE_ATTEMPTS - 1:
                raise
        else:
            current = cache.confirm(conn, schema)
            # Still moving after every attempt: the last one answers, planned on a schema
            # read just before it, as every read was before #11.
            if current is schema or attempt == SCHEMA_RACE_ATTEMPTS - 1:
                return response
        schema = current
    raise AssertionError("unreachable")  # the last attempt returns or raises


def write_table(state, environ, table_name: str, prefs, method: str, query) -> ApiResponse:
    """A POST, PATCH, PUT or DELETE of a table, planned on the cached schema; its transaction
    checks that schema before its first statement (writes.write, SchemaCache.holds): no read
    transaction for the schema, and a PRAGMA inside the write's own only when its data version
    moved (every commit moves it, its own too). A write that found the schema moved, or failed
    on a stale plan, is planned again on the new schema (its body is read once); one that
    still finds it moving after SCHEMA_RACE_ATTEMPTS answers 503 PGRST002."""
    reader = state.db.reader()
    cache = state.schema_cache
    schema = cache.planned(reader)
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            table = table_or_unknown(state, environ, schema, table_name)
            return write(state, environ, table, prefs, method, query, schema)
        except SchemaMoved:  # nothing of it ran
            current = cache.get(reader)
        except Exception:  # noqa: BLE001 - raised again unless the schema moved
            if environ.get(WRITTEN_ENVIRON):  # failed after its COMMIT: never twice
                raise
            current = _schema_now(cache, reader, schema)
            if current is schema or attempt == SCHEMA_RACE_ATTEMPTS - 1:
                raise  # its own error, not a 503, even when the schema moved meanwhile
        schema = current
    raise api_error("schema_changing")


def _schema_now(cache, conn, schema):
    """The schema as the database has it, or ``schema`` when asking fails: the read's own
    error is then the one to answer."""
    try:
        return cache.get(conn)
    except Exception:  # noqa: BLE001
        return schema


def table_or_unknown(state, environ, schema, table_name: str):
    """The table of ``schema`` named ``table_name``, or 404 PGRST205 (`unknown_table`)."""
    table = schema.table(table_name)
    if table is None:
        raise unknown_table(state, environ, table_name, schema)
    return table


def unknown_table(state, environ, table_name: str, schema=None):
    """404 PGRST205, with PostgREST's hint naming the closest table - among those the caller
    could use only (allow-listed, and under roles with a rule for the role): the answer
    depends on the name asked and the caller's own tables, never on whether the name exists
    outside them, so a hidden table answers exactly like a missing one."""
    name = table_name[:200]
    if schema is None:
        schema = state.schema_cache.get(state.db.reader())
    usable = [n for n in state.allowed_tables if schema.table(n) is not None]
    if state.policy is not None:
        access = environ.get(ACCESS_ENVIRON)
        usable = [n for n in usable if access is not None and access.rule(n) is not None]
    close = closest_name(name, sorted(usable))
    return api_error("unknown_table", table=name,
                     hint=f"Perhaps you meant the table '{close}'" if close else None)


def _options(table, rule) -> ApiResponse:
    """PostgREST's answer to a plain OPTIONS: `Allow` lists the verbs the relation supports;
    under roles only those the role's rule allows too, which the role learns anyway by trying
    them (42501)."""
    verbs = table.verbs
    if rule is not None:
        verbs = [v for v in verbs if ("GET" if v == "HEAD" else v) in rule.verbs]
    return ApiResponse.without_body(200, CORS_HEADERS + (
        ("Allow", ",".join(("OPTIONS", *verbs))),))


def _preflight(environ) -> ApiResponse:
    requested = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS")
    if requested and ("\r" in requested or "\n" in requested or len(requested) > 2000):
        requested = None  # echoed unvalidated by ApiResponse: never echo anything odd
    headers = PREFLIGHT_HEADERS + (
        ("Access-Control-Allow-Headers", requested or DEFAULT_ALLOWED_REQUEST_HEADERS),)
    return ApiResponse(b"", 200, headers)


def page_bounds(query, range_header: str | None) -> tuple[int, int | None]:
    """(offset, limit) from ?offset/?limit intersected with a `Range: first-[last]` header."""
    offset = query.offset or 0
    limit = query.limit
    if range_header is None:
        return offset, limit
    m = _RANGE.match(range_header)
    if m is None:
        raise api_error("invalid_range",
                        details=f"Range header {range_header[:100]!r} is not 'first-last' or "
                                "'first-'",
                        hint="send e.g. Range: 0-9 with Range-Unit: items")
    first = int64(m.group(1))
    last = int64(m.group(2)) if m.group(2) else None
    if first is None or (m.group(2) and last is None):
        raise api_error("invalid_range",
                        details=f"Range header {shown_text(range_header)!r}: a row index is at "
                                f"most {INT64_MAX}",
                        hint="send e.g. Range: 0-9 with Range-Unit: items")
    if last is not None and last < first:
        raise api_error("invalid_range", details="The lower boundary must be lower than or "
                        "equal to the upper boundary in the Range header.")
    lower = max(first, offset)
    upper_candidates = [u for u in (last, offset + limit - 1 if limit is not None else None)
                        if u is not None]
    if not upper_candidates:
        return lower, None
    upper = min(upper_candidates)
    # 0-9223372036854775807 is 2**63 rows: more than SQLite's LIMIT can say, and all there are.
    return lower, min(max(upper - lower + 1, 0), INT64_MAX)


def content_range(offset: int, returned: int, total: int | None) -> str:
    """`first-last/total`, computed from the rows actually returned."""
    total_text = "*" if total is None else str(total)  # PostgREST: no count, no total
    if returned == 0:
        return "*/" + total_text
    return f"{offset}-{offset + returned - 1}/{total_text}"


@functools.lru_cache(maxsize=4096)
def query_of(query_string: str):
    """The parsed ReadQuery of a raw query string (cached: repeated URLs skip all parsing).
    Decoding matches werkzeug's request.args: '+' is a space, bad UTF-8 is replaced."""
    return parse_read_query(query_pairs(query_string))


def _limited(query, range_header: str | None, max_rows: int | None) -> tuple[int, int | None]:
    offset, limit = page_bounds(query, range_header)
    if max_rows is not None and (limit is None or limit > max_rows):
        limit = max_rows
    return offset, limit


class ReadPlan:
    """Everything a GET needs but the values it binds: the SELECT (and the count, with
    ``Prefer: count``), the page bounds and the output shape. Plans are cached: per query
    *shape* (the query string with its filter values lifted out, query.query_shape), so
    ``id=eq.1`` and ``id=eq.2`` share one and only bind their values; a query that has no
    shareable shape gets a plan of its own, per query string."""

    __slots__ = ("statement", "count", "offset", "limit", "output", "binds_values",
                 "aggregated", "embedded", "json_sql")

    def __init__(self, statement, count, offset: int, limit: int | None, binds_values: bool,
                 aggregated: bool = False, embedded: frozenset = frozenset()):
        self.aggregated = aggregated  # select has an aggregate (needs --aggregates-enabled)
        self.embedded = embedded  # the tables embeddings read (each must be allow-listed)
        self.statement = statement
        self.count = count
        self.offset = offset
        self.limit = limit
        self.output = shape_of(statement.columns)
        self.binds_values = binds_values  # a ShapeStatement: params(values) of the request
        # With embeddings, SQLite writes the whole JSON body (same parameters): their JSON is
        # spliced in as text instead of passing through Python objects and orjson.
        self.json_sql = (json_body_sql(statement.sql, statement.columns)
                         if "embed" in self.output.kinds else None)

    def params(self, values) -> list:
        return self.statement.params(values) if self.binds_values else self.statement.params


def read_plan(table, query_string: str, range_header: str | None, max_rows: int | None,
              counted: bool, allowed: frozenset | None = None) -> tuple[ReadPlan, tuple]:
    """The plan of a GET and the values it binds. ``allowed``: the allow-list, which every
    embedded table must be in (None: not checked)."""
    if not counted:
        shape, values = query_shape(query_pairs(query_string))
        plan = _shape_plan(table, shape, range_header, max_rows, allowed)
        if plan is not None:
            return plan, values
    return _query_plan(table, query_string, range_header, max_rows, counted, allowed), ()


def _embedded(table, query, allowed) -> frozenset:
    names = frozenset(embedded_tables(query.select, table))
    if names and allowed is not None:
        check_embedded(allowed, table, names)
    return names


@functools.lru_cache(maxsize=4096)
def _shape_plan(table, shape: tuple, range_header: str | None,
                max_rows: int | None, allowed: frozenset | None) -> ReadPlan | None:
    """The plan of a shape, or None when the shape cannot stand for its queries: its
    placeholders do not parse where the values did, or a value is not one bound parameter
    (sql.shape_statement). The query then gets a plan of its own, which reports any error
    in it with its real values."""
    slot_columns = lifted_columns(shape)
    try:
        query = parse_read_query(shape_pairs(shape, map(slot_text, range(len(slot_columns)))))
    except RequestError:
        return None
    embedded = _embedded(table, query, allowed)
    offset, limit = _limited(query, range_header, max_rows)
    statement = shape_statement(
        table, build_select(table, query, limit=limit, offset=offset), slot_columns)
    if statement is None:
        return None
    return ReadPlan(statement, None, offset, limit, binds_values=True,
                    aggregated=has_aggregates(query.select), embedded=embedded)


@functools.lru_cache(maxsize=4096)
def _query_plan(table, query_string: str, range_header: str | None, max_rows: int | None,
                counted: bool, allowed: frozenset | None) -> ReadPlan:
    query = query_of(query_string)
    embedded = _embedded(table, query, allowed)
    offset, limit = _limited(query, range_header, max_rows)
    statement = build_select(table, query, limit=limit, offset=offset)
    count = build_count(table, query) if counted else None
    return ReadPlan(statement, count, offset, limit, binds_values=False,
                    aggregated=has_aggregates(query.select), embedded=embedded)


def _read(state, environ, table, prefs, head: bool, replica_read=None) -> ApiResponse:
    """``replica_read``: (the connection, in its read transaction, the position list) of a
    read replica's request (routes.table_endpoint)."""
    media = negotiate(environ.get("HTTP_ACCEPT"))
    role = environ.get(ROLE_ENVIRON)  # (TableRule, claims) with --permissions-file
    if role is None:
        plan, values = read_plan(table, environ.get("QUERY_STRING", ""),
                                 environ.get("HTTP_RANGE"), state.config.max_rows,
                                 prefs.count is not None, state.allowed_tables)
    else:
        plan, values = role_read_plan(table, *role, environ.get("QUERY_STRING", ""),
                                      environ.get("HTTP_RANGE"), state.config.max_rows,
                                      prefs.count is not None, environ.get(ACCESS_ENVIRON))
    if plan.aggregated and not state.config.aggregates_enabled:
        raise api_error("aggregates_disabled")
    if plan.embedded:  # (the plans above checked it already; a role's plan reads its rules)
        check_embedded(state.allowed_tables, table, plan.embedded)
    offset = plan.offset
    json_sql = plan.json_sql if media == JSON else None
    total = None
    position = None
    if replica_read is not None:  # a read replica: the read names its position
        conn, read_at = replica_read
        rows, returned, body = _fetch(conn, plan, values, json_sql)
        if plan.count is not None:
            total = conn.execute(plan.count.sql, plan.count.params).fetchall()[0][0]
        position = format_txid(replica_txid(conn))  # inside the read: what it read
        read_at.append(position)
    elif plan.count is None:
        rows, returned, body = _fetch(state.db.reader(), plan, values, json_sql)
    else:
        with state.db.read() as conn:  # one snapshot for the page and its count
            rows, returned, body = _fetch(conn, plan, values, json_sql)
            total = conn.execute(plan.count.sql, plan.count.params).fetchall()[0][0]
    if total is not None and offset > total:  # PostgREST: an offset at the end is an empty 206
        raise api_error(
            "invalid_range",
            details=f"An offset of {offset} was requested, but there are only {total} rows.",
            headers={"Content-Range": f"*/{total}"})
    status = 200
    if total is not None and (offset > 0 or offset + returned < total):
        status = 206
    response_headers = [
        ("Content-Range", content_range(offset, returned, total)),
        ("Range-Unit", "items"),
        *CORS_HEADERS,
    ]
    if position is not None:
        response_headers.append(("X-Replication-Txid", position))
    applied = prefs.applied("HEAD" if head else "GET") if prefs.given else None
    if applied:
        response_headers.append(("Preference-Applied", applied))
    if body is None:
        body = render(media, plan.output, rows)  # also checks singular on HEAD
    if head:
        body = b""
    return ApiResponse(body, status, response_headers, CONTENT_TYPES[media])


def _fetch(conn, plan, values, json_sql) -> tuple:
    """(rows, their number, None); with ``json_sql`` (plan.json_sql): ((), the number of
    rows, the JSON body SQLite wrote)."""
    params = plan.params(values)
    if json_sql is not None:
        try:
            text, count = conn.execute(json_sql, params).fetchall()[0]
            return (), count, text.encode()
        except apsw.SQLError:  # a BLOB, which JSON cannot hold: the row path writes base64
            pass
    rows = conn.execute(plan.statement.sql, params).fetchall()
    return rows, len(rows), None


# -- roles (--permissions-file; auth/policy.py, design/roles.md) ------------------------------

def role_access(app, authenticator, policy, environ):
    """The request's `policy.Access`: no token is the anonymous role when the file names one
    (with --auth-disabled every request is)."""
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authenticator.disabled or (bearer_token(authorization) is None
                                  and policy.anonymous is not None):
        return policy.access(None)
    return policy.access(authenticator.authenticate(app, authorization))


def role_rule(app, authenticator, policy, environ, table_name: str, method: str):
    """(the role's TableRule for the table or None, the claims); 42501 for a verb it lacks."""
    access = role_access(app, authenticator, policy, environ)
    environ[ACCESS_ENVIRON] = access
    rule = access.rule(table_name)
    if rule is not None and method != "OPTIONS":
        rule.require_verb(method, table_name)
    return rule, access.claims


def role_read_plan(table, rule, claims, query_string: str, range_header: str | None,
                   max_rows: int | None, counted: bool, access=None) -> tuple[ReadPlan, tuple]:
    """The plan of a GET under a role's rule: the rule's row filter ANDed to the request's,
    `*` expanded to the readable columns, every named column checked. The claim values of
    the row filter are bound like the request's filter values, so a plan serves every user.
    Embeddings apply their own tables' rules (`access`; embedding.embeds_under_role) and
    are planned per role and claims (their row filters bind the claims)."""
    embedded = embedded_tables(query_of(query_string).select, table)
    if embedded:
        if access is None:  # fail closed: an embedding is never read without its tables' rules
            raise RuntimeError("an embedding under roles needs the request's policy.Access")
        return _role_embedding_plan(
            table, rule, access.policy, access.role, _claims_key(claims), query_string,
            range_header, max_rows, counted, frozenset(embedded)), ()
    if not counted:
        shape, values = query_shape(query_pairs(query_string))
        found = _role_shape_plan(table, rule, shape, range_header, max_rows)
        if found is not None:
            plan, claim_paths = found
            if not claim_paths:
                return plan, values
            bound = []
            for path in claim_paths:
                text = _claim_text(claim_at(claims or {}, path))
                if text is None:
                    break  # a claim is missing: the filter matches nothing (below)
                bound.append(text)
            else:
                return plan, values + tuple(bound)
    query = query_of(query_string)
    return _role_query_plan(table, rule, _role_query(table, rule, query, claims),
                            range_header, max_rows, counted), ()


@functools.lru_cache(maxsize=4096)
def _role_embedding_plan(table, rule, policy, role: str, claims_json: bytes, query_string: str,
                         range_header, max_rows, counted, embedded) -> ReadPlan:
    """The plan of a GET with embeddings under a role, per claims (as JSON: hashable), so
    that a token's repeated request skips rewriting and hashing its embeddings."""
    query = _role_query(table, rule, query_of(query_string), json.loads(claims_json),
                        functools.partial(policy.rule, role))
    return _role_query_plan.__wrapped__(table, rule, query, range_header, max_rows, counted,
                                        embedded)


def _claims_key(claims) -> bytes:
    try:
        return orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits (JSON allows it; orjson does not)
        return json.dumps(claims, sort_keys=True).encode()


def _role_query(table, rule, query, claims, rule_of=None):
    """`rule_of(table name)`: the role's rule of another table, for embeddings."""
    rule.check_query(table.name, query)
    select = query.select
    if rule_of is not None:
        select = embeds_under_role(table, rule, select, rule_of, claims)
    select = rule.readable_select(table, select)
    row_filter, _readable = rule.read_filters(claims)
    filters = query.filters if row_filter is None else And(query.filters.items + (row_filter,))
    return dataclasses.replace(query, select=select, filters=filters)


@functools.lru_cache(maxsize=4096)
def _role_query_plan(table, rule, query, range_header, max_rows, counted,
                     embedded=frozenset()) -> ReadPlan:
    offset, limit = _limited(query, range_header, max_rows)
    statement = build_select(table, query, limit=limit, offset=offset)
    count = build_count(table, query) if counted else None
    return ReadPlan(statement, count, offset, limit, binds_values=False,
                    aggregated=has_aggregates(query.select), embedded=embedded)


@functools.lru_cache(maxsize=4096)
def _role_shape_plan(table, rule, shape: tuple, range_header, max_rows):
    """(plan, claim paths bound after the request's values) of a shape under a rule, or None
    (then the query is planned with its values, `_role_query_plan`). The row filter's
    placeholders become slots when each is the whole value of a one-value comparison."""
    slot_columns = lifted_columns(shape)
    try:
        query = parse_read_query(shape_pairs(shape, map(slot_text, range(len(slot_columns)))))
    except RequestError:
        return None
    rule.check_query(table.name, query)
    select = rule.readable_select(table, query.select)
    filters = query.filters
    claim_paths: list = []
    if rule.rows is not None:
        slotted = _slotted(rule.rows.node, len(slot_columns), claim_paths)
        if slotted is None:
            return None
        filters = And(filters.items + (slotted,))
        slot_columns = slot_columns + tuple(column for column, _path in claim_paths)
    query = dataclasses.replace(query, select=select, filters=filters)
    offset, limit = _limited(query, range_header, max_rows)
    statement = shape_statement(
        table, build_select(table, query, limit=limit, offset=offset), slot_columns)
    if statement is None:
        return None
    return (ReadPlan(statement, None, offset, limit, binds_values=True,
                     aggregated=has_aggregates(query.select)),
            tuple(path for _column, path in claim_paths))


_WHOLE_PLACEHOLDER = re.compile(r"\{([^{}]*)\}\Z")


def _slotted(node, first_slot: int, claim_paths: list):
    """The row filter with each `{claim}` value replaced by a slot marker (collecting
    (column, claim path) per slot), or None when a placeholder cannot be a slot."""
    from .operators import OPERATOR_BY_NAME, ValueKind

    t = type(node)
    if t is Filter:
        value = node.value
        if type(value) is tuple:
            return None if any("{" in v for v in value) else node
        if "{" not in value:
            return node
        m = _WHOLE_PLACEHOLDER.match(value)
        if (m is None or node.quantifier or node.column.json_path
                or OPERATOR_BY_NAME[node.op].value is not ValueKind.SCALAR):
            return None
        path = tuple(int(s) if s.isdigit() else s for s in m.group(1).split("."))
        claim_paths.append((node.column.name, path))
        return Filter(node.column, node.op, slot_text(first_slot + len(claim_paths) - 1),
                      node.negated, node.quantifier)
    if t is Not:
        item = _slotted(node.item, first_slot, claim_paths)
        return None if item is None else Not(item)
    items = []
    for i in node.items:
        item = _slotted(i, first_slot, claim_paths)
        if item is None:
            return None
        items.append(item)
    return t(tuple(items))
