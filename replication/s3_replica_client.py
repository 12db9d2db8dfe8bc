"""The ``s3`` replica backend (AWS S3 and S3-compatible stores) via boto3.

Layout (§2.1): ``<path>/<level as %04x>/<min>-<max>.ltx`` — **no** ``ltx/`` segment, unlike
every other backend; keys are built by plain concatenation, as Litestream does, so an empty
path gives keys starting with ``/`` and a URL without a path gives ``./…`` (always configure a
path). PUTs carry ``x-amz-meta-litestream-timestamp`` = the LTX header timestamp in Go
RFC3339Nano, which point-in-time restores read with ``use_metadata=True``.

Retries and bounds: boto3's *standard* retry mode retries connection errors, 5xx and
throttling with capped exponential backoff and jitter; we bound every call by
``max_attempts`` (default 4), ``connect_timeout`` (3 s) and ``read_timeout`` (10 s), so an
unreachable endpoint fails in well under half a minute with an error naming it. 403s (bad
keys, denied policy) and NoSuchBucket are never retried: they raise at once with a hint.
"""
from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import logging
import os
import posixpath
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from datetime import timezone
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from . import ltx, metrics
from .config import parse_bool, parse_byte_size
from .defaults import DEFAULT_RESTORE_PARALLELISM
from .errors import ReplicaClientError, ReplicationError
from .replica_client import (
    DELETE, EPOCH, GET, LIST, PUT, AccessDeniedError, BucketNotFoundError, ConflictError,
    FileInfo, NotFoundError, ObjectInfo, ReplicaClient, UnreachableError, check_level, format_rfc3339_nano, ms_to_datetime,
    parse_rfc3339, register_client,
)

log = logging.getLogger(__name__)

METADATA_TIMESTAMP = "litestream-timestamp"   # x-amz-meta-litestream-timestamp
DELETE_BATCH_SIZE = 1000                      # DeleteObjects limit per request
DEFAULT_PART_SIZE = 5 * 1024 * 1024           # bytes; multipart above this (Litestream default)
HEAD_CONCURRENCY = 32                         # parallel HEADs of a use_metadata listing

#: boto3 operation → Litestream metric operation label.
_OPERATION_LABELS = {
    "GetObject": GET, "HeadObject": GET, "HeadBucket": GET,
    "PutObject": PUT, "CreateMultipartUpload": PUT, "UploadPart": PUT,
    "CompleteMultipartUpload": PUT,
    "DeleteObjects": DELETE, "DeleteObject": DELETE, "AbortMultipartUpload": DELETE,
    "ListObjectsV2": LIST, "ListObjects": LIST,
}

_ACCESS_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed",
                        "InvalidClientTokenId", "Forbidden", "403"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}

_CREDENTIALS_HINT = ("check access-key-id/secret-access-key in the replica config, or "
                     "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (LITESTREAM_ACCESS_KEY_ID/"
                     "LITESTREAM_SECRET_ACCESS_KEY), and the bucket policy")


# --- settings ----------------------------------------------------------------------------------

