"""export: the ledger of what each target holds, and the PHI-free manifest at its root."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from typing import Iterator

from .state import StateStore

MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ["path", "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
                   "sop_class_uid", "modality", "transfer_syntax_uid", "size", "sha256"]


def record_batch(store: StateStore, target_url: str, result: dict) -> dict:
    """Commit one scrub batch: outputs to the ledger, failures to quarantine. PHI-free counts back."""
    outputs = {int(k): v for k, v in result["outputs"].items()}
    store.mark_done(outputs, target_url)
    store.quarantine([(int(k), r) for k, r in result["quarantined"].items()])
    return {"batch": result["batch"], "exported": result["exported"], "skipped_identical": result["skipped_identical"],
            "quarantined": len(result["quarantined"]), "bytes_out": result["bytes_out"]}


MANIFEST_BLOCK_ROWS = 1000  # about 0.3 MB of CSV (a StringIO holds 4 bytes a character while it grows)


def manifest_blocks(store: StateStore, target_url: str) -> Iterator[bytes]:
    """The manifest as UTF-8 CSV, header first, in blocks of up to ``MANIFEST_BLOCK_ROWS`` rows."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    pending = 0
    for row in store.exported_rows(target_url):
        info = json.loads(row["out_info"] or "{}")
        if info:
            w.writerow(info)
            pending += 1
        if pending >= MANIFEST_BLOCK_ROWS:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
            pending = 0
    yield buf.getvalue().encode("utf-8")


def write_manifest(store: StateStore, target) -> int:
    """Publish ``manifest.csv`` at the target's root; returns its row count.

    At tens of millions of instances the manifest runs to gigabytes, so it is never held in memory:
    the rows stream from the ledger into a private temporary file in the state directory, hashed as
    they go, and the target copies that file (a local target may use its reserve for it)."""
    digest, lines = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv", dir=store.dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            for block in manifest_blocks(store, target.url):
                digest.update(block)
                lines += block.count(b"\n")
                fh.write(block)
        put = getattr(target, "put_reserved_file", target.put_file)
        put(MANIFEST_NAME, tmp, digest.hexdigest())
    finally:
        os.unlink(tmp)
    return lines - 1
