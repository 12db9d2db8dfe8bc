"""Every error the API can answer with, in ONE declarative table.

The table is the single source of truth: the API raises `api_error(key, ...)`, the docs render
`errors_markdown()`, and tests/test_errors_contract.py triggers every row with a real request.
Every failure - including Flask/Werkzeug HTTP errors and unexpected exceptions - is rendered by
`render_error()` as PostgREST's four-key JSON ``{"code","message","details","hint"}``.

SQLite errors are mapped by their *extended* result code (apsw's ``exc.extendedresult``),
never by message text.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Mapping, Optional

import apsw
import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .responses import CORS_HEADERS

log = logging.getLogger("sqlite_rest.errors")

JSON_MIMETYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class ErrorCase:
    #: Stable name used in code: ``raise api_error("unknown_table", table=name)``.
    key: str
    #: When it happens (rendered into the docs).
    case: str
    #: HTTP status.
    status: int
    #: PostgREST/PostgreSQL error code; None where PostgREST has none either.
    code: Optional[str]
    #: Default message; ``{name}`` fields are filled from `api_error()` keyword arguments.
    message: str
    #: Default hint for the client or operator.
    hint: Optional[str] = None


ERROR_TABLE: tuple[ErrorCase, ...] = (
    # -- request parsing (PGRST1xx) --------------------------------------------------
    ErrorCase("query_parse", "unparsable query string: bad operator, filter, select, order, limit",
              400, "PGRST100", "Could not parse the query string"),
    ErrorCase("invalid_body", "malformed or empty JSON / CSV request body",
              400, "PGRST102", "Empty or invalid json",
              "Send a JSON object or an array of objects with Content-Type: application/json"),
    ErrorCase("unknown_embed", "a parameter (name.col=…, name.order, …) for an embedded "
              "resource that select does not embed",
              400, "PGRST108", "'{name}' is not an embedded resource in this request"),
    ErrorCase("invalid_range", "Range header or offset beyond the rows that exist",
              416, "PGRST103", "Requested range not satisfiable"),
    ErrorCase("invalid_put", "PUT whose filters are not `eq` on exactly the primary key columns",
              405, "PGRST105", "Filters must include all and only primary key columns with 'eq' operators"),
    ErrorCase("unsupported_content_type", "request Content-Type the API cannot read",
              415, "PGRST107", "The Content-Type {content_type!r} is not supported",
              "Use application/json, text/csv or application/x-www-form-urlencoded"),
    ErrorCase("not_acceptable", "Accept header names no media type the API can produce",
              406, "PGRST107", "None of these media types are available: {accept}",
              "Use application/json, text/csv or application/vnd.pgrst.object+json"),
    ErrorCase("aggregates_disabled", "an aggregate in select (total.sum(), count()) while "
              "--aggregates-enabled is off, or in the select of a write",
              400, "PGRST123", "Use of aggregate functions is not allowed",
              "aggregates are off on this server (--aggregates-enabled), and never apply to "
              "the rows a write returns"),
    ErrorCase("put_with_limit", "PUT with limit or offset",
              400, "PGRST114", "limit/offset querystring parameters are not allowed for PUT"),
    ErrorCase("put_key_mismatch", "PUT body whose primary key differs from the URL's, or is missing columns",
              400, "PGRST115", "Payload values do not match URL in primary key column(s)"),
    ErrorCase("singular_not_one", "Accept: application/vnd.pgrst.object+json but not exactly one row",
              406, "PGRST116", "Cannot coerce the result to a single JSON object"),
    ErrorCase("method_not_allowed", "HTTP verb the route does not support",
              405, "PGRST117", "Unsupported HTTP method: {method}"),
    ErrorCase("invalid_preference", "invalid Prefer value together with Prefer: handling=strict",
              400, "PGRST122", "Invalid preferences given with handling=strict"),
    ErrorCase("max_affected_exceeded", "write (or a function's result) has more rows than "
              "Prefer: max-affected with handling=strict (rolled back)",
              400, "PGRST124", "Query result exceeds max-affected preference constraint"),
    ErrorCase("max_affected_single", "Prefer: max-affected with handling=strict on a function "
              "that returns a row, a value or nothing",
              400, "PGRST128", "Function must return SETOF or TABLE when max-affected "
              "preference is used with handling=strict"),
    ErrorCase("invalid_path", "URL that names no route (e.g. /a/b)",
              404, "PGRST125", "Invalid path specified in request URL"),
    ErrorCase("rpc_method", "/rpc/<function> with a verb other than GET, HEAD, POST or OPTIONS",
              405, "PGRST101", "Cannot use the {method} method on RPC"),
    ErrorCase("rpc_write_by_get", "GET or HEAD of a function that writes (volatile): call it "
              "with POST",
              405, "25006", "cannot execute {verb} in a read-only transaction",
              "This function writes: call it with POST"),
    ErrorCase("rpc_invalid_argument", "a function argument its declared type cannot take",
              400, "22P02", "invalid input syntax for type {type}: {value}"),
    ErrorCase("filterless_write", "PATCH/DELETE without any filter while refuse_filterless_writes is on",
              400, "21000", "{verb} requires a WHERE clause",
              "Add a filter, e.g. ?id=eq.1; this server refuses filterless writes"),
    # -- schema cache (PGRST2xx, 42703) ------------------------------------------------
    ErrorCase("unknown_body_column", "unknown column in the body or in ?columns=",
              400, "PGRST204", "Could not find the '{column}' column of '{table}' in the schema cache"),
    ErrorCase("no_relationship", "an embedded resource with no FOREIGN KEY relationship to "
              "its parent (or none matching its !hint); any, on the rows of a function that "
              "are no table's (its `table` key)",
              400, "PGRST200", "Could not find a relationship between '{parent}' and "
              "'{target}' in the schema cache"),
    ErrorCase("ambiguous_relationship", "an embedded resource related to its parent in more "
              "than one way: disambiguate with !<foreign key or column>",
              300, "PGRST201", "Could not embed because more than one relationship was found "
              "for '{parent}' and '{target}'"),
    ErrorCase("unknown_table", "unknown table, or one not in --security-allow-table (same answer, so "
              "names do not leak); the hint is \"Perhaps you meant the table 'x'\" when an "
              "allow-listed table (under roles, one of the role's) has a close name",
              404, "PGRST205", "Could not find the table '{table}' in the schema cache",
              "Only tables and views named by --security-allow-table are exposed"),
    ErrorCase("rpc_not_found", "/rpc/<function> that names no function of --functions-file, or "
              "with missing or unknown arguments",
              404, "PGRST202", "Could not find the function {function} in the schema cache"),
    ErrorCase("unknown_column", "unknown column in a filter, select, order or on_conflict, "
              "or one an embedding joins on that a function's rows lack",
              400, "42703", "column {column} does not exist"),
    ErrorCase("unknown_cast", "a cast (`::type`) to a type the API does not know",
              400, "42704", "type {type} does not exist"),
    ErrorCase("conflict_target", "on_conflict names no primary key or UNIQUE constraint",
              400, "42P10", "there is no unique or exclusion constraint matching the ON CONFLICT "
              "specification"),
    # -- auth (PGRST3xx) ---------------------------------------------------------------
    ErrorCase("jwt_key_unavailable", "the configured JWT key file cannot be read",
              500, "PGRST300", "Server lacks JWT secret",
              "Check --auth-token-file / --auth-rsa-public-key"),
    ErrorCase("jwt_invalid", "empty or malformed token, bad signature, alg none, wrong "
              "algorithm or key (PostgREST's messages)",
              401, "PGRST301", "{reason}"),
    ErrorCase("jwt_missing", "no Authorization: Bearer token while authentication is on (and "
              "no anonymous role)",
              401, "PGRST302", "Anonymous access is disabled"),
    ErrorCase("jwt_claims", "expired token, nbf or iat in the future, exp/nbf/iat not numbers, "
              "aud not naming --auth-audience, claims not a JSON object",
              401, "PGRST303", "{reason}"),
    # -- roles and row-level security (--permissions-file) -----------------------------
    ErrorCase("permission_denied", "the role may not use this verb, column or function "
              "(401 for the anonymous role, 403 otherwise, as PostgREST)",
              403, "42501", "permission denied for {what}"),
    ErrorCase("rls_violation", "a row written fails the role's `check` filter, or an upsert "
              "meets a row its `rows` filter hides (rolled back)",
              403, "42501", "new row violates row-level security policy for table {table}"),
    # -- SQLite constraint and data errors ---------------------------------------------
    ErrorCase("unique_violation", "UNIQUE or PRIMARY KEY constraint violated",
              409, "23505", "duplicate key value violates unique constraint"),
    ErrorCase("foreign_key_violation", "FOREIGN KEY constraint violated",
              409, "23503", "insert or update violates foreign key constraint"),
    ErrorCase("not_null_violation", "NOT NULL constraint violated",
              400, "23502", "null value violates not-null constraint"),
    ErrorCase("check_violation", "CHECK constraint violated",
              400, "23514", "new row violates check constraint"),
    ErrorCase("constraint_violation", "other constraint failure, e.g. RAISE(ABORT, ...) in a trigger",
              400, "23000", "integrity constraint violation"),
    ErrorCase("datatype_mismatch", "value of the wrong type for a rowid / STRICT column",
              400, "22P02", "datatype mismatch"),
    ErrorCase("sql_data_error", "SQLite refused the data while evaluating (e.g. malformed JSON in a "
              "JSON path, integer overflow)",
              400, "22000", "data exception"),
    ErrorCase("read_only", "write on a read-only database or replica",
              405, "25006", "cannot execute {verb} in a read-only transaction",
              "This server is read-only; send writes to the primary"),
    ErrorCase("replica_behind", "a read replica did not reach X-Replication-Min-Txid within "
              "--replica-wait-timeout (with Retry-After)",
              503, "55000", "the replica has not reached position {txid} yet",
              "retry later, or read from the primary"),
    ErrorCase("position_lost", "X-Replication-Min-Txid names a write the replica's history does "
              "not hold: the primary was restored from its replica before uploading it (the "
              "lineage of the position was replaced), or a lineage the replica never had",
              409, "40003", "the write at position {position} is not in this replica's history",
              "the write was lost with its primary; read the current state and write it again"),
    ErrorCase("primary_unreachable", "a read replica with --forward-writes cannot reach the "
              "primary", 503, "08006", "the primary at {primary} cannot be reached",
              "retry later; the write was not applied by this server"),
    ErrorCase("replica_point_unavailable", "X-Replication-As-Of names a time or TXID the replica "
              "does not hold (before its first backup, pruned by retention, inside a compacted "
              "file, or past the latest)",
              404, "22023", "the replica holds no database as of {when}",
              "ask for a later time; retention decides how far back a replica goes"),
    ErrorCase("busy", "SQLITE_BUSY / LOCKED after the busy timeout",
              503, "PGRST003", "The database is busy, try again",
              "Retry after the number of seconds in Retry-After"),
    ErrorCase("schema_changing", "the schema changed under a write ten times in a row "
              "(it is planned again each time)",
              503, "PGRST002", "Could not query the database for the schema cache. Retrying.",
              "The schema is being changed (a migration?): retry the request"),
    ErrorCase("disk_full", "SQLITE_FULL: disk or max_page_count full",
              507, "53100", "could not write: the database or disk is full",
              "Free disk space on the database volume"),
    ErrorCase("database_corrupt", "SQLITE_CORRUPT / NOTADB (also turns /ready to 503)",
              500, "XX001", "database disk image is malformed",
              "Restore the database from a replica or backup"),
    ErrorCase("database_unavailable", "database file cannot be opened, or an I/O error",
              503, "PGRST000", "Could not open the database",
              "Check --db-dsn, the file's permissions and the disk"),
    # -- transport -----------------------------------------------------------------------
    ErrorCase("body_too_large", "request body larger than max_body_bytes",
              413, None, "Request body too large: the limit is {limit} bytes"),
    ErrorCase("internal", "unexpected exception (logged with its traceback, never sent)",
              500, "XX000", "Internal server error",
              "The server log has the details"),
)

ERRORS: dict[str, ErrorCase] = {case.key: case for case in ERROR_TABLE}
assert len(ERRORS) == len(ERROR_TABLE), "duplicate error key"


class ApiError(Exception):
    """An error answered as PostgREST's four-key JSON."""

    def __init__(
        self,
        code: Optional[str],
        message: str,
        details: Optional[str] = None,
        hint: Optional[str] = None,
        status: int = 400,
        headers: Optional[Mapping[str, str]] = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.status = status
        self.headers = dict(headers) if headers else {}

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details, "hint": self.hint}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def api_error(
    key: str,
    *,
    message: Optional[str] = None,
    details: Optional[str] = None,
    hint: Optional[str] = None,
    headers: Optional[Mapping[str, str]] = None,
    status: Optional[int] = None,
    **fields,
) -> ApiError:
    """Build the ApiError of table row `key`; `fields` fill the default message."""
    case = ERRORS[key]
    if message is None:
        try:
            message = case.message.format(**fields)
        except (KeyError, IndexError):
            message = case.message
    return ApiError(
        case.code,
        message,
        details=details,
        hint=hint if hint is not None else case.hint,
        status=status if status is not None else case.status,
        headers=headers,
    )


