"""manifest.csv: built by joining the lines the ledger keeps, and kept as it is when no exported row
changed since it was published (an incremental run that found nothing new reads no row)."""

from __future__ import annotations

import sqlite3

import pytest

from conftest import count_manifest_builds
from medanon import export
from medanon.export import MANIFEST_NAME, record_batch, write_manifest
from medanon.state import DB_NAME, StateStore
from medanon.storage.base import SourceEntry
from medanon.storage.local import LocalTarget

UID = "1.2.826.0.1.3680043.10.1234.{}.{}"


def _info(i: int) -> dict:
    path = f"P{i % 7:03d}/S{i % 5:03d}/{i:06d}.dcm"
    return {"path": path, "patient_id": f"P{i % 7:03d}", "study_instance_uid": UID.format(1, i % 5),
            "series_instance_uid": UID.format(2, i % 5), "sop_instance_uid": UID.format(3, i),
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "modality": "CT",
            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "size": 1000 + i, "sha256": f"{i:064x}",
            # a field that needs quoting, as a free-text value would: the kept line must match
            **({"modality": 'O,T "x"'} if i == 3 else {})}


def _export(store: StateStore, target: LocalTarget, ids: range) -> None:
    """What the flow does for a scrub batch: register, plan, then record the written outputs."""
    store.register("src", [SourceEntry(f"in/{i}.dcm", 1, "t") for i in ids], "r1")
    rows = {r["relpath"]: r["id"] for r in store.db.execute("SELECT id, relpath FROM files")}
    outputs = {}
    for i in ids:
        fid = rows[f"in/{i}.dcm"]
        store.db.execute("UPDATE files SET kind='dicom', status='planned', out_relpath=? WHERE id=?",
                         (_info(i)["path"], fid))
        outputs[str(fid)] = _info(i)
    record_batch(store, target.url, {"batch": 1, "outputs": outputs, "quarantined": {}, "exported": len(ids),
                                     "skipped_identical": 0, "bytes_out": 0})


@pytest.fixture
def ledger(tmp_path):
    store, target = StateStore(tmp_path / "state"), LocalTarget(tmp_path / "out")
    _export(store, target, range(40))
    yield store, target
    store.close()


def test_kept_lines_give_the_bytes_formatting_each_row_gives(ledger):
    """Rows recorded before the ledger kept lines (out_line NULL) are formatted from their JSON row;
    the manifest is the same bytes either way, header first, in path order."""
    store, target = ledger
    assert store.db.execute("SELECT COUNT(*) FROM files WHERE out_line IS NOT NULL").fetchone()[0] == 40
    assert write_manifest(store, target) == 40
    from_lines = (target.root / MANIFEST_NAME).read_bytes()
    store.db.execute("CREATE TEMP TABLE saved AS SELECT id, out_info FROM files")
    store.db.execute("UPDATE files SET out_info='{}'")  # the kept lines alone make the manifest
    (target.root / MANIFEST_NAME).unlink()
    assert write_manifest(store, target) == 40
    assert (target.root / MANIFEST_NAME).read_bytes() == from_lines
    store.db.execute("UPDATE files SET out_info=(SELECT out_info FROM saved WHERE saved.id=files.id)")
    store.db.execute("UPDATE files SET out_line=NULL")  # as an earlier version left them
    (target.root / MANIFEST_NAME).unlink()
    assert write_manifest(store, target) == 40
    assert (target.root / MANIFEST_NAME).read_bytes() == from_lines
    lines = from_lines.decode().splitlines()
    assert lines[0] == ",".join(export.MANIFEST_FIELDS)
    assert [ln.split(",")[0] for ln in lines[1:]] == sorted(_info(i)["path"] for i in range(40))
    assert '"O,T ""x"""' in from_lines.decode()


def test_a_manifest_is_kept_until_an_exported_row_changes(ledger, monkeypatch):
    store, target = ledger
    built = count_manifest_builds(monkeypatch)
    manifest = target.root / MANIFEST_NAME
    assert write_manifest(store, target) == 40 and len(built) == 1
    first = manifest.read_bytes()

    # nothing changed: the ledger is not read again, the file is left as it is
    store.register("src", [SourceEntry(f"in/{i}.dcm", 1, "t") for i in range(40)], "r2")  # unchanged
    store.quarantine([])
    assert write_manifest(store, target) == 40 and len(built) == 1
    assert manifest.read_bytes() == first

    # the target no longer holds those bytes: removed, or changed by someone
    manifest.unlink()
    assert write_manifest(store, target) == 40 and len(built) == 2 and manifest.read_bytes() == first
    manifest.write_bytes(first.replace(b"CT", b"MR", 1))
    assert write_manifest(store, target) == 40 and len(built) == 3 and manifest.read_bytes() == first

    # a new exported row
    _export(store, target, range(40, 41))
    assert write_manifest(store, target) == 41 and len(built) == 4
    assert _info(40)["path"].encode() in manifest.read_bytes()

    # a source file changed since it was exported leaves the manifest until it is exported again
    store.register("src", [SourceEntry("in/40.dcm", 2, "t2")], "r3")
    assert write_manifest(store, target) == 40 and len(built) == 5 and manifest.read_bytes() == first

    # another target's rows count too (the flow moves to a new drive when one fills)
    other = LocalTarget(target.root.parent / "other")
    assert write_manifest(store, other) == 0 and len(built) == 6
    assert write_manifest(store, target) == 40 and len(built) == 6  # each target's manifest is its own
    _export(store, other, range(41, 42))
    assert write_manifest(store, other) == 1 and write_manifest(store, target) == 40 and len(built) == 8


