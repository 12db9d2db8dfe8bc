"""Litestream's command line, on our core: ``python -m replication <command> [flags] [args]``.

Commands are declared in ``COMMANDS`` and imported on first use, so ``restore`` does not pay
for the replication daemon's imports (and works even where that module is unavailable).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Sequence

from replication.errors import ReplicationError

# command → (module implementing ``main(argv) -> int``, one-line description)
COMMANDS = {
    "replicate": ("replication.cmd.replicate", "Runs a server to replicate databases."),
    "restore": ("replication.cmd.restore", "Recovers database backup from a replica."),
    "ltx": ("replication.cmd.ltx", "Lists available LTX files for a database."),
}
ALIASES = {"wal": "ltx"}  # deprecated spelling kept by Litestream 0.5

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"
_URL_RE = re.compile(r"^\w+://")

EXIT_OK = 0
EXIT_ERROR = 1


def is_url(s: str) -> bool:
    """Litestream's ``IsURL``: ``scheme://...`` (anything else is a database path)."""
    return bool(_URL_RE.match(s))


def default_config_path() -> str:
    """``$LITESTREAM_CONFIG`` or ``/etc/litestream.yml`` (Litestream's lookup)."""
    return os.environ.get("LITESTREAM_CONFIG") or DEFAULT_CONFIG_PATH


def replica_for_db(db_path: str, config_path: str | None, expand_env: bool):
    """Look ``db_path`` up in litestream.yml: returns (absolute DB path, replica client)."""
    from replication.config import load_config, normalize_db_path
    from replication.replica_client import client_from_config

    config_path = config_path or default_config_path()
    config = load_config(config_path, expand_env=expand_env)
    db = config.db_for_path(db_path)
    if db is None:
        raise ReplicationError(f"database not found in config: {normalize_db_path(db_path)}",
                               hint=f"check the dbs[].path entries of {config_path}")
    if db.replica is None:
        raise ReplicationError(f"database has no replica in config: {db.path}",
                               hint=f"add a replica: section to its entry in {config_path}")
    return db.path, client_from_config(db.replica)


def usage() -> str:
    lines = ["litestream-compatible replication commands.", "", "Usage:", "",
             "\tpython -m replication <command> [arguments]", "", "The commands are:", ""]
    lines += [f"\t{name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return EXIT_OK if argv else EXIT_ERROR
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r} (hint: commands are: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return EXIT_ERROR
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"error: the {name!r} command is not available in this build ({module_name} is "
              f"missing)", file=sys.stderr)
        return EXIT_ERROR
    try:
        return module.main(argv[1:])
    except OSError as e:  # the last resort: one line with the cause, never a traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where} (hint: check the path, its directory's "
              f"permissions and free space)", file=sys.stderr)
        return EXIT_ERROR
