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
