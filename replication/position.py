"""The replication position of a commit, known the moment it commits (no round trip).

A write's response carries the TXID of a local L0 file that contains it
(``X-Replication-Txid``). Waiting for the replicator's next round to learn it costs every
write a round (fsyncs included) and cut POST throughput to a third. Instead the replicator
publishes, on a small **position board** file, what each sync round covers, and a writer
works its TXID out from the board and its own commit:

- the writer knows its commit's last WAL frame ``F`` (SQLite's WAL hook reports it) and the
  WAL generation (the header's salts, read before and after COMMIT: equal, or we don't know);
- the board holds the **committed** segment — frames ``<= end`` of generation ``salts`` (and
  every older generation) are in L0 files ``<= txid`` — and, while a round runs, its
  **target**: the round first marks the board busy, then samples the WAL's committed end
  (``mxFrame`` in the ``-shm`` wal-index), publishes it, and reads exactly that far.

So a commit that completed before the writer read the board is in: the committed TXID if
``F <= end``; the running round's TXID if ``F <= target``; otherwise the next round's, which
starts after the read and samples an end ``>= F``. SQLite adds 1 to salt-1 when a connection
restarts the WAL it knows, and the replicator syncs a generation to its end (or writes a
snapshot) before the next one is read, which orders generations exactly one restart apart.
(A writer that finds the WAL empty after a TRUNCATE checkpoint may start it with random salts,
so generations further apart are never ordered: a test caught an "older" random generation.) Anything else — a busy board with no target yet,
a backlog larger than one L0 (``limit_frames``), more than one restart apart, no board —
answers ``None``, and the caller falls back to waiting for a round
(:class:`replication.notify.CommitWaiter`).

The board is one small record the replicator writes with ``pwrite`` (the system call orders
it before its own read of the ``-shm``) and writers read through a shared mapping; it
carries a CRC-32, so a torn read is detected and retried.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

from .sqlite_fds import open_kept
from .wal import WAL_INDEX_HEADER_SIZE

#: Environment variable naming the position board's file for writer processes.
POSITION_BOARD_ENV = "SQLITEREST_POSITION_BOARD"

BOARD_MAGIC = b"SRPB"
BOARD_VERSION = 1
_RECORD = struct.Struct("<4sII" "IIQQ" "IIQQ" "QQ")  # + crc32
_CRC = struct.Struct("<I")
BOARD_SIZE = _RECORD.size + _CRC.size

_BUSY = 1  # a round is reading the WAL
_TARGET = 2  # ... and the end it reads to is known
_COMMITTED = 4  # the committed segment is known

#: How often a reader retries a torn or busy-without-target board before giving up (each
#: retry is one pread; a round publishes its target microseconds after marking busy).
READ_ATTEMPTS = 50


def _newer(a: int, b: int) -> int:
    """How many WAL restarts salt-1 ``a`` is after ``b`` (negative: before), mod 2**32."""
    d = (a - b) & 0xFFFFFFFF
    return d if d < 0x80000000 else d - 0x100000000


@dataclass(frozen=True)
class Segment:
    """Frames ``1..end`` of the WAL generation ``salts`` are in L0 files ``<= txid``."""

    salts: tuple[int, int]
    end: int
    txid: int


@dataclass(frozen=True)
class BoardState:
    committed: Optional[Segment]  # None: nothing synced since the replicator started
    busy: bool = False
    target: Optional[Segment] = None  # the running round's, when busy and known
    limit_frames: int = 0  # one L0 holds at most about this many frames (0: no limit)
    rounds: int = 0  # rounds started so far: a writer that woke the replicator at round r
    #                  need not wake it again while it still reads r (the round it woke
    #                  has not started, so it will cover later commits too)

    def txid_for_commit(self, salts: tuple[int, int], frame: int) -> Optional[tuple[int, bool]]:
        """``(txid, later)`` for a commit whose last frame is ``frame`` of WAL generation
        ``salts``, made before this state was read: the TXID of a local L0 file that
        contains it, and whether that file comes from a round not started yet (which the
        replicator must be woken for). None when unknown."""
        if self.committed is None or (self.busy and self.target is None):
            return None
        segments = [self.committed] + ([self.target] if self.target is not None else [])
        for seg in segments:
            age = _newer(salts[0], seg.salts[0])
            if age == -1 or (age == 0 and salts == seg.salts and frame <= seg.end):
                return seg.txid, False
            if age < -1 or (age == 0 and salts != seg.salts):
                return None  # not a generation we can order (see the module docstring)
        last = segments[-1]  # `age` is still the commit's age against it
        if age == 0:
            backlog = frame - last.end
        elif age == 1:
            backlog = frame  # the next round starts the new generation (or snapshots)
        else:
            return None  # more than one restart since the last round: unknown
        if self.limit_frames and backlog > self.limit_frames:
            return None  # the next round may split it over several files
        # The next round writes last.txid + 1 (a running round that has nothing to read
        # published target.txid == committed.txid).
        return last.txid + 1, True


class PositionBoard:
    """The replicator's side: publish what sync rounds cover (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        self._state = BoardState(None)
        self.publish(self._state)

    def publish(self, state: BoardState) -> None:
        # pwrite, not a store into a shared mapping: the system call orders it before the
        # round's read of the -shm (a plain store could still sit in this CPU's store buffer).
        with self._lock:
            self._state = state
            os.pwrite(self._fd, encode_board(state), 0)

    def round_started(self) -> None:
        """Before the round samples the WAL's end: from here until :meth:`round_target`,
        readers cannot tell whether a new commit is in this round."""
        st = self._state
        self.publish(BoardState(st.committed, busy=True, limit_frames=st.limit_frames,
                                rounds=st.rounds + 1))

    def round_target(self, target: Segment) -> None:
        st = self._state
        self.publish(BoardState(st.committed, busy=True, target=target,
                                limit_frames=st.limit_frames, rounds=st.rounds))

    def round_ended(self, committed: Optional[Segment], limit_frames: int) -> None:
        self.publish(BoardState(committed, limit_frames=limit_frames, rounds=self._state.rounds))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def encode_board(state: BoardState) -> bytes:
    c = state.committed or Segment((0, 0), 0, 0)
    t = state.target or Segment((0, 0), 0, 0)
    flags = ((_BUSY if state.busy else 0) | (_TARGET if state.target is not None else 0)
             | (_COMMITTED if state.committed is not None else 0))
    body = _RECORD.pack(BOARD_MAGIC, BOARD_VERSION, flags, c.salts[0], c.salts[1], c.end, c.txid,
                        t.salts[0], t.salts[1], t.end, t.txid, state.limit_frames, state.rounds)
    return body + _CRC.pack(zlib.crc32(body))


