"""A `/debug/pprof/` analogue on --pprof-addr (off by default), served by the supervisor.

It profiles the **supervisor (parent) process**: its threads are the replicator, the metrics,
health and pprof servers and the commit listener. HTTP requests run in the worker processes;
to look at a worker use py-spy from outside: ``py-spy dump --pid <worker pid>`` (stacks) or
``py-spy record --pid <worker pid> -d 30 -o profile.svg`` (flame graph). Worker pids are in the
startup log ("Spawning worker-N with PID ...").

| path | what |
|---|---|
| ``/debug/pprof/`` | index |
| ``/debug/pprof/goroutine`` (alias ``threads``) | every thread's current stack |
| ``/debug/pprof/profile?seconds=N&hz=H`` | CPU profile: samples all threads' stacks at H Hz (default 100) for N s (default 30, max 300); text report of the hottest functions and stacks |
| ``/debug/pprof/heap`` | tracemalloc top allocations by line (tracing starts on first use; ``?stop=1`` stops it) plus gc counts |

Dependency-free on purpose (sys._current_frames + tracemalloc); pyinstrument/py-spy give
richer views when installed.
"""
from __future__ import annotations

import collections
import gc
import sys
import threading
import time
import traceback
import tracemalloc
from typing import Callable, Dict, Tuple

Response = Tuple[int, str, bytes]
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
MAX_PROFILE_SECONDS = 300
DEFAULT_PROFILE_SECONDS = 30
DEFAULT_HZ = 100
#: Only one CPU profile at a time (as Go's pprof): two samplers would measure each other.
_profile_lock = threading.Lock()


def _thread_names() -> Dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate()}


def thread_stacks() -> str:
    """All threads' stacks, like Go's goroutine?debug=2."""
    names = _thread_names()
    frames = sys._current_frames()
    out = [f"threads: {len(frames)}\n"]
    for ident, frame in sorted(frames.items()):
        out.append(f"\nthread {ident} [{names.get(ident, '?')}]:\n")
        out.extend(traceback.format_stack(frame))
    return "".join(out)


def _frame_key(frame) -> str:
    code = frame.f_code
    return f"{code.co_qualname if hasattr(code, 'co_qualname') else code.co_name} " \
           f"({code.co_filename}:{frame.f_lineno})"


def cpu_profile(seconds: float, hz: int = DEFAULT_HZ, top: int = 40) -> str:
    """Sample every other thread's stack `hz` times a second for `seconds`.

    A sample whose innermost frame is a known blocking wait (select, sleep, lock, accept) is
    counted as idle, so the report shows where CPU time goes, not where threads sleep.
    """
    me = threading.get_ident()
    interval = 1.0 / hz
    self_counts: collections.Counter = collections.Counter()
    cumulative: collections.Counter = collections.Counter()
    stacks: collections.Counter = collections.Counter()
    samples = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            samples += 1
            keys = []
            f = frame
            while f is not None:
                keys.append(_frame_key(f))
                f = f.f_back
            self_counts[keys[0]] += 1
            for key in set(keys):
                cumulative[key] += 1
            stacks[tuple(reversed(keys[:8]))] += 1
        time.sleep(interval)
    lines = [f"CPU profile of the sqlite-rest supervisor (pid {_pid()}): {seconds:g} s at {hz} Hz, "
             f"{samples} thread samples (threads waiting in I/O or locks are sampled too)\n",
             "\nflat%   cum%  function (file:line)\n"]
    total = max(samples, 1)
    for key, count in self_counts.most_common(top):
        lines.append(f"{100.0 * count / total:5.1f}  {100.0 * cumulative[key] / total:5.1f}  {key}\n")
    lines.append("\ntop stacks (outermost first, at most 8 frames):\n")
    for stack, count in stacks.most_common(10):
        lines.append(f"\n{100.0 * count / total:5.1f}%\n")
        lines.extend(f"    {k}\n" for k in stack)
    return "".join(lines)


def heap_summary(top: int = 30, stop: bool = False) -> str:
    lines = []
    if stop:
        tracemalloc.stop()
        return "tracemalloc stopped\n"
    if not tracemalloc.is_tracing():
        tracemalloc.start(16)
        lines.append("tracemalloc started now: allocations made before this request are not "
                     "traced; request again later for a meaningful profile\n\n")
    current, peak = tracemalloc.get_traced_memory()
    lines.append(f"traced: current {current} bytes, peak {peak} bytes\n")
    lines.append(f"gc counts: {gc.get_count()}  objects tracked: {len(gc.get_objects())}\n\n")
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),))
    for stat in snapshot.statistics("lineno")[:top]:
        lines.append(f"{stat.size:>12} B {stat.count:>8} blocks  {stat.traceback}\n")
    return "".join(lines)


def _pid() -> int:
    import os

    return os.getpid()


def _int_arg(query, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, [str(default)])[0]
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    return max(low, min(high, value))


INDEX = """<html><head><title>/debug/pprof/</title></head><body>
<p>sqlite-rest supervisor (pid {pid}). Workers: use <code>py-spy dump --pid PID</code>.</p>
<ul>
<li><a href="goroutine">goroutine</a> (alias <a href="threads">threads</a>): all threads' stacks</li>
<li><a href="profile?seconds=5">profile?seconds=N</a>: CPU profile</li>
<li><a href="heap">heap</a>: tracemalloc summary</li>
</ul></body></html>
"""


def index_route(query) -> Response:
    return 200, HTML, INDEX.format(pid=_pid()).encode()


def threads_route(query) -> Response:
    return 200, TEXT, thread_stacks().encode()


def profile_route(query) -> Response:
    try:
        seconds = _int_arg(query, "seconds", DEFAULT_PROFILE_SECONDS, 1, MAX_PROFILE_SECONDS)
        hz = _int_arg(query, "hz", DEFAULT_HZ, 1, 1000)
    except ValueError as exc:
        return 400, TEXT, f"{exc}\n".encode()
    if not _profile_lock.acquire(blocking=False):
        return 409, TEXT, b"a CPU profile is already running\n"
    try:
        return 200, TEXT, cpu_profile(seconds, hz).encode()
    finally:
        _profile_lock.release()


def heap_route(query) -> Response:
    stop = query.get("stop", ["0"])[0] in ("1", "true")
    return 200, TEXT, heap_summary(stop=stop).encode()


def routes() -> Dict[str, Callable]:
    return {
        "/debug/pprof": index_route,
        "/debug/pprof/": index_route,
        "/debug/pprof/goroutine": threads_route,
        "/debug/pprof/threads": threads_route,
        "/debug/pprof/profile": profile_route,
        "/debug/pprof/heap": heap_route,
    }
