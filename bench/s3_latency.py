#!/usr/bin/env python
"""An S3 source or target at a distance: one inspection task and one scrub task, with each
request's round trip lengthened by a set delay, reading (or writing) one object at a time or
overlapping.

No remote endpoint is reachable from the machines this was written on, so the delay is simulated:
the tests' moto server runs on 127.0.0.1 (its own latency is about 5 ms a request on 2 cores), and
every ranged GET (inspection) and whole-object download (scrub) sleeps ``--rtt`` ms before it is
sent. The archive is N copies of pydicom-data's 512x512 CT (``bench.build_archive``), uploaded once.

    python bench/s3_latency.py [--n 200] [--rtt 0 --rtt 10 --rtt 30] [--json]

For each delay it times ``inspect_batch`` with 1 and ``REMOTE_HEADER_READS`` headers at once,
``scrub_batch`` from the bucket to a local target with 1 and ``REMOTE_READS_AHEAD`` downloads at
once, and ``scrub_batch`` from local disk to the bucket (a new prefix each time, so nothing is
skipped as identical; the delay on each HEAD and PUT) with 1 and ``REMOTE_WRITES_AT_ONCE`` uploads
at once, and a multipart upload of one large object (``--big-mib``, parts of the target's default
8 MiB; the delay on each part) with 1 and ``s3.PARTS_AT_ONCE`` parts at once, and checks that each
pair gives the same result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

BUCKET = "medanon-bench"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="CT instances in the bucket")
    ap.add_argument("--rtt", type=float, action="append", help="ms added to each request (repeatable)")
    ap.add_argument("--big-mib", type=int, default=64, help="MiB of the large object uploaded in parts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    delays = args.rtt if args.rtt is not None else [0.0, 10.0, 30.0]

    from s3server import DUMMY_ENV, MotoS3Server
    os.environ.update(DUMMY_ENV)
    import boto3

    import bench
    from medanon import pipeline
    from medanon.profile import get_profile
    from medanon.storage import s3
    from medanon.storage.s3 import S3Source, S3Target

    work = Path(tempfile.mkdtemp(prefix="medanon-s3-latency-"))
    results = []
    try:
        bench.build_archive(work / "src", args.n)
        files = sorted(p for p in (work / "src").rglob("*") if p.is_file())
        big = work / "big.bin"
        big.write_bytes(os.urandom(args.big_mib * 2**20))
        big_sha = hashlib.sha256(big.read_bytes()).hexdigest()
        with MotoS3Server(buckets=[BUCKET], log_path=str(work / "moto.log")) as srv:
            c = boto3.client("s3", endpoint_url=srv.endpoint_url, region_name="us-east-1")
            for i, p in enumerate(files):
                c.put_object(Bucket=BUCKET, Key=f"a/{i:06d}.dcm", Body=p.read_bytes())

            def cfg(target: str):
                return pipeline.WorkerConfig(source=f"s3://{BUCKET}/a", target=target, profile=get_profile("research"),
                                             key=b"k" * 32, source_options={"endpoint_url": srv.endpoint_url})

            def to_bucket(prefix: str):
                return pipeline.WorkerConfig(source=str(work / "src"), target=f"s3://{BUCKET}/{prefix}",
                                             profile=get_profile("research"), key=b"k" * 32,
                                             target_options={"endpoint_url": srv.endpoint_url})

            entries = [(i, e.relpath, e.size, e.token) for i, e in enumerate(cfg(str(work)).open_source().iter_entries())]
            items = [(i, rel, f"out/{i:06d}.dcm", tok) for i, rel, _, tok in entries]
            local = [(i, e.relpath, f"out/{i:06d}.dcm", e.token)
                     for i, e in enumerate(to_bucket("x").open_source().iter_entries())]
            pipeline.inspect_batch(cfg(str(work)), entries[:20])  # warm-up (imports, connections), untimed
            pipeline.scrub_batch(cfg(str(work / "warm")), 1, items[:20])
            pipeline.scrub_batch(to_bucket("warm"), 1, local[:20])
            real_range, real_download = S3Source._get_range, S3Source._download
            real_head, real_put = S3Target.exists_same, S3Target._single_put
            headers_at_once, ahead = pipeline.REMOTE_HEADER_READS, pipeline.REMOTE_READS_AHEAD
            writes = pipeline.REMOTE_WRITES_AT_ONCE
            real_part, parts_at_once = S3Target._upload_part, s3.PARTS_AT_ONCE
            for rtt in delays:
                S3Source._get_range = lambda self, *a, _r=rtt: (time.sleep(_r / 1000), real_range(self, *a))[1]
                S3Source._download = lambda self, *a, _r=rtt: (time.sleep(_r / 1000), real_download(self, *a))[1]
                row = {"rtt_ms": rtt}
                seen = {}
                for k in (1, headers_at_once):
                    pipeline.REMOTE_HEADER_READS = k
                    t = time.perf_counter()
                    seen[k] = [(i, it.as_row()) for i, it in pipeline.inspect_batch(cfg(str(work)), entries)]
                    row[f"inspect_{k}_s"] = round(time.perf_counter() - t, 2)
                assert seen[1] == seen[headers_at_once]
                done = {}
                for k in (1, ahead):
                    pipeline.REMOTE_READS_AHEAD = k
                    out = work / f"out-{k}"
                    shutil.rmtree(out, ignore_errors=True)
                    t = time.perf_counter()
                    done[k] = pipeline.scrub_batch(cfg(str(out)), 1, items)
                    row[f"scrub_{k}_s"] = round(time.perf_counter() - t, 2)
                    shutil.rmtree(out, ignore_errors=True)
                assert done[1] == done[ahead] and done[1]["exported"] == len(items)
                S3Target.exists_same = lambda self, *a, _r=rtt: (time.sleep(_r / 1000), real_head(self, *a))[1]
                S3Target._single_put = lambda self, *a, _r=rtt: (time.sleep(_r / 1000), real_put(self, *a))[1]
                wrote = {}
                for k in (1, writes):
                    pipeline.REMOTE_WRITES_AT_ONCE = k
                    t = time.perf_counter()
                    wrote[k] = pipeline.scrub_batch(to_bucket(f"w{k}-{rtt:g}"), 1, local)
                    row[f"write_{k}_s"] = round(time.perf_counter() - t, 2)
                assert wrote[1] == wrote[writes] and wrote[1]["exported"] == len(local)
                S3Target.exists_same, S3Target._single_put = real_head, real_put
                S3Target._upload_part = lambda self, *a, _r=rtt: (time.sleep(_r / 1000), real_part(self, *a))[1]
                target = to_bucket(f"big-{rtt:g}").open_target()
                for k in (1, parts_at_once):
                    s3.PARTS_AT_ONCE = k
                    t = time.perf_counter()
                    assert target.put_file(f"big-{k}.bin", str(big), big_sha) is True
                    row[f"big_{k}_s"] = round(time.perf_counter() - t, 2)
                    got = c.get_object(Bucket=BUCKET, Key=f"big-{rtt:g}/big-{k}.bin")["Body"].read()
                    assert hashlib.sha256(got).hexdigest() == big_sha
                S3Target._upload_part, s3.PARTS_AT_ONCE = real_part, parts_at_once
                pipeline.REMOTE_HEADER_READS, pipeline.REMOTE_READS_AHEAD = headers_at_once, ahead
                pipeline.REMOTE_WRITES_AT_ONCE = writes
                print(f"rtt {rtt:g} ms: {row}", file=sys.stderr, flush=True)
                results.append(row)
            S3Source._get_range, S3Source._download = real_range, real_download
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"n": args.n, "cpus": os.cpu_count(), "results": results}, indent=1))
    else:
        h, a, w = pipeline.REMOTE_HEADER_READS, pipeline.REMOTE_READS_AHEAD, pipeline.REMOTE_WRITES_AT_ONCE
        print(f"{args.n} CT instances, moto on 127.0.0.1, seconds for one task (inspect and scrub from the "
              "bucket; write: scrub from local disk to the bucket):")
        b = s3.PARTS_AT_ONCE
        print(f"{'added ms/request':>17} {'inspect x1':>11} {'inspect x' + str(h):>11} {'scrub x1':>9} "
              f"{'scrub x' + str(a):>9} {'write x1':>9} {'write x' + str(w):>9} {'big x1':>7} {'big x' + str(b):>7}")
        for r in results:
            print(f"{r['rtt_ms']:>17g} {r['inspect_1_s']:>11} {r[f'inspect_{h}_s']:>11} {r['scrub_1_s']:>9} "
                  f"{r[f'scrub_{a}_s']:>9} {r['write_1_s']:>9} {r[f'write_{w}_s']:>9} {r['big_1_s']:>7} "
                  f"{r[f'big_{b}_s']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
