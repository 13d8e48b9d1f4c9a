"""S3-compatible object storage source and target (``s3://bucket/prefix``).

Atomicity: an object is created by one PUT (atomic in S3) or by a multipart
upload, which stays invisible until CompleteMultipartUpload; a failed
multipart upload is aborted (best effort; a bucket lifecycle rule
"AbortIncompleteMultipartUpload" cleans up what an abort could not reach).

Integrity: every object carries the hex SHA-256 of its whole body in user
metadata (``x-amz-meta-sha256``), which makes writes idempotent
(:meth:`S3Target.exists_same`). Single PUTs send ``x-amz-checksum-sha256``
derived from the caller's digest so that S3 itself rejects a body that does
not match; multipart parts carry their own SHA-256 checksums and the whole
body digest is verified locally before the upload is completed.

Retries: botocore's "standard" retry mode handles short hiccups inside a
call; around each whole operation (a whole upload, one listing page, one
download) an outer loop retries throttling, 5xx and connection errors with
capped exponential backoff and jitter, restarting a multipart upload from
scratch. Error messages carry the operation and error code only: never an
object key, a source path or a credential.

Credentials come from the explicit constructor arguments, else from boto3's
standard chain (environment, shared config/credentials files, instance
roles...).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

from .base import EntryChanged, SourceEntry, StorageError, TargetFull

__all__ = ["S3Target", "S3Source", "ObjectNotFound", "parse_s3_url"]

T = TypeVar("T")

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3 minimum for every part but the last
MAX_PARTS = 10_000
# a multipart upload sends this many parts at once while it reads and hashes the next: each part is a
# request with its own round trip and its own connection's throughput (memory: this many parts + 1)
PARTS_AT_ONCE = 4
CHUNK = 1 * MIB
SPOOL_MAX = 64 * MIB
HEAD_BLOCK = 256 * 1024  # first ranged read of a header: what discovery's split path reads
FAR_BLOCK = 8 * 1024  # later ranged reads: element or fragment headers far into the object

THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "BandwidthLimitExceeded", "EC2ThrottledException", "PriorRequestNotComplete",
})
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
    "OperationAborted",
})
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# The storage refusing a write for want of space: a quota (Ceph RGW and others: 403 QuotaExceeded;
# MinIO bucket quota: 400 XMinioAdminBucketQuotaExceeded; RustFS) or full drives (MinIO 507
# XMinioStorageFull; any 507 Insufficient Storage). Not retried: the run stops or pauses as on a
# full disk, and goes on once the operator adds space.
FULL_CODES = frozenset({
    "QuotaExceeded", "XMinioAdminBucketQuotaExceeded", "BucketQuotaExceeded", "XRustfsQuotaExceeded",
    "XMinioStorageFull", "InsufficientCapacity", "InsufficientStorage",
})
FULL_STATUS = 507
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix"). No credentials, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise StorageError("not an s3:// URL")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise StorageError("s3 URL must not contain credentials or a port; pass endpoint_url/credentials separately")
    if parts.query or parts.fragment:
        raise StorageError("s3 URL must not contain a query or fragment")
    bucket = parts.netloc
    if not bucket:
        raise StorageError("s3 URL has no bucket")
    prefix = parts.path.strip("/")
    return bucket, prefix


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object does not exist (also a FileNotFoundError, like a missing local file)."""


class _LocalReadError(StorageError):
    """Reading the local input failed (not retried)."""


def _local_call(fn: Callable[..., T], *args: Any) -> T:
    """Run a local file operation; an OSError (whose text names the path) becomes a path-free error."""
    failed = False
    try:
        return fn(*args)
    except OSError:
        failed = True
    if failed:
        raise _LocalReadError("cannot read local input file")
    raise AssertionError("unreachable")  # pragma: no cover


