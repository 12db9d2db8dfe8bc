"""The process model of `sqlite-rest serve` (see design/process-model.md).

::

    sqlite-rest serve            the supervisor (parent): validates, serves /metrics, /live,
    │                            /ready, /status and /debug/pprof/ from its own threads,
    │                            receives commit signals, (later) runs the one replicator
    └── python -m sqlite_rest.server   the HTTP server (child, started with exec: it inherits
        │                              no thread, lock or SQLite handle of the parent); a
        │                              granian master that owns the listening socket
        ├── worker 1                   forked from that clean master; builds the Flask app
        └── worker N                   (create_app) and opens its own connections lazily

- One SIGTERM/SIGINT to the supervisor stops everything: it forwards SIGTERM to the HTTP
  server, whose workers stop accepting, finish in-flight requests and exit; then the
  supervisor stops its threads, removes its temp dir and exits 0.
- A worker that dies is logged and replaced by granian (``respawn_failed_workers``). A worker
  that dies again within ~5 s of being replaced is a crash loop: the HTTP server exits, and the
  supervisor stops with exit code 1 ("HTTP server exited unexpectedly").
- Workers signal each write COMMIT with one datagram to ``$SQLITEREST_COMMIT_SOCKET``
  (replication.notify); the supervisor counts them and calls the callbacks registered with
  `Supervisor.on_commit_signal` (the replicator's wake-up, later).
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from replication.primary import COMMIT_SOCKET_ENV, POSITION_BOARD_ENV, CommitListener

from . import __version__, logs
from .config import ServerConfig
from .health import Health

log = logging.getLogger("sqlite_rest.server")

#: Environment of the HTTP server child: its JSON spec (`ChildSpec`).
CHILD_SPEC_ENV = "SQLITEREST_CHILD_SPEC"
#: Directory where each worker drops a file named after its pid once its app is built.
WORKER_READY_ENV = "SQLITEREST_WORKER_READY_DIR"
#: File that exists while the supervisor's own readiness checks (replication, ...) pass; the
#: workers' /ready on the API port looks at it (one stat), so both ports agree.
READY_FILE_ENV = "SQLITEREST_READY_FILE"
#: Where a worker drops its CPU profile when the supervisor asks (only with --pprof-addr).
PPROF_DIR_ENV = "SQLITEREST_PPROF_DIR"
#: How often the supervisor refreshes that file (seconds).
READY_FILE_INTERVAL_S = 0.25
#: prometheus_client's multiprocess directory, set for the child (and so its workers) only.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Production HTTP servers `--server` accepts (measured in design/process-model.md).
SERVERS = ("granian",)
DEFAULT_SERVER = "granian"
#: Request threads per worker process (measured: see design/process-model.md).
DEFAULT_THREADS = 8
#: How long the supervisor waits for the HTTP server to listen before giving up (seconds).
STARTUP_TIMEOUT_S = 30.0
#: Before the workers get SIGTERM they answer every request with "Connection: close" for this
#: long (seconds), so keep-alive clients move off their connections while the server still
#: answers: a request is then never sent on a connection the server is closing.
DRAIN_S = 1.0
#: Signal telling a worker to start draining (handler installed by build_worker_app).
DRAIN_SIGNAL = signal.SIGUSR1
#: How long in-flight requests get after SIGTERM before the workers are killed (seconds).
SHUTDOWN_GRACE_S = 30.0
#: Period of the sqlite_rest_database_size_bytes observation (seconds; the Go server's).
DB_SIZE_INTERVAL_S = 30.0


class StartupError(Exception):
    """A startup failure, reported as one line (plus an optional hint) and exit code 1."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        return f"{self}" + (f" (hint: {self.hint})" if self.hint else "")


# -- addresses ------------------------------------------------------------------------------

