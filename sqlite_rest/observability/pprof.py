"""A `/debug/pprof/` analogue on --pprof-addr (off by default), served by the supervisor, for
the supervisor **and the HTTP workers**.

| path | what |
|---|---|
| ``/debug/pprof/`` | index |
| ``/debug/pprof/goroutine`` (alias ``threads``) | every supervisor thread's current stack |
| ``/debug/pprof/profile?seconds=N&hz=H&target=T&format=F`` | CPU profile: every thread's stack sampled H times a second (default 100) for N s (default 30, max 300), in the supervisor (``target=supervisor``), every worker (``workers``, the default: requests run there) or both (``all``). ``format=collapsed`` (default): folded stacks, one ``frame;frame;… count`` line per stack, rooted at the process and thread, which speedscope, flamegraph.pl and inferno open; ``speedscope``: speedscope's JSON file format, one profile per thread; ``text``: the hottest functions and stacks |
| ``/debug/pprof/heap`` | the supervisor's tracemalloc top allocations by line (tracing starts on first use; ``?stop=1`` stops it) plus gc counts |

Workers are sampled in-process: the supervisor writes the request into the profile exchange
directory and sends each worker ``PROFILE_SIGNAL``; each samples its own threads on a thread of
its own and drops its stacks there. Dependency-free (``sys._current_frames``).
"""
from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
import tracemalloc
from typing import Callable, Dict, Iterable, Optional, Tuple

Response = Tuple[int, str, bytes]
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
MAX_PROFILE_SECONDS = 300
DEFAULT_PROFILE_SECONDS = 30
DEFAULT_HZ = 100
FORMATS = ("collapsed", "speedscope", "text")
TARGETS = ("workers", "supervisor", "all")
#: Tells a worker to run the profile the exchange directory's request describes.
PROFILE_SIGNAL = signal.SIGUSR2
#: How long past the profile's end the supervisor waits for the workers' stacks (seconds).
WORKER_GRACE_S = 5.0
REQUEST_FILE = "request.json"
#: Only one CPU profile at a time (as Go's pprof): two samplers would measure each other.
_profile_lock = threading.Lock()

#: Stacks (outermost frame first, rooted at "process;thread") -> samples.
Stacks = collections.Counter


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


def sample_stacks(seconds: float, hz: int = DEFAULT_HZ, process: str = "") -> Stacks:
    """Sample every other thread's whole stack ``hz`` times a second for ``seconds``."""
    me = threading.get_ident()
    interval = 1.0 / hz
    process = process or f"pid {os.getpid()}"
    stacks: Stacks = collections.Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        names = _thread_names()
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            keys = []
            f = frame
            while f is not None:
                keys.append(_frame_key(f))
                f = f.f_back
            stacks[(process, names.get(ident, f"thread {ident}"), *reversed(keys))] += 1
        time.sleep(interval)
    return stacks


def collapsed(stacks: Stacks) -> str:
    """Folded stacks (Brendan Gregg's format): ``frame;frame;… count`` per line."""
    return "".join(f"{';'.join(k.replace(';', ',') for k in stack)} {count}\n"
                   for stack, count in stacks.most_common())


def speedscope(stacks: Stacks, hz: int) -> str:
    """speedscope's file format: one sampled profile per process and thread."""
    frames: Dict[str, int] = {}
    profiles = collections.defaultdict(lambda: ([], []))
    for stack, count in stacks.items():
        samples, weights = profiles[f"{stack[0]} {stack[1]}"]
        samples.append([frames.setdefault(k, len(frames)) for k in stack[2:]])
        weights.append(count / hz)
    return json.dumps({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": "sqlite-rest CPU profile", "exporter": "sqlite-rest",
        "shared": {"frames": [{"name": name} for name in frames]},
        "profiles": [{"type": "sampled", "name": name, "unit": "seconds", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}
                     for name, (samples, weights) in profiles.items()],
    })


def text_report(stacks: Stacks, seconds: float, hz: int, top: int = 40) -> str:
    """The hottest functions (flat and cumulative) and stacks."""
    self_counts: collections.Counter = collections.Counter()
    cumulative: collections.Counter = collections.Counter()
    tails: collections.Counter = collections.Counter()
    for stack, count in stacks.items():
        frames = stack[2:] or stack[1:]
        self_counts[frames[-1]] += count
        for key in set(frames):
            cumulative[key] += count
        tails[stack[:2] + frames[-8:]] += count
    total = max(sum(stacks.values()), 1)
    processes = sorted({stack[0] for stack in stacks})
    lines = [f"CPU profile of {', '.join(processes) or 'no process'}: {seconds:g} s at {hz} Hz, "
             f"{total} thread samples (threads waiting in I/O or locks are sampled too)\n",
             "\nflat%   cum%  function (file:line)\n"]
    for key, count in self_counts.most_common(top):
        lines.append(f"{100.0 * count / total:5.1f}  {100.0 * cumulative[key] / total:5.1f}  {key}\n")
    lines.append("\ntop stacks (process, thread, then at most 8 innermost frames):\n")
    for stack, count in tails.most_common(10):
        lines.append(f"\n{100.0 * count / total:5.1f}%\n")
        lines.extend(f"    {k}\n" for k in stack)
    return "".join(lines)


# -- workers -----------------------------------------------------------------------------------

