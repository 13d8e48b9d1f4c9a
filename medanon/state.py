"""The local state store: manifest, crosswalk and ledger in one SQLite file (mode 0600).

It holds PHI (source paths, original identifiers), so it lives on the hospital
side, outside the target, and is never exported. Only the flow process opens
it; batch tasks receive batch manifests and return PHI-free summaries.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

DB_NAME = "medanon.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    relpath TEXT NOT NULL,
    size INTEGER NOT NULL,
    token TEXT NOT NULL,
    seen_run TEXT,             -- the last run that listed it while not exported (a listing leaves exported rows as they are)
    kind TEXT,                 -- NULL until inspected; dicom | report | quarantine
    reason TEXT NOT NULL DEFAULT '',
    patient_key TEXT, study_uid TEXT, series_uid TEXT, sop_uid TEXT, sop_class TEXT,
    modality TEXT, accession TEXT, patient_id TEXT, study_date TEXT, header TEXT,
    status TEXT NOT NULL DEFAULT 'new',   -- new | planned | done | quarantined
    out_relpath TEXT, out_sha256 TEXT, out_size INTEGER, target TEXT,
    done_token TEXT,           -- size:token of the source when it was exported
    out_info TEXT,             -- PHI-free manifest row (JSON)
    out_line TEXT,             -- the same row as its manifest.csv line (NULL in rows of earlier versions)
    UNIQUE (source, relpath)
);
CREATE INDEX IF NOT EXISTS files_status ON files (source, status);
-- files not yet inspected, in id order: each inspection page starts where the last one ended,
-- instead of sorting every file of the source again (quadratic at tens of millions)
CREATE INDEX IF NOT EXISTS files_uninspected ON files (source) WHERE kind IS NULL;
CREATE INDEX IF NOT EXISTS files_out ON files (out_relpath);
CREATE TABLE IF NOT EXISTS crosswalk (
    kind TEXT NOT NULL, original TEXT NOT NULL, pseudonym TEXT NOT NULL,
    first_run TEXT, PRIMARY KEY (kind, original)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- every change to the exported rows (any target) counts once: a run that changed none of them
-- keeps the manifest it published last instead of building it again from every row.
-- A statement these triggers may fire on is journaled by SQLite so that it alone can be undone
-- (about 30 KB written per row when it changes indexed columns, and twice the time). The store's
-- writes run in transactions undone whole on any error, so they say OR FAIL (no statement journal)
-- or write a whole chunk in one statement.
INSERT OR IGNORE INTO meta VALUES ('ledger_changes', '0');
CREATE TRIGGER IF NOT EXISTS ledger_row_added AFTER INSERT ON files WHEN NEW.status = 'done'
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'ledger_changes'; END;
CREATE TRIGGER IF NOT EXISTS ledger_row_changed
AFTER UPDATE OF status, target, out_relpath, out_info, out_line ON files
WHEN OLD.status = 'done' OR NEW.status = 'done'
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'ledger_changes'; END;
CREATE TRIGGER IF NOT EXISTS ledger_row_removed AFTER DELETE ON files WHEN OLD.status = 'done'
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'ledger_changes'; END;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started REAL, finished REAL, summary TEXT
);
-- pairing looks files up by study, accession, or patient and date, always within one source. The
-- selective column leads: a source holds (nearly) every file, and with source first SQLite, having
-- no statistics, took any of these indexes for any of these lookups and read all of the source's
-- files for each report (the indexes of earlier versions are replaced)
DROP INDEX IF EXISTS files_study;
DROP INDEX IF EXISTS files_accession;
DROP INDEX IF EXISTS files_patient_date;
CREATE INDEX IF NOT EXISTS files_by_study ON files (study_uid, source);
CREATE INDEX IF NOT EXISTS files_by_accession ON files (accession, source);
CREATE INDEX IF NOT EXISTS files_by_patient_date ON files (patient_id, study_date, source);
-- reports paired with a study (files.kind='report'; status new -> paired -> done | quarantined)
CREATE TABLE IF NOT EXISTS reports (
    file_id INTEGER PRIMARY KEY,  -- files.id of the report
    study_uid TEXT NOT NULL,      -- original Study Instance UID of the paired study
    rule TEXT NOT NULL,           -- accession | study-uid | patient-date
    dicom_id INTEGER,             -- files.id of the instance whose header gives the known identifiers
    format TEXT,                  -- text | hl7
    order_key TEXT,               -- keyed hash of the content: numbering order within the study
    seq INTEGER                   -- 1, 2, ... within the study; kept once assigned
);
CREATE INDEX IF NOT EXISTS reports_study ON reports (study_uid);
"""


