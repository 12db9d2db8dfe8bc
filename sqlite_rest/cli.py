"""The `sqlite-rest` command line.

``serve`` and ``migrate`` keep the Go server's flag names and defaults; ``restore``, ``ltx`` and
``replicate`` are Litestream's commands (replication.cmd). Every flag has an environment mirror
``SQLITEREST_<FLAG>`` (``--db-dsn`` -> ``SQLITEREST_DB_DSN``); a flag on the command line wins.
As in the Go server, ``--db-dsn``, ``--log-level`` and ``--log-devel`` may also come before the
subcommand (``sqlite-rest --db-dsn x.db serve``).

Startup errors are one line on stderr (``error: ... (hint: ...)``) and exit code 1 (2 for a
malformed command line, as argparse does).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .observability import logs
from . import __version__
from .process.http_server import DEFAULT_THREADS

log = logging.getLogger("sqlite_rest.cli")

ENV_PREFIX = "SQLITEREST_"
#: Litestream's commands, passed through to replication.cmd.main.
PASSTHROUGH = ("restore", "ltx", "replicate")
_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n", ""}


_FALSE_SUFFIX = "=__false__"


class UsageError(Exception):
    """A bad flag or environment value: one line, exit code 1."""


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false)")


def _shown(text) -> str:
    text = str(text)
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _whole_number(text: str, largest: int = (1 << 63) - 1) -> int:
    """A flag's integer: ASCII decimal, at most ``largest`` (the message shows at most 40
    characters of what was typed)."""
    digits = str(text).strip()
    if not digits.lstrip("+-").isdigit() or not digits.isascii():
        raise ValueError(f"{_shown(text)} is not a whole number")
    if len(digits.lstrip("+-").lstrip("0")) > len(str(largest)) or int(digits) > largest:
        raise ValueError(f"{_shown(text)} is more than {largest}")
    return int(digits)


def _process_count(text: str) -> int:
    """--workers / --threads: each one is an OS process or thread."""
    value = _whole_number(text, largest=MAX_PROCESS_COUNT)
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return value


#: Most workers (processes) or threads per worker a flag accepts: far past any machine's
#: sensible count, short of the OS limits (a huge value crashed granian with OverflowError).
MAX_PROCESS_COUNT = 1024


def _int8(text: str) -> int:
    value = _whole_number(text)
    if not -128 <= value <= 127:
        raise ValueError(f"{value} is out of range -128..127")
    return value


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise ValueError(f"{value} must be at least 1")
    return value


def _tables(text: str) -> list:
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass(frozen=True)
class Flag:
    """One flag: its name, default, meaning, and how to read its value."""

    name: str
    help: str
    default: Any = None
    kind: Callable[[str], Any] = str
    boolean: bool = False
    repeatable: bool = False
    metavar: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


# Declarative: the help, the env mirror and the defaults all come from these tables.
COMMON_FLAGS = (
    Flag("db-dsn", "Database path or go-sqlite3 style DSN, e.g. data.db, "
         "'data.db?_busy_timeout=5000' or 'file:data.db?mode=ro'. The database always runs "
         "in WAL mode.", metavar="DSN"),
    Flag("log-level", "Log verbosity on the Go server's scale: <=-2 errors, -1 warnings, "
         "0..7 info incl. one line per request, >=8 debug (SQL text).", default=5, kind=_int8,
         metavar="N"),
    Flag("log-devel", "Human-readable (development) log format instead of JSON lines.",
         default=False, boolean=True),
)

SERVE_FLAGS = (
    Flag("http-addr", "API listen address, host:port (':8080' = every interface).",
         default=":8080", metavar="ADDR"),
    Flag("http-socket", "Listen on this unix socket path instead of --http-addr (the Go "
         "server's flag); a stale socket file is replaced.", default="", metavar="PATH"),
    Flag("auth-token-file", "File whose raw bytes are the HMAC secret for HS256/384/512 JWTs; "
         "re-read when it changes.", metavar="PATH"),
    Flag("auth-rsa-public-key", "PEM RSA public key file for RS256/384/512 JWTs; re-read when "
         "it changes.", metavar="PATH"),
    Flag("auth-jwks-file", "JWKS JSON file of public keys (RS*, PS*, ES*, EdDSA) chosen by the "
         "token's `kid`; re-read when it changes.", metavar="PATH"),
    Flag("auth-audience", "Tokens must name this audience in their `aud` claim (PostgREST's "
         "jwt-aud); tokens without `aud` are refused.", metavar="AUD"),
    Flag("auth-disabled", "Serve WITHOUT authentication (local use only; logged loudly). One "
         "of --auth-token-file / --auth-rsa-public-key / --auth-jwks-file is required "
         "otherwise.", default=False, boolean=True),
    Flag("permissions-file", "YAML file of roles and row-level security: per role (a JWT "
         "claim) the tables, verbs, columns and row filters it may use (see the README, "
         "\"Roles and row-level security\"). Without it every valid token may do everything.",
         metavar="PATH"),
    Flag("security-allow-table", "Table or view to expose; repeatable and comma-separated. "
         "Deny by default: without it no table is served. A name the database lacks is "
         "warned about.", default=(), kind=_tables,
         repeatable=True, metavar="TABLES"),
    Flag("metrics-addr", "Prometheus /metrics plus /live, /ready, /status listen address; "
         "'' disables.", default=":8081", metavar="ADDR"),
    Flag("pprof-addr", "Profiling server (/debug/pprof/): CPU profiles of the workers and the "
         "supervisor as folded stacks or speedscope JSON, thread stacks, heap; '' (default) "
         "disables.", default="", metavar="ADDR"),
    Flag("functions-file", "YAML file of functions (named, parameterised SQL) served as "
         "PostgREST functions under /rpc/<name>; checked against the database at start-up "
         "(see the README, RPC).", metavar="PATH"),
    Flag("relationships-file", "YAML (or JSON) file of foreign keys declared for views, so "
         "that resource embedding can follow them (SQLite views have none); checked against "
         "the database at start-up (see the README, \"Relationships of views\").",
         metavar="PATH"),
    Flag("max-rows", "Most rows a read returns when the client asks for no limit "
         "(PostgREST's db-max-rows). Default: unlimited.", default=None, kind=_positive_int,
         metavar="N"),
    Flag("max-body-bytes", "Largest request body; larger ones get 413.",
         default=8 * 1024 * 1024, kind=_positive_int, metavar="BYTES"),
    Flag("refuse-filterless-writes", "Refuse PATCH and DELETE without any filter (opt-in).",
         default=False, boolean=True),
    Flag("primary-url", "Where the primary is: named in the hint of writes refused by a "
         "read-only database or a read replica (405, 25006).", metavar="URL"),
    Flag("replica-max-lag", "A read replica (--db-dsn with vfs=litestream) is not ready while "
         "its last successful poll of the replica is older than this many seconds.",
         default=5.0, kind=float, metavar="SECONDS"),
    Flag("aggregates-enabled", "Allow aggregates in select (total.sum(), avg(), min(), "
         "max(), count()), grouped by the other selected columns; PostgREST's "
         "db-aggregates-enabled.", default=False, boolean=True),
    Flag("forward-writes", "A read replica sends writes to --primary-url and answers once "
         "its own view holds them (read-your-writes through replicas).", default=False,
         boolean=True),
    Flag("replica-wait-timeout", "Longest a read replica waits for X-Replication-Min-Txid "
         "before answering 503 (seconds).", default=2.0, kind=float, metavar="SECONDS"),
    Flag("workers", "HTTP worker processes (default: one per CPU core, here "
         f"{os.cpu_count() or 1}; at most {MAX_PROCESS_COUNT}).", default=None,
         kind=_process_count, metavar="N"),
    Flag("threads", f"Request threads per worker process (default {DEFAULT_THREADS}); each "
         "thread holds its own SQLite connections. 1 halves the tail latency when every "
         "request is short, but a slow one then holds up its worker (design/process-model.md).",
         default=None, kind=_process_count, metavar="N"),
    Flag("server", "Production HTTP server running the workers (granian: measured fastest, "
         "see design/process-model.md).", default="granian", metavar="NAME"),
    Flag("replication-enabled", "Replicate the database with the built-in Litestream 0.5 "
         "compatible replicator (needs --replication-config).", default=False, boolean=True),
    Flag("replication-config", "Litestream 0.5 YAML config file naming the replica of "
         "--db-dsn.", metavar="PATH"),
    Flag("replication-force-restore", "The local database and the replica diverged: replace "
         "the local database by a restore of the replica (the local file is kept, checkpointed, "
         "as DB.replaced-by-force-restore-<UTC time>).",
         default=False, boolean=True),
    Flag("replication-reset-replica", "The local database and the replica diverged: keep the "
         "local database and start the replica over from it.", default=False, boolean=True),
)

MIGRATE_FLAGS = (
    Flag("direction", "Migrate 'up' (apply pending) or 'down' (revert applied).",
         default="up", kind=lambda v: _choice(v, ("up", "down")), metavar="up|down"),
    Flag("step", "Apply/revert at most N migrations (default: all pending for up; for down "
         "all applied).", default=None, kind=_positive_int, metavar="N"),
    Flag("force", "Set the version without running migrations and clear the dirty flag (after "
         "fixing a failed migration by hand), like golang-migrate's force. -1 = no version.",
         default=None, kind=int, metavar="VERSION"),
)


def _choice(value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def _add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    for flag in flags:
        default_text = "" if flag.default in (None, (), "") else f" Default: {flag.default}."
        if flag.default == "":
            default_text = " Default: '' (off)."
        help_text = f"{flag.help}{default_text} Env: {flag.env}."
        if flag.boolean:
            parser.add_argument(f"--{flag.name}", dest=flag.dest, action="store_true",
                                default=argparse.SUPPRESS, help=help_text)
            # target of the `--flag=false` rewrite (see _normalize_bool_flags); not in --help
            parser.add_argument(f"--{flag.name}{_FALSE_SUFFIX}", dest=flag.dest,
                                action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
        elif flag.repeatable:
            parser.add_argument(f"--{flag.name}", dest=flag.dest, action="append",
                                type=_argparse_type(flag), default=argparse.SUPPRESS,
                                metavar=flag.metavar, help=help_text)
        else:
            parser.add_argument(f"--{flag.name}", dest=flag.dest, type=_argparse_type(flag),
                                default=argparse.SUPPRESS, metavar=flag.metavar, help=help_text)


def _argparse_type(flag: Flag):
    def convert(text: str):
        try:
            return flag.kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = flag.name
    return convert


def _resolve(ns: argparse.Namespace, flags: Sequence[Flag], environ) -> dict:
    """Flag value if given, else the environment mirror, else the default."""
    values = {}
    for flag in flags:
        if hasattr(ns, flag.dest):
            value = getattr(ns, flag.dest)
            if flag.repeatable:
                value = [name for group in value for name in group]
        elif flag.env in environ:
            raw = environ[flag.env]
            try:
                value = parse_bool(raw) if flag.boolean else flag.kind(raw)
            except ValueError as exc:
                raise UsageError(f"{flag.env}={_shown(raw)}: {exc}") from None
        else:
            value = flag.default
        values[flag.dest] = value
    return values


def _normalize_bool_flags(argv: list, flags: Sequence[Flag]) -> list:
    """pflag accepts ``--log-devel=false``; argparse's store_true does not: rewrite it."""
    names = {f"--{f.name}" for f in flags if f.boolean}
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name in names:
            try:
                out.append(name if parse_bool(value) else name + _FALSE_SUFFIX)
            except ValueError:
                raise UsageError(f"{name}={value!r} is not a boolean (use true/false)") from None
            continue
        out.append(arg)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (no usage dump), exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (hint: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sqlite-rest",
        description="Serve a PostgREST-compatible REST API from any SQLite database, with "
                    "Litestream 0.5 compatible replication.")
    parser.add_argument("--version", action="version", version=f"sqlite-rest {__version__}")
    _add_flags(parser, COMMON_FLAGS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="Start the database server.",
                           description="Start the database server (supervisor + HTTP workers).")
    _add_flags(serve, COMMON_FLAGS + SERVE_FLAGS)

    migrate = sub.add_parser(
        "migrate", help="Apply database migrations.",
        description="Apply golang-migrate style migrations (<version>_<name>.up.sql / "
                    ".down.sql) from DIR; the version is kept in __sqlite_rest_migrations.")
    migrate.add_argument("migrations_dir", metavar="DIR", help="Directory of the migration files.")
    _add_flags(migrate, COMMON_FLAGS + MIGRATE_FLAGS)

    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"Litestream's `{name}` command (see `sqlite-rest {name} -h`).",
                       add_help=False)
    sub.add_parser("demo", help="Serve a demo database replicated to a local directory "
                                "(see `sqlite-rest demo -h`).", add_help=False)
    return parser


