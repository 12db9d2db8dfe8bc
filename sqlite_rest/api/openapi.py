"""`GET /`: a Swagger 2.0 description of the exposed (allow-listed) tables, shaped like the
one PostgREST serves, so the same tooling (Swagger UI, client generators) works.
"""
from __future__ import annotations

from flask import current_app, request

from .. import __version__
from ..responses import CORS_HEADERS, ApiResponse
from ..state import EXTENSION
from ..errors import api_error
from .representation import CONTENT_TYPES, OPENAPI, dumps, negotiate

#: SQLite affinity -> (Swagger type, format).
AFFINITY_TYPES = {
    "INTEGER": ("integer", "integer"),
    "REAL": ("number", "double precision"),
    "NUMERIC": ("number", "numeric"),
    "TEXT": ("string", "text"),
    "BLOB": ("string", "blob (base64)"),
}

_COMMON_PARAMETERS = {
    "select": {"name": "select", "in": "query", "required": False, "type": "string",
               "description": "Filtering Columns"},
    "order": {"name": "order", "in": "query", "required": False, "type": "string",
              "description": "Ordering"},
    "range": {"name": "Range", "in": "header", "required": False, "type": "string",
              "description": "Limiting and Pagination"},
    "rangeUnit": {"name": "Range-Unit", "in": "header", "required": False, "type": "string",
                  "default": "items", "description": "Limiting and Pagination"},
    "offset": {"name": "offset", "in": "query", "required": False, "type": "string",
               "description": "Limiting and Pagination"},
    "limit": {"name": "limit", "in": "query", "required": False, "type": "string",
              "description": "Limiting and Pagination"},
    "on_conflict": {"name": "on_conflict", "in": "query", "required": False, "type": "string",
                    "description": "On Conflict"},
    "columns": {"name": "columns", "in": "query", "required": False, "type": "string",
                "description": "Columns to read from the body"},
    "preferParams": {"name": "Prefer", "in": "header", "required": False, "type": "string",
                     "enum": ["params=single-object"], "description": "Preference"},
    "preferReturn": {"name": "Prefer", "in": "header", "required": False, "type": "string",
                     "enum": ["return=representation", "return=minimal", "return=headers-only"],
                     "description": "Preference"},
    "preferCount": {"name": "Prefer", "in": "header", "required": False, "type": "string",
                    "enum": ["count=exact", "count=planned", "count=estimated"],
                    "description": "Preference"},
    "preferPost": {"name": "Prefer", "in": "header", "required": False, "type": "string",
                   "enum": ["return=representation", "return=minimal", "return=headers-only",
                            "resolution=ignore-duplicates", "resolution=merge-duplicates"],
                   "description": "Preference"},
}


def _ref(name: str) -> dict:
    return {"$ref": "#/parameters/" + name}


def _definition(table, readable=None) -> dict:
    properties = {}
    required = []
    for column in table.columns:
        if readable is not None and column.name not in readable:
            continue
        kind, fmt = AFFINITY_TYPES.get(column.affinity, ("string", "text"))
        prop = {"type": kind, "format": column.declared_type.lower() or fmt}
        notes = []
        if column.pk:
            notes.append("Note:\nThis is a Primary Key.<pk/>")
        for fk in table.foreign_keys:
            if column.name in fk.columns:
                ref_col = fk.ref_columns[fk.columns.index(column.name)] if fk.ref_columns else "id"
                notes.append(f"Note:\nThis is a Foreign Key to `{fk.ref_table}.{ref_col}`.<fk "
                             f"table='{fk.ref_table}' column='{ref_col}'/>")
        if notes:
            prop["description"] = "\n".join(notes)
        if column.default is not None:
            prop["default"] = column.default
        properties[column.name] = prop
        if column.notnull and column.default is None and not column.generated and \
                column.name != table.rowid_alias:
            required.append(column.name)
    definition = {"type": "object", "properties": properties}
    if required:
        definition["required"] = required
    return definition


