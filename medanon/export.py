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


def record_batch(store: StateStore, target_url: str, result: dict) -> None:
    """Commit one scrub batch: outputs to the ledger, failures to quarantine."""
    outputs = {int(k): v for k, v in result["outputs"].items()}
    lines_in_format(store)
    line_of = manifest_line_writer()
    store.mark_done(outputs, target_url, {fid: line_of(info) for fid, info in outputs.items()})
    store.quarantine([(int(k), r) for k, r in result["quarantined"].items()])


MANIFEST_BLOCK_ROWS = 1000  # about 0.3 MB of CSV
# what a manifest line depends on besides its row: the fields, and how they are written (bump the
# "csv-1" with any change to the writer). A new format drops the ledger's kept lines and writes the
# manifest again even when no exported row has changed
MANIFEST_FORMAT = hashlib.sha256(("csv-1:" + ",".join(MANIFEST_FIELDS)).encode()).hexdigest()[:12]


def manifest_line_writer():
    """A function giving one exported row as its manifest.csv line. The ledger keeps each row's line
    beside it, so that the manifest of tens of millions of rows is built by joining lines."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")

    def line(info: dict) -> str:
        buf.seek(0)
        buf.truncate()
        w.writerow(info)
        return buf.getvalue()
    return line


def manifest_header() -> str:
    return ",".join(MANIFEST_FIELDS) + "\n"


def lines_in_format(store: StateStore) -> None:
    """Lines the ledger kept in another manifest format (another version's fields) are dropped, once:
    their rows are formatted from the ledger again."""
    if store.get_meta("manifest_line_format") != MANIFEST_FORMAT:
        with store.tx() as db:
            db.execute("UPDATE files SET out_line=NULL WHERE out_line IS NOT NULL")
            store.set_meta("manifest_line_format", MANIFEST_FORMAT)


def manifest_blocks(store: StateStore, target_url: str) -> Iterator[bytes]:
    """The manifest as UTF-8 CSV, header first, in blocks of up to ``MANIFEST_BLOCK_ROWS`` rows.
    Rows recorded by versions before the ledger kept each row's line are formatted here."""
    lines, line_of = [manifest_header()], manifest_line_writer()
    for row in store.exported_rows(target_url):
        line = row["out_line"]
        if line is None:
            info = json.loads(row["out_info"] or "{}")
            if not info:
                continue
            line = line_of(info)
        lines.append(line)
        if len(lines) >= MANIFEST_BLOCK_ROWS:
            yield "".join(lines).encode("utf-8")
            lines.clear()
    yield "".join(lines).encode("utf-8")


def remove_stale_manifests(store: StateStore) -> int:
    """Delete temporary manifests a killed run left in the state directory; returns how many."""
    n = 0
    for p in store.dir.glob(".manifest-*.csv"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def write_manifest(store: StateStore, target) -> int:
    """Publish ``manifest.csv`` at the target's root; returns its row count.

    At tens of millions of instances the manifest runs to gigabytes, so it is never held in memory:
    the rows stream from the ledger into a private temporary file in the state directory, hashed as
    they go, and the target copies that file (a local target may use its reserve for it).

    A run that changed no exported row, of any target, keeps the manifest this target already
    holds, once the target shows it still holds those bytes (a local target hashes its file, S3
    answers one HEAD): an incremental run that found nothing new does not read every row again."""
    remove_stale_manifests(store)
    lines_in_format(store)
    key = f"manifest:{target.url}"
    stamp = f"{store.ledger_changes()}:{MANIFEST_FORMAT}"
    published = json.loads(store.get_meta(key) or "{}")
    if published.get("stamp") == stamp and target.exists_same(MANIFEST_NAME, published["sha256"],
                                                              published["size"]):
        return published["rows"]
    digest, lines, size = hashlib.sha256(), 0, 0
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv", dir=store.dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            for block in manifest_blocks(store, target.url):
                digest.update(block)
                lines += block.count(b"\n")
                size += len(block)
                fh.write(block)
        put = getattr(target, "put_reserved_file", target.put_file)
        put(MANIFEST_NAME, tmp, digest.hexdigest())
    finally:
        os.unlink(tmp)
    store.set_meta(key, json.dumps({"stamp": stamp, "sha256": digest.hexdigest(), "size": size, "rows": lines - 1}))
    return lines - 1
