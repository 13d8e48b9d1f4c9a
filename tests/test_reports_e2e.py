"""Reports end to end: the CLI (subprocess, own Prefect home) on the sample archive, whose reports lie in
other folders than their studies: one per pairing rule, an HL7 message, one unmatched, one ambiguous."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import pydicom
import pytest

from medanon.keys import Pseudonymizer, shift_date
from medanon.samples import PLANTED_PHI, SAMPLE_REPORTS, build_sample_archive
from conftest import TEST_KEY, run_json

PSEUDO = Pseudonymizer(TEST_KEY.encode())
# what each exported report must still say (findings and impression stay readable)
KEPT = {
    "reports/inbox/2021-01/rad_report_0001.txt": [
        "FINDINGS: A 6 mm solid nodule is seen in the right upper lobe. No pleural effusion.",
        "IMPRESSION: Solitary 6 mm right upper lobe nodule. Follow-up CT in 12 months is recommended."],
    "reports/scanned/1.2.826.0.1.3680043.8.498.1001.txt": [
        "FINDINGS: No acute infarct. Mild periventricular white matter changes.",
        "IMPRESSION: No acute intracranial abnormality."],
    "dictations/transcribed/dictation_yt.txt": [
        "FINDINGS: Right lower lobe mass measuring 3.2 cm, unchanged. No new lesion.",
        "IMPRESSION: Stable right lower lobe mass; planning contours reviewed."],
    "hl7/inbound/msg_000123.hl7": ["No enhancing lesion. Ventricles normal in size.", "Stable examination."],
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsrc") / "archive"
    info = build_sample_archive(root, ct_series_size=2)
    return root, info


def _sources(root: Path) -> list[pydicom.Dataset]:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                ds = pydicom.dcmread(os.path.join(dirpath, f), stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - reports, junk
                continue
            if "SOPInstanceUID" in ds and "cut_" not in f:
                out.append(ds)
    return out


def _outputs(out: Path) -> dict[str, tuple[Path, pydicom.Dataset]]:
    return {str(ds.SOPInstanceUID): (p, ds) for p in out.rglob("*.dcm")
            for ds in [pydicom.dcmread(p, stop_before_pixels=True)]}


def _which(text: str) -> str:
    """The sample report an exported report came from (by its kept findings)."""
    hits = [rel for rel, kept in KEPT.items() if kept[0] in text]
    assert len(hits) == 1, text
    return hits[0]


def _needles() -> list[bytes]:
    out = set()
    for s in PLANTED_PHI:
        for v in (s, s.upper()):
            for enc in ("utf-8", "latin-1"):
                try:
                    out.add(v.encode(enc))
                except UnicodeEncodeError:
                    pass
    return sorted(out)


def test_reports_paired_scrubbed_exported_and_incremental(archive, tmp_path, cli_env):
    src, info = archive
    out, state = tmp_path / "out", str(tmp_path / "state")
    args = ["run", str(src), str(out), "--state-dir", state, "--layout", "study", "--label", "reports"]
    summary = run_json(args, cli_env)

    # discovery and pairing: one report per rule; the unmatched and the ambiguous one quarantined
    assert summary["reports"] == len(SAMPLE_REPORTS) == 6
    assert summary["reports_paired"] == {"accession": 2, "study-uid": 1, "patient-date": 1}
    assert summary["reports_exported"] == 4
    q = summary["quarantined"]
    assert q.get("report-unmatched") == 1 and q.get("report-ambiguous") == 1 and q.get("not-dicom") == 1

    # each report lies beside its study: same folder as that study's de-identified instances
    sources = _sources(src)
    outputs = _outputs(out)
    folders: dict[str, set[Path]] = {}
    for ds in sources:
        new = PSEUDO.uid(str(ds.SOPInstanceUID))
        if new in outputs:
            folders.setdefault(str(ds.StudyInstanceUID), set()).add(outputs[new][0].parent)
    reports = {_which(p.read_text(errors="replace")): p for p in out.rglob("*_report*")}
    assert set(reports) == set(KEPT)
    for rel, path in reports.items():
        study = info["reports"][rel][0]
        assert folders[study] == {path.parent}, rel
        assert path.parent.name == PSEUDO.study_code(study)
        assert path.name.startswith(PSEUDO.study_code(study) + "_report")
        assert path.suffix == (".hl7" if rel.endswith(".hl7") else ".txt")
    # two reports of one study: numbered, the second with -2
    assert sorted(reports[r].name.split("_", 1)[1] for r in ("hl7/inbound/msg_000123.hl7",
                                                            "reports/scanned/1.2.826.0.1.3680043.8.498.1001.txt")) \
        in (["report-2.txt", "report.hl7"], ["report-2.hl7", "report.txt"])

    # the PHI-free manifest lists the reports with pseudonyms only
    rows = {r["path"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    for rel, path in reports.items():
        row = rows[path.relative_to(out).as_posix()]
        assert row["modality"] == "REPORT" and int(row["size"]) == path.stat().st_size
        assert row["study_instance_uid"] == PSEUDO.uid(info["reports"][rel][0])
        assert row["patient_id"] == path.parent.parent.name

    # no planted PHI survives in a report (nor anywhere in the output or Prefect's home);
    # findings and impression stay readable
    needles = _needles()
    for rel, path in reports.items():
        data = path.read_bytes()
        assert [n for n in needles if n in data] == [], rel
        text = data.decode()
        for line in KEPT[rel]:
            assert line in text, (rel, line)
        assert "[NAME]" in text
    for root in (out, Path(cli_env["PREFECT_HOME"])):
        for p in root.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert [n for n in needles if n in data or n in str(p).encode()] == [], p
    # IDs and accessions became the study's pseudonyms
    yamada = reports["dictations/transcribed/dictation_yt.txt"].read_text()
    assert f"MRN: {PSEUDO.patient_id('MRN6630017')}" in yamada
    kowalczyk = reports["reports/inbox/2021-01/rad_report_0001.txt"].read_text()
    assert PSEUDO.accession("1.2.826.0.1.3680043.8.498.1000", "ACC90817263") in kowalczyk

    # a date in a report, shifted, equals the same date shifted in the study's DICOM
    exam = re.search(r"Exam date: (\d{4})-(\d{2})-(\d{2})", yamada)
    on_day = [outputs[PSEUDO.uid(str(ds.SOPInstanceUID))][1] for ds in sources
              if ds.PatientID == "MRN6630017" and ds.StudyDate == "20210615"]
    assert on_day and {str(d.StudyDate) for d in on_day} == {"".join(exam.groups())}
    assert "".join(exam.groups()) == shift_date("20210615", PSEUDO.date_shift_days("MRN6630017"))
    hl7 = reports["hl7/inbound/msg_000123.hl7"].read_bytes().decode().split("\r")
    obr7 = next(seg for seg in hl7 if seg.startswith("OBR|")).split("|")[7]
    fernandez = {str(outputs[PSEUDO.uid(str(ds.SOPInstanceUID))][1].StudyDate) for ds in sources
                 if ds.PatientID == "MRN5598810" and ds.StudyDate == "20210514"}
    assert fernandez == {obr7[:8]}

    # incremental: a second run skips the exported reports (ledger), files untouched
    stamps = {p: p.stat().st_mtime_ns for p in reports.values()}
    again = run_json(args, cli_env)
    assert again["reports_exported"] == 0 and again["reports_paired"] == {}
    # the same files listed again are counted as the same things (from the listing, not by reading the store)
    for k in ("discovered", "dicom", "reports", "quarantined"):
        assert again[k] == summary[k], k
    assert again["exported"] == 0 and again["skipped_existing"] == summary["exported"]
    assert again["quarantined"].get("report-unmatched") == 1  # re-evaluated, still no study
    assert {p: p.stat().st_mtime_ns for p in reports.values()} == stamps

    # a report arriving in a later run pairs with the study exported earlier, numbered after it
    late = src / "late_arrivals" / "addendum.txt"
    late.parent.mkdir()
    late.write_text("ADDENDUM\nAccession No: ACC90817263\nFINDINGS: The nodule margins are smooth.\n"
                    "Discussed with Dr. Okonkwo on 01/12/2021.\n")
    try:
        third = run_json(args, cli_env)
    finally:
        shutil.rmtree(late.parent)
    assert third["reports_paired"] == {"accession": 1} and third["reports_exported"] == 1
    assert third["exported"] == 0 and third["reports"] == summary["reports"] + 1 and third["dicom"] == summary["dicom"]
    first = reports["reports/inbox/2021-01/rad_report_0001.txt"]
    added = first.parent / first.name.replace("_report.txt", "_report-2.txt")
    text = added.read_text()
    assert "The nodule margins are smooth." in text and "Okonkwo" not in text and "01/12/2021" not in text
    assert {p: p.stat().st_mtime_ns for p in reports.values()} == stamps


def test_reports_flat_layout_named_by_study(archive, tmp_path, cli_env):
    src, info = archive
    out = tmp_path / "flat"
    summary = run_json(["run", str(src), str(out), "--state-dir", str(tmp_path / "state"), "--layout", "flat"],
                       cli_env)
    assert summary["reports_exported"] == 4
    names = sorted(p.name for p in out.iterdir() if "_report" in p.name)
    codes = {PSEUDO.study_code(info["reports"][rel][0]) for rel in KEPT}
    assert {n.split("_report")[0] for n in names} == codes and len(names) == 4
    assert not any(p.is_dir() for p in out.iterdir())
