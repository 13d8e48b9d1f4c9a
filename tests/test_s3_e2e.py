"""End to end on S3-compatible storage: the medanon CLI (and the flow with block names only, as the
Prefect UI runs it) in subprocesses, against a real S3 HTTP server (moto, on 127.0.0.1) and a real
Prefect server started by these tests. Objects are read back with boto3 and inspected."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import pydicom
import pytest
from botocore.config import Config

from medanon.keys import Pseudonymizer
from medanon.localserver import prefect_server
from medanon.samples import build_sample_archive, build_series_archive
from conftest import ROOT, TEST_KEY, exported_pairs, phi_needles, run_cli, run_json, source_instances

try:
    from tests.s3server import DUMMY_ENV, SCRUB_ENV, MotoS3Server
except ImportError:  # tests/ itself on sys.path
    from s3server import DUMMY_ENV, SCRUB_ENV, MotoS3Server

BUCKET = "medanon-e2e"
REGION = "us-east-1"
DEPTH = {"flat": 1, "patient": 2, "study": 3, "series": 4}


# -- servers and environments --------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One Prefect server for the module: CLI runs skip the embedded server's start-up, and blocks
    registered once are seen by every run."""
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home) as url:
        yield url, home


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = MotoS3Server(buckets=[BUCKET], log_path=str(log)).start()
    try:
        yield server
    finally:
        server.kill()


