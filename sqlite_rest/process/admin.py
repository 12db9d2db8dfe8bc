"""The supervisor's small HTTP servers: /metrics, /live, /ready, /status, and pprof."""
from __future__ import annotations

import http.server
import logging
import threading
from typing import Callable, Dict, Tuple
from urllib.parse import parse_qs, urlsplit

from .addresses import _family

log = logging.getLogger("sqlite_rest.server")  # the name operators filter on, kept


Route = Callable[[dict], Tuple[int, str, bytes]]


class AdminServer(http.server.ThreadingHTTPServer):
    """A tiny threaded HTTP server for the supervisor's routes (path -> handler)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, routes: Dict[str, Route], name: str):
        self.address_family = _family(host)
        self.routes = routes
        self.name = name
        super().__init__((host, port), _AdminHandler)
        self._thread = threading.Thread(target=self.serve_forever, name=f"{name}-server",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _AdminHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AdminServer

    def do_GET(self):  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        handler = self.server.routes.get(parts.path)
        if handler is None:
            status, ctype, body = 404, "text/plain", b"not found\n"
        else:
            try:
                status, ctype, body = handler(parse_qs(parts.query))
            except Exception:  # noqa: BLE001 - the admin server must not die
                log.exception("admin route %s failed", parts.path)
                status, ctype, body = 500, "text/plain", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, fmt, *args):  # scrapes every 15 s would flood the log
        log.debug("%s %s", self.server.name, fmt % args)
