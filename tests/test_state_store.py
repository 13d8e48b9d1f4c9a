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
