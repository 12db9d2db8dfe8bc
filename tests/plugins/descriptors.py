"""The suite stays well inside the 1,024 descriptors many machines give a process.

CI 2026-12-06: descriptors kept on every database the fault sweeps opened (two each, see
replication/sqlite_fds.py) took the process past 1,000; a `select()` on one of them raised,
and a machine with the common soft limit of 1,024 would have failed opens too. After each test
the count is taken; the session fails, naming the first test that left more than
``DESCRIPTOR_CEILING`` open, so a leak is found where it starts."""
from __future__ import annotations

import os
import sys

DESCRIPTOR_CEILING = 512
_PROC_FDS = "/proc/self/fd"
_over: list[tuple[str, int]] = []


def open_descriptors() -> int:
    return len(os.listdir(_PROC_FDS)) if os.path.isdir(_PROC_FDS) else 0


def pytest_runtest_logfinish(nodeid, location):
    n = open_descriptors()
    if n > DESCRIPTOR_CEILING and not _over:
        _over.append((nodeid, n))


def pytest_sessionfinish(session, exitstatus):
    if _over:
        nodeid, n = _over[0]
        session.exitstatus = 1
        print(f"\nerror: {n} descriptors open after {nodeid} (ceiling {DESCRIPTOR_CEILING}): "
              "a test or the code it runs leaks them", file=sys.stderr)
