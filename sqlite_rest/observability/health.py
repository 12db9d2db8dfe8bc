"""Health endpoints served by the supervisor (parent) on the metrics/admin address.

- ``/live``: 200 while the supervisor runs (the process is up).
- ``/ready``: 200 when every registered readiness check passes (HTTP workers listening, and
  later: restore done, first replication sync done, replication healthy), else 503 with the
  failing checks named.
- ``/status``: JSON with every check's state plus whatever status providers report (e.g. the
  replicator's position and lag).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Tuple

import orjson

log = logging.getLogger("sqlite_rest.health")

#: A route handler: query dict -> (HTTP status, content type, body bytes).
Response = Tuple[int, str, bytes]
JSON = "application/json"


class Health:
    """Named readiness checks and status providers, registered by the supervisor's parts."""

    def __init__(self):
        self._lock = threading.Lock()
        self._checks: Dict[str, Callable[[], bool]] = {}
        self._status: Dict[str, Callable[[], dict]] = {}

    def add_ready_check(self, name: str, check: Callable[[], bool]) -> None:
        """`check()` -> True when this part is ready; an exception counts as not ready."""
        with self._lock:
            self._checks[name] = check

    def add_status(self, name: str, provider: Callable[[], dict]) -> None:
        with self._lock:
            self._status[name] = provider

    def check(self) -> Dict[str, bool]:
        with self._lock:
            checks = dict(self._checks)
        results = {}
        for name, fn in checks.items():
            try:
                results[name] = bool(fn())
            except Exception:  # noqa: BLE001 - a failing check means "not ready"
                log.warning("readiness check %s raised", name, exc_info=True)
                results[name] = False
        return results

    def ready(self) -> bool:
        return all(self.check().values())

    # -- route handlers -------------------------------------------------------------------

    def live_route(self, query) -> Response:
        return 200, JSON, b'{"status":"live"}'

    def ready_route(self, query) -> Response:
        checks = self.check()
        failing = sorted(name for name, ok in checks.items() if not ok)
        body = {"status": "ready" if not failing else "unavailable", "failing": failing}
        return (200 if not failing else 503), JSON, orjson.dumps(body)

    def status_route(self, query) -> Response:
        checks = self.check()
        with self._lock:
            providers = dict(self._status)
        body = {"ready": all(checks.values()), "checks": checks}
        for name, provider in providers.items():
            try:
                body[name] = provider()
            except Exception as exc:  # noqa: BLE001
                body[name] = {"error": str(exc)}
        return 200, JSON, orjson.dumps(body, default=str)

    def routes(self) -> Dict[str, Callable]:
        return {"/live": self.live_route, "/ready": self.ready_route,
                "/status": self.status_route}
