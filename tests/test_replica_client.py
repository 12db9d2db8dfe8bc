"""The replica-client seam: one contract, run against both backends (file and real S3)."""
from __future__ import annotations

import io
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from replication import ltx
from replication.config import parse_config
from replication.errors import ReplicaClientError, ReplicationError
from replication.file_replica_client import FileReplicaClient
from replication.replica_client import (
    AccessDeniedError, BucketNotFoundError, FileInfo, NotFoundError, UnreachableError,
    client_from_config, client_from_url, fetch_ltx_header, fetch_page, fetch_page_index,
    format_rfc3339_nano, ltx_file_path, ltx_level_dir, ms_to_datetime, parse_rfc3339,
)
from replication.s3_replica_client import S3ReplicaClient, normalize_endpoint, parse_s3_url

from tests.plugins.fault_proxy import FaultProxy, HttpFault
from tests.plugins.litestream import FIXTURE_0517

TS1 = 1700000000123       # 2023-11-14T22:13:20.123Z
TS2 = 1700000001100       # …21.1Z
TS3 = 1700000002000       # …22Z


def blob(tag: int, size: int = 300) -> bytes:
    return bytes([tag]) * size


@pytest.fixture
def client(replica_client):
    """Both backends (tests/conftest.py), one contract."""
    return replica_client


def put_junk(client, level: int, name: str) -> None:
    """A foreign object inside a level directory/prefix (must be ignored by listings)."""
    if isinstance(client, FileReplicaClient):
        d = Path(client.level_dir(level))
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"junk")
    else:
        client.s3.put_object(Bucket=client.bucket, Key=client.level_prefix(level) + name, Body=b"junk")


def sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the contract ------------------------------------------------------------------------------

def test_write_list_sorted_and_foreign_names_ignored(client):
    client.write_ltx_file(0, 3, 3, blob(3), TS3)
    client.write_ltx_file(0, 1, 1, blob(1, 100), TS1)
    client.write_ltx_file(0, 2, 2, blob(2, 200), TS2)
    client.write_ltx_file(1, 1, 3, blob(9, 50), TS3)
    client.write_ltx_file(9, 1, 3, blob(8, 70), TS3)
    put_junk(client, 0, "notes.txt")
    put_junk(client, 0, "0000000000000004-0000000000000004.ltx.tmp")
    put_junk(client, 0, "0000000000000004-0000000000000004.LTX")

    l0 = list(client.ltx_files(0))
    assert [(f.level, f.min_txid, f.max_txid, f.size) for f in l0] == [
        (0, 1, 1, 100), (0, 2, 2, 200), (0, 3, 3, 300)]
    assert all(f.created_at.tzinfo is not None for f in l0)
    assert [(f.min_txid, f.max_txid, f.size) for f in client.ltx_files(1)] == [(1, 3, 50)]
    assert [(f.min_txid, f.max_txid, f.size) for f in client.ltx_files(9)] == [(1, 3, 70)]
    assert list(client.ltx_files(2)) == []


def test_seek_returns_files_from_min_txid(client):
    for txid in range(1, 6):
        client.write_ltx_file(0, txid, txid, blob(txid), TS1 + txid)
    client.write_ltx_file(0, 6, 9, blob(6), TS3)
    assert [f.min_txid for f in client.ltx_files(0, seek=3)] == [3, 4, 5, 6]
    assert [f.min_txid for f in client.ltx_files(0, seek=6)] == [6]
    assert list(client.ltx_files(0, seek=10)) == []


def test_sort_ties_by_max_txid(client):
    client.write_ltx_file(1, 1, 9, blob(1), TS1)
    client.write_ltx_file(1, 1, 3, blob(2), TS1)
    assert [(f.min_txid, f.max_txid) for f in client.ltx_files(1)] == [(1, 3), (1, 9)]


def test_open_whole_range_and_to_end(client):
    data = bytes(range(256)) * 4
    client.write_ltx_file(0, 1, 1, data, TS1)
    with client.open_ltx_file(0, 1, 1) as f:
        assert f.read() == data
    f = client.open_ltx_file(0, 1, 1, offset=100, size=28)
    assert f.read() == data[100:128]
    f.close()
    f = client.open_ltx_file(0, 1, 1, offset=1000)
    assert f.read() == data[1000:]
    f.close()
    f = client.open_ltx_file(0, 1, 1, offset=0, size=1)
    assert f.read() == data[:1]
    f.close()