def _demo(argv: Sequence[str]) -> int:
    """`sqlite-rest demo [DIR]`: the embedded default (sqlite_rest/demo.py), then `serve`."""
    from . import demo

    parser = argparse.ArgumentParser(
        prog="sqlite-rest demo",
        description="Create (once) a demo database and a Litestream config replicating it to "
                    "DIR/replica, then serve it on 127.0.0.1 with replication on and "
                    "authentication off (local use only).")
    parser.add_argument("dir", nargs="?", default=demo.DEFAULT_DIR,
                        help=f"Where the demo lives (default: ./{demo.DEFAULT_DIR}).")
    parser.add_argument("--http-addr", default="127.0.0.1:8080", help="API address.")
    parser.add_argument("--metrics-addr", default="127.0.0.1:8081",
                        help="Metrics, /ready and /status address.")
    args = parser.parse_args(argv)
    return main(demo.serve_argv(args.dir, args.http_addr, args.metrics_addr))


def _passthrough_at(argv: list) -> Optional[int]:
    """Where Litestream's command (restore, ltx, replicate) starts, after any common logging
    flags (``sqlite-rest --log-level 8 replicate …``); None for our own commands."""
    i = 0
    while i < len(argv) and argv[i] not in PASSTHROUGH:
        if argv[i] == "--log-level":
            i += 2
        elif argv[i].startswith("--log-level=") or argv[i] in ("--log-devel",) \
                or argv[i].startswith("--log-devel="):
            i += 1
        else:
            return None
    return i if i < len(argv) else None


