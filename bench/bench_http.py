"""HTTP benchmark of the real `sqlite-rest serve` with wrk.

Creates ``items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)`` with 100,000 rows,
starts the real server (CLI subprocess, 127.0.0.1, default flags + --auth-disabled), and runs
wrk (2 threads x 32 connections, 10 s by default) for each scenario several times, printing
req/s and p50/p99 latency per run and the medians.

    python bench/bench_http.py [--runs 3] [--duration 10] [--workers 2] [--scenario get_pk ...]
                               [--compare-with DIR]

``--compare-with DIR`` runs the code in DIR (e.g. ``git worktree add /tmp/before <commit>``)
side by side with this checkout: in each round and scenario both servers run, in alternating
order, each on a fresh copy of the 100k-row table; medians of the rounds, p99, and the server's
CPU per request (its whole process tree, from /proc). Run it from outside the repository (the
servers' code comes from PYTHONPATH).

Targets on a 2-core machine: >= 5,000 req/s GET by PK, >= 2,500 GET 100 rows, >= 3,300 POST,
p99 <= 40 ms. Needs `wrk` on PATH (Debian: apt-get install wrk).
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
import time
from pathlib import Path

import apsw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugins.server import start_server  # noqa: E402

ROWS = 100_000

SCENARIOS = {
    # name: (wrk Lua script, description)
    "get_pk": ("""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/items?id=eq." .. math.random(1, %(rows)d))
end
""", "GET one row by primary key (random ids)"),
    "get_100": ("""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/items?id=gt." .. math.random(0, %(rows)d - 100) .. "&limit=100")
end
""", "GET 100 rows (random id range)"),
    "post": ("""
wrk.method = "POST"
wrk.body = '{"name":"bench","price":1.5,"qty":3}'
wrk.headers["Content-Type"] = "application/json"
""", "POST one row"),
}

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def make_db(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
    with conn:
        conn.executemany("INSERT INTO items VALUES(?,?,?,?)",
                         ((i, f"item-{i}", i * 0.25, i % 100) for i in range(1, ROWS + 1)))
    conn.close()


def parse_wrk(output: str) -> dict:
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = m.group(1).strip() if m else ""
    return result


def run_wrk(url: str, script: Path, args) -> dict:
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.duration}s",
           "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def _tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and all its descendants (seconds), from /proc."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(entry), fields))
    total, todo = 0, [pid]
    try:
        own = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(own[11]) + int(own[12])
    except OSError:
        pass
    while todo:
        for child, fields in children.get(todo.pop(), ()):
            total += int(fields[11]) + int(fields[12])
            todo.append(child)
    return total / os.sysconf("SC_CLK_TCK")


def run_measured(server, script: Path, args) -> dict:
    """One wrk run against ``server``, with the server's CPU per request (its process tree)."""
    url = server.base_url + "/items"  # request() overrides the path for GETs
    run_wrk(url, script, argparse.Namespace(**{**vars(args), "duration": 2}))  # warm-up
    before = _tree_cpu_s(server.pid)
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.duration}s",
           "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    used = _tree_cpu_s(server.pid) - before
    result = parse_wrk(out)
    m = re.search(r"(\d+) requests in", out)
    result["cpu_us"] = used / int(m.group(1)) * 1e6 if m and int(m.group(1)) else float("nan")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (each server once per round)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `serve` argument (repeatable), e.g. --server-arg=--log-level=-1")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="the sqlite-rest code in DIR (e.g. `git worktree add /tmp/before "
                             "<commit>`), run side by side with this checkout")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk not found (hint: apt-get install wrk)", file=sys.stderr)
        return 1
    scenarios = args.scenario or list(SCENARIOS)
    codes = {"this": REPO}
    if args.compare_with is not None:
        codes["other"] = args.compare_with.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    server = None
    try:
        pristine = tmp / "pristine.db"
        make_db(pristine)
        print(f"sqlite-rest serve: {args.workers} workers, wrk -t{args.wrk_threads} "
              f"-c{args.connections} -d{args.duration}s, {args.runs} rounds, "
              f"cpus={os.cpu_count()} ({os.uname().machine}), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
        for label, code in codes.items():
            print(f"  {label}: {code}")
        results = {(name, label): [] for name in scenarios for label in codes}
        for round_ in range(args.runs):
            order = list(codes) if round_ % 2 == 0 else list(reversed(codes))
            for name in scenarios:
                script = tmp / f"{name}.lua"
                script.write_text(SCENARIOS[name][0] % {"rows": ROWS})
                for label in order:
                    db = tmp / f"{label}.db"  # a fresh copy per run: POST grows the table
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                    shutil.copyfile(pristine, db)
                    server = start_server(db, "--security-allow-table", "items", "--workers",
                                          args.workers, *args.server_arg, metrics=False,
                                          env={"PYTHONPATH": str(codes[label])})
                    try:
                        r = run_measured(server, script, args)
                    finally:
                        server.stop()
                        os.unlink(server.log_path)
                        server = None
                    results[(name, label)].append(r)
                    print(f"  round {round_ + 1} {name:8s} {label:5s} {r['rps']:9.0f} req/s  "
                          f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                          f"CPU {r['cpu_us']:5.0f} us/req  non-2xx {r['non2xx']}"
                          + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"]
                             else ""))
        print(f"\nmedians (load {os.getloadavg()[0]:.1f}):")
        for name in scenarios:
            med = {label: {k: statistics.median(r[k] for r in results[(name, label)])
                           for k in ("rps", "p50_ms", "p99_ms", "cpu_us")} for label in codes}
            for label in codes:
                m = med[label]
                ratio = (f"  {m['rps'] / med['other']['rps']:.2f}x other"
                         if label == "this" and "other" in med else "")
                print(f"  {name:8s} {label:5s} {m['rps']:9.0f} req/s  p50 {m['p50_ms']:6.2f} ms  "
                      f"p99 {m['p99_ms']:6.2f} ms  CPU {m['cpu_us']:5.0f} us/req{ratio}")
    finally:
        if server is not None:
            server.stop()
            os.unlink(server.log_path)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
