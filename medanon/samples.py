"""A small, messy, PHI-laden sample archive built from pydicom's and pydicom-data's real files.

Used by ``medanon demo`` and by the tests. Every planted identifier is listed
in :data:`PLANTED_PHI` so a test can grep the output for it.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
import pydicom.uid
from pydicom.uid import generate_uid

PATIENTS = [
    # (id, name, birth date, address, phone, sex)
    ("MRN4471203", "Kowalczyk^Agnieszka^Maria", "19580314", "17 Rue des Lilas, 75011 Paris", "01 44 55 66 77", "F"),
    ("MRN5598810", "Fernández^José^Luis", "19720923", "221B Baker Street, London NW1 6XE", "020 7946 0958", "M"),
    ("MRN6630017", "Yamada^Taro", "19450102", "2-7-1 Nishi-Shinjuku, Tokyo 163-8001", "03-5321-1111", "M"),
]
PHYSICIANS = ["Okonkwo^Chinedu^Dr", "Lindqvist^Astrid", "Brennan^Siobhan^^Dr."]
INSTITUTION = "St. Bartholomew Riverside Hospital"
INSTITUTION_ADDRESS = "500 Harbor Boulevard, Springfield IL 62704"
STATION = "CTROOM7-BRH"
SERIAL = "SN-88421-XK"
ACCESSIONS = ["ACC90817263", "ACC90817264", "ACC90817265", "ACC90817266"]

PLANTED_PHI: list[str] = (
    [p[0] for p in PATIENTS]
    + [n for p in PATIENTS for n in p[1].split("^") if len(n) > 3]
    + [p[2] for p in PATIENTS]
    + ["Rue des Lilas", "Baker Street", "Nishi-Shinjuku", "01 44 55 66 77", "7946 0958", "5321-1111"]
    + ["Okonkwo", "Chinedu", "Lindqvist", "Astrid", "Brennan", "Siobhan"]
    + ["Bartholomew", "Harbor Boulevard", STATION, SERIAL] + ACCESSIONS
    + ["Grandmother-Hildegard", "PrivateSecretValue", "kowalczyk", "fernández", "yamada"]
)

SOURCES = [
    ("CT_small.dcm", "pydicom"),
    ("MR_small.dcm", "pydicom"),
    ("MR_small_implicit.dcm", "pydicom"),
    ("JPEG2000.dcm", "pydicom"),
    ("rtplan.dcm", "pydicom"),
    ("rtstruct.dcm", "pydicom"),
    ("693_UNCI.dcm", "data"),
    ("emri_small.dcm", "data"),
    ("US1_UNCR.dcm", "data"),
    ("SC_rgb.dcm", "data"),
]


def data_file(name: str) -> str:
    """A file of pydicom's test set or of the pydicom-data package."""
    p = get_testdata_file(name)
    if p is None:
        raise FileNotFoundError(name)
    return str(p)


def _plant(ds: Dataset, patient, accession: str, study_uid: str, study_date: str, rng: random.Random) -> None:
    pid, name, birth, addr, phone, sex = patient
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = pid
    ds.PatientName = name
    ds.PatientBirthDate = birth
    ds.PatientAddress = addr
    ds.PatientTelephoneNumbers = phone
    ds.PatientSex = sex
    ds.PatientAge = "079Y"
    ds.OtherPatientNames = name.upper()
    ds.PatientMotherBirthName = "Grandmother-Hildegard"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyID = accession[-6:]
    ds.ReferringPhysicianName = PHYSICIANS[0]
    ds.PerformingPhysicianName = PHYSICIANS[1]
    ds.OperatorsName = PHYSICIANS[2]
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = INSTITUTION_ADDRESS
    ds.StationName = STATION
    ds.DeviceSerialNumber = SERIAL
    ds.StudyDescription = f"CT THORAX for {name.split('^')[0]}"
    ds.ImageComments = f"Comment-Mentions-{name.split('^')[0]} and {name.split('^')[0].lower()}_scan"
    # a nested sequence with identifiers inside
    req = Dataset()
    req.RequestingPhysician = PHYSICIANS[0]
    req.RequestedProcedureID = accession
    req.AccessionNumber = accession
    req.ReferencedStudySequence = Sequence([Dataset()])
    req.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    req.ReferencedStudySequence[0].ReferencedSOPInstanceUID = study_uid
    ds.RequestAttributesSequence = Sequence([req])
    # a private block with an identifier and a private sequence
    block = ds.private_block(0x0029, "MEDANON TEST", create=True)
    block.add_new(0x10, "LO", "PrivateSecretValue")
    inner = Dataset()
    inner.PatientName = name
    block.add_new(0x11, "SQ", Sequence([inner]))


