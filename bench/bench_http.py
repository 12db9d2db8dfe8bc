"""HTTP benchmark of the real `sqlite-rest serve` with wrk, optionally side by side with others.

Creates ``items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)`` with 100,000 rows,
starts the real server (CLI subprocess, 127.0.0.1, default flags + --auth-disabled), and runs
wrk (2 threads x 32 connections, 10 s by default) for each scenario in several rounds, printing
req/s, p50/p99 latency and the server's CPU per request per run, then the medians.

    python bench/bench_http.py [--rounds 3] [--duration 10] [--warmup 2] [--workers N]
                               [--scenario get_pk ...] [--server-arg=--flag ...]
                               [--compare-with DIR] [--compare-command 'CMD {db} {port}']
                               [--max-steal PCT]

``--compare-with DIR`` also runs the sqlite-rest code in DIR (e.g. an earlier commit:
``git worktree add /tmp/before <commit>``) with the same flags; each server's code comes from
its PYTHONPATH, and the servers run with a temporary directory as cwd so that ``python -m``
cannot pick up the repository the script was started from (the script prints where each
server's ``sqlite_rest`` is imported from). ``--compare-command`` also runs any other server
(e.g. the Go b4fun/sqlite-rest), ``{db}`` and ``{port}`` substituted, in the caller's cwd;
it is ready once its port answers HTTP.

How the comparison is kept fair: every measured run starts its server afresh on its own fresh
copy of the pristine 100k-row file (no -wal/-shm), so neither POST's growth nor a warm cache
carries over from one run to the next; each run is preceded by a ``--warmup`` wrk run on the
same server. Within a round, for each scenario, every server runs once, one after the other
(never at the same time); the order rotates every round (two servers: alternates). Reported:
the median over the rounds of req/s, p50, p99 and CPU per request, and this ÷ other for req/s
(the median of the rounds' ratios, each round's in brackets).
CPU per request is utime+stime of the server's whole process tree (its PID and every
descendant, from /proc) during the measured run, divided by the requests wrk completed.

CPU steal (/proc/stat: time the hypervisor ran other guests on this VM's CPUs) is printed per
run: on a shared host it comes and goes (0-30 % here) and a run with 25 % steal served half
the requests of one with none. ``--max-steal PCT`` runs a measurement again, up to three
times, while its steal is above PCT, so that rounds compare like with like.

Targets on a 2-core machine: >= 5,000 req/s GET by PK, >= 2,500 GET 100 rows, >= 3,300 POST,
p99 <= 40 ms. Needs `wrk` on PATH (Debian: apt-get install wrk).
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import apsw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugins.server import START_TIMEOUT, ServerProcess, free_port, start_server  # noqa: E402

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
NAN = float("nan")


def make_db(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER)")
    with conn:
        conn.executemany("INSERT INTO items VALUES(?,?,?,?)",
                         ((i, f"item-{i}", i * 0.25, i % 100) for i in range(1, ROWS + 1)))
    conn.close()  # the last connection checkpoints and removes -wal/-shm


def fresh_copy(pristine: Path, db: Path) -> None:
    """``db`` = the pristine file, without a -wal/-shm left by an earlier run."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(pristine, db)


def parse_wrk(output: str) -> dict:
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else NAN
    m = re.search(r"(\d+) requests in", output)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = m.group(1).strip() if m else ""
    return result


def run_wrk(url: str, script: Path, args, duration: int) -> str:
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{duration}s",
           "--latency", "-s", str(script), url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def proc_tree_ticks(pid: int) -> dict:
    """{pid: utime+stime in ticks} for ``pid`` and all its descendants, from /proc."""
    stats: dict = {}
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # after the last ")" (the command name may hold spaces and parens):
                    # [0] state, [1] ppid, ... [11] utime, [12] stime
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            stats[int(entry)] = int(fields[11]) + int(fields[12])
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            tree[p] = stats[p]
            todo.extend(children.get(p, ()))
    return tree