def test_open_streams_in_chunks(client):
    data = os.urandom(3 * 1024 * 1024)
    client.write_ltx_file(2, 5, 7, data, TS1)
    f = client.open_ltx_file(2, 5, 7)
    parts = []
    while chunk := f.read(65536):
        assert len(chunk) <= 65536
        parts.append(chunk)
    f.close()
    assert b"".join(parts) == data


def test_open_missing_raises_not_found(client):
    with pytest.raises(NotFoundError) as e:
        client.open_ltx_file(0, 7, 7)
    assert "0000000000000007-0000000000000007.ltx" in str(e.value)
    assert isinstance(e.value, ReplicaClientError)


def test_write_from_file_object_and_overwrite(client):
    client.write_ltx_file(0, 1, 1, io.BytesIO(blob(1, 5000)), TS1)
    info = client.write_ltx_file(0, 1, 1, io.BytesIO(blob(2, 4000)), TS2)
    assert info == FileInfo(0, 1, 1, 4000, ms_to_datetime(TS2))
    assert [f.size for f in client.ltx_files(0)] == [4000]
    with client.open_ltx_file(0, 1, 1) as f:
        assert f.read() == blob(2, 4000)


def test_timestamps_from_metadata_are_the_header_timestamps(client):
    client.write_ltx_file(0, 1, 1, blob(1), TS1)
    client.write_ltx_file(0, 2, 2, blob(2), TS2)
    client.write_ltx_file(0, 3, 3, blob(3), TS3)
    exact = [f.created_at for f in client.ltx_files(0, use_metadata=True)]
    assert exact == [ms_to_datetime(TS1), ms_to_datetime(TS2), ms_to_datetime(TS3)]
    assert exact[0] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)
    plain = [f.created_at for f in client.ltx_files(0)]
    if isinstance(client, FileReplicaClient):
        assert plain == exact                    # the file backend's mtime is the header time
    else:                                        # S3 LastModified: the upload time
        now = datetime.now(timezone.utc)
        assert all(abs(t - now) < timedelta(minutes=5) for t in plain)


def test_delete_files_and_missing_is_not_an_error(client):
    infos = [client.write_ltx_file(0, t, t, blob(t), TS1) for t in (1, 2, 3)]
    client.write_ltx_file(1, 1, 3, blob(9), TS1)
    client.delete_ltx_files(infos[:2])
    assert [f.min_txid for f in client.ltx_files(0)] == [3]
    client.delete_ltx_files(infos[:2])          # already gone
    client.delete_ltx_files([])
    assert [f.min_txid for f in client.ltx_files(1)] == [1]


def test_delete_all_removes_every_level(client):
    for level in (0, 1, 9):
        client.write_ltx_file(level, 1, 1, blob(level), TS1)
    client.delete_all()
    for level in range(10):
        assert list(client.ltx_files(level)) == []
    client.delete_all()                          # idempotent
    client.write_ltx_file(0, 1, 1, blob(1), TS1)  # still usable
    assert len(list(client.ltx_files(0))) == 1


def test_operations_are_counted_in_litestream_metrics(client):
    labels = {"replica_type": client.type}

    def snapshot():
        return {op: (sample("litestream_replica_operation_total", {**labels, "operation": op}),
                     sample("litestream_replica_operation_bytes", {**labels, "operation": op}))
                for op in ("GET", "PUT", "DELETE", "LIST")}

    before = snapshot()
    errors_before = sample("litestream_replica_operation_errors_total",
                           {**labels, "operation": "GET", "code": "NotFound" if client.type == "file" else "NoSuchKey"})
    info = client.write_ltx_file(0, 1, 1, blob(1, 1234), TS1)
    list(client.ltx_files(0))
    client.open_ltx_file(0, 1, 1).close()
    client.delete_ltx_files([info])
    with pytest.raises(NotFoundError):
        client.open_ltx_file(0, 1, 1)
    after = snapshot()
    for op in ("GET", "PUT", "DELETE", "LIST"):
        assert after[op][0] >= before[op][0] + 1, op
    assert after["PUT"][1] - before["PUT"][1] == 1234
    assert after["GET"][1] - before["GET"][1] == 1234
    errors_after = sample("litestream_replica_operation_errors_total",
                          {**labels, "operation": "GET", "code": "NotFound" if client.type == "file" else "NoSuchKey"})
    assert errors_after == errors_before + 1
    assert sample("litestream_replica_operation_duration_seconds_count", {**labels, "operation": "PUT"}) >= 1