def _run_passthrough(argv: list) -> int:
    """Litestream's commands, logging as `serve` does (--log-level/--log-devel or their
    SQLITEREST_* mirrors): one log format for every command of the tool."""
    from replication.cmd import main as replication_main

    at = _passthrough_at(argv)
    parser = _Parser(prog="sqlite-rest", add_help=False)
    _add_flags(parser, [f for f in COMMON_FLAGS if f.name.startswith("log-")])
    try:
        ns = parser.parse_args(_normalize_bool_flags(argv[:at], COMMON_FLAGS))
        common = _resolve(ns, COMMON_FLAGS, os.environ)
    except UsageError as exc:
        return _fail(f"{exc}")
    logs.configure(common["log_level"], common["log_devel"])
    return replication_main(argv[at:])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _passthrough_at(argv) is not None:
        return _run_passthrough(argv)
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    try:
        command, common, flags = parse(argv, os.environ)
        if command is None:
            build_parser().print_help(sys.stderr)
            return 2
        logs.configure(common["log_level"], common["log_devel"])
        if command == "serve":
            return _serve(common, flags)
        return _migrate(common, flags.pop("migrations_dir"), flags)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def parse(argv: Sequence[str], environ) -> tuple:
    """(command, common settings, command settings): flag, else env mirror, else default."""
    parser = build_parser()
    ns = parser.parse_args(_normalize_bool_flags(list(argv), COMMON_FLAGS + SERVE_FLAGS))
    if ns.command is None:
        return None, {}, {}
    common = _resolve(ns, COMMON_FLAGS, environ)
    if ns.command == "serve":
        return "serve", common, _resolve(ns, SERVE_FLAGS, environ)
    flags = _resolve(ns, MIGRATE_FLAGS, environ)
    flags["migrations_dir"] = ns.migrations_dir
    return "migrate", common, flags


