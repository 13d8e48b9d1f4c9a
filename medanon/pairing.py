"""pair: link each report to exactly one study, by rules tried in order; never guess.

Evidence comes from the report itself (:func:`medanon.reports.parse_report`):

* accession numbers: after a cue word in the text ("Accession:", "Acc #"...), HL7 ORC-2/3 and
  OBR-2/3 (placer and filler order numbers), and the file name ("acc12345.txt", "A1234567.txt");
* Study Instance UIDs: in the text or the HL7 message (ZDS-1), or the file name
  ("1.2.840....txt");
* patient IDs: after an MRN / Patient ID cue, HL7 PID-2/3/4;
* exam dates: after an exam-date cue ("Exam date:", "Date of service:"...), HL7 OBR-7/22.

It is matched against the DICOM instances of the same source in the state store, from any run,
so a report that arrives after its study was exported still pairs with it. Identifiers match
exactly (or in upper/lower case); dates match StudyDate (YYYYMMDD).

Rule 1 (``accession``, ``study-uid``): the studies having an instance whose Accession Number, or
whose Study Instance UID, the report names. One study: paired (rule ``accession`` when an
accession matched, else ``study-uid``), unless the report also names a patient ID and exam date
that match only other studies, or patient IDs none of which is the study's (its evidence
disagrees: ``report-ambiguous``). Several studies:
``report-ambiguous`` (e.g. one report for two exams).

Rule 2 (``patient-date``), when rule 1 found nothing: the studies having an instance whose
Patient ID and StudyDate are a patient ID and an exam date the report names. One study: paired,
unless the report names accession numbers in its text or HL7 fields and none of them is that
study's accession (the report is about another exam: ``report-unmatched``). Several studies
(two exams of one patient on one day): ``report-ambiguous``.

Otherwise ``report-unmatched``. Unmatched and ambiguous reports are paired again in later runs
(their study may arrive later). Reason and rule names are PHI-free codes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import NamedTuple

from .reports import parse_report
from .storage import EntryChanged

RULES = ("accession", "study-uid", "patient-date")
UNMATCHED, AMBIGUOUS = "report-unmatched", "report-ambiguous"
MAX_REPORT_BYTES = 16 << 20  # a larger "report" is not a report: quarantined as unreadable


@dataclass(frozen=True)
class Evidence:
    """What a report says about its study (PHI: flow side and state store only)."""

    accessions: tuple[str, ...] = ()  # from the text or HL7 order fields
    study_uids: tuple[str, ...] = ()  # from the text or HL7
    patient_ids: tuple[str, ...] = ()
    exam_dates: tuple[str, ...] = ()  # YYYYMMDD
    name_accessions: tuple[str, ...] = ()  # from the file name
    name_uids: tuple[str, ...] = ()


class Pairing(NamedTuple):
    study_uid: str = ""
    rule: str = ""  # one of RULES when paired
    reason: str = ""  # UNMATCHED or AMBIGUOUS when not


def evidence_of(data: bytes, relpath: str = "") -> tuple[Evidence, str]:
    """(evidence, format "text" | "hl7") of a report file; the file name counts, not its folders."""
    doc = parse_report(data, "")
    name = parse_report(b"", os.path.basename(relpath.replace("\\", "/"))) if relpath else None
    ev = Evidence(
        accessions=tuple(doc.accession_numbers), study_uids=tuple(doc.study_uids),
        patient_ids=tuple(doc.patient_ids), exam_dates=tuple(d for d in doc.exam_dates if d),
        name_accessions=tuple(name.accession_numbers) if name else (),
        name_uids=tuple(name.study_uids) if name else (),
    )
    return ev, doc.kind


def _variants(values) -> set[str]:
    out = set()
    for v in values:
        v = (v or "").strip()
        if v:
            out |= {v, v.upper(), v.lower()}
    return out


class StoreIndex:
    """Look-ups of studies (original Study UID -> its accession numbers) in the state store."""

    def __init__(self, store, source: str):
        self.store, self.source = store, source

    def by_accession(self, values) -> dict[str, set[str]]:
        return self.store.studies_by(self.source, "accession", _variants(values))

    def by_study_uid(self, values) -> dict[str, set[str]]:
        return self.store.studies_by(self.source, "study_uid", {(v or "").strip() for v in values})

    def by_patient_date(self, patient_ids, dates) -> dict[str, set[str]]:
        return self.store.studies_by_patient_date(self.source, _variants(patient_ids), set(dates))

    def patient_ids_of(self, study_uid: str) -> set[str]:
        return self.store.study_patient_ids(self.source, study_uid)


def pair_report(ev: Evidence, index) -> Pairing:
    """Apply the rules in order (see the module docstring)."""
    by_acc = index.by_accession(ev.accessions + ev.name_accessions)
    by_uid = index.by_study_uid(ev.study_uids + ev.name_uids)
    by_patient = index.by_patient_date(ev.patient_ids, ev.exam_dates)
    rule1 = set(by_acc) | set(by_uid)
    if len(rule1) > 1:
        return Pairing(reason=AMBIGUOUS)
    if len(rule1) == 1:
        (study,) = rule1
        if by_patient and study not in by_patient:
            return Pairing(reason=AMBIGUOUS)  # accession/UID and patient + date point to different studies
        theirs = {p.upper() for p in index.patient_ids_of(study)}
        if ev.patient_ids and theirs and not ({p.upper() for p in _variants(ev.patient_ids)} & theirs):
            return Pairing(reason=AMBIGUOUS)  # the report names another patient than the study's
        return Pairing(study, "accession" if study in by_acc else "study-uid")
    if len(by_patient) > 1:
        return Pairing(reason=AMBIGUOUS)
    if len(by_patient) == 1:
        ((study, accessions),) = by_patient.items()
        named = {a.upper() for a in _variants(ev.accessions)}
        theirs = {a.upper() for a in accessions if a}
        if named and theirs and not (named & theirs):
            return Pairing(reason=UNMATCHED)  # the report names another exam's accession
        return Pairing(study, "patient-date")
    return Pairing(reason=UNMATCHED)


def _read(source, relpath: str, token: str | None = None) -> bytes | None:
    with source.open(relpath, token) as fh:
        data = fh.read(MAX_REPORT_BYTES + 1)
    return None if len(data) > MAX_REPORT_BYTES else data


def pair_pending(cfg, store, batch_size: int = 500) -> dict:
    """Pair every report not yet paired (flow side: reads the reports, writes the state store).

    Each paired report gets its output path beside its study; a study's reports are numbered
    once, new ones after those already numbered, in the order of a keyed hash of their content
    (never of their source names). Returns PHI-free counts."""
    from .reportstage import report_out_path

    pseudo = cfg.pseudonymizer()
    store.reopen_unpaired_reports(cfg.source)
    source = cfg.open_source()
    index = StoreIndex(store, cfg.source)
    by_study: dict[str, list[dict]] = {}
    held: list[tuple[int, str]] = []
    for rows in store.iter_new_reports(cfg.source, batch_size):
        for r in rows:
            try:
                data = _read(source, r["relpath"], r["token"])
            except EntryChanged:
                held.append((r["id"], "changed"))
                continue
            except OSError:
                held.append((r["id"], "read-error"))
                continue
            try:
                if data is None:
                    raise ValueError("too large")
                ev, fmt = evidence_of(data, r["relpath"])
            except Exception:  # noqa: BLE001 - a bad file is a reason code, never a crash or a value
                held.append((r["id"], "unreadable"))
                continue
            res = pair_report(ev, index)
            anchor = store.study_anchor(cfg.source, res.study_uid) if res.study_uid else None
            if anchor is None:
                held.append((r["id"], res.reason or UNMATCHED))
                continue
            order = pseudo.digest("report-order", hashlib.sha256(data).hexdigest()).hex()
            by_study.setdefault(res.study_uid, []).append(dict(
                file_id=r["id"], study_uid=res.study_uid, rule=res.rule, dicom_id=anchor["id"], format=fmt,
                order_key=order + pseudo.cache_token(r["relpath"])[:16], patient_key=anchor["patient_key"]))
    pairings = []
    for study_uid, items in by_study.items():
        taken = store.report_seqs(study_uid)
        fresh = []
        for it in items:
            prev = store.report_pairing(it["file_id"])
            if prev is not None and prev["study_uid"] == study_uid and prev["seq"]:
                it["seq"] = prev["seq"]  # a changed report keeps its name
            else:
                fresh.append(it)
        n = 1
        for it in sorted(fresh, key=lambda x: x["order_key"]):
            while n in taken:
                n += 1
            it["seq"] = n
            taken.add(n)
        for it in items:
            it["out_relpath"] = report_out_path(cfg.layout, pseudo.patient_id(it["patient_key"]),
                                                pseudo.study_code(study_uid), it["seq"], it["format"])
            pairings.append(it)
    store.record_pairings(pairings)
    store.quarantine(held)
    paired: dict[str, int] = {}
    for it in pairings:
        paired[it["rule"]] = paired.get(it["rule"], 0) + 1
    reasons: dict[str, int] = {}
    for _, reason in held:
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"paired": dict(sorted(paired.items())), "held": dict(sorted(reasons.items()))}
