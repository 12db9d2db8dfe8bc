"""Structured logs: JSON lines by default, a human format with --log-devel.

--log-level keeps the Go server's numeric scale (zap level = -log-level through logr): the Go
server logs normal events at V(0) and chatty details (SQL text) at V(8), so

| --log-level | shown |
|---|---|
| <= -2 | errors only |
| -1 | warnings and errors |
| 0 .. 7 (default 5) | info: startup, one line per request, warnings, errors |
| >= 8 | debug: also SQL text and internals |
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional

import orjson

#: The Go server's default --log-level.
DEFAULT_LOG_LEVEL = 5
#: The logger of the per-request lines.
REQUEST_LOGGER = "sqlite_rest.request"
#: LogRecord attributes that are not user fields.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def python_level(go_level: int) -> int:
    """Map the Go server's --log-level to a `logging` level (see the module docstring)."""
    if go_level >= 8:
        return logging.DEBUG
    if go_level >= 0:
        return logging.INFO
    if go_level == -1:
        return logging.WARNING
    return logging.ERROR


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class DevelFormatter(logging.Formatter):
    """Human format: time, level, logger, message, then key=value extras."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s  %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items()
                  if k not in _RESERVED and not k.startswith("_")]
        return f"{text}  {' '.join(extras)}" if extras else text


def configure(go_level: int = DEFAULT_LOG_LEVEL, devel: bool = False, stream=None) -> None:
    """Install the one stderr handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(DevelFormatter() if devel else JSONFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(go_level))


def dict_config(go_level: int = DEFAULT_LOG_LEVEL, devel: bool = False) -> dict:
    """The same set-up as a `logging.config.dictConfig` dict (granian takes one)."""
    formatter = "sqlite_rest.logs.DevelFormatter" if devel else "sqlite_rest.logs.JSONFormatter"
    level = logging.getLevelName(python_level(go_level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"_granian": {"handlers": [], "propagate": True, "level": level}},
    }


def instrument(app, logger: Optional[logging.Logger] = None) -> None:
    """Log one line per request: method, path, status, duration_ms, bytes, remote.

    In JSON mode the line is written with one ``os.write`` to stderr, bypassing `logging`:
    the handler lock of `logging` serialised all request threads and cost ~40 % of a worker's
    CPU time at 3,000 req/s (py-spy). One write of a line shorter than PIPE_BUF is atomic, so
    lines of concurrent threads and processes never interleave.
    """
    log = logger or logging.getLogger(REQUEST_LOGGER)
    if not log.isEnabledFor(logging.INFO):
        return  # nothing would be written: skip the hooks entirely

    from flask import g, request

    fast = _writes_json_to_stderr(log)
    name = log.name

    @app.before_request
    def _start():
        g._sqlite_rest_log_t0 = time.perf_counter()

    @app.after_request
    def _log(response):
        t0 = g.get("_sqlite_rest_log_t0")
        duration_ms = round((time.perf_counter() - t0) * 1000.0, 3) if t0 is not None else None
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": duration_ms,
            "bytes": response.calculate_content_length(),
            "remote": request.remote_addr,
        }
        if fast:
            entry = {"ts": round(time.time(), 6), "level": "info", "logger": name,
                     "msg": "request", **fields}
            try:
                os.write(2, orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            except OSError:
                pass  # a full or closed stderr must not fail the request
        else:
            log.info("request", extra=fields)
        return response


def _writes_json_to_stderr(log: logging.Logger) -> bool:
    """True when `log`'s records end up only in our JSON handler on stderr."""
    handlers = []
    current = log
    while current is not None:
        handlers.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return (len(handlers) == 1 and isinstance(handlers[0], logging.StreamHandler)
            and isinstance(handlers[0].formatter, JSONFormatter)
            and getattr(handlers[0].stream, "fileno", lambda: -1)() == 2)