def test_page_level_reads_match_litestreams_files(client, litestream_vectors):
    for level, encoding in ((0, "block"), (1, "frame")):
        vectors = litestream_vectors[encoding]
        data = vectors.incremental
        dec = ltx.Decoder(io.BytesIO(data), name="real.ltx")
        want_pages = dict(dec.pages())
        h = dec.header
        dec.close()
        info = client.write_ltx_file(level, h.min_txid, h.max_txid, data, h.timestamp)
        header = fetch_ltx_header(client, level, h.min_txid, h.max_txid)
        assert (header.page_size, header.commit, header.timestamp) == (h.page_size, h.commit,
                                                                       h.timestamp)
        index = fetch_page_index(client, info)
        assert index == ltx.decode_page_index(data)
        for pgno, (offset, size) in index.items():
            got_pgno, page = fetch_page(client, level, h.min_txid, h.max_txid, offset, size,
                                        h.page_size)
            assert got_pgno == pgno and page == want_pages[pgno]
            assert page == vectors.db_at_2[(pgno - 1) * h.page_size:pgno * h.page_size]


# --- layouts ------------------------------------------------------------------------------------

def test_file_layout_is_litestreams(tmp_path):
    c = FileReplicaClient(str(tmp_path / "r"))
    c.write_ltx_file(9, 1, 0x1f, blob(1), TS2)
    path = tmp_path / "r" / "ltx" / "9" / "0000000000000001-000000000000001f.ltx"
    assert path.read_bytes() == blob(1)
    assert path.stat().st_mtime_ns == TS2 * 1_000_000
    assert not list(path.parent.glob("*.tmp"))
    assert ltx_level_dir("/x/", 3) == "/x/ltx/3"
    assert ltx_file_path("/x", 0, 1, 2) == "/x/ltx/0/0000000000000001-0000000000000002.ltx"


def test_file_lists_litestreams_own_replica_with_mtimes(tmp_path):
    """The fixture written by Litestream lists with the expected shape (levels 0, 1, 2, 9)."""
    root = FIXTURE_0517 / "replica"
    c = client_from_url(f"file://{root}")
    levels = {level: list(c.ltx_files(level)) for level in (0, 1, 2, 9)}
    assert len(levels[0]) == 25 and levels[0][0].min_txid == 1 and levels[0][-1].max_txid == 0x19
    assert [(f.min_txid, f.max_txid) for f in levels[2]] == [(1, 9), (0xa, 0x13), (0x14, 0x19)]
    assert len(levels[9]) == 4
    for f in levels[0]:
        assert f.size == (root / "ltx" / "0" / f.filename).stat().st_size


