"""Per-database configuration of the read-replica VFS (:mod:`replication.vfs`).

Litestream PR #1157's model, in our words: settings come from three layers, and for each
setting the first layer that has it wins:

1. the SQLite URI parameters of the open (``file:app.db?vfs=litestream&replica_url=…``);
2. the registry, :func:`set_vfs_config` keyed by the database name as written in the URI
   (``app.db`` above), so a program can configure a database without touching the process
   environment (``setenv`` is not thread-safe);
3. Litestream's ``LITESTREAM_*`` environment variables (spec §6.2), the last fallback (and
   ours, ``SQLITEREST_VFS_POLL_SHARE``, which a replica server's supervisor sets);

then the defaults of :mod:`replication.defaults`. The registry keeps and returns copies under a
lock, so a caller mutating its object never changes an open in flight.

Settings Litestream has but this VFS does not implement are refused with the parameter's name:
write mode (``write_enabled=true``, ``sync_interval``, ``buffer_path``) because this VFS is
read-only; a ``hydration_path`` without ``hydration_enabled=true`` is refused too (it would
do nothing). Refusing beats ignoring: a caller who asked for writes must not get a silent
read-only database.
"""
from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, fields
from typing import Mapping

from .config import parse_bool, parse_byte_size, parse_duration
from .defaults import DEFAULT_VFS_CACHE_SIZE, DEFAULT_VFS_POLL_INTERVAL
from .errors import ReplicationError


class VFSConfigError(ReplicationError):
    """A VFS setting has a bad value or is not supported; the message names the parameter."""


#: What each setting accepts, for error messages.
ACCEPTS = {
    "replica_url": "a replica URL such as file:///abs/path or s3://bucket/path?endpoint=…",
    "poll_interval": "a positive Go duration such as 1s, 250ms or 1m30s",
    "cache_size": "a byte size such as 10485760, 10MB or 8MiB (0 disables the page cache)",
    "hydration_enabled": "a boolean (true/false/1/0)",
    "hydration_path": "a path",
    "write_enabled": "a boolean (true/false/1/0)",
    "sync_interval": "a Go duration",
    "buffer_path": "a path",
    "poll_share": "a path (a file the processes that read this replica share one poller through)",
    "poll_lead": "a boolean (true/false/1/0)",
}

#: Litestream's environment variable of each setting (spec §6.2); poll_interval and
#: cache_size have none in Litestream, so they have none here.
ENV_VARS = {
    "replica_url": "LITESTREAM_REPLICA_URL",
    "write_enabled": "LITESTREAM_WRITE_ENABLED",
    "sync_interval": "LITESTREAM_SYNC_INTERVAL",
    "buffer_path": "LITESTREAM_BUFFER_PATH",
    "hydration_enabled": "LITESTREAM_HYDRATION_ENABLED",
    "hydration_path": "LITESTREAM_HYDRATION_PATH",
    # Ours (poll_share.py): set by a replica server's supervisor for its workers.
    "poll_share": "SQLITEREST_VFS_POLL_SHARE",
}


@dataclass
class VFSConfig:
    """One layer of settings; ``None`` = not set in this layer (the next layer decides)."""

    replica_url: str | None = None
    poll_interval: float | None = None      # seconds
    cache_size: int | None = None           # bytes of decoded pages kept per open database
    hydration_enabled: bool | None = None
    hydration_path: str | None = None
    write_enabled: bool | None = None
    sync_interval: float | None = None      # seconds
    buffer_path: str | None = None
    poll_share: str | None = None           # ours: one poller for every process (poll_share.py)
    poll_lead: bool | None = None           # ours: false = only ever follow the poll_share

    def set(self, name: str, value: str, *, source: str = "") -> None:
        """Set ``name`` from its text form (URI parameter or environment variable), checked;
        ``source`` names where the value came from in errors."""
        if name not in ACCEPTS:
            raise VFSConfigError(f"unknown litestream VFS setting {name!r}",
                                 hint=f"known settings: {', '.join(ACCEPTS)}")
        setattr(self, name, parse_setting(name, value, source=source))

    def merged_over(self, lower: "VFSConfig") -> "VFSConfig":
        """A new config: this layer's settings, and ``lower``'s where this one has none."""
        out = copy.copy(lower)
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(out, f.name, value)
        return out


def parse_setting(name: str, value, *, source: str = ""):
    """The typed value of one setting from text (or an already typed value), or
    :class:`VFSConfigError` naming the parameter and what it accepts."""
    what = source or name
    bad = VFSConfigError(f"invalid litestream VFS setting {what}={value!r}",
                         hint=f"{name} accepts {ACCEPTS[name]}")
    try:
        if name in ("poll_interval", "sync_interval"):
            seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
                else parse_duration(value)
            if name == "poll_interval" and not seconds > 0:
                raise bad
            return seconds
        if name == "cache_size":
            return parse_byte_size(value)
        if name in ("hydration_enabled", "write_enabled", "poll_lead"):
            return parse_bool(value)
        if not isinstance(value, str) or not value:
            raise bad
        return value
    except (ValueError, TypeError):
        raise bad from None


