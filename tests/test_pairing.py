"""Unit tests of report pairing (medanon.pairing) against a real state store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medanon.discover import Inspected
from medanon.pairing import AMBIGUOUS, UNMATCHED, Evidence, StoreIndex, evidence_of, pair_pending, pair_report
from medanon.pipeline import WorkerConfig
from medanon.profile import get_profile
from medanon.reportstage import report_out_path
from medanon.state import StateStore
from medanon.storage import SourceEntry

SRC = "/archive"
STUDY_A, STUDY_B, STUDY_C = "1.2.3.4.100", "1.2.3.4.200", "1.2.3.4.300"


def _dicom(relpath, study, accession, patient, date, **kw):
    return Inspected(relpath=relpath, size=10, token="t", kind="dicom", patient_key=patient, study_uid=study,
                     series_uid=study + ".1", sop_uid=f"{study}.1.{relpath[-1]}", sop_class="1.2.840.10008.5.1.4.1.1.2",
                     modality="CT", accession=accession, patient_id=patient, study_date=date, **kw)


def _add(store, source, items, run_id="r1"):
    store.register(source, [SourceEntry(i.relpath, i.size, i.token) for i in items], run_id)
    ids = {r["relpath"]: r["id"] for r in store.db.execute("SELECT id, relpath FROM files WHERE source=?", (source,))}
    store.record_inspected([(ids[i.relpath], i) for i in items])
    return ids


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state")
    _add(s, SRC, [
        _dicom("a/1", STUDY_A, "ACC100", "MRN1", "20210110"),
        _dicom("a/2", STUDY_A, "ACC100", "MRN1", "20210110"),
        _dicom("b/1", STUDY_B, "ACC200", "MRN2", "20210301"),
        _dicom("c/1", STUDY_C, "ACC300", "MRN2", "20210301"),  # MRN2 had two exams on 1 March
    ])
    yield s
    s.close()


def _pair(store, **ev):
    return pair_report(Evidence(**{k: tuple(v) for k, v in ev.items()}), StoreIndex(store, SRC))


def test_rule1_accession_in_text_or_file_name(store):
    assert _pair(store, accessions=["ACC100"]) == (STUDY_A, "accession", "")
    assert _pair(store, accessions=["acc100"]).study_uid == STUDY_A  # case does not matter
    assert _pair(store, name_accessions=["ACC200"]).rule == "accession"


def test_rule1_study_uid_in_text_or_file_name(store):
    assert _pair(store, study_uids=[STUDY_B]) == (STUDY_B, "study-uid", "")
    assert _pair(store, name_uids=[STUDY_C], study_uids=["1.2.840.10008.5.1.4.1.1.2"]) == (STUDY_C, "study-uid", "")


def test_rule2_patient_id_and_exam_date(store):
    assert _pair(store, patient_ids=["MRN1"], exam_dates=["20210110"]) == (STUDY_A, "patient-date", "")
    # a patient ID alone, or a date alone, is not enough
    assert _pair(store, patient_ids=["MRN1"]).reason == UNMATCHED
    assert _pair(store, exam_dates=["20210110"]).reason == UNMATCHED
    assert _pair(store, patient_ids=["MRN1"], exam_dates=["20210111"]).reason == UNMATCHED


def test_rules_apply_in_order(store):
    # the accession decides; consistent patient + date evidence is fine
    assert _pair(store, accessions=["ACC100"], patient_ids=["MRN1"], exam_dates=["20210110"]).rule == "accession"
    # MRN2 on 1 March is two studies, but the accession picks one of them
    assert _pair(store, accessions=["ACC300"], patient_ids=["MRN2"], exam_dates=["20210301"]).study_uid == STUDY_C


def test_ambiguous_reports(store):
    assert _pair(store, accessions=["ACC100", "ACC200"]).reason == AMBIGUOUS  # one report, two exams
    assert _pair(store, accessions=["ACC100"], study_uids=[STUDY_B]).reason == AMBIGUOUS
    assert _pair(store, patient_ids=["MRN2"], exam_dates=["20210301"]).reason == AMBIGUOUS  # two exams that day
    # the accession says study A, patient + date say study B only: evidence disagrees
    assert _pair(store, accessions=["ACC100"], patient_ids=["MRN2"], exam_dates=["20210301"]).reason == AMBIGUOUS


def test_a_report_naming_another_patient_than_its_accessions_study_is_ambiguous(store):
    """Audit 2, reports #7: the accession is study A's, the patient ID is MRN2's (no exam date):
    the report is not filed under A with B's names as A's known identifiers."""
    assert _pair(store, accessions=["ACC100"], patient_ids=["MRN2"]).reason == AMBIGUOUS
    assert _pair(store, accessions=["ACC100"], patient_ids=["mrn1", "OTHER-ID"]).study_uid == STUDY_A  # one matches
    assert _pair(store, study_uids=[STUDY_B], patient_ids=["MRN1"]).reason == AMBIGUOUS


def test_same_accession_in_two_studies_is_ambiguous(store):
    _add(store, SRC, [_dicom("d/1", "1.2.3.4.400", "ACC100", "MRN9", "20200101")])
    assert _pair(store, accessions=["ACC100"]).reason == AMBIGUOUS


def test_report_naming_another_exam_is_not_paired_by_patient_and_date(store):
    assert _pair(store, accessions=["ACC999"], patient_ids=["MRN1"], exam_dates=["20210110"]).reason == UNMATCHED
    # file-name numbers are too loose to contradict: patient + date still pair
    assert _pair(store, name_accessions=["12345"], patient_ids=["MRN1"], exam_dates=["20210110"]).study_uid == STUDY_A


def test_unmatched_and_other_sources_and_reports_do_not_count(store):
    assert _pair(store).reason == UNMATCHED
    assert _pair(store, accessions=["ACC404"]).reason == UNMATCHED
    _add(store, "/other", [_dicom("x/1", "1.2.3.4.900", "ACC900", "MRN1", "20210110")])
    assert _pair(store, accessions=["ACC900"]).reason == UNMATCHED  # another source's study
    assert _pair(store, patient_ids=["MRN1"], exam_dates=["20210110"]).study_uid == STUDY_A


def test_evidence_from_text_hl7_and_file_name():
    ev, fmt = evidence_of(b"CT REPORT\nMRN: 555123\nAccession No: XR7788\nExam date: 03/04/2021\nFINDINGS: none\n",
                          "inbox/x/report.txt")
    assert fmt == "text" and "XR7788" in ev.accessions and "555123" in ev.patient_ids and ev.exam_dates == ("20210304",)
    ev, _ = evidence_of(b"FINDINGS: normal.\n", "scans/1.2.826.0.1.3680043.8.498.1001.txt")
    assert ev.name_uids == ("1.2.826.0.1.3680043.8.498.1001",) and not ev.study_uids
    hl7 = (b"MSH|^~\\&|RIS|H|PACS|R|20210514120000||ORU^R01|1|P|2.5.1\rPID|1||M77^^^H^MR||DOE^JO\r"
           b"OBR|1|ORD1|ACC9|X|||20210514093000\rOBX|1|TX|IMP||Normal.||||||F\r")
    ev, fmt = evidence_of(hl7, "msg.hl7")
    assert fmt == "hl7" and "ACC9" in ev.accessions and "M77" in ev.patient_ids and "20210514" in ev.exam_dates
    # the folder does not count, only the file name
    ev, _ = evidence_of(b"FINDINGS: normal.\n", "1.2.826.0.1.3680043.8.498.1001/notes.txt")
    assert not ev.name_uids


def test_out_paths_per_layout():
    assert report_out_path("flat", "P1", "S1", 1, "text") == "S1_report.txt"
    assert report_out_path("patient", "P1", "S1", 2, "hl7") == "P1/S1_report-2.hl7"
    assert report_out_path("study", "P1", "S1", 1, "text") == "P1/S1/S1_report.txt"
    assert report_out_path("series", "P1", "S1", 3, "text") == "P1/S1/S1_report-3.txt"


# ---------------------------------------------------------------------------- pair_pending


def _cfg(src: Path, key: bytes = b"unit-key") -> WorkerConfig:
    return WorkerConfig(source=str(src), target=str(src.parent / "out"), profile=get_profile("research"), key=key)


def _report(src: Path, rel: str, text: str) -> Inspected:
    p = src / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    st = p.stat()
    return Inspected(relpath=rel, size=st.st_size, token=str(st.st_mtime_ns), kind="report")


def _statuses(store, source):
    return {r["relpath"]: (r["status"], r["reason"], r["out_relpath"]) for r in store.db.execute(
        "SELECT relpath, status, reason, out_relpath FROM files WHERE source=? AND kind='report'", (source,))}


def test_pair_pending_numbers_by_keyed_hash_and_keeps_names(tmp_path):
    src = tmp_path / "src"
    store = StateStore(tmp_path / "state")
    cfg = _cfg(src)
    pseudo = cfg.pseudonymizer()
    dicom = [_dicom("img/1", STUDY_A, "ACC100", "MRN1", "20210110")]
    reports = [_report(src, f"in/{name}.txt", f"REPORT {i}\nAccession: ACC100\nFINDINGS: item {i}.\n")
               for i, name in enumerate(["zeta", "alpha", "mid"])]
    reports.append(_report(src, "in/lost.txt", "REPORT\nAccession: ACC555\nFINDINGS: none.\n"))
    _add(store, str(src), dicom + reports)
    res = pair_pending(cfg, store)
    assert res["paired"] == {"accession": 3} and res["held"] == {UNMATCHED: 1}
    st = _statuses(store, str(src))
    code = pseudo.study_code(STUDY_A)
    folder = f"{pseudo.patient_id('MRN1')}/{code}/"
    names = {rel: out for rel, (status, _, out) in st.items() if status == "paired"}
    expected = [folder + f"{code}_report{s}.txt" for s in ("", "-2", "-3")]
    assert set(names.values()) == set(expected)
    # the numbering follows a keyed hash of the content, not the source names
    keys = {rel: pseudo.digest("report-order", hashlib.sha256((src / rel).read_bytes()).hexdigest())
            for rel in names}
    assert [names[rel] for rel in sorted(names, key=lambda rel: keys[rel])] == expected
    assert st["in/lost.txt"][:2] == ("quarantined", UNMATCHED)

    # later run: the study of the unmatched report arrives; it pairs and gets the next number,
    # while the earlier reports keep their names
    _add(store, str(src), [_dicom("img/2", "1.2.3.4.555", "ACC555", "MRN5", "20210202")], run_id="r2")
    store.register(str(src), [SourceEntry(r.relpath, r.size, r.token) for r in reports], "r2")
    res = pair_pending(cfg, store)
    assert res["paired"] == {"accession": 1}
    st2 = _statuses(store, str(src))
    assert st2["in/lost.txt"][0] == "paired" and "1.2.3.4.555" not in st2["in/lost.txt"][2]
    assert st2["in/lost.txt"][2].endswith(f"{pseudo.study_code('1.2.3.4.555')}_report.txt")
    assert {rel: st2[rel][2] for rel in names} == names
    store.close()


def test_pair_pending_new_report_for_study_exported_earlier(tmp_path):
    src = tmp_path / "src"
    store = StateStore(tmp_path / "state")
    cfg = _cfg(src)
    _add(store, str(src), [_dicom("img/1", STUDY_A, "ACC100", "MRN1", "20210110"),
                           _report(src, "r/one.txt", "REPORT\nAccession: ACC100\nFINDINGS: a.\n")])
    pair_pending(cfg, store)
    first = _statuses(store, str(src))["r/one.txt"][2]
    store.db.execute("UPDATE files SET status='done' WHERE relpath IN ('img/1', 'r/one.txt')")  # exported
    _add(store, str(src), [_report(src, "later/two.txt", "REPORT\nMRN: MRN1\nExam date: 01/10/2021\nFINDINGS: b.\n")],
         run_id="r2")
    res = pair_pending(cfg, store)
    assert res["paired"] == {"patient-date": 1}
    st = _statuses(store, str(src))
    assert st["r/one.txt"] == ("done", "", first)  # not redone
    assert st["later/two.txt"][2] == first.replace("_report.txt", "_report-2.txt")
    store.close()


def test_pair_pending_unreadable_report_is_a_reason(tmp_path):
    src = tmp_path / "src"
    store = StateStore(tmp_path / "state")
    cfg = _cfg(src)
    item = _report(src, "r/gone.txt", "REPORT\nAccession: ACC100\n")
    _add(store, str(src), [_dicom("img/1", STUDY_A, "ACC100", "MRN1", "20210110"), item])
    (src / "r/gone.txt").unlink()
    res = pair_pending(cfg, store)
    assert res["held"] == {"read-error": 1} and res["paired"] == {}
    store.close()


def test_remap_holds_a_second_file_of_the_same_instance_within_a_batch_across_batches_and_runs(tmp_path):
    """Two files of one SOP Instance would write one output path: the first one (by listing order)
    is planned, every later one is held as duplicate-instance, whether it comes in the same remap
    batch, a later batch, or a later run (the earlier file already planned or written)."""
    from medanon.remap import remap_pending

    store = StateStore(tmp_path / "state")
    cfg = _cfg(tmp_path / "src")

    def instance(rel, uid):
        return Inspected(relpath=rel, size=10, token="t", kind="dicom", patient_key="MRN1", study_uid=STUDY_A,
                         series_uid=STUDY_A + ".1", sop_uid=uid, sop_class="1.2.840.10008.5.1.4.1.1.2", modality="MR")

    _add(store, cfg.source, [instance("f1", "1.9.1"), instance("f2", "1.9.2"), instance("f3", "1.9.3"),
                             instance("f4", "1.9.1"), instance("f5", "1.9.5"), instance("f6", "1.9.5")])
    assert remap_pending(cfg, store, "r1", batch_size=2) == {"planned": 4, "held": 2}  # batches f1 f2 | f3 f4 | f5 f6
    _add(store, cfg.source, [instance("f7", "1.9.2")], run_id="r2")
    # held files are looked at again every run (the first file may have gone): f4 and f6 stay held
    assert remap_pending(cfg, store, "r2", batch_size=2) == {"planned": 0, "held": 3}

    rows = {r["relpath"]: (r["status"], r["reason"], r["out_relpath"]) for r in store.db.execute(
        "SELECT relpath, status, reason, out_relpath FROM files WHERE source=?", (cfg.source,))}
    assert {rel for rel, (status, _r, _p) in rows.items() if status == "planned"} == {"f1", "f2", "f3", "f5"}
    assert {rel: reason for rel, (status, reason, _p) in rows.items() if status == "quarantined"} == {
        "f4": "duplicate-instance", "f6": "duplicate-instance", "f7": "duplicate-instance"}
    assert len({rows[rel][2] for rel in ("f1", "f2", "f3", "f5")}) == 4
    store.close()