def _fail(message: str, hint: Optional[str] = None) -> int:
    print(f"error: {message}" + (f" (hint: {hint})" if hint else ""), file=sys.stderr)
    return 1


def _serve(common: dict, flags: dict) -> int:
    # The supervisor keeps its own metrics in-process; the workers get a fresh multiprocess
    # directory from the supervisor. An inherited value would put the parent in multiprocess
    # mode (prometheus_client reads it at import) and mix runs.
    if os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None) is not None:
        log.warning("PROMETHEUS_MULTIPROC_DIR is ignored: `serve` manages its own")
    from .config import DSNError, ServerConfig
    from .process import StartupError
    from .process.supervisor import ServeOptions, Supervisor

    if not common["db_dsn"]:
        return _fail("--db-dsn is required", hint="e.g. --db-dsn data.db or SQLITEREST_DB_DSN")
    if not (flags["auth_disabled"] or flags["auth_token_file"] or flags["auth_rsa_public_key"]
            or flags["auth_jwks_file"]):
        return _fail("authentication is required",
                     hint="pass --auth-token-file, --auth-rsa-public-key or --auth-jwks-file, "
                          "or --auth-disabled for local use")
    try:
        config = ServerConfig(
            db_dsn=common["db_dsn"],
            allow_tables=tuple(flags["security_allow_table"]),
            auth_token_file=flags["auth_token_file"] or None,
            auth_rsa_public_key=flags["auth_rsa_public_key"] or None,
            auth_jwks_file=flags["auth_jwks_file"] or None,
            auth_audience=flags["auth_audience"] or None,
            permissions_file=flags["permissions_file"] or None,
            auth_disabled=flags["auth_disabled"],
            max_rows=flags["max_rows"],
            max_body_bytes=flags["max_body_bytes"],
            refuse_filterless_writes=flags["refuse_filterless_writes"],
            primary_url=flags["primary_url"] or None,
            functions_file=flags["functions_file"] or None,
            relationships_file=flags["relationships_file"] or None,
        )
    except DSNError as exc:
        return _fail(f"--db-dsn: {exc}", getattr(exc, "hint", None))
    except ValueError as exc:
        return _fail(str(exc))
    options = ServeOptions(
        http_addr=flags["http_addr"],
        http_socket=flags["http_socket"] or "",
        metrics_addr=flags["metrics_addr"],
        pprof_addr=flags["pprof_addr"],
        workers=flags["workers"] or (os.cpu_count() or 1),
        threads=flags["threads"] or 0,
        server=flags["server"],
        log_level=common["log_level"],
        log_devel=common["log_devel"],
    )
    config.replica_wait_timeout = flags["replica_wait_timeout"]
    config.forward_writes = flags["forward_writes"]
    config.aggregates_enabled = flags["aggregates_enabled"]
    if config.forward_writes and not (config.dsn.replica and config.primary_url):
        return _fail("--forward-writes needs a read replica (--db-dsn with vfs=litestream) and "
                     "--primary-url", hint="e.g. --primary-url http://primary:8080")
    replicating = (flags["replication_enabled"] or flags["replication_config"]
                   or flags["replication_force_restore"] or flags["replication_reset_replica"])
    if config.dsn.replica and replicating:
        return _fail("--db-dsn: a read replica (vfs=litestream) reads its replica; it does not "
                     "replicate", hint="drop the --replication-* flags, or serve the primary's "
                                       "own database file")
    try:
        replication = None
        if config.dsn.replica:
            _check_replica(config)
            _read_relationships_file(config)  # its schema check: each worker's create_app
            supervisor = Supervisor(config, options)
            supervisor.validate()
            _wire_replica_reads(supervisor, config, flags["replica_max_lag"])
            if config.auth_disabled:
                log.warning("AUTHENTICATION IS DISABLED (--auth-disabled): every client can "
                            "read every allow-listed table. Never expose this server beyond "
                            "localhost.")
            return supervisor.run()
        if replicating:
            replication = _replication_for(config, flags)
            options.wait_for_replication_txid = True
            config.create_missing_database = False
        # with replication a missing database is restored, never created empty here
        _check_database(config, create=replication is None)
        _check_auth_keys(config)
        functions = _read_functions_file(config)
        policy = _read_permissions_file(config)
        declared = _read_relationships_file(config)
        supervisor = Supervisor(config, options)
        supervisor.validate()
        if replication is not None:
            _wire_replication(supervisor, replication)
        if config.auth_disabled:
            log.warning("AUTHENTICATION IS DISABLED (--auth-disabled): every client can read and "
                        "write every allow-listed table. Never expose this server beyond localhost.")
        if not config.allow_tables:
            log.warning("no --security-allow-table given: every table is denied (deny by default)")
        # Last before the HTTP server starts: after a restore, the database is there to look at.
        supervisor.before_http_start.append(lambda: _warn_about_unknown_tables(config))
        if policy is not None:  # after a restore: the tables it names are there
            supervisor.before_http_start.append(lambda: _check_permissions(config, policy))
        if declared is not None:  # after a restore: the views it names are there
            supervisor.before_http_start.append(lambda: _check_relationships(config, declared))
        if functions is not None:  # after a restore: the tables the functions read are there
            supervisor.before_http_start.append(lambda: _prepare_functions(config, functions))
        return supervisor.run()
    except StartupError as exc:
        return _fail(str(exc), exc.hint)


