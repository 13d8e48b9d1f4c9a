"""Table E.1-1 conformance: an instance carrying every single-tag attribute of the table
with a distinctive value; after scrubbing, each attribute's result matches its action,
for the Basic Profile and for each Option on its own."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from medanon.keys import Pseudonymizer
from medanon.pipeline import deidentify_bytes
from medanon.profile import OPTION_COLUMNS, PROFILES, ActionTable, Profile, parse_tag, table_rows
from medanon.scrub import ACCESSION, PATIENT_AGE, PATIENT_ID, PATIENT_NAME, STUDY_ID, Scrubber

KEY = b"conformance-key"
SINGLE_TAG_ROWS = [r for r in table_rows() if parse_tag(r.tag) is not None]


def test_table_is_complete():
    rows = table_rows()
    assert len(rows) == 656
    assert len(SINGLE_TAG_ROWS) == 652
    codes = {r.basic for r in rows} | {v for r in rows for v in r.options.values()}
    assert codes <= {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "LO"
    return vr.split(" or ")[0]


def _value(vr: str, i: int):
    return {
        "DA": "19870605", "TM": "101112", "DT": "19870605101112", "PN": f"Zzyzx^Quentin{i}",
        "UI": f"1.2.999.7.{i}", "AS": "045Y", "CS": f"CSV{i}", "AE": f"AE{i}", "IS": str(1000 + i),
        "DS": f"{1000 + i}.5", "UR": f"http://phi.example/{i}", "AT": 0x00100010,
        "US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 7.0, "FD": 7.0, "UV": 7, "SV": 7,
        "OB": b"PHIBYTES", "OW": b"PHIBYTES", "OD": b"PHIBYTES", "OF": b"PHIBYTES", "OL": b"PHIBYTES",
        "OV": b"PHIBYTES", "UN": b"PHIBYTES",
    }.get(vr, f"Text {i} about Zzyzx Quentin id 99887766"[:16] if vr in ("SH", "CS", "AE") else
           f"Text {i} about Zzyzx Quentin id 99887766")


def everything_dataset() -> tuple[Dataset, dict[int, object]]:
    ds = Dataset()
    originals: dict[int, object] = {}
    for i, row in enumerate(SINGLE_TAG_ROWS):
        tag = parse_tag(row.tag)
        vr = _vr(tag)
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"SeqName^Hidden{i}"
            item.ReferencedSOPInstanceUID = f"1.2.999.8.{i}"
            ds.add(DataElement(tag, vr, Sequence([item])))
            originals[tag] = (f"SeqName^Hidden{i}", f"1.2.999.8.{i}")  # (name, uid) inside the item
            continue
        value = _value(vr, i)
        ds.add(DataElement(tag, vr, value))
        originals[tag] = value
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.PatientName = "Zzyzx^Quentin"  # known identifiers that free-text cleaning must remove
    ds.PatientID = "99887766"
    originals[0x00100010], originals[0x00100020] = "Zzyzx^Quentin", "99887766"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds, originals


PROFILE_CASES = [("basic", PROFILES["basic"])] + [
    (opt, Profile(name=opt, **{opt: True})) for opt in OPTION_COLUMNS
]


@pytest.mark.parametrize("name,profile", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_every_attribute_follows_its_action(name, profile):
    ds, originals = everything_dataset()
    pseudo = Pseudonymizer(KEY)
    scrubber = Scrubber(profile, pseudo)
    table = ActionTable(profile)
    ctx = scrubber.context_for(ds)
    data, _ = deidentify_bytes(ds, scrubber)  # encodes as a real Part 10 file
    out = pydicom.dcmread(io.BytesIO(data))
    checked = {a: 0 for a in ("X", "Z", "D", "K", "C", "U", "U*")}
    for row in SINGLE_TAG_ROWS:
        tag = parse_tag(row.tag)
        action = table.lookup(tag)
        orig = originals[tag]
        vr = _vr(tag)
        present = tag in out
        got = out[tag].value if present else None
        where = f"{row.name} {row.tag} action {action} under {name}"
        checked[action] += 1
        if tag in (PATIENT_ID, PATIENT_NAME, ACCESSION, STUDY_ID) and action != "K":
            assert present and str(got) and str(got) != str(orig), where
            continue
        if tag in (0x00120062, 0x00120063, 0x00120064, 0x00280303):  # set by the de-identifier itself
            continue
        if tag >> 16 in (0x0000, 0x0002):  # command / file meta elements never stay in a stored body
            assert not present, where
            continue
        if action == "X":
            assert not present, where
        elif action == "Z":
            assert present and (got in (None, "", b"") or (vr == "SQ" and len(got) == 0)), where
        elif action == "D":
            assert present, where
            if vr == "SQ":
                assert all("SeqName" not in str(item.get("PatientName", "")) for item in got), where
            else:
                assert got not in (None, "", b"") and str(got) != str(orig), where
        elif action == "K":
            assert present, where
            if vr == "SQ":
                assert len(got) == 1, where
                assert str(got[0].PatientName) != orig[0], where  # still cleaned inside
            elif tag == PATIENT_AGE:
                assert got == "045Y", where
            elif vr not in ("FL", "FD"):
                assert str(got) == str(orig) or got == orig, where
        elif action in ("U", "U*"):
            assert present, where
            if vr == "UI":
                assert str(got) == pseudo.uid(str(orig)), where
            elif vr == "SQ":
                assert str(got[0].ReferencedSOPInstanceUID) == pseudo.uid(orig[1]), where
        elif action == "C":
            if vr in ("OB", "OW", "UN") and present is False:
                continue  # curve/overlay bitmaps cannot be cleaned: removed
            if not present:
                continue
            if vr == "TM":
                assert str(got) == str(orig), where  # a whole-day shift keeps the time of day
            elif vr == "DA" and profile.retain_longitudinal_modified_dates:
                shift = ctx.date_shift
                assert str(got) != str(orig) and shift is not None and shift < 0, where
            elif vr == "SQ":
                assert all("SeqName" not in str(item.get("PatientName", "")) for item in got), where
            elif vr in ("LO", "LT", "ST", "UT", "UC", "PN"):
                assert "Zzyzx" not in str(got) and "99887766" not in str(got), where
    # every code the table uses under this profile was exercised
    assert checked["X"] > 300 and checked["U"] + checked["U*"] > 0
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    if not profile.retain_uids:
        assert out.SOPInstanceUID == pseudo.uid(str(originals[0x00080018]))
    assert out.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert "113100" in codes
    assert all(c in codes for c in ([] if name == "basic" else [_code_for(name)]))
    assert out.LongitudinalTemporalInformationModified == scrubber.temporal


def _code_for(option: str) -> str:
    from medanon.profile import CID7050

    return CID7050[option][0]


def test_combined_codes_resolution():
    from medanon.profile import resolve

    basic = PROFILES["basic"]
    assert resolve("X/Z", {}, basic) == "X"
    assert resolve("X/Z/D", {}, basic) == "X"
    assert resolve("X/Z/U*", {}, basic) == "U*"
    assert resolve("Z/D", {}, basic, vr="DA") == "D"
    assert resolve("Z/D", {}, basic, vr="LO") == "Z"
    # conflicting options: the more protective C wins over K
    both = Profile(retain_device_identity=True, retain_longitudinal_modified_dates=True)
    assert resolve("X", {"retain_device_identity": "K", "retain_longitudinal_modified_dates": "C"}, both) == "C"
    with pytest.raises(ValueError):
        Profile(retain_longitudinal_full_dates=True, retain_longitudinal_modified_dates=True)


def test_private_groups_removed_or_safe_kept():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    safe = Dataset()
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "1.5")  # SUV factor: safe
    block.add_new(0x01, "LO", "Unsafe-Private-Name")  # not in Table E.3.10-1
    del safe
    basic = Scrubber(PROFILES["basic"], Pseudonymizer(KEY))
    out = copy.deepcopy(ds)
    basic.scrub(out)
    assert not any(el.tag.is_private for el in out)
    research = Scrubber(PROFILES["research"], Pseudonymizer(KEY))
    out = copy.deepcopy(ds)
    research.scrub(out)
    kept = {el.tag: el.value for el in out if el.tag.is_private}
    assert kept.get(0x70531000) == "1.5"
    assert 0x70531001 not in kept
    assert str(kept.get(0x70530010)) == "Philips PET Private Group"  # its creator stays
    assert 0x00431029 not in out  # GEMS private data of CT_small is not in the safe list
