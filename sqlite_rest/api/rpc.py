"""`/rpc/<name>`: calls of the functions declared in ``--functions-file`` (functions.py).

- ``POST`` takes the arguments as a JSON object (or a form; an empty body is ``{}``;
  ``Prefer: params=single-object`` passes the whole body to a function's one ``json``
  parameter). ``GET`` and ``HEAD`` take them from the query string and only call read-only
  functions: a writing one answers 405 ``25006`` as PostgREST's read-only transaction does.
- A call whose argument names match no function is PostgREST's 404 ``PGRST202`` (unknown,
  missing or extra arguments), with a hint naming the closest function or its signature.
- On GET, a query parameter is an argument unless it is reserved (select, order, limit, …),
  names an embedded resource's parameter (``books.order``) or its value reads as a filter
  (``[not.]op.value``), as in PostgREST.
- Rows are read through the table SQL builder (sql.py) over the function's SELECT wrapped as a
  CTE, so filters, select, order, limit/offset, Range (GET) and ``Prefer: count`` work as on a
  table; so does resource embedding when the function's rows are rows of a table (its
  ``table``), correlated on the CTE, under the embedded tables' allow-list and roles.
  Read-only functions run on the read-only connection; writing ones in one write transaction
  (`Database.write`: group commit, ``X-Replication-Txid``, ``Prefer: tx=rollback``), and a
  failure anywhere in them, including a singular Accept that does not get one row, rolls all
  of their statements back.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from urllib.parse import parse_qsl

import orjson

from ..auth.policy import ACCESS_ENVIRON, TableRule, bound_claims
from ..errors import api_error
from ..responses import CORS_HEADERS, ApiResponse
from .embedding import check_embedded, embedded_tables, embeds_under_role
from .functions import SCHEMA_NAME, ArgumentError, Function, accepts, not_found, rows_result
from .operators import OPERATOR_BY_NAME
from .prefer import DEFAULT as DEFAULT_PREFERENCES, RPC, parse_prefer
from .query import (RESERVED_KEYS, Embed, has_aggregates, parse_columns, parse_read_query,
                    query_pairs, shown_text)
from .representation import (CONTENT_TYPES, CSV, OBJECT, OBJECT_STRIPPED, ARRAY_STRIPPED, dumps,
                             negotiate, render, shape_of)
from .routes import _claims_key, _preflight, content_range, page_bounds
from .sql import OutputColumn, build_count, build_select
from .positions import commit_headers
from .replica_reads import refuse_write
from .writes import _body_bytes, _content_kind_of, parse_json_body

RPC_ALLOW = "GET, HEAD, POST, OPTIONS"
#: `[not.]op[(any|all)].` at the start of a value: a filter, not an argument (GET).
_FILTER_VALUE = re.compile(r"(?:not\.)?([a-z]+)(?:\((?:any|all)\))?\.")


def make_rpc_view(app, state):
    """The `/rpc/<function>` view: ``view(environ, function_name)`` -> ApiResponse (called by
    api/dispatch.py)."""
    authenticator = state.authenticator

    def rpc_endpoint(environ, function_name: str):
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            return _preflight(environ)  # a browser's CORS preflight, as on tables
        if state.policy is not None:  # roles: only the functions listed for the role
            environ[CLAIMS_ENVIRON] = _check_function_access(app, state, environ,
                                                             function_name)
        elif not authenticator.disabled:
            environ[CLAIMS_ENVIRON] = authenticator.authenticate(
                app, environ.get("HTTP_AUTHORIZATION"))
        if method == "OPTIONS":
            return _options(state, function_name)
        if method not in ("GET", "HEAD", "POST"):
            raise api_error("rpc_method", method=method, headers={"Allow": RPC_ALLOW})
        prefer = environ.get("HTTP_PREFER")
        prefs = parse_prefer([prefer]) if prefer else DEFAULT_PREFERENCES
        return call(state, function_name, method, prefs, environ)

    return rpc_endpoint


def current_functions(state) -> dict:
    """The functions file's functions, prepared for the current schema ({} without a file)."""
    catalog = state.functions
    return catalog.current(state.db.reader()) if catalog is not None else {}


def _options(state, name: str) -> ApiResponse:
    """PostgREST's answer to a plain OPTIONS of a function: `Allow` is what it may be called
    with, `OPTIONS,POST` for a writing (volatile) one, `OPTIONS,GET,HEAD,POST` otherwise; an
    unknown function is 404 PGRST202, as its call would be."""
    functions = current_functions(state)
    function = functions.get(name)
    if function is None:
        raise _not_found(functions, name, {}, json_body=False)
    allow = "OPTIONS,POST" if function.writes else "OPTIONS,GET,HEAD,POST"
    return ApiResponse.without_body(200, CORS_HEADERS + (("Allow", allow),))