def build_sample_archive(root: str | os.PathLike, seed: int = 7, ct_series_size: int = 4) -> dict:
    """Write a messy archive under root; returns what was planted (for tests)."""
    rng = random.Random(seed)
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    studies = []
    written = []
    for i, (fname, _origin) in enumerate(SOURCES):
        patient = PATIENTS[i % len(PATIENTS)]
        accession = ACCESSIONS[i % len(PATIENTS)]
        study_uid = f"1.2.826.0.1.3680043.8.498.{1000 + i % len(PATIENTS)}"
        study_date = f"2021{1 + i % 12:02d}{10 + i:02d}"
        copies = ct_series_size if fname in ("CT_small.dcm", "693_UNCI.dcm") else 1
        series_uid = generate_uid()
        frame_uid = generate_uid()
        first_sop = None
        for c in range(copies):
            ds = pydicom.dcmread(data_file(fname), force=True)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            _plant(ds, patient, accession, study_uid, study_date, rng)
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if fname in ("US1_UNCR.dcm", "SC_rgb.dcm"):
                ds.BurnedInAnnotation = "NO"
            if first_sop is None:
                first_sop = (ds.SOPClassUID, ds.SOPInstanceUID)
            else:  # later instances reference the first one (an inter-instance reference)
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = first_sop
                ds.ReferencedImageSequence = Sequence([ref])
            sub = root / f"import_{rng.randint(100, 999)}" / ("deep" if c % 2 else "") / patient[0].lower()
            sub.mkdir(parents=True, exist_ok=True)
            name = f"IMG{rng.randint(10000, 99999)}" + (".dcm" if c % 3 == 0 else "")  # some without extension
            path = sub / name
            if fname == "MR_small_implicit.dcm":
                ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
            else:
                ds.save_as(path, enforce_file_format=True)
            written.append(str(path))
        studies.append(study_uid)
    # a file without preamble or file meta (raw dataset), still DICOM
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    _plant(ds, PATIENTS[0], ACCESSIONS[0], "1.2.826.0.1.3680043.8.498.1000", "20210110", rng)
    ds.SOPInstanceUID = generate_uid()
    raw_path = root / "loose" / "rawdataset"
    raw_path.parent.mkdir(parents=True)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(raw_path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    # junk: not DICOM, truncated, DICOMDIR, empty, a burned-in-prone US without the flag
    junk = root / "misc"
    junk.mkdir()
    (junk / "notes.xlsx").write_bytes(b"PK\x03\x04 this is not dicom" * 20)
    (junk / "empty.dcm").write_bytes(b"")
    full = Path(written[0]).read_bytes()
    (junk / "cut_transfer.dcm").write_bytes(full[: len(full) - 5000])
    dicomdir = get_testdata_file("DICOMDIR")
    if dicomdir:
        shutil.copy(dicomdir, junk / "DICOMDIR")
    us = pydicom.dcmread(data_file("OBXXXX1A.dcm"))
    _plant(us, PATIENTS[2], ACCESSIONS[3], "1.2.826.0.1.3680043.8.498.1003", "20210301", rng)
    us.SOPInstanceUID = generate_uid()
    if "BurnedInAnnotation" in us:
        del us.BurnedInAnnotation
    us.save_as(junk / "ultrasound_capture", enforce_file_format=True)
    # a top-level tag written twice (a faulty exporter): which patient is it? pydicom would keep
    # only the second Patient ID, so the first would escape the free-text cleaning
    two = pydicom.dcmread(data_file("MR_small.dcm"))
    _plant(two, PATIENTS[0], ACCESSIONS[0], "1.2.826.0.1.3680043.8.498.1000", "20210110", rng)
    two.SOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    two.save_as(buf, enforce_file_format=True)
    (junk / "two_patient_ids.dcm").write_bytes(with_element(buf.getvalue(), 0x00100020, PATIENTS[1][0].encode()))
    reports = add_sample_reports(root)
    return {"root": str(root), "studies": studies, "dicom_files": len(written) + 1, "phi": PLANTED_PHI,
            "reports": reports}


def with_element(data: bytes, tag: int, value: bytes, at_end: bool = False) -> bytes:
    """A Part 10 file's bytes with one more top-level (tag, value) element, in the file's own
    transfer syntax (implicit or explicit VR, either endian, deflated), spliced in just before
    its pixel data or at the very end, whatever tags precede it: a repeated or out-of-order tag,
    as faulty exporters write them."""
    import struct
    import zlib

    from pydicom.datadict import dictionary_VR
    from pydicom.filereader import data_element_generator
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

    from .rawsplit import PIXEL_TAGS, dataset_stream

    start, syntax, stream = dataset_stream(io.BytesIO(data))
    body = stream.read()
    deflated = syntax == DeflatedExplicitVRLittleEndian
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    e = "<" if little else ">"
    value += b" " * (len(value) % 2)
    head = (struct.pack(e + "HHI", tag >> 16, tag & 0xFFFF, len(value)) if implicit else
            struct.pack(e + "HH2sH", tag >> 16, tag & 0xFFFF, dictionary_VR(tag).encode(), len(value)))
    at = len(body)
    if not at_end:
        b = io.BytesIO(body)
        for _ in data_element_generator(b, implicit, little, defer_size=64, stop_when=lambda t, vr, n: t in PIXEL_TAGS):
            pass
        at = b.tell()
    body = body[:at] + head + value + body[at:]
    if deflated:
        z = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = z.compress(body) + z.flush()
    return data[:start] + body


def build_series_archive(root: str | os.PathLike, n: int, source: str = "CT_small.dcm", per_series: int = 50,
                         per_patient_series: int = 2, seed: int = 11, start: int = 0) -> list[str]:
    """n instances copied from one real file, with distinct patients/studies/series/instances.

    Instances are numbered from ``start`` so that a later call can add new ones to the same
    patients and series (for incremental runs)."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(data_file(source))
    paths = []
    for i in range(start, start + n):
        s = i // per_series
        p = s // per_patient_series
        ds = base.copy()
        ds.PatientID = f"BENCH{p:05d}"
        ds.PatientName = f"Testperson^Number{p}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{p}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.78.{s}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.79.{i}"
        ds.InstanceNumber = i % per_series + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        d = root / f"p{p:05d}" / f"s{s:05d}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{i:07d}{rng.choice(['.dcm', ''])}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------- reports
# Radiology reports in other folders than their studies: one per pairing rule, an HL7 message,
# one unmatched and one ambiguous (see medanon/pairing.py). Planted identifiers are in PLANTED_PHI.

_HL7_REPORT = (
    "MSH|^~\\&|RIS|BRH|PACS|RESEARCH|20210514120000||ORU^R01|MSG20210514001|P|2.5.1\r"
    "PID|1||MRN5598810^^^BRH^MR||FERNANDEZ^JOSE^LUIS||19720923|M|||221B Baker Street^^London^^NW1 6XE||"
    "020 7946 0958\r"
    "PV1|1|O|RAD^1^1^BRH||||1234^OKONKWO^CHINEDU^^^DR\r"
    "ORC|RE|ORD7781|ACC90817264||CM\r"
    "OBR|1|ORD7781|ACC90817264|MRI^MR HEAD^L|||20210514093000|||||||||1234^OKONKWO^CHINEDU||||||"
    "20210514110000|||F|||||||2222&LINDQVIST&ASTRID\r"
    "OBX|1|TX|FIND^Findings||Comparison with the prior study of 11 Feb 2021.~"
    "No enhancing lesion. Ventricles normal in size.||||||F\r"
    "OBX|2|TX|IMP^Impression||Stable examination. Discussed with Dr. Brennan.||||||F\r"
)

SAMPLE_REPORTS: dict[str, tuple[str, str, str]] = {
    # relpath: (content, expected study UID or quarantine reason, pairing rule)
    "reports/inbox/2021-01/rad_report_0001.txt": ("""RADIOLOGY REPORT
St. Bartholomew Riverside Hospital, 500 Harbor Boulevard, Springfield IL 62704

Patient: Agnieszka Kowalczyk        MRN: MRN4471203        DOB: 03/14/1958
Accession No: ACC90817263
Exam date: 01/10/2021
Referring physician: Dr. Chinedu Okonkwo
Patient address: 17 Rue des Lilas, 75011 Paris. Phone: 01 44 55 66 77

EXAM: CT THORAX WITHOUT CONTRAST
HISTORY: Persistent cough for six weeks. Her daughter, Wiesława Kowalczyk, reports weight loss.
COMPARISON: None.
FINDINGS: A 6 mm solid nodule is seen in the right upper lobe. No pleural effusion.
Heart size is normal. No mediastinal lymphadenopathy.
IMPRESSION: Solitary 6 mm right upper lobe nodule. Follow-up CT in 12 months is recommended.

Dictated by: Astrid Lindqvist, MD on 01/11/2021
""", "1.2.826.0.1.3680043.8.498.1000", "accession"),
    "reports/scanned/1.2.826.0.1.3680043.8.498.1001.txt": ("""MRI BRAIN REPORT

Name: Fernández, José Luis
Date of birth: 23.09.1972
Home: 221B Baker Street, London NW1 6XE, tel. 020 7946 0958
Next of kin: wife Carmen Fernández-Olmedo
Referring: Dr. Siobhan Brennan

FINDINGS: No acute infarct. Mild periventricular white matter changes. Ventricles normal in size.
IMPRESSION: No acute intracranial abnormality.

Electronically signed by Astrid Lindqvist on 11.02.2021.
""", "1.2.826.0.1.3680043.8.498.1001", "study-uid"),
    "dictations/transcribed/dictation_yt.txt": ("""Radiology dictation
Patient: Taro Yamada   MRN: MRN6630017   DOB: 1945-01-02
Exam date: 2021-06-15
Referring physician: Dr. Chinedu Okonkwo. Son Kenji Yamada present during the exam.
Contact: 2-7-1 Nishi-Shinjuku, Tokyo 163-8001, phone 03-5321-1111.

EXAM: CT chest, radiotherapy planning.
FINDINGS: Right lower lobe mass measuring 3.2 cm, unchanged. No new lesion.
IMPRESSION: Stable right lower lobe mass; planning contours reviewed.

Dictated by Dr. Siobhan Brennan 2021-06-16.
""", "1.2.826.0.1.3680043.8.498.1002", "patient-date"),
    "hl7/inbound/msg_000123.hl7": (_HL7_REPORT, "1.2.826.0.1.3680043.8.498.1001", "accession"),
    "reports/inbox/2021-02/rad_report_0002.txt": ("""RADIOLOGY REPORT
Patient: Henrietta Blackwood   MRN: MRN9990001
Accession No: ACC55500012
Exam date: 02/02/2021
FINDINGS: Normal chest radiograph.
IMPRESSION: No acute cardiopulmonary process.
""", "report-unmatched", ""),
    "reports/inbox/2021-03/combined_0003.txt": ("""COMBINED REPORT
Patient: Taro Yamada   MRN: MRN6630017
Accession No: ACC90817265 (CT chest)
Accession No: ACC90817266 (US abdomen)
FINDINGS: See individual examinations. No new lesion.
IMPRESSION: Stable disease.
""", "report-ambiguous", ""),
}

REPORT_PHI = ["Wiesława", "Carmen", "Olmedo", "Kenji", "Henrietta", "Blackwood", "MRN9990001", "ACC55500012",
              "03/14/1958", "23.09.1972", "1945-01-02", "01/10/2021", "01/11/2021", "11.02.2021", "2021-06-15",
              "2021-06-16", "11 Feb 2021", "20210514", "MSG20210514001", "ORD7781", "75011 Paris", "NW1 6XE",
              "163-8001", "Springfield IL"]
PLANTED_PHI.extend(REPORT_PHI)


def add_sample_reports(root: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Write SAMPLE_REPORTS under root; returns relpath -> (expected study UID or reason, rule)."""
    root = Path(root)
    for rel, (text, _, _) in SAMPLE_REPORTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    return {rel: (expect, rule) for rel, (_, expect, rule) in SAMPLE_REPORTS.items()}
