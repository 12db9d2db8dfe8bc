"""One poller for the processes that read one replica (``poll_share``, replication/poll_share.py).

Two databases of different names on the same replica and the same share file each have a
source of their own (as two processes of a replica server do), so one process holds both
sides of the lead lock here; the server tests (tests/test_replica_server.py) kill a real
leading worker and count real S3 requests. Real replicas: file:// and SeaweedFS."""
from __future__ import annotations

import gc
import threading
import time

import apsw
import pytest

import replication.vfs as lvfs
from replication.file_replica_client import FileReplicaClient
from replication.poll_share import PollShare
from tests.test_vfs import (  # noqa: F401 (store: the fixture)
    STEPS, _states, _write_l0, collections_off, count, forgotten, store, wait_for,
)

POLL = 0.1


def _open(url: str, name: str, share):
    return lvfs.connect(lvfs.uri(name, url, poll_interval=f"{int(POLL * 1000)}ms",
                                 poll_share=str(share)))


def _roles(conns) -> list[str]:
    return [lvfs.database(c).stats().poll_share for c in conns]


def test_one_source_lists_for_every_sharer_and_another_takes_over(tmp_path, store):  # noqa: F811 (the fixture)
    client, url = store
    states = _states(tmp_path, STEPS)
    ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 2, ts)
    share = tmp_path / "poll"
    conns = [_open(url, name, share) for name in ("a.db", "b.db", "c.db")]
    try:
        wait_for(lambda: sorted(_roles(conns)) == ["follower", "follower", "leader"], 5,
                 "one leader, two followers")
        leader = conns[_roles(conns).index("leader")]
        followers = [c for c in conns if c is not leader]
        stats = lvfs.database(leader).stats()
        assert stats.poll_leader_pid == lvfs.database(followers[0]).stats().poll_leader_pid

        # Idle: only the leader lists the store; the followers' lag is the leader's.
        before = {id(c): lvfs.database(c).stats().polls for c in conns}
        time.sleep(1.0)
        after = {id(c): lvfs.database(c).stats().polls for c in conns}
        assert 3 <= after[id(leader)] - before[id(leader)] <= 12, (before, after)
        for f in followers:
            assert after[id(f)] == before[id(f)], "a follower listed the store while idle"
            assert 0 <= lvfs.database(f).lag < 3 * POLL

        # A new TXID reaches the followers from the leader's listing: no listing of theirs.
        _write_l0(client, states, 3, 3, ts)
        t0 = time.monotonic()
        wait_for(lambda: all(count(f, "b") == 5 and lvfs.database(f).txid == 3
                             for f in followers), 5, "the followers to see TXID 3")
        assert time.monotonic() - t0 < POLL + 1.0  # a poll interval, then the fetches
        for f in followers:
            assert lvfs.database(f).stats().polls == before[id(f)]
            assert lvfs.database(f).stats().updates == 1

        # The leader goes away: another source leads within a poll interval and follows on.
        leader.close()
        conns.remove(leader)
        t0 = time.monotonic()
        wait_for(lambda: "leader" in _roles(conns), 5, "a new leader")
        assert time.monotonic() - t0 < POLL + 0.5
        _write_l0(client, states, 4, 5, ts)
        wait_for(lambda: all(lvfs.database(c).txid == 5 for c in conns), 5, "TXID 5")
        assert [count(c, "b") for c in conns] == [8, 8]
    finally:
        for c in conns:
            c.close()


def test_a_follower_behind_the_published_files_lists_for_itself(tmp_path, store):  # noqa: F811 (the fixture)
    """Explicit polls (read-your-writes) list from any process and publish what they find;
    a source further behind than the published files catches up by a listing of its own."""
    client, url = store
    states = _states(tmp_path, STEPS)
    ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 2, ts)
    share = tmp_path / "poll"
    # A poll interval of an hour: only the explicit polls below move anything.
    slow = [lvfs.connect(lvfs.uri(name, url, poll_interval="1h", poll_share=str(share)))
            for name in ("a.db", "b.db")]
    try:
        a, b = (lvfs.database(c) for c in slow)
        _write_l0(client, states, 3, 4, ts)
        assert a.poll() and a.txid == 4          # listed, and published
        polls = b.stats().polls
        assert b.poll() and b.txid == 4          # from a's listing
        assert b.stats().polls == polls
        assert not b.poll()                      # nothing newer anywhere: b lists
        assert b.stats().polls == polls + 1
    finally:
        for c in slow:
            c.close()


def test_without_poll_share_each_source_polls_itself(tmp_path, store):  # noqa: F811 (the fixture)
    client, url = store
    _write_l0(client, _states(tmp_path, STEPS), 1, 2, int(time.time() * 1000) - 60_000)
    conns = [lvfs.connect(lvfs.uri(n, url, poll_interval="100ms")) for n in ("a.db", "b.db")]
    try:
        time.sleep(0.6)
        for c in conns:
            stats = lvfs.database(c).stats()
            assert stats.poll_share == "off" and stats.poll_leader_pid == 0
            assert stats.polls >= 3
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("value", ["", "/nonexistent-dir/poll"])
def test_a_bad_poll_share_fails_the_open_by_name(tmp_path, value):
    _write_l0(FileReplicaClient(str(tmp_path / "r")), _states(tmp_path, STEPS), 1, 1, 0)
    with pytest.raises(apsw.CantOpenError, match="poll_share"):
        lvfs.connect(lvfs.uri("x.db", f"file://{tmp_path / 'r'}", poll_share=value))


