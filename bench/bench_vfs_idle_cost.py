"""What an idle read replica costs in S3 requests: ours vs the real `litestream-vfs`.

    python bench/bench_vfs_idle_cost.py [--idle 60] [--poll 1s]

A SeaweedFS (tests/plugins/s3.py) holds a small replica. Every S3 request goes through a
counting TCP proxy on 127.0.0.1 (request lines are counted in the client's stream; SigV4 still
checks, since the proxy passes the Host header through). Each reader is a fresh process that
opens the replica, answers one query, then stays idle for --idle seconds; the requests sent in
that idle window are the cost. Readers:

- the real `litestream-vfs` 0.5.17 extension (PyPI `litestream-vfs`, loaded into apsw), one
  connection (its poll interval is fixed at 1 s);
- our VFS (replication/vfs.py), one connection, ``poll_interval`` = --poll;
- our VFS, four connections in one process (they share one source and one poller);
- a replica server (`sqlite-rest serve` on the replica) with 2 and with 4 workers, plus the
  supervisor's health connection: one of its processes polls for all (``poll_share``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout, uninstalled

from replication.replica_client import client_from_url  # noqa: E402
from tests.plugins.counting_proxy import CountingProxy  # noqa: E402
from tests.plugins.replicas import make_db, snapshot_ltx  # noqa: E402
from tests.plugins.s3 import _stop as stop_seaweedfs, start_seaweedfs  # noqa: E402
from tests.plugins.server import start_server  # noqa: E402

READER = r"""
import os, sys, time
from urllib.parse import quote
import apsw
sys.path.insert(0, {repo!r})
kind, url, poll, n = {kind!r}, {url!r}, {poll!r}, {n}
if kind == "theirs":
    import litestream_vfs
    loader = apsw.Connection(":memory:")
    loader.enable_load_extension(True)
    loader.load_extension(os.path.splitext(litestream_vfs.loadable_path())[0])
    uri = "file:idle.db?vfs=litestream&replica_url=" + quote(url, safe="")
    conns = [apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)]
else:
    import replication.vfs as v
    conns = [v.connect(v.uri("idle.db", url, poll_interval=poll)) for _ in range(n)]
for c in conns:
    assert c.execute("SELECT count(*) FROM items").fetchall()
print("ready", flush=True)
time.sleep(3600)
"""


def idle_requests(proxy: CountingProxy, start, idle: float) -> float:
    """Requests per minute while the reader `start()` returns is idle."""
    proc = start()
    try:
        time.sleep(2)  # past the open and the first query
        before, t0 = proxy.count(), time.monotonic()
        time.sleep(idle)
        return (proxy.count() - before) / (time.monotonic() - t0) * 60
    finally:
        proc.stop() if hasattr(proc, "stop") else (proc.kill(), proc.wait())


def reader(kind: str, url: str, poll: str, n: int, env: dict):
    def start():
        proc = subprocess.Popen([sys.executable, "-c", READER.format(
            repo=str(REPO), kind=kind, url=url, poll=poll, n=n)], env=env,
            stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        return proc
    return start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle per reader")
    parser.add_argument("--poll", default="1s", help="our poll_interval (theirs is fixed at 1s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s3, weed = start_seaweedfs(tmp / "weed")
        proxy = CountingProxy(int(s3.endpoint.rsplit(":", 1)[1]))
        try:
            db = tmp / "app.db"
            make_db(db, [f"row-{i}" for i in range(100)])
            bucket_path = s3.new_path("idle")
            url = (f"s3://{s3.bucket}/{bucket_path}?endpoint=http://127.0.0.1:{proxy.port}"
                   "&forcePathStyle=true&region=" + s3.region)
            client = client_from_url(url, access_key_id=s3.access_key,
                                     secret_access_key=s3.secret_key)
            client.write_ltx_file(0, 1, 1, *snapshot_ltx(db))
            client.close()
            env = s3.env()
            rows = [
                ("litestream-vfs 0.5.17, 1 connection (poll 1s)", reader("theirs", url, "1s", 1, env)),
                (f"ours, 1 connection (poll {args.poll})", reader("ours", url, args.poll, 1, env)),
                (f"ours, 4 connections, 1 process (poll {args.poll})",
                 reader("ours", url, args.poll, 4, env)),
            ]

            def replica_server(workers: int):
                def start():
                    dsn = (f"file:{tmp / 'server.db'}?vfs=litestream&replica_url="
                           f"{quote(url, safe='')}&poll_interval={args.poll}")
                    server = start_server(dsn, "--security-allow-table", "items",
                                          "--workers", str(workers), env=env)
                    # the supervisor's health connection opens at the first /status
                    httpx.get(server.metrics_url + "/status", timeout=10).raise_for_status()
                    return server
                return start
            for workers in (2, 4):
                rows.append((f"replica server, {workers} workers + supervisor (poll {args.poll})",
                             replica_server(workers)))
            print(f"S3 requests per minute while idle ({args.idle:g} s each), "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
            for name, start in rows:
                print(f"  {name:58s} {idle_requests(proxy, start, args.idle):7.1f}", flush=True)
        finally:
            proxy.close()
            stop_seaweedfs(weed)


if __name__ == "__main__":
    main()
