"""The process model of `sqlite-rest serve` (see design/process-model.md).

::

    sqlite-rest serve               the supervisor (supervisor.py): validates, serves /metrics,
    │                               /live, /ready, /status and /debug/pprof/ from its own
    │                               threads (admin.py), receives commit signals, runs the one
    │                               replicator (replication.primary)
    └── python -m sqlite_rest.process.http_server
        │                           the HTTP server (http_server.py; started with exec: it
        │                           inherits no thread or SQLite handle, only the replication
        │                           lock); a granian master that owns the listening socket
        ├── worker 1                forked from that clean master; builds the Flask app
        └── worker N                (create_app) and opens its own connections lazily

Modules: ``addresses.py`` (listen addresses and their checks), ``admin.py`` (the supervisor's
small HTTP servers), ``supervisor.py``, ``http_server.py`` (the child, and what both sides
agree on: environment, child spec, signals). Every HTTP process dies with its parent.

- One SIGTERM/SIGINT to the supervisor stops everything: it forwards SIGTERM to the HTTP
  server, whose workers stop accepting, finish in-flight requests and exit; then the
  supervisor stops its threads, removes its temp dir and exits 0.
- A worker that dies is logged and replaced by granian (``respawn_failed_workers``). A worker
  that dies again within ~5 s of being replaced is a crash loop: the HTTP server exits, and the
  supervisor stops with exit code 1 ("HTTP server exited unexpectedly").
- With replication on, workers signal the write COMMITs the replicator has not started a
  round for with one datagram to ``$SQLITEREST_COMMIT_SOCKET`` (replication.notify); the
  supervisor counts them and calls the callbacks registered with `Supervisor.on_commit_signal`
  (the replicator's wake-up). With none registered, workers are not given the socket.
"""
from __future__ import annotations

from typing import Optional


class StartupError(Exception):
    """A startup failure, reported as one line (plus an optional hint) and exit code 1."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        return f"{self}" + (f" (hint: {self.hint})" if self.hint else "")
