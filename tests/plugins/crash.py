"""The crash-torture harness (issue #9): kill a replicating `sqlite-rest serve` under a write
flood, start it again, and prove that nothing acknowledged is lost.

One trial: four clients POST unique rows as fast as the server takes them (every 50th request
is a two-row insert that must be refused whole); after a random 0.3-2.5 s one of
`KILL_TARGETS` is SIGKILLed; the database is kept, or lost (deleted with its -wal and -shm, the
meta dir kept: a restore before serve); the server is started again at once, while the old
processes may still be dying. Then, from what the server now serves:

- every write acknowledged with a 2xx is there (on a lost database: every write acknowledged
  more than `lost_db_bound_s` before the kill: what the replica may lag behind);
- no row of a refused request is there, and no row that was never sent;
- no process of the killed server is left.

At the end (`Torture.finish`) the server is stopped and the real `litestream restore` of the
replica must equal what it served, integrity ok. `tests/test_crash_torture.py` runs a few dozen
trials per backend in CI; `bench/bench_crash.py` runs hundreds and records the results.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx

from tests.plugins.replicas import (Replica, _gone, db_rows, descendants, make_db,
                                    remove_db_files, write_config)
from tests.plugins.server import ServerProcess, _children, start_server

#: What a trial kills: the supervisor's whole process group (`kill -9 -PGID`, as a process
#: manager does), the supervisor alone, the HTTP server (granian master) alone, or one worker
#: first and the group a moment later.
KILL_TARGETS = ("group", "supervisor", "http-server", "worker")
CLIENTS = 4
#: After a kill, how long responses already under way may still reach clients (seconds).
KILL_SETTLE_S = 0.1
REFUSED_EVERY = 50  # every Nth request of a client is a two-row insert that must fail whole


@dataclass
class Ledger:
    """What the clients were told."""

    acked: dict = field(default_factory=dict)   # name -> time.monotonic() of its 2xx
    refused: set = field(default_factory=set)   # names of requests answered 4xx
    unknown: set = field(default_factory=set)   # names of requests that got no answer (or 5xx)


class Flood:
    """`CLIENTS` threads POSTing unique rows back to back until `stop()`."""

    def __init__(self, base_url: str, tag: str, ledger: Ledger):
        self.base_url, self.tag, self.ledger = base_url, tag, ledger
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(CLIENTS)]

    def start(self) -> "Flood":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _client(self, i: int) -> None:
        n = 0
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            while not self._stop.is_set():
                n += 1
                name = f"{self.tag}-{i}-{n}"
                if n % REFUSED_EVERY == 0:  # NOT NULL fails: the first row must not stay
                    body: object = [{"name": name}, {"name": None}]
                else:
                    body = {"name": name}
                try:
                    status = http.post("/items", json=body,
                                       headers={"Prefer": "return=minimal"}).status_code
                except httpx.HTTPError:
                    status = None
                with self._lock:
                    if status is not None and 200 <= status < 300:
                        self.ledger.acked[name] = time.monotonic()
                    elif status is not None and 400 <= status < 500:
                        self.ledger.refused.add(name)
                    else:
                        self.ledger.unknown.add(name)
                if status is None:
                    time.sleep(0.02)  # the server is gone or restarting


@dataclass
class TrialResult:
    trial: int
    target: str
    lost_db: bool
    acked: int
    lost: list               # acknowledged names the restarted server does not serve
    refused_served: list     # names of refused requests it serves
    never_sent_served: list  # names it serves that no client ever sent
    survivors: list          # pids of the killed server still alive after the restart
    lost_within_bound: int   # lost-database trials: acknowledged within the bound, not restored
    restart_s: float

    @property
    def ok(self) -> bool:
        return not (self.lost or self.refused_served or self.never_sent_served or self.survivors)


class Torture:
    """One database, one replica, one server restarted after every trial."""

    def __init__(self, workdir: Path, replica: Replica, *, seed: int = 0,
                 lost_db_bound_s: float = 1.0, server_env: Optional[dict] = None):
        self.workdir = workdir
        self.replica = replica
        self.rng = random.Random(seed)
        self.lost_db_bound_s = lost_db_bound_s
        self.server_env = {**replica.server_env, **(server_env or {})}
        self.db = workdir / "app.db"
        make_db(self.db)
        self.config = write_config(workdir / "litestream.yml", self.db, replica)
        self.ledger = Ledger()
        self.may_exist: set = set()   # acknowledged or unanswered: may be served
        self.must_exist: set = set()  # acknowledged and not excused by a lost database
        self.server = self._start()

    def _start(self) -> ServerProcess:
        return start_server(self.db, "--replication-enabled", "--replication-config",
                            self.config, "--security-allow-table", "items", "--workers", "2",
                            env=self.server_env, new_session=True)

    def _kill(self, target: str, flood_more) -> None:
        server = self.server
        if target == "supervisor":
            os.kill(server.pid, signal.SIGKILL)
        elif target == "http-server":
            os.kill(_children(server.pid)[0], signal.SIGKILL)
            # The supervisor must notice and stop by itself, failed.
            server.proc.wait(60)
            assert server.proc.returncode != 0, "a lost HTTP server must fail the supervisor"
        else:
            if target == "worker":
                workers = server.worker_pids()
                if workers:
                    os.kill(self.rng.choice(workers), signal.SIGKILL)
                flood_more()
            os.killpg(server.pid, signal.SIGKILL)

    def trial(self, number: int, target: str, lost_db: bool) -> TrialResult:
        before = dict(self.ledger.acked)
        # The clients keep going through the kill and the restart, as real ones do: whatever
        # of the old server still answers is held to the same promise.
        flood = Flood(self.server.base_url, f"t{number}", self.ledger).start()
        try:
            time.sleep(self.rng.uniform(0.3, 2.5))
            old = [self.server.pid, *descendants(self.server.pid)]
            self._kill(target, lambda: time.sleep(self.rng.uniform(0.3, 1.0)))
            killed_at = time.monotonic()
            self.server.proc.wait(60)
            os.unlink(self.server.log_path)
            if lost_db:
                remove_db_files(self.db)
            started = time.monotonic()
            try:
                self.server = self._start()
            except RuntimeError as exc:
                raise RuntimeError(f"trial {number} ({target}, lost db: {lost_db}): {exc}\n"
                                   f"the replica's newest files:\n{self.replica.describe()}"
                                   ) from None
            restart_s = time.monotonic() - started
            time.sleep(self.rng.uniform(0.2, 0.5))
        finally:
            flood.stop()
        survivors = [p for p in old if not _gone(p)]

        new_acked = {n: t for n, t in self.ledger.acked.items() if n not in before}
        self.may_exist |= set(new_acked) | self.ledger.unknown
        self.must_exist |= set(new_acked)
        served = set(self.served())
        lost_within = set()
        if lost_db:  # the local database is gone: what the replica lagged behind may be too
            window = (killed_at - self.lost_db_bound_s, killed_at + KILL_SETTLE_S)
            lost_within = {n for n, t in new_acked.items()
                           if window[0] < t <= window[1] and n not in served}
        self.must_exist -= lost_within
        self.may_exist -= lost_within
        return TrialResult(
            trial=number, target=target, lost_db=lost_db, acked=len(new_acked),
            lost=sorted(self.must_exist - served), refused_served=sorted(self.ledger.refused & served),
            never_sent_served=sorted(served - self.may_exist), survivors=survivors,
            lost_within_bound=len(lost_within), restart_s=restart_s)

    def served(self) -> list:
        rows = httpx.get(self.server.base_url + "/items", params={"select": "name"},
                         headers={"Accept": "text/csv"}, timeout=60)
        rows.raise_for_status()
        return rows.text.splitlines()[1:]

    def finish(self, litestream: str) -> tuple[set, set]:
        """Stop the server gracefully; (what it served, what the real litestream restores).
        Also checks that the replica's TXIDs are contiguous from 1 over all its levels."""
        served = set(self.served())
        assert self.server.stop(60) == 0, self.server.logs()[-3000:]
        os.unlink(self.server.log_path)
        covered = 0
        for low, high in sorted(span for level in (0, 1, 2, 3, 9)
                                for span in self.replica.spans(level)):
            assert low <= covered + 1, f"TXIDs {covered + 1:016x}..{low - 1:016x} are missing"
            covered = max(covered, high)
        assert covered == self.replica.max_txid() > 0
        out = self.workdir / "litestream-restored.db"
        self.replica.restore(litestream, out)
        return served, {name for _id, name in db_rows(out)}

    def close(self) -> None:
        if self.server.proc.poll() is None:
            try:
                os.killpg(self.server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.server.proc.wait(30)


def plan(trials: int, seed: int) -> list[tuple[str, bool]]:
    """(kill target, lose the database?) per trial: every target with and without a loss."""
    rng = random.Random(seed)
    return [(KILL_TARGETS[i % len(KILL_TARGETS)], rng.random() < 0.5) for i in range(trials)]
