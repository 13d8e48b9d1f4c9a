"""Reports stage (worker side): de-identify paired reports and write them beside their studies.

For each report the worker reads ONE header of its paired study (no pixel data) and builds
the known identifiers of that patient, study, staff and site (:func:`medanon.scrub.known_identifiers`),
with the study's pseudonyms as replacements (Patient ID, Accession Number, Study ID, Study
Instance UID). The text engine (:func:`medanon.reports.scrub_report`) then replaces names by
placeholders, IDs by the study's pseudonyms (other IDs by ``[ID]``), and shifts dates by the
patient's offset, the same as the study's DICOM dates (Modified Dates option), or keeps them
(Full Dates option), or replaces them by ``[DATE]``. Findings and impression stay readable.

Like :func:`medanon.pipeline.scrub_batch`, :func:`report_batch` gets a batch manifest and returns
a PHI-free summary: counts, quarantine reason codes, and manifest rows built from pseudonyms.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import pydicom

from .pipeline import WorkerConfig, make_durable
from .storage import EntryChanged, StorageError, TargetFull

REPORT_MODALITY = "REPORT"
EXTENSIONS = {"text": "txt", "hl7": "hl7"}


def report_name(study_code: str, seq: int, fmt: str) -> str:
    """``S…_report.txt``, then ``S…_report-2.hl7``… for a study's further reports."""
    return f"{study_code}_report{'' if seq <= 1 else f'-{seq}'}.{EXTENSIONS.get(fmt, 'txt')}"


def report_out_path(layout: str, patient: str, study_code: str, seq: int, fmt: str) -> str:
    """Beside the study: ``<patient>/<study>/`` in study and series layouts; named by the study
    pseudonym at the root (flat) or in ``<patient>/`` (patient)."""
    name = report_name(study_code, seq, fmt)
    if layout == "flat":
        return name
    if layout == "patient":
        return f"{patient}/{name}"
    if layout in ("study", "series"):
        return f"{patient}/{study_code}/{name}"
    raise ValueError(f"unknown layout {layout!r}")


def study_context(ds, cfg: WorkerConfig, pseudo):
    """(known identifiers, date shift, PHI-free manifest fields) of the study one header belongs to."""
    from .scrub import known_identifiers, patient_key_of

    patient_key = patient_key_of(ds)
    known = known_identifiers(ds, pseudo, patient_key)
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    new_uid = study_uid if cfg.profile.retain_uids else pseudo.uid(study_uid)
    if study_uid:
        known.replacements[study_uid] = new_uid
        study_id = str(ds.get("StudyID", "") or "").strip()
        if study_id:
            known.replacements.setdefault(study_id, pseudo.study_code(study_uid))
    if cfg.profile.retain_longitudinal_modified_dates:
        shift = pseudo.date_shift_days(patient_key)
    elif cfg.profile.retain_longitudinal_full_dates:
        shift = 0  # dates kept, as in the study's DICOM
    else:
        shift = None  # replaced by [DATE]
    info = {"patient_id": pseudo.patient_id(patient_key), "study_instance_uid": new_uid}
    return known, shift, info


def _with_other_series(ctx: tuple, source, others: str | None) -> tuple:
    """The study context with the known identifiers of the study's other series added (one header
    each: their operators and physicians may differ from the anchor's series). A header that
    changed since the listing raises EntryChanged (the report waits for the next run); one that
    cannot be read adds nothing (its instance is quarantined, its names are not known)."""
    from .scrub import known_identifiers

    if not others:
        return ctx
    known, shift, info = ctx
    for relpath, token in json.loads(others):
        try:
            ds = _header(source, relpath, token)
        except EntryChanged:
            raise
        except Exception:  # noqa: BLE001
            continue
        known = known.merged(known_identifiers(ds))  # no pseudo: the anchor's pseudonyms stay
    return known, shift, info


def _header(source, relpath: str, token: str | None = None):
    with source.open(relpath, token) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fh, stop_before_pixels=True, force=True)


def report_batch(cfg: WorkerConfig, batch_no: int, items: list[tuple]) -> dict:
    """items: (file_id, report relpath, out relpath, relpath of one instance of its study, size,
    listed tokens of the report and of that instance).

    Returns a PHI-free summary shaped like scrub_batch's; per-file failures become quarantine
    reasons, a full target stops the batch (``target_full``)."""
    from .reports import ReportRejected, parse_report, scrub_report

    source = cfg.open_source()
    target = cfg.open_target()
    pseudo = cfg.pseudonymizer()
    studies: dict[str, tuple | str] = {}  # anchor relpath -> study context, or a quarantine reason
    result = {"batch": batch_no, "exported": 0, "skipped_identical": 0, "bytes_out": 0,
              "quarantined": {}, "outputs": {}, "target_full": False, "pending": []}
    for n, item in enumerate(items):
        file_id, relpath, out_rel, dicom_rel, _size, token, dicom_token = item[:7]
        others = item[7] if len(item) > 7 else None
        if dicom_rel not in studies:
            try:
                studies[dicom_rel] = study_context(_header(source, dicom_rel, dicom_token), cfg, pseudo)
                studies[dicom_rel] = _with_other_series(studies[dicom_rel], source, others)
            except EntryChanged:  # the study's identifiers may no longer be the ones paired with
                studies[dicom_rel] = "changed"
            except Exception:  # noqa: BLE001 - missing or unreadable header: no known identifiers, no export
                studies[dicom_rel] = "read-error"
        ctx = studies[dicom_rel]
        if isinstance(ctx, str):
            result["quarantined"][file_id] = ctx
            continue
        known, shift, info = ctx
        try:
            with source.open(relpath, token) as fh:
                data = fh.read()
        except EntryChanged:  # not the text that was paired: never scrubbed with another study's names
            result["quarantined"][file_id] = "changed"
            continue
        except OSError:
            result["quarantined"][file_id] = "read-error"
            continue
        try:
            doc = parse_report(data, relpath.replace("\\", "/").rsplit("/", 1)[-1])
            out = scrub_report(doc, known, shift)
        except ReportRejected as exc:  # a format/encoding that cannot be scrubbed reliably
            result["quarantined"][file_id] = exc.reason
            continue
        except Exception:  # noqa: BLE001 - never crash, never echo a value
            result["quarantined"][file_id] = "scrub-error"
            continue
        sha = hashlib.sha256(out).hexdigest()
        try:
            written = target.put_bytes(out_rel, out, sha)
        except TargetFull:
            result["target_full"] = True
            result["pending"] = [i[0] for i in items[n:]]
            break
        except (StorageError, OSError):
            result["quarantined"][file_id] = "write-error"
            continue
        if written:
            result["exported"] += 1
            result["bytes_out"] += len(out)
        else:
            result["skipped_identical"] += 1
        result["outputs"][file_id] = {
            "path": out_rel, **info, "series_instance_uid": "", "sop_instance_uid": "", "sop_class_uid": "",
            "modality": REPORT_MODALITY, "transfer_syntax_uid": "", "size": len(out), "sha256": sha}
    if getattr(cfg, "sync", True):
        make_durable(target, result)  # before the flow records the batch in the ledger
    return result

