"""Replicated databases as tests see them from outside the server: replica locations (file and
S3), their Litestream config, the real `litestream restore`, and process-tree helpers for
crashing a `sqlite-rest serve` (shared by the serve-replication tests, the crash-torture harness
and the benchmarks)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import apsw
import yaml

from tests.plugins.s3 import S3Server
from tests.plugins.server import ServerProcess

SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def make_db(path: Path, names=()) -> None:
    con = apsw.Connection(str(path))
    try:
        con.execute("PRAGMA journal_mode=WAL").fetchall()
        con.execute(SCHEMA)
        for name in names:
            con.execute("INSERT INTO items(name) VALUES (?)", (name,))
    finally:
        con.close()


def snapshot_ltx(db: Path) -> tuple[bytes, int]:
    """``db`` (a closed database: no WAL) as one LTX snapshot at TXID 1, and its timestamp."""
    import io

    from replication import ltx

    data = db.read_bytes()
    ps = int.from_bytes(data[16:18], "big") or 65536
    header = ltx.Header(ltx.HEADER_FLAG_NO_CHECKSUM, ps, len(data) // ps, 1, 1,
                        int(time.time() * 1000))
    buf = io.BytesIO()
    enc = ltx.Encoder(buf, header)
    for i in range(0, len(data), ps):
        if i // ps + 1 != ltx.lock_pgno(ps):
            enc.encode_page(i // ps + 1, data[i:i + ps])
    enc.close()
    return buf.getvalue(), header.timestamp


def snapshot_replica(db: Path, root: Path) -> str:
    """A file:// replica holding ``db`` as one LTX snapshot at TXID 1; its URL."""
    from replication.file_replica_client import FileReplicaClient

    FileReplicaClient(str(root)).write_ltx_file(0, 1, 1, *snapshot_ltx(db))
    return "file://" + str(root)


def db_rows(path: Path) -> list:
    con = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(r) for r in con.execute("SELECT id, name FROM items ORDER BY id")]
    finally:
        con.close()


def integrity(path: Path) -> str:
    con = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return con.execute("PRAGMA integrity_check").fetchall()[0][0]
    finally:
        con.close()


def remove_db_files(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def meta_dir(db: Path) -> Path:
    return db.parent / f".{db.name}-litestream"


def txid_of(value) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def descendants(pid: int) -> list:
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(x) for x in f.read().split()]
    except OSError:
        return out
    for child in children:
        out.append(child)
        out.extend(descendants(child))
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sigkill_tree(server: ServerProcess) -> None:
    """A crash: the supervisor and every process under it die at once (SIGKILL, by PID)."""
    pids = descendants(server.pid)
    for pid in [server.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(10)
    wait_for(lambda: all(_gone(p) for p in pids), 10, "the killed server's processes to go")


def stop_process(proc: subprocess.Popen) -> None:
    """A process a test (or a benchmark) started, stopped by its PID: SIGTERM, SIGKILL after
    30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- replicas --------------------------------------------------------------------------------

@dataclass
class Replica:
    """A replica location, seen from outside the server (what `litestream` would see)."""

    url: str
    litestream_env: dict                 # environment for the real litestream binary
    server_env: dict = field(default_factory=dict)  # extra environment for sqlite-rest serve
    root: Optional[Path] = None          # file replicas
    s3: Optional[S3Server] = None        # s3 replicas
    bucket: str = ""
    prefix: str = ""

    def spans(self, level: int = 0) -> list:
        """(min_txid, max_txid) of the level's LTX files, sorted."""
        names = []
        if self.root is not None:
            d = self.root / "ltx" / str(level)
            names = os.listdir(d) if d.is_dir() else []
        else:
            client = self.s3.client()
            try:
                pages = client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=f"{self.prefix}/{level:04x}/")
                names = [o["Key"].rsplit("/", 1)[1] for p in pages for o in p.get("Contents", [])]
            finally:
                client.close()
        out = []
        for name in names:
            m = re.fullmatch(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx", name)
            if m:
                out.append((int(m.group(1), 16), int(m.group(2), 16)))
        return sorted(out)

    def describe(self, last: int = 4) -> str:
        """The newest files of each level, with their listed size and the bytes a read gets
        (for the message of a failed restart)."""
        lines = []
        for level in (0, 1, 2, 3, 9):
            for low, high in self.spans(level)[-last:]:
                name = f"{low:016x}-{high:016x}.ltx"
                if self.root is not None:
                    path = self.root / "ltx" / str(level) / name
                    listed, got = path.stat().st_size, len(path.read_bytes())
                else:
                    client = self.s3.client()
                    try:
                        key = f"{self.prefix}/{level:04x}/{name}"
                        listed = client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
                        got = len(client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
                    finally:
                        client.close()
                lines.append(f"L{level}/{name}: listed {listed} B, read {got} B")
        return "\n".join(lines)

    def max_txid(self) -> int:
        return max((mx for level in (0, 1, 2, 3, 9) for _, mx in self.spans(level)), default=0)

    def restore(self, litestream: str, out: Path, *extra) -> subprocess.CompletedProcess:
        """The real `litestream restore` (must succeed) into ``out``."""
        proc = subprocess.run([litestream, "restore", *extra, "-o", str(out), self.url],
                              env=self.litestream_env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"litestream restore {extra} failed: {proc.stderr}"
        assert integrity(out) == "ok"
        return proc


def file_replica(tmp_path: Path, litestream_env: dict, name: str = "replica") -> Replica:
    root = tmp_path / name
    return Replica(url=f"file://{root}", litestream_env=litestream_env, root=root)


def s3_replica(s3: S3Server, bucket: Optional[str] = None, prefix: Optional[str] = None) -> Replica:
    bucket = bucket or s3.bucket
    prefix = prefix or s3.new_path("serve")
    keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": s3.region}
    return Replica(url=s3.url(bucket, prefix), litestream_env=s3.env(), server_env=keys, s3=s3,
                   bucket=bucket, prefix=prefix)


def write_config(path: Path, db: Path, replica: Replica, top: Optional[dict] = None,
                 **replica_keys) -> Path:
    """A Litestream config for one DB; ``replica_keys`` (snake_case) go in its ``replica:``."""
    replica_doc = {"url": replica.url, "retry-budget": "60s"}
    replica_doc.update({k.replace("_", "-"): v for k, v in replica_keys.items()})
    doc = {"dbs": [{"path": str(db), "replica": replica_doc}], **(top or {})}
    path.write_text(yaml.safe_dump(doc))
    return path
