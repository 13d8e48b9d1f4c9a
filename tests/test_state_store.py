"""The state store's schema: a store made by an earlier version is brought up to date when opened."""

from __future__ import annotations

import sqlite3

from medanon.state import DB_NAME, StateStore


def _indexes(path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    finally:
        db.close()


def test_a_store_from_before_stop_17_gets_the_new_indexes_and_keeps_its_rows(tmp_path):
    """Before stop 17 the lookups by study, accession, and patient and date used indexes that led
    with (or lacked) the source, and inspection pages had no index of their own: SQLite read all of
    a source's files for each. Opening such a store replaces them; the rows stay as they were."""
    store = StateStore(tmp_path)
    store.db.execute("INSERT INTO files (source, relpath, size, token, kind, study_uid, accession) "
                     "VALUES ('s', 'a.dcm', 1, 't', 'dicom', '1.2.3', 'A1')")
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)  # as the earlier version left it
    db.executescript("""
        DROP INDEX files_uninspected; DROP INDEX files_by_study; DROP INDEX files_by_accession;
        DROP INDEX files_by_patient_date;
        CREATE INDEX files_study ON files (study_uid);
        CREATE INDEX files_accession ON files (source, accession);
        CREATE INDEX files_patient_date ON files (source, patient_id, study_date);
    """)
    db.close()
    assert {"files_study", "files_accession"} <= _indexes(tmp_path / DB_NAME)
    store = StateStore(tmp_path)
    try:
        names = _indexes(tmp_path / DB_NAME)
        assert not names & {"files_study", "files_accession", "files_patient_date"}
        assert {"files_uninspected", "files_by_study", "files_by_accession", "files_by_patient_date"} <= names
        assert store.studies_by("s", "accession", ["A1"]) == {"1.2.3": {"A1"}}
        assert store.study_anchor("s", "1.2.3")["relpath"] == "a.dcm"
        plan = [r[3] for r in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM files WHERE source='s' AND kind='dicom' AND study_uid='1.2.3'")]
        assert plan == ["SEARCH files USING INDEX files_by_study (study_uid=? AND source=?)"]
    finally:
        store.close()


def test_a_listing_records_new_changed_and_unchanged_files(tmp_path):
    """Each run lists every source file. A new file is added; a changed one (size or token) goes back
    to 'new' to be inspected again, leaving the manifest; an unchanged one keeps its status, and one
    that could not be read last time is looked at again. The listing counts what the unchanged files
    are (the run's summary takes its counts from it) and leaves an exported file's row unwritten (a
    nightly run would otherwise write the whole store again); a file not exported is marked seen in
    this run. Chunks of 2 000 where every file is unchanged take a shorter path; counts stay right
    across chunks."""
    from medanon.storage.base import SourceEntry

    store = StateStore(tmp_path)
    try:
        first = [SourceEntry(name, 10, "t1") for name in ("done", "unreadable", "not-dicom", "edited", "gone")]
        assert store.register("s", first, "r1") == {"listed": 5, "new": 5, "changed": 0, "unchanged": 0,
                                                     "dicom": 0, "reports": 0, "exported_before": 0}
        ids = {r["relpath"]: r["id"] for r in store.db.execute("SELECT id, relpath FROM files")}
        for name in ("done", "edited"):
            store.db.execute("UPDATE files SET kind='dicom', status='done', target='t', done_token=size||':'||token "
                             "WHERE id=?", (ids[name],))
        for name, reason in (("unreadable", "read-error"), ("not-dicom", "not-dicom")):
            store.db.execute("UPDATE files SET kind='quarantine', status='quarantined', reason=? WHERE id=?",
                             (reason, ids[name]))
        changes = store.ledger_changes()

        again = [SourceEntry("done", 10, "t1"), SourceEntry("unreadable", 10, "t1"), SourceEntry("not-dicom", 10, "t1"),
                 SourceEntry("edited", 10, "t2"), SourceEntry("arrived", 7, "t1")]
        assert store.register("s", again, "r2") == {"listed": 5, "new": 1, "changed": 1, "unchanged": 3,
                                                     "dicom": 1, "reports": 0, "exported_before": 1}
        rows = {r["relpath"]: dict(r) for r in store.db.execute("SELECT * FROM files")}
        assert (rows["done"]["status"], rows["done"]["kind"], rows["done"]["seen_run"]) == ("done", "dicom", "r1")
        assert rows["not-dicom"]["seen_run"] == "r2"  # its reason counts in this run's summary
        assert rows["unreadable"]["kind"] is None and rows["unreadable"]["seen_run"] == "r2"  # inspected again
        assert (rows["not-dicom"]["kind"], rows["not-dicom"]["status"]) == ("quarantine", "quarantined")
        edited = rows["edited"]
        assert (edited["status"], edited["kind"], edited["token"], edited["seen_run"]) == ("new", None, "t2", "r2")
        assert (rows["arrived"]["size"], rows["arrived"]["status"], rows["arrived"]["seen_run"]) == (7, "new", "r2")
        assert rows["gone"]["seen_run"] == "r1"
        assert store.ledger_changes() == changes + 1  # the edited file left the exported rows

        many = [SourceEntry(f"m/{i}", 1, "t") for i in range(4500)]
        assert store.register("s", many, "r3")["new"] == 4500
        many[2500] = SourceEntry("m/2500", 2, "t")  # a change in the second chunk of 2 000
        with store.tx() as db:  # as inspected: a report, an instance exported, one exported from an older version
            db.execute("UPDATE files SET kind='report' WHERE relpath IN ('m/0', 'm/2001', 'm/4499')")
            db.execute("UPDATE files SET kind='dicom', status='done', done_token=size||':'||token "
                       "WHERE relpath LIKE 'm/%' AND relpath NOT IN ('m/0', 'm/2001', 'm/4499', 'm/7')")
            db.execute("UPDATE files SET kind='dicom', status='done' WHERE relpath='m/7'")
            db.execute("UPDATE files SET kind='dicom', status='planned' WHERE relpath='m/8'")
        assert store.register("s", [*many, SourceEntry("late", 1, "t")], "r4") == {
            "listed": 4501, "new": 1, "changed": 1, "unchanged": 4499,
            "dicom": 4496, "reports": 3, "exported_before": 4494}
        # a listing that finds every exported file unchanged writes no row at all
        store.db.execute("CREATE TEMP TABLE written (id INTEGER)")
        store.db.execute("CREATE TEMP TRIGGER log_writes AFTER UPDATE ON main.files "
                         "BEGIN INSERT INTO written VALUES (NEW.id); END")
        exported = [e for e in many if e.relpath not in ("m/0", "m/2001", "m/4499", "m/8", "m/2500")]
        assert store.register("s", exported, "r5")["exported_before"] == len(exported) - 1  # m/7: no done_token
        assert store.db.execute("SELECT COUNT(*) FROM written").fetchone()[0] == 0
        store.db.execute("DROP TRIGGER log_writes")
        # only "already known" is passed over: an entry the store cannot hold fails the listing
        # loudly rather than leaving the file out of every run
        import pytest

        with pytest.raises(sqlite3.IntegrityError):
            store.register("s", [SourceEntry("no-token", 1, None)], "r6")
    finally:
        store.close()


def test_a_local_listing_gives_every_regular_file_once(tmp_path):
    """The local source's listing (what register records): each regular file once, its path
    relative to the root with '/', its size and mtime; symlinks (to a file or a directory, inside
    the root or out) are not followed."""
    import os

    from medanon.storage import LocalSource

    root = tmp_path / "in"
    for rel, size in (("b/2.dcm", 2), ("b/10.dcm", 10), ("a/x/deep.dcm", 3), ("top.txt", 1), ("a b/ü.dcm", 4)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * size)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.dcm").write_bytes(b"o")
    os.symlink(tmp_path / "outside", root / "link")
    os.symlink(root / "top.txt", root / "b" / "alias.txt")
    source = LocalSource(str(root) + "/")
    listed = list(source.iter_entries())
    assert sorted((e.relpath, e.size) for e in listed) == [
        ("a b/ü.dcm", 4), ("a/x/deep.dcm", 3), ("b/10.dcm", 10), ("b/2.dcm", 2), ("top.txt", 1)]
    assert all(e.token == str((root / e.relpath).stat().st_mtime_ns) for e in listed)
    assert source.unlisted_dirs == 0


def test_a_folder_the_listing_cannot_read_is_counted_and_the_rest_listed(tmp_path, monkeypatch):
    """A source folder that cannot be read (no permission, an I/O error) must not lose its files
    silently: the listing counts it (the flow warns and reports ``unlisted_dirs``) and goes on. The
    tests run as root, which permissions do not stop, so scandir is made to refuse one folder."""
    import os

    from medanon.storage import LocalSource

    root = tmp_path / "in"
    for rel in ("ok/1.dcm", "locked/2.dcm", "locked/deeper/3.dcm", "4.dcm"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    real = os.scandir

    def refusing(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", refusing)
    source = LocalSource(root)
    assert sorted(e.relpath for e in source.iter_entries()) == ["4.dcm", "ok/1.dcm"]
    assert source.unlisted_dirs == 1
    monkeypatch.setattr(os, "scandir", real)
    assert len(list(source.iter_entries())) == 4 and source.unlisted_dirs == 0  # counted per listing


def test_one_run_at_a_time_holds_a_state_store(tmp_path):
    """A second run on the same state directory stops at once, with a message naming the holder
    (process and flow run, no path); once the first lets go, the next run gets the store."""
    import os

    import pytest

    from medanon.state import LOCK_NAME, StoreInUse, run_lock

    with run_lock(tmp_path, "run-one"):
        assert (tmp_path / LOCK_NAME).stat().st_mode & 0o777 == 0o600
        with pytest.raises(StoreInUse) as held:
            with run_lock(tmp_path, "run-two"):
                pytest.fail("a second run got the store")
        message = str(held.value)
        assert f"pid {os.getpid()}" in message and "flow run run-one" in message
        assert str(tmp_path) not in message
    with run_lock(tmp_path, "run-two"):  # released: the next run goes on
        pass
    assert (tmp_path / LOCK_NAME).read_bytes() == b""
