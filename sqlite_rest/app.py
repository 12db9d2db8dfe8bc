"""`create_app(config)`: the Flask application of the HTTP API.

Per-app state lives in ``app.extensions["sqlite_rest"]`` (an `AppState`, state.py), so several
apps (one per test) can live in one process. The process model (worker processes, servers,
signals) is sqlite_rest/process/'s; this module only builds the WSGI app. Views import
responses.py and state.py, never this module.
"""
from __future__ import annotations

import logging

import apsw
import orjson
from flask import Flask, Response, request

from .auth import authenticator as auth_module
from .config import ServerConfig
from .db import Database
from .errors import JSON_MIMETYPE, error_response
from .responses import CORS_HEADERS, ApiResponse
from .api.schema import SchemaCache
from .state import EXTENSION, AppState, state_of

log = logging.getLogger("sqlite_rest.app")

def create_app(config: ServerConfig, *, metrics_registry=None) -> Flask:
    """The app, with every extension wired here (the test app is the production app):
    request metrics into ``metrics_registry`` (a private registry when None; `serve`'s
    workers pass prometheus_client's, in multiprocess mode) and the request log.
    """
    # No static route: one rule less to match per request, and /static/... is a 404 like
    # any other unknown path.
    app = Flask("sqlite_rest", static_folder=None)
    # Werkzeug refuses larger bodies with 413 before reading them.
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False  # not used on hot paths (orjson is), but keep key order
    app.url_map.strict_slashes = False

    auth_module.warn_if_disabled(config)
    authenticator = auth_module.Authenticator(config)
    authenticator.check_keys()  # a missing/bad key file fails at startup, not per request
    db = Database(config.dsn, writer_hook=config.writer_hook,
                  create_missing=config.create_missing_database)
    declared = ()
    if config.relationships_file:
        from .api.relationships_file import parse_relationships_file

        declared = parse_relationships_file(config.relationships_file)
    state = AppState(
        config=config,
        db=db,
        schema_cache=SchemaCache(on_reload=_warn_about_schema_changes(
            frozenset(config.allow_tables), declared), declared=declared),
        authenticator=authenticator,
        allowed_tables=frozenset(config.allow_tables),
    )
    app.extensions[EXTENSION] = state
    if config.permissions_file:
        from .auth.policy import load_policy

        state.policy = load_policy(config.permissions_file, config.allow_tables)
        try:
            state.policy.check_schema(state.schema_cache.get(db.reader()))
        finally:
            db.close_thread_connections()
    if declared:
        from .api.relationships_file import check_relationships

        try:
            check_relationships(state.schema_cache.get(db.reader()), declared,
                                config.relationships_file)
        finally:
            db.close_thread_connections()
    if config.dsn.replica:
        try:  # this worker's replica snapshot, from its start (Database.hold_replica_open)
            db.hold_replica_open()
        except apsw.Error as exc:  # a store outage: reads answer 503 PGRST000 until it is back
            log.warning("read replica: cannot open %s yet: %s", config.dsn.path, exc)
    if config.functions_file:
        from .api.functions import FunctionCatalog

        try:  # prepared on a reader (its SQL functions, e.g. REGEXP, are registered there)
            state.functions = FunctionCatalog(config.functions_file, db.reader())
        finally:
            db.close_thread_connections()  # the factory's thread serves no request

    from .api.dispatch import ApiDispatch
    from .api.openapi import openapi_view
    from .api.routes import METHODS, make_table_view
    from .api.rpc import make_rpc_view

    table_view = make_table_view(app, state)
    rpc_view = make_rpc_view(app, state)
    app.add_url_rule("/live", "live", _live, methods=["GET", "HEAD"])
    app.add_url_rule("/ready", "ready", _ready, methods=["GET", "HEAD"])
    app.add_url_rule("/", "openapi", openapi_view, methods=["GET", "HEAD", "OPTIONS"],
                     provide_automatic_options=False)
    # The API rules, for the forms ApiDispatch leaves to Flask (`/items/`, an unknown method):
    # the same views, so both answer alike.
    app.add_url_rule("/<table_name>", "table", lambda table_name: table_view(
        request.environ, table_name), methods=METHODS, provide_automatic_options=False)
    app.add_url_rule("/rpc/<function_name>", "rpc", lambda function_name: rpc_view(
        request.environ, function_name), methods=METHODS, provide_automatic_options=False)
    app.register_error_handler(
        Exception, lambda exc: error_response(exc, request.environ, state))
    from prometheus_client import CollectorRegistry

    from .observability.logs import RequestLog
    from .observability.metrics import RequestMetrics
    from .observability.middleware import RequestObserver

    metrics = RequestMetrics(metrics_registry if metrics_registry is not None
                             else CollectorRegistry())
    metrics.connect_signals(app)
    app.extensions["sqlite_rest.metrics"] = metrics
    reserved = [rule.rule for rule in app.url_map.iter_rules() if not rule.arguments]
    app.wsgi_app = RequestObserver(
        ApiDispatch(app.wsgi_app, state, table_view, rpc_view, METHODS, reserved),
        metrics=metrics, request_log=RequestLog())
    return app


def _warn_about_schema_changes(allowed: frozenset, declared: tuple):
    """A schema change that removes an allow-listed table, or what a --relationships-file
    entry names, is logged (the start-up checks are the supervisor's:
    cli._warn_about_unknown_tables, cli._check_relationships); a first load is not, so N
    workers do not repeat the start-up warning."""
    from .api.schema import missing_tables

    def on_reload(previous, schema) -> None:
        if previous is None:
            return
        gone = sorted(set(missing_tables(schema, allowed)) - set(missing_tables(previous, allowed)))
        if gone:
            log.warning("--security-allow-table names tables the schema no longer has: %s "
                        "(they answer 404 until they exist again)", ", ".join(gone))
        for key in declared:
            problem = key.problem(schema.tables)
            if problem is not None and key.problem(previous.tables) is None:
                log.warning("--relationships-file %s no longer fits the schema: %s (left out "
                            "until it fits again)", key.label, problem)
    return on_reload


def _json(payload, status: int = 200) -> Response:
    return ApiResponse(orjson.dumps(payload), status, CORS_HEADERS, JSON_MIMETYPE)


def _live():
    return _json({"status": "live"})


def _ready():
    from flask import current_app

    state = state_of(current_app)
    problems = []
    if state.database_corrupt:
        problems.append("database is corrupt")
    else:
        try:
            state.db.check_open()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problems.append(f"database cannot be opened: {exc}")
    hook = state.config.ready
    if hook is not None and not hook():
        problems.append("not ready (restore or replication pending)")
    body = {"status": "ready" if not problems else "unavailable", "problems": problems}
    status_hook = state.config.replication_status
    if status_hook is not None:
        body["replication"] = status_hook()
    return _json(body, 200 if not problems else 503)