#: Past this many candidates no name is suggested: the search runs on every miss (PostgREST
#: likewise skips its fuzzy index for schemas of 500 tables or more).
CLOSEST_MAX_CANDIDATES = 500


def closest_name(name: str, candidates, cutoff: float = 0.75) -> Optional[str]:
    """The one closeness rule of every "Perhaps you meant …" hint (tables, functions,
    embeddings): difflib's ratio, at least `cutoff` (0.75 is PostgREST's minimum score for
    table and function names). Callers pass only names the caller may use."""
    if len(candidates) >= CLOSEST_MAX_CANDIDATES:
        return None
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return close[0] if close else None


def errors_markdown() -> str:
    """The error table as Markdown, for the docs."""
    lines = ["| case | HTTP | code | message | hint |", "|---|---|---|---|---|"]
    for c in ERROR_TABLE:
        cells = (c.case, str(c.status), c.code or "—", c.message, c.hint or "")
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


# -- SQLite errors by extended result code --------------------------------------------

def _ext(name: str) -> int:
    return apsw.mapping_extended_result_codes[name]


_SQLITE_EXTENDED: dict[int, str] = {
    _ext("SQLITE_CONSTRAINT_UNIQUE"): "unique_violation",
    _ext("SQLITE_CONSTRAINT_PRIMARYKEY"): "unique_violation",
    _ext("SQLITE_CONSTRAINT_ROWID"): "unique_violation",
    _ext("SQLITE_CONSTRAINT_FOREIGNKEY"): "foreign_key_violation",
    _ext("SQLITE_CONSTRAINT_NOTNULL"): "not_null_violation",
    _ext("SQLITE_CONSTRAINT_CHECK"): "check_violation",
    _ext("SQLITE_CONSTRAINT_DATATYPE"): "datatype_mismatch",
}