def _check_replica(config) -> None:
    """Open the replica once through the VFS (then close it): an unreachable store, a bad
    VFS parameter or an empty replica refuses the start with one line."""
    import apsw

    from .db import open_connection
    from .process import StartupError

    try:
        conn = open_connection(config.dsn.path, read_only=True,
                               busy_timeout_ms=config.dsn.busy_timeout_ms,
                               replica_params=dict(config.dsn.vfs_params))
    except apsw.Error as exc:
        raise StartupError(f"--db-dsn: cannot read the replica: {exc}",
                           hint="check replica_url and the store's credentials; a replica is "
                                "readable once its primary has synced once") from None
    try:
        conn.execute("PRAGMA schema_version").fetchall()
    except apsw.Error as exc:
        raise StartupError(f"--db-dsn: cannot read the replica: {exc}") from None
    finally:
        conn.close()


class _ReplicaWatch:
    """The supervisor's own connection to the replica (opened on first use, after the
    workers are started): /ready and /status of a read replica. It follows the workers' one
    poller (``poll_share``, never leading: its lag is theirs) rather than polling the store."""

    def __init__(self, config, max_lag: float, poll_share=None):
        import threading

        self.config, self.max_lag, self.poll_share = config, max_lag, poll_share
        self._conn = None
        self._lock = threading.Lock()

    def _connection(self):
        from .db import open_connection

        with self._lock:
            if self._conn is None:
                share = self.poll_share() if self.poll_share else None
                self._conn = open_connection(
                    self.config.dsn.path, read_only=True,
                    busy_timeout_ms=self.config.dsn.busy_timeout_ms,
                    replica_params={**({"poll_share": share, "poll_lead": "false"}
                                       if share else {}),
                                    **dict(self.config.dsn.vfs_params)})
            return self._conn

    def ready(self) -> bool:
        from replication.primary import replica_lag

        lag = replica_lag(self._connection())  # -1 until the first poll: the index is loaded
        return lag <= self.max_lag

    def stats(self) -> dict:
        from replication.primary import replica_stats

        return replica_stats(self._connection())

    def status(self) -> dict:
        stats = self.stats()
        for key in ("txid", "hydration_txid"):  # positions as the headers write them
            stats[key] = f"{stats[key]:016x}"
        stats["max_lag"] = self.max_lag
        return stats

    def close(self) -> bool:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        return True