def test_s3_layout_and_timestamp_metadata(s3_server):
    bucket = s3_server.new_bucket()
    c = client_from_url(s3_server.url(bucket, "fixture/src.db"),
                        access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    c.write_ltx_file(0, 1, 1, blob(1), TS1)
    c.write_ltx_file(9, 1, 0xab, blob(2), TS3)
    c.write_ltx_file(1, 2, 2, blob(3), TS2)
    raw = s3_server.client()
    keys = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["fixture/src.db/0000/0000000000000001-0000000000000001.ltx",
                    "fixture/src.db/0001/0000000000000002-0000000000000002.ltx",
                    "fixture/src.db/0009/0000000000000001-00000000000000ab.ltx"]
    meta = {k: raw.head_object(Bucket=bucket, Key=k)["Metadata"] for k in keys}
    assert meta[keys[0]] == {"litestream-timestamp": "2023-11-14T22:13:20.123Z"}
    assert meta[keys[1]] == {"litestream-timestamp": "2023-11-14T22:13:21.1Z"}
    assert meta[keys[2]] == {"litestream-timestamp": "2023-11-14T22:13:22Z"}


def test_s3_multipart_above_part_size(s3_server):
    bucket = s3_server.new_bucket()
    c = client_from_url(s3_server.url(bucket, "db") + "&part-size=5MiB",
                        access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    assert c.part_size == 5 * 1024 * 1024
    data = os.urandom(11 * 1024 * 1024)
    c.write_ltx_file(9, 1, 4, data, TS1)
    [info] = c.ltx_files(9, use_metadata=True)
    assert (info.size, info.created_at) == (len(data), ms_to_datetime(TS1))
    with c.open_ltx_file(9, 1, 4, offset=6 * 1024 * 1024, size=10) as f:
        assert f.read() == data[6 * 1024 * 1024:6 * 1024 * 1024 + 10]


def test_s3_delete_in_batches(s3_server, monkeypatch):
    import replication.s3_replica_client as s3mod

    monkeypatch.setattr(s3mod, "DELETE_BATCH_SIZE", 7)  # 1000 in production; 7 keeps this fast
    bucket = s3_server.new_bucket()
    c = client_from_url(s3_server.url(bucket, "db"),
                        access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    for t in range(1, 31):
        c.write_ltx_file(0, t, t, b"x", TS1)
    before = sample("litestream_replica_operation_total", {"replica_type": "s3", "operation": "DELETE"})
    c.delete_ltx_files(list(c.ltx_files(0))[:20])
    after = sample("litestream_replica_operation_total", {"replica_type": "s3", "operation": "DELETE"})
    assert after - before == 3  # 7 + 7 + 6
    assert [f.min_txid for f in c.ltx_files(0)] == list(range(21, 31))


# --- failures ---------------------------------------------------------------------------------

def test_s3_bad_secret_is_access_denied_with_hint_and_not_retried(s3_server):
    bucket = s3_server.new_bucket()
    c = client_from_url(s3_server.url(bucket, "db"),
                        access_key_id=s3_server.access_key, secret_access_key="wrong-secret")
    started = time.monotonic()
    for call in (c.init, lambda: list(c.ltx_files(0)), lambda: c.write_ltx_file(0, 1, 1, b"x", TS1)):
        with pytest.raises(AccessDeniedError) as e:
            call()
        assert "access-key-id/secret-access-key" in e.value.hint
        assert "403" in str(e.value) or "SignatureDoesNotMatch" in str(e.value)
    assert time.monotonic() - started < 5


def test_s3_unknown_access_key_is_access_denied(s3_server):
    c = client_from_url(s3_server.url(s3_server.new_bucket(), "db"),
                        access_key_id="nobody", secret_access_key="nothing-at-all")
    with pytest.raises(AccessDeniedError, match="InvalidAccessKeyId"):
        list(c.ltx_files(0))


def test_s3_missing_bucket_is_clear(s3_server):
    c = client_from_url(s3_server.url("no-such-bucket-here", "db"),
                        access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    with pytest.raises(BucketNotFoundError, match="no-such-bucket-here") as e:
        c.init()
    assert "create the bucket" in e.value.hint
    with pytest.raises(BucketNotFoundError):
        list(c.ltx_files(0))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def test_s3_unreachable_endpoint_fails_fast_naming_it():
    port = _closed_port()
    c = client_from_url(f"s3://bucket/db?endpoint=http://127.0.0.1:{port}&forcePathStyle=true",
                        access_key_id="a", secret_access_key="b")
    before = sample("sqlite_rest_replica_operation_retries_total", {"replica_type": "s3", "operation": "LIST"})
    started = time.monotonic()
    with pytest.raises(UnreachableError) as e:
        list(c.ltx_files(0))
    elapsed = time.monotonic() - started
    assert f"127.0.0.1:{port}" in str(e.value)
    assert "endpoint" in e.value.hint
    assert elapsed < 20, elapsed
    after = sample("sqlite_rest_replica_operation_retries_total", {"replica_type": "s3", "operation": "LIST"})
    assert after - before == c.max_attempts - 1  # transient errors are retried, and counted


def test_unknown_scheme_names_it_and_the_supported_ones():
    with pytest.raises(ReplicationError) as e:
        client_from_url("ftp://host/x")
    assert "'ftp'" in str(e.value) and "file" in e.value.hint and "s3" in e.value.hint
    with pytest.raises(ReplicationError, match="does not implement"):
        client_from_url("gs://bucket/x")
    with pytest.raises(ReplicationError, match="no scheme"):
        client_from_url("/just/a/path")


def test_file_url_with_host_is_rejected():
    with pytest.raises(ReplicationError) as e:
        client_from_url("file://work/x")
    assert "file:///" in e.value.hint


# --- URL forms and config -----------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("s3://mybkt/a/b?endpoint=http://127.0.0.1:9000&region=eu-west-1&forcePathStyle=false",
     dict(bucket="mybkt", path="a/b", endpoint="http://127.0.0.1:9000", region="eu-west-1", force_path_style=False)),
    ("s3://mybkt/a?skip-verify=true&sign-payload=false&require-content-md5=false&storage-class=STANDARD_IA"
     "&part-size=10MB&concurrency=3",
     dict(skip_verify=True, sign_payload=False, require_content_md5=False, storage_class="STANDARD_IA",
          part_size=10_000_000, concurrency=3)),
    ("s3://mybkt/a?skipVerify=1&signPayload=f&requireContentMD5=FALSE&storageClass=GLACIER&partSize=1MiB",
     dict(skip_verify=True, sign_payload=False, require_content_md5=False, storage_class="GLACIER",
          part_size=1 << 20)),
    ("s3://mybkt.s3.eu-central-1.amazonaws.com/db", dict(bucket="mybkt", region="eu-central-1", path="db",
                                                         endpoint=None, force_path_style=False)),
    ("s3://mybkt.minio.internal:9000/db", dict(bucket="mybkt", endpoint="http://minio.internal:9000",
                                               force_path_style=True)),
    ("s3://mybkt.nyc3.digitaloceanspaces.com/db", dict(bucket="mybkt", region="nyc3",
                                                       endpoint="https://nyc3.digitaloceanspaces.com")),
    ("s3://mybkt.s3.us-west-002.backblazeb2.com/db", dict(bucket="mybkt", region="us-west-002",
                                                          endpoint="https://s3.us-west-002.backblazeb2.com")),
    ("s3://mybkt.s3.filebase.com/db", dict(bucket="mybkt", endpoint="https://s3.filebase.com")),
    ("s3://mybkt.s3.fr-par.scw.cloud/db", dict(bucket="mybkt", region="fr-par", endpoint="https://s3.fr-par.scw.cloud")),
    ("s3://mybkt.localhost:9000/db", dict(bucket="mybkt", endpoint="http://localhost:9000", region="us-east-1")),
    ("s3://mybkt", dict(bucket="mybkt", path=".")),          # Litestream's quirk: path "."
    ("s3://mybkt/", dict(bucket="mybkt", path="")),
    ("s3://mybkt//x/../y/", dict(path="y")),
    ("s3://arn:aws:s3:us-west-2:123456789012:accesspoint/ap1/db",
     dict(bucket="arn:aws:s3:us-west-2:123456789012:accesspoint/ap1", region="us-west-2", path="db")),
])
def test_s3_url_forms(url, expected):
    s = parse_s3_url(url)
    for key, value in expected.items():
        assert getattr(s, key) == value, (key, s)


def test_s3_defaults_with_endpoint(monkeypatch):
    monkeypatch.delenv("LITESTREAM_S3_ENDPOINT", raising=False)
    c = client_from_url("s3://b/p?endpoint=127.0.0.1:9000")
    assert (c.endpoint, c.region, c.force_path_style, c.sign_payload, c.require_content_md5) == (
        "http://127.0.0.1:9000", "us-east-1", True, True, True)
    assert client_from_url("s3://b/p").force_path_style is False
    monkeypatch.setenv("LITESTREAM_S3_ENDPOINT", "http://localhost:7000")
    c = client_from_url("s3://b/p")
    assert (c.endpoint, c.force_path_style) == ("http://localhost:7000", True)
    assert normalize_endpoint("s3.example.com") == "https://s3.example.com"
    assert normalize_endpoint("10.1.2.3:9000") == "http://10.1.2.3:9000"
    assert normalize_endpoint("localhost:9000") == "http://localhost:9000"


def test_s3_credentials_from_litestream_env(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("LITESTREAM_ACCESS_KEY_ID", "lk")
    monkeypatch.setenv("LITESTREAM_SECRET_ACCESS_KEY", "ls")
    c = client_from_url("s3://b/p")
    assert (c._access_key_id, c._secret_access_key) == ("lk", "ls")
    c = client_from_url("s3://b/p", access_key_id="x", secret_access_key="y")
    assert (c._access_key_id, c._secret_access_key) == ("x", "y")


def test_client_from_config_both_backends(tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    cfg = parse_config(f"""
access-key-id: {s3_server.access_key}
secret-access-key: {s3_server.secret_key}
dbs:
  - path: {tmp_path}/a.db
    replica:
      url: {s3_server.url(bucket, "a")}
  - path: {tmp_path}/b.db
    replica:
      type: s3
      bucket: {bucket}
      path: b
      endpoint: {s3_server.endpoint}
  - path: {tmp_path}/c.db
    replica: {{path: {tmp_path}/c-replica}}
""", filename="t.yml", expand_env=False)
    a, b, c = (client_from_config(db.replica) for db in cfg.dbs)
    assert isinstance(a, S3ReplicaClient) and isinstance(b, S3ReplicaClient)
    assert isinstance(c, FileReplicaClient) and c.path == f"{tmp_path}/c-replica"
    a.write_ltx_file(0, 1, 1, b"a", TS1)
    b.write_ltx_file(0, 1, 1, b"b", TS1)
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["a/0000/0000000000000001-0000000000000001.ltx", "b/0000/0000000000000001-0000000000000001.ltx"]
    assert (b.region, b.force_path_style) == ("us-east-1", True)


def test_rfc3339_helpers():
    assert format_rfc3339_nano(ms_to_datetime(TS1)) == "2023-11-14T22:13:20.123Z"
    assert format_rfc3339_nano(ms_to_datetime(TS2)) == "2023-11-14T22:13:21.1Z"
    assert format_rfc3339_nano(ms_to_datetime(TS3)) == "2023-11-14T22:13:22Z"
    assert parse_rfc3339("2026-11-21T16:33:44.68Z") == datetime(2026, 11, 21, 16, 33, 44, 680000, tzinfo=timezone.utc)
    assert parse_rfc3339("2026-11-21T16:33:44.123456789Z").microsecond == 123456
    assert parse_rfc3339("2026-11-21T18:33:44+02:00") == datetime(2026, 11, 21, 16, 33, 44, tzinfo=timezone.utc)


# --- transient errors: a flaky loopback proxy in front of the real server --------------------

@pytest.fixture
def flaky(s3_server):
    proxy = FaultProxy(s3_server.endpoint)
    yield proxy
    proxy.close()


def fail_next(proxy, kind: str, how: str, times: int = 1, persistent: bool = False) -> None:
    """The next ``times`` requests of ``kind`` (from now) get ``how`` (500, 503)."""
    proxy.fault = HttpFault(kind, 1, how=how, times=times, persistent=persistent)
    proxy.arm()


def test_s3_transient_errors_are_retried_and_counted(s3_server, flaky):
    c = client_from_url(f"s3://{s3_server.bucket}/{s3_server.new_path()}?endpoint={flaky.endpoint}",
                        access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)

    def retries(op):
        return sample("sqlite_rest_replica_operation_retries_total", {"replica_type": "s3", "operation": op})

    before = {op: retries(op) for op in ("PUT", "LIST", "GET")}
    fail_next(flaky, "PUT", "500")
    c.write_ltx_file(0, 1, 1, blob(1, 1000), TS1)
    fail_next(flaky, "LIST", "503", times=2)
    assert [f.min_txid for f in c.ltx_files(0)] == [1]
    fail_next(flaky, "GET", "503")
    with c.open_ltx_file(0, 1, 1) as f:
        assert f.read() == blob(1, 1000)
    assert (retries("PUT") - before["PUT"], retries("LIST") - before["LIST"],
            retries("GET") - before["GET"]) == (1, 2, 1)

    # A server that keeps failing: bounded attempts, then a clear error.
    fail_next(flaky, "LIST", "503", persistent=True)
    with pytest.raises(ReplicaClientError, match="SlowDown") as e:
        list(c.ltx_files(0))
    assert flaky.calls["LIST"] == c.max_attempts
    assert "retried" in e.value.hint


def test_s3_silent_server_times_out_naming_the_endpoint():
    """A server that accepts TCP but never answers: bounded by read_timeout x max_attempts."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody ever reads or replies
        port = listener.getsockname()[1]
        c = client_from_url(f"s3://bucket/db?endpoint=http://127.0.0.1:{port}",
                            access_key_id="a", secret_access_key="b", read_timeout=0.5, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(UnreachableError, match=f"127.0.0.1:{port}"):
            c.open_ltx_file(0, 1, 1)
        assert time.monotonic() - started < 6


def test_a_broken_s3_transfer_is_a_replica_client_error():
    """A GET body that ends before its Content-Length (botocore's IncompleteReadError) reaches
    readers as ReplicaClientError, which whole-file readers read again."""
    from botocore.response import StreamingBody

    from replication.s3_replica_client import _Body

    body = _Body(StreamingBody(io.BytesIO(b"abc"), 10), "L0/0000000000000001-0000000000000001.ltx")
    assert body.read(2) == b"ab" and body.read(5) == b"c"
    with pytest.raises(ReplicaClientError, match=r"reading L0/0+1-0+1\.ltx.*\b3\b.*\b10\b"):
        body.read(5)
    body.close()


def test_file_read_errors_are_replica_client_errors_and_a_restore_reads_again(
        tmp_path, monkeypatch):
    """The fault sweep (tests/test_fault_sweep.py, replica-read): an EIO while a restore read a
    file replica's file reached it as a bare OSError, so the restore failed at once, as
    "cannot write <output>.tmp" with a hint about the output directory. An S3 body's transfer
    error is a ReplicaClientError, read again; a file's now is too, naming the replica file."""
    import io as _io

    import apsw

    import replication.defaults
    import replication.file_replica_client as frc
    import replication.restore as rrestore
    from replication.restore import restore

    src = tmp_path / "src.db"
    con = apsw.Connection(str(src))
    con.execute("PRAGMA journal_mode=wal").fetchall()
    con.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('hello')")
    from replication.db import DB
    client = FileReplicaClient(str(tmp_path / "replica"))
    with DB(src) as db:
        db.sync()
        for info in db.local_ltx_files(0):
            with db.open_local_ltx(0, info.min_txid, info.max_txid) as f:
                data = f.read()
            client.write_ltx_file(0, info.min_txid, info.max_txid, data, 0)
    failures = [1]

    class BadSector(_io.FileIO):
        def _fail(self):
            if failures:
                failures.pop()
                raise OSError(5, "Input/output error")

        def readinto(self, b):
            self._fail()
            return super().readinto(b)

        def readall(self):
            self._fail()
            return super().readall()

    monkeypatch.setattr(frc, "open", lambda path, mode, buffering=-1: BadSector(path, "rb"),
                        raising=False)
    monkeypatch.setattr(replication.defaults, "SHORT_READ_BACKOFF", 0.0)
    monkeypatch.setattr(rrestore, "SHORT_READ_BACKOFF", 0.0)
    info = next(client.ltx_files(0))
    with client.open_ltx_file(0, info.min_txid, info.max_txid) as f:
        with pytest.raises(ReplicaClientError) as err:
            f.read()
    assert client.path in str(err.value) and "Input/output error" in str(err.value)
    failures.append(1)
    out = tmp_path / "out.db"
    restore(client, str(out), integrity_check="full")
    assert apsw.Connection(str(out)).execute("SELECT x FROM t").fetchall() == [("hello",)]


def test_a_source_that_cannot_be_read_is_not_blamed_on_the_file_replica(tmp_path):
    """The fault sweep: a local L0 file's EIO during an upload read "file replica: write
    <replica path>" with a hint about the replica directory. The error names the source, and
    nothing is left in the replica."""
    class Failing(io.RawIOBase):
        name = str(tmp_path / "meta" / "0000000000000002-0000000000000002.ltx")

        def readable(self):
            return True

        def readinto(self, b):
            raise OSError(5, "Input/output error")

    client = FileReplicaClient(str(tmp_path / "replica"))
    with pytest.raises(ReplicaClientError) as err:
        client.write_ltx_file(0, 2, 2, io.BufferedReader(Failing()), 1_700_000_000_000)
    assert "reading " + Failing.name in str(err.value)
    assert "local file" in err.value.hint and "replica directory" not in err.value.hint
    assert list(client.ltx_files(0)) == []
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "replica").rglob("*"))
