"""The HTTP server child of `serve` (``python -m sqlite_rest.process.http_server``): a granian
master that owns the listening socket, and its workers, each building the Flask app after the
fork. Also what the supervisor and the child agree on: the environment, the child spec, and
the signals (design/process-model.md).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading

from ..observability import logs
from ..config import ServerConfig

log = logging.getLogger("sqlite_rest.server")  # the name operators filter on, kept

#: Environment of the HTTP server child: its JSON spec (`ChildSpec`).
CHILD_SPEC_ENV = "SQLITEREST_CHILD_SPEC"
#: Directory where each worker drops a file named after its pid once its app is built.
WORKER_READY_ENV = "SQLITEREST_WORKER_READY_DIR"
#: File that exists while the supervisor's own readiness checks (replication, ...) pass; the
#: workers' /ready on the API port looks at it (one stat), so both ports agree.
READY_FILE_ENV = "SQLITEREST_READY_FILE"
#: Where a worker drops its CPU profile when the supervisor asks (only with --pprof-addr).
PPROF_DIR_ENV = "SQLITEREST_PPROF_DIR"
#: prometheus_client's multiprocess directory, set for the child (and so its workers) only.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Production HTTP servers `--server` accepts (measured in design/process-model.md).
SERVERS = ("granian",)
DEFAULT_SERVER = "granian"
#: Request threads per worker process (measured: see design/process-model.md).
DEFAULT_THREADS = 8
#: Signal telling a worker to start draining (handler installed by build_worker_app).
DRAIN_SIGNAL = signal.SIGUSR1
#: How long in-flight requests get after SIGTERM before the workers are killed (seconds).
SHUTDOWN_GRACE_S = 30.0


#: ServerConfig fields a worker can rebuild from JSON (the hooks are wired in the worker).
_PLAIN_CONFIG_FIELDS = tuple(
    f.name for f in dataclasses.fields(ServerConfig)
    if f.init and f.name not in ("writer_hook", "ready", "replication_status"))


def config_to_json(config: ServerConfig) -> dict:
    return {name: getattr(config, name) for name in _PLAIN_CONFIG_FIELDS}


def build_worker_app(config_fields: dict, wait_for_txid: bool = False):
    """The Flask app of one worker: create_app + the commit signal + metrics + request logs."""
    from replication.primary import writer_hook_from_env

    from ..config import parse_dsn

    from ..app import create_app
    from prometheus_client import REGISTRY

    from ..observability.metrics import replication_position_counter

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
        from ..observability import pprof

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
    inner = app.wsgi_app

    def connection_close_while_draining(environ, start_response):
        if not draining.is_set():
            return inner(environ, start_response)

        def closing(status, headers, exc_info=None):
            return start_response(status, [*headers, ("Connection", "close")], exc_info)
        return inner(environ, closing)

    # A WSGI wrapper, not an after_request hook: Flask's response hooks cost every request.
    app.wsgi_app = connection_close_while_draining


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

    from ..observability.metrics import mark_worker_dead

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
    """Entry point of the HTTP server child (``python -m sqlite_rest.process.http_server``)."""
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