@dataclass
class S3Settings:
    """Everything that configures one S3 replica. ``None`` = not set (a default applies)."""

    bucket: str | None = None
    path: str | None = None                 # key prefix inside the bucket
    region: str | None = None               # default us-east-1 with an endpoint, else AWS_REGION
    endpoint: str | None = None             # e.g. http://127.0.0.1:9000; scheme added if missing
    force_path_style: bool | None = None    # default: True when an endpoint is set
    skip_verify: bool | None = None         # default False: verify TLS certificates
    sign_payload: bool | None = None        # default True: SigV4 over the payload hash
    require_content_md5: bool | None = None  # default True: Content-MD5 on DeleteObjects
    storage_class: str | None = None
    part_size: int | None = None            # bytes, default 5 MiB: multipart above it
    concurrency: int | None = None          # parallel parts of a multipart upload, default 5
    access_key_id: str | None = None
    secret_access_key: str | None = None
    sse_customer_algorithm: str | None = None  # "AES256" when an SSE-C key is given
    sse_customer_key: str | None = None
    sse_customer_key_path: str | None = None
    sse_kms_key_id: str | None = None
    # ours, not Litestream's: the bounds of one call
    connect_timeout: float | None = None    # seconds, default 3
    read_timeout: float | None = None       # seconds of silence on a socket, default 10
    max_attempts: int | None = None         # attempts per call incl. the first, default 4

    def merged(self, other: "S3Settings") -> "S3Settings":
        """``self`` with every field that ``other`` sets."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(other)
                                if getattr(other, f.name) is not None})


_SETTING_NAMES = {f.name for f in fields(S3Settings)}

#: Query parameters of an s3:// URL (kebab-case; camelCase spellings are normalised to it).
_QUERY_PARSERS = {
    "endpoint": str, "region": str, "storage-class": str,
    "force-path-style": parse_bool, "skip-verify": parse_bool, "sign-payload": parse_bool,
    "require-content-md5": parse_bool, "part-size": parse_byte_size, "concurrency": int,
    "sse-customer-algorithm": str, "sse-customer-key": str, "sse-customer-key-path": str,
    "sse-kms-key-id": str,
}


def _kebab(name: str) -> str:
    """``forcePathStyle`` → ``force-path-style``; ``requireContentMD5`` → ``require-content-md5``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).replace("_", "-").lower()


# Provider host forms of s3:// URLs (Litestream's s3.ParseHost).
_HOST_FORMS = (
    # (regex, endpoint template, region group or None)
    (re.compile(r"^(?:(.+)\.)?localhost$"), "localhost", None),
    (re.compile(r"^(?:(.+)\.)?s3\.([^.]+)\.backblazeb2\.com$"), "s3.{region}.backblazeb2.com", 2),
    (re.compile(r"^(?:(.+)\.)?s3\.filebase\.com$"), "s3.filebase.com", None),
    (re.compile(r"^(?:(.+)\.)?([^.]+)\.digitaloceanspaces\.com$"), "{region}.digitaloceanspaces.com", 2),
    (re.compile(r"^(?:(.+)\.)?s3\.([^.]+)\.scw\.cloud$"), "s3.{region}.scw.cloud", 2),
    (re.compile(r"^(?:(.+)\.)?([^.]+)\.linodeobjects\.com$"), "{region}.linodeobjects.com", 2),
)
_AWS_HOST = re.compile(r"^(.+)\.s3(?:[.-]([a-z0-9-]+))?\.amazonaws\.com$")


def parse_s3_host(netloc: str) -> S3Settings:
    """Bucket, region, endpoint and addressing style from the host of an s3:// URL."""
    host, _, port = netloc.rpartition(":") if re.search(r":\d+$", netloc) else (netloc, "", "")
    m = _AWS_HOST.match(host)
    if m and not port:
        return S3Settings(bucket=m.group(1), region=m.group(2), force_path_style=False)
    for regex, template, region_group in _HOST_FORMS:
        m = regex.match(host)
        if m:
            region = m.group(region_group) if region_group else None
            endpoint = template.format(region=region)
            scheme = "http" if endpoint == "localhost" else "https"
            if endpoint == "localhost":
                region = "us-east-1"
            if port:
                endpoint += f":{port}"
            return S3Settings(bucket=m.group(1), region=region, endpoint=f"{scheme}://{endpoint}",
                              force_path_style=True)
    if port and "." in host:
        # MinIO style: bucket.host:port → endpoint http://host:port, path style.
        bucket, _, server = host.partition(".")
        return S3Settings(bucket=bucket, endpoint=f"http://{server}:{port}", force_path_style=True)
    return S3Settings(bucket=netloc)


