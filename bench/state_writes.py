#!/usr/bin/env python
"""What each write a run makes to the state store costs per file: time, and bytes written.

A first run writes every file's row several times (listed, inspected, planned, exported) and a
nightly run lists every file again, so at tens of millions of files the bytes each write puts
through SQLite (its pages, the WAL, any statement journal) are disk traffic on the hospital side
that grows with the archive. This makes a state store of N files through the store's own methods,
in the flow's batch sizes, and measures for each step the time and the process's ``wchar`` (bytes
passed to write calls, /proc/self/io) per file:

    listed      register: the first listing (every file new)
    inspected   record_inspected: a DICOM header's fields per file, 1 000 a batch
    quarantined quarantine: 1 file in 100, in batches of 1 000
    planned     plan: the output path (and crosswalk) per file, 1 250 a batch
    exported    mark_done: the manifest row and line per file, 1 250 a batch
    relisted    register again, every file unchanged and exported (a nightly run that finds nothing)
    changed     register again, 1 file in 1 000 changed

    python bench/state_writes.py [--n 100000] [--workdir DIR] [--json]

It imports medanon from this checkout, so the same script measures an older commit from a worktree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medanon.discover import Inspected  # noqa: E402
from medanon.state import StateStore  # noqa: E402
from medanon.storage.base import SourceEntry  # noqa: E402
from bench import bytes_written  # noqa: E402  (wchar of /proc/self/io)

SOURCE = "/archive"


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medanon-state-writes"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    n = args.n
    store = StateStore(args.workdir)
    relpath = [f"P{i // 1000:05d}/S{i // 100 % 10}/R{i // 25 % 4}/IMG{i:07d}.dcm" for i in range(n)]
    listing = [SourceEntry(p, 525_000 + i % 7, str(1_700_000_000_000_000_000 + i)) for i, p in enumerate(relpath)]
    results: dict = {}

    def step(label, fn):
        w, t = bytes_written(), time.perf_counter()
        fn()
        results[label] = {"us_per_file": round((time.perf_counter() - t) / n * 1e6, 2),
                          "bytes_per_file": round((bytes_written() - w) / n, 1)}

    step("listed", lambda: store.register(SOURCE, listing, "r1"))
    ids = [r[0] for r in store.db.execute("SELECT id FROM files ORDER BY id")]

    def inspected():
        for chunk in _batches(ids, 1000):
            store.record_inspected([(i, Inspected(
                relpath[i - 1], 525_000, "t", "dicom", patient_key=f"P{i // 1000}", study_uid=f"1.2.3.{i // 100}",
                series_uid=f"1.2.3.{i // 100}.{i // 25}", sop_uid=f"1.2.3.{i // 100}.{i // 25}.{i}",
                sop_class="1.2.840.10008.5.1.4.1.1.2", modality="CT", accession=f"A{i // 100}",
                patient_id=f"P{i // 1000}", study_date="20200101", header={"PatientName": "X^Y", "Rows": 512}))
                for i in chunk])

    step("inspected", inspected)
    step("quarantined", lambda: [store.quarantine([(i, "repeated-element") for i in chunk[::100]])
                                 for chunk in _batches(ids, 1000)])
    kept = [i for i in ids if i % 100 != 1]
    step("planned", lambda: [store.plan([(i, f"p/s/r/{i:07d}.dcm") for i in chunk],
                                        [("patient", f"P{i // 1000}", f"Q{i // 1000}") for i in chunk], "r1")
                             for chunk in _batches(kept, 1250)])

    def exported():
        for chunk in _batches(kept, 1250):
            rows = {i: {"path": f"p/s/r/{i:07d}.dcm", "sha256": f"{i:064x}", "size": 525_000} for i in chunk}
            store.mark_done(rows, "/target", {i: f"p/s/r/{i:07d}.dcm,{i:064x},525000\n" for i in chunk})

    step("exported", exported)
    counts = {}
    step("relisted", lambda: counts.update(relisted=store.register(SOURCE, listing, "r2")))
    changed = [SourceEntry(e.relpath, e.size + 1, e.token) if k % 1000 == 0 else e for k, e in enumerate(listing)]
    step("changed", lambda: counts.update(changed=store.register(SOURCE, changed, "r3")))
    store.close()
    size = sum(p.stat().st_size for p in args.workdir.iterdir())
    shutil.rmtree(args.workdir, ignore_errors=True)
    res = {"root": str(ROOT), "n": n, "steps": results, "store_bytes": size,
           "counts": {k: {c: v for c, v in d.items() if c in ("new", "changed", "unchanged")} for k, d in counts.items()}}
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{n} files; the state store ends at {size / 1e6:.1f} MB")
        print(f"  {'':12} {'µs/file':>9} {'bytes written/file':>19}")
        for k, v in results.items():
            print(f"  {k:12} {v['us_per_file']:9.2f} {v['bytes_per_file']:19.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