def tree_cpu_s(pid: int) -> float:
    return sum(proc_tree_ticks(pid).values()) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) jiffies of the machine's CPUs so far (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to others between two
    `cpu_ticks()` (a VM on a busy host: seen at 20-30 % here, halving a run's req/s)."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total else 0.0


def retry_while_stolen(measure_once: Callable[[], dict], max_steal: Optional[float],
                       show: Callable[[dict], None]) -> dict:
    """``measure_once()`` (a result with ``steal_pct``), shown; run again, up to three more
    times, while its steal is above ``max_steal`` (None: once). The last result is kept."""
    for attempt in range(1 if max_steal is None else 4):
        result = measure_once()
        show(result)
        if max_steal is None or result["steal_pct"] <= max_steal:
            break
        print(f"    (steal over {max_steal:g} %: "
              + ("run again)" if attempt < 3 else "kept, no more tries)"), flush=True)
    return result


def measure(server: ServerProcess, script: Path, args) -> dict:
    """A warm-up then one measured wrk run, with the server tree's CPU per request and the
    CPU steal during the run."""
    url = server.base_url + "/items"  # request() overrides the path for GETs
    if args.warmup > 0:
        run_wrk(url, script, args, args.warmup)
    before, ticks = tree_cpu_s(server.pid), cpu_ticks()
    out = run_wrk(url, script, args, args.duration)
    used = tree_cpu_s(server.pid) - before
    result = parse_wrk(out)
    result["cpu_us"] = used / result["requests"] * 1e6 if result["requests"] else NAN
    result["steal_pct"] = steal_pct(ticks, cpu_ticks())
    return result


def _answers_http(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse()  # any status: the server is up
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def start(kind: str, what, db: Path, args, caller_cwd: str) -> ServerProcess:
    """Start one server without waiting (the caller holds it, so a failure or ^C while it
    starts still stops it)."""
    if kind == "code":
        return start_server(db, "--security-allow-table", "items", "--workers", args.workers,
                            *args.server_arg, metrics=False, wait=False,
                            env={"PYTHONPATH": str(what)})
    port = free_port()
    argv = shlex.split(what.replace("{db}", shlex.quote(str(db))).replace("{port}", str(port)))
    log = tempfile.NamedTemporaryFile(prefix="bench-http-cmd-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=caller_cwd)
    log.close()
    return ServerProcess(base_url=f"http://127.0.0.1:{port}", metrics_url=None, pid=proc.pid,
                         proc=proc, log_path=log.name, http_port=port, args=argv)


def wait_ready(server: ServerProcess, kind: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers_http(server.http_port):
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.args} exited with {server.proc.returncode}:\n"
                               f"{server.logs()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.args} did not answer HTTP in {START_TIMEOUT} s:\n"
                               f"{server.logs()}")
        time.sleep(0.05)
    # sqlite-rest's supervisor logs this once every worker is up (absent with --log-level -1,
    # and in code that predates it: then the warm-up covers the workers' start).
    while kind == "code" and "sqlite-rest serving" not in server.logs():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)


def stop(server: ServerProcess) -> None:
    """Stop by PID (SIGTERM, then SIGKILL), and say if any of its processes outlived it."""
    tree = proc_tree_ticks(server.pid)
    try:
        server.stop()
    finally:
        os.unlink(server.log_path)
    time.sleep(0.1)
    left = [p for p in tree if p != server.pid and os.path.exists(f"/proc/{p}")]
    if left:
        print(f"  warning: processes still alive after stopping {server.pid}: {left}",
              file=sys.stderr)


def code_origin(code: Path) -> str:
    """Where a server with PYTHONPATH=code imports sqlite_rest from (it runs in the same cwd
    and environment as the server), and the checkout's commit."""
    probe = subprocess.run([sys.executable, "-c", "import sqlite_rest; print(sqlite_rest.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(code)},
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"error: cannot import sqlite_rest from {code}:\n{probe.stderr}")
    module = Path(probe.stdout.strip()).resolve().parent
    if not module.is_relative_to(code):
        raise SystemExit(f"error: with PYTHONPATH={code}, sqlite_rest comes from {module}")
    git = ["git", "-C", str(code)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return f"sqlite_rest from {module} (not a git checkout)"
    # only the server's packages: an edit to this script does not change what is measured
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--",
                                  "sqlite_rest", "replication"],
                           capture_output=True, text=True).stdout.strip()
    return (f"sqlite_rest from {module}, commit {head.stdout.strip()}"
            + (" + uncommitted changes to the server's code" if dirty else ""))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", "--runs", type=int, default=3,
                        help="rounds (every server once per round and scenario)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of wrk before each measured run (0: none)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `serve` argument for every sqlite-rest server (repeatable), "
                             "e.g. --server-arg=--log-level=-1")
    parser.add_argument("--compare-with", type=Path, metavar="DIR",
                        help="also run the sqlite-rest code in DIR (e.g. `git worktree add "
                             "/tmp/before <commit>`), same flags")
    parser.add_argument("--compare-command", metavar="'CMD {db} {port}'", action="append",
                        default=[],
                        help="also run this server command line, {db} and {port} substituted "
                             "(no shell; run in the current directory; repeatable: cmd, cmd2…)")
    parser.add_argument("--max-steal", type=float, default=None, metavar="PCT",
                        help="run a measurement again (up to 3 times) while the hypervisor "
                             "stole more than PCT %% of the CPU during it")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk not found (hint: apt-get install wrk)", file=sys.stderr)
        return 1
    scenarios = args.scenario or list(SCENARIOS)
    # label: (kind, code dir | command line); "this" first: ratios are this ÷ each other
    servers = {"this": ("code", REPO)}
    if args.compare_with is not None:
        servers["other"] = ("code", args.compare_with.resolve())
    for i, command in enumerate(args.compare_command, 1):
        if "{port}" not in command:
            parser.error("--compare-command needs {port} (and usually {db})")
        servers["cmd" if i == 1 else f"cmd{i}"] = ("command", command)
    labels = list(servers)

    caller_cwd = os.getcwd()
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    # The sqlite-rest servers inherit this cwd: `python -m` puts the cwd first on sys.path, so
    # started from inside a checkout they would all run that checkout's code.
    os.chdir(tmp)
    server = None
    try:
        origins = {label: code_origin(what) if kind == "code" else f"run in {caller_cwd}"
                   for label, (kind, what) in servers.items()}
        pristine = tmp / "pristine.db"
        make_db(pristine)
        print(f"bench_http.py: sqlite-rest --workers {args.workers} {' '.join(args.server_arg)}; "
              f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s after a "
              f"{args.warmup} s warm-up; {args.rounds} rounds; {ROWS:,} rows")
        print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}, {os.uname().sysname} "
              f"{os.uname().release}; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
              f"load average at start {load()}")
        for label in labels:
            print(f"  {label:5s}: {servers[label][1]}  ({origins[label]})")
        results = {(name, label): [] for name in scenarios for label in labels}
        for round_ in range(args.rounds):
            shift = round_ % len(labels)
            order = labels[shift:] + labels[:shift]
            for name in scenarios:
                script = tmp / f"{name}.lua"
                script.write_text(SCENARIOS[name][0] % {"rows": ROWS})
                for label in order:
                    kind, what = servers[label]
                    db = tmp / f"{label}.db"
                    def measure_once() -> dict:
                        nonlocal server
                        fresh_copy(pristine, db)
                        server = start(kind, what, db, args, caller_cwd)
                        try:
                            wait_ready(server, kind)
                            return measure(server, script, args)
                        finally:
                            running, server = server, None
                            stop(running)

                    def show(r: dict) -> None:
                        print(f"  round {round_ + 1} {name:8s} {label:5s} {r['rps']:9.0f} "
                              f"req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                              f"CPU {r['cpu_us']:5.0f} us/req  steal {r['steal_pct']:4.1f} %  "
                              f"{r['requests']} requests  non-2xx {r['non2xx']}"
                              + (f"  socket errors: {r['socket_errors']}" if r["socket_errors"]
                                 else ""), flush=True)

                    r = retry_while_stolen(measure_once, args.max_steal, show)
                    results[(name, label)].append(r)

        print(f"\n{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
              f"load average at end {load()}")
        print(f"medians of {args.rounds} rounds:\n")
        print("| scenario | server | req/s | this ÷ server | p50 ms | p99 ms | CPU µs/req | steal % "
              "| non-2xx |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in scenarios:
            med = {label: {k: statistics.median(r[k] for r in results[(name, label)])
                           for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "steal_pct")}
                   for label in labels}
            for label in labels:
                m = med[label]
                # this ÷ other round by round (the two ran minutes apart, under the same
                # host), then the median: steadier than a ratio of the two medians
                ratios = [t["rps"] / o["rps"] for t, o in
                          zip(results[(name, "this")], results[(name, label)]) if o["rps"]]
                ratio = ("" if label == "this" or not ratios else
                         f"{statistics.median(ratios):.2f}× ("
                         + ", ".join(f"{r:.2f}" for r in ratios) + ")")
                non2xx = sum(r["non2xx"] for r in results[(name, label)])
                print(f"| {name} | {label} | {m['rps']:,.0f} | {ratio} | {m['p50_ms']:.2f} | "
                      f"{m['p99_ms']:.2f} | {m['cpu_us']:.0f} | {m['steal_pct']:.1f} | {non2xx} |")
    finally:
        if server is not None:
            stop(server)
        os.chdir(caller_cwd)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
