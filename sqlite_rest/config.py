"""Server configuration: one dataclass, plus go-sqlite3 style DSN parsing.

`ServerConfig` is what `create_app()` takes. The CLI (cli.py) fills it from flags and
`SQLITEREST_*` environment variables; tests build it directly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from replication.primary import WriterHook

#: The DSN's vfs= of a read replica (replication.primary.REPLICA_VFS, spelled here so that
#: parsing a DSN does not import the replication core).
REPLICA_VFS = "litestream"

#: Default request body limit: 8 MiB (8,388,608 bytes). Big enough for bulk inserts of
#: tens of thousands of small rows, small enough that a 10 MB body is refused with 413
#: before it is read.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

#: Default time a statement waits on a locked database before SQLITE_BUSY (milliseconds).
DEFAULT_BUSY_TIMEOUT_MS = 5000


class DSNError(ValueError):
    """The --db-dsn value cannot be understood."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise DSNError(f"DSN parameter {name}={value!r} is not a boolean", hint="use 1/0, true/false")


@dataclass(frozen=True)
class DatabaseDSN:
    """A parsed --db-dsn. Only what the server honours is kept; the rest is ignored."""

    #: Filesystem path of the database file.
    path: str
    #: "rwc" (read-write, create; default), "rw" (must exist) or "ro" (read-only).
    mode: str = "rwc"
    #: SQLite busy timeout in milliseconds (`_busy_timeout` / `_timeout`).
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    #: PRAGMA synchronous for the writer: "NORMAL" (default, safe in WAL mode) or "FULL".
    synchronous: str = "NORMAL"
    #: "litestream": a read replica, read straight from its replica through the VFS
    #: (replication/vfs.py); None: a local file.
    vfs: Optional[str] = None
    #: The VFS's URI parameters (replica_url, poll_interval, cache_size, …), in DSN order.
    vfs_params: tuple = ()

    @property
    def read_only(self) -> bool:
        return self.mode == "ro"

    @property
    def replica(self) -> bool:
        """Read from a replica through the VFS (a replica server)."""
        return self.vfs is not None


def parse_dsn(dsn: str) -> DatabaseDSN:
    """Parse a go-sqlite3 style DSN.

    Accepted: ``data.db``, ``data.db?_journal_mode=WAL&_busy_timeout=5000``,
    ``file:data.db?mode=ro``, ``file:///abs/data.db?mode=rw``. `_journal_mode` is accepted
    and ignored (the server always runs in WAL mode); `_foreign_keys` is accepted and ignored
    (foreign keys are always enforced).
    """
    if not dsn or not dsn.strip():
        raise DSNError("empty --db-dsn", hint="pass a database path, e.g. --db-dsn data.db")
    text = dsn.strip()
    if text.startswith("file:"):
        text = text[len("file:"):]
        if text.startswith("//"):
            text = text[2:]  # file:///abs/path -> /abs/path; file://host is not supported
    path, _, query = text.partition("?")
    if not path:
        raise DSNError(f"DSN {dsn!r} has no database path")
    if path == ":memory:" or "mode=memory" in query:
        raise DSNError(
            "in-memory databases are not supported",
            hint="every worker process and thread opens its own connection; use a file path",
        )
    mode = "rwc"
    busy = DEFAULT_BUSY_TIMEOUT_MS
    synchronous = "NORMAL"
    vfs = None
    vfs_params: list = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "vfs":
            if value != REPLICA_VFS:
                raise DSNError(f"DSN vfs={value!r} is not supported",
                               hint=f"vfs={REPLICA_VFS} reads the database from its replica "
                                    "(a read replica); leave vfs out for a local file")
            vfs = value
        elif not name.startswith("_") and name not in ("mode", "cache"):
            vfs_params.append((name, value))  # for the VFS, which checks them (vfs_config.py)
        if name == "mode":
            if value not in ("ro", "rw", "rwc"):
                raise DSNError(f"DSN mode={value!r} is not supported", hint="use ro, rw or rwc")
            mode = value
        elif name in ("_busy_timeout", "_timeout"):
            try:
                busy = int(value)
            except ValueError:
                raise DSNError(f"DSN {name}={value!r} is not an integer (milliseconds)") from None
            if busy < 0:
                raise DSNError(f"DSN {name}={value!r} must not be negative")
        elif name in ("_synchronous", "_sync"):
            upper = value.upper()
            if upper in ("0", "OFF", "1", "NORMAL"):
                synchronous = "NORMAL"  # OFF is unsafe for replication; NORMAL is the floor
            elif upper in ("2", "FULL", "3", "EXTRA"):
                synchronous = "FULL"
            else:
                raise DSNError(f"DSN {name}={value!r} is not a synchronous level")
        elif name in ("_foreign_keys", "_fk"):
            _parse_bool(name, value)  # validated; foreign keys are always ON
        # _journal_mode, _journal, cache, _txlock, _loc, ...: ignored on purpose.
    if vfs is None:
        return DatabaseDSN(path=path, mode=mode, busy_timeout_ms=busy, synchronous=synchronous)
    if mode != "rwc" and mode != "ro":
        raise DSNError(f"DSN mode={mode} with vfs={vfs}: a read replica is read-only",
                       hint="leave mode out (or mode=ro)")
    if not any(name == "replica_url" for name, _ in vfs_params):
        raise DSNError(f"DSN vfs={vfs} needs replica_url=<the replica's URL>",
                       hint="e.g. file:app.db?vfs=litestream&replica_url=s3://bucket/app")
    return DatabaseDSN(path=path, mode="ro", busy_timeout_ms=busy, synchronous=synchronous,
                       vfs=vfs, vfs_params=tuple(vfs_params))


