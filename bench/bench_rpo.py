"""RPO latency: commit in one process → on the replica, ours vs real ``litestream replicate``.

For each (replicator, replica backend, commit rate) a writer process commits at a fixed rate;
every transaction inserts a row and stamps a one-row ``marker`` table with its sequence
number. A detector polls the replica's L0 listing, decodes each new L0 file, and reads the
marker page it carries: every commit with a sequence ≤ that number is now restorable. The
latency of a commit = when the detector first saw a file holding it − when the writer's COMMIT
returned (same machine clock).

Both replicators run with default settings (Litestream: monitor-interval 1s, sync-interval 1s;
ours: woken by inotify/commit signals). Prints p50/p99/max per case.

    python bench/bench_rpo.py [--seconds 10] [--rates 50,500] [--backends file,s3]
                              [--replicators ours,litestream]
"""
from __future__ import annotations

import argparse
import bisect
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, uninstalled
from replication.ltx import Decoder, parse_filename  # noqa: E402
from tests.plugins.replicas import stop_process as stop  # noqa: E402

MARKER = re.compile(rb"SEQ:(\d{12})")

WRITER = r"""
import apsw, json, sys, time
path, rate, seconds, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
con = apsw.Connection(path)
con.execute("PRAGMA busy_timeout=5000")
times = []
start = time.time()
period = 1.0 / rate
seq = 0
pad = b"x" * 200
while True:
    seq += 1
    due = start + seq * period
    if due > start + seconds:
        break
    delay = due - time.time()
    if delay > 0:
        time.sleep(delay)
    with con:
        con.execute("INSERT INTO rows(payload) VALUES (?)", (pad,))
        con.execute("UPDATE marker SET v = ? WHERE id = 1", ("SEQ:%012d" % seq,))
    times.append(time.time())
json.dump(times, open(out, "w"))
"""


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def make_db(path: str) -> int:
    import apsw
    con = apsw.Connection(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, payload BLOB)")
    con.execute("CREATE TABLE marker(id INTEGER PRIMARY KEY, v TEXT)")
    con.execute("INSERT INTO marker VALUES (1, 'SEQ:000000000000')")
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='marker'").fetchall()[0][0]
    con.close()
    return root


class FileReplica:
    def __init__(self, root: str):
        self.root = root
        self.url = f"file://{root}"
        self.l0 = os.path.join(root, "ltx", "0")

    def list_l0(self, after: str = "") -> list[str]:
        try:
            return [n for n in os.listdir(self.l0) if n > after]
        except FileNotFoundError:
            return []

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.l0, name), "rb") as f:
            return f.read()


class S3Replica:
    def __init__(self, endpoint: str, bucket: str, prefix: str, key: str, secret: str):
        import boto3
        self.s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                               aws_secret_access_key=secret, region_name="us-east-1")
        self.bucket, self.prefix = bucket, prefix
        self.url = (f"s3://{bucket}/{prefix}?endpoint={endpoint}&forcePathStyle=true"
                    f"&region=us-east-1")

    def list_l0(self, after: str = "") -> list[str]:
        # Names sort by TXID, so StartAfter keeps every listing small (and under 1000 keys).
        kw = {"StartAfter": f"{self.prefix}/0000/{after}"} if after else {}
        resp = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/0000/", **kw)
        return [o["Key"].rsplit("/", 1)[1] for o in resp.get("Contents", [])]

    def read(self, name: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket,
                                  Key=f"{self.prefix}/0000/{name}")["Body"].read()


