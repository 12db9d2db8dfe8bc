"""A real `sqlite-rest serve` process for tests, on 127.0.0.1 with free ports.

    def test_x(serve, tmp_path):
        srv = serve(tmp_path / "data.db", "--security-allow-table", "items")
        httpx.get(srv.base_url + "/items")
        httpx.get(srv.metrics_url + "/metrics")

`start_server(db_path, *extra_args, env=None)` is the plain function (for benchmarks and other
plugins); it waits until the API answers and returns a `ServerProcess`. By default it passes
``--auth-disabled`` and ``--workers 2`` unless the extra args say otherwise. The `serve` fixture
stops every server it started by PID at teardown (SIGTERM, then SIGKILL after a timeout).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

START_TIMEOUT = 30.0  # seconds until the API must answer
STOP_TIMEOUT = 15.0   # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: held open together while chosen (one at a time, the kernel
    may hand out the same port twice: CI 2026-12-06, "--metrics-addr port 53101 is already
    used by another flag" in a crash-torture restart)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    base_url: str
    metrics_url: Optional[str]
    pid: int
    proc: subprocess.Popen
    log_path: str
    http_port: int
    metrics_port: Optional[int] = None
    pprof_url: Optional[str] = None
    args: list = field(default_factory=list)

    def logs(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def worker_pids(self) -> list:
        """PIDs of the HTTP workers (grandchildren), from /proc."""
        children = _children(self.pid)
        workers = []
        for child in children:
            workers.extend(_children(child))
        return workers


def _children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def start_server(db_path, *extra_args, env: Optional[dict] = None,
                 metrics: bool = True, pprof: bool = False, wait: bool = True,
                 new_session: bool = False) -> ServerProcess:
    """``new_session``: the server leads a process group of its own (as under a process
    manager), so a test can kill that whole group without killing itself."""
    http_port, metrics_port, pprof_port = free_ports(3)
    metrics_port = metrics_port if metrics else None
    pprof_port = pprof_port if pprof else None
    args = [sys.executable, "-m", "sqlite_rest.cli", "serve",
            "--db-dsn", str(db_path),
            "--http-addr", f"127.0.0.1:{http_port}",
            "--metrics-addr", f"127.0.0.1:{metrics_port}" if metrics else ""]
    if pprof:
        args += ["--pprof-addr", f"127.0.0.1:{pprof_port}"]
    extra = [str(a) for a in extra_args]
    if not any(a.startswith("--auth") for a in extra):
        args.append("--auth-disabled")
    if not any(a.startswith("--workers") for a in extra):
        args += ["--workers", "2"]
    args += extra
    log = tempfile.NamedTemporaryFile(prefix="sqlite-rest-serve-", suffix=".log", delete=False)
    full_env = dict(os.environ)
    for key in list(full_env):
        if key.startswith("SQLITEREST_") or key == "PROMETHEUS_MULTIPROC_DIR":
            del full_env[key]
    full_env.update(env or {})
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                            start_new_session=new_session)
    log.close()
    server = ServerProcess(
        base_url=f"http://127.0.0.1:{http_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}" if metrics else None,
        pid=proc.pid, proc=proc, log_path=log.name, http_port=http_port,
        metrics_port=metrics_port,
        pprof_url=f"http://127.0.0.1:{pprof_port}" if pprof else None, args=args)
    if wait:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(http_port):
            if proc.poll() is not None:
                raise RuntimeError(f"sqlite-rest serve exited with {proc.returncode}:\n{server.logs()}")
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"sqlite-rest serve did not listen in {START_TIMEOUT} s:\n"
                                   f"{server.logs()}")
            time.sleep(0.05)
        # The supervisor says "serving" (and /ready turns 200) once every worker is up.
        while "sqlite-rest serving" not in server.logs():
            if proc.poll() is not None:
                raise RuntimeError(f"sqlite-rest serve exited with {proc.returncode}:\n{server.logs()}")
            if time.monotonic() > deadline:
                break  # e.g. --log-level -1 hides the line; the API answers anyway
            time.sleep(0.05)
    return server


@pytest.fixture
def serve():
    """`serve(db_path, *extra_args, env=None, ...)` -> ServerProcess; all stopped at teardown."""
    started: list = []

    def _start(db_path, *extra_args, **kwargs) -> ServerProcess:
        server = start_server(db_path, *extra_args, **kwargs)
        started.append(server)
        return server

    yield _start
    for server in started:
        try:
            server.stop()
        finally:
            try:
                os.unlink(server.log_path)
            except OSError:
                pass
