"""`RequestObserver`: the WSGI middleware that times every request once and feeds the request
metrics (metrics.py) and the request log (logs.py).

A middleware rather than Flask's before/after_request hooks: two pairs of hooks, `g` and the
`request` proxies cost ~30 us of a GET by key that takes ~50 us in all (bench/api_get_by_pk.py);
here everything comes from the environ and `start_response`. Durations end when the app has
built its response, before the body is sent, as the hooks measured.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger(__name__)


class RequestObserver:
    """Wraps a WSGI app (``app.wsgi_app``): one clock read on each side, one record each for
    the metrics and the request log."""

    def __init__(self, wsgi_app, metrics=None, request_log=None):
        self.wsgi_app = wsgi_app
        self.metrics = metrics
        self.request_log = request_log if request_log is not None and request_log.enabled \
            else None

    def __call__(self, environ, start_response):
        if self.metrics is None and self.request_log is None:
            return self.wsgi_app(environ, start_response)
        seen: list = []

        def observed_start_response(status, headers, exc_info=None):
            seen.append(status)
            seen.append(headers)
            return start_response(status, headers, exc_info)

        t0 = time.perf_counter()
        body = self.wsgi_app(environ, observed_start_response)
        duration_ms = (time.perf_counter() - t0) * 1000.0
        if seen:
            try:
                self._record(environ, int(seen[-2][:3]), seen[-1], duration_ms)
            except Exception:  # noqa: BLE001 - the response is ready: never fail it here
                log.exception("recording the request failed")
        return body

    def _record(self, environ, status: int, headers, duration_ms: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        path = _path(environ)
        if self.metrics is not None:
            self.metrics.record(method, path, status, duration_ms)
        if self.request_log is not None:
            self.request_log.write(method, path, status, duration_ms, _content_length(headers),
                                   environ.get("REMOTE_ADDR"))


def _path(environ) -> str:
    """The request path as werkzeug's ``request.path`` gives it (WSGI strings are latin-1)."""
    path = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return path


def _content_length(headers) -> Optional[int]:
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value) if value.isdigit() else None
    return None
