"""An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that fails the Nth request of a kind.

boto3 talks to the proxy, the proxy to the real server (SeaweedFS); the Host header passes
unchanged, so SigV4 still checks. Requests are counted by kind once the proxy is armed:

* ``PUT``: PutObject;  ``GET``: GetObject (whole or a range);  ``LIST``: ListObjectsV2;
* ``DELETE``: DeleteObject(s) (``DELETE``, or ``POST ?delete``);  ``HEAD``: never faulted.

and the chosen one fails (``how``), once or from then on (``persistent``):

* ``500`` / ``503``: an S3 ``<Error>`` (InternalError / SlowDown); the server never sees it;
* ``reset``: the connection is reset before the request is forwarded;
* ``lost``: the request is forwarded (the server does it: a PUT is stored, a delete deletes),
  then the connection is reset: the answer is lost;
* ``cut``: forwarded; the answer's headers (with its real Content-Length) and half its body
  come, then the connection closes;
* ``slow``: forwarded; the answer is held until the client gives up (its read timeout) and
  closes the connection.

    proxy = FaultProxy(s3_server.endpoint)
    proxy.fault = HttpFault("PUT", 3, how="lost")
    proxy.arm()           # positions count from here
    ...
    proxy.close()
"""
from __future__ import annotations

import http.client
import io
import http.server
import select
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

#: Seconds a ``slow`` answer is held at most (the client's read timeout must be shorter).
SLOW_HOLD = 5.0

KINDS = ("PUT", "GET", "LIST", "DELETE")
HOWS = ("500", "503", "reset", "lost", "cut", "slow")


@dataclass
class HttpFault:
    """Fail request number ``at`` of ``kind`` and the ``times - 1`` after it (every later one
    when ``persistent``)."""

    kind: str
    at: int
    persistent: bool = False
    how: str = "500"
    fired: int = 0
    times: int = 1

    def hits(self, n: int) -> bool:
        return self.at <= n < self.at + self.times or (self.persistent and n > self.at)

    # The sweep's Fault and this one are logged and named alike.
    @property
    def target(self) -> str:
        return self.kind

    def __str__(self) -> str:
        return (f"{self.kind}[{self.how}] request {self.at} "
                f"{'persistent' if self.persistent else 'transient'}")


def kind_of(method: str, target: str) -> str:
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    if method == "HEAD":
        return "HEAD"
    if method == "DELETE" or (method == "POST" and "delete" in query):
        return "DELETE"
    if method == "GET":
        return "LIST" if "list-type" in query or "prefix" in query else "GET"
    return method  # PUT; POST (multipart) counts as itself


class FaultProxy:
    """127.0.0.1:<port> -> the S3 endpoint, failing requests as :attr:`fault` says once
    :meth:`arm` is called. ``calls`` counts the requests of each kind since then."""

    def __init__(self, upstream: str):
        up = urlsplit(upstream)
        self.fault: HttpFault | None = None
        self.armed = False
        self.calls: Counter = Counter()
        self.log: list[tuple[str, str, str]] = []   # (kind, path, what happened) while armed
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, *args):
                pass

            def _reset(self, rst: bool = True) -> None:
                # SO_LINGER 0: close() sends RST, as a dropped connection or a dying load
                # balancer does (without it: a FIN, the end of a body cut short); every
                # reference to the socket must go for it to close.
                if rst:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                else:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_WR)
                self.close_connection = True
                for f in (self.rfile, self.wfile, self.connection):
                    try:
                        f.close()
                    except OSError:
                        pass
                self.rfile, self.wfile = io.BytesIO(), io.BytesIO()  # what the server flushes

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = kind_of(self.command, self.path)
                how = proxy._trip(kind, self.path)
                if how in ("500", "503"):
                    code = "SlowDown" if how == "503" else "InternalError"
                    payload = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}"
                               f"</Code><Message>injected fault</Message></Error>").encode()
                    self.send_response(int(how))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if how == "reset":
                    return self._reset()
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if how == "lost":
                    return self._reset()
                if how == "slow":
                    # Hold the answer until the client times out and hangs up (its side of
                    # the connection becomes readable: EOF), then drop it.
                    poller = select.poll()  # not select(): descriptors past 1023
                    poller.register(self.connection, select.POLLIN)
                    poller.poll(SLOW_HOLD * 1000)
                    return self._reset()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if how == "cut":
                    self.wfile.write(data[:len(data) // 2])
                    return self._reset(rst=False)  # a RST could drop the half unread
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # a held answer must not hold up close()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def arm(self) -> None:
        """Faults on from now; request positions count from here."""
        with self._lock:
            self.calls.clear()
            self.log.clear()
            self.armed = True

    def _trip(self, kind: str, path: str) -> str | None:
        with self._lock:
            if not self.armed:
                return None
            self.calls[kind] += 1
            f = self.fault
            hit = f is not None and f.kind == kind and f.hits(self.calls[kind])
            if hit:
                f.fired += 1
            self.log.append((kind, path, f.how if hit else "ok"))
            return f.how if hit else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