#: The WSGI environ key of the caller's claims (request_claim() in function SQL).
CLAIMS_ENVIRON = "sqlite_rest.claims"


def _check_function_access(app, state, environ, name: str):
    """42501 (401 anonymous, 403 otherwise), as PostgREST answers a function the role has
    no EXECUTE on, when the role's `functions` list lacks an existing function; an unknown
    one stays 404."""
    from ..auth.policy import permission_denied
    from .routes import role_access

    access = role_access(app, state.authenticator, state.policy, environ)
    environ[ACCESS_ENVIRON] = access  # the rules of the tables its rows embed
    if access.may_call(name):
        return access.claims
    functions = current_functions(state)
    if name in functions:
        raise permission_denied(f"function {name}", access.anonymous)
    return access.claims


def is_filter(value: str) -> bool:
    m = _FILTER_VALUE.match(value)
    return m is not None and m.group(1) in OPERATOR_BY_NAME


def _not_found(functions, name, keys, **kw):
    body = not_found(functions, name, keys, **kw)
    return api_error("rpc_not_found", message=body["message"], details=body["details"],
                     hint=body["hint"])


def _arguments(function: Function, given: dict, from_text: bool) -> dict:
    """The bound value of every parameter: the argument coerced by its type, or the
    default."""
    values = {}
    for param in function.params:
        if param.name not in given:
            values[param.name] = param.default
            continue
        raw = given[param.name]
        if raw is None:
            values[param.name] = None
            continue
        try:
            values[param.name] = (param.type.from_text(raw) if from_text
                                  else param.type.from_json(raw))
        except ArgumentError as exc:
            shown = exc.value if type(exc.value) is str else orjson.dumps(exc.value).decode()
            raise api_error("rpc_invalid_argument", type=param.type.name,
                            value='"' + shown_text(shown, 60) + '"',
                            details=f"argument {param.name} of function "
                                    f"{SCHEMA_NAME}.{function.name}") from None
    return values


def _post_arguments(environ, max_bytes: int, single_object: bool, columns=None):
    """(arguments, from_text, is a JSON body) of a POST. As PostgREST: an array of objects
    (same keys in each) passes its first object, any other non-object no arguments, and
    ``?columns=`` names the arguments (the body's other keys are ignored, absent ones null)."""
    content_type = environ.get("CONTENT_TYPE")
    kind = _content_kind_of(content_type)
    if kind == "csv":
        raise api_error("unsupported_content_type", content_type=(content_type or "")[:100])
    data = _body_bytes(environ, max_bytes)
    if kind == "form":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise api_error("invalid_body", details=f"the body is not UTF-8: {exc}") from None
        return dict(parse_qsl(text, keep_blank_values=True)), True, False
    if not data.strip():
        body = {}  # PostgREST: an empty body calls the function without arguments
    else:
        body = parse_json_body(data)
    if single_object:
        return body, False, True
    if type(body) is list:
        if body and not all(type(item) is dict and item.keys() == body[0].keys()
                            for item in body):
            raise api_error("invalid_body", message="All object keys must match",
                            details="every object of the array needs the same keys",
                            hint=None)
        body = body[0] if body else {}
    elif type(body) is not dict:
        body = {}
    if columns is not None:
        body = {name: body.get(name) for name in columns}
    return body, False, True


def _embeds(query) -> bool:
    return any(type(item) is Embed for item in query.select)


def _result_to_embed_on(state, function: Function, name: str, query):
    """The function's result with its table's relationships; without a table, PostgREST's
    PGRST200 for a function returning no table's rows, with a hint saying how to name one."""
    table = None
    if function.table is not None:
        table = state.schema_cache.get(state.db.reader()).table(function.table)
    if table is None:
        target = next(item.name for item in query.select if type(item) is Embed)
        raise api_error(
            "no_relationship", parent=name, target=target,
            details=f"Searched for a foreign key relationship between '{name}' and "
                    f"'{target}' in the schema, but no matches were found.",
            hint=f"function {SCHEMA_NAME}.{name} returns rows of no known table: name it in "
                 "the function's entry of the functions file, 'table: <table>' (PostgreSQL: "
                 "RETURNS SETOF <table>)")
    return rows_result(function, table)