# Primary result code -> row, when the extended code is not listed above.
_SQLITE_PRIMARY: dict[int, str] = {
    apsw.SQLITE_CONSTRAINT: "constraint_violation",
    apsw.SQLITE_MISMATCH: "datatype_mismatch",
    apsw.SQLITE_ERROR: "sql_data_error",
    apsw.SQLITE_TOOBIG: "sql_data_error",
    apsw.SQLITE_RANGE: "sql_data_error",
    apsw.SQLITE_READONLY: "read_only",
    apsw.SQLITE_BUSY: "busy",
    apsw.SQLITE_LOCKED: "busy",
    apsw.SQLITE_FULL: "disk_full",
    apsw.SQLITE_CORRUPT: "database_corrupt",
    apsw.SQLITE_NOTADB: "database_corrupt",
    apsw.SQLITE_CANTOPEN: "database_unavailable",
    apsw.SQLITE_IOERR: "database_unavailable",
    apsw.SQLITE_NOMEM: "database_unavailable",
    apsw.SQLITE_PERM: "database_unavailable",
    apsw.SQLITE_NOLFS: "database_unavailable",
    apsw.SQLITE_INTERRUPT: "busy",
}

#: Seconds a client should wait after a 503 busy.
RETRY_AFTER_SECONDS = "1"