def check_supported(cfg: VFSConfig) -> None:
    """Refuse what this VFS does not do (write mode), naming the parameter."""
    if cfg.write_enabled:
        raise VFSConfigError("litestream VFS: write_enabled=true is not supported: this VFS is "
                             "read-only", hint="remove write_enabled (or set it to false)")
    for name in ("sync_interval", "buffer_path"):
        if getattr(cfg, name) is not None:
            raise VFSConfigError(f"litestream VFS: {name} is not supported: it configures write "
                                 "mode, and this VFS is read-only", hint=f"remove {name}")
    if cfg.hydration_path is not None and not cfg.hydration_enabled:
        raise VFSConfigError("litestream VFS: hydration_path without hydration_enabled=true",
                             hint="add hydration_enabled=true (or remove hydration_path)")
    if cfg.poll_lead is not None and not cfg.poll_share:
        raise VFSConfigError("litestream VFS: poll_lead without poll_share",
                             hint="add poll_share=<path> (or remove poll_lead)")


# --- the registry ------------------------------------------------------------------------------

_registry: dict[str, VFSConfig] = {}
_registry_lock = threading.Lock()


def _checked(cfg: VFSConfig) -> VFSConfig:
    if not isinstance(cfg, VFSConfig):
        raise TypeError(f"expected a VFSConfig, got {type(cfg).__name__}")
    out = VFSConfig()
    for f in fields(cfg):  # typed values are validated the same way as text ones
        value = getattr(cfg, f.name)
        if value is not None:
            setattr(out, f.name, parse_setting(f.name, value, source=f"registry setting {f.name}"))
    return out


def set_vfs_config(name: str, cfg: VFSConfig) -> None:
    """Configure database ``name`` (as written in the URI) for every later open of it."""
    checked = _checked(cfg)
    with _registry_lock:
        _registry[name] = checked


def get_vfs_config(name: str) -> VFSConfig | None:
    """A copy of the registered config of ``name``, or None."""
    with _registry_lock:
        cfg = _registry.get(name)
        return copy.copy(cfg) if cfg is not None else None


def delete_vfs_config(name: str) -> None:
    """Forget ``name``'s registered config (opens already done keep theirs)."""
    with _registry_lock:
        _registry.pop(name, None)


# --- resolution --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedConfig:
    """The settings an open uses: every value decided."""

    replica_url: str
    poll_interval: float    # seconds
    cache_size: int         # bytes
    hydration_enabled: bool = False
    hydration_path: str | None = None   # None: a temporary file (when enabled)
    poll_share: str | None = None       # None: this process polls on its own
    poll_lead: bool = True              # False: never list on the poller's tick, follow


def env_config(environ: Mapping[str, str] | None = None) -> VFSConfig:
    environ = os.environ if environ is None else environ
    cfg = VFSConfig()
    for name, var in ENV_VARS.items():
        value = environ.get(var)
        if value:
            cfg.set(name, value, source=f"environment variable {var} ({name})")
    return cfg


def uri_config(params: Mapping[str, str]) -> VFSConfig:
    cfg = VFSConfig()
    for name, value in params.items():
        if name in ACCEPTS:
            cfg.set(name, value, source=f"URI parameter {name}")
    return cfg


def resolve(name: str, uri_params: Mapping[str, str],
            environ: Mapping[str, str] | None = None) -> ResolvedConfig:
    """URI parameters over the registry over the environment over the defaults."""
    cfg = uri_config(uri_params)
    registered = get_vfs_config(name)
    if registered is not None:
        cfg = cfg.merged_over(registered)
    cfg = cfg.merged_over(env_config(environ))
    check_supported(cfg)
    if not cfg.replica_url:
        raise VFSConfigError(
            f"litestream VFS: no replica URL for database {name!r}",
            hint="add the URI parameter replica_url=<url-encoded URL>, register one with "
                 "replication.vfs.set_vfs_config(name, VFSConfig(replica_url=…)), or set "
                 "LITESTREAM_REPLICA_URL")
    return ResolvedConfig(
        replica_url=cfg.replica_url,
        poll_interval=cfg.poll_interval if cfg.poll_interval is not None else DEFAULT_VFS_POLL_INTERVAL,
        cache_size=cfg.cache_size if cfg.cache_size is not None else DEFAULT_VFS_CACHE_SIZE,
        hydration_enabled=bool(cfg.hydration_enabled),
        hydration_path=cfg.hydration_path,
        poll_share=cfg.poll_share,
        poll_lead=cfg.poll_lead is not False,
    )