def _split_tables(values) -> tuple[str, ...]:
    names: list[str] = []
    for value in values or ():
        for name in str(value).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return tuple(names)


@dataclass
class ServerConfig:
    """Everything `create_app()` needs. Defaults match the Go server where it has one."""

    #: --db-dsn: database path or go-sqlite3 style DSN (see `parse_dsn`).
    db_dsn: str
    #: --security-allow-table: tables/views exposed (repeatable, comma-separated). Deny by
    #: default: an empty allow-list exposes nothing.
    allow_tables: tuple[str, ...] = ()
    #: --auth-token-file: file whose raw bytes are the HS256/384/512 secret; None = unused.
    auth_token_file: Optional[str] = None
    #: --auth-rsa-public-key: PEM RSA public key file for RS256/384/512; None = unused.
    auth_rsa_public_key: Optional[str] = None
    #: --auth-jwks-file: JWKS JSON file (RS*, ES*, EdDSA keys chosen by `kid`); None = unused.
    auth_jwks_file: Optional[str] = None
    #: --auth-audience: tokens must name it in `aud` (PostgREST's jwt-aud); None = unchecked.
    auth_audience: Optional[str] = None
    #: --permissions-file: YAML roles and row-level security (auth/policy.py); None = every
    #: valid token may do everything to every allow-listed table.
    permissions_file: Optional[str] = None
    #: --auth-disabled: serve without authentication (local use only; logged loudly).
    auth_disabled: bool = False
    #: Seconds between two checks (stat) of the key files for rotation; 0 = every request.
    auth_key_check_interval: float = 1.0
    #: JWT exp/nbf/iat clock skew tolerance in seconds.
    auth_leeway_seconds: float = 30.0
    #: Largest accepted request body in bytes (default 8 MiB); larger bodies get 413.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Opt-in: refuse PATCH/DELETE without any filter (400, code 21000). Off by default.
    refuse_filterless_writes: bool = False
    #: Largest number of rows a read returns when the client gives no limit; None = unlimited.
    max_rows: Optional[int] = None
    #: --functions-file: YAML file of the functions served under /rpc/<name> (api/functions.py);
    #: None = no functions.
    functions_file: Optional[str] = None
    #: --relationships-file: YAML/JSON foreign keys declared for views (embedding;
    #: api/relationships_file.py); None = only the schema's FOREIGN KEYs.
    relationships_file: Optional[str] = None
    #: Where the primary is, named in the hint of 25006 (write on a read-only database).
    primary_url: Optional[str] = None
    #: Aggregates in select (total.sum(), count()): PostgREST's db-aggregates-enabled.
    aggregates_enabled: bool = False
    #: A read replica: seconds a read with X-Replication-Min-Txid waits for that TXID.
    replica_wait_timeout: float = 2.0
    #: A read replica: send writes to primary_url and answer once they are visible here.
    forward_writes: bool = False
    #: Serve the OpenAPI (Swagger 2.0) description at `/`.
    openapi_enabled: bool = True
    #: Log the --auth-disabled warning when the app is built (off in `serve`'s workers: the
    #: supervisor says it once).
    warn_auth_disabled: bool = True
    #: Create the database file when it is missing (DSN mode rwc). Off with replication: the
    #: primary restores a missing database before the workers start, and a worker must never
    #: make a new, empty one (#9: a dying worker of a killed server did, after the database was
    #: lost, and the next start refused it as a diverged history).
    create_missing_database: bool = True
    #: Called around every write transaction (replication.primary.WriterHook): wakes the
    #: replicator and returns the position sent as X-Replication-Txid.
    writer_hook: Optional["WriterHook"] = None
    #: Hook answering "is the server ready?" (restore done, replication healthy) for /ready.
    ready: Optional[Callable[[], bool]] = None
    #: Hook returning a short replication status dict, included in the /ready body.
    replication_status: Optional[Callable[[], dict]] = None
    #: Parsed form of db_dsn (filled in __post_init__).
    dsn: DatabaseDSN = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dsn = parse_dsn(self.db_dsn)
        if isinstance(self.allow_tables, str):
            self.allow_tables = (self.allow_tables,)
        self.allow_tables = _split_tables(self.allow_tables)
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")

    @property
    def auth_configured(self) -> bool:
        return bool(self.auth_token_file or self.auth_rsa_public_key or self.auth_jwks_file)

    def replace(self, **changes) -> "ServerConfig":
        return dataclasses.replace(self, **changes)
