"""Every default of the replication core, declared once, with its unit.

Litestream's defaults where it has the setting (``litestream.yml``, spec §4.3), ours where it
does not (marked "ours"). Modules import these names; nothing else spells a default out.
"""
from __future__ import annotations

# -- dbs[]: the local side (db.py) -----------------------------------------------------------
#: Seconds between two syncs when no commit wakes the monitor earlier.
DEFAULT_MONITOR_INTERVAL = 1.0
#: Seconds after which a WAL with synced frames is checkpointed (PASSIVE).
DEFAULT_CHECKPOINT_INTERVAL = 60.0
#: Seconds our connections wait for SQLite locks.
DEFAULT_BUSY_TIMEOUT = 1.0
#: WAL frames (pages) past which a PASSIVE checkpoint runs (about 4 MB at 4 KiB pages).
DEFAULT_MIN_CHECKPOINT_PAGE_N = 1000
#: WAL frames past which a TRUNCATE checkpoint may run (about 500 MB at 4 KiB pages).
DEFAULT_TRUNCATE_PAGE_N = 121359
#: Bytes of WAL read into one L0 file at most (a larger WAL becomes several files).
DEFAULT_MAX_SYNC_WAL_BYTES = 64 << 20
#: Seconds (ours): commit wake-ups this close to the previous sync that wrote a file are
#: coalesced into one sync, which bounds the fsync rate under a commit storm.
DEFAULT_MIN_SYNC_GAP = 0.010

# -- replica (replica.py) -------------------------------------------------------------------
#: Seconds (ours): continuous upload failure after which the replicator gives up (fatal).
#: Long enough to ride out an S3 blip, short enough that an operator learns about a dead
#: replica before the local disk fills with L0 files.
DEFAULT_RETRY_BUDGET = 600.0

# -- store: compaction, snapshots, retention (store.py) -------------------------------------
#: Seconds between compactions into levels 1, 2, 3.
DEFAULT_LEVEL_INTERVALS = (30.0, 300.0, 3600.0)
#: Seconds between snapshots (level 9), and how long a snapshot is kept.
DEFAULT_SNAPSHOT_INTERVAL = 24 * 3600.0
DEFAULT_SNAPSHOT_RETENTION = 24 * 3600.0
#: Seconds an uploaded L0 file is kept after compaction, and between two retention passes.
DEFAULT_L0_RETENTION = 300.0
DEFAULT_L0_RETENTION_CHECK_INTERVAL = 15.0
#: Seconds the final sync at shutdown may take, and between its upload attempts.
DEFAULT_SHUTDOWN_SYNC_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_SYNC_INTERVAL = 0.5

# -- the primary: one writer of a replicated database (primary.py) --------------------------
#: Seconds (ours) of continuous replica failure after which a server stops, non-zero: a
#: server acknowledges writes, so it must not go on for long without a replica.
DEFAULT_PRIMARY_RETRY_BUDGET = 120.0
#: Seconds (ours) between sync rounds of a server under a write flood. Its writers read their
#: TXID off the position board, so rounds are no one's latency there; each round is one
#: upload (on S3 a PutObject costs ~3 ms of CPU in boto3 and ~4 ms in a local SeaweedFS).
DEFAULT_PRIMARY_MIN_SYNC_GAP = 0.100
#: Seconds (ours) a start waits for the lock: long enough for the HTTP processes of a killed
#: server to die (their parent-death signal takes milliseconds), short enough to refuse a
#: live one promptly.
DEFAULT_LOCK_WAIT = 5.0
#: Seconds (ours) of replica lag (oldest write not yet on the replica) above which a server
#: is not ready. Measured under a full-speed POST flood: p99 0.11 s (file), 0.19 s (S3).
DEFAULT_READY_MAX_LAG = 5.0

#: Reads of one whole replica file that came back short, before it counts as truncated, and
#: the pause before the first re-read (seconds, doubled each time). A GET from an S3 store came
#: back short once in CI (SeaweedFS, under the crash torture) and failed a server's start.
SHORT_READ_ATTEMPTS = 4
SHORT_READ_BACKOFF = 0.2

