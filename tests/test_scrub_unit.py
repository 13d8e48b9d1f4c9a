"""Scrubber and discovery details on real files: character sets, SR, dates, UIDs, junk input."""

from __future__ import annotations

import copy
import io
import os

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file

from medanon.discover import inspect_entry, needs_burned_in_guard, policy_reason, sniff
from medanon.keys import Pseudonymizer, shift_date
from medanon.pipeline import deidentify_bytes
from medanon.profile import PROFILES, Profile
from medanon.scrub import Scrubber
from medanon.storage import LocalSource, SourceEntry

KEY = b"unit-key"


def _roundtrip(ds, profile=PROFILES["research"], key=KEY):
    scrubber = Scrubber(profile, Pseudonymizer(key, profile.uid_root))
    data, ctx = deidentify_bytes(ds, scrubber)
    return pydicom.dcmread(io.BytesIO(data)), data, ctx


@pytest.mark.parametrize("path", [p for p in get_charset_files() if p.endswith(".dcm")],
                         ids=lambda p: os.path.basename(p))
def test_character_sets_never_crash_or_leak(path):
    ds = pydicom.dcmread(path)
    names = [str(el.value) for el in ds.iterall() if el.VR == "PN" and el.value]
    raw_names = []
    for el in pydicom.dcmread(path).iterall():
        if el.VR == "PN" and el.value:
            raw_names.append(el.value)
    out, data, _ = _roundtrip(ds)
    assert out.PatientIdentityRemoved == "YES"
    for el in out.iterall():
        if el.VR == "PN" and el.value:
            assert str(el.value) not in names or str(el.value) in ("ANONYMOUS",)
    # none of the original name components, in any encoding, stays in the bytes
    for name in names:
        for part in name.replace("=", "^").split("^"):
            part = part.strip()
            if len(part) >= 3:
                for enc in ("utf-8", "latin-1", "iso2022_jp", "euc_kr", "iso8859_5", "iso8859_7"):
                    try:
                        assert part.encode(enc) not in data, (part, enc)
                    except UnicodeEncodeError:
                        pass


def test_same_patient_same_shift_and_report_date_arithmetic():
    pseudo = Pseudonymizer(KEY)
    a = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    b.PatientID = a.PatientID
    b.StudyInstanceUID = "1.2.3.4.5.6"
    a.StudyDate, b.StudyDate = "20200229", "20210315"
    out_a, _, ctx_a = _roundtrip(copy.deepcopy(a))
    out_b, _, ctx_b = _roundtrip(copy.deepcopy(b))
    assert ctx_a.date_shift == ctx_b.date_shift == pseudo.date_shift_days(str(a.PatientID))
    assert out_a.StudyDate == shift_date("20200229", ctx_a.date_shift)
    assert out_b.StudyDate == shift_date("20210315", ctx_a.date_shift)
    assert out_a.PatientID == out_b.PatientID and out_a.StudyInstanceUID != out_b.StudyInstanceUID
    # basic profile: dates are not kept shifted
    out_basic, _, _ = _roundtrip(copy.deepcopy(a), PROFILES["basic"])
    assert out_basic.get("StudyDate", "") in ("", None)
    assert out_basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_age_over_89_is_aggregated_and_uid_root_is_configurable():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientAge = "097Y"
    out, _, _ = _roundtrip(ds, Profile(name="x", retain_patient_characteristics=True, uid_root="1.2.826.0.1.99"))
    assert out.PatientAge == "090Y"
    assert str(out.SOPInstanceUID).startswith("1.2.826.0.1.99.") and len(str(out.SOPInstanceUID)) <= 64


def test_structured_report_clean_structured_content():
    ds = pydicom.dcmread(get_testdata_file("reportsi.dcm"))
    names = [str(el.value) for el in ds.iterall() if el.VR == "PN" and el.value and el.keyword != "PersonName"]
    texts = [item for item in ds.iterall() if item.keyword == "TextValue"]
    assert names and texts
    texts[0].value = "Discussed with Dr. Hieronymus Quackenbush at 555-867-5309 on 03/14/2019."
    prof = Profile(name="sr", clean_structured_content=True)
    out, data, _ = _roundtrip(ds, prof)
    assert "ContentSequence" in out
    for value in names:
        for part in value.split("^"):
            if len(part) > 3:
                assert part.encode() not in data
    for planted in (b"Quackenbush", b"Hieronymus", b"867-5309", b"03/14/2019"):
        assert planted not in data
    assert b"Discussed with" in data  # the text itself stays readable
    # without the option, the SR is held back by policy rather than emptied
    from medanon.discover import Inspected

    item = Inspected(relpath="", size=0, token="", kind="dicom", sop_class=str(ds.SOPClassUID))
    assert policy_reason(item, False, False) == "structured-report"
    assert policy_reason(item, True, False) == ""


