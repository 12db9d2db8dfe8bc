"""A big local replica file decoded by several worker processes (replication/parallel_decode.py):
the same bytes and the same checks as one stream; a damaged page or a killed worker fails the
restore and leaves nothing. The size threshold is lowered so small files take the path."""
from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest

import replication.restore as restore_mod
from replication import ltx
from replication.defaults import RESTORE_PARALLEL_MIN_BYTES
from replication.errors import LTXError, ReplicationError
from replication.file_replica_client import FileReplicaClient
from replication.parallel_decode import ParallelFile
from replication.replica_client import client_from_url
from replication.restore import restore

from tests.test_range_reader import make_database
from tests.test_restore import (
    EXPECTED, ShortReads, copy_fixture_replica, leftovers, sha256,
    instant_rereads,  # noqa: F401 (a fixture)
)

PS = 4096


def snapshot_file(db: bytes, *, encoding: str = "frame", tracked: bool = False) -> bytes:
    """One snapshot LTX file of ``db``; ``tracked``: with the post-apply checksum."""
    pages = [(i // PS + 1, db[i:i + PS]) for i in range(0, len(db), PS)]
    pages = [(p, d) for p, d in pages if p != ltx.lock_pgno(PS)]
    flags = 0 if tracked else ltx.HEADER_FLAG_NO_CHECKSUM
    header = ltx.Header(flags, PS, len(pages), 1, 1, int(time.time() * 1000))
    buf = io.BytesIO()
    enc = ltx.Encoder(buf, header, encoding=encoding)
    for pgno, data in pages:
        enc.encode_page(pgno, data)
    enc.close(ltx.db_checksum(pages) if tracked else 0)
    return buf.getvalue()


def write_replica(root: Path, data: bytes) -> FileReplicaClient:
    client = FileReplicaClient(str(root))
    client.write_ltx_file(0, 1, 1, data, ltx.Header.unmarshal(data).timestamp)
    return client


def force_parallel(monkeypatch, workers: int = 3) -> list[str]:
    """Every file takes the parallel path, with ``workers`` workers whatever the CPU count;
    returns the list of the files decoded that way (filled as they are)."""
    monkeypatch.setattr(restore_mod, "RESTORE_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(restore_mod, "_decode_workers", lambda: workers)
    used = []
    real = ParallelFile.apply

    def spy(self, *a, **k):
        used.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(ParallelFile, "apply", spy)
    return used


@pytest.fixture
def parallel(monkeypatch) -> list[str]:
    return force_parallel(monkeypatch)


@pytest.fixture(scope="module")
def big_db(tmp_path_factory) -> bytes:
    return make_database(tmp_path_factory.mktemp("par") / "src.db", rows=6000)  # ~4 MiB


def children() -> set[int]:
    """PIDs of this process's children (any thread's), zombies included."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # the thread ended meanwhile (its children pass to another)
            continue
    return pids


@pytest.fixture(autouse=True)
def no_worker_left():
    """Every worker a restore forked has been waited for when it returns (SeaweedFS, a
    session fixture, may be a child too)."""
    before = children()
    yield
    assert children() <= before


# --- the same bytes as one stream -----------------------------------------------------------

def test_litestream_replica_restores_the_same_in_parallel(tmp_path, parallel):
    """Litestream's fixture replica (block encoding, several levels, tracked checksums)."""
    client = FileReplicaClient(str(copy_fixture_replica(tmp_path)))
    restore(client, str(tmp_path / "latest.db"))
    assert sha256(tmp_path / "latest.db") == EXPECTED["restore_latest"]["file_sha256"]
    for txid in sorted(EXPECTED["restore_by_txid"])[::5]:
        out = tmp_path / f"{txid}.db"
        restore(client, str(out), txid=int(txid, 16))
        assert sha256(out) == EXPECTED["restore_by_txid"][txid]["file_sha256"]
    assert parallel  # some files had enough pages to split


@pytest.mark.parametrize("encoding", ltx.ENCODINGS)
@pytest.mark.parametrize("tracked", [False, True])
def test_parallel_output_is_byte_identical_to_one_stream(tmp_path, big_db, monkeypatch,
                                                         encoding, tracked):
    client = write_replica(tmp_path / "replica", snapshot_file(big_db, encoding=encoding,
                                                               tracked=tracked))
    restore(client, str(tmp_path / "seq.db"), integrity_check="full")
    used = force_parallel(monkeypatch)
    seen = []
    restore(client, str(tmp_path / "par.db"), integrity_check="full",
            progress=lambda done, total: seen.append((done, total)))
    assert used == ["0/0000000000000001-0000000000000001.ltx"]
    assert (tmp_path / "par.db").read_bytes() == (tmp_path / "seq.db").read_bytes() == big_db
    assert seen[-1][0] == seen[-1][1] and all(a <= b for a, b in seen)


def test_small_files_and_one_cpu_stay_in_one_process(tmp_path, monkeypatch):
    """The fixture's files are far under the threshold; with one CPU nothing is split."""
    used = force_parallel(monkeypatch)
    monkeypatch.setattr(restore_mod, "RESTORE_PARALLEL_MIN_BYTES", RESTORE_PARALLEL_MIN_BYTES)
    client = FileReplicaClient(str(copy_fixture_replica(tmp_path)))
    assert 0 < max(i.size for i in restore_mod.calc_restore_plan(client)) \
        < RESTORE_PARALLEL_MIN_BYTES
    restore(client, str(tmp_path / "a.db"))
    assert used == []
    monkeypatch.undo()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert restore_mod._decode_workers() == 1


def test_forced_workers_on_one_cpu_give_the_same_bytes(tmp_path, big_db, monkeypatch):
    cpus = os.sched_getaffinity(0)
    client = write_replica(tmp_path / "replica", snapshot_file(big_db))
    used = force_parallel(monkeypatch, workers=2)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        restore(client, str(tmp_path / "out.db"))
    finally:
        os.sched_setaffinity(0, cpus)
    assert used and (tmp_path / "out.db").read_bytes() == big_db


def test_a_store_stream_is_decoded_in_one_process(tmp_path, big_db, monkeypatch, s3_server):
    """S3 bodies are streamed as they come (range_reader.py), never split."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    client = client_from_url(s3_server.url(s3_server.bucket, s3_server.new_path()))
    data = snapshot_file(big_db)
    client.write_ltx_file(0, 1, 1, data, ltx.Header.unmarshal(data).timestamp)
    used = force_parallel(monkeypatch)
    restore(client, str(tmp_path / "out.db"))
    assert used == [] and (tmp_path / "out.db").read_bytes() == big_db


@pytest.mark.usefixtures("instant_rereads")
@pytest.mark.parametrize("keep", [0, 4000])
def test_a_short_read_then_a_parallel_decode(tmp_path, parallel, keep):
    """A cut body (a stream) is read again; the whole file then comes as a local file."""
    client = ShortReads(str(copy_fixture_replica(tmp_path)), (0, 0x0d, 0x0d), keep, cuts=1)
    plan = restore_mod.calc_restore_plan(client)
    victim = max(plan, key=lambda info: info.size)
    client.victim = (victim.level, victim.min_txid, victim.max_txid)
    restore(client, str(tmp_path / "o.db"))
    assert sha256(tmp_path / "o.db") == EXPECTED["restore_latest"]["file_sha256"]
    assert client.reads == 2 and restore_mod._file_label(victim) in parallel


# --- failures: loud, and nothing left at the output path -------------------------------------

def _frame(data: bytes, pgno: int) -> tuple[int, int]:
    return ltx.decode_page_index(data)[pgno]


@pytest.mark.parametrize("damage", ["payload", "pgno", "index", "trailer"])
def test_a_damaged_file_fails_the_parallel_restore(tmp_path, big_db, parallel, damage):
    data = bytearray(snapshot_file(big_db))
    pages = len(big_db) // PS
    offset, size = _frame(bytes(data), pages // 2)  # the middle of the second of 3 runs
    if damage == "payload":
        data[offset + size - 12] ^= 0xFF   # inside the LZ4 block, before EndMark + checksum
        expect = "file checksum mismatch"  # a literal: decodes, so the joined CRC finds it
    elif damage == "pgno":
        data[offset + 3] ^= 0x01           # the page header's page number
        expect = "nonsequential page numbers|out-of-order"
    elif damage == "index":
        data[-40] ^= 0x01                  # near the end of the page index
        expect = "checksum mismatch|page index"
    else:
        data[-1] ^= 0x01                   # the stored FileChecksum
        expect = "checksum mismatch"
    client = write_replica(tmp_path / "replica", bytes(data))
    out = tmp_path / "out.db"
    with pytest.raises(LTXError, match=expect):
        restore(client, str(out))
    assert leftovers(out) == []
    if damage in ("payload", "pgno", "trailer"):
        assert parallel  # the workers found it, not a fallback to one stream


def test_a_killed_worker_fails_the_restore(tmp_path, big_db, monkeypatch):
    client = write_replica(tmp_path / "replica", snapshot_file(big_db))
    force_parallel(monkeypatch, workers=2)
    test_pid, real = os.getpid(), restore_mod._apply_pages

    def slow_in_workers(fd, dec, page_size, written, report=None):
        """Workers pause after each run they report, so one is surely alive to kill."""
        def paced():
            report()
            time.sleep(0.2)
        return real(fd, dec, page_size, written, paced if os.getpid() != test_pid else report)

    monkeypatch.setattr(restore_mod, "_apply_pages", slow_in_workers)
    killed, others = [], children()

    def kill_one(done, total):
        if not killed:  # at the first report: both workers are in their first pause
            killed.append(min(children() - others))
            os.kill(killed[0], signal.SIGKILL)

    out = tmp_path / "out.db"
    with pytest.raises(LTXError, match=r"restore worker for pages .* was killed by signal 9"):
        restore(client, str(out), progress=kill_one)
    assert killed
    assert leftovers(out) == []


def test_a_restore_in_a_thread_forks_its_workers_from_there(tmp_path, big_db, parallel):
    """Hydration restores in a thread of a server process: the workers start from it."""
    import threading
    client = write_replica(tmp_path / "replica", snapshot_file(big_db))
    errors = []
    thread = threading.Thread(target=lambda: _restore_or_record(client, tmp_path / "o.db",
                                                                 errors))
    thread.start()
    thread.join(60)
    assert errors == [] and parallel and (tmp_path / "o.db").read_bytes() == big_db


def _restore_or_record(client, out: Path, errors: list) -> None:
    try:
        restore(client, str(out))
    except BaseException as e:  # the assertion in the test names it
        errors.append(e)


def test_a_restore_stopped_by_its_progress_callback_stops_its_workers(tmp_path, big_db,
                                                                      parallel):
    """Hydration stops a restore by raising from its progress callback."""
    client = write_replica(tmp_path / "replica", snapshot_file(big_db))

    def stop(done, total):
        raise InterruptedError("closed")

    out = tmp_path / "out.db"
    with pytest.raises(ReplicationError, match="closed"):  # an OSError: "cannot write"
        restore(client, str(out), progress=stop)
    assert parallel and leftovers(out) == []