#: A restore from a backend that can read in parallel (S3) reads a big file as one stream
#: first; if its first RESTORE_PROBE_BYTES came slower than RESTORE_SLOW_STREAM_BYTES_PER_S
#: (bytes/s), the rest comes as RESTORE_PART_SIZE-byte ranges, DEFAULT_RESTORE_PARALLELISM at
#: once (memory: about their product, 32 MiB). One stream from a local SeaweedFS: 0.4-4 GB/s,
#: where parallel ranges measured slower (0.7-0.9 GB/s, twice the CPU); from AWS S3 about
#: 85-90 MB/s per connection (AWS's performance guidelines), where they add up.
RESTORE_PROBE_BYTES = 16 << 20
RESTORE_SLOW_STREAM_BYTES_PER_S = 100e6
RESTORE_PART_SIZE = 8 << 20
DEFAULT_RESTORE_PARALLELISM = 4

#: A restore decodes one replica file in worker processes (forked, one run of its pages each),
#: up to RESTORE_DECODE_WORKERS and no more than the CPUs it may use, when the file is a local
#: one of at least RESTORE_PARALLEL_MIN_BYTES (bytes); smaller files, and files from S3, are
#: decoded in one stream (replication/parallel_decode.py). The threshold is where 2 workers
#: stopped losing on a shared 2-core VM (bench/README.md: medians 32 MiB 71 vs 51 ms in one
#: stream, 64 MiB 108 vs 113 ms, 256 MiB 314 vs 358 ms).
RESTORE_DECODE_WORKERS = 4
RESTORE_PARALLEL_MIN_BYTES = 64 << 20

# -- the read-replica VFS (vfs.py) ----------------------------------------------------------
#: Seconds between two polls of the replica for new L0 files (Litestream's
#: ``DefaultPollInterval``).
DEFAULT_VFS_POLL_INTERVAL = 1.0
#: Bytes of decoded pages kept per open database (Litestream's ``DefaultCacheSize``, 10 MB):
#: the LRU holds cache_size // page_size pages.
DEFAULT_VFS_CACHE_SIZE = 10 * 1024 * 1024
#: Page-index fetches in flight while an open builds its index from the restore plan (ours).
VFS_INDEX_FETCH_CONCURRENCY = 8
#: Bytes up to which the VFS reads an LTX file whole (its index read is the whole file anyway,
#: replica_client.ESTIMATED_PAGE_INDEX_SIZE) and caches its pages: most L0 files a poll finds,
#: whose pages the next reads want (ours; the follow lag on SeaweedFS paid a GET per page).
VFS_WHOLE_FILE_MAX = 32 * 1024
#: Attempts to recover from a page whose LTX file vanished (compaction, retention) before the
#: read fails with SQLITE_BUSY, and the pause before the next attempt (seconds; Litestream
#: retries 6 times with a linear 15 ms backoff).
VFS_NOT_FOUND_ATTEMPTS = 6
VFS_NOT_FOUND_BACKOFF = 0.015
#: Seconds xClose waits for the database's poller thread to stop (ours): a poll stuck in an
#: S3 request must not hang a connection's close.
VFS_POLLER_JOIN_TIMEOUT = 5.0
#: Seconds a source's close waits for its hydrator thread (ours): a catch-up stuck in a read
#: must not hang the close; a thread still running then releases the local file as it ends.
VFS_HYDRATOR_JOIN_TIMEOUT = 10.0
#: poll_share (poll_share.py, ours): seconds between two looks of a follower at the shared
#: poll file (a memory read; a new state is installed at most this long after the leader
#: published it), and the newest L0 files the file lists (a follower further behind lists).
VFS_POLL_SHARE_CHECK_INTERVAL = 0.02
VFS_POLL_SHARE_FILES = 128
#: A hydration catch-up reads a whole LTX file (one GET, decoded) rather than one range read
#: per page once it needs at least this many of the file's pages (ours).
HYDRATION_WHOLE_FILE_PAGES = 8
