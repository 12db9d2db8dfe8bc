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
from typing import Callable, Optional

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


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on ``sys.stderr`` as it is when a record is written, not as it was
    when the handler was made (as the standard library's last-resort handler). ``main()``
    run in-process (tests) installs this on the root logger while ``sys.stderr`` is a
    captured stream, closed once the test ends: a plain StreamHandler bound to it failed
    every later record ("--- Logging error ---", I/O operation on closed file)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # no stream of its own

    @property
    def stream(self):
        return sys.stderr


def configure(go_level: int = DEFAULT_LOG_LEVEL, devel: bool = False, stream=None) -> None:
    """Install the one stderr handler on the root logger (idempotent): ``stream``, else
    whatever ``sys.stderr`` is at each record (:class:`StderrHandler`)."""
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(DevelFormatter() if devel else JSONFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(go_level))


class QuietGranianFilter(logging.Filter):
    """Drops granian's start-up advice that does not apply to us: it calls more Python threads
    than cores "quite high", but our request threads mostly wait on SQLite and the network
    (the thread count is measured, see design/process-model.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Configuration allows spawning up to")


def dict_config(go_level: int = DEFAULT_LOG_LEVEL, devel: bool = False) -> dict:
    """The same set-up as a `logging.config.dictConfig` dict (granian takes one)."""
    formatter = ("sqlite_rest.observability.logs.DevelFormatter" if devel else
                 "sqlite_rest.observability.logs.JSONFormatter")
    level = logging.getLevelName(python_level(go_level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "filters": {"quiet_granian": {"()": "sqlite_rest.observability.logs.QuietGranianFilter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr", "filters": ["quiet_granian"]}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"_granian": {"handlers": [], "propagate": True, "level": level}},
    }


def at_process_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` when this process ends normally: at interpreter exit (`atexit`), and at the
    end of a multiprocessing child, which leaves through ``os._exit`` and never runs atexit.
    granian's workers are such children: their last request-log lines and counts were lost
    at every graceful stop (found in review, #11). Call it in the process that must run it."""
    import atexit
    from multiprocessing import util

    atexit.register(fn)
    util.Finalize(None, fn, exitpriority=10)


class _LineWriter:
    """Writes request log lines to a file descriptor from one background thread.

    Request threads only append to a queue; the writer wakes every ``FLUSH_INTERVAL`` and
    joins whatever queued up into one ``os.write``. Waking it per line cost ~40 us of CPU per
    request (bench/api_get_by_pk.py: 124 -> 84 us for a GET by key), more than the request's
    own work; before that, py-spy showed the per-request ``os.write`` of 16 threads at ~15 %
    of a worker's time and `logging`'s handler lock at ~40 %. Lines still pending when the
    process ends are written (`at_process_exit`).
    """

    #: Seconds between writes: lines reach the log at most this late.
    FLUSH_INTERVAL = 0.05

    def __init__(self, fd: int = 2):
        import queue
        import threading

        self.fd = fd
        self.pid = os.getpid()
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        at_process_exit(self.flush)
        #: Append one line (bytes); never blocks, never wakes a thread.
        self.put = self._queue.put

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # a full or closed stderr must not take the worker down

    def _run(self) -> None:
        while True:
            time.sleep(self.FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        lines = []
        get = self._queue.get_nowait
        try:
            while True:
                lines.append(get())
                if len(lines) >= 4096:
                    self._write(b"".join(lines))
                    lines.clear()
        except Exception:  # queue.Empty
            pass
        if lines:
            self._write(b"".join(lines))


_line_writer: Optional[_LineWriter] = None


def _shared_line_writer() -> _LineWriter:
    global _line_writer
    if _line_writer is None or _line_writer.pid != os.getpid():
        _line_writer = _LineWriter()
    return _line_writer


class RequestLog:
    """One line per request: method, path, status, duration_ms, bytes, remote.

    In JSON mode (the default) the lines bypass `logging` and go through `_LineWriter`; with
    --log-devel they go through `logging` (human format, speed matters less). Built once per
    app; `enabled` is False when the level hides the lines (then nothing is done per request).
    """

    def __init__(self, logger: Optional[logging.Logger] = None):
        log = logger or logging.getLogger(REQUEST_LOGGER)
        self._log = log
        self.enabled = log.isEnabledFor(logging.INFO)
        writer = _shared_line_writer() if self.enabled and _writes_json_to_stderr(log) else None
        self._put = writer.put if writer is not None else None
        self._name = log.name

    def write(self, method: str, path: str, status: int, duration_ms: float,
              nbytes: Optional[int], remote: Optional[str]) -> None:
        # One dict and integer arithmetic: round() goes through a decimal string (0.7 us for
        # the timestamp alone), and the line cost 3 us where a GET by key costs 40 (#11).
        duration_ms = int(duration_ms * 1000.0 + 0.5) / 1000.0
        if self._put is not None:
            self._put(orjson.dumps(
                {"ts": time.time_ns() // 1000 / 1e6, "level": "info", "logger": self._name,
                 "msg": "request", "method": method, "path": path, "status": status,
                 "duration_ms": duration_ms, "bytes": nbytes, "remote": remote},
                option=orjson.OPT_APPEND_NEWLINE))
            return
        self._log.info("request", extra={"method": method, "path": path, "status": status,
                                         "duration_ms": duration_ms, "bytes": nbytes,
                                         "remote": remote})


def _writes_json_to_stderr(log: logging.Logger) -> bool:
    """True when `log`'s records end up only in our JSON handler on stderr."""
    handlers = []
    current = log
    while current is not None:
        handlers.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    if not (len(handlers) == 1 and isinstance(handlers[0], logging.StreamHandler)
            and isinstance(handlers[0].formatter, JSONFormatter)):
        return False
    try:
        return handlers[0].stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # no descriptor (a captured stream), closed
        return False
