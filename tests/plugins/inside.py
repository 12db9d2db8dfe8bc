"""The suite reads nothing outside the repository (a user's clone has no ``shared/`` beside it).

An audit hook records every file the test process opens or lists under the folder that
holds the repository but outside the repository itself (a temp dir and the system are
elsewhere; the Python running the suite, even in a venv beside the clone, is allowed); the
session fails, naming them, if there is any. Child processes
(servers, litestream) get their paths from the tests, so this covers them too."""
from __future__ import annotations

import os
import site
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_BESIDE = str(REPO.parent) + os.sep
_INSIDE = str(REPO) + os.sep
# The Python that runs the suite may live beside the clone too (a venv next to it): its files
# are the installed dependencies, not references the suite leans on.
_PYTHON = tuple(os.path.abspath(p) + os.sep for p in
                {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
                 site.getusersitepackages()})
_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
_outside: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event not in _EVENTS or not args or args[0] is None or isinstance(args[0], int):
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if path.startswith(_BESIDE) and not (path + os.sep).startswith(_INSIDE) \
            and not path.startswith(_PYTHON):
        _outside.append(path)


sys.addaudithook(_audit)


def pytest_sessionfinish(session, exitstatus):
    if _outside:
        names = ", ".join(sorted(set(_outside))[:10])
        session.exitstatus = 1
        print(f"\nerror: the suite read outside the repository: {names}", file=sys.stderr)