#: apsw class -> primary code: an error raised in Python by a VFS callback (the read replica's
#: `litestream` VFS, e.g. its store unreachable on open) reaches us as that exception itself,
#: without the result codes SQLite's own errors carry.
_CODE_OF_CLASS: dict[type, int] = {type(apsw.exception_for(code)): code for code in _SQLITE_PRIMARY}


def sqlite_error_key(exc: apsw.Error) -> str:
    extended = getattr(exc, "extendedresult", None)
    if extended in _SQLITE_EXTENDED:
        return _SQLITE_EXTENDED[extended]
    primary = getattr(exc, "result", None)
    if primary is None and extended is not None:
        primary = extended & 0xFF
    if primary is None:
        primary = _CODE_OF_CLASS.get(type(exc))
    return _SQLITE_PRIMARY.get(primary, "internal")


def from_sqlite(exc: apsw.Error, *, verb: str = "write",
                primary_url: Optional[str] = None) -> Optional[ApiError]:
    """The ApiError of a SQLite failure; None when it is not a mapped database condition
    (then it is a bug: the caller answers the generic 500 and logs the traceback)."""
    key = sqlite_error_key(exc)
    if key == "internal":
        return None
    text = str(exc)
    details = text
    headers = None
    hint = None
    if key == "busy":
        headers = {"Retry-After": RETRY_AFTER_SECONDS}
    elif key == "read_only" and primary_url:
        hint = f"This server is read-only; send writes to the primary at {primary_url}"
    elif key in ("database_corrupt", "database_unavailable"):
        log.error("database failure: %s", text)
        details = None  # operator-level detail: logged, not sent
    return api_error(key, details=details, hint=hint, headers=headers, verb=verb.upper())


