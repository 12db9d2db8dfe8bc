"""``replicate``: Litestream's daemon command (spec §5.1).

    replicate [-config P] [-no-expand-env] [-exec CMD] [-log-level L]
              [-restore-if-db-not-exists] [-once [-force-snapshot] [-enforce-retention]]
              [DB_PATH REPLICA_URL]

Flags take one dash or two (``-once`` = ``--once``) and ``-flag=value`` or ``-flag value``, as
Go's ``flag`` package does. SIGTERM/SIGINT stop the loops, run a final sync (bounded by
``shutdown-sync-timeout``) and exit 0; a second signal aborts at once.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import apsw

from replication.cmd.flags import (Flag, FlagError, UsageRequested, parse_flags, print_error,
                                   usage_text)
from replication.errors import ReplicationError

log = logging.getLogger("replication.replicate")

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"

#: Exit codes.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

#: ``-log-level`` / ``logging.level`` values → Python levels (Litestream has trace; we map it
#: to DEBUG).
LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: Third-party loggers kept at INFO or above unless ``-log-level trace``.
NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")

FLAGS = (
    Flag("config", "config file path (default $LITESTREAM_CONFIG or /etc/litestream.yml)",
         metavar="PATH"),
    Flag("no-expand-env", "do not expand $ENV variables in the config file", False, True),
    Flag("exec", "run this command (shell words) and stop replicating when it exits",
         metavar="CMD"),
    Flag("log-level", "trace|debug|info|warn|error (overrides the config and $LOG_LEVEL)",
         metavar="LEVEL"),
    Flag("restore-if-db-not-exists", "restore each missing database from its replica first",
         False, True),
    Flag("once", "sync every database once, then exit", False, True),
    Flag("force-snapshot", "with -once: write an L9 snapshot", False, True),
    Flag("enforce-retention", "with -once: apply snapshot retention", False, True),
)

SYNOPSIS = ("replicate [arguments]", "replicate [arguments] DB_PATH REPLICA_URL")


def load(opts) -> object:
    """The ``Config`` the flags describe (file or one ``DB_PATH REPLICA_URL`` pair)."""
    from replication import config as cfgmod

    if opts.args:
        if opts.config:
            raise ReplicationError("cannot specify a replica URL and the -config flag",
                                   hint="use either `replicate -config FILE` or "
                                        "`replicate DB_PATH REPLICA_URL`")
        if len(opts.args) < 2:
            raise ReplicationError("must specify at least one replica URL",
                                   hint="usage: replicate DB_PATH REPLICA_URL")
        if len(opts.args) > 2:
            raise ReplicationError("only one replica URL is allowed per database in 0.5",
                                   hint="usage: replicate DB_PATH REPLICA_URL")
        url = opts.args[1]
        if "://" not in url:
            raise ReplicationError(f"invalid replica URL {url!r}",
                                   hint="e.g. file:///backups/app or s3://bucket/app")
        cfgmod.copy_litestream_credentials()
        replica = cfgmod.ReplicaConfig(url=url, type=url.split("://", 1)[0].lower())
        return cfgmod.Config(dbs=[cfgmod.DBConfig(path=cfgmod.normalize_db_path(opts.args[0]),
                                                  replica=replica)])
    path = opts.config or os.environ.get("LITESTREAM_CONFIG") or DEFAULT_CONFIG_PATH
    return cfgmod.load_config(path, expand_env=not opts.no_expand_env)


def setup_logging(opts, config) -> None:
    name = (opts.log_level or os.environ.get("LOG_LEVEL")
            or getattr(getattr(config, "logging", None), "level", None) or "info")
    level = LOG_LEVELS.get(str(name).lower())
    if level is None:
        raise ReplicationError(f"unknown log level {name!r}",
                               hint="one of " + ", ".join(LOG_LEVELS))
    root = logging.getLogger()
    if not root.handlers:  # on its own: Litestream-like text lines
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.setLevel(level)
    elif opts.log_level or os.environ.get("LOG_LEVEL"):
        # Run by `sqlite-rest`, which set the format and level (--log-level, as for serve,
        # whose config's `logging:` is not used either): only an explicit -log-level wins.
        root.setLevel(level)
    if str(name).lower() != "trace":
        # The AWS SDK's debug output (every header of every request) is Litestream's
        # LITESTREAM_S3_DEBUG, i.e. trace-level; at debug it would swamp our own lines.
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(max(level, logging.INFO))


def serve_metrics(addr: str):
    """Serve ``/metrics`` (prometheus_client default registry) on ``addr`` (``host:port``;
    an empty host binds localhost, as the spec describes). Returns the server."""
    from prometheus_client import start_http_server

    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ReplicationError(f"invalid addr {addr!r}: a port is required",
                               hint='e.g. `addr: ":9090"` or `addr: "127.0.0.1:9090"`')
    host = host.strip("[]") or "127.0.0.1"
    server, _thread = start_http_server(int(port), addr=host)
    log.info("serving metrics on http://%s:%s/metrics", host, port)
    return server


def take_primaries(config, *, restore_if_missing: bool) -> list:
    """One Primary per DB (replication/primary.py): its lock, held until the command exits, so
    no server or other ``replicate`` writes the DB meanwhile; then the restore of a missing DB
    (``-restore-if-db-not-exists``), with the local L0 files the replica lacks uploaded first.
    No divergence guard and no retry budget: Litestream's ``replicate`` has neither."""
    from replication.primary import Primary

    primaries: list = []
    try:
        for dbc in config.dbs:
            primary = Primary(config, dbc, guard_divergence=False, retry_budget=None)
            primary.prepare(restore_if_missing=restore_if_missing or bool(
                getattr(dbc, "restore_if_db_not_exists", False)), create_if_no_backup=False)
            primaries.append(primary)
    except BaseException:
        release(primaries)
        raise
    return primaries