def test_a_new_manifest_format_drops_the_kept_lines(ledger, monkeypatch):
    """A version that writes other fields (or writes them otherwise) must not join lines kept in the
    old format: they are dropped once and the rows formatted again."""
    store, target = ledger
    write_manifest(store, target)
    built = count_manifest_builds(monkeypatch)
    fields = export.MANIFEST_FIELDS[:-1]  # say the sha256 column went away
    monkeypatch.setattr(export, "MANIFEST_FIELDS", fields)
    monkeypatch.setattr(export, "MANIFEST_FORMAT", "next")
    assert write_manifest(store, target) == 40 and len(built) == 1
    lines = (target.root / MANIFEST_NAME).read_text().splitlines()
    assert lines[0] == ",".join(fields) and all(f"{i:064x}" not in "".join(lines) for i in range(40))
    assert store.db.execute("SELECT COUNT(*) FROM files WHERE out_line IS NOT NULL").fetchone()[0] == 0
    _export(store, target, range(40, 41))  # new rows are kept in the new format
    assert store.db.execute("SELECT out_line FROM files WHERE out_line IS NOT NULL").fetchone()[0].count(",") == 8


def test_a_killed_runs_temporary_manifest_is_removed(ledger):
    store, target = ledger
    stale = store.dir / ".manifest-killed.csv"
    stale.write_text("path\n")
    write_manifest(store, target)
    assert not stale.exists()
    stale.write_text("path\n")
    write_manifest(store, target)  # also when the manifest is kept as it is
    assert not stale.exists()


def test_a_store_from_an_earlier_version_gets_the_line_column_and_the_same_manifest(tmp_path):
    """Before stop 18 the ledger kept no lines and had no change count: opening such a store adds
    both, and its manifest is what that version wrote."""
    store, target = StateStore(tmp_path / "state"), LocalTarget(tmp_path / "out")
    _export(store, target, range(12))
    write_manifest(store, target)
    expected = (target.root / MANIFEST_NAME).read_bytes()
    store.close()
    (target.root / MANIFEST_NAME).unlink()
    db = sqlite3.connect(tmp_path / "state" / DB_NAME)  # as the earlier version left it
    db.executescript("""
        DROP TRIGGER ledger_row_added; DROP TRIGGER ledger_row_changed; DROP TRIGGER ledger_row_removed;
        DELETE FROM meta WHERE key != 'instance_id';
        ALTER TABLE files DROP COLUMN out_line;
    """)
    db.close()
    store = StateStore(tmp_path / "state")
    assert write_manifest(store, target) == 12
    assert (target.root / MANIFEST_NAME).read_bytes() == expected
    _export(store, target, range(12, 13))  # the change count works in the migrated store
    assert write_manifest(store, target) == 13
    store.close()


def test_the_manifest_streams_from_the_ledger_in_bounded_memory(tmp_path):
    """At tens of millions of instances manifest.csv runs to gigabytes, so it is never held whole:
    60 000 ledger rows (about 15 MB of CSV, recorded as an earlier version did: JSON rows, no kept
    lines) are written, and then found identical and skipped, with a Python heap peak under a
    quarter of the file's size. The file lists every row in path order."""
    import csv
    import json
    import tracemalloc

    store, target = StateStore(tmp_path / "state"), LocalTarget(tmp_path / "out")
    n = 60_000
    with store.tx() as db:
        db.executemany(
            "INSERT INTO files (source, relpath, size, token, status, out_relpath, out_info, target) "
            "VALUES ('src', ?, 1, 't', 'done', ?, ?, ?)",
            ((f"in/{i}", _info(i)["path"], json.dumps(_info(i)), target.url) for i in range(n)))
    peaks = []
    for _ in range(2):  # written, then the same bytes again: skipped as identical
        tracemalloc.start()
        try:
            assert write_manifest(store, target) == n
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    manifest = target.root / MANIFEST_NAME
    size = manifest.stat().st_size
    assert size > 12 << 20 and max(peaks) < size / 4, (size, peaks)
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == export.MANIFEST_FIELDS and len(rows) == n
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert not list(store.dir.glob(".manifest-*"))  # the temporary copy is gone
    store.close()
