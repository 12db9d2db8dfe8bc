"""``litestream.yml`` loading, as Litestream 0.5 does it (§4).

* ``$VAR`` / ``${VAR}`` are expanded over the **raw text** before YAML parsing, with Go's
  ``os.Expand`` rules and quirks (``$PID`` is the process id); ``expand_env=False`` turns it off.
* YAML is loaded non-strictly, like ``gopkg.in/yaml.v2`` — but an unknown key is not silently
  dropped: it is **warned about** with file, line and dotted key (a typo such as
  ``sync-intervall`` would otherwise quietly use the default).
* Durations use Go's syntax (``1h30m``, ``500ms``, ``1.5s``; no ``d``); byte sizes use
  go-humanize's (``5MB`` = 5·10⁶, ``5MiB`` = 5·2²⁰).
* Defaults come first and the YAML overlays them; ``levels:`` replaces the default list.
* Settings of ``replica:`` may also sit at the top level; every replica inherits the ones it
  does not set itself.
* An invalid value raises :class:`ConfigError` naming the file, the key as a dotted path
  (``dbs[0].replica.sync-interval``) and the value.

Durations are stored as float **seconds**, sizes as int **bytes**.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .errors import ConfigError, ReplicationError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"
SNAPSHOT_LEVEL = 9
MAX_COMPACTION_LEVELS = 8


def default_config_path() -> str:
    """``$LITESTREAM_CONFIG`` or ``/etc/litestream.yml`` (Litestream's lookup)."""
    return os.environ.get("LITESTREAM_CONFIG") or DEFAULT_CONFIG_PATH


# --- env expansion (Go os.Expand) --------------------------------------------------------------

_SHELL_SPECIAL = set("*#$@!?-0123456789")


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isascii() and c.isalnum()


def _shell_name(s: str) -> tuple[str, int]:
    """Go's ``getShellName``: (name, bytes consumed after the ``$``)."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SHELL_SPECIAL and s[2] == "}":
            return s[1], 3
        end = s.find("}", 1)
        if end == 1:
            return "", 2          # "${}": bad syntax, eaten
        if end < 0:
            return "", 1          # unterminated "${": eaten
        return s[1:end], end + 1
    if s[0] in _SHELL_SPECIAL:
        return s[0], 1
    i = 0
    while i < len(s) and _is_alnum(s[i]):
        i += 1
    return s[:i], i


def expand(text: str, mapping: Callable[[str], str]) -> str:
    """Go's ``os.Expand``, quirks included (``$$``, ``$1``, ``$*`` → ``mapping`` of a special
    name; a ``$`` before a non-name character stays; an unterminated ``${`` is swallowed)."""
    out: list[str] = []
    i = j = 0
    n = len(text)
    while j < n:
        if text[j] == "$" and j + 1 < n:
            out.append(text[i:j])
            name, width = _shell_name(text[j + 1:])
            if name == "" and width > 0:
                pass                   # invalid syntax: eat it
            elif name == "":
                out.append("$")        # "$" not followed by a name: keep it
            else:
                out.append(mapping(name))
            j += width
            i = j + 1
        j += 1
    if not out:
        return text
    out.append(text[i:])
    return "".join(out)


def expand_env(text: str) -> str:
    """Litestream's ``ExpandEnv``: environment values, ``$PID`` = our process id."""
    return expand(text, lambda name: str(os.getpid()) if name == "PID" else os.environ.get(name, ""))


_expand_env_text = expand_env  # parse_config's keyword argument shadows the name


# --- scalar parsers (Go semantics) -------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([a-zµμ]+)")


def parse_duration(value: str) -> float:
    """Go's ``time.ParseDuration`` in seconds: ``300ms``, ``-1.5h``, ``2h45m``; no ``d`` unit."""
    s = value.strip() if isinstance(value, str) else value
    if not isinstance(s, str) or not s:
        raise ValueError(f"invalid duration {value!r}")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {value!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or not (m.group(1) or m.group(2)):
            raise ValueError(f"invalid duration {value!r}")
        unit = _DURATION_UNITS.get(m.group(3))
        if unit is None:
            raise ValueError(f"unknown unit {m.group(3)!r} in duration {value!r} "
                             "(valid: ns, us, ms, s, m, h; there is no 'd')")
        number = float(f"{m.group(1) or '0'}.{m.group(2) or '0'}")
        total += number * unit
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Go's ``Duration.String`` for whole milliseconds and up (``1h0m0s``, ``500ms``, ``1.5s``)."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    ns = round(abs(seconds) * 1e9)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    h, rem = divmod(ns, 3_600_000_000_000)
    m, rem = divmod(rem, 60_000_000_000)
    s = _trim(rem / 1e9) + "s"
    return sign + (f"{h}h{m}m" if h else f"{m}m" if m else "") + s


def _trim(x: float) -> str:
    return f"{x:.9f}".rstrip("0").rstrip(".")


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
    "p": 10**15, "pb": 10**15, "pi": 2**50, "pib": 2**50,
    "e": 10**18, "eb": 10**18, "ei": 2**60, "eib": 2**60,
}


def parse_byte_size(value) -> int:
    """go-humanize ``ParseBytes``: ``5MB`` = 5 000 000, ``5MiB`` = 5 242 880, ``1,024``, ``1.5 GB``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid byte size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative byte size {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid byte size {value!r}")
    m = re.match(r"\s*([\d.,]*)", value)
    number = m.group(1).replace(",", "")
    unit = value[m.end():].strip().lower()
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"invalid byte size {value!r}") from None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unhandled size name {unit!r} in {value!r} (e.g. 5MB, 5MiB)")
    result = amount * _SIZE_UNITS[unit]
    if not math.isfinite(result) or result >= 2**64:
        raise ValueError(f"byte size {value!r} too large")
    return int(result)


def parse_bool(value) -> bool:
    """Go's ``strconv.ParseBool``: 1 t T TRUE true True / 0 f F FALSE false False."""
    if isinstance(value, bool):
        return value
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"invalid boolean {value!r}")