class _Retryable(Exception):
    """Internal: a condition worth retrying that is not an exception from botocore."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _error_code(exc: Exception) -> tuple[str, int]:
    resp = getattr(exc, "response", None) or {}
    code = str((resp.get("Error") or {}).get("Code", "") or "")
    status = int((resp.get("ResponseMetadata") or {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _refused_for_space(exc: Exception) -> str | None:
    """The error code (or status) when the storage refused a request for want of space, else None."""
    code, status = _error_code(exc)
    if code in FULL_CODES or status == FULL_STATUS:
        return code or f"HTTP {status}"
    return None


class _S3Base:
    """Client construction, URL handling and the outer retry loop."""

    _writes = False

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        session_token: str | None = None,
        max_attempts: int = 8,
        client_max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        retry_deadline: float | None = 300.0,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        page_size: int = 1000,
        client: Any = None,
    ):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self._aws_access_key_id = aws_access_key_id
        self._aws_secret_access_key = aws_secret_access_key
        self._session_token = session_token
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise StorageError("give both aws_access_key_id and aws_secret_access_key, or neither")
        self.max_attempts = max(1, int(max_attempts))
        self.client_max_attempts = max(1, int(client_max_attempts))
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.retry_deadline = retry_deadline
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.page_size = max(1, min(int(page_size), 1000))
        self._client = client
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:  # never show credentials
        return f"{type(self).__name__}({self.url!r})"

    # Picklable (Prefect may hash/pickle task inputs): the client is rebuilt lazily.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None
        state.pop("_client_lock", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()
        if hasattr(type(self), "_has_counters"):
            self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    session = boto3.session.Session(
                        aws_access_key_id=self._aws_access_key_id,
                        aws_secret_access_key=self._aws_secret_access_key,
                        aws_session_token=self._session_token,
                        region_name=self.region_name,
                    )
                    cfg = Config(
                        retries={"max_attempts": self.client_max_attempts, "mode": "standard"},
                        connect_timeout=self.connect_timeout,
                        read_timeout=self.read_timeout,
                    )
                    self._client = session.client("s3", endpoint_url=self.endpoint_url, config=cfg)
        return self._client

    def _key(self, relpath: str) -> str:
        rel = relpath.replace("\\", "/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            raise StorageError("invalid relative path")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _list_prefix(self, sub: str = "") -> str:
        sub = sub.strip("/")
        base = "/".join(p for p in (self.prefix, sub) if p)
        return base + "/" if base else ""

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    # -- retries -------------------------------------------------------------
    def _classify(self, exc: BaseException, extra_retry_codes: frozenset[str]) -> str | None:
        """A short description if exc is worth retrying, else None."""
        import botocore.exceptions as bce

        try:
            import urllib3.exceptions as u3e

            u3 = (u3e.HTTPError,)
        except Exception:  # pragma: no cover
            u3 = ()
        if isinstance(exc, _Retryable):
            return exc.what
        if isinstance(exc, bce.ClientError):
            code, status = _error_code(exc)
            if code in THROTTLE_CODES or code in TRANSIENT_CODES or code in extra_retry_codes:
                return code
            if status in RETRY_STATUS or status >= 500:
                return f"HTTP {status}"
            return None
        if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.ResponseStreamingError)):
            return type(exc).__name__
        if u3 and isinstance(exc, u3):
            return type(exc).__name__
        if isinstance(exc, (ConnectionError, TimeoutError)):  # builtin socket-level errors
            return type(exc).__name__
        return None

    def _backoff(self, attempt: int) -> float:
        d = min(self.backoff_cap, self.backoff_base * (2 ** (attempt - 1)))
        return d / 2 + random.uniform(0, d / 2)  # "equal jitter": never a zero wait

    def _retry(self, op: str, fn: Callable[[], T], extra_retry_codes: frozenset[str] = frozenset()) -> T:
        import botocore.exceptions as bce

        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            # The StorageError is raised outside the except block so that the
            # original exception (whose text may name the object key or the
            # endpoint URL) is not even kept as __context__.
            message: str | None = None
            refused_for_space: str | None = None
            try:
                return fn()
            except StorageError:
                raise
            except Exception as exc:
                refused_for_space = _refused_for_space(exc) if self._writes else None
                what = None if refused_for_space else self._classify(exc, extra_retry_codes)
                if refused_for_space:
                    pass  # raised below, never retried
                elif what is None:
                    if isinstance(exc, bce.ClientError):
                        code, status = _error_code(exc)
                        message = f"s3 {op} failed on {self.url}: {code or 'HTTP ' + str(status)}"
                    elif isinstance(exc, bce.NoCredentialsError):
                        message = f"s3 {op} failed on {self.url}: no credentials found"
                    elif isinstance(exc, bce.BotoCoreError):
                        message = f"s3 {op} failed on {self.url}: {type(exc).__name__}"
                    else:
                        raise
                else:
                    delay = self._backoff(attempt)
                    out_of_time = (
                        self.retry_deadline is not None and time.monotonic() - start + delay > self.retry_deadline
                    )
                    if attempt >= self.max_attempts or out_of_time:
                        message = f"s3 {op} failed on {self.url} after {attempt} attempts: {what}"
            if refused_for_space:
                raise TargetFull(0, 0, f"the storage refused the write ({refused_for_space})")
            if message is not None:
                raise StorageError(message)
            time.sleep(delay)

    def _iter_objects(self, list_prefix: str) -> Iterator[dict]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": list_prefix, "MaxKeys": self.page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._retry("list", lambda: self.client.list_objects_v2(**kwargs))
            yield from page.get("Contents", []) or []
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    def _get_object(self, **kwargs) -> dict:
        """One GetObject call; a missing object raises ObjectNotFound and a failed If-Match
        EntryChanged (neither retried, neither carrying botocore's message, which names the key)."""
        import botocore.exceptions as bce

        failed = None
        try:
            return self.client.get_object(Bucket=self.bucket, **kwargs)
        except bce.ClientError as exc:
            code, status = _error_code(exc)
            if status == 404 or code in NOT_FOUND_CODES:
                failed = ObjectNotFound("object not found")
            elif status == 412 or code == "PreconditionFailed":
                failed = EntryChanged("object changed since it was listed")
            else:
                raise
        raise failed

    def _get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Bytes [start, end) of an object, only if its ETag is still ``etag`` (when given)."""

        def attempt() -> bytes:
            body = self._get_object(Key=key, Range=f"bytes={start}-{end - 1}",
                                    **({"IfMatch": etag} if etag else {}))["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            if len(data) != end - start:
                raise _Retryable("short read")
            return data

        return self._retry("get", attempt)

    def _download(self, key: str, sink: BinaryIO, etag: str | None = None) -> int:
        """Stream an object into sink (rewound and truncated on each retry); returns its size.
        With ``etag``, only that version (else EntryChanged)."""

        def attempt() -> int:
            sink.seek(0)
            sink.truncate()
            resp = self._get_object(Key=key, **({"IfMatch": etag} if etag else {}))
            expected = resp.get("ContentLength")
            body = resp["Body"]
            n = 0
            try:
                for chunk in body.iter_chunks(CHUNK):
                    sink.write(chunk)
                    n += len(chunk)
            finally:
                body.close()
            if expected is not None and n != expected:
                raise _Retryable("short read")
            return n

        return self._retry("get", attempt)


class S3Target(_S3Base):
    """Writes de-identified files as objects under ``s3://bucket/prefix/<relpath>``.

    Buckets have no free space, so the space limits are a byte budget and an
    object count limit, counted over what this instance writes (plus the
    ``already_used_*`` figures of a resumed run).
    """

    _has_counters = True
    _writes = True  # a request refused for want of space is a full target (see FULL_CODES)

    def __init__(
        self,
        url: str,
        byte_budget: int | None = None,
        object_limit: int | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        session_token: str | None = None,
        multipart_threshold: int = 8 * MIB,
        max_attempts: int = 8,
        *,
        already_used_bytes: int = 0,
        already_used_objects: int = 0,
        part_size: int | None = None,
        page_size: int = 1000,
        client_max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        retry_deadline: float | None = 300.0,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        server_side_encryption: str | None = None,
        sse_kms_key_id: str | None = None,
        client: Any = None,
    ):
        super().__init__(
            url,
            endpoint_url=endpoint_url,
            region_name=region_name,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            session_token=session_token,
            max_attempts=max_attempts,
            client_max_attempts=client_max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_deadline=retry_deadline,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            page_size=page_size,
            client=client,
        )
        self.byte_budget = byte_budget
        self.object_limit = object_limit
        self.bytes_written = int(already_used_bytes)
        self.objects_written = int(already_used_objects)
        self.multipart_threshold = max(1, int(multipart_threshold))
        self.part_size = max(MIN_PART_SIZE, int(part_size or self.multipart_threshold))
        self._put_extra: dict[str, str] = {}
        if server_side_encryption:
            self._put_extra["ServerSideEncryption"] = server_side_encryption
        if sse_kms_key_id:
            self._put_extra["SSEKMSKeyId"] = sse_kms_key_id
        self._lock = threading.Lock()
        self._stale_uploads: list[tuple[str, str]] = []  # (key, upload id) an abort could not reach

    # -- space ---------------------------------------------------------------
    def free_bytes(self) -> int | None:
        """Remaining byte budget; 0 once the object limit is reached; None when unlimited."""
        with self._lock:
            if self.object_limit is not None and self.objects_written >= self.object_limit:
                return 0
            if self.byte_budget is None:
                return None
            return max(self.byte_budget - self.bytes_written, 0)

    def _reserve(self, size: int) -> None:
        with self._lock:
            if self.object_limit is not None and self.objects_written + 1 > self.object_limit:
                raise TargetFull(size, 0, f"object limit of {self.object_limit} reached")
            if self.byte_budget is not None and self.bytes_written + size > self.byte_budget:
                raise TargetFull(size, max(self.byte_budget - self.bytes_written, 0))
            self.bytes_written += size
            self.objects_written += 1

    def _release(self, size: int) -> None:
        with self._lock:
            self.bytes_written -= size
            self.objects_written -= 1

    # -- objects -------------------------------------------------------------
    def exists_same(self, relpath: str, sha256: str, size: int) -> bool:
        key = self._key(relpath)

        def head():
            import botocore.exceptions as bce

            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except bce.ClientError as exc:
                code, status = _error_code(exc)
                if status == 404 or code in NOT_FOUND_CODES:
                    return None
                raise

        meta = self._retry("head", head)
        if meta is None:
            return False
        if int(meta.get("ContentLength", -1)) != size:
            return False
        return (meta.get("Metadata") or {}).get("sha256", "").lower() == sha256.lower()

    def put_bytes(self, relpath: str, data: bytes, sha256: str) -> bool:
        data = bytes(data)
        return self._put(relpath, len(data), sha256, lambda: io.BytesIO(data))

    def put_file(self, relpath: str, local_path: str, sha256: str) -> bool:
        size = _local_call(os.path.getsize, local_path)

        def opener():
            return _local_call(open, local_path, "rb")

        return self._put(relpath, size, sha256, opener)

    def _put(self, relpath: str, size: int, sha256: str, opener: Callable[[], BinaryIO]) -> bool:
        key = self._key(relpath)
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StorageError("sha256 must be 64 hex digits")
        if self.exists_same(relpath, sha256, size):
            return False
        self._reserve(size)  # raises TargetFull before anything is written
        try:
            if size <= self.multipart_threshold:
                self._retry("put", lambda: self._single_put(key, size, sha256, opener))
            else:
                self._retry(
                    "multipart put",
                    lambda: self._multipart_put(key, size, sha256, opener),
                    extra_retry_codes=frozenset({"NoSuchUpload"}),
                )
        except BaseException:
            self._release(size)
            raise
        self._abort_stale()
        return True

    def _single_put(self, key: str, size: int, sha256: str, opener: Callable[[], BinaryIO]) -> None:
        with opener() as fh:
            body = _local_call(fh.read, size + 1)
        if len(body) != size or hashlib.sha256(body).hexdigest() != sha256:
            raise StorageError("input changed or sha256 mismatch; nothing written")
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentLength=size,
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode("ascii"),
            Metadata={"sha256": sha256},
            **self._put_extra,
        )

    def _multipart_put(self, key: str, size: int, sha256: str, opener: Callable[[], BinaryIO]) -> None:
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        resp = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256},
            **self._put_extra,
        )
        upload_id = resp["UploadId"]
        completed = False
        try:
            whole = hashlib.sha256()
            parts: dict[int, dict] = {}
            total = 0
            with opener() as fh, ThreadPoolExecutor(PARTS_AT_ONCE) as pool:
                sending: dict = {}  # future -> part number; at most PARTS_AT_ONCE, so none waits in the pool

                def settle(return_when) -> None:
                    done, _ = wait(sending, return_when=return_when)
                    for f in done:  # the first error raises; the pool's exit waits for the rest
                        parts[sending.pop(f)] = f.result()

                number = 0
                while True:
                    chunk = _local_call(fh.read, part_size)
                    if not chunk:
                        break
                    number += 1
                    whole.update(chunk)
                    total += len(chunk)
                    sending[pool.submit(self._upload_part, key, upload_id, number, chunk)] = number
                    del chunk
                    if len(sending) >= PARTS_AT_ONCE:
                        settle(FIRST_COMPLETED)
                if sending:
                    settle(ALL_COMPLETED)
            if total != size or whole.hexdigest() != sha256:
                raise StorageError("input changed or sha256 mismatch; nothing written")
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [parts[n] for n in sorted(parts)]},
            )
            completed = True
        finally:
            if not completed:
                self._abort(key, upload_id)

    def _upload_part(self, key: str, upload_id: str, number: int, chunk: bytes) -> dict:
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode("ascii")
        r = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=chunk,
            ContentLength=len(chunk),
            ChecksumSHA256=digest,
        )
        return {"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": digest}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            code, status = _error_code(exc)
            if code != "NoSuchUpload" and status != 404:
                with self._lock:
                    self._stale_uploads.append((key, upload_id))

    def _abort_stale(self) -> None:
        """Retry aborts that failed earlier (e.g. while the endpoint was down)."""
        with self._lock:
            stale, self._stale_uploads = self._stale_uploads, []
        for key, upload_id in stale:
            self._abort(key, upload_id)

    def read_bytes(self, relpath: str) -> bytes:
        buf = io.BytesIO()
        self._download(self._key(relpath), buf)
        return buf.getvalue()

    def iter_files(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for obj in self._iter_objects(self._list_prefix(prefix)):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            yield self._rel(key), int(obj.get("Size", 0))


class S3Source(_S3Base):
    """Lists and reads objects under ``s3://bucket/prefix``; keys may hold PHI and are never logged."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        session_token: str | None = None,
        max_attempts: int = 8,
        *,
        page_size: int = 1000,
        client_max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        retry_deadline: float | None = 300.0,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        spool_max_size: int = SPOOL_MAX,
        client: Any = None,
    ):
        super().__init__(
            url,
            endpoint_url=endpoint_url,
            region_name=region_name,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            session_token=session_token,
            max_attempts=max_attempts,
            client_max_attempts=client_max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_deadline=retry_deadline,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            page_size=page_size,
            client=client,
        )
        self.spool_max_size = spool_max_size

    def iter_entries(self) -> Iterator[SourceEntry]:
        for obj in self._iter_objects(self._list_prefix()):
            key = obj["Key"]
            if key.endswith("/"):  # "folder" marker objects
                continue
            yield SourceEntry(self._rel(key), int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'))

    def open(self, relpath: str, token: str | None = None) -> BinaryIO:
        """A seekable stream: spooled in memory up to spool_max_size, then a private temp file.
        With the listed ETag as ``token``, only that version of the object (else EntryChanged)."""
        key = self._key(relpath)
        spool = tempfile.SpooledTemporaryFile(max_size=self.spool_max_size, prefix=".medanon-s3-")
        try:
            self._download(key, spool, token)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def open_header(self, entry: SourceEntry) -> BinaryIO:
        """A seekable stream of the entry that fetches only the byte ranges read (ranged GETs
        bound to the listed ETag): reading a header does not download the pixel data."""
        return _RangedObject(self, self._key(entry.relpath), entry.size, entry.token)  # type: ignore[return-value]

    def local_path(self, relpath: str) -> None:
        return None


class _RangedObject(io.RawIOBase):
    """Read-only, seekable view of one object of known size.

    Each read that misses the ranges kept fetches one range from the read position: at least
    HEAD_BLOCK bytes for the first read of the header, FAR_BLOCK bytes further on, or the whole
    read when it is larger. The last few ranges are kept (bounded memory). Every GET carries
    If-Match with the listed ETag, so an object replaced while it is read is never read half old,
    half new (EntryChanged)."""

    KEEP = 4
    ranged = True  # discovery parses it in place instead of reading it into memory first

    def __init__(self, source: S3Source, key: str, size: int, etag: str):
        super().__init__()
        self._source, self._key, self._size, self._etag = source, key, size, etag
        self._pos = 0
        self._ranges: list[tuple[int, bytes]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos))  # one ranged GET, not one per 8 KiB

    def readinto(self, buf) -> int:
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._kept(self._pos, n)
        if data is None:
            block = HEAD_BLOCK if self._pos < HEAD_BLOCK else FAR_BLOCK
            end = min(self._size, self._pos + max(n, block))
            fetched = self._source._get_range(self._key, self._pos, end, self._etag)
            self._ranges = [(self._pos, fetched)] + self._ranges[:self.KEEP - 1]
            data = fetched[:n]
        buf[:n] = data
        self._pos += n
        return n

    def _kept(self, pos: int, n: int) -> bytes | None:
        for start, data in self._ranges:
            if start <= pos and pos + n <= start + len(data):
                return data[pos - start:pos - start + n]
        return None
