"""Replica-client speed: file backend vs S3 (a real SeaweedFS ``weed mini`` on 127.0.0.1).

    python bench/bench_replica_clients.py [--small N] [--big-mib 64] [--workdir DIR]

For each backend: latency of N small PUTs (an L0 file per sync, 4 KiB) and GETs, one LIST of
N files (plain, and with ``use_metadata`` = one HEAD per file, in parallel), a DELETE of all of
them, and the throughput of one big PUT/GET (multipart on S3). Loopback S3 measures our client
overhead plus SeaweedFS, not a network; the machine may be shared, so treat figures as rough.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replication.file_replica_client import FileReplicaClient  # noqa: E402
from replication.replica_client import client_from_url  # noqa: E402
from tests.plugins.s3 import _stop, start_seaweedfs  # noqa: E402

TS = 1_700_000_000_000


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench(name: str, client, n: int, big: bytes) -> None:
    small = os.urandom(4096)
    put = []
    for t in range(1, n + 1):
        start = time.perf_counter()
        client.write_ltx_file(0, t, t, small, TS + t)
        put.append(time.perf_counter() - start)
    get = []
    for t in range(1, n + 1):
        start = time.perf_counter()
        with client.open_ltx_file(0, t, t) as f:
            f.read()
        get.append(time.perf_counter() - start)
    start = time.perf_counter()
    infos = list(client.ltx_files(0))
    list_s = time.perf_counter() - start
    start = time.perf_counter()
    list(client.ltx_files(0, use_metadata=True))
    list_meta_s = time.perf_counter() - start
    start = time.perf_counter()
    client.delete_ltx_files(infos)
    delete_s = time.perf_counter() - start

    start = time.perf_counter()
    client.write_ltx_file(9, 1, 2, big, TS)
    big_put_s = time.perf_counter() - start
    start = time.perf_counter()
    with client.open_ltx_file(9, 1, 2) as f:
        while f.read(1 << 20):
            pass
    big_get_s = time.perf_counter() - start
    client.delete_all()

    mib = len(big) / (1 << 20)
    print(f"{name:5s} small PUT 4 KiB x{n}: p50 {statistics.median(put) * 1e3:6.2f} ms  "
          f"p99 {pct(put, 0.99) * 1e3:6.2f} ms  ({n / sum(put):7.0f}/s)")
    print(f"{name:5s} small GET 4 KiB x{n}: p50 {statistics.median(get) * 1e3:6.2f} ms  "
          f"p99 {pct(get, 0.99) * 1e3:6.2f} ms  ({n / sum(get):7.0f}/s)")
    print(f"{name:5s} LIST {n} files: {list_s * 1e3:7.1f} ms;  with metadata: {list_meta_s * 1e3:7.1f} ms;  "
          f"DELETE {n}: {delete_s * 1e3:7.1f} ms")
    print(f"{name:5s} big PUT {mib:.0f} MiB: {mib / big_put_s:6.0f} MiB/s;  big GET: {mib / big_get_s:6.0f} MiB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-replica-"))
    big = os.urandom(args.big_mib << 20)

    bench("file", FileReplicaClient(str(workdir / "file-replica")), args.small, big)
    server, proc = start_seaweedfs(workdir / "seaweedfs")
    try:
        s3 = client_from_url(server.url(server.bucket, "bench/db"),
                             access_key_id=server.access_key, secret_access_key=server.secret_key)
        s3.init()
        bench("s3", s3, args.small, big)
        s3.close()
    finally:
        _stop(proc)


if __name__ == "__main__":
    main()
