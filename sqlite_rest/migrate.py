"""`sqlite-rest migrate DIR`: golang-migrate compatible schema migrations.

- Files: ``<version>_<name>.up.<ext>`` and ``<version>_<name>.down.<ext>`` (golang-migrate's
  pattern; ext is usually ``sql``). Versions are unsigned integers, applied in numeric order.
- State: table ``__sqlite_rest_migrations(version uint64, dirty bool)`` holding at most one row,
  exactly as golang-migrate's sqlite3 driver with ``MigrationsTable`` set (the Go server's), so a
  database migrated by either tool can be migrated by the other.
- Each step follows golang-migrate: mark the target version dirty, run the migration in one
  transaction, mark the version clean. If the migration fails, its transaction is rolled back
  (the schema and data stay as they were) and the version stays dirty; later runs refuse until
  the operator fixes the file and clears the flag with ``--force VERSION``.
- ``--direction up|down`` and ``--step N`` really work (the Go server only ever ran ``up``).
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import apsw

log = logging.getLogger("sqlite_rest.migrate")

MIGRATIONS_TABLE = "__sqlite_rest_migrations"
#: golang-migrate's source file pattern.
FILE_PATTERN = re.compile(r"^([0-9]+)_(.*)\.(down|up)\.(.*)$")
#: golang-migrate's "no version" (an empty table).
NIL_VERSION = -1


class MigrationError(Exception):
    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint


@dataclass
class Migration:
    version: int
    name: str
    up_path: Optional[str] = None
    down_path: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def read_migrations(directory: str) -> List[Migration]:
    """The migrations in `directory`, sorted by version."""
    if not os.path.isdir(directory):
        raise MigrationError(f"migrations directory {directory} does not exist or is not a directory")
    found: Dict[int, Migration] = {}
    for entry in sorted(os.listdir(directory)):
        match = FILE_PATTERN.match(entry)
        if not match:
            continue
        version, name, direction = int(match.group(1)), match.group(2), match.group(3)
        migration = found.setdefault(version, Migration(version, name))
        attr = f"{direction}_path"
        if getattr(migration, attr) is not None:
            raise MigrationError(f"duplicate {direction} migration for version {version}: "
                                 f"{os.path.basename(getattr(migration, attr))} and {entry}",
                                 hint="each version has at most one .up and one .down file")
        setattr(migration, attr, os.path.join(directory, entry))
    return [found[v] for v in sorted(found)]


class Migrator:
    def __init__(self, db_path: str, directory: str, *, busy_timeout_ms: int = 5000):
        self.directory = directory
        self.migrations = read_migrations(directory)
        self._by_version = {m.version: m for m in self.migrations}
        parent = os.path.dirname(os.path.abspath(db_path))
        if not os.path.isdir(parent):
            raise MigrationError(f"--db-dsn: directory {parent} does not exist")
        try:
            self.conn = apsw.Connection(db_path)
            self.conn.set_busy_timeout(busy_timeout_ms)
            if str(self.conn.execute("PRAGMA journal_mode").fetchall()[0][0]).lower() != "wal":
                self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._ensure_table()
        except apsw.Error as exc:
            raise MigrationError(f"cannot open database {db_path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    # -- version table (golang-migrate sqlite3 driver) ---------------------------------------
    def _ensure_table(self) -> None:
        self.conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{MIGRATIONS_TABLE}" (version uint64, dirty bool);'
            f'CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON "{MIGRATIONS_TABLE}" (version);')

    def version(self) -> Tuple[int, bool]:
        """(version, dirty); version is NIL_VERSION (-1) when nothing was applied."""
        rows = self.conn.execute(
            f'SELECT version, dirty FROM "{MIGRATIONS_TABLE}" LIMIT 1').fetchall()
        if not rows:
            return NIL_VERSION, False
        return int(rows[0][0]), bool(rows[0][1])

    def _set_version(self, version: int, dirty: bool) -> None:
        with self.conn:  # its own transaction, as golang-migrate's SetVersion
            self.conn.execute(f'DELETE FROM "{MIGRATIONS_TABLE}"')
            if version >= 0 or (version == NIL_VERSION and dirty):
                self.conn.execute(f'INSERT INTO "{MIGRATIONS_TABLE}" (version, dirty) VALUES (?, ?)',
                                  (version, 1 if dirty else 0))

    # -- operations ------------------------------------------------------------------------------
    def _check_clean(self) -> int:
        version, dirty = self.version()
        if dirty:
            raise MigrationError(
                f"database is dirty at version {version}: a migration failed and was rolled back",
                hint=f"fix the migration file, then run `sqlite-rest migrate {self.directory} "
                     f"--db-dsn ... --force VERSION` with the last version that is fully applied")
        if version != NIL_VERSION and version not in self._by_version:
            raise MigrationError(
                f"database is at version {version}, which has no file in {self.directory}",
                hint="point DIR at the migrations this database was built from")
        return version

    def up(self, step: Optional[int] = None) -> List[int]:
        """Apply the pending migrations (at most `step`); returns the versions applied."""
        current = self._check_clean()
        pending = [m for m in self.migrations if m.version > current]
        if step is not None:
            if step > len(pending):
                raise MigrationError(f"--step {step}: only {len(pending)} migration(s) pending",
                                     hint="lower --step, or omit it to apply all pending")
            pending = pending[:step]
        for m in pending:
            if m.up_path is None:
                raise MigrationError(f"no up migration file for version {m.version}")
        if not pending:
            log.info("no pending migrations", extra={"version": current})
        for m in pending:
            self._run(m, m.up_path, target=m.version, direction="up")
        return [m.version for m in pending]

    def down(self, step: Optional[int] = None) -> List[int]:
        """Revert applied migrations, newest first (at most `step`); returns versions reverted."""
        current = self._check_clean()
        applied = [m for m in reversed(self.migrations) if m.version <= current]
        if step is not None:
            if step > len(applied):
                raise MigrationError(f"--step {step}: only {len(applied)} migration(s) applied",
                                     hint="lower --step, or omit it to revert all")
            applied = applied[:step]
        for m in applied:
            if m.down_path is None:
                raise MigrationError(f"no down migration file for version {m.version}",
                                     hint=f"add {m.label}.down.sql")
        versions = [m.version for m in self.migrations]
        for m in applied:
            index = versions.index(m.version)
            target = versions[index - 1] if index > 0 else NIL_VERSION
            self._run(m, m.down_path, target=target, direction="down")
        if not applied:
            log.info("no applied migrations to revert")
        return [m.version for m in applied]

    def force(self, version: int) -> None:
        """Set the version and clear the dirty flag without running anything."""
        if version < NIL_VERSION:
            raise MigrationError(f"--force {version}: version must be >= -1")
        if version != NIL_VERSION and version not in self._by_version:
            raise MigrationError(f"--force {version}: no migration with that version in "
                                 f"{self.directory}")
        self._set_version(version, dirty=False)
        log.info("forced version", extra={"version": version})

    def _run(self, m: Migration, path: str, *, target: int, direction: str) -> None:
        with open(path, encoding="utf-8") as f:
            sql = f.read()
        started = time.perf_counter()
        self._set_version(target, dirty=True)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if sql.strip():
                    self.conn.execute(sql)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except apsw.Error as exc:
            raise MigrationError(
                f"migration {os.path.basename(path)} failed and was rolled back: {exc}; "
                f"version {target} is marked dirty",
                hint=f"fix the file, then `--force {self._clean_version_before(m, direction)}` "
                     f"and migrate again") from None
        self._set_version(target, dirty=False)
        log.info("applied migration", extra={
            "migration": os.path.basename(path), "direction": direction, "version": target,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1)})

    def _clean_version_before(self, m: Migration, direction: str) -> int:
        """The version the database is really at after `m` was rolled back."""
        if direction == "down":
            return m.version
        versions = [x.version for x in self.migrations]
        index = versions.index(m.version)
        return versions[index - 1] if index > 0 else NIL_VERSION
