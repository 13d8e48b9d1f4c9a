"""S3Target / S3Source against a real moto server process on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # medanon is used from the checkout, not installed
    sys.path.insert(0, str(_ROOT))

try:
    from tests.s3server import MotoS3Server, aws_test_env, moto_s3  # noqa: F401  (fixtures)
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from s3server import MotoS3Server, aws_test_env, moto_s3  # noqa: F401

from medanon.storage import StorageError, TargetFull, open_source, open_target
from medanon.storage.s3 import ObjectNotFound, S3Source, S3Target

BUCKET = "medanon-test"
MIB = 1024 * 1024
PHI = "Doe^John_19450101"  # stands for PHI in a source key: must never appear in messages


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_client(server: MotoS3Server):
    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")


def target(server: MotoS3Server, prefix: str = "out", **kw) -> S3Target:
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_cap", 0.5)
    return S3Target(f"s3://{BUCKET}/{prefix}", endpoint_url=server.endpoint_url, **kw)


def keys(server: MotoS3Server) -> list[str]:
    return [o["Key"] for o in raw_client(server).list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def pending_uploads(server: MotoS3Server) -> list:
    return raw_client(server).list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_kw):
        yield self._body


def fake_error(status: int, code: str):
    """A before-send handler result: an HTTP error response that never reached the server."""
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    return AWSResponse("http://127.0.0.1/", status, {}, _Raw(body))


class InFlight:
    """Lengthens each call of ``cls.name`` by a round trip to a distant endpoint (50 ms) and records
    how many calls were under way at once (``most``)."""

    def __init__(self, monkeypatch, cls, name: str, delay: float = 0.05):
        self.now = self.most = 0
        lock = threading.Lock()
        real = getattr(cls, name)

        def slowed(*args, **kw):
            with lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                time.sleep(delay)
                return real(*args, **kw)
            finally:
                with lock:
                    self.now -= 1

        self.call = slowed
        monkeypatch.setattr(cls, name, slowed)

    def overlapped_then_one_at_a_time(self, monkeypatch, setting: str, run, module=None) -> tuple:
        """``run()`` as configured, then with ``<module>.<setting>`` at 1 (module: medanon.pipeline
        unless given): both results, once the calls were seen to overlap in the first and not in the
        second."""
        from medanon import pipeline

        self.most = 0
        overlapped = run()
        assert self.most > 1
        monkeypatch.setattr(module or pipeline, setting, 1)
        self.most = 0
        one = run()
        assert self.most == 1
        return overlapped, one


# -- basics ------------------------------------------------------------------
def test_put_bytes_round_trip_and_idempotent_skip(moto_s3):
    t = target(moto_s3)
    assert t.url == f"s3://{BUCKET}/out"
    data = b"DICM" * 1000
    assert t.put_bytes("P1/S1/1.dcm", data, sha(data)) is True
    head = raw_client(moto_s3).head_object(Bucket=BUCKET, Key="out/P1/S1/1.dcm")
    assert head["Metadata"]["sha256"] == sha(data)
    assert head["ContentLength"] == len(data)
    assert t.read_bytes("P1/S1/1.dcm") == data
    assert t.exists_same("P1/S1/1.dcm", sha(data), len(data))
    assert not t.exists_same("P1/S1/1.dcm", sha(b"other"), len(data))
    assert not t.exists_same("P1/S1/missing.dcm", sha(data), len(data))

    assert t.put_bytes("P1/S1/1.dcm", data, sha(data)) is False  # skipped: identical
    assert (t.bytes_written, t.objects_written) == (len(data), 1)
    new = data + b"x"
    assert t.put_bytes("P1/S1/1.dcm", new, sha(new)) is True  # changed content is rewritten
    assert t.read_bytes("P1/S1/1.dcm") == new
    with pytest.raises(FileNotFoundError):
        t.read_bytes("P1/S1/missing.dcm")
    with pytest.raises(StorageError):
        t.put_bytes("../escape", data, sha(data))


def test_put_file_single_put_and_sha_mismatch(moto_s3, tmp_path):
    t = target(moto_s3, byte_budget=10_000)
    f = tmp_path / f"{PHI}.dcm"
    f.write_bytes(os.urandom(3000))
    assert t.put_file("P2/a.dcm", str(f), sha(f.read_bytes())) is True
    assert t.read_bytes("P2/a.dcm") == f.read_bytes()
    assert t.put_file("P2/a.dcm", str(f), sha(f.read_bytes())) is False

    with pytest.raises(StorageError) as ei:
        t.put_file("P2/b.dcm", str(f), sha(b"not this file"))
    assert "out/P2/b.dcm" not in keys(moto_s3)
    assert t.bytes_written == 3000  # the failed put released its reservation

    with pytest.raises(StorageError) as ei:
        t.put_file("P2/c.dcm", str(tmp_path / f"{PHI}-gone.dcm"), sha(b""))
    assert PHI not in str(ei.value) and ei.value.__context__ is None


def test_multipart_upload_invisible_until_complete(moto_s3, tmp_path):
    data = os.urandom(11 * MIB)
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    t = target(moto_s3, multipart_threshold=5 * MIB)
    observer = raw_client(moto_s3)
    seen = []

    def after_part(http_response, parsed, model, **kw):
        seen.append(parsed.get("ChecksumSHA256"))
        # a part is stored, the object must not exist yet
        with pytest.raises(botocore.exceptions.ClientError) as ei:
            observer.head_object(Bucket=BUCKET, Key="out/P3/big.dcm")
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert observer.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0

    t.client.meta.events.register("after-call.s3.UploadPart", after_part)
    assert t.put_file("P3/big.dcm", str(f), sha(data)) is True
    assert len(seen) == 3  # 5 + 5 + 1 MiB
    head = observer.head_object(Bucket=BUCKET, Key="out/P3/big.dcm")
    assert head["ContentLength"] == len(data) and head["Metadata"]["sha256"] == sha(data)
    assert t.read_bytes("P3/big.dcm") == data
    assert pending_uploads(moto_s3) == []
    assert t.put_file("P3/big.dcm", str(f), sha(data)) is False
    assert len(seen) == 3

    # a multipart body whose digest does not match is aborted, never completed
    t.client.meta.events.unregister("after-call.s3.UploadPart", after_part)
    with pytest.raises(StorageError):
        t.put_file("P3/bad.dcm", str(f), sha(b"wrong"))
    assert "out/P3/bad.dcm" not in keys(moto_s3)
    assert pending_uploads(moto_s3) == []


def test_multipart_upload_sends_parts_at_once_in_order(moto_s3, monkeypatch):
    """A large object's parts go up several at a time while the next is read and hashed; the object
    is the same as when they go one at a time (parts completed in number order, whatever order
    they finished in), and an upload that fails part-way leaves nothing behind."""
    from medanon.storage import s3

    data = os.urandom(23 * MIB)  # 5 parts of 5 MiB: 4 at once, then the last
    t = target(moto_s3, multipart_threshold=5 * MIB)
    parts = InFlight(monkeypatch, S3Target, "_upload_part")
    observer = raw_client(moto_s3)

    names = iter(["P9/at-once.dcm", "P9/in-turn.dcm"])

    def upload():
        key = f"out/{next(names)}"
        assert t.put_bytes(key[4:], data, sha(data)) is True
        obj = observer.get_object(Bucket=BUCKET, Key=key)
        return obj["Body"].read(), obj["Metadata"]["sha256"]

    at_once, one = parts.overlapped_then_one_at_a_time(monkeypatch, "PARTS_AT_ONCE", upload, module=s3)
    assert at_once == one == (data, sha(data))
    assert pending_uploads(moto_s3) == []

    monkeypatch.setattr(s3, "PARTS_AT_ONCE", 4)
    real = parts.call

    def third_fails(self, key, upload_id, number, chunk):
        if number == 3:
            raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDenied", "Message": "x"}}, "UploadPart")
        return real(self, key, upload_id, number, chunk)

    monkeypatch.setattr(S3Target, "_upload_part", third_fails)
    with pytest.raises(StorageError):
        t.put_bytes("P9/failed.dcm", data, sha(data))
    assert "out/P9/failed.dcm" not in keys(moto_s3) and pending_uploads(moto_s3) == []


def test_multipart_fatal_error_aborts_and_transient_error_restarts(moto_s3):
    data = os.urandom(11 * MIB)
    t = target(moto_s3, multipart_threshold=5 * MIB, client_max_attempts=1)
    calls = {"n": 0}
    mode = {"status": 403, "code": "AccessDenied"}

    def fail_second_part(request, **kw):
        if "partNumber=2" in request.url:
            calls["n"] += 1
            if mode["status"] == 403 or calls["n"] == 1:
                return fake_error(mode["status"], mode["code"])
        return None

    t.client.meta.events.register("before-send.s3.UploadPart", fail_second_part)
    with pytest.raises(StorageError) as ei:
        t.put_bytes("P4/x.dcm", data, sha(data))
    assert "AccessDenied" in str(ei.value) and "P4" not in str(ei.value)
    assert keys(moto_s3) == [] and pending_uploads(moto_s3) == []
    assert t.bytes_written == 0 and t.objects_written == 0

    # 503 SlowDown once: the whole multipart upload restarts and succeeds
    mode.update(status=503, code="SlowDown")
    calls["n"] = 0
    assert t.put_bytes("P4/x.dcm", data, sha(data)) is True
    assert calls["n"] == 2
    assert t.read_bytes("P4/x.dcm") == data
    assert pending_uploads(moto_s3) == []  # the first, failed upload was aborted


def test_throttling_is_retried_with_backoff(moto_s3):
    t = target(moto_s3, client_max_attempts=1)
    n = {"put": 0}

    def throttle(request, **kw):
        n["put"] += 1
        if n["put"] <= 2:
            return fake_error(503, "SlowDown")
        return None

    t.client.meta.events.register("before-send.s3.PutObject", throttle)
    assert t.put_bytes("P5/t.dcm", b"abc", sha(b"abc")) is True
    assert n["put"] == 3

    t2 = target(moto_s3, client_max_attempts=1, max_attempts=3)
    t2.client.meta.events.register("before-send.s3.PutObject", lambda **kw: fake_error(503, "SlowDown"))
    with pytest.raises(StorageError, match="after 3 attempts: SlowDown"):
        t2.put_bytes("P5/u.dcm", b"abc", sha(b"abc"))
    assert "out/P5/u.dcm" not in keys(moto_s3)


# -- limits --------------------------------------------------------------------
def test_byte_budget_and_object_limit_raise_before_writing(moto_s3):
    assert target(moto_s3).free_bytes() is None
    t = target(moto_s3, byte_budget=100)
    assert t.free_bytes() == 100
    assert t.put_bytes("a", b"x" * 60, sha(b"x" * 60))
    assert t.free_bytes() == 40
    with pytest.raises(TargetFull) as ei:
        t.put_bytes("b", b"y" * 50, sha(b"y" * 50))
    assert (ei.value.needed, ei.value.available) == (50, 40)
    assert keys(moto_s3) == ["out/a"]
    assert t.put_bytes("a", b"x" * 60, sha(b"x" * 60)) is False  # a skip needs no budget

    lim = target(moto_s3, prefix="lim", object_limit=2)
    lim.put_bytes("1", b"1", sha(b"1"))
    lim.put_bytes("2", b"2", sha(b"2"))
    assert lim.free_bytes() == 0
    with pytest.raises(TargetFull, match="object limit"):
        lim.put_bytes("3", b"3", sha(b"3"))
    assert "lim/3" not in keys(moto_s3)

    resumed = target(moto_s3, prefix="res", byte_budget=100, already_used_bytes=90, object_limit=5,
                     already_used_objects=4)
    assert resumed.free_bytes() == 10
    with pytest.raises(TargetFull):
        resumed.put_bytes("big", b"z" * 11, sha(b"z" * 11))
    assert resumed.put_bytes("ok", b"z" * 10, sha(b"z" * 10))
    assert resumed.free_bytes() == 0
    assert not any(k.startswith("res/big") for k in keys(moto_s3))


@pytest.mark.parametrize("status,code", [(403, "QuotaExceeded"), (400, "XMinioAdminBucketQuotaExceeded"),
                                         (507, "XMinioStorageFull"), (507, "")])
def test_a_write_refused_for_space_is_a_full_target(moto_s3, status, code):
    """A bucket quota or full drives (Ceph RGW, MinIO, any 507) end the write at once as TargetFull,
    never retried and never a StorageError, with nothing left behind: single and multipart puts."""
    t = target(moto_s3, client_max_attempts=1, byte_budget=1000)
    calls = {"n": 0}

    def refuse(**kw):
        calls["n"] += 1
        return fake_error(status, code)

    t.client.meta.events.register("before-send.s3.PutObject", refuse)
    with pytest.raises(TargetFull, match="storage refused the write"):
        t.put_bytes("Q/a.dcm", b"abc", sha(b"abc"))
    assert calls["n"] == 1 and "out/Q/a.dcm" not in keys(moto_s3)
    assert t.free_bytes() == 1000  # nothing was counted for the refused write
    t.client.meta.events.unregister("before-send.s3.PutObject", refuse)
    assert t.put_bytes("Q/a.dcm", b"abc", sha(b"abc")) is True  # space added: the same target writes it

    big = os.urandom(8 * 1024 * 1024)
    m = target(moto_s3, client_max_attempts=1, multipart_threshold=1024 * 1024, part_size=5 * 1024 * 1024)
    m.part_size = 1024 * 1024  # small parts for the test (the S3 minimum is not enforced by moto)
    sent = []

    def refuse_second_part(request, **kw):  # parts go up in threads: chosen by number, not by call order
        sent.append(request.url)
        return fake_error(status, code) if "partNumber=2&" in request.url + "&" else None

    m.client.meta.events.register("before-send.s3.UploadPart", refuse_second_part)
    with pytest.raises(TargetFull):
        m.put_bytes("Q/big.dcm", big, sha(big))
    # parts go up several at once: those already under way when the refusal came may be sent, then
    # the upload stops (8 parts here)
    from medanon.storage.s3 import PARTS_AT_ONCE

    assert 2 <= len(sent) <= 2 + PARTS_AT_ONCE < 8 and "out/Q/big.dcm" not in keys(moto_s3)
    assert m.client.list_multipart_uploads(Bucket="medanon-test").get("Uploads", []) == []  # aborted

    source = S3Source("s3://medanon-test/out", endpoint_url=moto_s3.endpoint_url, max_attempts=1,
                      client_max_attempts=1)
    source.client.meta.events.register("before-send.s3.GetObject", lambda **kw: fake_error(507, "XMinioStorageFull"))
    with pytest.raises(StorageError) as ei:  # a source never reads as a full target
        source.open("Q/a.dcm").read()
    assert not isinstance(ei.value, TargetFull)


def test_iter_files_paginates(moto_s3):
    t = target(moto_s3, page_size=2)
    for i in range(5):
        t.put_bytes(f"P6/S{i % 2}/{i}.dcm", bytes(i + 1), sha(bytes(i + 1)))
    raw_client(moto_s3).put_object(Bucket=BUCKET, Key="other/z", Body=b"not ours")
    pages = {"n": 0}
    t.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: pages.__setitem__("n", pages["n"] + 1))
    files = sorted(t.iter_files())
    assert files == sorted((f"P6/S{i % 2}/{i}.dcm", i + 1) for i in range(5))
    assert pages["n"] == 3
    assert sorted(t.iter_files("P6/S1")) == [("P6/S1/1.dcm", 2), ("P6/S1/3.dcm", 4)]
    assert list(t.iter_files("nothing")) == []


# -- source --------------------------------------------------------------------
def test_s3_source_listing_and_streaming_open(moto_s3):
    c = raw_client(moto_s3)
    big = os.urandom(3 * MIB)
    objects = {f"{PHI}/study1/1.dcm": b"one", f"{PHI}/study1/2.dcm": b"two", f"{PHI}/big.dcm": big}
    etags = {}
    for rel, body in objects.items():
        etags[rel] = c.put_object(Bucket=BUCKET, Key=f"archive/{rel}", Body=body)["ETag"].strip('"')
    c.put_object(Bucket=BUCKET, Key="archive/folder/", Body=b"")  # folder marker: ignored
    c.put_object(Bucket=BUCKET, Key="elsewhere/x.dcm", Body=b"x")

    src = open_source(f"s3://{BUCKET}/archive", endpoint_url=moto_s3.endpoint_url, page_size=2, spool_max_size=MIB)
    assert isinstance(src, S3Source) and src.url == f"s3://{BUCKET}/archive"
    entries = {e.relpath: e for e in src.iter_entries()}
    assert set(entries) == set(objects)
    for rel, body in objects.items():
        assert entries[rel].size == len(body)
        assert entries[rel].token == etags[rel] and '"' not in entries[rel].token
        assert src.local_path(rel) is None

    with src.open(f"{PHI}/big.dcm") as fh:
        assert fh._rolled  # over spool_max_size: spilled to a private temp file, not RAM
        assert fh.read(4) == big[:4]
        fh.seek(2 * MIB)
        assert fh.read(10) == big[2 * MIB:2 * MIB + 10]
        fh.seek(0)
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(big).digest()
    with src.open(f"{PHI}/study1/1.dcm") as fh:
        assert not fh._rolled and fh.read() == b"one"

    with pytest.raises(FileNotFoundError) as ei:
        src.open(f"{PHI}/missing.dcm")
    assert isinstance(ei.value, ObjectNotFound)
    assert PHI not in str(ei.value) and ei.value.__context__ is None


def test_open_target_factory(moto_s3):
    t = open_target(f"s3://{BUCKET}/fac/", byte_budget=5, endpoint_url=moto_s3.endpoint_url)
    assert isinstance(t, S3Target) and t.url == f"s3://{BUCKET}/fac" and t.free_bytes() == 5
    assert "testing" not in repr(t)


# -- outages -------------------------------------------------------------------
def test_server_killed_mid_run_put_succeeds_after_restart(moto_s3):
    t = target(moto_s3, max_attempts=12, backoff_base=0.2, backoff_cap=1.0, client_max_attempts=1,
               connect_timeout=1, read_timeout=5)
    assert t.put_bytes("P7/before.dcm", b"before", sha(b"before"))
    moto_s3.kill()
    result: dict = {}

    def run():
        try:
            result["ok"] = t.put_bytes("P7/during.dcm", b"during", sha(b"during"))
        except BaseException as exc:  # pragma: no cover - reported below
            result["exc"] = exc

    th = threading.Thread(target=run)
    th.start()
    time.sleep(1.5)
    assert th.is_alive()  # still retrying
    moto_s3.restart()  # comes back empty but with the bucket (state is in memory)
    th.join(30)
    assert not th.is_alive()
    assert result.get("ok") is True, result
    assert t.read_bytes("P7/during.dcm") == b"during"


def test_server_killed_during_multipart_upload_restarts_upload(moto_s3):
    data = os.urandom(11 * MIB)
    t = target(moto_s3, multipart_threshold=5 * MIB, max_attempts=12, backoff_base=0.2, backoff_cap=1.0,
               client_max_attempts=1, connect_timeout=1, read_timeout=5)
    state = {"killed": False, "restarter": None}
    lock = threading.Lock()  # parts go up in threads: only the first one to complete kills the server

    def kill_after_first_part(**kw):
        with lock:
            first, state["killed"] = not state["killed"], True
        if first:
            moto_s3.kill()

            def later():
                time.sleep(1.0)
                moto_s3.restart()

            state["restarter"] = threading.Thread(target=later)
            state["restarter"].start()

    t.client.meta.events.register("after-call.s3.UploadPart", kill_after_first_part)
    assert t.put_bytes("P8/big.dcm", data, sha(data)) is True
    state["restarter"].join(20)
    assert t.read_bytes("P8/big.dcm") == data
    assert pending_uploads(moto_s3) == []


def test_connection_lost_for_good_leaves_no_object(moto_s3):
    """The network fails (server still up to be inspected): StorageError, nothing visible, upload aborted."""
    data = os.urandom(6 * MIB)
    t = target(moto_s3, multipart_threshold=5 * MIB, max_attempts=3, client_max_attempts=1)

    def drop(request, **kw):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url=request.url)

    t.client.meta.events.register("before-send.s3.UploadPart", lambda request, **kw:
                                  drop(request) if "partNumber=2" in request.url else None)
    t.client.meta.events.register("before-send.s3.PutObject", drop)
    with pytest.raises(StorageError) as ei:
        t.put_bytes("P9/big.dcm", data, sha(data))
    assert "after 3 attempts: EndpointConnectionError" in str(ei.value)
    assert "P9" not in str(ei.value) and ei.value.__context__ is None
    with pytest.raises(StorageError):
        t.put_bytes("P9/small.dcm", b"s", sha(b"s"))
    assert keys(moto_s3) == [] and pending_uploads(moto_s3) == []
    assert t.bytes_written == 0


def test_server_down_for_good_fails_in_bounded_time(moto_s3):
    t = target(moto_s3, max_attempts=4, backoff_base=0.1, backoff_cap=0.5, client_max_attempts=2,
               connect_timeout=1, read_timeout=2, aws_access_key_id="AKIDSECRETISH", aws_secret_access_key="s3cr3t")
    moto_s3.kill()
    start = time.monotonic()
    with pytest.raises(StorageError) as ei:
        t.put_bytes("P10/x.dcm", b"x", sha(b"x"))
    assert time.monotonic() - start < 15
    msg = str(ei.value)
    assert "P10" not in msg and "s3cr3t" not in msg and "AKID" not in msg
    assert "after 4 attempts" in msg
    assert t.bytes_written == 0 and t.objects_written == 0

    src = S3Source(f"s3://{BUCKET}/archive", endpoint_url=moto_s3.endpoint_url, max_attempts=2, backoff_base=0.05)
    with pytest.raises(StorageError):
        list(src.iter_entries())
    with pytest.raises(StorageError) as ei:
        src.open(f"{PHI}/x.dcm")
    assert PHI not in str(ei.value)

    # retry_deadline also bounds the total wait
    t2 = target(moto_s3, max_attempts=100, backoff_base=0.2, backoff_cap=0.2, client_max_attempts=1,
                retry_deadline=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError):
        t2.put_bytes("P10/y.dcm", b"y", sha(b"y"))
    assert time.monotonic() - start < 5


# -- header reads (discovery) ---------------------------------------------------
def _big_instances() -> dict[str, bytes]:
    """Real DICOM headers (pydicom's CT_small) with pixel data far past the first ranged read:
    native 2 MiB as the last element ("plain"), the same with CT_small's trailing padding element
    after the pixel data, a truncated copy, and encapsulated in 24 fragments of 100 kB."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from medanon.samples import data_file

    def encoded(ds) -> bytes:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    out = {}
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(range(256)) * (2 * MIB // 256)
    out["padded.dcm"] = encoded(ds)
    del ds[0xFFFCFFFC]  # DataSetTrailingPadding
    out["native.dcm"] = encoded(ds)
    out["truncated.dcm"] = out["native.dcm"][:-MIB]

    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.NumberOfFrames = 24
    ds.PixelData = encapsulate([bytes([k]) * 100_000 for k in range(24)])
    ds["PixelData"].VR = "OB"
    out["encapsulated.dcm"] = encoded(ds)
    return out


def test_discovery_reads_only_headers_of_objects(moto_s3, tmp_path, monkeypatch):
    from medanon.discover import inspect_entry
    from medanon.storage import LocalSource

    files = _big_instances()
    c = raw_client(moto_s3)
    for name, body in files.items():
        c.put_object(Bucket=BUCKET, Key=f"hdr/{PHI}/{name}", Body=body)
        (tmp_path / name).write_bytes(body)
    src = S3Source(f"s3://{BUCKET}/hdr", endpoint_url=moto_s3.endpoint_url)
    fetched: list[tuple[int, int]] = []
    real_get_range = S3Source._get_range

    def counting(self, key, start, end, etag):
        fetched.append((start, end))
        return real_get_range(self, key, start, end, etag)

    monkeypatch.setattr(S3Source, "_get_range", counting)
    monkeypatch.setattr(S3Source, "open", lambda *a: pytest.fail("discovery downloaded a whole object"))

    local = LocalSource(tmp_path)
    entries = {e.relpath.rsplit("/", 1)[1]: e for e in src.iter_entries()}
    for name, body in files.items():
        fetched.clear()
        got = inspect_entry(src, entries[name]).as_row()
        want = inspect_entry(local, next(e for e in local.iter_entries() if e.relpath == name)).as_row()
        for k in ("relpath", "token"):
            got.pop(k), want.pop(k)
        assert got == want, name  # the same outcome as reading the whole local file
        moved = sum(e - s for s, e in fetched)
        if name == "native.dcm":
            assert got["kind"] == "dicom" and len(fetched) == 1 and moved <= 256 * 1024
        elif name in ("encapsulated.dcm", "padded.dcm"):
            # fragment headers, or the elements after the pixel data, are reached by small ranged reads
            assert got["kind"] == "dicom" and moved < len(body) / 2, (name, fetched)
        else:
            assert got["reason"] == "truncated"

    # an object replaced after it was listed is not read half old, half new: "changed", and the
    # next run lists its new ETag
    c.put_object(Bucket=BUCKET, Key=f"hdr/{PHI}/native.dcm", Body=files["native.dcm"][:-2] + b"\0\0")
    got = inspect_entry(src, entries["native.dcm"])
    assert (got.kind, got.reason) == ("quarantine", "changed")

    # the storage failing is not a property of the file: it is raised, never a quarantine reason
    quick = S3Source(f"s3://{BUCKET}/hdr", endpoint_url=moto_s3.endpoint_url, max_attempts=2,
                     backoff_base=0.05, client_max_attempts=1, connect_timeout=1, read_timeout=2)
    moto_s3.kill()
    with pytest.raises(StorageError) as ei:
        inspect_entry(quick, entries["encapsulated.dcm"])
    assert PHI not in str(ei.value) and not isinstance(ei.value, OSError)


def test_an_inspection_task_overlaps_its_ranged_gets_from_s3(moto_s3, tmp_path, monkeypatch):
    """From an S3 source, inspect_batch reads several headers at once (each a ranged GET: threads
    overlap the round trips), with the same outcome, in the same order, as one read at a time."""
    from medanon import pipeline
    from medanon.profile import get_profile

    files = _big_instances()
    c = raw_client(moto_s3)
    for k in range(4):
        for name, body in files.items():
            c.put_object(Bucket=BUCKET, Key=f"many/{PHI}/{k}/{name}", Body=body)
    url = f"s3://{BUCKET}/many"
    cfg = pipeline.WorkerConfig(source=url, target=str(tmp_path / "out"), profile=get_profile("research"),
                                key=b"k" * 32, source_options={"endpoint_url": moto_s3.endpoint_url})
    entries = [(i, e.relpath, e.size, e.token) for i, e in enumerate(cfg.open_source().iter_entries())]
    ranges = InFlight(monkeypatch, S3Source, "_get_range")
    together, one_by_one = ranges.overlapped_then_one_at_a_time(monkeypatch, "REMOTE_HEADER_READS",
                                                                lambda: pipeline.inspect_batch(cfg, entries))
    assert [i for i, _ in together] == [i for i, _ in one_by_one] == list(range(len(entries)))
    assert [it.as_row() for _, it in together] == [it.as_row() for _, it in one_by_one]
    assert {it.kind for _, it in together} == {"dicom", "quarantine"}

    # the storage failing fails the batch (StorageError) without trying every header left
    monkeypatch.setattr(pipeline, "REMOTE_HEADER_READS", 8)
    quick = cfg.model_copy(update={"source_options": dict(cfg.source_options, max_attempts=1, client_max_attempts=1,
                                                          connect_timeout=1, read_timeout=2)})
    calls = []
    monkeypatch.setattr(S3Source, "_get_range", lambda *a: calls.append(1) or ranges.call(*a))
    moto_s3.kill()
    many = [(i, *e[1:]) for i, e in enumerate(entries * 20)]
    with pytest.raises(StorageError):
        pipeline.inspect_batch(quick, many)
    assert len(calls) < len(many) // 2  # Executor.map cancels the reads not yet started


def test_scrub_reads_only_the_listed_version(moto_s3, tmp_path):
    """The scrub downloads an object only in the version discovery listed (If-Match on its ETag):
    one replaced in between is quarantined as "changed", never scrubbed as another version; the
    others are exported."""
    from medanon.pipeline import WorkerConfig, scrub_batch
    from medanon.profile import get_profile
    from medanon.storage import EntryChanged

    files = _big_instances()
    c = raw_client(moto_s3)
    for name in ("native.dcm", "encapsulated.dcm"):
        c.put_object(Bucket=BUCKET, Key=f"scrub/{PHI}/{name}", Body=files[name])
    src = S3Source(f"s3://{BUCKET}/scrub", endpoint_url=moto_s3.endpoint_url)
    listed = {e.relpath.rsplit("/", 1)[1]: e for e in src.iter_entries()}
    c.put_object(Bucket=BUCKET, Key=f"scrub/{PHI}/native.dcm", Body=files["padded.dcm"])  # replaced

    with pytest.raises(EntryChanged) as ei:
        src.open(listed["native.dcm"].relpath, listed["native.dcm"].token)
    assert PHI not in str(ei.value) and ei.value.__context__ is None
    with src.open(listed["encapsulated.dcm"].relpath, listed["encapsulated.dcm"].token) as fh:
        assert fh.read() == files["encapsulated.dcm"]

    cfg = WorkerConfig(source=src.url, target=str(tmp_path / "out"), profile=get_profile("research"),
                       key=b"k" * 32, source_options={"endpoint_url": moto_s3.endpoint_url})
    items = [(1, listed["native.dcm"].relpath, "a/1.dcm", listed["native.dcm"].token),
             (2, listed["encapsulated.dcm"].relpath, "a/2.dcm", listed["encapsulated.dcm"].token)]
    result = scrub_batch(cfg, 1, items)
    assert result["quarantined"] == {1: "changed"} and result["exported"] == 1
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["2.dcm"]


def test_a_scrub_task_downloads_the_next_objects_while_it_scrubs(moto_s3, tmp_path, monkeypatch):
    """From an S3 source, scrub_batch downloads the next REMOTE_READS_AHEAD objects in threads while
    it scrubs the current one: with a 50 ms round trip the downloads overlap, and the outputs, the
    summary and the quarantine are the same as one download at a time, in the same order. An object
    changed since listing is quarantined as 'changed' either way. A full target ends the batch with
    every stream downloaded ahead closed and the downloads not started cancelled."""
    from pydicom.data import get_testdata_file

    from conftest import tree_bytes

    from medanon import pipeline
    from medanon.profile import get_profile

    bodies = [Path(get_testdata_file(name)).read_bytes() for name in ("CT_small.dcm", "MR_small.dcm")]
    c = raw_client(moto_s3)
    for k in range(12):
        c.put_object(Bucket=BUCKET, Key=f"ahead/{PHI}/{k:02d}.dcm", Body=bodies[k % 2])
    url = f"s3://{BUCKET}/ahead"
    source = open_source(url, endpoint_url=moto_s3.endpoint_url)
    items = [(i, e.relpath, f"out/{i:02d}.dcm", e.token) for i, e in enumerate(sorted(
        source.iter_entries(), key=lambda e: e.relpath))]
    c.put_object(Bucket=BUCKET, Key=f"ahead/{PHI}/07.dcm", Body=bodies[0])  # changed since listing

    downloads = InFlight(monkeypatch, S3Source, "_download")
    opened = []
    real_open = S3Source.open

    def recorded_open(self, relpath, token=None):
        fh = real_open(self, relpath, token)
        opened.append(fh)
        return fh

    monkeypatch.setattr(S3Source, "open", recorded_open)

    def run(name: str, **extra):
        cfg = pipeline.WorkerConfig(source=url, target=str(tmp_path / name), profile=get_profile("research"),
                                    key=b"k" * 32, source_options={"endpoint_url": moto_s3.endpoint_url}, **extra)
        return pipeline.scrub_batch(cfg, 1, items)

    ahead, one = downloads.overlapped_then_one_at_a_time(monkeypatch, "REMOTE_READS_AHEAD", lambda: run(
        "ahead" if pipeline.REMOTE_READS_AHEAD > 1 else "one"))
    assert ahead == one
    assert ahead["quarantined"] == {7: "changed"} and ahead["exported"] == 11
    assert tree_bytes(tmp_path / "ahead") == tree_bytes(tmp_path / "one")
    assert all(fh.closed for fh in opened)

    # a full target: the batch stops, and nothing downloaded ahead stays open
    monkeypatch.setattr(pipeline, "REMOTE_READS_AHEAD", 4)
    opened.clear()
    size = len(bodies[0])
    full = run("full", byte_budget=3 * size)
    assert full["target_full"] and 0 < full["exported"] < 6 and full["pending"]
    assert 0 < len(opened) < len(items) and all(fh.closed for fh in opened)



def test_a_scrub_task_uploads_to_a_bucket_while_it_scrubs_the_next_instances(moto_s3, tmp_path, monkeypatch):
    """To an S3 target, scrub_batch uploads up to REMOTE_WRITES_AT_ONCE small instances in threads
    while it scrubs the next: with a 50 ms round trip the uploads overlap, and the summary (outputs in
    the order of the items), the quarantine and the objects are those of one upload at a time. An
    instance above REMOTE_WRITE_OVERLAP_MAX is written in turn, after the uploads before it. A full
    target ends the batch: every item is then exported, quarantined or pending, the bucket holds
    exactly the exported ones, and a second batch of the pending ones completes the same objects."""
    from pydicom.data import get_testdata_file

    from medanon import pipeline
    from medanon.profile import get_profile

    src = tmp_path / "src"
    src.mkdir()
    bodies = [Path(get_testdata_file(name)).read_bytes() for name in ("CT_small.dcm", "MR_small.dcm")]
    for k in range(14):
        (src / f"{k:02d}.dcm").write_bytes(bodies[k % 4 != 0] if k != 9 else b"DICM" * 10)  # 9: not DICOM
    items = [(k, f"{k:02d}.dcm", f"o/{k:02d}.dcm", None) for k in range(14)]
    monkeypatch.setattr(pipeline, "REMOTE_WRITE_OVERLAP_MAX", 20_000)  # CT_small (39 kB) is written in turn

    puts = InFlight(monkeypatch, S3Target, "_single_put")

    def run(prefix: str, batch=items, **extra):
        cfg = pipeline.WorkerConfig(source=str(src), target=f"s3://{BUCKET}/{prefix}", profile=get_profile("research"),
                                    key=b"k" * 32, target_options={"endpoint_url": moto_s3.endpoint_url}, **extra)
        return pipeline.scrub_batch(cfg, 1, batch)

    def objects(prefix: str) -> dict[str, bytes]:
        c = raw_client(moto_s3)
        found = c.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
        return {o["Key"].split("/", 1)[1]: c.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found}

    at_once, one = puts.overlapped_then_one_at_a_time(monkeypatch, "REMOTE_WRITES_AT_ONCE", lambda: run(
        "at-once" if pipeline.REMOTE_WRITES_AT_ONCE > 1 else "one"))
    assert at_once == one and list(at_once["outputs"]) == list(one["outputs"]) == [k for k in range(14) if k != 9]
    assert at_once["quarantined"] == {9: "scrub-error"}
    assert at_once["exported"] == 13 and objects("at-once") == objects("one") and len(objects("one")) == 13

    monkeypatch.setattr(pipeline, "REMOTE_WRITES_AT_ONCE", 4)
    full = run("full", byte_budget=3 * len(bodies[0]))
    ids = set(range(14))
    exported, pending, quarantined = set(full["outputs"]), set(full["pending"]), set(full["quarantined"])
    assert full["target_full"] and 0 < len(exported) < 13 and pending
    assert exported | pending | quarantined == ids and not (exported & pending or exported & quarantined)
    assert set(objects("full")) == {f"o/{k:02d}.dcm" for k in exported}  # nothing written unrecorded
    rest = run("full", [i for i in items if i[0] in pending])
    assert not rest["target_full"] and set(rest["outputs"]) | set(rest["quarantined"]) == pending
    assert objects("full") == objects("one")

    # the bucket refuses one upload for want of space (a quota) while the next ones, already under
    # way, succeed: they are exported, not pending, and the batch ends at the refused one
    def refusing_put(self, key, size, digest, opener):
        if key.endswith("o/05.dcm"):
            raise TargetFull(0, 0, "the storage refused the write (QuotaExceeded)")
        return puts.call(self, key, size, digest, opener)

    monkeypatch.setattr(S3Target, "_single_put", refusing_put)
    refused = run("refused")
    assert refused["target_full"] and list(refused["outputs"]) == [0, 1, 2, 3, 4, 6, 7]
    assert refused["pending"] == [5, 8, 9, 10, 11, 12, 13]
    assert objects("refused") == {k: v for k, v in objects("one").items() if k in {
        f"o/{n:02d}.dcm" for n in refused["outputs"]}}
