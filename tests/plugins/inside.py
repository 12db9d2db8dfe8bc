"""The suite reads nothing outside the repository (a user's clone has no ``shared/`` beside it).

An audit hook records every file the test process opens or lists under the folder that
holds the repository but outside the repository itself (a temp dir, the installed packages and
the system are elsewhere); the session fails, naming them, if there is any. Child processes
(servers, litestream) get their paths from the tests, so this covers them too."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_BESIDE = str(REPO.parent) + os.sep
_INSIDE = str(REPO) + os.sep
_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
_outside: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event not in _EVENTS or not args or args[0] is None or isinstance(args[0], int):
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if path.startswith(_BESIDE) and not (path + os.sep).startswith(_INSIDE):
        _outside.append(path)


sys.addaudithook(_audit)


def pytest_sessionfinish(session, exitstatus):
    if _outside:
        names = ", ".join(sorted(set(_outside))[:10])
        session.exitstatus = 1
        print(f"\nerror: the suite read outside the repository: {names}", file=sys.stderr)
