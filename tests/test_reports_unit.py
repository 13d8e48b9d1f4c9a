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
    assert pid[5] == "[NAME]" and pid[7] == "" and pid[8] == "M"  # a birth date is removed, never shifted
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


# --------------------------------------------------------------------------- audit fixes (PHI leaks)

import pytest  # noqa: E402

from medanon.reports import REPORT_REASONS, ReportRejected  # noqa: E402


def _hl7(segs: list[str]) -> bytes:
    return ("\r".join(segs) + "\r").encode("utf-8")


_MSH = r"MSH|^~\&|RIS|FAC|EHR|DEST|20190315101500||ORU^R01|CTL0002|P|2.5"


def _rejected(data: bytes, filename: str = "r.txt") -> str:
    doc = parse_report(data, filename)
    with pytest.raises(ReportRejected) as exc:
        scrub_report(doc, KnownIdentifiers(), None)
    assert exc.value.reason in REPORT_REASONS
    return exc.value.reason


def test_hl7_coded_fields_and_typed_values_lose_known_identifiers():
    obr = (["OBR", "1", "C2ACC7702", "C2ACC7702", "71020^CHEST 2V^L^^^^^^Odilie Vaskova C2PID99817 fell at home"]
           + [""] * 26 + ["R10.9^Pain^I10^^^^^^Vaskova fell, C2PID99817"])
    data = _hl7([
        _MSH,
        r"PID|1||C2PID99817^^^MRN^MR||VASKOVA^ODILIE||19500101|F",
        "|".join(obr),
        r"OBX|1|TX|^IMPRESSION||No acute findings.||||||F",
        r"OBX|2|CWE|^DX||R10.9^Abdominal pain^I10^^^^^^Odilie Vaskova||||||F",
        r"OBX|3|CE|^REQ||Vaskova^Vaskova||||||F",
        r"OBX|4|ST|^NOTE Odilie Vaskova^L||see above||||||F",
        r"OBX|5|NM|^X||Odilie Vaskova||||||F",
        r"OBX|6|ID|^Y||C2PID99817||||||F",
        r"OBX|7|NM|^DOSE||12.5|mGy|||||F",
        r"OBX|8|TM|^T||1230||||||F",
        r"OBX|9|SN|^R||>^10||||||F",
        r"OBX|10|ID|^FLAG||Y||||||F",
        r"NTE|1||note|Vaskova^Vaskova",
    ])
    known = KnownIdentifiers(person_names=["VASKOVA^ODILIE"], ids=["C2PID99817"],
                             replacements={"C2PID99817": "P0000042"})
    out = scrub_report(parse_report(data, "x.hl7"), known, None).decode()
    for leak in ("Vaskova", "VASKOVA", "Odilie", "C2PID99817"):
        assert leak not in out, leak
    segs = _segments(out.encode())
    obr_out = segs["OBR"][0]
    assert obr_out[4].startswith("71020^CHEST 2V^L^")  # pure codes and the plain description stay
    assert obr_out[31].startswith("R10.9^Pain^I10^")
    obx = {o[1]: o for o in segs["OBX"]}
    assert obx["2"][5].startswith("R10.9^Abdominal pain^I10^")
    assert obx["7"][5] == "12.5" and obx["8"][5] == "1230" and obx["9"][5] == ">^10" and obx["10"][5] == "Y"
    assert obx["6"][5] == "P0000042"


def test_hl7_message_with_a_line_before_msh_or_another_separator_is_parsed():
    segs = [_MSH, r"PID|1||C4PID30012^^^MRN^MR||MERROWAY^PELLA||19500101|F", r"NK1|1|QUANDERLY^YOLGAR|SPO",
            r"PV1|1|O|RAD||||1111^TRAXLEROD^UNNA", r"OBR|1|C4ACC4404|C4ACC4404|71020^CHEST",
            r"OBX|1|TX|^IMPRESSION||Quanderly and Traxlerod informed.||||||F"]
    lead = b"Received 2019-03-15 from interface\n" + _hl7(segs)
    other_fs = _hl7([s.replace("|", "#") for s in segs])
    for data in (lead, other_fs):
        assert sniff_report(data) == "hl7"
        doc = parse_report(data, "ACC_C4ACC4404.hl7")
        assert doc.kind == "hl7" and "C4ACC4404" in doc.accession_numbers
        out = scrub_report(doc, KnownIdentifiers(), None).decode()
        for leak in ("QUANDERLY", "Quanderly", "TRAXLEROD", "Traxlerod", "YOLGAR", "MERROWAY", "C4PID30012",
                     "Received"):
            assert leak not in out, leak


