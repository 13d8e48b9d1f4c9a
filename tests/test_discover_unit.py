"""Discovery's policy on real files: the burned-in text guard reads Burned In Annotation as the
standard writes it, and knows the retired ultrasound classes."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medanon.discover import inspect_entry, policy_reason
from medanon.storage import LocalSource

RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"
RETIRED_US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3"


def _write(path, burned=None, sop_class=None, modality="CT"):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if burned is not None:
        ds.add_new(0x00280301, "CS", burned)
    if sop_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if modality is None:
        del ds.Modality
    else:
        ds.Modality = modality
    ds.save_as(path)


@pytest.mark.parametrize("name,kwargs,reason", [
    ("plain-yes", {"burned": "YES"}, "burned-in-annotation"),
    ("leading-space-yes", {"burned": " YES"}, "burned-in-annotation"),
    ("yes-and-no", {"burned": ["YES", "NO"]}, "burned-in-annotation"),
    ("not-a-yes-or-no", {"burned": "MAYBE"}, "burned-in-annotation"),
    ("retired-us", {"sop_class": RETIRED_US, "modality": None}, "burned-in-annotation"),
    ("retired-us-multiframe", {"sop_class": RETIRED_US_MULTIFRAME, "modality": None}, "burned-in-annotation"),
    ("lower-case-us", {"modality": "us"}, "burned-in-annotation"),
    ("ct-no", {"burned": "NO "}, ""),
    ("ct-no-no", {"burned": ["NO", "NO"]}, ""),
    ("ct-absent", {}, ""),
    ("us-with-no", {"modality": "US", "burned": "NO"}, ""),
])
def test_the_burned_in_guard_reads_the_attribute_as_written(tmp_path, name, kwargs, reason):
    _write(tmp_path / name, **kwargs)
    source = LocalSource(tmp_path)
    (entry,) = list(source.iter_entries())
    item = inspect_entry(source, entry)
    assert item.kind == "dicom"
    assert policy_reason(item, False, False) == reason
    assert policy_reason(item, False, True) == ""  # --allow-burned-in


@pytest.mark.parametrize("value,reason", [
    ("YES", "recognizable-visual-features"),
    (" YES", "recognizable-visual-features"),
    (["NO", "YES"], "recognizable-visual-features"),
    ("NO", ""),
    (None, ""),
])
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm"])  # a full header read, a split one
def test_recognizable_visual_features_are_quarantined_unless_allowed(tmp_path, value, reason, name):
    """This version has no Clean Recognizable Visual Features option: an instance that says its
    pixels show a face (0028,0302 = YES) is held, whatever its modality, unless the run allows it."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.BurnedInAnnotation = "NO"
    if value is not None:
        ds.add_new(0x00280302, "CS", value)
    ds.save_as(tmp_path / "face.dcm")
    source = LocalSource(tmp_path)
    (entry,) = list(source.iter_entries())
    item = inspect_entry(source, entry)
    assert item.kind == "dicom"
    assert policy_reason(item, False, False) == reason
    assert policy_reason(item, False, True) == reason  # --allow-burned-in is another switch
    assert policy_reason(item, False, False, True) == ""  # --allow-recognizable-features