def test_a_source_that_may_not_lead_only_follows(tmp_path, store):  # noqa: F811 (the fixture)
    """poll_lead=false (a replica server's supervisor): it never lists on its own tick, even
    with the lead free; it sees what the leader publishes, and its lag is the leader's."""
    client, url = store
    states = _states(tmp_path, STEPS)
    ts = int(time.time() * 1000) - 60_000
    _write_l0(client, states, 1, 2, ts)
    share = tmp_path / "poll"
    watcher = lvfs.connect(lvfs.uri("w.db", url, poll_interval="100ms", poll_share=str(share),
                                    poll_lead="false"))
    try:
        watch = lvfs.database(watcher)
        time.sleep(0.5)
        stats = watch.stats()
        assert (stats.poll_share, stats.polls, stats.lag) == ("follower", 0, -1.0)
        worker = _open(url, "a.db", share)
        try:
            wait_for(lambda: lvfs.database(worker).stats().poll_share == "leader", 5, "a leader")
            _write_l0(client, states, 3, 3, ts)
            wait_for(lambda: watch.txid == 3, 5, "the watcher to see TXID 3")
            assert watch.stats().polls == 0 and 0 <= watch.lag < 0.5
        finally:
            worker.close()  # nobody polls any more: the watcher's lag grows
        time.sleep(0.5)
        assert watch.lag >= 0.45 and watch.stats().poll_share == "follower"
    finally:
        watcher.close()


def test_poll_lead_needs_poll_share(tmp_path):
    _write_l0(FileReplicaClient(str(tmp_path / "r")), _states(tmp_path, STEPS), 1, 1, 0)
    with pytest.raises(apsw.CantOpenError, match="poll_lead without poll_share"):
        lvfs.connect(lvfs.uri("x.db", f"file://{tmp_path / 'r'}", poll_lead="false"))


def test_a_forked_child_does_not_keep_the_lead(tmp_path):
    """flock belongs to the open file, which fork shares: a child of the leading process
    (it has no poller thread) must not keep the lead once the leader closes."""
    import os
    import signal

    _write_l0(FileReplicaClient(str(tmp_path / "r")), _states(tmp_path, STEPS), 1, 1, 0)
    url, share = f"file://{tmp_path / 'r'}", tmp_path / "poll"
    first = _open(url, "a.db", share)
    wait_for(lambda: lvfs.database(first).stats().poll_share == "leader", 5, "a leader")
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only waits to be killed
        time.sleep(30)
        os._exit(0)
    second = None
    try:
        first.close()
        second = _open(url, "b.db", share)
        wait_for(lambda: lvfs.database(second).stats().poll_share == "leader", 2,
                 "the lead to be free while the child lives")
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        if second is not None:
            second.close()


# --- closing from a finalizer (a collection on any thread) --------------------------------------

def test_a_connection_collected_while_its_poller_publishes_does_not_deadlock(tmp_path,
                                                                            monkeypatch):
    """The leader's poller publishes its listing under the share's lock, which is not
    reentrant. A collection there that finalized the source's last connection closed the
    share on the poller: it waited for the lock its own thread held, forever, and the lead
    was never given up."""
    _write_l0(FileReplicaClient(str(tmp_path / "r")), _states(tmp_path, STEPS), 1, 1, 0)
    url, share = f"file://{tmp_path / 'r'}", tmp_path / "poll"
    armed, collected = threading.Event(), threading.Event()
    decode = PollShare._decode

    def collect_then_decode(self):  # under the share's lock
        if armed.is_set() and not collected.is_set() \
                and threading.current_thread().name == "litestream-vfs-poll gc-p1.db":
            gc.collect()  # finalizes the forgotten connection here
            collected.set()
        return decode(self)

    monkeypatch.setattr(PollShare, "_decode", collect_then_decode)
    with collections_off():
        source = forgotten(_open(url, "gc-p1.db", share))._source
        wait_for(lambda: source.share.leading, 5, "the lead")
        armed.set()
        assert collected.wait(10), "deadlocked: the finalizer waited for the share's lock"
    source._poller.join(10)
    assert not source._poller.is_alive()
    other = _open(url, "gc-p2.db", share)
    try:
        wait_for(lambda: lvfs.database(other).stats().poll_share == "leader", 5,
                 "the lead to be given up")
    finally:
        other.close()


def test_a_share_closed_by_a_thread_inside_it_closes_as_that_thread_leaves(tmp_path,
                                                                          monkeypatch):
    """PollShare.close() on a thread that is inside the share (a finalizer that ran there)
    must not wait for the share's lock, which that thread holds: the method it is in closes
    the share once it no longer uses the file."""
    path = str(tmp_path / "poll")
    share = PollShare(path)
    assert share.try_lead()
    decode = PollShare._decode

    def decode_then_close(self):
        published = decode(self)
        self.close()
        return published

    monkeypatch.setattr(PollShare, "_decode", decode_then_close)
    reader = threading.Thread(target=share.read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "deadlocked: close() waited for its own thread's lock"
    monkeypatch.undo()
    other = PollShare(path)
    try:
        assert other.try_lead(), "the closed share kept the lead"
    finally:
        other.close()