def test_hl7_segments_that_cannot_be_parsed_are_quarantined():
    data = (b"Report follows\nPID|1||C4PID30012^^^MRN^MR||MERROWAY^PELLA\n"
            b"NK1|1|QUANDERLY^YOLGAR|SPO\nOBX|1|TX|^IMPRESSION||Findings normal.\n")
    assert _rejected(data) == "report-unparsed-hl7"
    assert _rejected(b"Findings: normal\nMSH;broken header\nPID;1;;123\n") == "report-unparsed-hl7"
    # ordinary cue lines are not taken for HL7 segments
    ok = parse_report(b"CT HEAD\nPID: 12345678\nOBR-4: CT head\nFindings: normal.\n")
    assert ok.kind == "text" and not ok.reject


def test_markup_reports_are_quarantined():
    rtf = (rb"{\rtf1\ansi\deff0 {\fonttbl {\f0 Arial;}}\pard RADIOLOGY REPORT\par Accession: C6ACC6606\par"
           rb" Patient: Br\'e9nda Qxzw\'e9\par Findings: No acute abnormality.\par}")
    cda = (b'<?xml version="1.0"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><name><given>Ysolde</given>'
           b"<family>Pemberdine</family></name><text>Accession: C8ACC8808. Findings normal.</text></ClinicalDocument>")
    bare_cda = b"<ClinicalDocument><text>Findings: normal</text></ClinicalDocument>"
    html = (b"<html><body><h1>Radiology Report</h1><p>Accession: C9ACC9909</p><td>Quibb&#108;ey, Ansel&shy;ma</td>"
            b"<p>Findings: No acute abnormality.</p></body></html>")
    frag = b"Findings: normal.<br>Impression: Quibb&#108;ey is fine.<br>"
    for data in (rtf, cda, bare_cda, html, b"\xef\xbb\xbf  " + html, frag):
        assert _rejected(data) == "report-unsupported-format", data[:30]
    # ordinary comparisons in a plain-text report stay plain text
    doc = parse_report(b"FINDINGS: nodule <5 mm, lesion > 3 cm.\nIMPRESSION: normal.\n")
    assert doc.kind == "text" and not doc.reject
    # RTF or HTML inside an HL7 message's OBX-5 (audit 2, reports #4 and #5)
    msh = b"MSH|^~\\&|RIS|H|EHR|H|20190315101500||ORU^R01|C1|P|2.5\rPID|1||PID77^^^MRN^MR||QUELLBRIDGE^ANN\r"
    for obx in (rb"OBX|1|FT|^REPORT||{\E\rtf1\E\ansi {\E\fonttbl}\E\par Quell\E\'62ridge is well.\E\par}||||||F",
                b"OBX|1|TX|^REPORT||<p>Hollingdr\\T\\#97;ke is well. <b>Fen</b>worthy read it.</p>||||||F"):
        doc = parse_report(msh + obx + b"\r")
        assert doc.kind == "hl7" and doc.reject == "report-unsupported-format", obx[:40]
    doc = parse_report(msh + b"OBX|1|TX|^IMPRESSION||Nodule <5 mm, lesion > 3 cm.||||||F\r")
    assert doc.kind == "hl7" and not doc.reject


def test_mixed_encoding_report_is_quarantined():
    txt = "RADIOLOGY REPORT\nFindings: Brénda Qxzwé, temp 37\xb0C.\n"
    data = txt.encode("utf-8").replace(b"\xc2\xb0", b"\xb0")
    assert _rejected(data) == "report-mixed-encoding"
    # plain Latin-1 and plain UTF-8 are still decoded and exported
    for enc in ("latin-1", "utf-8"):
        doc = parse_report(txt.encode(enc))
        assert not doc.reject and "Qxzwé" in doc.text
        out = scrub_report(doc, KnownIdentifiers(person_names=["QXZWÉ^BRÉNDA"]), None).decode()
        assert "Qxzw" not in out and "nda" not in out


