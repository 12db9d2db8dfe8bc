"""`ApiDispatch`: the WSGI entry of the API routes, `/<table>` and `/rpc/<function>`.

Why not Flask's routing for these: Flask's per-request machinery (request and app contexts,
URL adapter, session, signals, teardown) cost 37 µs of a 65 µs GET by key in-process and
80-85 µs of server CPU under granian, more than the work of the request (#11,
bench/README.md). The API views read nothing but the WSGI environ, so a request of the plain
form `/<name>` or `/rpc/<name>` with a method of theirs is matched here by its shape and its
view is called directly, with the app's one JSON error handler (errors.error_response).

Everything else goes to Flask: `/`, `/live`, `/ready`, unknown paths, and the rare forms of
the API paths (a trailing slash, `//items`, an unknown method). Flask's url_map declares the
API rules too, bound to the same views, so a request answered there gets the same answer.
"""
from __future__ import annotations

from ..errors import error_response


class ApiDispatch:
    """WSGI: the table and RPC views for their plain paths, Flask (`fallback`) for the rest.

    `table_view(environ, table_name)` and `rpc_view(environ, function_name)` return a
    werkzeug Response; `reserved` are the paths of Flask's own one-segment rules (`/live`),
    which a table of that name cannot shadow, as in Flask's routing."""

    def __init__(self, fallback, state, table_view, rpc_view, methods, reserved):
        self.fallback = fallback
        self.state = state
        self.table_view = table_view
        self.rpc_view = rpc_view
        self.methods = frozenset(methods)
        self.reserved = frozenset(reserved)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        slash = path.find("/", 1)
        if slash == -1:  # /<table>
            view, name = self.table_view, path[1:]
            if path in self.reserved:
                name = ""
        elif path.startswith("/rpc/") and slash == 4 and path.find("/", 5) == -1:
            view, name = self.rpc_view, path[5:]
        else:
            name = ""
        if not name or path[0] != "/" or environ["REQUEST_METHOD"] not in self.methods:
            return self.fallback(environ, start_response)
        if not name.isascii():  # WSGI strings are latin-1; werkzeug decodes them as UTF-8
            name = name.encode("latin-1").decode("utf-8", "replace")
        try:
            response = view(environ, name)
        except Exception as exc:  # noqa: BLE001 - every failure is a JSON error
            response = error_response(exc, environ, self.state)
        return response(environ, start_response)