def parse_addr(addr: str, flag: str) -> Tuple[str, int]:
    """``:8080`` (all interfaces), ``127.0.0.1:8080``, ``[::1]:8080`` -> (host, port)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise StartupError(f"{flag} {addr!r} is not host:port", hint="e.g. :8080 or 127.0.0.1:8080")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise StartupError(f"{flag} {addr!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise StartupError(f"{flag} {addr!r}: port must be 1..65535")
    return host, port


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int, flag: str) -> None:
    """Bind once, before anything forks, so a busy port is a clear one-line error."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise StartupError(f"{flag} {host}:{port} cannot be bound: {exc.strerror}",
                           hint="is another server running on that port?") from None
    finally:
        sock.close()


def _socket_connectable(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(path)
            return True
    except OSError:
        return False


def check_socket_path(path: str) -> None:
    """--http-socket: the directory must exist; a stale socket file is replaced (as the Go
    server does), anything else at that path is refused."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError(f"--http-socket: directory {directory} does not exist")
    if os.path.lexists(path):
        import stat

        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartupError(f"--http-socket {path} exists and is not a socket")
        if _socket_connectable(path):
            raise StartupError(f"--http-socket {path} is in use",
                               hint="is another server running on that socket?")
        os.unlink(path)


def _connectable(host: str, port: int) -> bool:
    target = "127.0.0.1" if host == "0.0.0.0" else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the small admin HTTP servers (metrics/health, pprof) -----------------------------------

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


# -- options and the child spec -------------------------------------------------------------

@dataclass
class ServeOptions:
    """Process-level settings of `serve` (the API settings are in `ServerConfig`)."""

    #: --http-addr: API listen address, host:port (":8080" = all interfaces).
    http_addr: str = ":8080"
    #: --http-socket: listen on this unix socket instead of http_addr ("" = use http_addr).
    http_socket: str = ""
    #: --metrics-addr: /metrics, /live, /ready, /status; "" disables.
    metrics_addr: str = ":8081"
    #: --pprof-addr: /debug/pprof/ of the supervisor; "" (default) disables.
    pprof_addr: str = ""
    #: --workers: HTTP worker processes (default: one per CPU core).
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    #: --threads: request threads per worker (each holds its own SQLite connections).
    threads: int = 0  # 0 = DEFAULT_THREADS
    #: --server: the production HTTP server.
    server: str = DEFAULT_SERVER
    #: Replication on: after each write COMMIT a worker asks for the replication position
    #: (TXID) that contains it and sends it as X-Replication-Txid (replication.notify.
    #: CommitWaiter). The request doubles as the commit signal; the supervisor's listener
    #: keeps the requests (`commit_listener.take_waiters()`) for the replicator to answer.
    wait_for_replication_txid: bool = False
    #: --log-level (Go scale, see logs.py) and --log-devel.
    log_level: int = logs.DEFAULT_LOG_LEVEL
    log_devel: bool = False


#: ServerConfig fields a worker can rebuild from JSON (the hooks are wired in the worker).
_PLAIN_CONFIG_FIELDS = tuple(
    f.name for f in dataclasses.fields(ServerConfig)
    if f.init and f.name not in ("writer_hook", "ready", "replication_status"))


def config_to_json(config: ServerConfig) -> dict:
    return {name: getattr(config, name) for name in _PLAIN_CONFIG_FIELDS}


def build_worker_app(config_fields: dict, wait_for_txid: bool = False):
    """The Flask app of one worker: create_app + the commit signal + metrics + request logs."""
    from replication.primary import writer_hook_from_env

    from .config import parse_dsn

    from .app import create_app
    from prometheus_client import REGISTRY

    from .metrics import replication_position_counter

    master = os.environ.get(PARENT_PID_ENV)
    if master:  # a worker: never outlive the master (nor, through it, the supervisor)
        die_with_parent(int(master))
    hooks = {}
    ready_file = os.environ.get(READY_FILE_ENV)
    if ready_file:
        hooks["ready"] = lambda: os.path.exists(ready_file)
    hooks["writer_hook"] = writer_hook_from_env(
        parse_dsn(config_fields["db_dsn"]).path, wait_for_position=wait_for_txid,
        on_answer=replication_position_counter())
    # The supervisor already warned about --auth-disabled, once for the whole server.
    config = ServerConfig(**{**config_fields, "warn_auth_disabled": False}, **hooks)
    app = create_app(config, metrics_registry=REGISTRY)
    _install_drain(app)
    relayed = [signal.SIGTERM, signal.SIGINT, DRAIN_SIGNAL]
    if os.environ.get(PPROF_DIR_ENV):
        from . import pprof

        pprof.install_worker_profiler(os.environ[PPROF_DIR_ENV])
        relayed.append(pprof.PROFILE_SIGNAL)
    relay_signals_from_any_thread(relayed)
    ready_dir = os.environ.get(WORKER_READY_ENV)
    if ready_dir:
        with open(os.path.join(ready_dir, str(os.getpid())), "w"):
            pass
    return app


def relay_signals_from_any_thread(signums) -> None:
    """Run the Python handlers of `signums` promptly whichever thread the kernel delivers to.

    Why: CPython runs a Python signal handler only in the main thread, at its next bytecode.
    granian parks its main thread in ``Event.wait()`` for the process's whole life, and the
    kernel hands a process-wide signal to another thread when the main thread already has
    one pending: a cgroup-wide SIGTERM (systemd's KillMode) arriving with the drain's SIGUSR1
    tripped SIGTERM's handler on a granian thread and nothing ever woke the main thread, so
    the worker never stopped (CI: test_sigterm_to_every_process_at_once_exits_zero hung).
    The C-level handler writes every caught signal's number to the wakeup fd whichever
    thread takes it; this thread reads them and calls the handler installed at that moment
    (granian installs its own after we return). The main thread may run the same handler
    again later: every handler relayed here is safe to run twice (granian's stop through
    `_make_worker_stop_reliable`, the others set an event).
    Call from the main thread (set_wakeup_fd requires it)."""
    wanted = frozenset(int(s) for s in signums)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def relay() -> None:
        while True:
            for signum in os.read(read_fd, 64):
                handler = signal.getsignal(signum) if signum in wanted else None
                if callable(handler) and handler is not signal.default_int_handler:
                    try:
                        handler(signum, None)
                    except Exception:  # noqa: BLE001 - the relay must outlive a bad handler
                        log.exception("signal handler for %s failed", signal.Signals(signum).name)

    threading.Thread(target=relay, name="signal-relay", daemon=True).start()


def _install_drain(app) -> None:
    """On DRAIN_SIGNAL the worker keeps serving but asks clients to close their connections.
    Called in the worker's main thread (signal handlers can only be installed there), before
    the worker announces itself ready, so the supervisor never signals a worker without it."""
    draining = threading.Event()
    signal.signal(DRAIN_SIGNAL, lambda signum, frame: draining.set())

    @app.after_request
    def _connection_close_while_draining(response):
        if draining.is_set():
            response.headers["Connection"] = "close"
        return response


#: Environment of the HTTP server child: the pid of the process that must outlive it (the
#: supervisor for the granian master, the master for its workers).
PARENT_PID_ENV = "SQLITEREST_PARENT_PID"


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL this process the moment its parent dies, even by SIGKILL.

    Why SIGKILL and not a graceful SIGTERM (#9): a supervisor killed with ``kill -9`` takes its
    replicator with it, and an HTTP server that drained gracefully kept committing (and
    acknowledging) writes that no replicator would ever ship; the next start then met it still
    writing. A request cut off mid-way was never acknowledged, so nothing acknowledged is lost.
    The parent may already be gone when this runs: then the process exits at once."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(1)


def _start_as_http_server(supervisor_pid: int) -> None:
    """In the child, before exec: die with the supervisor (`die_with_parent`), and leave the
    terminal's process group, so a Ctrl-C reaches only the supervisor, which then stops the
    child with one SIGTERM (a SIGINT straight from the terminal plus the master's SIGTERM could
    leave a granian worker hanging for the whole kill timeout)."""
    die_with_parent(supervisor_pid)
    os.setpgid(0, 0)


# -- the supervisor -------------------------------------------------------------------------

class Supervisor:
    """The `serve` parent process: see the module docstring."""

    def __init__(self, config: ServerConfig, options: ServeOptions):
        self.config = config
        self.options = options
        self.health = Health()
        self.commit_signals = 0
        self._commit_callbacks: List[Callable[[int], None]] = []
        self._stop = threading.Event()
        self._stop_reason: Optional[str] = None
        self._stop_failed = False
        #: Called in order before the HTTP server starts (e.g. restore, start the replicator).
        #: Raise StartupError to refuse to start.
        self.before_http_start: List[Callable[[], None]] = []
        #: Called in order after the HTTP server stopped (e.g. the final replication sync).
        #: Return False (or raise) to make the exit code 1.
        self.after_http_stop: List[Callable[[], Optional[bool]]] = []
        self._child: Optional[subprocess.Popen] = None
        #: Descriptors the HTTP server and its workers inherit and hold until they exit, e.g.
        #: the replication lock: no new start proceeds while an old worker may still write.
        self.http_server_fds: List[int] = []
        self._listening = False
        self._admin_servers: List[AdminServer] = []
        self._threads: List[threading.Thread] = []
        self._tmpdir: Optional[str] = None
        self._listener = None
        self.http_host, self.http_port = parse_addr(options.http_addr, "--http-addr")
        self.metrics_bind = (parse_addr(options.metrics_addr, "--metrics-addr")
                             if options.metrics_addr else None)
        self.pprof_bind = (parse_addr(options.pprof_addr, "--pprof-addr")
                           if options.pprof_addr else None)
        if options.server not in SERVERS:
            raise StartupError(f"--server {options.server!r} is not supported",
                               hint=f"choose one of: {', '.join(SERVERS)}")
        if options.workers < 1:
            raise StartupError(f"--workers {options.workers} must be at least 1")
        self.health.add_ready_check("http", lambda: self._listening and self._child_alive()
                                    and self.ready_workers() >= 1)
        self.health.add_status("http", lambda: {
            "addr": self.options.http_addr, "workers": self.options.workers,
            "pid": self._child.pid if self._child else None})
        self.health.add_status("commit_signals", lambda: {"received": self.commit_signals})
        started = time.time()
        self.health.add_status("process", lambda: {
            "version": __version__, "pid": os.getpid(),
            "uptime_seconds": round(time.time() - started, 3)})

    # -- hooks for the replicator (later) ---------------------------------------------------
    def on_commit_signal(self, callback: Callable[[int], None]) -> None:
        """Call `callback(n)` whenever workers signalled n (>= 1) commits (coalesced), on the
        listener thread right after it drained the socket (position requests of CommitWaiter
        are then waiting in `commit_listener.take_waiters()`)."""
        self._commit_callbacks.append(callback)

    @property
    def multiproc_dir(self) -> Optional[str]:
        return os.path.join(self._tmpdir, "metrics") if self._tmpdir else None

    @property
    def worker_ready_dir(self) -> Optional[str]:
        return os.path.join(self._tmpdir, "workers") if self._tmpdir else None

    def ready_workers(self) -> int:
        """Workers alive that have built their app (their pid file exists)."""
        if not self._tmpdir:
            return 0
        count = 0
        for name in os.listdir(self.worker_ready_dir):
            try:
                os.kill(int(name), 0)
            except (ProcessLookupError, ValueError):
                try:
                    os.unlink(os.path.join(self.worker_ready_dir, name))
                except OSError:
                    pass
                continue
            count += 1
        return count

    @property
    def commit_listener(self):
        """The `replication.notify.CommitListener` (bound from the start of `run()`, so it is
        there for `before_http_start` hooks)."""
        return self._listener

    @property
    def pprof_dir(self) -> Optional[str]:
        """Where workers drop their CPU profiles (pprof.profile_workers)."""
        return os.path.join(self._tmpdir, "pprof") if self._tmpdir else None

    @property
    def ready_file(self) -> Optional[str]:
        return os.path.join(self._tmpdir, "ready") if self._tmpdir else None

    @property
    def position_board_path(self) -> Optional[str]:
        return os.path.join(self._tmpdir, "position") if self._tmpdir else None

    @property
    def commit_socket_path(self) -> Optional[str]:
        return os.path.join(self._tmpdir, "commit.sock") if self._tmpdir else None

    def request_stop(self, reason: str, failed: bool = False) -> None:
        """Stop everything (thread-safe). `failed`: exit 1, e.g. replication gave up."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_failed = failed
        self._stop.set()

    # -- lifecycle ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Every check that can fail before anything starts, each a one-line StartupError."""
        if self.options.http_socket:
            check_socket_path(self.options.http_socket)
            binds = []
        else:
            check_port_free(self.http_host, self.http_port, "--http-addr")
            binds = [(self.http_host, self.http_port)]
        for flag, bind in (("--metrics-addr", self.metrics_bind), ("--pprof-addr", self.pprof_bind)):
            if bind is None:
                continue
            if bind[1] in (p for _, p in binds):
                raise StartupError(f"{flag} port {bind[1]} is already used by another flag")
            check_port_free(bind[0], bind[1], flag)
            binds.append(bind)

    def run(self) -> int:
        """Start everything, block until a signal or a failure, stop everything. Exit code."""
        self.validate()
        self._tmpdir = tempfile.mkdtemp(prefix="sqlite-rest-")
        os.mkdir(self.multiproc_dir)
        os.mkdir(self.worker_ready_dir)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start_parent_services()
            for hook in self.before_http_start:
                hook()
            self._start_child()
            self._wait_listening()
            if not self._stop.is_set():
                log.info("sqlite-rest serving", extra={
                    "http_addr": self.options.http_socket or self.options.http_addr,
                    "workers": self.options.workers,
                    "metrics_addr": self.options.metrics_addr,
                    "pprof_addr": self.options.pprof_addr,
                    "pid": os.getpid(), "http_server_pid": self._child.pid})
                print(self.banner(), flush=True)  # for people; the log line is for machines
                self._watch()
        finally:
            code = self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def banner(self) -> str:
        """One line saying where the server answers (stdout; the logs go to stderr)."""
        if self.options.http_socket:
            where = f"unix socket {self.options.http_socket}"
        else:
            host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.http_host, self.http_host)
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
            where = f"http://{host}:{self.http_port}/"
        extra = f"{self.options.workers} worker{'s' if self.options.workers != 1 else ''}"
        if self.metrics_bind:
            extra += f"; /metrics, /ready on port {self.metrics_bind[1]}"
        return f"sqlite-rest {__version__} serving {where} ({extra}; Ctrl-C stops)"

    def _on_signal(self, signum, frame) -> None:
        self.request_stop(f"received {signal.Signals(signum).name}")

    def _child_alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _start_parent_services(self) -> None:
        from .metrics import DatabaseSizeGauge, MetricsExposition

        self._listener = CommitListener(self.commit_socket_path)
        self._spawn_thread("commit-listener", self._receive_commits)
        self._spawn_thread("readiness", self._publish_readiness)
        if self.metrics_bind is not None:
            self._db_size = DatabaseSizeGauge()
            self._spawn_thread("database-size", self._observe_database_size)
            exposition = MetricsExposition(self.multiproc_dir)
            routes = {"/metrics": lambda q: (200, exposition.content_type, exposition.render())}
            routes.update(self.health.routes())
            self._start_admin(self.metrics_bind, routes, "metrics")
        if self.pprof_bind is not None:
            from . import pprof

            os.mkdir(self.pprof_dir)
            self._start_admin(self.pprof_bind, pprof.routes(self.worker_pids, self.pprof_dir),
                              "pprof")

    def _start_admin(self, bind, routes, name) -> None:
        try:
            server = AdminServer(bind[0], bind[1], routes, name)
        except OSError as exc:
            raise StartupError(f"{name} server {bind[0]}:{bind[1]} cannot be bound: "
                               f"{exc.strerror}") from None
        server.start()
        self._admin_servers.append(server)

    def _spawn_thread(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_child(self) -> None:
        spec = {
            "config": config_to_json(self.config),
            "host": self.http_host,
            "port": self.http_port,
            "uds": os.path.abspath(self.options.http_socket) if self.options.http_socket else None,
            "workers": self.options.workers,
            "threads": self.options.threads or DEFAULT_THREADS,
            "server": self.options.server,
            "log_level": self.options.log_level,
            "log_devel": self.options.log_devel,
            "wait_for_txid": self.options.wait_for_replication_txid,
            "shutdown_grace_s": SHUTDOWN_GRACE_S,
        }
        env = dict(os.environ)
        env[CHILD_SPEC_ENV] = json.dumps(spec)
        env[MULTIPROC_ENV] = self.multiproc_dir
        env[COMMIT_SOCKET_ENV] = self.commit_socket_path
        env[WORKER_READY_ENV] = self.worker_ready_dir
        env[READY_FILE_ENV] = self.ready_file
        env[POSITION_BOARD_ENV] = self.position_board_path
        if self.pprof_bind is not None:
            env[PPROF_DIR_ENV] = self.pprof_dir
        else:
            env.pop(PPROF_DIR_ENV, None)
        env[PARENT_PID_ENV] = str(os.getpid())
        supervisor_pid = os.getpid()
        self._child = subprocess.Popen([sys.executable, "-m", "sqlite_rest.server"], env=env,
                                       pass_fds=self.http_server_fds,
                                       preexec_fn=lambda: _start_as_http_server(supervisor_pid))

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and not self._stop.is_set():
            code = self._child.poll()
            if code is not None:
                raise StartupError(f"HTTP server failed to start (exit code {code})",
                                   hint="see the log lines above")
            if (self.ready_workers() >= self.options.workers
                    and self._http_connectable()):
                self._listening = True
                return
            time.sleep(0.05)
        if not self._stop.is_set():
            raise StartupError(f"HTTP server did not listen on {self.options.http_addr} with "
                               f"{self.options.workers} workers within {STARTUP_TIMEOUT_S:g} s")

    def _http_connectable(self) -> bool:
        if self.options.http_socket:
            return _socket_connectable(self.options.http_socket)
        return _connectable(self.http_host, self.http_port)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            code = self._child.poll()
            if code is not None:
                self.request_stop(f"HTTP server exited unexpectedly (exit code {code})",
                                  failed=True)

    def _shutdown(self) -> int:
        failed = self._stop_failed
        if self._stop_reason:
            (log.error if failed else log.info)("stopping: %s", self._stop_reason)
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            if not failed:  # failing (e.g. replication gave up): stop fast, skip the drain
                self._drain_workers(child.pid)
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(SHUTDOWN_GRACE_S + 5)
            except subprocess.TimeoutExpired:
                log.error("HTTP server did not stop within %s s; killing it", SHUTDOWN_GRACE_S + 5)
                child.kill()
                child.wait()
                failed = True
            if child.returncode not in (0, -signal.SIGTERM):
                log.error("HTTP server exited with code %s", child.returncode)
                failed = True
        socket_path = self.options.http_socket
        if socket_path and self._child is not None and os.path.exists(socket_path):
            try:
                os.unlink(socket_path)
            except OSError:
                pass
        for hook in self.after_http_stop:
            try:
                if hook() is False:
                    failed = True
            except Exception:  # noqa: BLE001 - every hook runs; the exit code tells
                log.exception("shutdown step %s failed", getattr(hook, "__name__", hook))
                failed = True
        for server in self._admin_servers:
            server.stop()
        for thread in self._threads:
            thread.join(2)
        if self._listener is not None:
            self._listener.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        log.info("sqlite-rest stopped")
        return 1 if failed else 0

    def worker_pids(self) -> List[int]:
        """The HTTP server's ready workers (their pid files, checked against /proc: pids get
        reused)."""
        child = self._child
        if child is None or not self._tmpdir:
            return []
        pids = []
        for name in os.listdir(self.worker_ready_dir):
            try:
                pid = int(name)
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (ValueError, OSError, IndexError):
                continue
            if ppid == child.pid:
                pids.append(pid)
        return pids

    def _drain_workers(self, child_pid: int) -> None:
        """Tell every ready worker to drain, then give clients DRAIN_S to move off."""
        signalled = 0
        for pid in self.worker_pids():
            try:
                os.kill(pid, DRAIN_SIGNAL)
                signalled += 1
            except OSError:
                continue
        if signalled:
            log.info("draining: answering with Connection: close for %.1f s", DRAIN_S)
            time.sleep(DRAIN_S)

    # -- parent threads -----------------------------------------------------------------------
    def _receive_commits(self) -> None:
        fd = self._listener.fileno()
        # Until the workers are gone, not just until the stop: writes finishing during the
        # shutdown still signal, and wait for their position.
        while not self._stop.is_set() or self._child_alive():
            readable, _, _ = select.select([fd], [], [], 0.5)
            if not readable:
                continue
            n = self._listener.drain()
            if not n:
                continue
            self.commit_signals += n
            for callback in list(self._commit_callbacks):
                try:
                    callback(n)
                except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                    log.exception("commit signal callback failed")

    def _publish_readiness(self) -> None:
        """Mirror the supervisor's checks (all but "http", which is about the workers
        themselves) into the ready file the workers' /ready looks at."""
        path = self.ready_file
        while True:
            checks = self.health.check()
            ok = all(v for name, v in checks.items() if name != "http")
            try:
                if ok and not os.path.exists(path):
                    with open(path, "w"):
                        pass
                elif not ok and os.path.exists(path):
                    os.unlink(path)
            except OSError:
                pass
            if self._stop.wait(READY_FILE_INTERVAL_S):
                return

    def _observe_database_size(self) -> None:
        import apsw

        while True:
            try:
                if os.path.exists(self.config.dsn.path):
                    conn = apsw.Connection(self.config.dsn.path, flags=apsw.SQLITE_OPEN_READONLY)
                    try:
                        size = conn.execute("SELECT page_count * page_size FROM pragma_page_count(),"
                                            " pragma_page_size()").fetchall()[0][0]
                    finally:
                        conn.close()
                    self._db_size.set(size)
            except Exception as exc:  # noqa: BLE001 - a metric must never stop the server
                log.warning("failed to get database size: %s", exc)
            if self._stop.wait(DB_SIZE_INTERVAL_S):
                return


# -- the HTTP server child ------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _make_worker_stop_reliable() -> None:
    """Every granian worker stops on its first SIGTERM/SIGINT, whenever it comes. Call once,
    in granian's master, before it forks workers.

    Two gaps in granian 2.8.7 that each left a worker running and its master waiting 30 s:
    - A signal that arrives while a worker is still starting (a stop right after a respawn;
      under load a forked child may not have run at all yet) ran the handler the worker
      inherited from its master, which only set a flag in the master's copy, and was lost.
      Stop signals stay blocked across fork until the child has installed a handler that
      remembers them; the worker stops as soon as granian's own handler is installed.
    - granian's ``WorkerSignal.set()`` hangs (holding the GIL) when it runs a second time
      while the first is under way, which two racing senders (a cgroup-wide kill and the
      master's terminate) or the signal relay cause. We let its handler run once."""
    import granian._signals as granian_signals

    install = granian_signals.set_sync_signals
    if getattr(install, "stops_once", False):
        return
    stop_requested = []  # one per worker process: each forked child starts with it empty

    def remember_stop(signum, frame):
        stop_requested.append(signum)

    def block_stop_signals():
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def unblock_stop_signals():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def in_new_worker():
        stop_requested.clear()
        for signum in STOP_SIGNALS:
            signal.signal(signum, remember_stop)
        unblock_stop_signals()  # a stop that came meanwhile is delivered now, and remembered

    def set_sync_signals():
        event = install()
        once = threading.Lock()
        stop = None
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                def stop_once(num, frame, handler=handler):
                    if once.acquire(blocking=False):
                        handler(num, frame)
                signal.signal(signum, stop_once)
                stop = stop or stop_once
        if stop_requested and stop is not None:
            stop(stop_requested[0], None)
        return event

    set_sync_signals.stops_once = True
    granian_signals.set_sync_signals = set_sync_signals
    os.register_at_fork(before=block_stop_signals, after_in_parent=unblock_stop_signals,
                        after_in_child=in_new_worker)


def _make_granian_server(spec: dict):
    from granian.constants import Interfaces
    from granian.server import Server

    from .metrics import mark_worker_dead

    multiproc_dir = os.environ.get(MULTIPROC_ENV)

    class SqliteRestGranian(Server):
        """granian's master, plus: a replaced worker's live metrics are forgotten."""

        def _respawn_workers(self, workers, spawn_target, target_loader, delay: float = 0):
            for idx in workers:
                old_pid = self.wrks[idx].inner.pid
                log.error("worker-%d (pid %s) died; replacing it", idx + 1, old_pid)
                mark_worker_dead(old_pid, multiproc_dir)
            return super()._respawn_workers(workers, spawn_target, target_loader, delay)

        def shutdown(self, exit_code=0):
            # A worker that got the same SIGTERM straight from a cgroup-wide kill (systemd's
            # default) exits 0 a moment before this master stops it; granian calls that an
            # unexpected exit and exits 1 — its watcher may even note it mid-shutdown, so
            # decide at the end: only workers that did not exit cleanly count.
            workers = list(self.wrks)
            self._refuse_new_connections()
            try:
                return super().shutdown(exit_code)
            except SystemExit as exc:
                crashed = [w for w in workers
                           if w.idx in self.interrupt_children and w.inner.exitcode != 0]
                if exc.code == 1 and not exit_code and not crashed:
                    return None
                raise

        def _refuse_new_connections(self):
            # Stopping workers keep the listening socket open until they exit, and the kernel
            # keeps completing handshakes into its backlog: those clients' requests were then
            # reset unanswered (RemoteProtocolError: did my POST happen?). Shut the socket down
            # first, so a late client is refused (ConnectError) and knows nothing happened.
            sock = getattr(self, "_sso", None)
            # TCP only: on a unix socket granian's accept loop then never saw its stop
            # (test_http_socket_like_the_go_server hung).
            if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
                return
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    from pathlib import Path

    return SqliteRestGranian(
        target="sqlite_rest",
        address=spec["host"],
        port=spec["port"],
        uds=Path(spec["uds"]) if spec.get("uds") else None,
        interface=Interfaces.WSGI,
        websockets=False,
        workers=spec["workers"],
        blocking_threads=spec["threads"],
        respawn_failed_workers=True,
        workers_kill_timeout=int(spec["shutdown_grace_s"]),
        log_enabled=True,
        log_dictconfig=logs.dict_config(spec["log_level"], spec["log_devel"]),
    )


def child_main() -> int:
    """Entry point of the HTTP server child (``python -m sqlite_rest.server``)."""
    spec = json.loads(os.environ[CHILD_SPEC_ENV])
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # what the workers forked from here die with
    logs.configure(spec["log_level"], spec["log_devel"])
    config_fields = spec["config"]
    server = _make_granian_server(spec)
    # Workers are forked from this process, which holds no SQLite handle and no app: each
    # worker builds its own app (and connections) in the loader.
    wait_for_txid = bool(spec.get("wait_for_txid"))
    _make_worker_stop_reliable()
    server.serve(target_loader=lambda _target: build_worker_app(config_fields, wait_for_txid))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