def install_worker_profiler(exchange_dir: str) -> None:
    """In a worker: on PROFILE_SIGNAL, sample this process as the request in ``exchange_dir``
    says, on a thread of its own, and write the stacks there as ``<id>-<pid>.json``. Each
    request runs once: the signal relay and the main thread may both run the handler."""
    answered: set = set()
    once = threading.Lock()

    def run() -> None:
        try:
            with open(os.path.join(exchange_dir, REQUEST_FILE)) as f:
                request = json.load(f)
            with once:
                if request["id"] in answered:
                    return
                answered.add(request["id"])
            stacks = sample_stacks(request["seconds"], request["hz"],
                                   f"worker pid {os.getpid()}")
            path = os.path.join(exchange_dir, f"{request['id']}-{os.getpid()}.json")
            with open(path + ".tmp", "w") as f:
                json.dump([[list(stack), count] for stack, count in stacks.items()], f)
            os.replace(path + ".tmp", path)
        except (OSError, ValueError, KeyError):
            pass  # the supervisor reports the worker as missing

    signal.signal(PROFILE_SIGNAL, lambda signum, frame: threading.Thread(
        target=run, name="pprof-sampler", daemon=True).start())


def profile_workers(exchange_dir: str, pids: Iterable[int], seconds: float, hz: int) -> tuple:
    """Ask every worker in ``pids`` for a profile; (their stacks, pids that did not answer)."""
    pids = list(pids)
    request_id = f"{time.time_ns()}"
    with open(os.path.join(exchange_dir, REQUEST_FILE + ".tmp"), "w") as f:
        json.dump({"id": request_id, "seconds": seconds, "hz": hz}, f)
    os.replace(os.path.join(exchange_dir, REQUEST_FILE + ".tmp"),
               os.path.join(exchange_dir, REQUEST_FILE))
    for pid in pids:
        try:
            os.kill(pid, PROFILE_SIGNAL)
        except ProcessLookupError:
            pass
    stacks: Stacks = collections.Counter()
    waiting = set(pids)
    broken: list = []
    deadline = time.monotonic() + seconds + WORKER_GRACE_S
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        for pid in list(waiting):
            path = os.path.join(exchange_dir, f"{request_id}-{pid}.json")
            try:
                with open(path) as f:
                    for stack, count in json.load(f):
                        stacks[tuple(stack)] += count
            except FileNotFoundError:
                continue
            except ValueError:  # unreadable: reported with the workers that did not answer
                broken.append(pid)
            os.remove(path)
            waiting.discard(pid)
    return stacks, sorted(waiting | set(broken))


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
<p>sqlite-rest supervisor (pid {pid}) and its HTTP workers.</p>
<ul>
<li><a href="goroutine">goroutine</a> (alias <a href="threads">threads</a>): the supervisor's threads' stacks</li>
<li><a href="profile?seconds=5">profile?seconds=N</a>: CPU profile of the workers (<code>&amp;target=supervisor|all</code>),
as folded stacks for speedscope, flamegraph.pl or inferno (<code>&amp;format=speedscope|text</code>)</li>
<li><a href="heap">heap</a>: tracemalloc summary of the supervisor</li>
</ul></body></html>
"""


def index_route(query) -> Response:
    return 200, HTML, INDEX.format(pid=_pid()).encode()


def threads_route(query) -> Response:
    return 200, TEXT, thread_stacks().encode()


def _choice_arg(query, name: str, choices: tuple) -> str:
    value = query.get(name, [choices[0]])[0]
    if value not in choices:
        raise ValueError(f"{name}={value!r}: use one of {', '.join(choices)}")
    return value


def profile_route(query, workers: Callable[[], list], exchange_dir: Optional[str]) -> Response:
    try:
        seconds = _int_arg(query, "seconds", DEFAULT_PROFILE_SECONDS, 1, MAX_PROFILE_SECONDS)
        hz = _int_arg(query, "hz", DEFAULT_HZ, 1, 1000)
        target = _choice_arg(query, "target", TARGETS)
        fmt = _choice_arg(query, "format", FORMATS)
    except ValueError as exc:
        return 400, TEXT, f"{exc}\n".encode()
    if not _profile_lock.acquire(blocking=False):
        return 409, TEXT, b"a CPU profile is already running\n"
    try:
        from_workers: dict = {}
        sampler = None
        if target in ("workers", "all"):
            if exchange_dir is None:
                return 404, TEXT, b"no HTTP workers to profile\n"
            sampler = threading.Thread(target=lambda: from_workers.update(zip(
                ("stacks", "missing"), profile_workers(exchange_dir, workers(), seconds, hz))))
            sampler.start()
        stacks: Stacks = collections.Counter()
        if target in ("supervisor", "all"):
            stacks.update(sample_stacks(seconds, hz, f"supervisor pid {_pid()}"))
        if sampler is not None:
            sampler.join()
            stacks.update(from_workers["stacks"])
        missing = from_workers.get("missing", [])
        if fmt == "speedscope":
            return 200, "application/json", speedscope(stacks, hz).encode()
        body = collapsed(stacks) if fmt == "collapsed" else text_report(stacks, seconds, hz)
        if missing:  # a folded-stacks line that says so, rather than a silent gap
            body += f"workers pid {' '.join(map(str, missing))} did not answer 1\n"
        return 200, TEXT, body.encode()
    finally:
        _profile_lock.release()


def heap_route(query) -> Response:
    stop = query.get("stop", ["0"])[0] in ("1", "true")
    return 200, TEXT, heap_summary(stop=stop).encode()


def routes(workers: Callable[[], list] = list, exchange_dir: Optional[str] = None
           ) -> Dict[str, Callable]:
    """``workers()``: the pids of the HTTP workers; ``exchange_dir``: where they answer."""
    return {
        "/debug/pprof": index_route,
        "/debug/pprof/": index_route,
        "/debug/pprof/goroutine": threads_route,
        "/debug/pprof/threads": threads_route,
        "/debug/pprof/profile": lambda query: profile_route(query, workers, exchange_dir),
        "/debug/pprof/heap": heap_route,
    }
