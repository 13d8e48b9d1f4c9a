#!/usr/bin/env python
"""The state store at tens of millions of files: what the statements a run repeats cost.

Writes a synthetic ledger of N files straight into a StateStore (no DICOM files, no Prefect), then
times, on it, what a run does once per batch or per report, and what it does once per run:

    per batch   an inspection page (5 000 files not yet inspected), a scrub page (1 250 planned),
                the output-path check of remap (1 250 paths), marking 1 250 exported, discovering
                2 000 new files, and 2 000 unchanged ones (an incremental run lists every file)
    per report  the pairing lookups: a study's anchor instance, by accession, by patient and date
    per run     the ledger's bytes on the target, the counts of the summary (before stop 19 they
                read every file; since, the listing counts them), listing every file again (all
                unchanged: its time and the bytes written per file), the manifest (time, size, and
                its Python heap peak in a second write), and the manifest again when no exported
                row changed since

The ledger: 80 % of the files exported to one target, 10 % planned, 10 % listed but not inspected;
100 instances per study, 10 studies per patient. A statement that reads every file once per batch
shows as a time per call that grows with N; one that finds its rows through an index stays flat.

    python bench/state_scale.py --n 1000000 [--n 4000000 ...] [--workdir DIR] [--json]

It imports medanon from this checkout, so the same script measures an older commit from a worktree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medanon.export import write_manifest  # noqa: E402
from medanon.state import StateStore  # noqa: E402
from medanon.storage.base import SourceEntry  # noqa: E402
from medanon.storage.local import LocalTarget  # noqa: E402
from bench import bytes_written  # noqa: E402  (wchar of /proc/self/io)

SOURCE = "/archive"
PER_STUDY, PER_PATIENT = 100, 10


def study(i: int) -> int:
    return i // PER_STUDY


def build(store: StateStore, n: int, target_url: str) -> float:
    """The synthetic ledger, in id order: exported, then planned, then not inspected."""
    t = time.perf_counter()
    done, planned = int(n * 0.8), int(n * 0.9)

    def rows():
        for i in range(n):
            s = study(i)
            kind, status = ("dicom", "done") if i < done else ("dicom", "planned") if i < planned else (None, "new")
            info = json.dumps({"path": f"P{s // PER_PATIENT:07d}/S{s:08d}/{i:09d}.dcm",
                               "sop_instance_uid": f"2.25.{i}", "size": 525_000, "sha256": f"{i:064x}"})
            yield (f"in/{s}/{i}.dcm", 525_000, "tok", kind, status, f"1.2.3.{s}", f"A{s}", f"PAT{s // PER_PATIENT}",
                   f"2020{s % 12 + 1:02d}01", f"P{s // PER_PATIENT:07d}/S{s:08d}/{i:09d}.dcm",
                   525_000 if status == "done" else None, target_url if status == "done" else None,
                   info if status == "done" else None)

    sql = ("INSERT INTO files (source, relpath, size, token, kind, status, study_uid, accession, patient_id, "
           "study_date, out_relpath, out_size, target, out_info, seen_run, header) "
           "VALUES ('" + SOURCE + "', ?,?,?,?,?,?,?,?,?,?,?,?,?, 'r1', '{}')")
    it = rows()
    if "out_line" in {r[1] for r in store.db.execute("PRAGMA table_info(files)")}:
        # since stop 18 the ledger keeps each exported row's manifest line, as record_batch writes it
        from medanon.export import lines_in_format, manifest_line_writer

        lines_in_format(store)
        sql = sql.replace("seen_run, header)", "seen_run, header, out_line)").replace("'{}')", "'{}', ?)")
        line_of = manifest_line_writer()
        it = ((*r, line_of(json.loads(r[-1])) if r[-1] else None) for r in rows())
    while True:
        chunk = [r for _, r in zip(range(100_000), it)]
        if not chunk:
            break
        with store.tx() as db:
            db.executemany(sql, chunk)
    return time.perf_counter() - t


def timed(fn, repeat: int = 5) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(n: int, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    target = LocalTarget(work / "out")
    store = StateStore(work / "state")
    res: dict = {"n": n, "build_s": round(build(store, n, target.url), 1)}  # indexes kept up as it goes
    done = int(n * 0.8)
    studies = n // PER_STUDY
    ms: dict = {}
    # per batch
    ms["inspection page (5 000)"] = timed(lambda: next(store.iter_uninspected(SOURCE, 5000)))
    ms["scrub page (1 250 planned)"] = timed(lambda: next(store.iter_planned(SOURCE, 1250)))
    paths = [f"P{study(i) // PER_PATIENT:07d}/S{study(i):08d}/{i:09d}.dcm" for i in range(done, done + 1250)]
    ms["output-path check (1 250)"] = timed(lambda: store.out_owners(paths))
    fake = {i: {"sha256": f"{i:064x}", "size": 525_000} for i in range(done + 1, done + 1251)}
    ms["mark 1 250 exported"] = timed(lambda: store.mark_done(fake, target.url), 3)
    # each call lists 2 000 files not seen before (listing the same ones again finds them unchanged)
    new = iter([[SourceEntry(f"incoming/{c}/{k}.dcm", 1, "t") for k in range(2000)] for c in range(3)])
    ms["discover 2 000 new files"] = timed(lambda: store.register(SOURCE, next(new), "r2"), 3)
    seen = [SourceEntry(f"in/{study(i)}/{i}.dcm", 525_000, "tok") for i in range(done // 2, done // 2 + 2000)]
    ms["discover 2 000 unchanged files"] = timed(lambda: store.register(SOURCE, seen, "r2"), 3)
    # per report (a study near the middle of the exported ones)
    s = studies * 4 // 10
    ms["pairing: study anchor"] = timed(lambda: store.study_anchor(SOURCE, f"1.2.3.{s}"), 21)
    ms["pairing: by accession"] = timed(lambda: store.studies_by(SOURCE, "accession", [f"A{s}"]), 21)
    ms["pairing: by patient and date"] = timed(
        lambda: store.studies_by_patient_date(SOURCE, [f"PAT{s // PER_PATIENT}"], [f"2020{s % 12 + 1:02d}01"]), 21)
    # per run
    ms["ledger bytes on the target"] = timed(lambda: store.target_bytes(target.url), 3)
    if "exported_before" not in store.register(SOURCE, [], "r0"):
        # before stop 19 the summary counted this run's instances, reports and those already exported
        # by reading every file of the source; since, the listing counts them as it goes
        ms["count already exported"] = timed(lambda: store.count(
            SOURCE, "kind='dicom' AND status='done' AND seen_run=? AND done_token=size||':'||token", ("r1",)), 3)
        ms["count instances and reports listed"] = timed(lambda: [store.count(
            SOURCE, f"kind='{kind}' AND seen_run=?", ("r1",)) for kind in ("dicom", "report")], 3)
    # a nightly run lists every file again: here every file unchanged (once; the store's bytes written too)
    w, t = bytes_written(), time.perf_counter()
    store.register(SOURCE, (SourceEntry(f"in/{study(i)}/{i}.dcm", 525_000, "tok") for i in range(n)), "r3")
    ms["list every file again"] = time.perf_counter() - t
    res["list_again_bytes_written_per_file"] = round((bytes_written() - w) / n, 1)
    t = time.perf_counter()
    res["manifest_rows"] = write_manifest(store, target)
    ms["manifest"] = time.perf_counter() - t
    manifest = target.root / "manifest.csv"
    res["manifest_mb"] = round(manifest.stat().st_size / 1e6, 1)
    # a run that exported nothing: since stop 18 the manifest is kept (its bytes on the target hashed)
    ms["manifest, nothing exported since"] = timed(lambda: write_manifest(store, target), 3)
    manifest.unlink()
    tracemalloc.start()  # again, for the Python heap's peak (tracemalloc slows the write down)
    write_manifest(store, target)
    res["manifest_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
    tracemalloc.stop()
    res["ms"] = {k: round(v * 1000, 2) for k, v in ms.items()}
    store.close()
    res["state_mb"] = round(sum(p.stat().st_size for p in (work / "state").iterdir()) / 1e6)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, action="append", help="files in the ledger (repeatable)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medanon-state-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the ledgers and manifests")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    results = []
    for n in args.n or [1_000_000]:
        print(f"ledger of {n} files ...", file=sys.stderr, flush=True)
        results.append(measure(n, args.workdir / f"n{n}"))
        if not args.keep:
            shutil.rmtree(args.workdir / f"n{n}", ignore_errors=True)
    if args.json:
        print(json.dumps({"root": str(ROOT), "cpus": os.cpu_count(), "results": results}, indent=1))
        return 0
    names = list(results[0]["ms"])
    print(f"{'ms per call':32}" + "".join(f"{r['n']:>14,}" for r in results))
    for k in names:
        print(f"{k:32}" + "".join(f"{r['ms'][k]:>14.2f}" for r in results))
    for k in ("build_s", "list_again_bytes_written_per_file", "manifest_mb", "manifest_peak_mb", "state_mb"):
        print(f"{k:32}" + "".join(f"{r[k]:>14}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
