"""Cold start of a read replica on a ~1 GiB database: process start -> first answered query.

    python bench/bench_vfs_cold.py [--workdir /tmp/sqlite-rest-bench] [--runs 3] [--memory]

Uses the 1 GiB replicas bench_restore.py builds (one written by `litestream replicate`, one by
our encoder; run it first). For each, times a fresh Python process that opens the replica
through our VFS (replication/vfs.py) and answers `SELECT * FROM items WHERE id = ?`, and the
same through the real `litestream-vfs` 0.5.17 extension (PyPI `litestream-vfs`, loaded into
apsw); best of --runs, with each process's own peak RSS (VmHWM, sampled every 5 ms).

``--memory``: the peak RSS of a process that reads 40,000 random rows of our encoder's replica
(far more pages than any cache below holds) with ``cache_size`` 1, 10 and 100 MiB: what is
left after subtracting ``cache_size`` is the constant (interpreter, page index) the cache adds to.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_restore import timed  # noqa: E402

OURS = r"""
import sys
sys.path.insert(0, {repo!r})
import replication.vfs as v
conn = v.connect(v.uri("bench.db", {url!r}))
assert conn.execute("SELECT * FROM items WHERE id = 123456").fetchall()
"""

SCAN = r"""
import random, sys
sys.path.insert(0, {repo!r})
import replication.vfs as v
conn = v.connect(v.uri("bench.db", {url!r}, cache_size={cache!r}))
conn.execute("PRAGMA cache_size=0")  # SQLite's own page cache as small as it goes: the VFS's counts
top = conn.execute("SELECT max(id) FROM items").fetchall()[0][0]
rng = random.Random(7)
for _ in range(40000):
    conn.execute("SELECT * FROM items WHERE id = ?", (rng.randint(1, top),)).fetchall()
stats = v.database(conn).stats()
assert stats.cache_bytes <= {cache_bytes}, stats
print(stats.cache_pages, stats.pages_fetched, file=sys.stderr)
"""

THEIRS = r"""
import os
import apsw, litestream_vfs
from urllib.parse import quote
loader = apsw.Connection(":memory:")
loader.enable_load_extension(True)
loader.load_extension(os.path.splitext(litestream_vfs.loadable_path())[0])
conn = apsw.Connection("file:bench.db?vfs=litestream&replica_url=" + quote({url!r}, safe=""),
                       flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
assert conn.execute("SELECT * FROM items WHERE id = 123456").fetchall()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/sqlite-rest-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="peak RSS against cache_size instead")
    args = ap.parse_args()
    work = Path(args.workdir)
    if args.memory:
        return memory(work)
    print(f"bench_vfs_cold.py: {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; load {os.getloadavg()}")
    print("| replica written by | ours | litestream-vfs 0.5.17 | ours ÷ theirs | our peak RSS | their peak RSS |")
    print("|---|---|---|---|---|---|")
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    for label, name in (("litestream replicate", "replica-litestream"),
                        ("our encoder", "replica-ours")):
        root = work / name
        if not (root / "ltx").is_dir():
            print(f"missing {root}: run bench/bench_restore.py first", file=sys.stderr)
            return 1
        url = f"file://{root}"
        results = {}
        for who, template in (("ours", OURS), ("theirs", THEIRS)):
            script = work / f"cold_{who}.py"
            script.write_text(template.format(repo=str(REPO), url=url))
            results[who] = min(timed([sys.executable, str(script)], env=env)
                               for _ in range(args.runs))
        (ours_s, ours_rss), (theirs_s, theirs_rss) = results["ours"], results["theirs"]
        print(f"| {label} | {ours_s:.2f} s | {theirs_s:.2f} s | {ours_s / theirs_s:.2f}× | "
              f"{ours_rss / 1024:.0f} MiB | {theirs_rss / 1024:.0f} MiB |", flush=True)
    return 0


def memory(work: Path) -> int:
    url = f"file://{work / 'replica-ours'}"
    print(f"bench_vfs_cold.py --memory: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
          f"load {os.getloadavg()}")
    print("| cache_size | 40,000 random rows | peak RSS | peak RSS − cache_size |")
    print("|---|---|---|---|")
    for mib in (1, 10, 100):
        script = work / "memory_ours.py"
        script.write_text(SCAN.format(repo=str(REPO), url=url, cache=f"{mib}MB",
                                      cache_bytes=mib * 1024 * 1024))
        seconds, rss = timed([sys.executable, str(script)])
        print(f"| {mib} MiB | {seconds:.1f} s | {rss / 1024:.0f} MiB | {rss / 1024 - mib:.0f} MiB |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