# --- the config model --------------------------------------------------------------------------

@dataclass
class ReplicaConfig:
    """One ``replica:`` section (after inheriting top-level replica settings)."""

    type: str = "file"                    # file | s3 (| gs abs sftp webdav nats oss: not implemented)
    url: str | None = None                # e.g. s3://bucket/path?endpoint=…; sets type from its scheme
    path: str | None = None               # directory (file) or key prefix (s3)
    sync_interval: float = 1.0            # seconds, default 1s; > 0
    max_sync_ltx_files: int = 256         # files per upload round, 0 = unlimited
    auto_recover: bool = False            # reset local state and re-snapshot on a broken chain
    validation_interval: float | None = None  # seconds; parsed, unused at replica level (as Litestream)
    retry_budget: float | None = None     # seconds (sqlite-rest extension); None = the command's default
    ready_max_lag: float | None = None    # seconds (sqlite-rest extension); None = DEFAULT_READY_MAX_LAG
    # --- s3 -----------------------------------------------------------------------------------
    access_key_id: str | None = None      # default: AWS_ACCESS_KEY_ID / LITESTREAM_ACCESS_KEY_ID
    secret_access_key: str | None = None  # default: AWS_SECRET_ACCESS_KEY / LITESTREAM_SECRET_ACCESS_KEY
    bucket: str | None = None
    region: str | None = None             # default us-east-1 when an endpoint is set
    endpoint: str | None = None           # default $LITESTREAM_S3_ENDPOINT, else AWS
    force_path_style: bool | None = None  # default true when an endpoint is set
    skip_verify: bool | None = None       # default false (verify TLS)
    sign_payload: bool | None = None      # default true
    require_content_md5: bool | None = None  # default true
    storage_class: str | None = None
    part_size: int | None = None          # bytes, default 5 MiB (multipart above)
    concurrency: int | None = None        # parallel multipart parts, default 5
    sse_customer_algorithm: str | None = None
    sse_customer_key: str | None = None
    sse_customer_key_path: str | None = None
    sse_kms_key_id: str | None = None
    # --- keys of backends this project does not implement (kept, not warned about) -------------
    other: dict[str, Any] = field(default_factory=dict)
    where: str = "replica"                # dotted config path, for error messages


