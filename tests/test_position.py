"""The position board (replication/position.py): a writer works out, right after its COMMIT,
the TXID of a local L0 file that contains the commit, from what the replicator publishes.

Pure logic of BoardState.txid_for_commit, the board codec and file, and the promise end to end
with real SQLite (apsw), the real DB sync/checkpoint code and L0 files applied in order."""
from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import random
import struct
import threading
import zlib
from types import SimpleNamespace

import apsw
import pytest

from replication.db import DB
from replication.position import (BOARD_MAGIC, BOARD_SIZE, BOARD_VERSION, BoardState,
                                  CommitPositions, PositionBoard, Segment, decode_board,
                                  encode_board, read_board)
from replication.wal import read_wal_header, read_wal_index_end
from tests.test_db_sync import apply_files, open_writer

S = (100, 0x1234)          # the committed generation in the pure-logic tests
NEXT = (101, 0x9999)       # one restart newer (salt-1 + 1, any salt-2)
NEXT2 = (102, 0x4242)      # two restarts newer
OLDER = (99, 0x5555)


# -- helpers (patterns from tests/test_db_sync.py) ---------------------------------------------

def restore_at(db, txid, out):
    """The database at ``txid`` from the local L0 files (1..txid, contiguous)."""
    files = [f for f in db.local_ltx_files(0) if f.max_txid <= txid]
    assert files and files[-1].max_txid == txid, f"no local L0 file ending at {txid}"
    assert files[0].min_txid == 1
    for prev, cur in zip(files, files[1:]):
        assert cur.min_txid == prev.max_txid + 1, (prev, cur)
    apply_files([db.ltx_path(0, f.min_txid, f.max_txid) for f in files], out)
    conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {r[0] for r in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()


# -- 1. BoardState.txid_for_commit -------------------------------------------------------------

def committed_only(end=10, txid=5, salts=S, limit=0):
    return BoardState(Segment(salts, end, txid), limit_frames=limit)


def running(target_end=20, target_txid=6, target_salts=S, end=10, txid=5, salts=S, limit=0):
    return BoardState(Segment(salts, end, txid), busy=True,
                      target=Segment(target_salts, target_end, target_txid), limit_frames=limit)


@pytest.mark.parametrize("frame", [1, 9, 10])
def test_same_generation_within_committed(frame):
    assert committed_only().txid_for_commit(S, frame) == (5, False)


@pytest.mark.parametrize("frame", [11, 12, 5000])
def test_same_generation_beyond_committed_is_next_round(frame):
    assert committed_only().txid_for_commit(S, frame) == (6, True)


@pytest.mark.parametrize("frame,want", [(1, (5, False)), (10, (5, False)), (11, (6, False)),
                                        (20, (6, False)), (21, (7, True)), (400, (7, True))])
def test_running_round_with_target(frame, want):
    assert running().txid_for_commit(S, frame) == want


def test_running_round_with_nothing_to_read():
    st = running(target_end=10, target_txid=5)  # target.txid == committed.txid
    assert st.txid_for_commit(S, 10) == (5, False)
    assert st.txid_for_commit(S, 11) == (6, True)


def test_older_generation_is_in_committed():
    assert committed_only().txid_for_commit(OLDER, 1) == (5, False)
    assert committed_only().txid_for_commit(OLDER, 10**6) == (5, False)
    assert running().txid_for_commit(OLDER, 10**6) == (5, False)
    # Further apart is not ordered: after a TRUNCATE a writer may start the WAL with random salts.
    assert committed_only().txid_for_commit((100 - 7, 1), 3) is None


def test_one_restart_newer_is_next_round():
    assert committed_only().txid_for_commit(NEXT, 1) == (6, True)
    assert committed_only().txid_for_commit(NEXT, 50) == (6, True)
    # A running round in the old generation: the commit is in the round after it.
    assert running().txid_for_commit(NEXT, 3) == (7, True)


def test_running_round_in_the_new_generation():
    st = running(target_salts=NEXT, target_end=4, target_txid=6)
    assert st.txid_for_commit(NEXT, 4) == (6, False)
    assert st.txid_for_commit(NEXT, 5) == (7, True)
    assert st.txid_for_commit(S, 10) == (5, False)
    assert st.txid_for_commit(S, 11) == (6, False)  # old generation, past committed end
    assert st.txid_for_commit(NEXT2, 1) == (7, True)
    assert st.txid_for_commit((101, 1), 1) is None  # same salt-1 as the target, other salt-2


def test_two_restarts_newer_is_unknown():
    assert committed_only().txid_for_commit(NEXT2, 1) is None
    assert running().txid_for_commit(NEXT2, 1) is None
    assert committed_only().txid_for_commit((200, 1), 1) is None


def test_same_salt1_other_salt2_is_unknown():
    assert committed_only().txid_for_commit((100, 0x1235), 1) is None
    assert committed_only().txid_for_commit((100, 0x1235), 11) is None
    assert running().txid_for_commit((100, 0), 15) is None


def test_busy_without_target_is_unknown():
    st = BoardState(Segment(S, 10, 5), busy=True)
    assert st.txid_for_commit(S, 1) is None
    assert st.txid_for_commit(S, 11) is None
    assert st.txid_for_commit(OLDER, 1) is None


def test_no_committed_segment_is_unknown():
    assert BoardState(None).txid_for_commit(S, 1) is None
    assert BoardState(None, busy=True, target=Segment(S, 10, 1)).txid_for_commit(S, 1) is None


def test_backlog_over_limit_frames_is_unknown():
    st = committed_only(limit=5)
    assert st.txid_for_commit(S, 10) == (5, False)  # already in: no limit applies
    assert st.txid_for_commit(S, 15) == (6, True)
    assert st.txid_for_commit(S, 16) is None
    assert st.txid_for_commit(NEXT, 5) == (6, True)  # a new generation: backlog = frame
    assert st.txid_for_commit(NEXT, 6) is None
    rn = running(limit=5)  # backlog counts from the target's end
    assert rn.txid_for_commit(S, 20) == (6, False)
    assert rn.txid_for_commit(S, 25) == (7, True)
    assert rn.txid_for_commit(S, 26) is None
    assert committed_only(limit=0).txid_for_commit(S, 10**9) == (6, True)  # 0: no limit


def test_salt1_wraparound():
    top = (0xFFFFFFFF, 7)
    st = committed_only(salts=top)
    assert st.txid_for_commit((0, 8), 3) == (6, True)  # one restart newer
    assert st.txid_for_commit((1, 8), 3) is None  # two restarts newer
    assert st.txid_for_commit((0xFFFFFFFE, 8), 3) == (5, False)  # older
    low = committed_only(salts=(0, 8))
    assert low.txid_for_commit(top, 10**6) == (5, False)  # 0xFFFFFFFF is older than 0
    assert low.txid_for_commit((1, 9), 2) == (6, True)
    rn = running(salts=top, target_salts=(0, 8), target_end=4, target_txid=6)
    assert rn.txid_for_commit((0, 8), 4) == (6, False)
    assert rn.txid_for_commit((0, 8), 5) == (7, True)
    assert rn.txid_for_commit(top, 10) == (5, False)
    # Past the committed end of the old generation, while a round reads the new one: that
    # round's file (a generation is synced to its end, or snapshotted, before the next).
    assert rn.txid_for_commit(top, 10**6) == (6, False)


# -- 2. the board codec and file ---------------------------------------------------------------

STATES = [
    BoardState(None),
    BoardState(Segment(S, 10, 5)),
    BoardState(Segment(S, 10, 5), busy=True, rounds=3, limit_frames=99),
    BoardState(Segment(S, 10, 5), busy=True, target=Segment(NEXT, 4, 6), limit_frames=1234,
               rounds=77),
    BoardState(Segment((0xFFFFFFFF, 0xFFFFFFFF), 2**64 - 1, 2**64 - 1), busy=False,
               limit_frames=2**64 - 1, rounds=2**64 - 1),
    BoardState(None, busy=True, target=Segment((1, 2), 3, 4), rounds=1),
]


@pytest.mark.parametrize("state", STATES)
def test_codec_round_trip(state):
    data = encode_board(state)
    assert len(data) == BOARD_SIZE
    assert decode_board(data) == state
    assert decode_board(data + b"trailing") == state


def test_codec_distinguishes_every_field():
    base = STATES[3]
    variants = [
        dataclasses.replace(base, committed=Segment((100, 0x1235), 10, 5)),
        dataclasses.replace(base, committed=Segment((101, 0x1234), 10, 5)),
        dataclasses.replace(base, committed=Segment(S, 11, 5)),
        dataclasses.replace(base, committed=Segment(S, 10, 6)),
        dataclasses.replace(base, busy=False),
        dataclasses.replace(base, target=None),
        dataclasses.replace(base, target=Segment(NEXT, 5, 6)),
        dataclasses.replace(base, target=Segment(NEXT, 4, 7)),
        dataclasses.replace(base, target=Segment((102, 0x9999), 4, 6)),
        dataclasses.replace(base, target=Segment((101, 0x999a), 4, 6)),
        dataclasses.replace(base, limit_frames=1235),
        dataclasses.replace(base, rounds=78),
        dataclasses.replace(base, committed=None),
    ]
    encoded = {encode_board(v) for v in variants + [base]}
    assert len(encoded) == len(variants) + 1
    for v in variants:
        assert decode_board(encode_board(v)) == v


def test_flipped_byte_is_rejected():
    data = encode_board(STATES[3])
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            torn = bytearray(data)
            torn[i] ^= mask
            assert decode_board(bytes(torn)) is None, (i, mask)


def test_short_buffer_is_rejected():
    data = encode_board(STATES[3])
    for n in (0, 1, BOARD_SIZE // 2, BOARD_SIZE - 1):
        assert decode_board(data[:n]) is None


def _with_crc(body):
    return body + struct.pack("<I", zlib.crc32(body))


def test_wrong_magic_or_version_with_a_good_crc_is_rejected():
    body = encode_board(STATES[1])[:-4]
    assert decode_board(_with_crc(body)) == STATES[1]
    assert body[:4] == BOARD_MAGIC
    assert decode_board(_with_crc(b"XRPB" + body[4:])) is None
    bad_version = body[:4] + struct.pack("<I", BOARD_VERSION + 1) + body[8:]
    assert decode_board(_with_crc(bad_version)) is None


def test_position_board_rounds(tmp_path):
    path = tmp_path / "board"
    board = PositionBoard(path)
    try:
        assert os.path.getsize(path) == BOARD_SIZE
        fd = os.open(path, os.O_RDONLY)
        try:
            view = mmap.mmap(fd, BOARD_SIZE, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        # One mapping made before the updates sees every later pwrite.
        assert read_board(view)[0] == BoardState(None)

        board.round_started()
        st = decode_board(path.read_bytes())
        assert st == BoardState(None, busy=True, rounds=1)
        assert read_board(view)[0] == st  # busy without target: retried, then returned as is

        board.round_target(Segment(S, 10, 1))
        assert read_board(view)[0] == BoardState(None, busy=True, target=Segment(S, 10, 1), rounds=1)

        board.round_ended(Segment(S, 10, 1), 250)
        assert read_board(view)[0] == BoardState(Segment(S, 10, 1), limit_frames=250, rounds=1)

        board.round_started()  # keeps committed and limit, counts the round
        assert read_board(view)[0] == BoardState(Segment(S, 10, 1), busy=True, limit_frames=250,
                                              rounds=2)
        board.round_target(Segment(S, 10, 1))  # nothing to read
        assert read_board(view)[0] == BoardState(Segment(S, 10, 1), busy=True,
                                              target=Segment(S, 10, 1), limit_frames=250, rounds=2)
        board.round_ended(Segment(S, 10, 1), 250)
        board.round_started()
        board.round_target(Segment(S, 30, 2))
        board.round_ended(Segment(S, 30, 2), 300)
        got = read_board(view)[0]
        assert got == BoardState(Segment(S, 30, 2), limit_frames=300, rounds=3)
        assert got.txid_for_commit(S, 30) == (2, False)
        view.close()
    finally:
        board.close()
    # A second board on the same file starts afresh (nothing committed since it started).
    board2 = PositionBoard(path)
    try:
        assert decode_board(path.read_bytes()) == BoardState(None)
    finally:
        board2.close()


def test_read_board_gives_up_on_a_torn_record():
    data = bytearray(encode_board(STATES[1]))
    data[20] ^= 0x10
    assert read_board(bytes(data))[0] is None
    assert read_board(bytes(data[:10]))[0] is None
    assert read_board(encode_board(STATES[1]))[0] == STATES[1]


def test_read_board_decodes_a_record_only_when_it_changed():
    first = encode_board(STATES[1])
    state, known = read_board(first)
    assert read_board(first, known) == (state, known)  # same bytes: the same decoded state
    changed, known2 = read_board(encode_board(STATES[3]), known)
    assert changed == STATES[3] and known2 == (encode_board(STATES[3]), STATES[3])
    busy = encode_board(STATES[2])  # a round with no target yet: returned, never kept
    assert read_board(busy, known) == (STATES[2], known)
    torn = bytearray(first)
    torn[20] ^= 0x10
    assert read_board(bytes(torn), known) == (None, known)  # never the stale state


# -- 3. end to end: real SQLite, the real DB, L0 files applied in order ------------------------

class Recorder:
    def __init__(self):
        self.wakes = 0
        self.answers = []

    def wake(self):
        self.wakes += 1

    def on_answer(self, kind):
        self.answers.append(kind)


def commit_rows(writer, cp, rng):
    """One explicit write transaction of 1..n rows; returns (answer, max id committed)."""
    n = rng.choice([1, 1, 1, 2, 3, 8, 25])
    writer.execute("BEGIN IMMEDIATE")
    for _ in range(n):
        writer.execute("INSERT INTO t(x) VALUES (randomblob(?))", (rng.randint(50, 3000),))
    last = writer.last_insert_rowid()
    cp.before_commit()
    writer.execute("COMMIT")
    return cp(), last


def check_answers(db, tmp_path, records, commits):
    """Every board answer names a local L0 file whose restore holds every row committed
    before that answer (rows are only inserted, ids ascend)."""
    restored = {}
    top = db.pos().txid
    for answer, last in records:
        if answer == "fallback":
            continue
        txid = int(answer, 16)
        assert 1 <= txid <= top, (answer, top)
        if txid not in restored:
            restored[txid] = restore_at(db, txid, tmp_path / f"at-{txid}.db")
        missing = set(range(1, last + 1)) - restored[txid]
        assert not missing, f"TXID {txid} lacks rows {sorted(missing)[:10]} (commit up to {last})"


@contextlib.contextmanager
def replicated(d, config=None):
    """A DB in ``d`` publishing on a position board, a writer connection, its CommitPositions
    (fallback answers "fallback") and the Recorder of its wakes and answers."""
    path = d / "db.sqlite"
    writer = open_writer(path)
    rec = Recorder()
    try:
        with DB(path, config, position_board=PositionBoard(d / "board")) as db:
            try:
                cp = CommitPositions(path, d / "board", fallback=lambda: "fallback",
                                     wake=rec.wake, on_answer=rec.on_answer)
                cp.watch_connection(writer)
                yield db, writer, cp, rec
            finally:
                db.position_board.close()
    finally:
        writer.close()


@pytest.mark.parametrize("seed,max_sync_wal_bytes", [(1, None), (2, None), (3, 12 * (4096 + 24))])
def test_board_answers_are_contained_single_thread(tmp_path, seed, max_sync_wal_bytes):
    rng = random.Random(seed)
    cfg = SimpleNamespace(min_checkpoint_page_count=300, monitor_interval=0.0)
    if max_sync_wal_bytes:
        cfg.max_sync_wal_bytes = max_sync_wal_bytes
    with replicated(tmp_path, cfg) as (db, writer, cp, rec):
        db.sync()
        records = []
        n = 250
        salts_seen = set()
        for i in range(n):
            if i == 80:
                db.checkpoint("PASSIVE")
            elif i == 160:
                db.checkpoint("TRUNCATE")
            elif i == 200:
                db.checkpoint("PASSIVE")
            elif rng.random() < 0.2:
                db.sync()
            records.append(commit_rows(writer, cp, rng))
            salts_seen.add(read_wal_header(db.wal_path).salts)
        assert len(salts_seen) >= 3, "the WAL never restarted"
        while db.sync():
            pass
        assert db.pos().txid > 10
        check_answers(db, tmp_path, records, n)
        from_board = sum(1 for a, _ in records if a != "fallback")
        if max_sync_wal_bytes:
            # Small L0 files: a backlog over limit_frames cannot be answered from the board.
            assert 0.2 * n <= from_board < 0.9 * n, (from_board, n)
        else:
            assert from_board >= 0.8 * n, (from_board, n)
        assert rec.answers.count("board") == from_board
        assert rec.answers.count("round") == n - from_board
        assert 0 < rec.wakes < n
        # At most one wake per round: the rounds the replicator started.
        fd = os.open(tmp_path / "board", os.O_RDONLY)
        try:
            rounds = decode_board(os.pread(fd, BOARD_SIZE, 0)).rounds
        finally:
            os.close(fd)
        assert rec.wakes <= rounds + 1


def test_answer_right_after_sync_names_the_committed_file(tmp_path):
    """A commit after a caught-up sync is in the next round's file (txid+1); once that round
    ran, a commit that wrote nothing new is answered with the committed TXID."""
    with replicated(tmp_path) as (db, writer, cp, rec):
        assert commit_rows(writer, cp, random.Random(0))[0] == "fallback"  # nothing synced
        db.sync()
        txid = db.pos().txid
        answer, _ = commit_rows(writer, cp, random.Random(0))
        assert answer == f"{txid + 1:016x}" and rec.wakes == 1
        answer, _ = commit_rows(writer, cp, random.Random(0))
        assert answer == f"{txid + 1:016x}" and rec.wakes == 1  # same round: no second wake
        db.sync()
        assert db.pos().txid == txid + 1
        # A transaction that writes nothing: frame stays None -> the committed TXID.
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM t WHERE id < 0")
        cp.before_commit()
        writer.execute("COMMIT")
        assert cp() == f"{txid + 1:016x}"
        answer, _ = commit_rows(writer, cp, random.Random(0))
        assert answer == f"{txid + 2:016x}" and rec.wakes == 2


def test_board_answers_are_contained_with_concurrent_syncs(tmp_path):
    """The replicator syncs (and checkpoints) in another thread while the writer commits: the
    board is read while rounds are busy, with and without a target."""
    rng = random.Random(7)
    config = SimpleNamespace(min_checkpoint_page_count=200, monitor_interval=0.0)
    with replicated(tmp_path, config) as (db, writer, cp, rec):
        stop = threading.Event()
        errors = []

        def replicator():
            r = random.Random(8)
            i = 0
            try:
                while not stop.is_set():
                    i += 1
                    if i % 97 == 0:
                        db.checkpoint("TRUNCATE" if i % 2 else "PASSIVE")
                    else:
                        db.sync()
                    if r.random() < 0.3:
                        stop.wait(0.001)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=replicator, daemon=True)
        try:
            db.sync()
            thread.start()
            n = 600
            records = [commit_rows(writer, cp, rng) for _ in range(n)]
            stop.set()
            thread.join(30)
            assert not thread.is_alive() and not errors, errors
            while db.sync():
                pass
            check_answers(db, tmp_path, records, n)
            from_board = sum(1 for a, _ in records if a != "fallback")
            assert from_board >= n // 2, (from_board, n)
            assert rec.wakes < n
        finally:
            stop.set()


def test_commit_in_the_restarted_generation_before_the_replicator_sees_it(tmp_path,
                                                                        monkeypatch):
    """A writer restarts the WAL (its first frame after a checkpoint) and its transaction spills
    frames before COMMIT, so its WAL generation is one newer than the board's committed
    segment: the answer is the next round's TXID, and that round's file contains the commit."""
    records = []
    with replicated(tmp_path) as (db, writer, cp, rec):
        rng = random.Random(5)
        for _ in range(5):
            commit_rows(writer, cp, rng)
        db.sync()
        old = read_wal_header(db.wal_path).salts
        committed_txid = db.pos().txid
        real_bump = db._seq_bump
        injected = []

        def bump_after_a_writer():
            # Between the checkpoint and the replicator's own first write of the new
            # generation (its sequence bump): the writer gets in first.
            if not injected:
                injected.append(True)
                writer.execute("PRAGMA cache_size=2")
                writer.execute("BEGIN IMMEDIATE")
                for _ in range(60):
                    writer.execute("INSERT INTO t(x) VALUES (randomblob(3000))")
                cp.before_commit()
                writer.execute("COMMIT")
                records.append((cp(), writer.last_insert_rowid(),
                                read_wal_header(db.wal_path).salts))
            real_bump()

        monkeypatch.setattr(db, "_seq_bump", bump_after_a_writer)
        db.checkpoint("PASSIVE")
        assert injected
        answer, last, salts = records[0]
        assert salts[0] == (old[0] + 1) & 0xFFFFFFFF  # the writer restarted the WAL
        assert answer == f"{committed_txid + 1:016x}", answer
        assert rec.wakes == 1
        while db.sync():
            pass
        check_answers(db, tmp_path, [(answer, last)], 1)


def test_truncate_then_a_writer_first_gives_a_random_generation(tmp_path, monkeypatch):
    """DB.checkpoint("TRUNCATE") holds no barrier: a writer can commit between the truncation
    and the replicator's sequence bump. A connection that never restarted the WAL itself then
    starts it with random salts (not salt-1 + 1); a second commit in it, answered from the
    board before the replicator's next round, must still be contained in the TXID it gets.
    (Found by this test: the board used to order such a generation by chance.)"""
    for trial in range(24):
        d = tmp_path / f"trial-{trial}"
        d.mkdir()
        records = []
        with replicated(d) as (db, writer, cp, rec):
            rng = random.Random(trial)
            for _ in range(3):
                commit_rows(writer, cp, rng)
            db.sync()
            old = read_wal_header(db.wal_path).salts
            real_bump = db._seq_bump
            injected = []

            def bump_after_writers():
                if not injected:
                    injected.append(True)
                    for _ in range(2):
                        records.append(commit_rows(writer, cp, rng))
                real_bump()

            monkeypatch.setattr(db, "_seq_bump", bump_after_writers)
            db.checkpoint("TRUNCATE")
            monkeypatch.undo()
            assert injected
            new = read_wal_header(db.wal_path).salts
            while db.sync():
                pass
            older = ((new[0] - old[0]) & 0xFFFFFFFF) >= 0x80000000
            if older:
                # The second commit: its generation is stable, the board's committed
                # segment is the old generation, and salt-1 compares as older.
                check_answers(db, d, records, len(records))
                return
            check_answers(db, d, records, len(records))
    raise AssertionError("no trial drew a salt-1 that compares older (probability 2**-24)")


# -- 4. read_wal_index_end on a real WAL database ----------------------------------------------

def test_read_wal_index_end_matches_sqlite(tmp_path):
    path = tmp_path / "db.sqlite"
    conn = open_writer(path)
    frames = {}

    def hook(_conn, _name, n):
        frames["n"] = n
        return apsw.SQLITE_OK

    conn.set_wal_hook(hook)
    shm = os.open(str(path) + "-shm", os.O_RDONLY)
    try:
        seen = []
        for rows in (1, 3, 40, 1, 2):
            with conn:
                for _ in range(rows):
                    conn.execute("INSERT INTO t(x) VALUES (randomblob(1500))")
            end = read_wal_index_end(shm)
            assert end is not None
            salts, mx = end
            assert mx == frames["n"]
            assert salts == read_wal_header(str(path) + "-wal").salts
            seen.append(mx)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)  # grows with each commit

        old = read_wal_index_end(shm)[0]
        busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0]
        assert busy == 0 and log_frames == done
        with conn:
            conn.execute("INSERT INTO t(x) VALUES (randomblob(100))")
        salts, mx = read_wal_index_end(shm)
        assert salts[0] == (old[0] + 1) & 0xFFFFFFFF
        assert salts == read_wal_header(str(path) + "-wal").salts
        assert mx == frames["n"] and mx < seen[-1]
    finally:
        os.close(shm)
        conn.close()


def test_read_wal_index_end_rejects_bad_headers(tmp_path):
    path = tmp_path / "db.sqlite"
    conn = open_writer(path)
    with conn:
        conn.execute("INSERT INTO t(x) VALUES (1)")
    good = open(str(path) + "-shm", "rb").read(96)
    conn.close()

    def end_of(data):
        p = tmp_path / "fake-shm"
        p.write_bytes(data)
        fd = os.open(p, os.O_RDONLY)
        try:
            return read_wal_index_end(fd, attempts=2)
        finally:
            os.close(fd)

    assert end_of(good) is not None
    assert end_of(good[:95]) is None  # short
    assert end_of(bytes(96)) is None  # not initialised
    torn = bytearray(good)
    torn[48 + 16] ^= 1  # second copy's mxFrame differs
    assert end_of(bytes(torn)) is None
    both = bytearray(good)
    both[16] ^= 1
    both[48 + 16] ^= 1  # equal copies, wrong checksum
    assert end_of(bytes(both)) is None
