"""The `serve` supervisor (parent process): validates everything, serves the admin routes,
starts the HTTP server child, receives commit signals, runs the replicator's hooks, and stops
everything on one signal (design/process-model.md)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from replication.primary import (COMMIT_SOCKET_ENV, POSITION_BOARD_ENV, REPLICA_POLL_SHARE_ENV,
                                 CommitListener)

from ..api.replica_reads import REPLICA_FLOOR_ENV

from ..observability import logs
from .. import __version__
from ..config import ServerConfig
from ..observability.health import Health
from . import StartupError
from .addresses import (_connectable, _socket_connectable, check_port_free, check_socket_path,
                        parse_addr)
from .admin import AdminServer
from .http_server import (CHILD_SPEC_ENV, DEFAULT_SERVER, DEFAULT_THREADS, DRAIN_SIGNAL,
                          MULTIPROC_ENV, PARENT_PID_ENV, PPROF_DIR_ENV, READY_FILE_ENV, SERVERS,
                          SHUTDOWN_GRACE_S, WORKER_READY_ENV, _start_as_http_server,
                          config_to_json)

log = logging.getLogger("sqlite_rest.server")  # the name operators filter on, kept

#: How often the supervisor refreshes that file (seconds).
READY_FILE_INTERVAL_S = 0.25
#: How long the supervisor waits for the HTTP server to listen before giving up (seconds).
STARTUP_TIMEOUT_S = 30.0
#: Before the workers get SIGTERM they answer every request with "Connection: close" for this
#: long (seconds), so keep-alive clients move off their connections while the server still
#: answers: a request is then never sent on a connection the server is closing.
DRAIN_S = 1.0
#: Period of the sqlite_rest_database_size_bytes observation (seconds; the Go server's).
DB_SIZE_INTERVAL_S = 30.0


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
        #: Variables the HTTP server's processes get beside the supervisor's own (set by the
        #: before-start hooks, e.g. the lineage of the replicator's history).
        self.http_server_env: dict = {}
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
    def replica_floor_path(self) -> Optional[str]:
        """A read replica's highest position served by any worker (api/replica_reads.py)."""
        return os.path.join(self._tmpdir, "replica-floor") if self._tmpdir else None

    @property
    def replica_poll_share_path(self) -> Optional[str]:
        """A read replica's one poller for all its processes (replication/poll_share.py)."""
        return os.path.join(self._tmpdir, "replica-poll") if self._tmpdir else None

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
        from ..observability.metrics import DatabaseSizeGauge, MetricsExposition

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
            from ..observability import pprof

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
        env = dict(os.environ, **self.http_server_env)
        env[CHILD_SPEC_ENV] = json.dumps(spec)
        env[MULTIPROC_ENV] = self.multiproc_dir
        if self._commit_callbacks:  # a replicator listens: workers signal their commits
            env[COMMIT_SOCKET_ENV] = self.commit_socket_path
        else:  # nobody to wake: a datagram per few writes would only cost CPU on both sides
            env.pop(COMMIT_SOCKET_ENV, None)
        env[WORKER_READY_ENV] = self.worker_ready_dir
        env[READY_FILE_ENV] = self.ready_file
        env[POSITION_BOARD_ENV] = self.position_board_path
        env[REPLICA_FLOOR_ENV] = self.replica_floor_path
        env[REPLICA_POLL_SHARE_ENV] = self.replica_poll_share_path
        if self.pprof_bind is not None:
            env[PPROF_DIR_ENV] = self.pprof_dir
        else:
            env.pop(PPROF_DIR_ENV, None)
        env[PARENT_PID_ENV] = str(os.getpid())
        supervisor_pid = os.getpid()
        self._child = subprocess.Popen([sys.executable, "-m", "sqlite_rest.process.http_server"], env=env,
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
        # poll(): select() refuses descriptors past 1023 (replication/db.py, DB.monitor)
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        # Until the workers are gone, not just until the stop: writes finishing during the
        # shutdown still signal, and wait for their position.
        while not self._stop.is_set() or self._child_alive():
            readable = poller.poll(500)
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