def _wire_replica_reads(supervisor, config, max_lag: float) -> None:
    from prometheus_client import REGISTRY

    from .observability.metrics import ReplicaCollector

    watch = _ReplicaWatch(config, max_lag, lambda: supervisor.replica_poll_share_path)
    supervisor.health.add_ready_check("replica", watch.ready)
    supervisor.health.add_status("replica", watch.status)
    REGISTRY.register(ReplicaCollector(watch.stats))
    supervisor.after_http_stop.append(watch.close)
    log.info("read replica of %s: reads %s, takes no writes%s", config.dsn.path,
             dict(config.dsn.vfs_params).get("replica_url"),
             f" (they go to {config.primary_url})" if config.primary_url else "")


def _check_database(config, create: bool = True) -> None:
    """Open the database once in the supervisor (then close it: no handle may be inherited).
    `create=False` (replication on): a missing database is left for the restore."""
    import apsw

    from .process import StartupError

    path = config.dsn.path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError(f"--db-dsn: directory {directory} does not exist",
                           hint="create it, or fix the path")
    if not create and not os.path.exists(path):
        return
    if config.dsn.mode != "rwc" and not os.path.exists(path):
        raise StartupError(f"--db-dsn: database {path} does not exist (mode={config.dsn.mode})")
    flags = (apsw.SQLITE_OPEN_READONLY if config.dsn.read_only else
             apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if config.dsn.mode == "rwc" else 0))
    try:
        conn = apsw.Connection(path, flags=flags)
        try:
            conn.set_busy_timeout(config.dsn.busy_timeout_ms)
            conn.execute("PRAGMA schema_version").fetchall()
            if not config.dsn.read_only:
                mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL").fetchall()
        finally:
            conn.close()
    except apsw.Error as exc:
        raise StartupError(f"--db-dsn: cannot open database {path}: {exc}") from None