@dataclass
class DBConfig:
    """One entry of ``dbs:``."""

    path: str | None = None               # absolute; ~ expanded; sqlite:// prefix stripped
    dir: str | None = None                # directory mode (scan for SQLite files); needs pattern
    pattern: str | None = None
    recursive: bool = False
    watch: bool = False
    meta_path: str | None = None          # default: <dir>/.<name>-litestream
    meta_dir: str | None = None           # directory mode only
    monitor_interval: float = 1.0         # seconds, default 1s: WAL poll interval
    checkpoint_interval: float = 60.0     # seconds, default 1m: time-based PASSIVE checkpoint
    busy_timeout: float = 1.0             # seconds, default 1s
    min_checkpoint_page_count: int = 1000  # WAL pages, default 1000: PASSIVE checkpoint threshold
    truncate_page_n: int = 121359         # WAL pages, default 121359: emergency TRUNCATE threshold
    max_sync_wal_bytes: int = 64 * 1024 * 1024  # bytes, default 64 MiB per sync
    restore_if_db_not_exists: bool = False
    replica: ReplicaConfig | None = None  # 0.5 allows exactly one replica
    where: str = "dbs[?]"


@dataclass
class LoggingConfig:
    level: str = "info"                   # trace | debug | info | warn | error; $LOG_LEVEL wins
    type: str = "text"                    # text | json | pretty
    stderr: bool = False                  # default: log to stdout
    source: bool = False                  # add source file:line


@dataclass
class SocketConfig:
    enabled: bool = False
    path: str = "/var/run/litestream.sock"
    permissions: int = 0o600


@dataclass
class Config:
    """A whole litestream.yml. Durations in seconds, sizes in bytes."""

    dbs: list[DBConfig] = field(default_factory=list)
    addr: str = ""                        # Prometheus /metrics address, e.g. ":9090"; "" = off
    levels: list[float] = field(default_factory=lambda: [30.0, 300.0, 3600.0])  # L1..Ln intervals, s
    snapshot_interval: float = 86400.0    # seconds, default 24h: L9 snapshot cadence
    snapshot_retention: float = 86400.0   # seconds, default 24h
    l0_retention: float = 300.0           # seconds, default 5m, kept after L1 covers it; 0 disables
    l0_retention_check_interval: float = 15.0  # seconds, default 15s
    retention_enabled: bool = True        # false = never delete remote files
    verify_compaction: bool = False
    validation_interval: float | None = None   # seconds; None = off
    shutdown_sync_timeout: float = 30.0   # seconds, default 30s
    shutdown_sync_interval: float = 0.5   # seconds, default 500ms
    heartbeat_url: str | None = None
    heartbeat_interval: float = 300.0     # seconds, default 5m, minimum 1m
    exec: str | None = None               # subprocess to run; we exit when it exits
    mcp_addr: str | None = None
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    filename: str | None = None           # the file it was loaded from

    def db_for_path(self, path: str) -> DBConfig | None:
        """The ``dbs`` entry for a database file (paths compared after normalisation)."""
        wanted = os.path.realpath(normalize_db_path(path))
        for db in self.dbs:
            if db.path and (db.path == wanted or os.path.realpath(db.path) == wanted):
                return db
        return None


