"""export: the ledger of what each target holds, and the PHI-free manifest at its root."""

from __future__ import annotations

import csv
import hashlib
import io
import json

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


def manifest_bytes(store: StateStore, target_url: str) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in store.exported_rows(target_url):
        info = json.loads(row["out_info"] or "{}")
        if info:
            w.writerow(info)
    return buf.getvalue().encode("utf-8")


def write_manifest(store: StateStore, target) -> int:
    data = manifest_bytes(store, target.url)
    put = getattr(target, "put_reserved", target.put_bytes)
    put(MANIFEST_NAME, data, hashlib.sha256(data).hexdigest())
    return data.count(b"\n") - 1