def release(primaries: list) -> None:
    for primary in primaries:
        primary.release_lock()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        values, args = parse_flags(FLAGS, argv)
    except UsageRequested:
        print(usage_text("Starts a server to monitor & replicate databases.", SYNOPSIS, FLAGS))
        return EXIT_OK
    except FlagError as exc:
        print_error(exc)
        return EXIT_USAGE
    opts = SimpleNamespace(args=args, **values)
    # Handlers go in first: a SIGTERM during start-up must still end in a final sync.
    stopping = threading.Event()
    previous = (install_signal_handlers(stopping)
                if threading.current_thread() is threading.main_thread() else {})
    try:
        return _main(opts, stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def install_signal_handlers(stopping: threading.Event) -> dict:
    """SIGTERM/SIGINT set ``stopping`` (final sync follows); a second one aborts at once."""
    count = [0]

    def on_signal(signum, _frame):
        count[0] += 1
        if count[0] > 1:
            log.warning("second signal: aborting without a final sync")
            os._exit(EXIT_ERROR)
        log.info("signal %s received, stopping", signal.Signals(signum).name)
        stopping.set()

    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _main(opts, stopping: threading.Event) -> int:
    try:
        config = load(opts)
        setup_logging(opts, config)
        if (opts.force_snapshot or opts.enforce_retention) and not opts.once:
            raise ReplicationError("-force-snapshot and -enforce-retention need -once",
                                   hint="e.g. `replicate -once -force-snapshot DB URL`")
        if not getattr(config, "dbs", None):
            raise ReplicationError("no databases specified in configuration",
                                   hint="add a `dbs:` list to the config file")
        primaries = take_primaries(config, restore_if_missing=opts.restore_if_db_not_exists)
        try:
            if opts.once:
                return run_once(config, force_snapshot=opts.force_snapshot,
                                enforce_retention=opts.enforce_retention)
            return run(config, exec_cmd=opts.exec or getattr(config, "exec", None) or None,
                       done=stopping)
        finally:
            release(primaries)
    except ReplicationError as exc:
        print_error(exc)
        return EXIT_ERROR
    except (OSError, apsw.Error) as exc:  # a DB or disk problem: one line, not a traceback
        print_error(ReplicationError(f"{type(exc).__name__}: {exc}",
                                     hint="check the database path and its directory's permissions"))
        return EXIT_ERROR


def run_once(config, *, force_snapshot: bool = False, enforce_retention: bool = False) -> int:
    from replication.store import Store

    store = Store(config, retry_budget=None)
    store.open(monitor=False)
    try:
        store.sync_all()
        for db in store.dbs:
            if force_snapshot:
                store.snapshot_db(db, force=True)
            if enforce_retention:
                store.enforce_snapshot_retention(db)
    finally:
        ok = store.close()
    return EXIT_OK if ok else EXIT_ERROR


def run(config, *, exec_cmd: str | None = None, done: threading.Event | None = None) -> int:
    """The daemon: replicate until ``done`` is set (by a signal), a fatal replica error or
    ``exec_cmd`` exits."""
    from replication.store import Store

    done = done or threading.Event()
    outcome = {"code": EXIT_OK}

    def on_fatal(path: str, exc: BaseException) -> None:
        log.critical("%s: %s", path, exc)
        outcome["code"] = EXIT_ERROR
        done.set()

    # Like Litestream, `replicate` retries a failing replica forever (a broken chain still
    # stops it); `sqlite-rest serve` passes a retry budget instead.
    store = Store(config, on_fatal=on_fatal, retry_budget=None)
    metrics_server = None
    child = None
    try:
        store.open()
        addr = getattr(config, "addr", "") or ""
        if addr:
            metrics_server = serve_metrics(addr)
        for db in store.dbs:
            log.info("replicating %s to %s", db.path, store.replicas[db.path].client.type)
        if exec_cmd:
            child = subprocess.Popen(shlex.split(exec_cmd))

            def wait_child():
                outcome["code"] = child.wait()
                log.info("exec process exited with code %d", outcome["code"])
                done.set()
            threading.Thread(target=wait_child, name="exec", daemon=True).start()
        while not done.wait(0.5):
            pass
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        ok = store.close()
        if metrics_server is not None:
            metrics_server.shutdown()
    if not ok and outcome["code"] == EXIT_OK:
        return EXIT_ERROR
    return outcome["code"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
