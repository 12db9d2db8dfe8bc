"""``restore``: Litestream's restore command (spec §5.1) on our restore core.

    restore [-config P] [-no-expand-env] [-o OUT] [-txid 16HEX] [-timestamp RFC3339]
            [-if-db-not-exists] [-if-replica-exists] [-dry-run] [-force] [-json]
            [-integrity-check none|quick|full] (DB_PATH | REPLICA_URL)
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Sequence

from replication import restore as restore_mod
from replication.cmd import EXIT_ERROR, EXIT_OK, default_config_path, is_url, replica_for_db
from replication.cmd.flags import Flag, FlagError, UsageRequested, parse_flags, print_error, usage_text
from replication.errors import ReplicationError, TxNotAvailableError
from replication.ltx import format_filename
from replication.v3 import PlanV3

FLAGS = (
    Flag("config", "Specifies the configuration file.\nDefaults to $LITESTREAM_CONFIG or "
         "/etc/litestream.yml", metavar="PATH"),
    Flag("no-expand-env", "Disables environment variable expansion in configuration file.",
         default=False, boolean=True),
    Flag("txid", "Restore up to a specific hex-encoded transaction ID (inclusive).\n"
         "Defaults to use the highest available transaction.", metavar="TXID"),
    Flag("timestamp", "Restore to a specific point-in-time (RFC 3339).\n"
         "Defaults to use the latest available backup.", metavar="TIMESTAMP"),
    Flag("o", "Output path of the restored database.\nDefaults to original DB path.",
         metavar="PATH"),
    Flag("if-db-not-exists", "Returns exit code of 0 if the database already exists.",
         default=False, boolean=True),
    Flag("if-replica-exists", "Returns exit code of 0 if no backups found.",
         default=False, boolean=True),
    Flag("dry-run", "Print the restore plan and exit without writing a database.",
         default=False, boolean=True),
    Flag("force", "Overwrite an existing output database and SQLite sidecar files.",
         default=False, boolean=True),
    Flag("json", "Output raw JSON summary on successful restore.", default=False, boolean=True),
    Flag("f", "Follow mode (not supported by this implementation).", default=False, boolean=True),
    Flag("follow-interval", "Polling interval for follow mode.", metavar="DURATION"),
    Flag("parallelism", "Accepted for compatibility; files are read one after another.",
         metavar="NUM"),
    Flag("integrity-check", "Run a post-restore integrity check on the database.\n"
         "MODE is one of: none, quick, full.\nDefaults to none.", default="none",
         metavar="MODE"),
)
SYNOPSIS = ("python -m replication restore [arguments] DB_PATH",
            "python -m replication restore [arguments] REPLICA_URL")

_TXID_RE = re.compile(r"^[0-9a-fA-F]{16}$")
_RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def usage() -> str:
    return usage_text("The restore command recovers a database from a previous snapshot and "
                      "LTX files.", SYNOPSIS, FLAGS)


def parse_txid(value: str) -> int:
    if not _TXID_RE.match(value):
        raise FlagError(f'invalid value "{value}" for flag -txid: invalid txid format',
                        hint="a TXID is exactly 16 hex digits, e.g. 0000000000000007")
    return int(value, 16)


def parse_timestamp(value: str):
    from replication.replica_client import parse_rfc3339

    if not _RFC3339_RE.match(value):
        raise FlagError("invalid -timestamp, must specify in ISO 8601 format "
                        "(e.g. 2000-01-01T00:00:00Z)")
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise FlagError(f"invalid -timestamp {value!r}: not a valid date/time") from None


def main(argv: Sequence[str]) -> int:
    try:
        return run(argv)
    except UsageRequested:
        print(usage())
        return EXIT_OK
    except ReplicationError as e:
        print_error(e)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_ERROR


def run(argv: Sequence[str]) -> int:
    opts, args = parse_flags(FLAGS, argv)
    if not args or not args[0]:
        raise FlagError("database path or replica URL required",
                        hint="python -m replication restore -o /path/to/db file:///path/to/replica")
    if len(args) > 1:
        raise FlagError("too many arguments", hint="flags must come before the DB path or URL")
    target = args[0]
    if opts["integrity_check"] not in restore_mod.INTEGRITY_CHECKS:
        raise FlagError(f"invalid -integrity-check value: {opts['integrity_check']}",
                        hint="use none, quick or full")
    txid = parse_txid(opts["txid"]) if opts["txid"] is not None else 0
    timestamp = parse_timestamp(opts["timestamp"]) if opts["timestamp"] is not None else None
    if txid and timestamp is not None:
        raise FlagError("cannot specify both TXID & timestamp to restore")
    if opts["f"]:
        raise FlagError("follow mode (-f) is not supported by this implementation",
                        hint="run `litestream restore -f` for a follower, or restore periodically")

    if is_url(target):
        if opts["config"]:
            raise FlagError("cannot specify a replica URL and the -config flag")
        output = opts["o"]
        if not output:
            raise FlagError("-o is required when restoring from a replica URL",
                            hint=f"python -m replication restore -o /path/to/db {target}")
        from replication.replica_client import client_from_url
        client = client_from_url(target)
    else:
        db_path, client = replica_for_db(target, opts["config"] or default_config_path(),
                                         expand_env=not opts["no_expand_env"])
        output = opts["o"] or db_path
    output = os.path.abspath(output)

    if opts["if_db_not_exists"] and os.path.exists(output):
        print("database already exists, skipping", file=sys.stderr)
        return EXIT_OK
    try:
        if timestamp is not None and is_url(target):
            restore_mod.check_timestamp_in_bounds(client, timestamp)
        plan = restore_mod.choose_plan(client, txid=txid, timestamp=timestamp)
        if opts["dry_run"]:
            printer = print_v3_plan if isinstance(plan, PlanV3) else print_plan
            printer(target, output, client.type, plan, as_json=opts["json"])
            return EXIT_OK
        progress = _TerminalProgress() if sys.stderr.isatty() and not opts["json"] else None
        try:
            result = restore_mod.restore(client, output, integrity_check=opts["integrity_check"],
                                         force=opts["force"], progress=progress, plan=plan)
        finally:
            if progress:
                progress.finish()
    except TxNotAvailableError:
        if opts["if_replica_exists"] and not opts["dry_run"]:
            print("no matching backups found", file=sys.stderr)
            return EXIT_OK
        raise
    finally:
        close = getattr(client, "close", None)
        if close:
            close()

    if result.v3 is not None:
        print(f"restored {result.path} from the v0.3 backup: generation "
              f"{result.v3.snapshot.generation}, snapshot {result.v3.snapshot.index:08x} and "
              f"{len(result.v3.segments)} WAL segment(s), {result.page_count} pages of "
              f"{result.page_size} bytes in {result.duration:.2f}s", file=sys.stderr)
    elif opts["json"]:
        print(json.dumps({
            "db_path": result.path,
            "replica": client.type,
            "txid": f"{result.txid:016x}",
            "duration_ms": int(result.duration * 1000),
            "integrity_check": opts["integrity_check"],
        }, indent=2))
    else:
        print(f"restored {result.path}: txid {result.txid:016x}, {result.page_count} pages of "
              f"{result.page_size} bytes, {len(result.files)} file(s) in {result.duration:.2f}s",
              file=sys.stderr)
    return EXIT_OK


def _rfc3339_seconds(dt) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def print_plan(source: str, target: str, replica_type: str, plan: list, *, as_json: bool) -> None:
    doc = {
        "source": source,
        "target_path": target,
        "replica": replica_type,
        "min_txid": f"{plan[0].min_txid:016x}",
        "max_txid": f"{plan[-1].max_txid:016x}",
        "files": [{
            "level": i.level,
            "name": format_filename(i.min_txid, i.max_txid),
            "min_txid": f"{i.min_txid:016x}",
            "max_txid": f"{i.max_txid:016x}",
            "size": i.size,
            "timestamp": _rfc3339_seconds(i.created_at),
        } for i in plan],
    }
    rows = [["level", "file", "min_txid", "max_txid", "size", "timestamp"]]
    rows += [[str(f["level"]), f["name"], f["min_txid"], f["max_txid"], str(f["size"]),
              f["timestamp"]] for f in doc["files"]]
    _show_plan(doc, f"txid range: {doc['min_txid']} - {doc['max_txid']}", rows, as_json)


def _show_plan(doc: dict, what: str, rows: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print("Restore plan:")
    print(f"  source: {doc['source']}")
    print(f"  target: {doc['target_path']}")
    print(f"  replica: {doc['replica']}")
    print(f"  {what}")
    print()
    print("Files to fetch:")
    print(format_table(rows), end="")


def print_v3_plan(source: str, target: str, replica_type: str, plan: PlanV3, *,
                  as_json: bool) -> None:
    """The plan of a restore from Litestream v0.3 data (generation, snapshot, WAL segments).
    Litestream 0.5.17's own -dry-run reports none ("no matching backup files available")."""
    doc = {
        "source": source,
        "target_path": target,
        "replica": replica_type,
        "format": "v0.3",
        "generation": plan.snapshot.generation,
        "files": [{
            "kind": "snapshot" if f is plan.snapshot else "wal",
            "path": f.path,
            "index": f"{f.index:08x}",
            "offset": f"{getattr(f, 'offset', 0):08x}",
            "size": f.size,
            "timestamp": _rfc3339_seconds(f.created_at),
        } for f in plan.files],
    }
    rows = [["kind", "file", "index", "offset", "size", "timestamp"]]
    rows += [[f["kind"], f["path"].rsplit("/", 1)[1], f["index"], f["offset"], str(f["size"]),
              f["timestamp"]] for f in doc["files"]]
    _show_plan(doc, f"format: v0.3, generation {plan.snapshot.generation}", rows, as_json)


def format_table(rows: list[list[str]]) -> str:
    """Go ``tabwriter`` (padding 2, spaces): every column but the last padded to its width."""
    widths = [max(len(r[c]) for r in rows) + 2 for c in range(len(rows[0]) - 1)]
    return "".join("".join(cell.ljust(w) for cell, w in zip(r, widths)) + r[-1] + "\n"
                   for r in rows)


class _TerminalProgress:
    """``restoring  42% (420.0/1000.0 MB)`` on stderr, redrawn at most 10 times a second."""

    def __init__(self):
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        pct = 100 * done // total if total else 100
        sys.stderr.write(f"\rrestoring {pct:3d}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB)")
        sys.stderr.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