def decode_board(data: bytes) -> Optional[BoardState]:
    """The state in ``data``, or None if it is short, torn or not a board."""
    if len(data) < BOARD_SIZE:
        return None
    body = data[:_RECORD.size]
    if _CRC.unpack_from(data, _RECORD.size)[0] != zlib.crc32(body):
        return None
    (magic, version, flags, cs1, cs2, cend, ctxid, ts1, ts2, tend, ttxid, limit,
     rounds) = _RECORD.unpack(body)
    if magic != BOARD_MAGIC or version != BOARD_VERSION:
        return None
    return BoardState(
        committed=Segment((cs1, cs2), cend, ctxid) if flags & _COMMITTED else None,
        busy=bool(flags & _BUSY),
        target=Segment((ts1, ts2), tend, ttxid) if flags & _TARGET else None,
        limit_frames=limit, rounds=rounds)


def read_board(view, known: Optional[tuple[bytes, BoardState]] = None
               ) -> tuple[Optional[BoardState], Optional[tuple[bytes, BoardState]]]:
    """Read a board from a mapping of its file, retrying a torn record or a round that has
    not published its target yet. ``known`` is a ``(record, state)`` read before: the same
    bytes again need no decode (every write reads the board; most find it unchanged).
    Returns the state and what to pass as ``known`` next time."""
    state = None
    for _ in range(READ_ATTEMPTS):
        raw = view[:BOARD_SIZE]
        if known is not None and raw == known[0]:
            return known[1], known
        state = decode_board(raw)
        if state is not None and not (state.busy and state.target is None):
            return state, (raw, state)
    return state, known