# -- rendering ----------------------------------------------------------------------

_HTTP_STATUS_KEYS = {
    400: "invalid_body",  # werkzeug raises BadRequest for unreadable request bodies
    404: "invalid_path",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_content_type",
}


def from_http_exception(exc: HTTPException, *, method: str = "", max_body_bytes: int = 0) -> ApiError:
    status = exc.code or 500
    key = _HTTP_STATUS_KEYS.get(status)
    headers = {}
    if status == 405:
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    if key is not None:
        details = exc.description if status == 400 else None
        return api_error(key, details=details, headers=headers, method=method,
                         limit=max_body_bytes, content_type="")
    return ApiError(None, exc.description or exc.name, status=status, headers=headers)


def render_error(error: ApiError) -> Response:
    response = Response(orjson.dumps(error.body()), status=error.status, mimetype=JSON_MIMETYPE)
    response.headers["Content-Type"] = JSON_MIMETYPE
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def error_response(exc: Exception, environ, state) -> Response:
    """The one JSON error handler: any exception a request raised, as PostgREST's JSON body
    with the CORS headers. Used by api/dispatch.py for the API routes and registered with
    Flask for the others; `state` is the app's AppState (None before the app has one)."""
    method = environ.get("REQUEST_METHOD", "")
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, HTTPException):
        error = from_http_exception(
            exc, method=method, max_body_bytes=state.config.max_body_bytes if state else 0)
    else:
        from .api.query import RequestError

        error = None
        if isinstance(exc, RequestError):
            error = ApiError(exc.code, exc.message, exc.details, exc.hint, status=exc.status)
        elif isinstance(exc, apsw.Error):
            error = from_sqlite(exc, verb=method,
                                primary_url=state.config.primary_url if state else None)
        if error is None:
            log.error("unhandled error on %s %s", method, environ.get("PATH_INFO", ""),
                      exc_info=exc)
            error = api_error("internal")
    if error.code == "XX001" and state is not None:
        state.database_corrupt = True  # /ready answers 503 from now on
    response = render_error(error)
    for name, value in CORS_HEADERS:
        response.headers[name] = value
    return response