def test_hl7_names_in_other_segments_are_known_identifiers():
    obr = (["OBR", "1", "C3ACC3303", "C3ACC3303", "71020^CHEST", "", "", "", "", "", "9999^COLLERIDGE^ANN"]
           + [""] * 21 + ["6666&ZOLTRANE&HEIDO^20190315080000^20190315090000"])
    data = _hl7([
        _MSH,
        r"PID|1||C3PID55120^^^MRN^MR||BRANDISH&&BRANDISH&&PEMBRIDGE^TOVA||19500101|F",
        r"NK1|1|PLOVERTON^YOLGAR|SPO",
        r"PD1|||FAC|7777^HARGREAVE^NILS",
        r"TXA|1|RAD|TX|20190315||||||8888^FENSHAWE^ODA",
        "|".join(obr),
        r"OBX|1|TX|^IMPRESSION||Ploverton consented. Hargreave concurs. Zoltrane agrees with the plan. Fenshawe "
        r"reviewed. Pembridge called. Colleridge collected. Ostrowan directs.||||||F||||||||||||||7777^OSTROWAN^MIKA",
    ])
    doc = parse_report(data, "x.hl7")
    assert "ZOLTRANE^HEIDO" in doc.other_names and "PEMBRIDGE^TOVA" in doc.other_names
    out = scrub_report(doc, KnownIdentifiers(), None).decode()
    for leak in ("Ploverton", "Hargreave", "Zoltrane", "Fenshawe", "Pembridge", "Colleridge", "Ostrowan",
                 "2019031508"):
        assert leak not in out, leak


def test_hl7_msh3_and_msh5_are_replaced():
    data = _hl7([r"MSH|^~\&|RIS^Saint Wexbury Hospital^L|WEXBURY|PACS^Marbleton Heart Clinic^L|MHC|20190315101500"
                 r"||ORU^R01|CTL0010|P|2.5", r"OBX|1|TX|^IMPRESSION||No acute findings.||||||F"])
    out = scrub_report(parse_report(data), KnownIdentifiers(), None).decode()
    assert "Wexbury" not in out and "Marbleton" not in out
    msh = _segments(out.encode())["MSH"][0]
    assert msh[2] == msh[4] == "[INSTITUTION]" and msh[8] == "ORU^R01"