@functools.lru_cache(maxsize=1024)
def _plan(function: Function, result, query, range_header, max_rows, counted: bool,
          allowed: frozenset, role=None):
    """(SELECT, count or None, offset, limit, output shape) of a call's rows: the table
    builder over the function's result columns (`result`: with its table's relationships
    when the select embeds). ``role``: (policy, role, claims as JSON) under a permissions
    file, whose rules the embedded tables are read by."""
    if _embeds(query):
        # as on a table: only allow-listed tables, checked before any SQL names them
        check_embedded(allowed, result, embedded_tables(query.select, result))
        if role is not None:
            policy, role_name, claims_json = role
            # the function's own columns are the caller's already (its SQL chose them);
            # every embedded table is read by the role's rule of it
            unrestricted = TableRule(role_name, function.name, frozenset({"GET"}), None, None,
                                     None, None)
            query = dataclasses.replace(query, select=embeds_under_role(
                result, unrestricted, query.select, functools.partial(policy.rule, role_name),
                json.loads(claims_json)))
    offset, limit = page_bounds(query, range_header)
    if max_rows is not None and (limit is None or limit > max_rows):
        limit = max_rows
    if function.returns == "row":  # the first row is the answer: read no more
        limit = 1 if limit is None else min(limit, 1)
    statement = build_select(result, query, limit=limit, offset=offset)
    count = build_count(result, query) if counted else None
    json_columns = set(function.spec.json_columns)
    output = shape_of(tuple(
        OutputColumn(c.name, "json") if c.kind == "value" and c.name in json_columns else c
        for c in statement.columns))
    return statement, count, offset, limit, output


def _raw_shape(function: Function):
    json_columns = set(function.spec.json_columns)
    return shape_of(tuple(OutputColumn(c.name, "json" if c.name in json_columns else "value")
                          for c in function.result.columns))