def _secure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass


# Quarantine reasons about reading a file, not about its content: the file is looked at again by
# the next run even when its listing is unchanged.
REREAD_REASONS = ("read-error", "changed")


LOCK_NAME = "run.lock"


class StoreInUse(Exception):
    """Another run holds the state store. PHI-free message: who holds it, never a path."""


@contextmanager
def run_lock(state_dir: str | os.PathLike, run_id: str = ""):
    """Hold the state store for one run: a second run on the same state directory stops at once.

    Two runs on one store would plan, scrub and record the same files side by side (each takes the
    other's planned files for those of a killed run). The lock is an ``flock`` on ``run.lock`` in the
    state directory: the kernel drops it when the holding process ends in any way, so a killed run
    never leaves a stale lock and the next run resumes. The file says who holds it (process, host,
    start time, flow run id: PHI-free) for the message the second run gives. Without ``fcntl``
    (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    import socket
    from datetime import datetime, timezone

    directory = Path(state_dir).expanduser().resolve()
    _secure_dir(directory)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode("ascii", "replace").strip() or "another process"
            raise StoreInUse(f"the state store is in use by another run ({holder}); one run at a time uses a "
                             "state store: wait for that run to end, or give this one another state directory") \
                from None
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        info = f"pid {os.getpid()} on {socket.gethostname()}, started {started}"
        info += f", flow run {run_id}" if run_id else ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("ascii", "replace") + b"\n", 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the lock goes with the descriptor; the empty file stays
    finally:
        os.close(fd)


class StateStore:
    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir).expanduser().resolve()
        _secure_dir(self.dir)
        self.path = self.dir / DB_NAME
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        old_umask = os.umask(0o077)  # journal / WAL files are created private too
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(files)")}
            if columns and "out_line" not in columns:  # a store made by an earlier version
                self.db.execute("ALTER TABLE files ADD COLUMN out_line TEXT")
            self.db.executescript(SCHEMA)
            # a listing chunk being matched against the store (register): in memory only, never a file
            self.db.execute("ATTACH DATABASE ':memory:' AS listing")
            self.db.execute("CREATE TABLE listing.chunk (relpath TEXT NOT NULL, size INTEGER NOT NULL, token TEXT NOT NULL)")
        finally:
            os.umask(old_umask)
        self.db.row_factory = sqlite3.Row

    def instance_id(self) -> str:
        """A random identity of this state store, made once (PHI-free)."""
        import uuid

        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('instance_id', ?)", (str(uuid.uuid4()),))
        return self.get_meta("instance_id")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self):
        old_umask = os.umask(0o077)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            os.umask(old_umask)

    # ------------------------------------------------------------------ discover
    def register(self, source: str, entries: Iterable, run_id: str) -> dict:
        """Record listed entries; unchanged done/quarantined files keep their status.

        An incremental run lists every source file, tens of millions at a large centre, so each
        chunk of 2 000 is handed to SQLite whole (no Python per file). The chunk is matched against
        the store in one query that counts what the run needs of the unchanged files (how many are
        DICOM instances, reports, already exported). An exported file is left as it is: rewriting
        every row each run would write the whole store again every night. Only an unchanged file
        not exported is marked seen in this run (``seen_run``; a file that could not be read last
        time is looked at again), and only in a chunk where some files were not unchanged, the
        changed ones are reset and the new ones added."""
        counts = {"listed": 0, "new": 0, "changed": 0, "unchanged": 0,
                  "dicom": 0, "reports": 0, "exported_before": 0}
        chunk: list[tuple] = []
        reread = ",".join("?" * len(REREAD_REASONS))
        known = "FROM listing.chunk c CROSS JOIN files f ON f.source=? AND f.relpath=c.relpath"  # the chunk drives
        match = f"{known} AND f.size=c.size AND f.token=c.token"  # the unchanged ones

        def flush():
            with self.tx() as db:
                db.execute("DELETE FROM listing.chunk")
                db.executemany("INSERT INTO listing.chunk VALUES (?,?,?)", chunk)
                unchanged = not_exported = 0
                for kind, done, same_version, n in db.execute(
                        "SELECT f.kind, f.status='done', f.done_token=f.size||':'||f.token, COUNT(*) "
                        f"{match} GROUP BY 1, 2, 3", (source,)):
                    unchanged += n
                    not_exported += 0 if done else n
                    counts["dicom"] += n if kind == "dicom" else 0
                    counts["reports"] += n if kind == "report" else 0
                    counts["exported_before"] += n if kind == "dicom" and done and same_version else 0
                if not_exported:  # a chunk of an archive exported night after night has none: no second pass
                    db.execute("UPDATE files SET seen_run=?, kind=CASE WHEN kind='quarantine' AND "
                               f"reason IN ({reread}) THEN NULL ELSE kind END "
                               f"WHERE id IN (SELECT f.id {match} WHERE f.status!='done')",
                               (run_id, *REREAD_REASONS, source))
                counts["unchanged"] += unchanged
                if unchanged < len(chunk):  # not the usual chunk of a nightly run: some are new or changed
                    changed = db.execute(
                        f"SELECT f.id, c.size, c.token {known} WHERE f.size!=c.size OR f.token!=c.token",
                        (source,)).fetchall()
                    db.executemany(
                        "UPDATE OR FAIL files SET size=?, token=?, seen_run=?, kind=NULL, reason='', status='new' "
                        "WHERE id=?", [(size, token, run_id, fid) for fid, size, token in changed])
                    counts["changed"] += len(changed)
                    # one statement for the chunk: row by row, the ledger's triggers make SQLite journal
                    # every statement's pages (about 30 KB written per file, and twice the time)
                    counts["new"] += db.execute(
                        "INSERT INTO files (source, relpath, size, token, seen_run) "
                        "SELECT ?, relpath, size, token, ? FROM listing.chunk WHERE true "
                        "ON CONFLICT (source, relpath) DO NOTHING",  # only the listed file being known already
                        (source, run_id)).rowcount
            chunk.clear()

        for e in entries:
            counts["listed"] += 1
            chunk.append((e.relpath, e.size, e.token))
            if len(chunk) >= 2000:
                flush()
        if chunk:
            flush()
        return counts

    def _paged(self, sql: str, params: tuple, batch_size: int, as_tuples: bool = True) -> Iterator[list]:
        """Stream a query's rows in batches ordered by file id (the query's first column),
        ``sql`` ending with ``AND <files alias>.id>? ORDER BY ... LIMIT ?``: memory stays bounded."""
        last = 0
        while True:
            rows = self.db.execute(sql, (*params, last, batch_size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [tuple(r) for r in rows] if as_tuples else rows

    def iter_uninspected(self, source: str, batch_size: int) -> Iterator[list[tuple]]:
        """Batches of (id, relpath, size, token) not yet inspected, streamed by id."""
        return self._paged("SELECT id, relpath, size, token FROM files WHERE source=? AND kind IS NULL AND id>? "
                           "ORDER BY id LIMIT ?", (source,), batch_size)

    def record_inspected(self, items: list) -> dict[str, int]:
        """items: (file_id, Inspected). Returns how many of each kind (dicom, report, quarantine)."""
        kinds: dict[str, int] = {}
        for _, it in items:
            kinds[it.kind] = kinds.get(it.kind, 0) + 1
        with self.tx() as db:
            db.executemany(
                "UPDATE OR FAIL files SET kind=?, reason=?, patient_key=?, study_uid=?, series_uid=?, sop_uid=?, "
                "sop_class=?, modality=?, accession=?, patient_id=?, study_date=?, header=?, status=? WHERE id=?",
                [(it.kind, it.reason, it.patient_key, it.study_uid, it.series_uid, it.sop_uid, it.sop_class,
                  it.modality, it.accession, it.patient_id, it.study_date, json.dumps(it.header),
                  "quarantined" if it.kind == "quarantine" else "new", file_id) for file_id, it in items])
        return kinds

    def quarantine(self, file_ids_reasons: Iterable[tuple[int, str]]) -> None:
        with self.tx() as db:
            db.executemany("UPDATE OR FAIL files SET status='quarantined', reason=? WHERE id=?",
                           [(r, i) for i, r in file_ids_reasons])

    # ------------------------------------------------------------------ remap
    def iter_unplanned_dicom(self, source: str, batch_size: int) -> Iterator[list[sqlite3.Row]]:
        return self._paged("SELECT * FROM files WHERE source=? AND kind='dicom' AND status='new' AND id>? "
                           "ORDER BY id LIMIT ?", (source,), batch_size, as_tuples=False)

    def plan(self, plans: list[tuple[int, str]], crosswalk: list[tuple[str, str, str]], run_id: str) -> None:
        with self.tx() as db:
            db.executemany("UPDATE OR FAIL files SET status='planned', out_relpath=? WHERE id=?",
                           [(p, i) for i, p in plans])
            db.executemany(
                "INSERT OR IGNORE INTO crosswalk (kind, original, pseudonym, first_run) VALUES (?,?,?,?)",
                [(k, o, p, run_id) for k, o, p in dict.fromkeys(crosswalk)],  # a series' rows repeat
            )

    def out_owners(self, out_relpaths: list[str]) -> dict[str, int]:
        """Output path -> id of a planned or written file that has it (the lowest id), for the
        given paths: one query per 500 paths."""
        owners: dict[str, int] = {}
        paths = list(dict.fromkeys(out_relpaths))
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            for path, fid in self.db.execute(
                    f"SELECT out_relpath, MIN(id) FROM files WHERE out_relpath IN ({','.join('?' * len(chunk))}) "
                    "AND status IN ('planned','done') GROUP BY out_relpath", chunk):
                owners[path] = fid
        return owners

    # ------------------------------------------------------------------ scrub / export
    def iter_planned(self, source: str, batch_size: int) -> Iterator[list[tuple]]:
        """Batches of (id, relpath, out_relpath, size, token) to scrub and export."""
        return self._paged("SELECT id, relpath, out_relpath, size, token FROM files WHERE source=? "
                           "AND status='planned' AND id>? ORDER BY id LIMIT ?", (source,), batch_size)

    def target_bytes(self, target: str) -> int:
        """Bytes the ledger says a target already holds."""
        return self.db.execute("SELECT COALESCE(SUM(out_size), 0) FROM files WHERE status='done' AND target=?",
                               (target,)).fetchone()[0]

    def planned_bytes(self, source: str) -> int:
        """Estimated output size of what remains: de-identified files are about their source's size."""
        return self.db.execute("SELECT COALESCE(SUM(size), 0) FROM files WHERE source=? AND status='planned'",
                               (source,)).fetchone()[0]

    def count(self, source: str, where: str = "1", params: tuple = ()) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM files WHERE source=? AND {where}", (source, *params)).fetchone()[0]

    def mark_done(self, outputs: dict, target: str, lines: dict | None = None) -> None:
        """outputs: file_id -> PHI-free manifest row with at least sha256 and size; lines: file_id ->
        the same row as its manifest line (else the manifest formats it from the row each time)."""
        lines = lines or {}
        with self.tx() as db:
            db.executemany(
                "UPDATE OR FAIL files SET status='done', out_sha256=?, out_size=?, target=?, out_info=?, out_line=?, "
                "done_token=size||':'||token WHERE id=?",
                [(o["sha256"], o["size"], target, json.dumps(o), lines.get(fid), int(fid))
                 for fid, o in outputs.items()],
            )

    def reasons(self, source: str, run_id: str | None = None) -> dict[str, int]:
        q = "SELECT reason, COUNT(*) FROM files WHERE source=? AND status='quarantined'"
        params: tuple = (source,)
        if run_id:
            q += " AND seen_run=?"
            params += (run_id,)
        return {r: n for r, n in self.db.execute(q + " GROUP BY reason", params).fetchall()}

    def exported_rows(self, target: str) -> Iterator[sqlite3.Row]:
        yield from self.db.execute(
            "SELECT out_relpath, out_line, out_info FROM files WHERE status='done' AND target=? "
            "ORDER BY out_relpath",
            (target,),
        )

    def ledger_changes(self) -> int:
        """How many times an exported row has been added, changed or removed, in any target."""
        return int(self.get_meta("ledger_changes"))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ reports
    def reopen_unpaired_reports(self, source: str) -> None:
        """Unmatched/ambiguous reports are paired again each run (their study may have arrived)."""
        with self.tx() as db:
            db.execute("UPDATE files SET status='new', reason='' WHERE source=? AND kind='report' "
                       "AND status='quarantined' AND reason IN ('report-unmatched','report-ambiguous')", (source,))

    def iter_new_reports(self, source: str, batch_size: int) -> Iterator[list[sqlite3.Row]]:
        """Batches of report rows (id, relpath, size, token) waiting to be paired."""
        return self._paged("SELECT id, relpath, size, token FROM files WHERE source=? AND kind='report' "
                           "AND status='new' AND id>? ORDER BY id LIMIT ?", (source,), batch_size, as_tuples=False)

    def _studies(self, source: str, where: str, params: tuple) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for uid, acc in self.db.execute(
                f"SELECT DISTINCT study_uid, accession FROM files WHERE source=? AND kind='dicom' AND {where}",
                (source, *params)):
            out.setdefault(uid, set()).add(acc or "")
        return out

    def studies_by(self, source: str, column: str, values) -> dict[str, set[str]]:
        """Studies (original UID -> accession numbers) whose instances have column IN values."""
        assert column in ("accession", "study_uid")
        values = sorted({v for v in values if v})
        if not values:
            return {}
        return self._studies(source, f"{column} IN ({','.join('?' * len(values))})", tuple(values))

    def studies_by_patient_date(self, source: str, patient_ids, dates) -> dict[str, set[str]]:
        ids, days = sorted({v for v in patient_ids if v}), sorted({v for v in dates if v})
        if not ids or not days:
            return {}
        return self._studies(source, f"patient_id IN ({','.join('?' * len(ids))}) "
                                     f"AND study_date IN ({','.join('?' * len(days))})", (*ids, *days))

    def study_patient_ids(self, source: str, study_uid: str) -> set[str]:
        """The Patient IDs a study's instances carry (through the study's index)."""
        return {r[0] for r in self.db.execute(
            "SELECT DISTINCT patient_id FROM files WHERE study_uid=? AND source=? AND kind='dicom'",
            (study_uid, source)) if r[0]}

    def study_anchor(self, source: str, study_uid: str) -> sqlite3.Row | None:
        """One instance of a study (exported ones first): its header gives the report's known identifiers."""
        return self.db.execute(
            "SELECT id, relpath, patient_key FROM files WHERE source=? AND kind='dicom' AND study_uid=? ORDER BY "
            "CASE status WHEN 'done' THEN 0 WHEN 'planned' THEN 1 WHEN 'new' THEN 2 ELSE 3 END, id LIMIT 1",
            (source, study_uid)).fetchone()

    def report_pairing(self, file_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM reports WHERE file_id=?", (file_id,)).fetchone()

    def report_seqs(self, study_uid: str) -> set[int]:
        """Numbers already given to reports of a study (their names stay stable across runs)."""
        return {r[0] for r in self.db.execute("SELECT seq FROM reports WHERE study_uid=? AND seq IS NOT NULL",
                                              (study_uid,))}

    def record_pairings(self, pairings: list[dict]) -> None:
        """pairings: file_id, study_uid, rule, dicom_id, format, order_key, seq, patient_key, out_relpath."""
        with self.tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO reports (file_id, study_uid, rule, dicom_id, format, order_key, seq) "
                "VALUES (:file_id, :study_uid, :rule, :dicom_id, :format, :order_key, :seq)", pairings)
            db.executemany(
                "UPDATE OR FAIL files SET status='paired', reason='', study_uid=:study_uid, patient_key=:patient_key, "
                "out_relpath=:out_relpath WHERE id=:file_id", pairings)

    # the study's other series, one instance each (at most this many): their headers name staff
    # (operators, performing physicians) that the anchor's may not
    OTHER_SERIES_READ = 32

    def iter_paired_reports(self, source: str, batch_size: int) -> Iterator[list[tuple]]:
        """Batches of (id, relpath, out_relpath, anchor instance relpath, size, token, anchor token,
        other series) to scrub and export; other series: a JSON list of [relpath, token] of one
        instance of each other series of the study."""
        return self._paged(
            "SELECT f.id, f.relpath, f.out_relpath, d.relpath, f.size, f.token, d.token, "
            "(SELECT json_group_array(json_array(o.relpath, o.token)) FROM files o WHERE o.id IN (SELECT MIN(s.id) "
            " FROM files s WHERE s.study_uid=d.study_uid AND s.source=d.source AND s.kind='dicom' "
            " AND s.series_uid IS NOT d.series_uid GROUP BY s.series_uid ORDER BY s.series_uid "
            f" LIMIT {self.OTHER_SERIES_READ})) "  # by id, through the study's index: no scan per report
            "FROM files f JOIN reports r "
            "ON r.file_id=f.id JOIN files d ON d.id=r.dicom_id WHERE f.source=? AND f.kind='report' "
            "AND f.status='paired' AND f.id>? ORDER BY f.id LIMIT ?", (source,), batch_size)

    def pseudonym(self, kind: str, original: str) -> str | None:
        row = self.db.execute("SELECT pseudonym FROM crosswalk WHERE kind=? AND original=?", (kind, original)).fetchone()
        return row[0] if row else None

    def save_run(self, run_id: str, started: float, summary: dict) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?)", (run_id, started, time.time(), json.dumps(summary)))