def _read_file(path, parse, error_type):
    """A config file's contents, checked without the database (StartupError); None without
    one."""
    from .process import StartupError

    if not path:
        return None
    try:
        return parse(path)
    except error_type as exc:
        raise StartupError(str(exc)) from None


def _read_functions_file(config):
    from .api.functions import FunctionsFileError, parse_functions_file

    return _read_file(config.functions_file, parse_functions_file, FunctionsFileError)


def _read_permissions_file(config):
    from .auth.policy import PermissionsFileError, load_policy

    return _read_file(config.permissions_file,
                      lambda path: load_policy(path, config.allow_tables), PermissionsFileError)


def _read_relationships_file(config):
    from .api.relationships_file import RelationshipsFileError, parse_relationships_file

    return _read_file(config.relationships_file, parse_relationships_file,
                      RelationshipsFileError)


def _check_relationships(config, declared) -> None:
    """The tables and columns the relationships file names must exist (StartupError)."""
    import apsw

    from .api.relationships_file import RelationshipsFileError, check_relationships
    from .api.schema import load_schema
    from .process import StartupError

    if not os.path.exists(config.dsn.path):
        return
    conn = apsw.Connection(config.dsn.path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        check_relationships(load_schema(conn), declared, config.relationships_file)
    except RelationshipsFileError as exc:
        raise StartupError(str(exc)) from None
    finally:
        conn.close()


def _check_permissions(config, policy) -> None:
    """The columns the permissions file names must exist (StartupError)."""
    import apsw

    from .api.schema import load_schema
    from .auth.policy import PermissionsFileError
    from .process import StartupError

    if not os.path.exists(config.dsn.path):
        return
    conn = apsw.Connection(config.dsn.path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        policy.check_schema(load_schema(conn))
    except PermissionsFileError as exc:
        raise StartupError(str(exc)) from None
    finally:
        conn.close()


def _prepare_functions(config, functions) -> None:
    """Prepare every function's SQL on the database (never run): a bad statement, an unknown
    table or a read-only function that writes refuses the start, before any worker."""
    import apsw

    from .api.functions import FunctionsFileError, prepare_functions
    from .db import open_connection
    from .process import StartupError

    try:  # as the workers' readers are opened: the SQL functions they have (REGEXP, …)
        conn = open_connection(config.dsn.path, read_only=True, create=False,
                               busy_timeout_ms=config.dsn.busy_timeout_ms)
    except apsw.Error as exc:
        raise StartupError(f"--functions-file: cannot open the database: {exc}") from None
    try:
        prepare_functions(conn, functions, config.functions_file)
    except FunctionsFileError as exc:
        raise StartupError(str(exc)) from None
    finally:
        conn.close()
    if functions:
        log.info("serving %d function(s) under /rpc/: %s", len(functions), ", ".join(functions))


def _warn_about_unknown_tables(config) -> None:
    """An allow-list entry that names no table or view is most likely a typo: say so once."""
    import apsw

    from .api.schema import load_schema, missing_tables

    if not config.allow_tables or not os.path.exists(config.dsn.path):
        return
    conn = apsw.Connection(config.dsn.path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        missing = missing_tables(load_schema(conn), config.allow_tables)
    except apsw.Error:
        return  # the workers report an unreadable database
    finally:
        conn.close()
    if missing:
        log.warning("--security-allow-table names tables the database does not have: %s (they "
                    "answer 404 until they exist)", ", ".join(missing))


def _check_auth_keys(config) -> None:
    from .auth.authenticator import Authenticator
    from .process import StartupError

    for flag, path in (("--auth-token-file", config.auth_token_file),
                       ("--auth-rsa-public-key", config.auth_rsa_public_key),
                       ("--auth-jwks-file", config.auth_jwks_file),
                       ("--permissions-file", config.permissions_file)):
        if path and not os.access(path, os.R_OK):
            raise StartupError(f"{flag} {path}: file is missing or unreadable")
    try:
        Authenticator(config).check_keys()
    except (OSError, ValueError) as exc:
        raise StartupError(f"auth key: {exc}") from None


def _replication_for(config, flags):
    """Validate the replication flags and load the config: a `Primary`, not started."""
    from .process import StartupError

    path = flags["replication_config"]
    if flags["replication_force_restore"] and flags["replication_reset_replica"]:
        raise StartupError("--replication-force-restore and --replication-reset-replica exclude "
                           "each other", hint="pick the side that wins: the replica or the local DB")
    if not flags["replication_enabled"]:
        raise StartupError("replication flags are set but --replication-enabled is not",
                           hint="add --replication-enabled (or SQLITEREST_REPLICATION_ENABLED=true)")
    if not path:
        raise StartupError("--replication-enabled needs --replication-config PATH",
                           hint="a Litestream 0.5 YAML file naming the replica of --db-dsn")
    if not os.access(path, os.R_OK):
        raise StartupError(f"--replication-config {path}: file is missing or unreadable")
    from replication.errors import ReplicationError
    from replication.primary import Primary

    try:
        return Primary.from_config_file(
            config.dsn.path, path, force_restore=flags["replication_force_restore"],
            reset_replica=flags["replication_reset_replica"])
    except ReplicationError as exc:
        raise StartupError(exc.message, hint=exc.hint) from None


def _wire_replication(supervisor, replication) -> None:
    """One replicator in the supervisor: restore before the workers open the database, wake it
    on worker commits, answer their position requests, stop the server if it gives up, final
    sync after the workers stopped (design/process-model.md, "Wiring the replicator")."""
    from replication.errors import ReplicationError
    from replication.primary import LINEAGE_ENV

    from .process import StartupError

    def start() -> None:
        try:
            replication.prepare()
            # The HTTP processes hold the lock too: no start proceeds while one may write.
            supervisor.http_server_fds.append(replication.lock_fd)
            replication.start(commit_listener=supervisor.commit_listener,
                              position_board=supervisor.position_board_path)
            if replication.lineage is not None:  # X-Replication-Position of the writes
                supervisor.http_server_env[LINEAGE_ENV] = replication.lineage.id
        except ReplicationError as exc:
            raise StartupError(exc.message, hint=exc.hint) from None

    gave_up = []

    def on_fatal(message: str) -> None:
        gave_up.append(message)
        supervisor.request_stop(message, failed=True)

    def stop() -> bool:
        # After the retry budget is spent a final sync would only spend another
        # shutdown-sync-timeout on the same failure: the exit is non-zero either way and the
        # next start uploads what is pending.
        return replication.stop(0.0 if gave_up else None)

    replication.on_fatal = on_fatal
    supervisor.before_http_start.append(start)
    supervisor.on_commit_signal(replication.notify_commit)
    supervisor.health.add_ready_check("replication", replication.ready)
    supervisor.health.add_status("replication", replication.status)
    supervisor.after_http_stop.append(stop)


def _migrate(common: dict, directory: str, flags: dict) -> int:
    from .config import DSNError, parse_dsn
    from .migrate import MigrationError, Migrator

    if not common["db_dsn"]:
        return _fail("--db-dsn is required", hint="e.g. --db-dsn data.db or SQLITEREST_DB_DSN")
    try:
        dsn = parse_dsn(common["db_dsn"])
    except DSNError as exc:
        return _fail(f"--db-dsn: {exc}", getattr(exc, "hint", None))
    try:
        migrator = Migrator(dsn.path, directory, busy_timeout_ms=dsn.busy_timeout_ms)
        try:
            if flags["force"] is not None:
                migrator.force(flags["force"])
            elif flags["direction"] == "up":
                migrator.up(flags["step"])
            else:
                migrator.down(flags["step"])
        finally:
            migrator.close()
    except MigrationError as exc:
        return _fail(str(exc), exc.hint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
