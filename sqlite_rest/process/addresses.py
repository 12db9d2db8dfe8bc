"""Listen addresses of `serve`: parsing, and the checks made before anything forks."""
from __future__ import annotations

import os
import socket
from typing import Tuple

from . import StartupError


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
