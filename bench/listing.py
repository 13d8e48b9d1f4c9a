#!/usr/bin/env python
"""Discovery of an incremental run: listing every file of a local archive and recording it.

Every run lists every source file (an incremental run finds what is new or changed that way), so
at tens of millions of files the listing and its recording in the state store are what a nightly
run that finds little costs. This builds a tree of N empty files shaped like an archive (patient /
study / series / 25 instances; file contents do not matter to a listing) and times, per file:

    walk        LocalSource.iter_entries alone (scandir and a stat per file)
    first       the walk recorded in a new state store (every file new)
    again       the same again (every file unchanged)
    exported    again, after every file was marked exported (what a nightly run of an archive
                already exported finds: the usual case at a large centre)
    changed     again, with every 1 000th file's mtime moved on

and, for each recording, the bytes the process wrote (the state store's pages through its WAL,
``wchar`` of /proc/self/io) per file: a recording that rewrites every row writes the whole store
again.

    python bench/listing.py [--n 200000] [--workdir DIR] [--json]

It imports medanon from this checkout, so the same script measures an older commit from a worktree.
The page cache is warm (the tree was just made and walked once before the timed walk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medanon.state import StateStore  # noqa: E402
from medanon.storage.local import LocalSource  # noqa: E402
from bench import bytes_written  # noqa: E402  (wchar of /proc/self/io)

PER_SERIES, SERIES, STUDIES = 25, 4, 5


def build_tree(root: Path, n: int) -> None:
    made = 0
    p = 0
    while made < n:
        for s in range(STUDIES):
            for r in range(SERIES):
                d = root / f"P{p:06d}" / f"S{s}" / f"R{r}"
                d.mkdir(parents=True)
                for i in range(min(PER_SERIES, n - made)):
                    (d / f"IMG{i:05d}.dcm").touch()
                    made += 1
                if made >= n:
                    return
        p += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medanon-listing"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    tree = args.workdir / "tree"
    build_tree(tree, args.n)
    source = LocalSource(tree)
    sum(1 for _ in source.iter_entries())  # warm the dentry and inode caches, untimed
    us: dict = {}
    t = time.perf_counter()
    n = sum(1 for _ in source.iter_entries())
    us["walk"] = (time.perf_counter() - t) / n * 1e6
    store = StateStore(args.workdir / "state")
    counts = {}
    written = {}
    for label, run in (("first", "r1"), ("again", "r2"), ("exported", "r3"), ("changed", "r4")):
        if label == "exported":  # as the ledger leaves an exported row (state.mark_done)
            with store.tx() as db:
                db.execute("UPDATE files SET kind='dicom', status='done', done_token=size||':'||token, "
                           "out_relpath=relpath, out_sha256='0'||id, out_size=size, target='t', out_info='{}'")
        if label == "changed":
            for k, e in enumerate(source.iter_entries()):
                if k % 1000 == 0:
                    os.utime(tree / e.relpath, ns=(1, 10**18 + k))
        w = bytes_written()
        t = time.perf_counter()
        counts[label] = store.register(source.url, source.iter_entries(), run)
        us[label] = (time.perf_counter() - t) / n * 1e6
        written[label] = (bytes_written() - w) / n
    store.close()
    res = {"root": str(ROOT), "n": n, "us_per_file": {k: round(v, 2) for k, v in us.items()},
           "bytes_written_per_file": {k: round(v, 1) for k, v in written.items()}, "counts": counts}
    shutil.rmtree(args.workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{n} files, microseconds and bytes written per file:")
        for k, v in res["us_per_file"].items():
            print(f"  {k:8} {v:8.2f} µs {written[k] if k in written else 0:8.1f} B   {counts.get(k, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