def call(state, name: str, method: str, prefs, environ) -> ApiResponse:
    functions = current_functions(state)
    pairs = query_pairs(environ.get("QUERY_STRING", ""))
    media = negotiate(environ.get("HTTP_ACCEPT"))
    if method in ("GET", "HEAD"):
        given = {}
        query = []
        for key, value in pairs:
            # PostgREST's rule; a dotted key is an embedding's (books.order, books.year: no
            # parameter name has a dot)
            if key in RESERVED_KEYS or "." in key or is_filter(value):
                query.append((key, value))
            else:
                given[key] = value
        function = functions.get(name)
        if function is None or not accepts(function, given):
            raise _not_found(functions, name, given, json_body=False)
        if function.writes:
            raise api_error("rpc_write_by_get", verb=function.verb,
                            headers={"Allow": "POST, OPTIONS"})
        values = _arguments(function, given, from_text=True)
        range_header = environ.get("HTTP_RANGE") if method == "GET" else None
    else:
        single = prefs.params == "single-object"
        known = functions.get(name)
        if known is not None and known.writes and state.replica and state.config.forward_writes:
            from .forward import forward_write  # the primary checks the arguments
            return forward_write(state, environ,
                                 _body_bytes(environ, state.config.max_body_bytes))
        columns = next((value for key, value in reversed(pairs) if key == "columns"), None)
        body, from_text, json_body = _post_arguments(
            environ, state.config.max_body_bytes, single,
            parse_columns(columns) if columns is not None else None)
        function = functions.get(name)
        if single:
            if (function is None or len(function.params) != 1
                    or function.params[0].type.name != "json"):
                raise _not_found(functions, name, (), json_body=True, single_object=True)
            given = {function.params[0].name: body}
        else:
            given = body
            if function is None or not accepts(function, given):
                raise _not_found(functions, name, given, json_body=json_body)
        values = _arguments(function, given, from_text=from_text)
        query = [(key, value) for key, value in pairs if key != "columns"]
        range_header = None  # PostgREST ignores Range on POST
    counted = prefs.count is not None
    returns = function.returns
    strict = prefs.handling == "strict"
    max_affected = prefs.max_affected if strict else None
    if max_affected is not None and returns != "rows":
        raise api_error("max_affected_single")
    if returns in ("rows", "row") and function.wrap_prefix is not None:
        parsed = parse_read_query(query)  # (cached by its pairs)
        if not state.config.aggregates_enabled and has_aggregates(parsed.select):
            raise api_error("aggregates_disabled")  # as PostgREST's, and the table path's
        result, role = function.result, None
        if _embeds(parsed):  # only then: the schema cache's relationships of its table
            result = _result_to_embed_on(state, function, name, parsed)
            if state.policy is not None:
                access = environ.get(ACCESS_ENVIRON)
                if access is None:  # fail closed: never embed without the tables' rules
                    raise RuntimeError("an embedding under roles needs the request's Access")
                role = (access.policy, access.role, _claims_key(access.claims))
        statement, count, offset, limit, output = _plan(
            function, result, parsed, range_header, state.config.max_rows, counted,
            state.allowed_tables, role)
    else:
        if query:
            what = {"value": "a value", "nothing": "nothing"}.get(
                returns, "rows that cannot be filtered (its last statement is not a SELECT)")
            raise api_error("query_parse",
                            message=f"function {SCHEMA_NAME}.{name} returns {what}: select, "
                                    "filters, order, limit and offset do not apply",
                            details=f"got {shown_text(query[0][0], 60)}="
                                    f"{shown_text(query[0][1], 60)}",
                            hint="call it without them")
        statement = count = None
        offset = 0
        output = _raw_shape(function) if function.result is not None else None
    last_params = function.last.bind(values)

    claims = environ.get(CLAIMS_ENVIRON)

    def run(conn):
        with bound_claims(claims):  # request_claim() in the function's SQL
            return _run(conn)

    def _run(conn):
        for step in function.before:
            conn.execute(step.sql, step.bind(values)).fetchall()
        total = None
        if statement is None:
            rows = conn.execute(function.last.sql, last_params).fetchall()
            if counted:
                total = len(rows)
        else:
            prefix = function.wrap_prefix
            rows = conn.execute(prefix + statement.sql,
                                last_params + list(statement.params)).fetchall()
            if count is not None:
                total = conn.execute(prefix + count.sql,
                                     last_params + list(count.params)).fetchall()[0][0]
        if max_affected is not None and len(rows) > max_affected:  # raised in the write:
            raise api_error("max_affected_exceeded",       # rolled back
                            details=f"The query affects {len(rows)} rows")
        if returns == "rows" and total is not None and offset > total:
            raise api_error(
                "invalid_range",
                details=f"An offset of {offset} was requested, but there are only "
                        f"{total} rows.",
                headers={"Content-Range": f"*/{total}"})
        return rows, total, _body(function, media, output, rows)

    headers = list(CORS_HEADERS)
    if function.writes and state.replica:  # a read replica: the primary takes the writes
        refuse_write(state.config, "function", f"function {SCHEMA_NAME}.{name} writes; this "
                     "server reads a replica of the database", what="call it on")
    if function.writes:
        (rows, total, body), commit_result = state.db.write(
            run, rollback=prefs.tx == "rollback")
        headers.extend(commit_headers(commit_result))
    elif counted or function.before:
        with state.db.read() as conn:  # one snapshot for every statement
            rows, total, body = run(conn)
    else:
        rows, total, body = run(state.db.reader())
    skip = ("max-affected",) if not strict else ()
    if method != "POST":
        skip += ("params",)
    applied = prefs.applied(RPC, extra_skip=skip) if prefs.given else None
    if applied:
        headers.append(("Preference-Applied", applied))
    if returns == "nothing":
        response = ApiResponse(b"", 204, headers)
        del response.headers["Content-Type"]
        return response
    status = 200
    if returns == "rows":
        headers += [("Content-Range", content_range(offset, len(rows), total)),
                    ("Range-Unit", "items")]
        if total is not None and (offset > 0 or offset + len(rows) < total):
            status = 206
    else:  # PostgREST: a function's single row or value (null included) is row 0 of 1
        headers += [("Content-Range", content_range(0, 1, 1 if counted else None)),
                    ("Range-Unit", "items")]
    if method == "HEAD":
        body = b""
    return ApiResponse(body, status, headers, CONTENT_TYPES[media])


def _body(function: Function, media: str, output, rows) -> bytes:
    returns = function.returns
    if returns == "nothing":
        return b""
    if returns == "rows":
        return render(media, output, rows)
    if returns == "row":
        if media == CSV:
            return render(CSV, output, rows[:1])
        if not rows:
            return b"null"
        stripped = media in (ARRAY_STRIPPED, OBJECT_STRIPPED)
        return render(OBJECT_STRIPPED if stripped else OBJECT, output, rows[:1])
    # value: the first column of the first row
    value = rows[0][0] if rows else None
    name = output.names[0]
    if media == CSV:
        return render(CSV, shape_of((OutputColumn(name),)), [(value,)] if rows else [])
    if output.kinds[0] == "json" and type(value) is str:
        try:
            orjson.loads(value)
            return value.encode()
        except orjson.JSONDecodeError:
            pass
    return dumps(value)
