"""``ltx``: list a replica's LTX files, as Litestream's ``ltx`` command does (spec §5.1).

    ltx [-config P] [-no-expand-env] [-json] [-level 0-9|all] (DB_PATH | REPLICA_URL)
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from replication.cmd import EXIT_ERROR, EXIT_OK, default_config_path, is_url, replica_for_db
from replication.cmd.flags import Flag, FlagError, UsageRequested, parse_flags, print_error, usage_text
from replication.cmd.restore import format_table
from replication.errors import ReplicationError

SNAPSHOT_LEVEL = 9

FLAGS = (
    Flag("config", "Specifies the configuration file.\nDefaults to $LITESTREAM_CONFIG or "
         "/etc/litestream.yml", metavar="PATH"),
    Flag("no-expand-env", "Disables environment variable expansion in configuration file.",
         default=False, boolean=True),
    Flag("level", 'Compaction level to list (0-9 or "all").\nDefaults to 0.', default="0",
         metavar="LEVEL"),
    Flag("json", "Output raw JSON instead of human-readable text.", default=False, boolean=True),
)
SYNOPSIS = ("python -m replication ltx [arguments] DB_PATH",
            "python -m replication ltx [arguments] REPLICA_URL")


def parse_level(value: str) -> list[int]:
    if value == "all":
        return list(range(SNAPSHOT_LEVEL + 1))
    if value.isdigit() and 0 <= int(value) <= SNAPSHOT_LEVEL:
        return [int(value)]
    raise FlagError(f'invalid value "{value}" for flag -level: level must be between 0 and 9',
                    hint='use 0..9 or "all"')


def main(argv: Sequence[str]) -> int:
    try:
        return run(argv)
    except UsageRequested:
        print(usage_text("The ltx command lists all LTX files available for a database.",
                         SYNOPSIS, FLAGS))
        return EXIT_OK
    except ReplicationError as e:
        print_error(e)
        return EXIT_ERROR


def run(argv: Sequence[str]) -> int:
    opts, args = parse_flags(FLAGS, argv)
    if not args or not args[0]:
        raise FlagError("database path or replica URL required")
    if len(args) > 1:
        raise FlagError("too many arguments", hint="flags must come before the DB path or URL")
    levels = parse_level(opts["level"])
    target = args[0]
    if is_url(target):
        if opts["config"]:
            raise FlagError("cannot specify a replica URL and the -config flag")
        from replication.replica_client import client_from_url
        client = client_from_url(target)
    else:
        _, client = replica_for_db(target, opts["config"] or default_config_path(),
                                   expand_env=not opts["no_expand_env"])
    try:
        infos = [info for level in levels for info in client.ltx_files(level)]
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
    rows = [{
        "level": i.level,
        "min_txid": f"{i.min_txid:016x}",
        "max_txid": f"{i.max_txid:016x}",
        "size": i.size,
        "timestamp": i.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    } for i in infos]
    if opts["json"]:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = [["level", "min_txid", "max_txid", "size", "created"]]
    table += [[str(r["level"]), r["min_txid"], r["max_txid"], str(r["size"]), r["timestamp"]]
              for r in rows]
    sys.stdout.write(format_table(table))
    return EXIT_OK