def clean_url_path(path: str) -> str:
    """Go's ``strings.TrimPrefix(path.Clean(p), "/")`` (so ``""`` gives ``"."``, as Litestream)."""
    path = unquote(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return posixpath.normpath(path).removeprefix("/") if path else "."


def parse_s3_url(url: str) -> S3Settings:
    """Settings from an ``s3://`` URL: host forms of §4.5 plus query parameters."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ReplicationError(f"not an s3 URL: {url!r}")
    netloc, path = parts.netloc, parts.path
    if netloc.startswith("arn:"):  # access point: s3://arn:aws:s3:region:acct:accesspoint/name/prefix
        name, _, rest = path.lstrip("/").partition("/")
        arn = f"{netloc}/{name}"
        region = netloc.split(":")[3] if netloc.count(":") >= 4 else None
        settings = S3Settings(bucket=arn, region=region or None, force_path_style=False)
        path = "/" + rest
    else:
        if not netloc:
            raise ReplicationError(f"s3 URL {url!r} has no bucket", hint="use s3://BUCKET/PATH")
        settings = parse_s3_host(netloc)
    settings.path = clean_url_path(path)
    query = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = _kebab(key)
        parser = _QUERY_PARSERS.get(name)
        if parser is None:
            log.warning("s3 replica URL: ignoring unknown query parameter %r", key)
            continue
        try:
            query[name.replace("-", "_")] = parser(value)
        except (ValueError, ReplicationError) as e:
            raise ReplicationError(f"s3 replica URL: invalid {key}={value!r}: {e}") from None
    return settings.merged(S3Settings(**query))


def normalize_endpoint(endpoint: str) -> str:
    """Add a scheme: ``http://`` for localhost and private/loopback IPs, else ``https://``."""
    if "://" in endpoint:
        return endpoint.rstrip("/")
    host = urlsplit("//" + endpoint).hostname or ""
    private = host == "localhost" or host.endswith(".localhost")
    try:
        ip = ipaddress.ip_address(host)
        private = private or ip.is_private or ip.is_loopback
    except ValueError:
        pass
    return f"{'http' if private else 'https'}://{endpoint.rstrip('/')}"


# --- the client --------------------------------------------------------------------------------

class _CountingReader:
    """Counts bytes read from a source (multipart uploads report their size this way)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.count += len(data)
        return data


class _Body:
    """A GET's body whose transfer errors are ReplicaClientError, as every other failure of
    this client is (a reader of a whole file may then read it again)."""

    def __init__(self, body, where: str):
        self._body = body
        self._where = where

    def read(self, n: int = -1) -> bytes:
        try:
            return self._body.read() if n is None or n < 0 else self._body.read(n)
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise ReplicaClientError(f"s3: reading {self._where}: {e}",
                                     hint="the transfer broke off; it is read again") from e

    def close(self) -> None:
        self._body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@register_client("s3")
class S3ReplicaClient(ReplicaClient):
    type = "s3"
    # One GET stream of a big object is bound by one connection (bench_restore, SeaweedFS).
    restore_parallelism = DEFAULT_RESTORE_PARALLELISM

    def __init__(self, settings: S3Settings):
        s = settings
        if not s.bucket:
            raise ReplicationError("s3 replica: bucket required",
                                   hint="set `bucket:` or use a URL such as s3://BUCKET/PATH")
        if not s.path:
            # Litestream accepts this and writes keys starting with "/"; so do we, loudly.
            log.warning("s3 replica in bucket %r has an empty path: keys will start with '/' "
                        "(set `path:` to the database name)", s.bucket)
            s = replace(s, path="")
        env = os.environ
        if s.endpoint is None and env.get("LITESTREAM_S3_ENDPOINT"):
            s = replace(s, endpoint=env["LITESTREAM_S3_ENDPOINT"])
        self.bucket = s.bucket
        self.path = s.path
        self.endpoint = normalize_endpoint(s.endpoint) if s.endpoint else None
        self.region = s.region or ("us-east-1" if self.endpoint else
                                   env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        self.force_path_style = s.force_path_style if s.force_path_style is not None else bool(self.endpoint)
        self.skip_verify = bool(s.skip_verify)
        self.sign_payload = True if s.sign_payload is None else s.sign_payload
        self.require_content_md5 = True if s.require_content_md5 is None else s.require_content_md5
        self.storage_class = s.storage_class
        self.part_size = s.part_size or DEFAULT_PART_SIZE
        self.concurrency = s.concurrency or 5
        self.connect_timeout = s.connect_timeout or 3.0
        self.read_timeout = s.read_timeout or 10.0
        self.max_attempts = s.max_attempts or 4
        self._access_key_id = s.access_key_id or env.get("AWS_ACCESS_KEY_ID") or env.get("LITESTREAM_ACCESS_KEY_ID")
        self._secret_access_key = (s.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY")
                                   or env.get("LITESTREAM_SECRET_ACCESS_KEY"))
        self._sse_args = self._sse_arguments(s)
        self.url = f"s3://{self.bucket}/{self.path}" + (f"?endpoint={self.endpoint}" if self.endpoint else "")
        self._client = None
        self._lock = threading.Lock()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides) -> "S3ReplicaClient":
        unknown = set(overrides) - _SETTING_NAMES
        if unknown:
            raise ReplicationError(f"s3 replica: unknown settings {sorted(unknown)}")
        return cls(parse_s3_url(url).merged(S3Settings(**overrides)))

    @classmethod
    def from_config(cls, rc) -> "S3ReplicaClient":
        base = parse_s3_url(rc.url) if rc.url else S3Settings()
        own = S3Settings(**{name: getattr(rc, name) for name in _SETTING_NAMES if hasattr(rc, name)})
        if own.path == "":
            own.path = None
        return cls(base.merged(own))

    @staticmethod
    def _sse_arguments(s: S3Settings) -> dict:
        args = {}
        key = s.sse_customer_key
        if s.sse_customer_key_path:
            try:
                with open(s.sse_customer_key_path, "rb") as f:
                    key = f.read().strip().decode()
            except OSError as e:
                raise ReplicationError(f"s3 replica: cannot read sse-customer-key-path: {e}") from None
        if key:
            args["SSECustomerAlgorithm"] = s.sse_customer_algorithm or "AES256"
            args["SSECustomerKey"] = key
        if s.sse_kms_key_id:
            args["ServerSideEncryption"] = "aws:kms"
            args["SSEKMSKeyId"] = s.sse_kms_key_id
        return args

    @property
    def s3(self):
        """The boto3 client, created on first use (thread-safe)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self):
        config = BotoConfig(
            region_name=self.region,
            signature_version="s3v4",
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            max_pool_connections=max(HEAD_CONCURRENCY, self.concurrency) + 2,
            s3={"addressing_style": "path" if self.force_path_style else "virtual",
                "payload_signing_enabled": self.sign_payload},
            # Many S3-compatible stores reject the CRC headers boto3 adds by default since 1.36.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(aws_access_key_id=self._access_key_id,
                                        aws_secret_access_key=self._secret_access_key,
                                        region_name=self.region)
        client = session.client("s3", endpoint_url=self.endpoint, config=config,
                                verify=not self.skip_verify)
        client.meta.events.register("request-created.s3", self._count_retry)
        if self.require_content_md5:
            client.meta.events.register("before-sign.s3.DeleteObjects", _add_content_md5)
        return client

    def _count_retry(self, request=None, operation_name=None, **_):
        attempt = (getattr(request, "context", None) or {}).get("retries", {}).get("attempt", 1)
        if attempt > 1:
            metrics.replica_operation_retries_total.labels(
                self.type, _OPERATION_LABELS.get(operation_name, operation_name)).inc()
        return None  # never short-circuit the request

    # -- helpers --------------------------------------------------------------------------------

    def level_prefix(self, level: int) -> str:
        return f"{self.path}/{check_level(level):04x}/"

    def key(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + ltx.format_filename(min_txid, max_txid)

    def _where(self) -> str:
        return f"bucket {self.bucket!r}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _error(self, e: Exception, what: str) -> ReplicaClientError:
        """Translate a boto error into a ReplicaClientError subclass with an operator hint."""
        if isinstance(e, ReplicaClientError):
            return e
        if isinstance(e, botocore.exceptions.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = err.get("Message") or code
            if code in _ACCESS_DENIED_CODES or status == 403:
                out = AccessDeniedError(f"s3: {what}: access denied by {self._where()} ({code}: {message})",
                                        hint=_CREDENTIALS_HINT)
            elif code == "NoSuchBucket":
                out = BucketNotFoundError(f"s3: {what}: bucket {self.bucket!r} does not exist"
                                          + (f" at {self.endpoint}" if self.endpoint else ""),
                                          hint="create the bucket, or fix `bucket`/`endpoint` in the replica config")
            elif code in _NOT_FOUND_CODES:
                out = NotFoundError(f"s3: {what}: not found in {self._where()}")
            else:
                out = ReplicaClientError(f"s3: {what}: {code}: {message} ({self._where()})",
                                         hint="transient server errors were retried "
                                              f"{self.max_attempts - 1} times before giving up")
            out.code = code
            return out
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            out = AccessDeniedError(f"s3: {what}: no credentials found", hint=_CREDENTIALS_HINT)
            out.code = "NoCredentials"
            return out
        if isinstance(e, (botocore.exceptions.EndpointConnectionError,
                          botocore.exceptions.ConnectTimeoutError,
                          botocore.exceptions.ReadTimeoutError,
                          botocore.exceptions.ConnectionClosedError)):
            where = self.endpoint or f"the AWS endpoint of region {self.region}"
            out = UnreachableError(f"s3: {what}: cannot reach {where} after {self.max_attempts} "
                                   f"attempts: {e}",
                                   hint="check `endpoint` (scheme, host, port) and that the S3 server is up")
            out.code = type(e).__name__
            return out
        if isinstance(e, botocore.exceptions.BotoCoreError):
            out = ReplicaClientError(f"s3: {what}: {e} ({self._where()})")
            out.code = type(e).__name__
            return out
        return e  # programming errors pass through unchanged

    # -- the seven operations -------------------------------------------------------------------

    def init(self) -> None:
        """Check the bucket is reachable and ours: fail fast on bad keys, names or endpoints."""
        with self._operation(GET):
            try:
                self.s3.head_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:  # HEAD has no body, so no error code
                    e.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
                raise self._error(e, "check bucket") from e
            except Exception as e:
                raise self._error(e, "check bucket") from e

    def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> Iterator[FileInfo]:
        prefix = self.level_prefix(level)
        infos: list[FileInfo] = []
        with self._operation(LIST):
            try:
                kwargs = {"Bucket": self.bucket, "Prefix": prefix}
                if seek > 0:  # keys sort by fixed-width hex: skip straight to MinTXID >= seek
                    kwargs["StartAfter"] = prefix + f"{seek:016x}"
                for page in self.s3.get_paginator("list_objects_v2").paginate(**kwargs):
                    for obj in page.get("Contents", ()):
                        name = obj["Key"][len(prefix):]
                        txids = ltx.parse_filename(name)
                        if txids is None or txids[0] < seek:
                            continue
                        created = obj["LastModified"].astimezone(timezone.utc)
                        infos.append(FileInfo(level, txids[0], txids[1], obj["Size"], created))
            except Exception as e:
                raise self._error(e, f"list level {level}") from e
        infos = self._filter_sorted(infos, seek)
        if use_metadata and infos:
            infos = self._with_metadata_timestamps(infos)
        return iter(infos)

    def _with_metadata_timestamps(self, infos: list[FileInfo]) -> list[FileInfo]:
        def head(info: FileInfo) -> FileInfo:
            with self._operation(GET):
                try:
                    out = self.s3.head_object(Bucket=self.bucket,
                                              Key=self.key(info.level, info.min_txid, info.max_txid),
                                              **self._sse_customer_args())
                except Exception as e:
                    raise self._error(e, f"head L{info.level}/{info.filename}") from e
            value = out.get("Metadata", {}).get(METADATA_TIMESTAMP)
            if value:
                try:
                    return replace(info, created_at=parse_rfc3339(value))
                except ValueError:
                    log.warning("s3: %s: bad %s metadata %r; using LastModified",
                                info.filename, METADATA_TIMESTAMP, value)
            return info
        with ThreadPoolExecutor(max_workers=min(HEAD_CONCURRENCY, len(infos))) as pool:
            return list(pool.map(head, infos))

    def _sse_customer_args(self) -> dict:
        return {k: v for k, v in self._sse_args.items() if k.startswith("SSECustomer")}

    def open_ltx_file(self, level: int, min_txid: int, max_txid: int,
                      offset: int = 0, size: int = 0) -> BinaryIO:
        key = self.key(level, min_txid, max_txid)
        kwargs = {"Bucket": self.bucket, "Key": key, **self._sse_customer_args()}
        if size > 0:
            kwargs["Range"] = f"bytes={offset}-{offset + size - 1}"
        elif offset > 0:
            kwargs["Range"] = f"bytes={offset}-"
        with self._operation(GET) as moved:
            try:
                out = self.s3.get_object(**kwargs)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return io.BytesIO(b"")  # offset at the end of the object: nothing to read
                raise self._error(e, f"open L{level}/{ltx.format_filename(min_txid, max_txid)}") from e
            except Exception as e:
                raise self._error(e, f"open L{level}/{ltx.format_filename(min_txid, max_txid)}") from e
            moved[0] = out.get("ContentLength") or 0
            return _Body(out["Body"], f"L{level}/{ltx.format_filename(min_txid, max_txid)}")

    # -- objects beside ltx/ (v0.3 generations: v3.py; lineage records: lineage.py) --------

    def list_objects(self, subdir: str) -> list:
        """The entries under ``<path>/<subdir>/``: objects, and "directories" (common
        prefixes, with no size or time)."""
        prefix = f"{self.path}/{subdir.strip('/')}/"
        out = []
        with self._operation(LIST):
            try:
                pages = self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/")
                for page in pages:
                    for common in page.get("CommonPrefixes", ()):
                        name = common["Prefix"][len(prefix):].rstrip("/")
                        out.append(ObjectInfo(name, 0, EPOCH, is_dir=True))
                    for obj in page.get("Contents", ()):
                        out.append(ObjectInfo(obj["Key"][len(prefix):], obj["Size"],
                                            obj["LastModified"].astimezone(timezone.utc)))
            except Exception as e:
                raise self._error(e, f"list {subdir}") from e
        return out

    def open_object(self, relpath: str) -> BinaryIO:
        key = f"{self.path}/{relpath}"
        with self._operation(GET) as moved:
            try:
                out = self.s3.get_object(Bucket=self.bucket, Key=key,
                                         **self._sse_customer_args())
            except Exception as e:
                raise self._error(e, f"open {relpath}") from e
            moved[0] = out.get("ContentLength") or 0
            return _Body(out["Body"], relpath)

    def write_object(self, relpath: str, data: bytes) -> None:
        with self._operation(PUT) as moved:
            try:
                self.s3.put_object(Bucket=self.bucket, Key=f"{self.path}/{relpath}", Body=data,
                                   **self._sse_args)
            except Exception as e:
                raise self._error(e, f"write {relpath}") from e
            moved[0] = len(data)

    def write_ltx_file(self, level: int, min_txid: int, max_txid: int,
                       data: bytes | BinaryIO, timestamp_ms: int, *,
                       exclusive: bool = False) -> FileInfo:
        key = self.key(level, min_txid, max_txid)
        if exclusive:
            if not isinstance(data, (bytes, bytearray, memoryview)) and \
                    _remaining(data) <= self.part_size:
                data = data.read()  # one conditional PutObject, compared in memory on conflict
            size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else \
                _remaining(data)
            if size > self.part_size:
                # Multipart uploads take no precondition here: check, then write (a narrow
                # race, still caught by the next upload's conditional create). A stream is
                # compared chunk by chunk and then uploaded from where it started.
                self._check_absent_or_same(key, data, level, min_txid, max_txid)
                exclusive = False
        created = ms_to_datetime(timestamp_ms)
        extra = {"Metadata": {METADATA_TIMESTAMP: format_rfc3339_nano(created)}, **self._sse_args}
        if self.storage_class:
            extra["StorageClass"] = self.storage_class
        with self._operation(PUT) as moved:
            try:
                if isinstance(data, (bytes, bytearray, memoryview)) and len(data) <= self.part_size:
                    # One PutObject: S3 makes it visible atomically, whole or not at all.
                    if exclusive:
                        extra = {**extra, "IfNoneMatch": "*"}
                    try:
                        self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), **extra)
                    except botocore.exceptions.ClientError as e:
                        if not (exclusive and _is_precondition_failure(e)):
                            raise
                        self._check_absent_or_same(key, bytes(data), level, min_txid, max_txid)
                    size = len(data)
                else:
                    # Multipart above part-size; the object appears only on Complete.
                    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
                    counting = _CountingReader(source)
                    transfer = TransferConfig(multipart_threshold=self.part_size,
                                              multipart_chunksize=self.part_size,
                                              max_concurrency=self.concurrency)
                    self.s3.upload_fileobj(counting, self.bucket, key, ExtraArgs=extra, Config=transfer)
                    size = counting.count
            except Exception as e:
                raise self._error(e, f"write L{level}/{ltx.format_filename(min_txid, max_txid)}") from e
            moved[0] = size
        return FileInfo(level, min_txid, max_txid, size, created)

    def _check_absent_or_same(self, key: str, data, level: int, min_txid: int,
                              max_txid: int) -> None:
        """Raise ConflictError if ``key`` exists with bytes other than ``data`` (bytes, or a
        seekable stream, compared in chunks and left where it was)."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                return
            raise
        if isinstance(data, (bytes, bytearray, memoryview)):
            same = body.read() == bytes(data)
        else:
            start = data.tell()
            try:
                same = True
                while same:
                    mine = data.read(_COMPARE_CHUNK)
                    same = body.read(len(mine) or 1) == mine
                    if not mine:
                        break
            finally:
                data.seek(start)
        if not same:
            raise ConflictError(
                f"s3: L{level}/{ltx.format_filename(min_txid, max_txid)} already exists in "
                f"{self._where()} with other content: another writer uses this replica path",
                hint=ConflictError.HINT)

    def delete_ltx_files(self, infos: Iterable[FileInfo]) -> None:
        keys = [self.key(i.level, i.min_txid, i.max_txid) for i in infos]
        self._delete_keys(keys)

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH_SIZE):
            batch = keys[start:start + DELETE_BATCH_SIZE]
            with self._operation(DELETE):
                try:
                    out = self.s3.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
                except Exception as e:
                    raise self._error(e, f"delete {len(batch)} objects") from e
                errors = [err for err in out.get("Errors", ()) if err.get("Code") != "NoSuchKey"]
                if errors:
                    first = errors[0]
                    err = ReplicaClientError(
                        f"s3: delete: {len(errors)} of {len(batch)} objects not deleted; first "
                        f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}",
                        hint="check that the credentials may delete objects (s3:DeleteObject)")
                    err.code = first.get("Code") or "DeleteError"
                    raise err

    def delete_all(self) -> None:
        """Delete every LTX file of every level under this replica's path."""
        keys: list[str] = []
        with self._operation(LIST):
            try:
                for page in self.s3.get_paginator("list_objects_v2").paginate(
                        Bucket=self.bucket, Prefix=self.path + "/"):
                    for obj in page.get("Contents", ()):
                        level_dir, _, name = obj["Key"][len(self.path) + 1:].partition("/")
                        if re.fullmatch(r"[0-9a-f]{4}", level_dir) and ltx.parse_filename(name):
                            keys.append(obj["Key"])
            except Exception as e:
                raise self._error(e, "list for delete-all") from e
        self._delete_keys(keys)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _add_content_md5(request=None, **_):
    """Content-MD5 on DeleteObjects (``require-content-md5``; some S3 stores insist on it)."""
    body = request.body if isinstance(request.body, bytes) else (request.body or b"")
    if isinstance(body, str):
        body = body.encode()
    if "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


#: Bytes per read when comparing a local stream with an existing object.
_COMPARE_CHUNK = 1 << 20


def _remaining(stream) -> int:
    """Bytes from a seekable stream's position to its end (the position is kept)."""
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end - here


def _is_precondition_failure(e: botocore.exceptions.ClientError) -> bool:
    """412 PreconditionFailed, or 409 ConditionalRequestConflict (a concurrent conditional
    write won the race)."""
    code = e.response.get("Error", {}).get("Code")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
