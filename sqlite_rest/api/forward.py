"""``--forward-writes`` on a read replica: a write is sent to the primary, and its answer is
given back only once this replica's own view holds the write, so a client that only ever
talks to replicas reads its own writes.

The request goes as it came (method, path, query, body and the headers that decide a write:
Authorization, Content-Type, Prefer, Accept, Range, the profiles); the primary's answer comes
back as it was, plus ``X-Replication-Forwarded: <primary>``. Waiting is bounded by
``--replica-wait-timeout``; past it the primary's answer is still given (the write is done and
must not be retried), with ``X-Replication-Visible: false``, and a read with
``X-Replication-Min-Txid`` then waits for it.
"""
from __future__ import annotations

import logging

import urllib3

from replication.primary import replica_catch_up

from ..errors import api_error
from ..responses import ApiResponse

log = logging.getLogger("sqlite_rest.forward")

#: The request headers a write depends on (WSGI names -> HTTP names).
FORWARDED_HEADERS = (
    ("HTTP_AUTHORIZATION", "Authorization"), ("CONTENT_TYPE", "Content-Type"),
    ("HTTP_PREFER", "Prefer"), ("HTTP_ACCEPT", "Accept"), ("HTTP_RANGE", "Range"),
    ("HTTP_CONTENT_PROFILE", "Content-Profile"), ("HTTP_ACCEPT_PROFILE", "Accept-Profile"),
    ("HTTP_APIKEY", "apikey"), ("HTTP_X_CLIENT_INFO", "X-Client-Info"),
)
#: Response headers that describe one hop, not the answer (never copied back).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length",
                        "server", "date"})
#: Seconds to connect to the primary, and to wait for its answer.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0

_pool: urllib3.PoolManager | None = None


def _http() -> urllib3.PoolManager:
    global _pool
    if _pool is None:  # per process (a worker), made after the fork
        _pool = urllib3.PoolManager(num_pools=4, maxsize=16, retries=False)
    return _pool


def forward_write(state, environ, body: bytes) -> ApiResponse:
    primary = state.config.primary_url.rstrip("/")
    url = primary + environ.get("PATH_INFO", "")
    if environ.get("QUERY_STRING"):
        url += "?" + environ["QUERY_STRING"]
    headers = {name: environ[key] for key, name in FORWARDED_HEADERS if environ.get(key)}
    try:
        answer = _http().request(environ["REQUEST_METHOD"], url, body=body, headers=headers,
                                 redirect=False,
                                 timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT,
                                                         read=READ_TIMEOUT))
    except urllib3.exceptions.HTTPError as exc:
        log.warning("forwarding %s %s to the primary failed: %s", environ["REQUEST_METHOD"],
                    environ.get("PATH_INFO"), exc)
        raise api_error("primary_unreachable", primary=primary,
                        details=str(exc)[:300]) from None
    out = [(name, value) for name, value in answer.headers.items()
           if name.lower() not in HOP_BY_HOP and name.lower() != "content-type"]
    out.append(("X-Replication-Forwarded", primary))
    txid = answer.headers.get("X-Replication-Txid")
    if 200 <= answer.status < 300 and txid:
        try:
            wanted = int(txid, 16)
        except ValueError:
            wanted = None
        if wanted is not None and not replica_catch_up(state.db.reader(), wanted,
                                                       state.config.replica_wait_timeout):
            out.append(("X-Replication-Visible", "false"))
    content_type = answer.headers.get("Content-Type")
    if not answer.data and content_type is None:
        return ApiResponse.without_body(answer.status, out)
    return ApiResponse(answer.data, answer.status, out, content_type)