class CommitPositions:
    """The writer's side, one per process: fills ``X-Replication-Txid`` without waiting.

    Wire it to a write connection with :meth:`watch_connection` (SQLite's WAL hook reports
    the commit's last frame), call :meth:`before_commit` inside the write transaction just
    before COMMIT, and call the object after COMMIT: it returns the TXID as 16 hex digits,
    or what ``fallback()`` returns when the board cannot tell. ``wake()`` tells the
    replicator about a commit that needs a round not started yet (the fallback does that
    itself); other commits are already covered, so they send nothing.

    The WAL generation comes from the ``-shm`` wal-index header and the board from a
    mapping of its file: plain memory reads, no system call per write."""

    def __init__(self, db_path: str | os.PathLike, board_path: str | os.PathLike,
                 fallback: Callable[[], Optional[str]], wake: Callable[[], object],
                 on_answer: Optional[Callable[[str], object]] = None):
        self.shm_path = os.fspath(db_path) + "-shm"
        self.board_path = os.fspath(board_path)
        self.fallback = fallback
        self.wake = wake
        #: Called with "board" (known at commit) or "round" (waited) for every answer.
        self.on_answer = on_answer
        self._local = threading.local()
        # path -> (fork generation, map): a forked child maps the files anew
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}
        self._board_known: Optional[tuple[bytes, BoardState]] = None  # one tuple: thread-safe
        self.owns_checkpoints = True  # WriterHook: the replicator checkpoints
        self._woken_at_round = -1

    def _map(self, path: str, size: int) -> Optional[mmap.mmap]:
        entry = self._maps.get(path)
        if entry is not None and entry[0] == _fork_generation:
            return entry[1]
        try:
            # Never closed: SQLite locks the -shm, and closing a descriptor of it here would
            # drop the write lock of the transaction we are called in (sqlite_fds.py, #9).
            fd = open_kept(path)
            if os.fstat(fd).st_size < size:
                return None
            view = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except FileNotFoundError:
            return None
        self._maps[path] = (_fork_generation, view)
        return view

    def _wal_salts(self) -> Optional[tuple[int, int]]:
        """The WAL generation now, from both copies of the wal-index header (None: unknown,
        or a writer was updating it). Never raises: it runs inside a write transaction,
        which must reach its COMMIT."""
        try:
            view = self._map(self.shm_path, _SHM_HEADERS)
            if view is None:
                return None
            first = view[_SALT_AT:_SALT_AT + 8]
            second = view[WAL_INDEX_HEADER_SIZE + _SALT_AT:WAL_INDEX_HEADER_SIZE + _SALT_AT + 8]
        except (OSError, ValueError):
            return None
        if first != second:
            return None
        return _SALTS.unpack(first)

    def watch_connection(self, conn) -> None:
        """Record each commit's last WAL frame (replaces the auto-checkpoint hook, which
        the replicator owns anyway)."""
        import apsw

        local = self._local

        def wal_hook(_conn, _dbname, frames):
            local.frame = frames
            return apsw.SQLITE_OK

        conn.set_wal_hook(wal_hook)

    def before_commit(self) -> None:
        self._local.salts = self._wal_salts()
        self._local.frame = None

    def _position(self, salts, frame) -> Optional[int]:
        if salts is None or (frame is not None and self._wal_salts() != salts):
            return None
        try:
            view = self._map(self.board_path, BOARD_SIZE)
        except (OSError, ValueError):
            return None
        if view is None:
            return None
        state, self._board_known = read_board(view, self._board_known)
        if state is None or state.committed is None:
            return None
        if frame is None:  # nothing written (e.g. a DELETE that matched no row)
            return state.committed.txid
        found = state.txid_for_commit(salts, frame)
        if found is None:
            return None
        txid, later = found
        if later and self._woken_at_round != state.rounds:
            self._woken_at_round = state.rounds
            self.wake()
        return txid

    def __call__(self) -> Optional[str]:
        local = self._local
        salts, frame = getattr(local, "salts", None), getattr(local, "frame", None)
        local.salts = local.frame = None
        txid = self._position(salts, frame)
        if txid is None:
            if self.on_answer is not None:
                self.on_answer("round")
            return self.fallback()
        if self.on_answer is not None:
            self.on_answer("board")
        return f"{txid:016x}"


# Counted up in every forked child: a mapping is kept per process (os.getpid() is a system call,
# and it ran three times per write).
_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_forked)

# The -shm file starts with two copies of SQLite's WalIndexHdr; the salts (a copy of the WAL
# header's, big-endian) are at byte 32 of each (replication.wal.read_wal_index_end).
_SHM_HEADERS = 2 * WAL_INDEX_HEADER_SIZE
_SALT_AT = 32
_SALTS = struct.Struct(">II")
