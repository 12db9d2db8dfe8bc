"""Follow lag of a read replica: a commit on the primary -> visible through a replica server.

    python bench/bench_replica_lag.py [--samples 40] [--poll 1s --poll 100ms] [--s3]

Starts the real primary (`serve --replication-enabled`, file:// replica, or SeaweedFS with
``--s3``) and one replica server reading that replica through the VFS, for each poll interval.
Each sample POSTs one row to the primary, then GETs it from the replica server every 5 ms
until it is there: the time from the POST's answer to the first GET that shows the row. Also
times a read-your-writes GET (``X-Replication-Min-Txid`` set to the POST's
``X-Replication-Position``, so the lineage check is in the time): from the
POST's answer to that GET's answer. Prints p50/p99 of both per poll interval.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugins.replicas import file_replica, make_db, s3_replica, wait_for, write_config  # noqa: E402
from tests.plugins.server import start_server  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(primary, replica_server, samples: int,
            spread: float) -> tuple[list[float], list[float]]:
    follow, ryw = [], []
    rng = random.Random(11)
    with httpx.Client(timeout=30) as http:
        for i in range(samples):
            name = f"lag-{time.monotonic_ns()}-{i}"
            w = http.post(f"{primary.base_url}/items", json={"name": name})
            acked = time.perf_counter()
            assert w.status_code == 201, w.text
            while True:
                r = http.get(f"{replica_server.base_url}/items?name=eq.{name}")
                if r.json():
                    follow.append(time.perf_counter() - acked)
                    break
                time.sleep(0.005)
            name2 = name + "-ryw"
            w = http.post(f"{primary.base_url}/items", json={"name": name2})
            acked = time.perf_counter()
            r = http.get(f"{replica_server.base_url}/items?name=eq.{name2}",
                         headers={"X-Replication-Min-Txid": w.headers["X-Replication-Position"]})
            assert r.json(), (r.status_code, r.text)
            ryw.append(time.perf_counter() - acked)
            # A random pause: a fixed one phase-locks the samples to the poller (each would
            # start right after the poll that found the previous one, one interval before
            # the next).
            time.sleep(0.05 + rng.uniform(0, spread))
    return follow, ryw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--poll", action="append", help="poll_interval values (default: 1s, 100ms)")
    ap.add_argument("--s3", action="store_true", help="also on a local SeaweedFS")
    args = ap.parse_args()
    polls = args.poll or ["1s", "100ms"]
    backends = ["file"] + (["s3"] if args.s3 else [])
    print(f"bench_replica_lag.py: {args.samples} samples; {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load {os.getloadavg()}")
    print("| replica | poll_interval | follow p50 | follow p99 | read-your-writes p50 | p99 |")
    print("|---|---|---|---|---|---|")
    s3 = proc = None
    for backend in backends:
        for poll in polls:
            tmp = Path(tempfile.mkdtemp(prefix="bench-lag-"))
            if backend == "s3" and s3 is None:
                from tests.plugins.s3 import start_seaweedfs
                s3, proc = start_seaweedfs(tmp / "seaweedfs")
            replica = file_replica(tmp, {}) if backend == "file" else s3_replica(s3)
            db = tmp / "app.db"
            make_db(db)
            config = write_config(tmp / "litestream.yml", db, replica)
            servers = []
            try:
                primary = start_server(db, "--security-allow-table", "items",
                                       "--replication-enabled", "--replication-config", config,
                                       env=replica.server_env)
                servers.append(primary)
                wait_for(lambda: replica.spans(), 30, "the first upload")
                query = {"vfs": "litestream", "replica_url": replica.url, "poll_interval": poll}
                dsn = f"file:{tmp / 'r.db'}?" + "&".join(f"{k}={quote(v, safe='')}"
                                                         for k, v in query.items())
                rs = start_server(dsn, "--security-allow-table", "items", env=replica.server_env)
                servers.append(rs)
                seconds = float(poll[:-2]) / 1000 if poll.endswith("ms") else float(poll[:-1])
                follow, ryw = measure(primary, rs, args.samples, seconds)
                print(f"| {backend} | {poll} | {statistics.median(follow) * 1000:.0f} ms | "
                      f"{pct(follow, 0.99) * 1000:.0f} ms | {statistics.median(ryw) * 1000:.0f} ms"
                      f" | {pct(ryw, 0.99) * 1000:.0f} ms |", flush=True)
            finally:
                for server in servers:
                    server.stop()
    if proc is not None:
        from tests.plugins.s3 import _stop
        _stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
