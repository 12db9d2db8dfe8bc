"""Go ``flag``-package command lines, so our commands accept Litestream's spellings.

Rules (as in Go): a flag is ``-name`` or ``--name``; a value follows as ``-name=value`` or as the
next argument; a boolean flag never takes the next argument (``-force=false`` sets it off);
flags end at the first positional argument or at ``--``. Flags are declared in a table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

from replication.errors import ReplicationError

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


@dataclass(frozen=True)
class Flag:
    name: str                # without dashes, e.g. "if-db-not-exists"
    help: str
    default: Any = None
    boolean: bool = False
    metavar: str = "VALUE"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


class UsageRequested(Exception):
    """``-h``/``-help`` was given: print the usage and exit 0."""


class FlagError(ReplicationError):
    """A command line that Go's flag package would reject."""


def parse_flags(flags: Sequence[Flag], argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Parse ``argv`` against ``flags``: returns ({dest: value}, positional arguments)."""
    table = {f.name: f for f in flags}
    values = {f.dest: f.default for f in flags}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if len(arg) < 2 or not arg.startswith("-"):
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        name, has_value, value = name.partition("=")
        if name in ("h", "help"):
            raise UsageRequested()
        flag = table.get(name)
        if flag is None or not name or name.startswith("-"):
            raise FlagError(f"flag provided but not defined: -{name}",
                            hint="run with -h to list the flags")
        if flag.boolean:
            if not has_value:
                values[flag.dest] = True
            elif value in _TRUE:
                values[flag.dest] = True
            elif value in _FALSE:
                values[flag.dest] = False
            else:
                raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')
        else:
            if not has_value:
                if i + 1 >= len(args):
                    raise FlagError(f"flag needs an argument: -{name}")
                i += 1
                value = args[i]
            values[flag.dest] = value
        i += 1
    return values, args[i:]


def usage_text(summary: str, synopsis: Sequence[str], flags: Sequence[Flag]) -> str:
    lines = [summary, "", "Usage:", ""]
    lines += [f"\t{s}" for s in synopsis]
    lines += ["", "Arguments:", ""]
    for f in flags:
        head = f"-{f.name}" if f.boolean else f"-{f.name} {f.metavar}"
        lines.append(f"\t{head}")
        lines += [f"\t    {h}" for h in f.help.splitlines()]
        lines.append("")
    return "\n".join(lines)


def print_error(err: BaseException) -> None:
    """One line on stderr: ``error: <message> (hint: ...)``."""
    print(f"error: {err}", file=sys.stderr)