def build_openapi(state, schema, host: str | None = None, access=None) -> dict:
    """`access` (roles: policy.Access): only the tables, columns, verbs and functions the
    role may use."""
    paths: dict = {"/": {"get": {"tags": ["Introspection"], "summary": "OpenAPI description",
                                 "produces": ["application/openapi+json", "application/json"],
                                 "responses": {"200": {"description": "OK"}}}}}
    definitions: dict = {}
    parameters: dict = dict(_COMMON_PARAMETERS)
    for name in sorted(state.allowed_tables):
        table = schema.table(name)
        if table is None:
            continue
        rule = access.rule(name) if access is not None else None
        if access is not None and rule is None:
            continue
        readable = rule.read_columns if rule is not None else None
        definitions[name] = _definition(table, readable)
        parameters["body." + name] = {"name": name, "in": "body", "required": False,
                                      "description": name,
                                      "schema": {"$ref": "#/definitions/" + name}}
        filters = []
        for column in table.columns:
            if readable is not None and column.name not in readable:
                continue
            key = f"rowFilter.{name}.{column.name}"
            parameters[key] = {"name": column.name, "in": "query", "required": False,
                               "type": "string",
                               "format": column.declared_type.lower() or "text"}
            filters.append(_ref(key))
        rows = {"type": "array", "items": {"$ref": "#/definitions/" + name}}
        operations = {
            "get": {"tags": [name], "parameters": filters + [
                _ref("select"), _ref("order"), _ref("range"), _ref("rangeUnit"),
                _ref("offset"), _ref("limit"), _ref("preferCount")],
                "responses": {"200": {"description": "OK", "schema": rows},
                              "206": {"description": "Partial Content"}}},
            "post": {"tags": [name], "parameters": [
                _ref("body." + name), _ref("select"), _ref("columns"),
                _ref("on_conflict"), _ref("preferPost")],
                "responses": {"201": {"description": "Created"}}},
            "patch": {"tags": [name], "parameters": filters + [
                _ref("body." + name), _ref("preferReturn")],
                "responses": {"204": {"description": "No Content"}}},
            "put": {"tags": [name], "parameters": filters + [
                _ref("body." + name), _ref("preferReturn")],
                "responses": {"204": {"description": "No Content"}}},
            "delete": {"tags": [name], "parameters": filters + [_ref("preferReturn")],
                       "responses": {"204": {"description": "No Content"}}},
        }
        # the verbs the relation takes (a view: its INSTEAD OF triggers'), as OPTIONS says
        operations = {verb: op for verb, op in operations.items() if verb.upper() in table.verbs}
        if rule is not None:
            operations = {verb: op for verb, op in operations.items()
                          if verb.upper() in rule.verbs}
        if operations:
            paths["/" + name] = operations
    if state.functions:
        from .functions import openapi_paths

        functions = state.functions.current(state.db.reader())
        if access is not None:
            functions = {n: f for n, f in functions.items() if access.may_call(n)}
        paths.update(openapi_paths(functions))
    document = {
        "swagger": "2.0",
        "info": {"title": "sqlite-rest", "version": __version__,
                 "description": "PostgREST-compatible API over a SQLite database"},
        "basePath": "/",
        "schemes": ["http"],
        "consumes": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "produces": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "paths": paths,
        "definitions": definitions,
        "parameters": parameters,
    }
    if host:
        document["host"] = host
    auth_state = state.authenticator
    if not auth_state.disabled:
        document["securityDefinitions"] = {
            "JWT": {"type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "Bearer <jwt>"}}
        document["security"] = [{"JWT": []}]
    return document


def openapi_view():
    app = current_app._get_current_object()
    state = app.extensions[EXTENSION]
    if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.environ:
        from .routes import _preflight

        return _preflight(request.environ)
    if not state.config.openapi_enabled:
        raise api_error("invalid_path")
    if request.method == "OPTIONS":  # PostgREST's Allow of the root
        return ApiResponse.without_body(200, CORS_HEADERS + (("Allow", "OPTIONS,GET,HEAD"),))
    access = None
    if state.policy is not None:
        from .routes import role_access

        access = role_access(app, state.authenticator, state.policy, request.environ)
    elif not state.authenticator.disabled:
        state.authenticator.authenticate(app, request.headers.get("Authorization"))
    accept = request.headers.get("Accept")
    media = negotiate(accept, allow_openapi=True)
    if media not in (OPENAPI, "application/json"):
        raise api_error("not_acceptable", accept=(accept or "")[:200])
    schema = state.schema_cache.get(state.db.reader())
    body = dumps(build_openapi(state, schema, request.host, access))
    content_type = CONTENT_TYPES[OPENAPI] if media == OPENAPI else CONTENT_TYPES["application/json"]
    return ApiResponse(b"" if request.method == "HEAD" else body, 200, CORS_HEADERS,
                       content_type)
