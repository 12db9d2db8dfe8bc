"""The primary: the one process that writes a replicated database, and the one facade of the
local side (design/replication.md, "The primary"). ``sqlite-rest serve`` and ``replicate`` both
use it; the web side needs nothing else of the core but its errors.

In order:

1. **Config.** The Litestream config is loaded and validated; the DB must be one of its ``dbs``.
2. **Lock.** ``<meta dir>/sqlite-rest.lock`` is flock'ed for as long as any process that may
   write the database lives (a server's HTTP processes inherit it): a second server or
   ``replicate`` on the same DB waits for a killed one's processes, then refuses.
3. **Restore before open.** A missing DB is restored from the replica's latest position. Local
   L0 files that the replica lacks (acknowledged writes of a run that died before uploading
   them) are uploaded first, so the restore includes them. No replica data: start empty.
   ``force_restore`` keeps the replaced database beside it, checkpointed, named for when and why.
4. **Divergence guard.** A present DB is checked against the replica; if the replica holds a
   history the DB does not contain, start is refused with the two ways out.
5. **Run.** A :class:`replication.store.Store` for this DB runs in threads, woken on every
   writer's commit signal, publishing each round on the position board; a failure past the
   retry budget calls ``on_fatal``. ``ready()`` is false while the replica lags more than
   ``ready-max-lag``.
6. **Stop.** A final sync within ``shutdown-sync-timeout``.

Writers in other processes use :func:`writer_hook_from_env` (the :class:`WriterHook` protocol).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import threading
import time
from typing import Callable, Optional, Protocol

from . import lineage, ltx
from .config import Config, DBConfig, load_config, normalize_db_path
from .defaults import (DEFAULT_LOCK_WAIT, DEFAULT_PRIMARY_MIN_SYNC_GAP,
                       DEFAULT_PRIMARY_RETRY_BUDGET, DEFAULT_READY_MAX_LAG)
from .errors import ConfigError, ReplicationError, TruncatedLTXError, TxNotAvailableError
from .notify import COMMIT_SOCKET_ENV, CommitListener, CommitSignal, CommitWaiter
from .position import POSITION_BOARD_ENV, CommitPositions, PositionBoard
from .replica_client import read_whole_ltx_file
from .vfs_config import ENV_VARS as _VFS_ENV_VARS

log = logging.getLogger(__name__)

#: Page-1 header bytes SQLite rewrites on its own (WAL/rollback mode bytes, change counter,
#: schema cookie — the backup API bumps it in the copy —, version-valid-for, library version):
#: ignored when comparing a DB with the replica's content.
_VOLATILE_HEADER_RANGES = ((18, 20), (24, 28), (40, 44), (92, 100))

LOCK_FILE = "sqlite-rest.lock"
IDENTITY_FILE = "sqlite-rest.identity"
LINEAGE_XATTR = "user.sqlite-rest.lineage"


class ReplicationStartupError(ReplicationError):
    """Replication cannot start; the command exits non-zero with this one line (and its hint)."""


class DivergedError(ReplicationStartupError):
    """The local DB and the replica have different histories."""


def _ways_out(db_path: str, replica: str) -> str:
    return ("either restore over the local database from the replica (loses local changes "
            f"the replica lacks): `sqlite-rest serve ... --replication-force-restore` or "
            f"`sqlite-rest restore -force -o {db_path} {replica}`; or reset the replica to "
            f"this database (drops the replica's history): `sqlite-rest serve ... "
            f"--replication-reset-replica`")


def load_db_config(db_path: str, config_path: str) -> tuple[Config, DBConfig]:
    """Load the config and find ``db_path`` in it (errors name the file and the key)."""
    if not os.path.exists(config_path):
        raise ConfigError(f"--replication-config {config_path}: no such file",
                          hint="pass a Litestream config (litestream.yml) with a `dbs:` entry "
                               "for the database")
    config = load_config(config_path)
    path = normalize_db_path(db_path)
    dbc = config.db_for_path(path)
    if dbc is None:
        listed = ", ".join(d.path or "?" for d in config.dbs) or "none"
        raise ConfigError(f"{config_path}: dbs: no entry has path {path} (listed: {listed})",
                          hint=f"add `- path: {path}` with a `replica:` under `dbs:`, or serve "
                               f"one of the listed databases")
    if dbc.replica is None:
        raise ConfigError(f"{config_path}: dbs[path={path}].replica: missing",
                          hint="add a `replica:` with a `url:` (file:///… or s3://…) or "
                               "`type:` and `path:`")
    return config, dbc


def replica_url(dbc: DBConfig) -> str:
    r = dbc.replica
    if r.url:
        return r.url
    if r.type == "s3":
        return f"s3://{r.bucket}/{r.path}"
    return f"file://{r.path}"


class Primary:
    """The local side of one replicated database (see the module docstring).

    ``retry_budget``: seconds of replica failure before ``on_fatal`` (None: retry forever, as
    Litestream's ``replicate``); the replica key ``retry-budget`` wins over it."""

    def __init__(self, config: Config, dbc: DBConfig, *, force_restore: bool = False,
                 reset_replica: bool = False, guard_divergence: bool = True,
                 retry_budget: Optional[float] = DEFAULT_PRIMARY_RETRY_BUDGET,
                 min_sync_gap: float = DEFAULT_PRIMARY_MIN_SYNC_GAP,
                 lock_wait: float = DEFAULT_LOCK_WAIT):
        from .replica_client import client_from_config

        if dbc.replica is None:
            raise ConfigError(f"{dbc.path}: no replica configured",
                              hint="add a `replica:` with a `url:` (file:///… or s3://…) or "
                                   "`type:` and `path:`")
        self.config, self.dbc = config, dbc
        #: Replace a present (e.g. diverged) DB by the replica's latest; the old one is kept.
        self.force_restore = force_restore
        #: Delete the replica's files and start a new history from the local DB.
        self.reset_replica = reset_replica
        #: Refuse a present DB whose history differs from the replica's (serve; Litestream's
        #: ``replicate`` has no such check and continues from whatever the DB holds).
        self.guard_divergence = guard_divergence
        self.db_path = dbc.path
        self.url = replica_url(dbc)
        self.client = client_from_config(dbc.replica)
        self.retry_budget = dbc.replica.retry_budget or retry_budget
        self.ready_max_lag = dbc.replica.ready_max_lag or DEFAULT_READY_MAX_LAG
        self.min_sync_gap = min_sync_gap
        self.lock_wait = lock_wait
        self.meta_path = dbc.meta_path or os.path.join(
            os.path.dirname(self.db_path), f".{os.path.basename(self.db_path)}-litestream")
        self.store = None
        self.db = None
        self.restored_txid: Optional[int] = None
        #: The history this database's TXIDs belong to (lineage.py); set by ``prepare``.
        self.lineage: Optional[lineage.Lineage] = None
        #: Where ``force_restore`` moved the replaced database (None: nothing was replaced).
        self.replaced_path: Optional[str] = None
        self.first_sync_done = threading.Event()
        self._lock_fd: Optional[int] = None
        self._fatal: Optional[BaseException] = None
        #: Called with a one-line reason when replication gave up (the retry budget ran out).
        self.on_fatal: Optional[Callable[[str], None]] = None
        self._listener: Optional[CommitListener] = None  # writers' position requests
        self._pending_waiters: list[tuple[int, list]] = []
        self._waiters_lock = threading.Lock()

    @classmethod
    def from_config_file(cls, db_path: str, config_path: str, **kwargs) -> "Primary":
        """The primary of ``db_path`` as ``config_path`` (a litestream.yml) describes it."""
        config, dbc = load_db_config(db_path, config_path)
        return cls(config, dbc, **kwargs)

    # -- before the DB is opened --------------------------------------------------------

    def prepare(self, *, restore_if_missing: bool = True, create_if_no_backup: bool = True) -> None:
        """Steps 2–4: lock, restore or divergence check. Raises ReplicationStartupError.
        ``restore_if_missing=False`` (``replicate`` without ``-restore-if-db-not-exists``): a
        missing DB is left alone, for whoever creates it; ``create_if_no_backup``: a missing
        DB with nothing to restore is created empty (serve), or left missing (``replicate``,
        as Litestream)."""
        self._take_lock()
        try:
            self._prepare_locked(restore_if_missing, create_if_no_backup)
        except BaseException:
            self.release_lock()
            raise

    def _prepare_locked(self, restore_if_missing: bool, create_if_no_backup: bool) -> None:
        self.client.init()
        # Decided before anything changes: only a database that keeps its local history
        # continues its lineage; a restore, a reset or a replaced file begins a new one.
        carried_forward = (os.path.exists(self.db_path) and not self.force_restore
                           and not self.reset_replica and self._identity_matches())
        if self.reset_replica:
            log.warning("--replication-reset-replica: deleting every file of %s", self.url)
            self.client.delete_all()
            self._reset_meta()
        exists = os.path.exists(self.db_path)
        if exists and self.force_restore:
            if self._remote_max_txid() == 0:
                raise ReplicationStartupError(
                    f"--replication-force-restore: the replica {self.url} has no data",
                    hint="drop the flag to keep the local database")
            self._move_aside("force-restore")
            self._restore(force=True)
        elif not exists and restore_if_missing:
            self._upload_pending_local_files()
            self._restore(force=False, create_if_no_backup=create_if_no_backup)
        elif exists and self.guard_divergence:
            self._check_divergence()
        self._write_identity()
        if os.path.exists(self.db_path):
            local = self._local_l0()
            self.lineage = lineage.settle(self.client, self.meta_path,
                                          carried_forward=carried_forward,
                                          after_txid=local[-1][1] if local else 0)

    def _move_aside(self, why: str) -> None:
        """Keep the database a force-restore replaces: checkpointed (its WAL copied in), then
        renamed ``<db>.replaced-by-<why>-<UTC time>``, so whatever the replica lacks can still
        be recovered by hand."""
        import apsw

        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{self.db_path}.replaced-by-{why}-{when}"
        conn = apsw.Connection(self.db_path)
        try:
            conn.set_busy_timeout(int(self.lock_wait * 1000))
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        finally:
            conn.close()
        try:
            os.rename(self.db_path, target)
            wal = self.db_path + "-wal"
            if busy and os.path.exists(wal):  # not fully copied in: keep it beside the copy
                os.rename(wal, target + "-wal")
        except OSError as exc:
            raise ReplicationStartupError(
                f"--replication-{why}: cannot move {self.db_path} aside to {target}: "
                f"{exc.strerror or exc}", hint="check the directory's permissions and free space"
            ) from None
        for suffix in ("-wal", "-shm"):
            try:
                os.remove(self.db_path + suffix)
            except FileNotFoundError:
                pass
        self.replaced_path = target
        log.warning("--replication-%s: the replaced database is kept as %s; restoring %s "
                    "from %s", why, target, self.db_path, self.url)

    def _take_lock(self) -> None:
        path = os.path.join(self.meta_path, LOCK_FILE)
        try:
            os.makedirs(self.meta_path, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ReplicationStartupError(
                f"cannot create the replication lock {path}: {exc.strerror or exc}",
                hint=f"the directory of {self.db_path} must be writable (the meta dir "
                     f"{self.meta_path} lives there; or set `meta-path:` in the config)"
            ) from None
        deadline = time.monotonic() + self.lock_wait
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            # The HTTP processes of a killed server hold the lock until they are gone, which
            # their parent-death signal makes a matter of milliseconds.
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ReplicationStartupError(
                    f"{self.db_path} is still used by another server or `replicate` (process "
                    f"{holder} or the HTTP workers it started; lock {path}, waited "
                    f"{self.lock_wait:g} s)",
                    hint="run one server (or `replicate`) per database; stop the other one "
                         "first")
            if not waited:
                log.info("waiting for the processes of a previous server to release %s", path)
                waited = True
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    @property
    def lock_fd(self) -> Optional[int]:
        """The lock's descriptor: every process that may write the database must inherit it
        (``pass_fds``) and keep it, so no other start proceeds while one lives."""
        return self._lock_fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remote_max_txid(self) -> int:
        best = 0
        for level in range(10):
            for info in self.client.ltx_files(level):
                best = max(best, info.max_txid)
        return best

    def _local_l0(self) -> list[tuple[int, int, str]]:
        d = os.path.join(self.meta_path, "ltx", "0")
        out = []
        for name in os.listdir(d) if os.path.isdir(d) else ():
            parsed = ltx.parse_filename(name)
            if parsed:
                out.append((parsed[0], parsed[1], os.path.join(d, name)))
        return sorted(out)

    def _reset_meta(self) -> None:
        import shutil

        shutil.rmtree(os.path.join(self.meta_path, "ltx"), ignore_errors=True)
        lineage.remove_local(self.meta_path)
        try:
            os.unlink(os.path.join(self.meta_path, IDENTITY_FILE))
        except FileNotFoundError:
            pass

    def _continue_replica_history(self) -> None:
        """The DB holds the replica's latest content but has no local history: seed the meta
        dir with the replica's newest L0 file, so the next sync writes a full-page L0 at the
        replica's max + 1 (Litestream's checkDatabaseBehindReplica) instead of a TXID the
        replica already has."""
        from replication.db import DB

        self._reset_meta()
        DB(self.db_path, self.dbc).reset_to_replica(self.client)

    def _upload_pending_local_files(self) -> None:
        """The DB is gone but the meta dir may still hold L0 files the replica never got
        (the previous run was killed between commit and upload): upload them first, so that
        no acknowledged write is lost by the restore. Only a contiguous run is uploaded."""
        local = self._local_l0()
        if not local:
            return
        remote_max = self._remote_max_txid()
        pending = [f for f in local if f[1] > remote_max]
        if not pending or remote_max == 0:
            return
        expected = remote_max + 1
        uploaded = 0
        for min_txid, max_txid, path in pending:
            if min_txid != expected:
                break
            with open(path, "rb") as f:
                data = f.read()
            header = ltx.Header.unmarshal(data[:ltx.HEADER_SIZE], name=path)
            self.client.write_ltx_file(0, min_txid, max_txid, data, header.timestamp)
            expected = max_txid + 1
            uploaded += 1
        if uploaded:
            log.warning("uploaded %d local LTX file(s) the replica lacked (TXIDs %016x..%016x) "
                        "before restoring", uploaded, remote_max + 1, expected - 1)

    def _restore(self, *, force: bool, create_if_no_backup: bool = True) -> None:
        from replication.restore import restore

        started = time.monotonic()
        log.info("restoring %s from %s", self.db_path, self.url)
        try:
            result = restore(self.client, self.db_path, integrity_check="quick", force=force,
                             progress=_ProgressLog())
        except TxNotAvailableError:
            if force:
                raise ReplicationStartupError(
                    f"--replication-force-restore: the replica {self.url} has no data",
                    hint="drop the flag to keep the local database") from None
            self._reset_meta()
            if create_if_no_backup:
                log.info("no replica data at %s: starting with an empty database", self.url)
                _create_empty_wal_database(self.db_path)
            else:
                log.info("%s: no backup on the replica, starting empty", self.db_path)
            return
        if result.v3 is not None and self._remote_max_txid() == 0:
            # From Litestream v0.3 data, with no LTX file on the replica yet: the local
            # history starts afresh, so the first sync writes a full snapshot at TXID 1 beside
            # the v0.3 generations (the migration to the 0.5 format; later restores pick it,
            # being newer).
            self._reset_meta()
            log.info("restored %s from the replica's v0.3 backup (generation %s) in %.2f s; "
                     "replication continues in the LTX format", self.db_path,
                     result.v3.snapshot.generation, time.monotonic() - started)
            return
        self._continue_replica_history()
        self.restored_txid = result.txid
        log.info("restored %s at TXID %s in %.2f s", self.db_path,
                 f"{self.restored_txid:016x}" if self.restored_txid else "?",
                 time.monotonic() - started)

    # -- divergence ---------------------------------------------------------------------

    def _db_identity(self) -> dict:
        """Which file the local history describes. Inode numbers are reused as soon as a file
        is deleted (a restore over the same path often gets the old number back), so the file
        also carries a random lineage id in an xattr, which a replaced file does not have."""
        st = os.stat(self.db_path)
        identity = {"dev": st.st_dev, "ino": st.st_ino}
        try:
            identity["lineage"] = os.getxattr(self.db_path, LINEAGE_XATTR).decode()
        except OSError:
            pass  # not set yet, or a filesystem without user xattrs: inode only
        return identity

    def _write_identity(self) -> None:
        if not os.path.exists(self.db_path):
            return
        try:
            os.getxattr(self.db_path, LINEAGE_XATTR)
        except OSError:
            try:
                os.setxattr(self.db_path, LINEAGE_XATTR, os.urandom(8).hex().encode())
            except OSError:
                pass
        path = os.path.join(self.meta_path, IDENTITY_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self._db_identity(), f)
        os.replace(path + ".tmp", path)

    def _identity_matches(self) -> bool:
        try:
            with open(os.path.join(self.meta_path, IDENTITY_FILE)) as f:
                return json.load(f) == self._db_identity()
        except (OSError, ValueError):
            return False

    def _check_divergence(self) -> None:
        remote_max = self._remote_max_txid()
        if remote_max == 0:
            return  # an empty replica: this DB starts its history
        local = self._local_l0()
        if local and self._identity_matches():
            local_max = local[-1][1]
            if remote_max > local_max:
                raise DivergedError(
                    f"the replica {self.url} holds TXIDs up to {remote_max:016x}, beyond this "
                    f"database's last replicated TXID {local_max:016x}: another server wrote "
                    f"to the replica, or this database is older than the replica",
                    hint=_ways_out(self.db_path, self.url))
            self._compare_common_l0(local)
            return
        # No usable local history (new meta dir, or the DB file was replaced): the DB must hold
        # exactly the replica's latest content, or it has diverged.
        log.info("%s has no replication history here: comparing it with %s", self.db_path,
                 self.url)
        differs = self._first_difference()
        if differs is not None:
            raise DivergedError(
                f"the database {self.db_path} differs from the replica {self.url} at its latest "
                f"TXID {remote_max:016x} (first difference: {differs})",
                hint=_ways_out(self.db_path, self.url))
        self._continue_replica_history()

    def _compare_common_l0(self, local) -> None:
        """The newest L0 file both sides hold must be byte-identical (it is the same upload)."""
        remote = {(i.min_txid, i.max_txid): i for i in self.client.ltx_files(0)}
        for min_txid, max_txid, path in reversed(local):
            info = remote.get((min_txid, max_txid))
            if info is None:
                continue
            with open(path, "rb") as f:
                mine = f.read()
            try:
                theirs = read_whole_ltx_file(self.client, info)
            except TruncatedLTXError:
                if info.size >= len(mine):
                    raise
                # An upload cut short: a SIGKILL in the middle of a PutObject once left a
                # 0-byte L0 object on SeaweedFS (crash torture, CI 2026-12-05), which every
                # later start refused and every restore would fail on. Ours is the whole
                # file of the same TXIDs (an older common file is compared next): upload it
                # again over the broken one.
                ltx.verify(mine, os.path.basename(path))
                log.warning("the replica's L0 file %016x-%016x is cut short (%d of %d bytes): "
                            "uploading it again", min_txid, max_txid, info.size, len(mine))
                self.client.write_ltx_file(0, min_txid, max_txid, mine,
                                           ltx.Header.unmarshal(mine[:ltx.HEADER_SIZE]).timestamp)
                continue
            if mine != theirs:
                raise DivergedError(
                    f"the replica's L0 file {min_txid:016x}-{max_txid:016x} differs from the "
                    f"local one: the replica and {self.db_path} have different histories",
                    hint=_ways_out(self.db_path, self.url))
            return

    def _first_difference(self) -> Optional[str]:
        """Compare the DB's pages (WAL included) with the replica's latest restore."""
        import apsw

        from replication.restore import restore

        base = os.path.join(os.path.dirname(self.db_path),
                            f".{os.path.basename(self.db_path)}.sqlite-rest-compare")
        copy, restored = base + ".local.tmp", base + ".replica.tmp"
        try:
            for p in (copy, restored):
                if os.path.exists(p):
                    os.unlink(p)
            src = apsw.Connection(self.db_path, flags=apsw.SQLITE_OPEN_READONLY)
            dst = apsw.Connection(copy)
            try:
                with dst.backup("main", src, "main") as b:
                    b.step()
            finally:
                dst.close()
                src.close()
            restore(self.client, restored, force=True)
            return _page_difference(copy, restored)
        finally:
            for p in (copy, restored, copy + "-journal"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    # -- running ------------------------------------------------------------------------

    def start(self, *, commit_listener: Optional[CommitListener] = None,
              position_board: Optional[str] = None) -> None:
        """Start the replicator. ``commit_listener``: where writers' position requests arrive
        (answered at the end of the round that covers them); ``position_board``: a file to
        publish sync rounds on, so writers know their commit's TXID without a round trip."""
        from .db import DB
        from .store import Store

        board = PositionBoard(position_board) if position_board else None
        self._listener = commit_listener

        def make_db(path, dbc):
            return DB(path, dbc, position_board=board, min_sync_gap=self.min_sync_gap)

        config = dataclasses.replace(self.config, dbs=[self.dbc])
        self.store = Store(config, retry_budget=self.retry_budget, on_fatal=self._on_fatal,
                           db_factory=make_db)
        self.store.open(monitor=True)
        self.db = self.store.dbs[0]
        self.replica = self.store.replicas[self.db.path]
        self.db.on_sync_round(self._answer_waiters)
        self.db.on_txid_assigned(self._answer_waiters)
        threading.Thread(target=self._wait_first_sync, name="replication-first-sync",
                         daemon=True).start()

    def _wait_first_sync(self) -> None:
        while self._fatal is None:
            h = self.replica.health
            if h.last_sync_at is not None and h.replica_txid >= 1:
                self.first_sync_done.set()
                log.info("replication ready: replica at TXID %016x", h.replica_txid)
                return
            time.sleep(0.05)

    def notify_commit(self, _n: int = 1) -> None:
        """Workers committed (called on the listener's thread, right after it drained)."""
        if self.store is None:
            return
        waiters = self._listener.take_waiters() if self._listener is not None else []
        if waiters:
            # Any round numbered above the current one starts after these commits.
            with self._waiters_lock:
                self._pending_waiters.append((self.db.sync_round, waiters))
        self.db.notify_commit(urgent=bool(waiters))

    def _answer_waiters(self, round_no: int, txid: Optional[int] = None) -> None:
        """Round ``round_no`` contains every commit whose request arrived before it started:
        answer those writers with ``txid`` (the round's L0, as soon as the round has read the
        WAL to its end — not after its fsyncs) or, at the end of a round that wrote nothing
        new, with the DB's position (X-Replication-Txid)."""
        with self._waiters_lock:
            if not self._pending_waiters:
                return
            due = [w for r, w in self._pending_waiters if r < round_no]
            self._pending_waiters = [(r, w) for r, w in self._pending_waiters if r >= round_no]
        if due and self._listener is not None:
            if txid is None:
                txid = self.db.pos().txid
            for waiters in due:
                self._listener.reply(waiters, txid)

    def _on_fatal(self, path: str, exc: BaseException) -> None:
        self._fatal = exc
        # Local syncs still work: one more round answers every waiting writer now (their
        # writes are durable locally) instead of at the end of their timeout.
        self.db.notify_commit()
        if self.on_fatal is not None:
            self.on_fatal(f"replication of {path} to {self.url} failed: {exc}")

    def lag_seconds(self) -> float:
        """How far the replica is behind the newest commit (seconds; 0 when caught up)."""
        if self.store is None:
            return 0.0
        return max(self.replica.health.lag_seconds, self.db.sync_lag())

    def ready(self) -> bool:
        if self.store is None or self._fatal is not None or not self.first_sync_done.is_set():
            return False
        return self.replica.health.healthy and self.lag_seconds() <= self.ready_max_lag

    def status(self) -> dict:
        if self.store is None:
            return {"db": self.db_path, "replica": self.url, "state": "starting"}
        s = self.store.status(self.db.path)
        return {
            "db": s.path, "replica": self.url, "replica_type": self.client.type,
            "local_txid": f"{s.local_txid:016x}", "replica_txid": f"{s.replica_txid:016x}",
            "lag_txids": s.lag_txids, "lag_seconds": round(self.lag_seconds(), 3),
            "ready_max_lag_seconds": self.ready_max_lag,
            "last_sync_at": s.last_sync_at, "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error, "healthy": s.healthy and self._fatal is None,
            "ready": self.ready(), "restored_txid": self.restored_txid,
            "replaced_path": self.replaced_path,
            "retry_budget_seconds": self.retry_budget,
        }

    def local_txid(self) -> int:
        return self.db.pos().txid if self.store is not None else 0

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Final sync + upload within ``timeout`` (default shutdown-sync-timeout)."""
        ok = True
        if self.store is not None:
            ok = self.store.close(timeout)
            self.store = None
        self.release_lock()
        return ok and self._fatal is None


# -- the writers' side -----------------------------------------------------------------------

class WriterHook(Protocol):
    """What a process that writes a replicated database calls around each write transaction
    (sqlite_rest/db.py), so the replicator hears of the commit at once and the writer learns
    the replica position that holds it (``X-Replication-Txid``)."""

    #: True when the replicator owns checkpoints (the writer must never run one: it would race
    #: the replicator's own, and PASSIVE at its thresholds is all the WAL needs).
    owns_checkpoints: bool

    def watch_connection(self, conn) -> None:
        """Once per write connection, before its first transaction."""

    def before_commit(self) -> None:
        """Inside the write transaction, right before COMMIT."""

    def __call__(self) -> Optional[str]:
        """After COMMIT: the position (16 hex digits) that holds the commit, or None."""


def writer_hook_from_env(db_path: str, *, wait_for_position: bool,
                         on_answer: Optional[Callable[[str], object]] = None
                         ) -> Optional[WriterHook]:
    """The hook of a writer process a primary started (its environment names the commit socket
    and the position board): the position read off the board, with a round trip to the
    primary when the board cannot tell; without ``wait_for_position``, the commit signal
    alone. None when no primary listens. ``on_answer("board" | "round")`` counts the two."""
    socket_path = os.environ.get(COMMIT_SOCKET_ENV)
    if not socket_path:
        return None
    if not wait_for_position:
        return CommitSignal(socket_path)
    waiter = CommitWaiter(socket_path)
    board = os.environ.get(POSITION_BOARD_ENV)
    if not board:
        return waiter
    return CommitPositions(db_path, board, fallback=waiter, wake=CommitSignal(socket_path).send,
                           on_answer=on_answer)


def _create_empty_wal_database(path: str) -> None:
    """A new DB in WAL mode: SQLite writes its header page now, so the replicator has a
    database to snapshot as TXID 1 before the first request (and /ready can turn 200)."""
    import apsw

    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA journal_mode=wal").fetchall()
    finally:
        conn.close()


def _page_difference(a: str, b: str) -> Optional[str]:
    """None when the two DB files hold the same pages (volatile header bytes aside)."""
    size_a, size_b = os.path.getsize(a), os.path.getsize(b)
    if size_a != size_b:
        return f"size {size_a} vs {size_b} bytes"
    with open(a, "rb") as fa, open(b, "rb") as fb:
        page_size = int.from_bytes(fa.read(18)[16:18], "big") or 65536
        fa.seek(0)
        lock = ltx.lock_pgno(page_size)
        pgno = 0
        while True:
            pa, pb = fa.read(page_size), fb.read(page_size)
            if not pa and not pb:
                return None
            pgno += 1
            if pgno == lock:
                continue
            if pgno == 1:
                pa, pb = bytearray(pa), bytearray(pb)
                for lo, hi in _VOLATILE_HEADER_RANGES:
                    pa[lo:hi] = pb[lo:hi] = bytes(hi - lo)
            if pa != pb:
                return f"page {pgno}"


class _ProgressLog:
    """Logs a restore's progress (bytes of the plan read) at every tenth."""

    def __init__(self):
        self.logged = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        if tenth > self.logged:
            self.logged = tenth
            log.info("restore progress: %d%% (%d of %d bytes)", tenth * 10, done, total)


# --- read replicas: a database read straight from its replica (vfs.py, design/read-replicas.md)
#
# A replica server (``serve --db-dsn 'file:app.db?vfs=litestream&replica_url=…'``) opens its
# connections through the VFS; the web side reaches the VFS only through these functions.

#: The VFS name a DSN's ``vfs=`` must give for a replica server.
REPLICA_VFS = "litestream"
#: Environment variable naming the lineage of a primary's writes for its HTTP workers.
LINEAGE_ENV = lineage.LINEAGE_ENV
#: Names the file through which a replica server's processes share one poller (the VFS
#: setting ``poll_share``, poll_share.py); the supervisor sets it for its workers.
REPLICA_POLL_SHARE_ENV = _VFS_ENV_VARS["poll_share"]


def replica_uri(name: str, params: dict) -> str:
    """The SQLite URI that opens ``name`` through the (registered) VFS with ``params``
    (``replica_url``, ``poll_interval``, ``cache_size``, …; vfs_config.py checks them)."""
    from . import vfs

    vfs.register()
    return vfs.uri(name, **params)


def replica_install_functions(conn) -> None:
    """``litestream_txid()``, ``litestream_time()``, ``litestream_lag()``,
    ``litestream_set_time()`` on a replica connection."""
    from . import vfs

    vfs.install_functions(conn)


def _replica(conn):
    from . import vfs

    return vfs.database(conn)


def replica_txid(conn) -> int:
    """The TXID this connection reads: inside a read transaction the one it is pinned to,
    outside it the one its next transaction will see."""
    return _replica(conn).txid


def replica_catch_up(conn, txid: int, timeout: float, interval: float = 0.02) -> bool:
    """Poll the replica at once (and every ``interval``) until this connection's next read
    sees ``txid`` or later; False when ``timeout`` (seconds) passed first."""
    db = _replica(conn)
    deadline = time.monotonic() + timeout
    while True:
        if db.txid >= txid:
            return True
        try:
            db.poll()
        except Exception as e:  # noqa: BLE001 - a store outage is a timeout here, not a 500
            log.warning("replica poll while waiting for TXID %016x failed: %s", txid, e)
        if db.txid >= txid:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def replica_position_state(conn, txid: int, lineage_id: str, *, listing: bool = True):
    """Whether the position ``txid@lineage_id`` belongs to the history this replica connection
    follows: ``("ok" | "lost" | "unknown", the lineage that replaced it when lost)``
    (lineage.py; at most one LIST of the replica's lineage records, none with
    ``listing=False``)."""
    db = _replica(conn)
    client = db.replica_client
    return lineage.history_cache(client).state(client, txid, lineage_id, db.txid,
                                               listing=listing)


def current_lineage() -> Optional[str]:
    """The lineage id of this HTTP worker's writes (set by the primary's supervisor), or None."""
    return lineage.current_id()


def replica_set_time(conn, when) -> None:
    """Read as of ``when`` (a datetime, or an int TXID that must be a state the replica
    keeps; None: follow the latest again). Raises ``TxNotAvailableError`` for a point the
    replica does not hold."""
    _replica(conn).set_time(when)


def replica_time(conn):
    """The timestamp of the view this connection reads (or its time-travel target)."""
    return _replica(conn).view_time


def replica_lag(conn) -> float:
    """Seconds since the last successful poll of the replica; -1 before the first."""
    return _replica(conn).lag


def replica_stats(conn) -> dict:
    return dataclasses.asdict(_replica(conn).stats())