def normalize_db_path(path: str) -> str:
    """Strip ``sqlite://``/``sqlite3://``, expand ``~``, make absolute (Litestream's rules)."""
    for prefix in ("sqlite3://", "sqlite://"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    return os.path.abspath(os.path.expanduser(path))


# --- schema: YAML key → (field, parser) --------------------------------------------------------

def _duration(v) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 1s, 500ms, 5m")
    if isinstance(v, int):
        return v / 1e9           # yaml.v2 decodes a bare integer into a Duration as nanoseconds
    if isinstance(v, float):
        raise ValueError("expected a duration such as 1s, 500ms, 5m")
    return parse_duration(v)


def _string(v) -> str:
    if isinstance(v, (dict, list)) or v is None:
        raise ValueError("expected a string")
    return v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("expected an integer")
    return v


def _bool(v) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _octal(v) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return int(v, 8)
    raise ValueError("expected permissions such as 0600")


#: Replica keys (also valid at top level as defaults), field name, parser.
REPLICA_SETTINGS: dict[str, Callable] = {
    "sync-interval": _duration, "max-sync-ltx-files": _int, "auto-recover": _bool,
    "validation-interval": _duration,
    "access-key-id": _string, "secret-access-key": _string, "bucket": _string, "region": _string,
    "endpoint": _string, "force-path-style": _bool, "skip-verify": _bool, "sign-payload": _bool,
    "require-content-md5": _bool, "storage-class": _string, "part-size": parse_byte_size,
    "concurrency": _int, "sse-customer-algorithm": _string, "sse-customer-key": _string,
    "sse-customer-key-path": _string, "sse-kms-key-id": _string,
    # sqlite-rest extension (Litestream ignores unknown keys): seconds of continuous replica
    # failure after which `sqlite-rest serve`/`replicate` stop with a non-zero exit.
    "retry-budget": _duration,
    # sqlite-rest extension: a server whose replica lags more than this is not ready (/ready 503).
    "ready-max-lag": _duration,
}
#: Keys only a ``replica:`` section has (not inherited from the top level).
REPLICA_OWN_KEYS: dict[str, Callable] = {"type": _string, "url": _string, "path": _string}
#: Keys of backends we do not implement: accepted and kept in ``ReplicaConfig.other``.
OTHER_BACKEND_KEYS = frozenset({
    "account-name", "account-key", "sas-token",                                 # abs
    "host", "user", "password", "key-path", "host-key", "concurrent-writes",     # sftp
    "webdav-url", "webdav-username", "webdav-password",                          # webdav
    "jwt", "seed", "creds", "nkey", "username", "token", "tls", "root-cas",      # nats
    "client-cert", "client-key", "max-reconnects", "reconnect-wait", "timeout",
})
#: Keys Litestream 0.5 accepts but ignores (deprecated or v0.3-era).
IGNORED_REPLICA_KEYS = frozenset({"name", "retention", "retention-check-interval", "snapshot-interval"})

DB_SETTINGS: dict[str, Callable] = {
    "path": _string, "dir": _string, "pattern": _string, "recursive": _bool, "watch": _bool,
    "meta-path": _string, "meta-dir": _string, "monitor-interval": _duration,
    "checkpoint-interval": _duration, "busy-timeout": _duration,
    "min-checkpoint-page-count": _int, "truncate-page-n": _int,
    "max-sync-wal-bytes": parse_byte_size, "restore-if-db-not-exists": _bool,
}

TOP_SETTINGS: dict[str, Callable] = {
    "addr": _string, "l0-retention": _duration, "l0-retention-check-interval": _duration,
    "verify-compaction": _bool, "shutdown-sync-timeout": _duration,
    "shutdown-sync-interval": _duration, "heartbeat-url": _string,
    "heartbeat-interval": _duration, "exec": _string, "mcp-addr": _string,
}
LOGGING_SETTINGS = {"level": _string, "type": _string, "stderr": _bool, "source": _bool}
SOCKET_SETTINGS = {"enabled": _bool, "path": _string, "permissions": _octal}
#: Replica types Litestream 0.5 knows (this project implements file and s3).
REPLICA_TYPES = ("file", "s3", "gs", "abs", "sftp", "webdav", "nats", "oss")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")
LOG_TYPES = ("text", "json", "pretty")


def _field(key: str) -> str:
    return key.replace("-", "_")


# --- parsing -----------------------------------------------------------------------------------

class _Parser:
    def __init__(self, filename: str, lines: dict[str, int], raw_text: str = ""):
        self.filename = filename
        self.lines = lines
        self.raw_lines = raw_text.splitlines()  # before env expansion, for unset variables

    def where(self, dotted: str) -> str:
        line = self.lines.get(dotted)
        return f"{self.filename}:{line}" if line else self.filename

    def error(self, dotted: str, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.where(dotted)}: {dotted}: {message}", hint=hint)

    def value(self, dotted: str, raw, parser: Callable):
        try:
            return parser(raw)
        except (ValueError, TypeError, ReplicationError) as e:
            reason = getattr(e, "message", None) or str(e)
            unset = self.unset_variables(dotted) if raw in (None, "") else []
            if unset:  # `${AWS_ACCESS_KEY_ID}` expanded to nothing: say so, not "None"
                names = ", ".join(f"${{{n}}}" for n in unset)
                raise self.error(dotted, f"{names} is not set in the environment",
                                 hint=f"export {unset[0]}=… before starting, or put the value "
                                      f"in the file") from None
            raise self.error(dotted, f"invalid value {raw!r}: {reason}") from None

    def unset_variables(self, dotted: str) -> list[str]:
        """Environment variables named on ``dotted``'s line that are unset (or empty)."""
        line = self.lines.get(dotted)
        if not line or line > len(self.raw_lines):
            return []
        unset: list[str] = []

        def note(name: str) -> str:
            if name != "PID" and not os.environ.get(name):
                unset.append(name)
            return ""

        expand(self.raw_lines[line - 1], note)
        return unset

    def unknown(self, dotted: str, note: str = "unknown key, ignored") -> None:
        log.warning("%s: %s: %s", self.where(dotted), dotted, note)

    def mapping(self, dotted: str, raw) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(dotted, f"expected a mapping, got {type(raw).__name__} {raw!r}")
        return raw


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _compose_lines(node, prefix: str = "", lines: dict[str, int] | None = None) -> dict[str, int]:
    """Dotted key path → 1-based line of the key, from the YAML node tree."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                dotted = _join(prefix, key_node.value)
                lines[dotted] = key_node.start_mark.line + 1
                _compose_lines(value_node, dotted, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            dotted = f"{prefix}[{i}]"
            lines[dotted] = item.start_mark.line + 1
            _compose_lines(item, dotted, lines)
    return lines


def parse_config(text: str, *, filename: str = "<config>", expand_env: bool = True) -> Config:
    """Parse the text of a litestream.yml (see the module doc)."""
    raw_text = text if expand_env else ""
    if expand_env:
        text = _expand_env_text(text)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: malformed YAML: {problem}",
                          hint="check indentation and quoting (quote values containing ': ' or '#')") from None
    p = _Parser(filename, _compose_lines(node) if node is not None else {}, raw_text)
    data = p.mapping("", data) if data is not None else {}
    cfg = Config(filename=filename)

    global_replica: dict[str, Any] = {}
    for key, raw in data.items():
        key = str(key)
        if key == "dbs":
            continue
        if key in TOP_SETTINGS:
            setattr(cfg, _field(key), p.value(key, raw, TOP_SETTINGS[key]))
        elif key in REPLICA_SETTINGS:
            global_replica[key] = raw
        elif key == "levels":
            cfg.levels = _parse_levels(p, raw)
        elif key == "snapshot":
            interval, retention = _parse_snapshot(p, "snapshot", raw)
            cfg.snapshot_interval = interval if interval is not None else cfg.snapshot_interval
            cfg.snapshot_retention = retention if retention is not None else cfg.snapshot_retention
        elif key == "retention":
            for k, v in p.mapping(key, raw).items():
                if k == "enabled":
                    cfg.retention_enabled = p.value("retention.enabled", v, _bool)
                else:
                    p.unknown(f"retention.{k}")
        elif key == "validation":
            for k, v in p.mapping(key, raw).items():
                if k == "interval":
                    cfg.validation_interval = p.value("validation.interval", v, _duration)
                else:
                    p.unknown(f"validation.{k}")
        elif key == "logging":
            for k, v in p.mapping(key, raw).items():
                if k in LOGGING_SETTINGS:
                    setattr(cfg.logging, k, p.value(f"logging.{k}", v, LOGGING_SETTINGS[k]))
                else:
                    p.unknown(f"logging.{k}")
        elif key == "socket":
            for k, v in p.mapping(key, raw).items():
                if k in SOCKET_SETTINGS:
                    setattr(cfg.socket, k, p.value(f"socket.{k}", v, SOCKET_SETTINGS[k]))
                else:
                    p.unknown(f"socket.{k}")
        elif key == "age":
            raise _age_error(p, "age")
        else:
            p.unknown(key)

    # Validate the global replica settings once, with their own dotted names.
    for key, raw in global_replica.items():
        p.value(key, raw, REPLICA_SETTINGS[key])

    dbs_raw = data.get("dbs")
    if dbs_raw is not None and not isinstance(dbs_raw, list):
        raise p.error("dbs", f"expected a list, got {type(dbs_raw).__name__}")
    per_db_snapshot: dict[str, tuple[str, float]] = {}
    for i, raw in enumerate(dbs_raw or ()):
        cfg.dbs.append(_parse_db(p, f"dbs[{i}]", raw, global_replica, per_db_snapshot))
    if "interval" in per_db_snapshot:
        cfg.snapshot_interval = per_db_snapshot["interval"][1]
    if "retention" in per_db_snapshot:
        cfg.snapshot_retention = per_db_snapshot["retention"][1]

    _validate(p, cfg)
    level = os.environ.get("LOG_LEVEL")
    if level:
        cfg.logging.level = level.lower()
    return cfg


def _age_error(p: _Parser, dotted: str) -> ConfigError:
    return p.error(dotted, "age encryption is not supported in Litestream 0.5",
                   hint="remove the age section; use server-side encryption (sse-*) or an encrypted disk")


def _parse_levels(p: _Parser, raw) -> list[float]:
    if not isinstance(raw, list):
        raise p.error("levels", f"expected a list of {{interval: DURATION}}, got {raw!r}")
    intervals = []
    for i, item in enumerate(raw):
        dotted = f"levels[{i}]"
        item = p.mapping(dotted, item)
        if "interval" not in item:
            raise p.error(dotted, "missing interval", hint="e.g. levels: [{interval: 30s}, {interval: 5m}]")
        for k in item:
            if k != "interval":
                p.unknown(f"{dotted}.{k}")
        interval = p.value(f"{dotted}.interval", item["interval"], _duration)
        if interval <= 0:
            raise p.error(f"{dotted}.interval", f"invalid value {item['interval']!r}: must be greater than zero")
        intervals.append(interval)
    if len(intervals) > MAX_COMPACTION_LEVELS:
        raise p.error("levels", f"{len(intervals)} levels configured; at most {MAX_COMPACTION_LEVELS} "
                                "(L9 is reserved for snapshots)")
    return intervals


def _parse_snapshot(p: _Parser, dotted: str, raw) -> tuple[float | None, float | None]:
    interval = retention = None
    for k, v in p.mapping(dotted, raw).items():
        if k == "interval":
            interval = p.value(f"{dotted}.interval", v, _duration)
            if interval <= 0:
                raise p.error(f"{dotted}.interval", f"invalid value {v!r}: must be greater than zero")
        elif k == "retention":
            retention = p.value(f"{dotted}.retention", v, _duration)
            if retention <= 0:
                raise p.error(f"{dotted}.retention", f"invalid value {v!r}: must be greater than zero")
        else:
            p.unknown(f"{dotted}.{k}")
    return interval, retention


def _parse_db(p: _Parser, dotted: str, raw, global_replica: dict, per_db_snapshot: dict) -> DBConfig:
    raw = p.mapping(dotted, raw)
    db = DBConfig(where=dotted)
    replica_raw = None
    replica_key = None
    for key, value in raw.items():
        key = str(key)
        here = f"{dotted}.{key}"
        if key in DB_SETTINGS:
            setattr(db, _field(key), p.value(here, value, DB_SETTINGS[key]))
        elif key == "replica":
            replica_raw, replica_key = value, here
        elif key == "replicas":
            continue
        elif key == "snapshot":
            interval, retention = _parse_snapshot(p, here, value)
            for name, v in (("interval", interval), ("retention", retention)):
                if v is None:
                    continue
                if name in per_db_snapshot and per_db_snapshot[name][1] != v:
                    raise p.error(f"{here}.{name}",
                                  f"{format_duration(v)} differs from {per_db_snapshot[name][0]} "
                                  f"({format_duration(per_db_snapshot[name][1])})",
                                  hint="snapshot settings act store-wide; use one value for every database")
                per_db_snapshot[name] = (f"{here}.{name}", v)
        elif key == "age":
            raise _age_error(p, here)
        else:
            p.unknown(here)
    if "replicas" in raw:
        if replica_raw is not None:
            raise p.error(f"{dotted}.replicas", "cannot use both 'replica' and 'replicas'",
                          hint="use the single 'replica:' mapping ('replicas' is deprecated)")
        replicas = raw["replicas"]
        if not isinstance(replicas, list):
            raise p.error(f"{dotted}.replicas", f"expected a list, got {replicas!r}")
        if len(replicas) > 1:
            raise p.error(f"{dotted}.replicas", f"{len(replicas)} replicas configured; "
                                                "Litestream 0.5 supports exactly one per database",
                          hint="keep one replica (use 'replica:'), or run one process per destination")
        if replicas:
            replica_raw, replica_key = replicas[0], f"{dotted}.replicas[0]"

    if db.path is not None:
        if not db.path:
            raise p.error(f"{dotted}.path", "empty database path")
        db.path = normalize_db_path(db.path)
    if db.dir is not None:
        db.dir = normalize_db_path(db.dir)
    if (db.path is None) == (db.dir is None):
        raise p.error(dotted, "exactly one of 'path' or 'dir' is required")
    if db.dir is not None and not db.pattern:
        raise p.error(f"{dotted}.pattern", "required with 'dir'", hint="e.g. pattern: '*.db'")
    if db.meta_path and db.meta_dir:
        raise p.error(f"{dotted}.meta-dir", "'meta-path' and 'meta-dir' are mutually exclusive")
    if db.meta_path:
        db.meta_path = os.path.abspath(os.path.expanduser(db.meta_path))
    for name in ("monitor-interval", "checkpoint-interval", "busy-timeout"):
        if getattr(db, _field(name)) < 0:
            raise p.error(f"{dotted}.{name}", "must not be negative")
    for name in ("min-checkpoint-page-count", "truncate-page-n"):
        if getattr(db, _field(name)) < 0:
            raise p.error(f"{dotted}.{name}", "must not be negative")
    if replica_raw is not None:
        db.replica = _parse_replica(p, replica_key, replica_raw, global_replica)
    return db


def _parse_replica(p: _Parser, dotted: str, raw, global_replica: dict) -> ReplicaConfig:
    raw = p.mapping(dotted, raw)
    rc = ReplicaConfig(where=dotted)
    merged: dict[str, tuple[str, Any]] = {k: (k, v) for k, v in global_replica.items()}
    for key, value in raw.items():
        key = str(key)
        here = f"{dotted}.{key}"
        if key in REPLICA_SETTINGS or key in REPLICA_OWN_KEYS:
            merged[key] = (here, value)
        elif key in OTHER_BACKEND_KEYS:
            rc.other[key] = value
        elif key in IGNORED_REPLICA_KEYS:
            p.unknown(here, "has no effect in Litestream 0.5, ignored")
        elif key == "age":
            raise _age_error(p, here)
        else:
            p.unknown(here)
    for key, (here, value) in merged.items():
        parser = REPLICA_SETTINGS.get(key) or REPLICA_OWN_KEYS[key]
        setattr(rc, _field(key), p.value(here, value, parser))

    if rc.sync_interval <= 0:
        raise p.error(merged["sync-interval"][0], f"invalid value {merged['sync-interval'][1]!r}: "
                                                  "must be greater than zero")
    if rc.max_sync_ltx_files < 0:
        raise p.error(merged["max-sync-ltx-files"][0], "must not be negative (0 = unlimited)")
    if rc.url:
        if "://" not in rc.url:
            raise p.error(f"{dotted}.url", f"invalid value {rc.url!r}: not a URL",
                          hint="e.g. s3://bucket/path or file:///abs/path")
        if "path" in raw or "bucket" in raw:
            raise p.error(f"{dotted}.url", "cannot combine 'url' with 'path' or 'bucket'",
                          hint="put the bucket and path in the URL, or drop 'url'")
        rc.type = rc.url.split("://", 1)[0].lower()
        if rc.type == "webdavs":
            rc.type = "webdav"
        if rc.type not in REPLICA_TYPES:
            raise p.error(f"{dotted}.url", f"invalid value {rc.url!r}: unknown scheme {rc.type!r}",
                          hint=f"one of {', '.join(t + '://' for t in REPLICA_TYPES)}")
    else:
        rc.type = (rc.type or "file").lower()
        if rc.type not in REPLICA_TYPES:
            raise p.error(merged["type"][0], f"invalid value {rc.type!r}: unknown replica type",
                          hint=f"one of {', '.join(REPLICA_TYPES)}")
        if rc.type == "s3" and not rc.bucket:
            raise p.error(f"{dotted}.bucket", "required for an s3 replica",
                          hint="set 'bucket' and 'path', or use 'url: s3://BUCKET/PATH'")
        if rc.path and "://" in rc.path:
            raise p.error(f"{dotted}.path", f"invalid value {rc.path!r}: a path, not a URL",
                          hint="use 'url:' for replica URLs")
        if rc.type == "file":
            if not rc.path:
                raise p.error(f"{dotted}.path", "required for a file replica")
            rc.path = os.path.abspath(os.path.expanduser(rc.path))
    return rc


def _validate(p: _Parser, cfg: Config) -> None:
    if cfg.l0_retention < 0:
        raise p.error("l0-retention", f"invalid value {format_duration(cfg.l0_retention)}: must not be negative",
                      hint="0 disables L0 retention")
    if cfg.heartbeat_url and cfg.heartbeat_interval < 60:
        raise p.error("heartbeat-interval", f"{format_duration(cfg.heartbeat_interval)} is below the minimum of 1m")
    if cfg.logging.level.lower() not in LOG_LEVELS:
        raise p.error("logging.level", f"invalid value {cfg.logging.level!r}",
                      hint=f"one of {', '.join(LOG_LEVELS)}")
    cfg.logging.level = cfg.logging.level.lower()
    if cfg.logging.type.lower() not in LOG_TYPES:
        raise p.error("logging.type", f"invalid value {cfg.logging.type!r}", hint=f"one of {', '.join(LOG_TYPES)}")
    for name in ("shutdown-sync-timeout", "shutdown-sync-interval", "l0-retention-check-interval"):
        if getattr(cfg, _field(name)) < 0:
            raise p.error(name, "must not be negative")
    if cfg.addr and ":" not in cfg.addr:
        raise p.error("addr", f"invalid value {cfg.addr!r}: a port is required", hint="e.g. addr: ':9090'")


def load_config(path: str | os.PathLike | None = None, *, expand_env: bool = True) -> Config:
    """Read and parse a litestream.yml (default: ``$LITESTREAM_CONFIG`` or /etc/litestream.yml).

    Also copies ``LITESTREAM_ACCESS_KEY_ID``/``LITESTREAM_SECRET_ACCESS_KEY`` into the
    ``AWS_*`` variables when those are unset, as Litestream does.
    """
    path = os.fspath(path) if path is not None else default_config_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}",
                          hint="pass -config PATH or set LITESTREAM_CONFIG") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    copy_litestream_credentials()
    return parse_config(text, filename=path, expand_env=expand_env)


def copy_litestream_credentials(environ=os.environ) -> None:
    for suffix in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        if not environ.get(f"AWS_{suffix}") and environ.get(f"LITESTREAM_{suffix}"):
            environ[f"AWS_{suffix}"] = environ[f"LITESTREAM_{suffix}"]


__all__ = [
    "Config", "DBConfig", "ReplicaConfig", "LoggingConfig", "SocketConfig", "ConfigError",
    "load_config", "parse_config", "parse_duration", "format_duration", "parse_byte_size",
    "parse_bool", "expand", "expand_env", "normalize_db_path", "default_config_path",
]
