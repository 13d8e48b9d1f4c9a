"""Unit tests for medanon.reports (sniffing, parsing, HL7/text scrubbing) and the PHI benchmark."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

from medanon.reports import ReportDoc, parse_report, scrub_report, sniff_report
from medanon.textscrub import KnownIdentifiers, shift_da

ROOT = Path(__file__).resolve().parents[1]

HL7 = (
    "MSH|^~\\&|RIS|MERCY HOSPITAL^1.2.3^ISO|EHR|RECEIVER|20210304101500||ORU^R01|MSG0001|P|2.5.1\r"
    "EVN|R01|20210304\r"
    "PID|1||12345678^^^MGH^MR~987-65-4321^^^SSA^SS||DOE^JOHN^Q||19650312|M|||123 Main St^^Boston^MA^02114||"
    "(617)555-0199|||||ACCT7788\r"
    "NK1|1|DOE^JANE|SPO|99 Other Rd^^Salem^MA\r"
    "PV1|1|O|RAD^101^1^MGH||||1234^SMITH^ALICE^^^DR|5678^ORTIZ^BOB\r"
    "ORC|RE|ORD555|ACC998877||CM||||20210304|||9999^WELBY^MARCUS\r"
    "OBR|1|ORD555|ACC998877|71260^CT CHEST W CONTRAST^CPT|||20210304093000|||||||||9999^WELBY^MARCUS||||||"
    "20210304120000|||F|||||||1111&KILDARE&JAMES\r"
    "OBX|1|TX|IMP^Impression||CT CHEST WITH CONTRAST~Patient John Doe, MRN 12345678, seen 03/04/2021.||||||F\r"
    "OBX|2|FT|FIND^Findings||White matter normal.\\.br\\Discussed with Dr. Welby at 555-1234.||||||F\r"
    "NTE|1||Called to Dr. Alvarez-Pinto, pager 4-5678\r"
    "ZDS|1.2.840.113619.2.55.3.604688119^RIS^Application^DICOM\r"
)


def _segments(out: bytes) -> dict[str, list[list[str]]]:
    segs: dict[str, list[list[str]]] = {}
    for line in out.decode().split("\r"):
        if line:
            segs.setdefault(line[:3], []).append(line.split("|"))
    return segs


# --------------------------------------------------------------------------- sniffing


def test_sniff_hl7_variants():
    assert sniff_report(HL7.encode()) == "hl7"
    assert sniff_report(b"\xef\xbb\xbf\r\n  MSH|^~\\&|X") == "hl7"
    assert sniff_report(b"\x0bMSH|^~\\&|X|Y\r") == "hl7"


def test_sniff_text_reports():
    assert sniff_report(b"CT CHEST\nFINDINGS: normal\nIMPRESSION: normal\n") == "text"
    assert sniff_report("Befund: unauffällig. Beurteilung: kein Hinweis.".encode("latin-1")) == "text"
    assert sniff_report("Compte rendu: examen normal.".encode("utf-8")[:20]) == "text"
    assert sniff_report(b"shopping list: eggs, milk") is None


def test_sniff_rejects_dicom_and_binary():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    head = Path(path).read_bytes()[:4096]
    assert sniff_report(head) is None
    rng = random.Random(0)
    for _ in range(20):
        blob = bytes(rng.getrandbits(8) for _ in range(4096))
        assert sniff_report(blob) is None
    # preamble-less DICOM and a "report" word inside binary
    assert sniff_report(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100report") is None
    assert sniff_report(b"%PDF-1.4\nreport findings impression") is None
    assert sniff_report(b"") is None


# --------------------------------------------------------------------------- parsing


def test_parse_hl7():
    doc = parse_report(HL7.encode(), "ACC998877_report.hl7")
    assert isinstance(doc, ReportDoc) and doc.kind == "hl7"
    assert "ACC998877" in doc.accession_numbers and "ORD555" in doc.accession_numbers
    assert doc.study_uids == ["1.2.840.113619.2.55.3.604688119"]
    assert doc.patient_ids[:2] == ["12345678", "987-65-4321"]
    assert doc.patient_names == ["DOE^JOHN^Q"]
    assert doc.birth_dates == ["19650312"]
    assert "20210304" in doc.exam_dates
    assert doc.text.splitlines() == [
        "CT CHEST WITH CONTRAST", "Patient John Doe, MRN 12345678, seen 03/04/2021.",
        "White matter normal.", "Discussed with Dr. Welby at 555-1234."]
    assert doc.raw == HL7.encode()


def test_parse_text_report_and_filename():
    data = ("RADIOLOGY REPORT\nPatient: Doe, John Q   MRN: 12-345-678   DOB: 03/12/1965\n"
            "Accession: CT2021-0045   Exam Date: March 4, 2021\n"
            "Study UID: 1.2.840.113619.2.55.3.99\nFINDINGS: Normal.\n").encode()
    doc = parse_report(data, "/x/ACC12345_report.txt")
    assert doc.kind == "text"
    assert doc.patient_names == ["DOE^JOHN^Q"]
    assert doc.patient_ids == ["12-345-678"]
    assert doc.birth_dates == ["19650312"]
    assert doc.exam_dates == ["20210304"]
    assert {"CT2021-0045", "ACC12345", "12345"} <= set(doc.accession_numbers)
    assert doc.study_uids == ["1.2.840.113619.2.55.3.99"]
    assert parse_report(b"IMPRESSION: ok", "1.2.840.1234.5.txt").study_uids == ["1.2.840.1234.5"]


def test_parse_latin1_text():
    doc = parse_report("Befund für Herrn Müller, geb. 01.02.1950\nBeurteilung: normal".encode("latin-1"))
    assert "Müller" in doc.text and doc.birth_dates == ["19500201"]


# --------------------------------------------------------------------------- scrubbing


def test_scrub_hl7_round_trip():
    doc = parse_report(HL7.encode(), "x.hl7")
    known = KnownIdentifiers(replacements={"ACC998877": "A7F3C0", "12345678": "P0000042"})
    out = scrub_report(doc, known, -10)
    text = out.decode()
    for leak in ("DOE", "Doe", "JOHN", "John", "12345678", "987-65-4321", "ACC998877", "ORD555", "Main St",
                 "555-0199", "SMITH", "ORTIZ", "WELBY", "Welby", "KILDARE", "Alvarez", "MERCY", "4-5678",
                 "19650312", "20210304", "03/04/2021", "1.2.840.113619", "NK1", "EVN", "ZDS", "JANE", "Salem"):
        assert leak not in text, leak
    segs = _segments(out)
    assert list(segs) == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX", "NTE"]
    msh = segs["MSH"][0]
    assert msh[1] == "^~\\&" and msh[3] == "[INSTITUTION]" and msh[6] == shift_da("20210304101500", -10)
    pid = segs["PID"][0]
    assert pid[3] == "P0000042^^^^MR~[ID]^^^^SS"
    assert pid[5] == "[NAME]" and pid[7] == shift_da("19650312", -10) and pid[8] == "M"
    assert pid[11] == "[ADDRESS]" and pid[13] == "[PHONE]"
    pv1 = segs["PV1"][0]
    assert pv1[7] == "[NAME]" and pv1[8] == "[NAME]" and pv1[3] == ""
    orc = segs["ORC"][0]
    assert orc[2] == "[ID]" and orc[3] == "A7F3C0" and orc[12] == "[NAME]"
    obr = segs["OBR"][0]
    assert obr[3] == "A7F3C0" and obr[4] == "71260^CT CHEST W CONTRAST^CPT"
    assert obr[7] == "20210222093000" and obr[16] == "[NAME]" and obr[32] == "[NAME]"
    obx1, obx2 = segs["OBX"]
    assert obx1[5] == "CT CHEST WITH CONTRAST~Patient [NAME], MRN P0000042, seen 02/22/2021."
    assert obx2[2] == "FT" and obx2[5] == "White matter normal.\\.br\\Discussed with Dr. [NAME] at [PHONE]."
    assert segs["NTE"][0][3] == "Called to Dr. [NAME], pager [PHONE]"
    # the output parses again as HL7 and carries no identifiers
    doc2 = parse_report(out)
    assert doc2.kind == "hl7" and "DOE^JOHN^Q" not in doc2.patient_names


def test_scrub_hl7_without_shift_keeps_year_only_and_drops_dob():
    out = scrub_report(parse_report(HL7.encode()), KnownIdentifiers(), None)
    segs = _segments(out)
    assert segs["MSH"][0][6] == "2021"
    assert segs["PID"][0][7] == ""
    assert "[DATE]" in segs["OBX"][0][5]


def test_scrub_hl7_keeps_mllp_and_newline_terminators():
    framed = ("\x0b" + HL7.replace("\r", "\n") + "\x1c\r").encode()
    assert sniff_report(framed) == "hl7"
    out = scrub_report(parse_report(framed), KnownIdentifiers(), 3)
    assert out.startswith(b"\x0bMSH|") and out.endswith(b"\x1c\r") and b"\nPID|" in out


def test_scrub_text_report():
    data = ("CT HEAD\nPatient: Doe, John   MRN: 12-345-678   DOB: 03/12/1965\nAccession: ACC998877\n"
            "History: 93-year-old. Discussed with his son Ignatius at (617) 555-0199.\n"
            "FINDINGS: White matter normal. No mass effect.\nIMPRESSION: Normal.\n"
            "Electronically signed by Dr. Perpetua Abernathy on 03/05/2021").encode()
    doc = parse_report(data, "report.txt")
    known = KnownIdentifiers(person_names=["DOE^JOHN"], ids=["12345678", "ACC998877"], dates=["19650312"],
                             replacements={"ACC998877": "A7F3C0"})
    out = scrub_report(doc, known, 5).decode("utf-8")
    for leak in ("Doe", "John", "12-345-678", "ACC998877", "93-year", "Ignatius", "555-0199", "Perpetua",
                 "Abernathy", "03/12/1965", "03/05/2021"):
        assert leak not in out, leak
    # the birth date is removed (never shifted: with shifted exam dates it would give the exact age)
    assert "A7F3C0" in out and "DOB: [DOB]" in out and "1965" not in out and "03/10/2021" in out
    assert "FINDINGS: White matter normal. No mass effect.\nIMPRESSION: Normal." in out


def test_scrub_text_uses_identifiers_found_in_the_report_itself():
    data = b"Patient: Quackenbush, Thaddeus\nMRN: 55512345\nFINDINGS: normal.\nQuackenbush tolerated the exam."
    out = scrub_report(parse_report(data), KnownIdentifiers(), None).decode()
    assert "Quackenbush" not in out and "Thaddeus" not in out and "55512345" not in out


# --------------------------------------------------------------------------- benchmark regression


def _bench():
    spec = importlib.util.spec_from_file_location("report_corpus", ROOT / "bench" / "report_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_corpus_recall_regression():
    rc = _bench()
    samples = rc.make_corpus(200, seed=0)
    assert len(samples) == 200 and len({s.template for s in samples}) >= 8
    res = rc.evaluate(samples)
    assert res["recall"] >= 0.95, res["recall"]
    assert res["hl7_header_recall"] >= 0.95
    assert res["precision"] >= 0.9
    assert res["phrases_preserved"] >= 0.95