def test_sniff_and_inspect_junk(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()
    (src / "ok").write_bytes(ct)
    (src / "cut").write_bytes(ct[: len(ct) - 3000])
    (src / "text.dcm").write_bytes(b"hello, I am not DICOM at all" * 10)
    (src / "rand").write_bytes(os.urandom(4000))
    (src / "empty").write_bytes(b"")
    raw = open(get_testdata_file("ExplVR_LitEndNoMeta.dcm"), "rb").read()
    (src / "raw").write_bytes(raw)
    dicomdir = get_testdata_file("DICOMDIR")
    (src / "DICOMDIR").write_bytes(open(dicomdir, "rb").read())
    source = LocalSource(src)
    got = {e.relpath: inspect_entry(source, e) for e in source.iter_entries()}
    assert got["ok"].kind == "dicom" and got["ok"].modality == "CT"
    assert got["cut"].reason == "truncated"
    assert got["text.dcm"].reason == "not-dicom" and got["rand"].reason == "not-dicom"
    assert got["empty"].reason == "empty-file"
    assert got["raw"].kind == "dicom" and got["raw"].sop_uid
    assert got["DICOMDIR"].reason == "dicomdir"
    assert sniff(ct[:132]) == "part10"
    assert sniff(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "raw"
    assert inspect_entry(source, SourceEntry("gone", 10, "0")).reason == "read-error"



def test_a_file_changed_after_listing_is_not_read(tmp_path):
    """Every read of a local file after the listing (inspection, scrub, report pairing and export)
    takes only the version listed: a file modified since is quarantined as "changed" (the next
    run lists its new mtime), never classified, scrubbed or paired as another version."""
    from medanon.pairing import _read
    from medanon.pipeline import WorkerConfig, scrub_batch
    from medanon.reportstage import report_batch
    from medanon.storage import EntryChanged

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    (src / "r.txt").write_bytes(b"FINDINGS: no acute abnormality.\nIMPRESSION: normal study.\n")
    source = LocalSource(src)
    listed = {e.relpath: e for e in source.iter_entries()}
    assert inspect_entry(source, listed["a.dcm"]).kind == "dicom"
    for name in ("a.dcm", "r.txt"):  # modified after the listing (same bytes, a new mtime)
        st = os.stat(src / name)
        os.utime(src / name, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    relisted = {e.relpath: e for e in source.iter_entries()}

    got = inspect_entry(source, listed["a.dcm"])
    assert (got.kind, got.reason) == ("quarantine", "changed")
    assert inspect_entry(source, relisted["a.dcm"]).kind == "dicom"
    with pytest.raises(EntryChanged) as ei:
        _read(source, "r.txt", listed["r.txt"].token)
    assert "r.txt" not in str(ei.value) and str(src) not in str(ei.value)
    assert _read(source, "r.txt", relisted["r.txt"].token).startswith(b"FINDINGS")

    cfg = WorkerConfig(source=str(src), target=str(tmp_path / "out"), profile=PROFILES["research"], key=KEY,
                       sync=False)
    stale = scrub_batch(cfg, 1, [(1, "a.dcm", "p/1.dcm", listed["a.dcm"].token)])
    assert stale["quarantined"] == {1: "changed"} and stale["exported"] == 0
    assert scrub_batch(cfg, 2, [(1, "a.dcm", "p/1.dcm", relisted["a.dcm"].token)])["exported"] == 1
    size, a_now, a_then = listed["r.txt"].size, relisted["a.dcm"].token, listed["a.dcm"].token
    stale = report_batch(cfg, 3, [(2, "r.txt", "p/r.txt", "a.dcm", size, listed["r.txt"].token, a_now)])
    assert stale["quarantined"] == {2: "changed"} and stale["exported"] == 0
    # the study's instance changed: its identifiers may not be those the report was paired with
    stale = report_batch(cfg, 4, [(2, "r.txt", "p/r.txt", "a.dcm", size, relisted["r.txt"].token, a_then)])
    assert stale["quarantined"] == {2: "changed"} and stale["exported"] == 0
    fresh = report_batch(cfg, 5, [(2, "r.txt", "p/r.txt", "a.dcm", size, relisted["r.txt"].token, a_now)])
    assert fresh["exported"] == 1 and fresh["quarantined"] == {}

def test_burned_in_guard():
    from medanon.discover import Inspected

    def item(**kw):
        return Inspected(relpath="", size=0, token="", kind="dicom", **kw)

    assert needs_burned_in_guard(item(modality="US", header={"burned_in": "", "has_pixels": True}))
    assert not needs_burned_in_guard(item(modality="US", header={"burned_in": "NO", "has_pixels": True}))
    assert needs_burned_in_guard(item(modality="CT", header={"burned_in": "YES", "has_pixels": True}))
    assert not needs_burned_in_guard(item(modality="CT", header={"burned_in": "", "has_pixels": True}))
    sc = item(modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.7", header={"burned_in": "", "has_pixels": True})
    assert policy_reason(sc, False, False) == "burned-in-annotation"
    assert policy_reason(sc, False, True) == ""


def test_codes_are_the_first_characters_of_the_whole_digest_in_base32():
    """Pseudonyms must not change between versions (the same patient gets the same ID in every
    run): code() encodes only the base32 groups it needs, and keeps codes once computed, but gives
    exactly the characters of the whole digest's base32, for every length, first call or not."""
    import base64
    import hashlib
    import hmac

    key = b"codes-key"
    pseudo = Pseudonymizer(key)
    for value in ["MRN1152310", "1.2.826.0.1.3680043.8.498.1", "", "Ünïcode^名前", "x" * 300]:
        for domain in ("patient", "study", "series", "instance", "accession"):
            full = base64.b32encode(hmac.new(key, f"{domain}\x00{value}".encode("utf-8", "surrogatepass"),
                                             hashlib.sha256).digest()).decode("ascii")
            for length in range(1, 60):
                assert pseudo.code(domain, value, length) == full[:length]
                assert pseudo.code(domain, value, length) == full[:length]  # kept: same answer
    assert pseudo.patient_id("MRN1152310") == "P" + pseudo.code("patient", "MRN1152310", 11)


# ---------------------------------------------------------------------------- stored VRs, file meta,
# safe private elements, ages (PHI audit findings)

import datetime  # noqa: E402
import struct  # noqa: E402

from pydicom.dataelem import DataElement  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from medanon import fastpath  # noqa: E402
from medanon.pipeline import prepare  # noqa: E402

PHI_SERIES_UID = "1.2.826.0.1.3680043.99.77.5511"


def _implicit_elem(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _implicit_item(elems: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(elems)) + elems


def _set_vr(raw: bytes, tag: int, old: str, new: str, nth: int = 0) -> bytes:
    """Rewrite the explicit VR of an element in encoded bytes (the stored VR is what we choose)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + old.encode()
    i = -1
    for _ in range(nth + 1):
        i = raw.find(head, i + 1)
    assert i >= 0, hex(tag)
    return raw[:i + 4] + new.encode() + raw[i + 6:]


def _explicit_bytes(ds: Dataset, patches=()) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    for tag, old, new in patches:
        raw = _set_vr(raw, tag, old, new)
    return raw


def _outputs(raw: bytes, profile) -> list[bytes]:
    """The exported bytes through every path the pipeline takes: full read and write, the fast
    path, and the fast path's split path."""
    outs = []
    sc = Scrubber(profile, Pseudonymizer(KEY, profile.uid_root))
    with warnings_ignored():
        full = pydicom.dcmread(io.BytesIO(raw), force=True)
        outs.append(deidentify_bytes(full, sc)[0])
        for split in (False, True):
            sc = Scrubber(profile, Pseudonymizer(KEY, profile.uid_root))
            out = fastpath.deidentify_file(io.BytesIO(raw), len(raw), lambda ds, ctx=None: prepare(ds, sc, ctx),
                                           sc.keeps_as_read if split else None)
            outs.append(out.data)
    return outs


def warnings_ignored():
    import warnings

    cm = warnings.catch_warnings()
    cm.__enter__()
    warnings.simplefilter("ignore")

    class _Exit:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            cm.__exit__(*exc)

    return _Exit()


def _assert_absent(outs: list[bytes], needles) -> None:
    for data in outs:
        for n in needles:
            b = n.encode() if isinstance(n, str) else n
            assert b not in data and b.upper() not in data, n
        pydicom.dcmread(io.BytesIO(data))  # still a readable file


def _mr_with(*elements) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for el in elements:
        ds.add(el)
    return ds


@pytest.mark.parametrize("profile", ["research", "basic"])
def test_un_encoded_and_wrongly_typed_elements_are_not_copied(profile):
    """A standard sequence stored with VR UN (unlisted, or K in the table), nested or not, is
    read as the sequence it is and its items scrubbed, never copied raw; an unlisted PN stored
    as LO and an element with an invalid VR are removed."""
    inner = (_implicit_elem(0x0020000E, (PHI_SERIES_UID + "\x00").encode())
             + _implicit_elem(0x00100010, b"Qxzwv^Brenda") + _implicit_elem(0x00100020, b"MRN7733421")
             + _implicit_elem(0x00080080, b"St Ophelia General Hospital "))
    inner2 = _implicit_elem(0x00080104, b"Qxzwv family code") + _implicit_elem(0x00101000, b"OTHERMRN991 ")
    ri = Dataset()
    ri.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ri.ReferencedSOPInstanceUID = "1.2.3.4"
    ri.add(DataElement(0x00082218, "OB", _implicit_item(_implicit_elem(0x00100010, b"Nestedqz^Carol "))))
    ds = _mr_with(DataElement(0x00081115, "OB", _implicit_item(inner)),  # Referenced Series Sequence
                  DataElement(0x00102161, "OB", _implicit_item(inner2)),  # Ethnic Group Code Sequence (K)
                  DataElement(0x00140104, "LO", "Reviewerqz^Agnes"),  # an unlisted PN, stored as LO
                  DataElement(0x00082228, "LO", "ZZVR Wxqpl^Dora"),  # (invalid VR ZZ below)
                  DataElement(0x00081140, "SQ", Sequence([ri])),
                  # Processing Function (LO, unlisted) written as UN, holding an item's bytes
                  DataElement(0x00185020, "OB", _implicit_item(_implicit_elem(0x00100010, b"Hiddenqz^Olga "))))
    ds.PatientName = "Qxzwv^Brenda"  # known: the Code Meaning that names it is cleaned
    raw = _explicit_bytes(ds, [(0x00081115, "OB", "UN"), (0x00102161, "OB", "UN"), (0x00082218, "OB", "UN"),
                               (0x00082228, "LO", "ZZ"), (0x00185020, "OB", "UN")])
    outs = _outputs(raw, PROFILES[profile])
    _assert_absent(outs, ["Qxzwv", "MRN7733421", "Ophelia", "OTHERMRN991", "Reviewerqz", "Nestedqz", "Wxqpl",
                          "Hiddenqz", PHI_SERIES_UID])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        assert out.Rows == ds.Rows  # ordinary elements of the same file are still kept
        # the UN sequences are kept as sequences (written as SQ), their identifiers replaced
        series = out.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID.startswith("2.25.") and series.PatientName != "Qxzwv^Brenda"
        assert len(out.ReferencedImageSequence[0].AnatomicRegionSequence) == 1
        if profile == "research":  # Ethnic Group Code Sequence: K there, X in the basic profile
            assert "[NAME]" in out.EthnicGroupCodeSequence[0].CodeMeaning
        assert not [e.tag for e in out.iterall() if e.VR == "UN"]
        assert 0x00140104 not in out and 0x00082228 not in out  # wrong VR, invalid VR
        assert 0x00185020 not in out  # its bytes are not text: not read as the LO it should be


def test_a_clean_descriptor_stored_with_a_non_text_vr_is_not_kept():
    ds = _mr_with()
    ds.StudyDescription = "BRENDA QXZWV MRN7733421"
    ds.SeriesDescription = "http://x/Qxzwv/MRN7733421"
    raw = _explicit_bytes(ds, [(0x00081030, "LO", "CS"), (0x0008103E, "LO", "UR")])
    outs = _outputs(raw, PROFILES["research"])
    _assert_absent(outs, ["QXZWV", "MRN7733421"])


def test_file_meta_is_an_allow_list():
    ds = _mr_with()
    meta = ds.file_meta
    meta.add_new(0x00020026, "UR", "http://pacs.st-ophelia.example/?mrn=MRN7733421")  # Source Presentation Address
    meta.add_new(0x00020027, "UR", "http://sender.example/Qxzwv")  # Sending Presentation Address
    meta.add_new(0x00020033, "UI", PHI_SERIES_UID)  # RTV Communication SOP Instance UID
    meta.add_new(0x00020035, "OB", b"RTVQxzwv")  # RTV Source Identifier
    meta.add_new(0x00020099, "LO", "Qxzwv^Brenda")  # unknown
    meta.add_new(0x00020016, "AE", "QXZWVAE")
    meta.FileMetaInformationVersion = b"\x00\x01MRN7733421"
    raw = _explicit_bytes(ds)
    assert b"MRN7733421" in raw and PHI_SERIES_UID.encode() in raw
    outs = _outputs(raw, PROFILES["research"])
    _assert_absent(outs, ["Qxzwv", "MRN7733421", PHI_SERIES_UID, "st-ophelia"])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        assert set(int(t) for t in out.file_meta.keys()) <= {0x00020000, 0x00020001, 0x00020002, 0x00020003,
                                                               0x00020010, 0x00020012, 0x00020013}
        assert out.file_meta.FileMetaInformationVersion == b"\x00\x01"
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_safe_private_elements_must_be_what_the_table_says():
    """Retain Safe Private: the table's VR, the exact creator, cleaned text, remapped UIDs and
    scrubbed sequence items."""
    ds = _mr_with()
    b = ds.private_block(0x00E1, "ELSCINT1", create=True)
    b.add_new(0x21, "LO", "Qxzwv^Brenda")  # DLP: DS in the table
    b.add_new(0x50, "OB", b"MRN7733421")  # Acquisition Duration: DS, stored as UN below
    bad = ds.private_block(0x7053, "philips pet private group ", create=True)  # not the table's creator
    bad.add_new(0x00, "DS", "12")
    bad.add_new(0x09, "DS", "77331")
    nq = ds.private_block(0x0099, "NQHeader", create=True)
    nq.add_new(0x02, "UI", PHI_SERIES_UID)  # Analyzed Series UID
    nq.add_new(0x05, "LT", "Analysis done for Brenda Qxzwv MRN7733421")  # Return Message
    item = Dataset()
    item.PatientName = "Qxzwv^Brenda"
    item.OtherPatientIDs = "MRN7733421"
    ib = item.private_block(0x2001, "Philips Imaging DD 001", create=True)
    ib.add_new(0x01, "LO", "DOB 19300215 Qxzwv")  # FL in the table
    ph = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    ph.add_new(0x5F, "SQ", Sequence([item]))  # Stack Sequence: safe
    ph.add_new(0x03, "FL", 1000.0)  # Diffusion B-factor: safe, kept
    ds.PatientName = "Qxzwv^Brenda"
    ds.PatientID = "MRN7733421"
    el = ds.private_block(0x01F1, "ELSCINT1", create=True)
    el.add_new(0x07, "LO", "VELQXZWV")  # Table Velocity: DS, stored as DS below but not a number
    raw = _explicit_bytes(ds, [(0x00E11050, "OB", "UN"), (0x01F11007, "LO", "DS")])
    outs = _outputs(raw, PROFILES["research"])
    _assert_absent(outs, ["Qxzwv", "MRN7733421", "19300215", PHI_SERIES_UID, "77331", "VELQXZWV"])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        assert out[0x20011003].value == 1000.0
        assert str(out[0x20010010].value) == "Philips Imaging DD 001"
        assert 0x00991002 in out  # remapped, not removed
        assert 0x70530010 not in out and 0x70531009 not in out


def test_ages_over_89_are_capped_in_any_form():
    from medanon.scrub import _cap_age

    assert _cap_age("097Y") == "090Y"
    assert _cap_age("95Y") == "090Y"
    assert _cap_age("045Y") == "045Y"
    assert _cap_age("") == ""
    assert _cap_age("old") == ""
    assert _cap_age(pydicom.multival.MultiValue(str, ["099Y", "098Y"])) == "090Y\\090Y"
    assert _cap_age("1200M") == "090Y"
    for value in ("95Y", "099Y\\098Y"):
        ds = _mr_with()
        ds.PatientAge = value
        raw = _explicit_bytes(ds)
        for data in _outputs(raw, PROFILES["research"]):
            out = pydicom.dcmread(io.BytesIO(data))
            assert all(v == "090Y" for v in ([out.PatientAge] if isinstance(out.PatientAge, str)
                                             else list(out.PatientAge))), value


@pytest.mark.parametrize("profile", ["research", "basic", "full_dates"])
def test_unlisted_urls_dates_and_alternative_calendar_dates(profile):
    """Standard attributes Table E.1-1 does not list: a URL is removed; a date follows the
    profile's date handling (shifted, removed, or kept with full dates); the alternative
    calendar dates and Filename in Container are removed."""
    prof = PROFILES.get(profile) or Profile(name="full", retain_longitudinal_full_dates=True)
    ds = _mr_with()
    ds.StudyDate = "20200315"
    ds.add_new(0x00081190, "UR", f"http://pacs.example/studies/{PHI_SERIES_UID}?mrn=MRN7733421")  # Retrieve URL
    ds.add_new(0x00287FE0, "UR", "http://pixels.example/Qxzwv")  # Pixel Data Provider URL
    ds.add_new(0x0008040B, "CS", "QXZWV_MRN7733421")  # Filename in Container
    ds.add_new(0x00100033, "LO", "ALTCALQX")  # Patient's Birth Date in Alternative Calendar
    ds.add_new(0x00100034, "LO", "ALTDEATHQX")
    ds.add_new(0x00100035, "CS", "HIJRIQX")
    ds.add_new(0x0008041F, "DT", "20200317101010")  # Study Update DateTime
    ds.add_new(0x00140102, "DA", "20200318")  # Secondary Review Date
    raw = _explicit_bytes(ds)
    outs = _outputs(raw, prof)
    _assert_absent(outs, ["MRN7733421", PHI_SERIES_UID, "Qxzwv", "ALTCALQX", "ALTDEATHQX", "HIJRIQX"])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        if profile == "full_dates":
            assert out[0x0008041F].value == "20200317101010" and out[0x00140102].value == "20200318"
        elif profile == "research":  # shifted by the same days as the study date
            shift = (datetime.date(2020, 3, 15) - datetime.datetime.strptime(out.StudyDate, "%Y%m%d").date()).days
            assert shift != 0
            assert out[0x00140102].value == (datetime.date(2020, 3, 18) - datetime.timedelta(shift)).strftime("%Y%m%d")
            assert str(out[0x0008041F].value).startswith(
                (datetime.date(2020, 3, 17) - datetime.timedelta(shift)).strftime("%Y%m%d"))
        else:
            assert 0x0008041F not in out and 0x00140102 not in out


def test_identifiers_named_only_in_sequences_and_staff_fields_are_cleaned_from_text():
    """Free text is cleaned of the identifiers the header names anywhere: IDs and names inside
    Other Patient IDs, Referenced Patient and staff identification sequences, the consulting
    physician, the intended recipients, the performed procedure step ID, addresses and phones."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    other = Dataset()
    other.PatientID = "QXZALPHA9"
    ds.OtherPatientIDsSequence = Sequence([other])
    ref = Dataset()
    ref.add_new(0x00100010, "PN", "Zqvvnor^Ottilie")
    ds.ReferencedPatientSequence = Sequence([ref])
    staff, code = Dataset(), Dataset()
    code.add_new(0x00080080, "LO", "Brackenfold Infirmary")
    staff.add_new(0x00401101, "SQ", Sequence([code]))  # Person Identification Code Sequence
    staff.add_new(0x00401104, "LT", "ignored")
    ds.PerformingPhysicianIdentificationSequence = Sequence([staff])
    ds.ConsultingPhysicianName = "Harrowgate^Ilsabet"
    ds.NamesOfIntendedRecipientsOfResults = "Pemberworth^Ansgar"
    ds.PerformedProcedureStepID = "PPSQWERTY7"
    ds.InstitutionAddress = "12 Quillfeather Lane, Dunmorrow"
    ds.ReferringPhysicianTelephoneNumbers = "555-0143-77"
    ds.ImageComments = ("Seen with Ottilie Zqvvnor (alias QXZALPHA9), consulted Dr Ilsabet Harrowgate, copy to "
                        "Ansgar Pemberworth, step PPSQWERTY7, 12 Quillfeather Lane, call 555-0143-77")
    out, data, _ = _roundtrip(ds)
    comments = str(out.ImageComments)
    for needle in ("Zqvvnor", "Ottilie", "QXZALPHA9", "Harrowgate", "Ilsabet", "Pemberworth", "Ansgar",
                   "PPSQWERTY7", "Quillfeather", "555-0143"):
        assert needle not in comments, needle
    assert "consulted" in comments and "copy to" in comments  # the prose stays


@pytest.mark.parametrize("profile", ["research", "basic"])
def test_free_text_the_table_does_not_list_is_cleaned_and_codes_are_kept(profile):
    """Comments on the Scheduled Procedure Step (LT), a Text Value (UT) and a Code Meaning (LO)
    are not in Table E.1-1: long text is cleaned, a short string is cleaned when it names a known
    identifier. Codes and version numbers that name none are kept as they are."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "Qxzwv^Brenda", "MRN7733421"
    step, specimen, code, plain = Dataset(), Dataset(), Dataset(), Dataset()
    step.add_new(0x00400400, "LT", "Patient Brenda Qxzwv (MRN7733421) is claustrophobic")
    ds.ScheduledProcedureStepSequence = Sequence([step])
    specimen.add_new(0x0040A160, "UT", "Biopsy of QXZWV, BRENDA taken at 10:00")
    ds.add_new(0x00400560, "SQ", Sequence([specimen]))  # Specimen Description Sequence
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D0050", "SRT", "Qxzwv tissue"
    plain.CodeValue, plain.CodingSchemeDesignator, plain.CodeMeaning = "113040", "DCM", "Lossy Compression"
    ds.AnatomicRegionSequence = Sequence([code, plain])
    ds.SoftwareVersions = ["2.6.3", "2.6.3.6"]
    out, data, _ = _roundtrip(ds, PROFILES[profile])
    for needle in (b"Qxzwv", b"QXZWV", b"Brenda", b"BRENDA", b"7733421"):
        assert needle not in data, needle
    assert "claustrophobic" in str(out.ScheduledProcedureStepSequence[0][0x00400400].value)
    kept = out.AnatomicRegionSequence[1]
    assert (kept.CodeValue, kept.CodeMeaning) == ("113040", "Lossy Compression")
    assert out.AnatomicRegionSequence[0].CodeValue == "T-D0050"
    assert list(out.SoftwareVersions) == ["2.6.3", "2.6.3.6"]


@pytest.mark.parametrize("name", ["explicit_VR-UN.dcm", "rtdose_rle_1frame.dcm"])
def test_public_elements_written_as_un_are_kept_with_their_dictionary_vr(name):
    """Older toolkits write attributes they do not know with VR UN. Those the profile keeps
    (SOP Class UID, Pixel Spacing, rescale and dose scaling, a referenced plan) are kept with
    their dictionary VR, scrubbed as if written with it, so the instance stays usable."""
    path = get_testdata_file(name)
    raw = open(path, "rb").read()
    src = pydicom.dcmread(path)
    un = [int(t) for t, e in src._dict.items() if getattr(e, "VR", None) == "UN" and not (int(t) >> 16) & 1]
    assert 0x00080016 in un and 0x00280030 in un  # the source really has them as UN
    keep = [t for t in (0x00080016, 0x00280030, 0x00281052, 0x00281053, 0x3004000E, 0x3004000C, 0x00280009)
            if t in src]
    for data in _outputs(raw, PROFILES["research"]):
        out = pydicom.dcmread(io.BytesIO(data))
        for tag in keep:
            assert tag in out and out[tag].value == src[tag].value, hex(tag)
            assert out[tag].VR != "UN"
        assert out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID
        assert out.PixelData == src.PixelData
        if "ReferencedRTPlanSequence" in src:  # a UN sequence: read as one, its UIDs replaced
            ref = out.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
            assert ref.startswith("2.25.") and ref != src.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID


def test_a_code_that_equals_a_short_or_single_name_word_is_kept():
    """A known name word counts in a short unlisted string only where it names someone: not
    glued into a code (Processing Function OB_GENERAL, patient OB^^^^), and not one word alone
    in the coded part of a code item (designator TEST, patient Test^S R). Standing alone, or
    in a Code Meaning, it is still cleaned; a known ID in a code is still replaced."""
    ob = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    assert str(ob.PatientName) == "OB^^^^" and ob.ProcessingFunction == "OB_GENERAL"
    for data in _outputs(open(get_testdata_file("OBXXXX1A.dcm"), "rb").read(), PROFILES["research"]):
        assert pydicom.dcmread(io.BytesIO(data)).ProcessingFunction == "OB_GENERAL"
    ob.ProcessingFunction = "OB GENERAL"
    assert "OB " not in _roundtrip(ob)[0].ProcessingFunction

    path = get_testdata_file("test-SR.dcm")
    sr = pydicom.dcmread(path)
    assert str(sr.PatientName) == "Test^S R" and sr.ConceptNameCodeSequence[0].CodingSchemeDesignator == "TEST"
    for data in _outputs(open(path, "rb").read(), PROFILES["research"]):
        code = pydicom.dcmread(io.BytesIO(data)).ConceptNameCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("1111", "TEST", "Diagnosis")
    sr.PatientID, sr.PatientName = "MRN7733421", "Test^Sarah"
    sr.ConceptNameCodeSequence[0].CodeMeaning = "Test review"
    sr.ConceptNameCodeSequence[0].CodeValue = "MRN7733421-1"
    sr.ConceptNameCodeSequence[0].CodingSchemeVersion = "SARAH TEST"
    out = _roundtrip(sr)[0].ConceptNameCodeSequence[0]
    assert "Test" not in out.CodeMeaning and "7733421" not in out.CodeValue
    assert out.CodingSchemeVersion == "ANONYMIZED" and out.CodingSchemeDesignator == "TEST"


@pytest.mark.parametrize("profile", ["research", "basic"])
def test_attributes_of_the_2026c_table_that_pydicom_does_not_know(profile):
    """Sex Parameters for Clinical Use Category Sequence (0010,0043) and its kin are in Table
    E.1-1 (2026c) but not in pydicom 3's dictionary. In an implicit VR file their items are
    walked like any sequence's (the name, MRN and original UID inside replaced); in an explicit
    VR file one written with another VR (LT for a sequence) is removed."""
    from pydicom.uid import ImplicitVRLittleEndian

    ds = _mr_with()
    ds.PatientName, ds.PatientID = "Qxzwv^Brenda", "MRN7733421"
    ref, item = Dataset(), Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ref.ReferencedSOPInstanceUID = PHI_SERIES_UID
    item.add_new(0x00100010, "PN", "Qxzwv^Brenda")
    item.add_new(0x00100042, "UT", "per Brenda Qxzwv MRN7733421")  # Sex Parameters … Comment
    item.add_new(0x00081140, "SQ", Sequence([ref]))
    ds.add_new(0x00100043, "SQ", Sequence([item]))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    implicit = buf.getvalue()
    assert b"Qxzwv" in implicit and PHI_SERIES_UID.encode() in implicit
    outs = _outputs(implicit, PROFILES[profile])
    _assert_absent(outs, ["Qxzwv", "Brenda", "MRN7733421", PHI_SERIES_UID])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        if profile == "research":  # K under Retain Patient Characteristics: kept, walked
            seq = out[0x00100043].value
            assert seq[0][0x00081140].value[0].ReferencedSOPInstanceUID.startswith("2.25.")
        else:
            assert 0x00100043 not in out

    wrong = _mr_with(DataElement(0x00100046, "LT", "Brenda Qxzwv MRN7733421"))  # really a sequence
    wrong.PatientName = "Someone^Else"
    outs = _outputs(_explicit_bytes(wrong), PROFILES[profile])
    _assert_absent(outs, ["Qxzwv", "MRN7733421"])


def test_safe_private_slots_without_a_vr_and_opaque_ones():
    """Audit 2, DICOM #2 (research). Table E.3.10-1 gives some SIEMENS Ultrasound SC2000 slots no
    VR (Stage Timer Time, Plane Origin Vector…): a date there is shifted like any other, a URL or
    an AE title is removed, a number is kept. An OB slot (Common Acoustic Meta Information) is
    kept unless its bytes spell out a known name, ID or date."""
    ds = _mr_with()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Qxzwv^Brenda", "MRN7733421", "19300215"
    block = ds.private_block(0x0119, "SIEMENS Ultrasound SC2000", create=True)
    block.add_new(0x11, "DA", "19411107")  # a real exam date
    block.add_new(0x12, "UR", "http://pacs.example/viewer?mrn=MRN7733421")
    block.add_new(0x01, "OB", b"Brenda Qxzwv DOB 19300215 ")
    block.add_new(0x13, "IS", "25")
    other = ds.private_block(0x0129, "SIEMENS Ultrasound SC2000", create=True)
    other.add_new(0x03, "DT", "19411107093000")
    other.add_new(0x04, "AE", "OPHELIA_CT_ED")
    other.add_new(0x05, "DS", "1.5")
    outs = _outputs(_explicit_bytes(ds), PROFILES["research"])
    _assert_absent(outs, ["19411107", "MRN7733421", "Qxzwv", "OPHELIA", "19300215"])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        kept = out.private_block(0x0119, "SIEMENS Ultrasound SC2000")
        assert kept[0x13].value == 25 and len(kept[0x11].value) == 8  # shifted, not removed
        assert out.private_block(0x0129, "SIEMENS Ultrasound SC2000")[0x05].value == 1.5
    ds2 = _mr_with()
    b2 = ds2.private_block(0x0119, "SIEMENS Ultrasound SC2000", create=True)
    b2.add_new(0x01, "OB", b"\x01\x02acoustic\x00")  # nothing known in it: kept
    for data in _outputs(_explicit_bytes(ds2), PROFILES["research"]):
        assert pydicom.dcmread(io.BytesIO(data)).private_block(0x0119, "SIEMENS Ultrasound SC2000")[0x01].value


@pytest.mark.parametrize("profile", ["research", "basic"])
def test_short_unlisted_strings_lose_the_known_birth_date_phone_address_and_institution(profile):
    """Audit 2, DICOM #3: Content Description, LUT Explanation, Window Center & Width Explanation
    and Acquisition Protocol Name are not in Table E.1-1; one holding the patient's birth date
    (in any spelling), phone, or a word of the address or institution is cleaned. Ordinary values
    are kept."""
    ds = _mr_with()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Qxzwv^Brenda", "MRN7733421", "19300215"
    ds.PatientTelephoneNumbers = "555-201-7788"
    ds.PatientAddress = "12 Larkspur Lane^^Hobbsville^OH^44123"
    ds.InstitutionName = "St Ophelia General Hospital"
    ds.add_new(0x00700081, "LO", "born 15.02.1930")  # Content Description
    ds.add_new(0x00283003, "LO", "call 555 201 7788")  # LUT Explanation
    ds.add_new(0x00281055, "LO", ["Hobbsville protocol", "W 400 L 40"])  # Window C&W Explanation
    ds.add_new(0x00189423, "LO", "Ophelia head routine")  # Acquisition Protocol Name
    outs = _outputs(_explicit_bytes(ds), PROFILES[profile])
    _assert_absent(outs, ["1930", "201 7788", "Hobbsville", "Ophelia"])
    for data in outs:
        assert list(pydicom.dcmread(io.BytesIO(data))[0x00281055].value)[1] == "W 400 L 40"
    # the device's maker is not the institution's name, even where a vendor's test site says so
    path = get_testdata_file("OBXXXX1A.dcm")
    assert pydicom.dcmread(path).InstitutionName == "Philips Healthcare"
    for data in _outputs(open(path, "rb").read(), PROFILES[profile]):
        assert pydicom.dcmread(io.BytesIO(data)).Manufacturer == "Philips Medical Systems"


def test_the_issuer_of_the_patient_id_and_the_current_location_are_known_institutions():
    """Audit 2, reports #12: a hospital named in the header only as the Issuer of Patient ID, or a
    ward only as the Current Patient Location, is cleaned from text like the institution."""
    from medanon.scrub import known_identifiers
    from medanon.textscrub import clean_text

    ds = _mr_with()
    ds.IssuerOfPatientID = "Wexbury Lakeside"
    ds.add_new(0x00380300, "LO", "Larchmont Ward 5B")  # Current Patient Location
    k = known_identifiers(ds)
    out = clean_text("Outside films from Wexbury Lakeside. Seen on Larchmont Ward 5B.", k, None)
    assert "Wexbury" not in out and "Larchmont" not in out, out


@pytest.mark.parametrize("profile", ["research", "basic"])
def test_short_unlisted_strings_and_codes_lose_original_uids_and_the_exam_date(profile):
    """Audit 2, DICOM #4: the original Study UID in a Code Meaning, the original Series UID in a
    Long Code Value, the real exam date in an Acquisition Protocol Name: none goes out as it was
    (the date is shifted or replaced). A registered UID in a Code Meaning stays."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _mr_with()
    ds.StudyDate = "20190315"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.99.77.3311"
    ds.SeriesInstanceUID = PHI_SERIES_UID
    a, b, c = Dataset(), Dataset(), Dataset()
    a.CodeValue, a.CodingSchemeDesignator, a.CodeMeaning = "X1", "99LOCAL", "study 1.2.826.0.1.3680043.99.77.3311"
    b.add_new(0x00080119, "UC", PHI_SERIES_UID)  # Long Code Value
    b.CodingSchemeDesignator, b.CodeMeaning = "99LOCAL", "series"
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = "113040", "DCM", "per 1.2.840.10008.1.2.1"
    ds.AnatomicRegionSequence = Sequence([a, b, c])
    ds.add_new(0x00189423, "LO", "HEAD 20190315 routine")  # Acquisition Protocol Name
    outs = _outputs(_explicit_bytes(ds), PROFILES[profile])
    _assert_absent(outs, ["1.2.826.0.1.3680043.99.77.3311", PHI_SERIES_UID, "20190315"])
    for data in outs:
        out = pydicom.dcmread(io.BytesIO(data))
        assert out.AnatomicRegionSequence[2].CodeMeaning == "per 1.2.840.10008.1.2.1"
        assert out[0x00189423].value.startswith("HEAD ")


def test_implicit_vr_text_kept_by_the_table_must_be_text():
    """Audit 2, DICOM #1 (rerun): in an implicit VR file a K attribute of a string VR (here Sex
    Parameters for Clinical Use Category Reference, a UR) holding a sequence's bytes, with a name
    and an original UID inside, is removed on every path, at the top level and in an item; real
    text there is kept."""
    from pydicom.uid import ImplicitVRLittleEndian

    marker = b"https://placeholder.example/x "

    def implicit(value: bytes, nested: bool) -> bytes:
        ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))  # the fast path splits it
        ds.PatientName = "Someone^Else"
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        if nested:
            item = Dataset()
            item.add_new(0x00100047, "UR", marker.decode().strip())
            ds.add_new(0x00100043, "SQ", Sequence([item]))
        else:
            ds.add_new(0x00100047, "UR", marker.decode().strip())
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        old = _implicit_elem(0x00100047, marker)
        assert raw.count(old) == 1
        return raw.replace(old, _implicit_elem(0x00100047, value))

    hidden = _implicit_item(_implicit_elem(0x00081155, (PHI_SERIES_UID + "\x00").encode())
                            + _implicit_elem(0x00100010, b"Hiddenqz^Olga "))
    for nested in (False, True):
        raw = implicit(hidden, nested)
        assert PHI_SERIES_UID.encode() in raw
        _assert_absent(_outputs(raw, PROFILES["research"]), [PHI_SERIES_UID, "Hiddenqz"])
        for data in _outputs(implicit(b"https://example.org/policy ", nested), PROFILES["research"]):
            assert b"https://example.org/policy" in data
