"""A TCP proxy on 127.0.0.1 in front of an S3 endpoint that counts the HTTP requests passing
through it (request lines found in the client's stream; SigV4 still checks, since the Host
header passes unchanged). What an idle read replica costs in S3 requests is measured with it
(bench/bench_vfs_idle_cost.py, tests/test_replica_server.py)."""
from __future__ import annotations

import re
import socket
import threading

REQUEST_LINE = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) \S+ HTTP/1\.[01]\r\n")


class CountingProxy:
    """127.0.0.1:<port> -> the S3 endpoint, counting the requests that pass."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counted:  # a request line split across reads is found in tail + data
                    window = tail + data
                    n = len(REQUEST_LINE.findall(window)) - len(REQUEST_LINE.findall(tail))
                    with self._lock:
                        self.requests += n
                    tail = window[-200:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def count(self) -> int:
        with self._lock:
            return self.requests

    def close(self) -> None:
        self._listener.close()