def read_l0(replica, meta_l0: str, name: str) -> bytes:
    """An L0 file's bytes: from the replicator's meta dir (same file, no GET), else remote."""
    try:
        with open(os.path.join(meta_l0, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return replica.read(name)


def marker_seq(data: bytes, marker_page: int) -> int | None:
    dec = Decoder(io.BytesIO(data))
    seq = None
    for pgno, page in dec.pages():
        if pgno == marker_page:
            m = MARKER.search(page)
            if m:
                seq = int(m.group(1))
    dec.close()
    return seq


def detect(replica, meta_l0: str, marker_page: int, seen_at: dict[int, float],
           stop: threading.Event, poll: float) -> None:
    """Record, per marker sequence, when a replica L0 file holding it was first listed.

    The time is taken when the listing that shows the file returns (an upper bound). Only the
    listing touches the replica; file contents come from the replicator's meta dir, which
    holds the same L0 files, so the detector's own cost stays small on S3.
    """
    last = ""
    while not stop.is_set():
        names = sorted(n for n in replica.list_l0(last) if parse_filename(n))
        now = time.time()
        if names:
            last = names[-1]
        # Newest first: the newest file holding the marker covers every older commit too.
        for name in reversed(names):
            try:
                seq = marker_seq(read_l0(replica, meta_l0, name), marker_page)
            except Exception:  # noqa: BLE001 - removed by retention meanwhile
                continue
            if seq is not None:
                seen_at.setdefault(seq, now)
                break
        time.sleep(poll)


def start_replicator(kind: str, db: str, url: str, workdir: str, env: dict) -> subprocess.Popen:
    if kind == "ours":
        cmd = [sys.executable, "-m", "replication", "replicate", db, url]
    else:
        cmd = ["litestream", "replicate", db, url]
    log = open(os.path.join(workdir, f"{kind}.log"), "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_case(kind: str, replica, rate: float, seconds: float, workdir: str, env: dict,
             poll: float) -> list[float]:
    db = os.path.join(workdir, "src.db")
    marker_page = make_db(db)
    proc = start_replicator(kind, db, replica.url, workdir, env)
    seen_at: dict[int, float] = {}
    halt = threading.Event()
    try:
        # Wait for the first L0 file (the initial snapshot) before writing.
        deadline = time.time() + 30
        while not replica.list_l0():
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{kind} replicator did not start; see {workdir}/{kind}.log")
            time.sleep(0.05)
        meta_l0 = os.path.join(workdir, ".src.db-litestream", "ltx", "0")
        detector = threading.Thread(target=detect, args=(replica, meta_l0, marker_page, seen_at,
                                                         halt, poll), daemon=True)
        detector.start()
        times_path = os.path.join(workdir, "times.json")
        subprocess.run([sys.executable, "-c", WRITER, db, str(rate), str(seconds), times_path],
                       check=True, env=env)
        commit_times = json.load(open(times_path))
        # Let the tail of the workload arrive.
        deadline = time.time() + 15
        while max(seen_at, default=0) < len(commit_times) and time.time() < deadline:
            time.sleep(0.05)
        halt.set()
        detector.join(5)
    finally:
        stop(proc)
    covered = sorted(seen_at.items())
    keys = [seq for seq, _ in covered]
    # earliest[j]: the first time any file holding a marker >= keys[j] was seen.
    earliest = [t for _, t in covered]
    for j in range(len(earliest) - 2, -1, -1):
        earliest[j] = min(earliest[j], earliest[j + 1])
    latencies = []
    for seq, committed in enumerate(commit_times, 1):
        j = bisect.bisect_left(keys, seq)
        if j == len(keys):
            raise RuntimeError(f"{kind}: commit {seq} never reached the replica")
        latencies.append(earliest[j] - committed)
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="50,500")
    ap.add_argument("--backends", default="file,s3")
    ap.add_argument("--replicators", default="ours,litestream")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    base = tempfile.mkdtemp(prefix="bench-rpo-")
    weed = None
    results = []
    try:
        for backend in args.backends.split(","):
            server = None
            if backend == "s3":
                # The same loopback SeaweedFS the tests use.
                from tests.plugins.s3 import start_seaweedfs
                server, weed = start_seaweedfs(Path(base) / "seaweedfs")
                env = server.env(env)
                bucket = server.new_bucket("bench")
            for kind in args.replicators.split(","):
                for rate in rates:
                    work = tempfile.mkdtemp(dir=base, prefix=f"{kind}-{backend}-{int(rate)}-")
                    if backend == "file":
                        replica = FileReplica(os.path.join(work, "replica"))
                        poll = 0.001
                    else:
                        replica = S3Replica(server.endpoint, bucket, Path(work).name,
                                            server.access_key, server.secret_key)
                        poll = 0.005
                    lat = run_case(kind, replica, rate, args.seconds, work, env, poll)
                    row = dict(replicator=kind, backend=backend, rate=rate, n=len(lat),
                               p50_ms=round(percentile(lat, 50) * 1000, 1),
                               p99_ms=round(percentile(lat, 99) * 1000, 1),
                               max_ms=round(max(lat) * 1000, 1),
                               mean_ms=round(statistics.mean(lat) * 1000, 1))
                    results.append(row)
                    print(json.dumps(row), flush=True)
            if weed is not None:
                os.kill(weed.pid, signal.SIGTERM)
                weed.wait(30)
                weed = None
    finally:
        if weed is not None:
            os.kill(weed.pid, signal.SIGKILL)
            weed.wait()
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'replicator':<11} {'backend':<7} {'rate/s':>6} {'n':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")
    for r in results:
        print(f"{r['replicator']:<11} {r['backend']:<7} {r['rate']:>6.0f} {r['n']:>6} "
              f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
