"""Errors of the replication core.

Every error carries a one-line message for the log and, where we know one, a ``hint``: what the
operator can do about it (Litestream's habit, which saves a trip to the docs at 3 a.m.).
"""
from __future__ import annotations


class ReplicationError(Exception):
    """Base class of every error raised by ``replication``."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class LTXError(ReplicationError):
    """An LTX file is malformed, truncated or fails its checksum; the message names the file."""


class TruncatedLTXError(LTXError):
    """An LTX file ended early: the file is short, or the read of it was (whole-file readers
    compare with the listed size and read again; design/ltx-and-restore.md)."""


class TxNotAvailableError(ReplicationError):
    """No restore plan reaches the requested position ("no matching backup files available")."""


class ReplicaClientError(ReplicationError):
    """A replica backend failed (unreachable, denied, missing object) after its retries."""


class ConfigError(ReplicationError):
    """A litestream.yml is malformed or has an invalid value; the message names file and key."""