def test_report_batch_quarantines_reports_that_cannot_be_scrubbed(tmp_path):
    from pydicom.data import get_testdata_file

    from medanon.pipeline import WorkerConfig
    from medanon.profile import PROFILES
    from medanon.reportstage import report_batch
    from medanon.storage import LocalSource

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    files = {
        "ok.txt": b"FINDINGS: no acute abnormality.\nIMPRESSION: normal study.\n",
        "r.rtf": rb"{\rtf1\ansi Findings: Br\'e9nda Qxzw\'e9\par Impression: normal.\par}",
        "m.txt": "Findings: Brénda, 37°C.".encode("utf-8").replace(b"\xc2\xb0", b"\xb0"),
        "h.txt": b"Report\nPID|1||123^^^MRN||DOE^JOHN\nNK1|1|DOE^JANE|SPO\n",
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    listed = {e.relpath: e for e in LocalSource(src).iter_entries()}
    cfg = WorkerConfig(source=str(src), target=str(tmp_path / "out"), profile=PROFILES["research"], key=b"k",
                       sync=False)
    items = [(i, name, f"p/{i}.txt", "a.dcm", listed[name].size, listed[name].token, listed["a.dcm"].token)
             for i, name in enumerate(files, 1)]
    res = report_batch(cfg, 1, items)
    assert res["exported"] == 1 and list(res["outputs"]) == [1]
    assert res["quarantined"] == {2: "report-unsupported-format", 3: "report-mixed-encoding",
                                  4: "report-unparsed-hl7"}
    assert not (tmp_path / "out" / "p" / "2.txt").exists()


def test_hl7_message_that_cannot_be_rebuilt_is_quarantined_not_exported_as_text(monkeypatch):
    import medanon.reports as reports

    def boom(*_a, **_k):
        raise ValueError("x")

    monkeypatch.setattr(reports, "_scrub_hl7", boom)
    with pytest.raises(ReportRejected) as exc:
        scrub_report(parse_report(HL7.encode()), KnownIdentifiers(), None)
    assert exc.value.reason == "report-unparsed-hl7"


def test_a_report_is_cleaned_of_staff_named_only_in_another_series_of_its_study(tmp_path):
    """The report's known identifiers come from one header of each series of its study (the
    anchor's, then one per other series, from the state store): an operator or performing
    physician named only in another series is removed from the report too."""
    import pydicom
    from pydicom.data import get_testdata_file

    from medanon.pipeline import WorkerConfig
    from medanon.profile import PROFILES
    from medanon.reportstage import report_batch
    from medanon.state import StateStore
    from medanon.storage import LocalSource

    src = tmp_path / "src"
    src.mkdir()
    for name, series, operator in (("a.dcm", "1.2.3.4.1", "Plainfield^Otto"), ("b.dcm", "1.2.3.4.2",
                                                                                "Brightwater^Xanthe")):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.OperatorsName = "1.2.3.4", series, operator
        ds.save_as(src / name)
    (src / "r.txt").write_bytes(b"FINDINGS: no acute abnormality. Xanthe Brightwater was paged; Otto Plainfield too.\n")
    listed = {e.relpath: e for e in LocalSource(src).iter_entries()}
    store = StateStore(tmp_path / "state")
    db = store.db
    for name, series in (("a.dcm", "1.2.3.4.1"), ("b.dcm", "1.2.3.4.2")):
        db.execute("INSERT INTO files (source, relpath, size, token, kind, status, study_uid, series_uid) "
                   "VALUES (?, ?, ?, ?, 'dicom', 'done', '1.2.3.4', ?)",
                   (str(src), name, listed[name].size, listed[name].token, series))
    db.execute("INSERT INTO files (source, relpath, size, token, kind, status, study_uid, out_relpath) VALUES "
               "(?, 'r.txt', ?, ?, 'report', 'paired', '1.2.3.4', 'p/r.txt')",
               (str(src), listed["r.txt"].size, listed["r.txt"].token))
    anchor = store.study_anchor(str(src), "1.2.3.4")
    assert anchor["relpath"] == "a.dcm"
    db.execute("INSERT INTO reports (file_id, study_uid, rule, dicom_id, format, order_key, seq) "
               "VALUES (3, '1.2.3.4', 'study-uid', ?, 'text', 'k', 1)", (anchor["id"],))
    (items,) = list(store.iter_paired_reports(str(src), 10))
    store.close()
    cfg = WorkerConfig(source=str(src), target=str(tmp_path / "out"), profile=PROFILES["research"], key=b"k",
                       sync=False)
    res = report_batch(cfg, 1, items)
    assert res["exported"] == 1, res
    text = (tmp_path / "out" / "p" / "r.txt").read_text()
    assert "Brightwater" not in text and "Xanthe" not in text and "Plainfield" not in text, text
    assert "no acute abnormality" in text


def test_reports_in_a_code_page_latin1_does_not_read_are_quarantined():
    """Audit 2, reports #2 and #3: a Cyrillic or Greek report in an 8-bit code page was read as
    Latin-1 and its names came out as mojibake that converts back. Such a report is quarantined:
    by its words, by an HL7 MSH-18 that declares another character set, or by a name the study's
    header knows found in its bytes (Czech in cp1250, whose words look Western). German in
    Latin-1 or cp1252 is still read."""
    ru = "RADIOLOGY REPORT\nСмирнова перенесла исследование хорошо.\n".encode("cp1251")
    el = "RADIOLOGY REPORT\nΠαπαδόπουλος: κανένα εύρημα.\n".encode("iso8859_7")
    for data in (ru, el):
        assert _rejected(data) == "report-legacy-encoding"
    msh = "MSH|^~\\&|RIS|H|EHR|H|20190315101500||ORU^R01|C1|P|2.5|||||RU|8859/5\r"
    hl7 = (msh + "PID|1||PID77^^^MRN^MR||DOE^JOHN\rOBX|1|TX|^IMPRESSION||Dr Ян Ли informed.||||||F\r"
           ).encode("iso8859_5")
    assert not parse_report(hl7.replace(b"8859/5", b"8859/1"), "r.hl7").reject  # its two-letter words pass
    assert _rejected(hl7) == "report-legacy-encoding"
    cz = "Zprava: Dvořáková snesla vyšetření dobře.\n".encode("cp1250")
    doc = parse_report(cz, "r.txt")
    assert not doc.reject  # its words alone look Western
    with pytest.raises(ReportRejected) as exc:
        scrub_report(doc, KnownIdentifiers(person_names=["DVOŘÁKOVÁ^JANA"]), None)
    assert exc.value.reason == "report-legacy-encoding"
    de = "Befund: Frau Müller-Größe kam \u201cpünktlich\u201d.\n".encode("cp1252")
    out = scrub_report(parse_report(de, "r.txt"), KnownIdentifiers(person_names=["MÜLLER-GRÖSSE^ANNA"]), None)
    assert b"Befund" in out and "Müller".encode() not in out


def test_hl7_message_profile_identifier_loses_a_known_institution():
    """Audit 2, reports #15: MSH-21 (Message Profile Identifier) was kept verbatim; its components
    are now checked like a coded field's, and a plain profile id stays."""
    msh = _MSH + "|" * 9 + "RADRPT^Larchmont Abbey Hospital^2.16.840.1.113883.9.1^ISO"  # MSH-21
    out = scrub_report(parse_report(_hl7([msh, r"PID|1||P1^^^MRN^MR||DOE^JANE",
                                          r"OBX|1|TX|^IMPRESSION||Normal.||||||F"]), "x.hl7"),
                       KnownIdentifiers(institutions=["Larchmont Abbey Hospital"]), None)
    msh_out = _segments(out)["MSH"][0]
    assert "Larchmont" not in out.decode() and msh_out[20].startswith("RADRPT^")


def test_an_hl7_batch_of_several_messages_is_quarantined():
    """Audit 2, reports #17: a file holding two patients' messages was paired with the first
    patient's study and exported whole under that patient's pseudonym."""
    two = _hl7(["FHS|^~\\&", "BHS|^~\\&", _MSH, r"PID|1||A1^^^MRN^MR||PLATTERBY^ANN",
                r"OBX|1|TX|^IMPRESSION||Normal.||||||F", _MSH, r"PID|1||B2^^^MRN^MR||YARROWGATE^BEN",
                r"OBX|1|TX|^IMPRESSION||Spiculated mass.||||||F", "BTS|2", "FTS|1"])
    assert _rejected(two, "batch.hl7") == "report-hl7-batch"
    one = _hl7(["FHS|^~\\&", "BHS|^~\\&", _MSH, r"PID|1||A1^^^MRN^MR||PLATTERBY^ANN",
                r"OBX|1|TX|^IMPRESSION||Normal.||||||F", "BTS|1", "FTS|1"])
    assert not parse_report(one, "one.hl7").reject


def test_a_code_holding_a_known_institutions_word_is_not_kept():
    """Audit 2, reports #15 (rerun): MSH-21's code "RAVELSTON_ORU" holds the known institution's
    distinctive word; a plain code stays."""
    msh = _MSH + "|" * 9 + "RAVELSTON_ORU^Saint Ravelston Infirmary^2.16.840.1.113883.3.7777^ISO"
    out = scrub_report(parse_report(_hl7([msh, r"PID|1||P1^^^MRN^MR||DOE^JANE",
                                          r"OBX|1|TX|^IMPRESSION||Normal.||||||F"]), "x.hl7"),
                       KnownIdentifiers(institutions=["Saint Ravelston Infirmary"]), None)
    assert "avelston" not in out.decode().lower()
    assert _segments(out)["MSH"][0][20].endswith("^2.16.840.1.113883.3.7777^ISO")