def _env(home: Path, api: str | None, aws: bool = True) -> dict:
    """CLI environment: private Prefect home, the test key, and either dummy AWS credentials in the
    environment (the standard chain) or no credentials anywhere (then only a block can give them)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MEDANON_", "AWS_")) and k not in SCRUB_ENV}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", MEDANON_KEY=TEST_KEY,
               PYTHONWARNINGS="ignore", AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
               AWS_CONFIG_FILE=str(home / "no-aws-config"), AWS_EC2_METADATA_DISABLED="true",
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    if api:
        env["PREFECT_API_URL"] = api
    if aws:
        env.update(DUMMY_ENV)
    return env


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))


def _keys(client, bucket: str, prefix: str) -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix.rstrip("/") + "/"}
        if token:
            kw["ContinuationToken"] = token
        page = client.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated"):
            return out


def _read_back(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """relpath -> body of every object under prefix; each one complete: its body matches the SHA-256
    in its metadata, and every .dcm parses as DICOM."""
    objects = {}
    for key in _keys(client, bucket, prefix):
        obj = client.get_object(Bucket=bucket, Key=key)
        body = obj["Body"].read()
        assert obj["Metadata"].get("sha256") == hashlib.sha256(body).hexdigest(), "object body != its checksum"
        rel = key[len(prefix.rstrip("/")) + 1:]
        if rel.endswith(".dcm"):
            pydicom.dcmread(io.BytesIO(body))
        objects[rel] = body
    return objects


def _popen_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medanon.cli", *args], env=env, cwd=str(ROOT), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# -- the sample archive and what must never appear in the output --------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "archive"
    build_sample_archive(root)
    sources = source_instances(root)
    return root, sources, phi_needles(sources)


@pytest.fixture(scope="module")
def series40(tmp_path_factory):
    root = tmp_path_factory.mktemp("series") / "src"
    build_series_archive(root, 40, per_series=10)
    return root


def _check_export(objects: dict[str, bytes], summary: dict, sources: dict, needles: list[bytes], layout: str):
    """No PHI in any object or key, pixel data identical, layout and manifest as on local disk."""
    leaks = {n for n in needles for rel, body in objects.items() if n in body or n in rel.encode()}
    assert leaks == set(), f"PHI found in the S3 output: {len(leaks)} strings"
    outputs = {}
    for rel, body in objects.items():
        if rel.endswith(".dcm"):
            ds = pydicom.dcmread(io.BytesIO(body))
            outputs[str(ds.SOPInstanceUID)] = (rel, ds)
    assert len(outputs) == summary["exported"] + summary["skipped_identical"] >= 15
    pseudo = Pseudonymizer(TEST_KEY.encode())
    for _ds, rel, new in exported_pairs(sources, outputs, pseudo):
        parts = rel.split("/")
        assert len(parts) == DEPTH[layout]
        if layout != "flat":
            assert parts[0] == str(new.PatientID)
    manifest = objects["manifest.csv"].decode().splitlines()
    assert {line.split(",")[0] for line in manifest[1:]} == set(objects) - {"manifest.csv"}


# -- every layout to a bucket, credentials from the standard AWS environment chain ----------------
@pytest.fixture(scope="module")
def layout_runs(sample, moto, prefect_api, tmp_path_factory):
    src, _, _ = sample
    api, home = prefect_api
    tmp = tmp_path_factory.mktemp("layouts")
    env = _env(home, api)
    procs = {layout: _popen_cli(["run", str(src), f"s3://{BUCKET}/layout-{layout}", "--layout", layout,
                                 "--endpoint-url", moto.endpoint_url, "--region", REGION, "--label", f"s3-{layout}",
                                 "--state-dir", str(tmp / f"state-{layout}"), "--json"], env)
             for layout in DEPTH}
    results = {}
    for layout, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results[layout] = _summary(out)
    return results


@pytest.mark.parametrize("layout", list(DEPTH))
def test_every_layout_to_a_bucket_no_phi_pixels_identical(layout, layout_runs, sample, moto):
    _, sources, needles = sample
    summary = layout_runs[layout]
    q = summary["quarantined"]
    assert q.get("not-dicom") == 1 and q.get("truncated") == 1 and q.get("dicomdir") == 1
    assert q.get("repeated-element") == 1
    assert "write-error" not in q and summary["bytes_out"] > 0
    objects = _read_back(_client(moto.endpoint_url), BUCKET, f"layout-{layout}")
    _check_export(objects, summary, sources, needles, layout)


# -- blocks: a bucket as the source, credentials only from blocks ---------------------------------
@pytest.fixture(scope="module")
def blocks(sample, moto, prefect_api):
    """Register the block types with `prefect block register`, upload the sample archive to the
    bucket (keys keep the archive's PHI-bearing names) and save a source and two target blocks."""
    src, _, _ = sample
    api, home = prefect_api
    env = _env(home, api, aws=False)
    proc = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "-m", "blocks.s3"], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "medanon S3 source" in proc.stdout and "medanon S3 target" in proc.stdout

    client = _client(moto.endpoint_url)
    uploaded = 0
    for p in sorted(src.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=BUCKET, Key=f"incoming/{p.relative_to(src).as_posix()}", Body=p.read_bytes())
            uploaded += 1

    secrets = {"key_id": f"AKIAMEDANON{uuid.uuid4().hex[:9].upper()}",
               "secret": f"medanon-secret-{uuid.uuid4().hex}"}
    script = textwrap.dedent(f"""
        import json, sys
        from blocks.s3 import MedanonS3Source, MedanonS3Target, resolve_location
        common = dict(endpoint_url={moto.endpoint_url!r}, region_name={REGION!r},
                      aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2])
        MedanonS3Source(bucket={BUCKET!r}, prefix="incoming", **common).save("pacs", overwrite=True)
        MedanonS3Target(bucket={BUCKET!r}, prefix="research/", **common).save("research", overwrite=True)
        MedanonS3Target(bucket={BUCKET!r}, prefix="budget-block", byte_budget=400000, **common).save(
            "small", overwrite=True)
        # how a run resolves them: the block's location when none is given, an explicit s3:// URL
        # with the block's connection settings, a local folder without them
        out = {{}}
        for name, (url, block, side) in {{
                "default": ("", "research", "target"),
                "explicit": ("s3://other-bucket/x/", "small", "target"),
                "local": ("/tmp/out", "research", "target")}}.items():
            u, opts, budget = resolve_location(url, block, side, {{"region_name": "eu-west-1"}})
            out[name] = [u, sorted(opts), opts.get("region_name"), budget]
        print(json.dumps(out))
        """)
    proc = subprocess.run([sys.executable, "-c", script, secrets["key_id"], secrets["secret"]], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = json.loads(proc.stdout.strip().splitlines()[-1])
    creds = ["aws_access_key_id", "aws_secret_access_key", "endpoint_url", "region_name"]
    assert resolved["default"] == [f"s3://{BUCKET}/research", creds, REGION, None]
    assert resolved["explicit"] == ["s3://other-bucket/x", creds, REGION, 400000]
    assert resolved["local"] == ["/tmp/out", [], None, None]
    return {"uploaded": uploaded, **secrets}



def _flow_with_blocks(env: dict, state_dir: Path, setup: str = "", **request) -> subprocess.CompletedProcess:
    """Call the flow in a subprocess as a deployment run from the UI form does: a RunRequest of
    block names and options (``request``), after running ``setup`` (e.g. saving a block)."""
    script = setup + textwrap.dedent("""
        import json, sys
        from flows.anonymize import anonymize
        from medanon.request import RunRequest
        print(json.dumps(anonymize(RunRequest(**json.loads(sys.argv[1]), state_dir=sys.argv[2]))))
        """)
    return subprocess.run([sys.executable, "-c", script, json.dumps(request), str(state_dir)], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=300)

def test_bucket_source_and_target_from_blocks_only(blocks, sample, moto, prefect_api, tmp_path):
    """The flow called with block names only (as a deployment run from the UI form): the source is a
    bucket, the target another prefix; no credentials in the environment, so they can only come from
    the blocks; and no secret ends up in Prefect's database, logs or results."""
    _, sources, needles = sample
    api, home = prefect_api
    env = _env(home, api, aws=False)

    # without a block (and no credentials anywhere) the same source cannot even be listed
    proc = run_cli(["run", f"s3://{BUCKET}/incoming", str(tmp_path / "out"), "--endpoint-url", moto.endpoint_url,
                    "--region", REGION, "--state-dir", str(tmp_path / "state0")], env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "medanon: error: the run failed (StorageError)"

    proc = _flow_with_blocks(env, tmp_path / "state", source_block="pacs", target_block="research",
                             layout="patient", label="s3-blocks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(proc.stdout)
    assert summary["discovered"] == blocks["uploaded"]
    assert summary["quarantined"].get("truncated") == 1 and "read-error" not in summary["quarantined"]
    objects = _read_back(_client(moto.endpoint_url), BUCKET, "research")
    _check_export(objects, summary, sources, needles, "patient")

    # the secret never reaches Prefect: not in flow parameters, logs, artifacts, results (the block
    # itself is stored encrypted by the server), nor in the run's own output
    secret, key_id = blocks["secret"].encode(), blocks["key_id"].encode()
    assert secret not in (proc.stdout + proc.stderr).encode()
    hits = [p for p in home.rglob("*") if p.is_file() and (secret in p.read_bytes() or key_id in p.read_bytes())]
    assert hits == []


def test_source_and_target_on_different_services(blocks, sample, moto, prefect_api, tmp_path):
    """The source bucket on one S3 service, the target on another with its own endpoint and
    credentials, each from its own block: the run reads from the first and writes only to the
    second."""
    _, sources, needles = sample
    api, home = prefect_api
    env = _env(home, api, aws=False)
    other_bucket = "research-elsewhere"
    other = MotoS3Server(buckets=[other_bucket], log_path=str(tmp_path / "moto-other.log")).start()
    try:
        setup = textwrap.dedent(f"""
            from blocks.s3 import MedanonS3Target
            MedanonS3Target(bucket={other_bucket!r}, prefix="study-42", endpoint_url={other.endpoint_url!r},
                            region_name="eu-central-1", aws_access_key_id="AKIAOTHERSERVICE",
                            aws_secret_access_key="other-secret").save("elsewhere", overwrite=True)
            """)
        proc = _flow_with_blocks(env, tmp_path / "state", setup, source_block="pacs", target_block="elsewhere",
                                 layout="study", label="two-services")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = _summary(proc.stdout)
        assert summary["discovered"] == blocks["uploaded"] and summary["exported"] > 0
        objects = _read_back(_client(other.endpoint_url), other_bucket, "study-42")
        _check_export(objects, summary, sources, needles, "study")
        # nothing was written on the source's service
        assert _keys(_client(moto.endpoint_url), BUCKET, "study-42") == []
        # the target's own credentials reach neither the run's output nor the Prefect server's files
        assert b"other-secret" not in (proc.stdout + proc.stderr).encode()
        assert [p for p in home.rglob("*") if p.is_file() and b"other-secret" in p.read_bytes()] == []
    finally:
        other.kill()


def test_target_block_byte_budget_stops_then_continues(blocks, series40, moto, prefect_api, tmp_path):
    """A byte budget in the target block stops the run (exit 75) before the budget is exceeded; the
    block's credentials and budget apply to the s3:// URL given on the command line; the same command
    with a larger budget finishes the rest and redoes nothing."""
    api, home = prefect_api
    env = _env(home, api, aws=False)
    args = ["run", str(series40), f"s3://{BUCKET}/budget", "--target-block", "small", "--batch-size", "4",
            "--state-dir", str(tmp_path / "state"), "--label", "s3-budget"]
    proc = run_cli([*args, "--json"], env, check=False)
    assert proc.returncode == 75, proc.stderr[-2000:]
    first = _summary(proc.stdout)
    assert first["target_full"] and 0 < first["exported"] < 40
    client = _client(moto.endpoint_url)
    assert _keys(client, BUCKET, "budget-block") == []  # the URL given wins over the block's prefix
    objects = _read_back(client, BUCKET, "budget")
    instances = {k: v for k, v in objects.items() if k.endswith(".dcm")}
    assert len(instances) == first["exported"] and sum(map(len, instances.values())) <= 400000
    manifest = objects["manifest.csv"].decode().splitlines()
    assert {line.split(",")[0] for line in manifest[1:]} == set(instances)

    second = run_json([*args, "--byte-budget", "100000000"], env)  # a budget given with the run wins
    assert second["exported"] == 40 - first["exported"] and second["skipped_existing"] == first["exported"]
    objects = _read_back(client, BUCKET, "budget")
    assert sum(k.endswith(".dcm") for k in objects) == 40
    assert len(objects["manifest.csv"].decode().splitlines()) == 41


# -- a bucket quota ------------------------------------------------------------------------------
def _instances(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in objects.items() if k.endswith(".dcm")}


def _manifest_paths(objects: dict[str, bytes]) -> set[str]:
    return {line.split(",")[0] for line in objects["manifest.csv"].decode().splitlines()[1:]}


def test_bucket_quota_stops_the_run_and_it_goes_on_once_raised(series40, prefect_api, tmp_path):
    """A storage quota, refused the way Ceph RGW refuses it (HTTP 403 QuotaExceeded, from the S3
    server the test starts), is a full target, not a write error:
    - reached mid-run: the run stops with exit 75, no instance quarantined, no partial object, and
      any manifest lists exactly the instances written;
    - reached by the manifest alone (the quota is exactly the instances' size): exit 75 too, with
      every instance written and ``manifest_written`` false;
    - once the operator raises the quota, the same command writes the rest (the manifest included)
      and redoes nothing."""
    api, home = prefect_api
    env = _env(home, api)
    bucket = "medanon-quota"

    def args(server, state):
        return ["run", str(series40), f"s3://{bucket}/out", "--endpoint-url", server.endpoint_url, "--batch-size",
                "4", "--state-dir", str(tmp_path / state), "--label", "s3-quota"]

    # the output's size, from a run without a quota (the same key gives the same bytes)
    with MotoS3Server(buckets=[bucket], log_path=str(tmp_path / "moto0.log")) as free:
        run_json(args(free, "state0"), env)
        sizes = sorted(map(len, _instances(_read_back(_client(free.endpoint_url), bucket, "out")).values()))
    assert len(sizes) == 40

    # 1. reached mid-run
    with MotoS3Server(buckets=[bucket], log_path=str(tmp_path / "moto1.log"), quota_bytes=sum(sizes[:7])) as server:
        proc = run_cli([*args(server, "state1"), "--json"], env, check=False)
        assert proc.returncode == 75, proc.stderr[-2000:]
        first = _summary(proc.stdout)
        assert first["target_full"] and 0 < first["exported"] <= 7 and first["quarantined"] == {}
        client = _client(server.endpoint_url)
        objects = _read_back(client, bucket, "out")  # every object complete
        assert len(_instances(objects)) == first["exported"]
        if first["manifest_written"]:
            assert _manifest_paths(objects) == set(_instances(objects))
        else:
            assert "manifest.csv" not in objects
        server.set_quota(None)
        second = run_json(args(server, "state1"), env)
        assert second["exported"] == 40 - first["exported"] and second["skipped_existing"] == first["exported"]
        assert second["manifest_written"] and not second["target_full"]
        objects = _read_back(client, bucket, "out")
        assert len(_instances(objects)) == 40 and _manifest_paths(objects) == set(_instances(objects))

    # 2. reached by the manifest alone
    with MotoS3Server(buckets=[bucket], log_path=str(tmp_path / "moto2.log"), quota_bytes=sum(sizes)) as server:
        proc = run_cli([*args(server, "state2"), "--json"], env, check=False)
        assert proc.returncode == 75, proc.stderr[-2000:]
        first = _summary(proc.stdout)
        assert first["exported"] == 40 and first["target_full"] and first["manifest_written"] is False
        assert "0 instances and the manifest remain" in proc.stderr
        client = _client(server.endpoint_url)
        assert "manifest.csv" not in _read_back(client, bucket, "out")
        server.set_quota(None)
        second = run_json(args(server, "state2"), env)
        assert second["exported"] == 0 and second["skipped_existing"] == 40 and second["manifest_written"]
        assert len(_manifest_paths(_read_back(client, bucket, "out"))) == 40


# -- the S3 server killed mid-run ----------------------------------------------------------------
def test_server_killed_mid_run_retries_no_partial_object_and_rerun_skips(series40, prefect_api, tmp_path):
    api, home = prefect_api
    bucket = "medanon-kill"
    server = MotoS3Server(buckets=[bucket], log_path=str(tmp_path / "moto.log")).start()
    try:
        env = _env(home, api)
        url = f"s3://{bucket}/out"
        args = ["run", str(series40), url, "--endpoint-url", server.endpoint_url, "--batch-size", "2",
                "--layout", "series", "--state-dir", str(tmp_path / "state"), "--label", "s3-kill", "--json"]
        proc = _popen_cli(args, env)
        client = _client(server.endpoint_url)
        seen, deadline = 0, time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                seen = sum(k.endswith(".dcm") for k in _keys(client, bucket, "out"))
            except Exception:  # noqa: BLE001
                pass
            if seen >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None and 4 <= seen < 40, "the kill must land mid-export"
        server.kill()  # SIGKILL: connections cut mid-request; moto loses its (in-memory) objects
        time.sleep(2)
        server.start()  # same port, bucket recreated empty
        out, err = proc.communicate(timeout=300)

        # retries, then success; or a clean failure: non-zero exit and one PHI-free error line
        # no partial object: whatever is there is complete (checksum metadata == body, parses)
        after = _read_back(client, bucket, "out")
        written_after_restart = {k for k in after if k.endswith(".dcm")}
        if proc.returncode == 0:
            first = _summary(out)
            assert first["exported"] + first["skipped_identical"] == 40 and first["quarantined"] == {}
            # the restarted server came back empty: what it holds was written after failed attempts
            assert written_after_restart and "manifest.csv" in after
        else:
            assert err.strip().splitlines()[-1].startswith("medanon: error:"), err[-2000:]

        # the same command again: completes; what the ledger holds is skipped, not redone
        again = run_json(args[:-1], env)
        assert again["exported"] + again["skipped_existing"] + again["skipped_identical"] == 40
        assert again["skipped_existing"] > 0
        before_scratch = {k for k in _read_back(client, bucket, "out") if k.endswith(".dcm")}
        assert before_scratch >= written_after_restart

        # from scratch (new state dir, new Prefect home): objects already there with the same
        # checksum are skipped, the ones the restarted server lost are written again
        scratch_home = tmp_path / "prefect-scratch"
        scratch = run_json(["run", str(series40), url, "--endpoint-url", server.endpoint_url, "--batch-size", "2",
                            "--layout", "series", "--state-dir", str(tmp_path / "state2")], _env(scratch_home, None))
        assert scratch["skipped_identical"] == len(before_scratch) > 0
        assert scratch["exported"] == 40 - len(before_scratch)
        final = _read_back(client, bucket, "out")
        assert sum(k.endswith(".dcm") for k in final) == 40
        manifest = final["manifest.csv"].decode().splitlines()
        assert {line.split(",")[0] for line in manifest[1:]} == set(final) - {"manifest.csv"}
    finally:
        server.kill()
