"""Keyed derivations: date arithmetic on every DA/DT form, on its own and through the scrubber."""

from __future__ import annotations

import copy
import io

import pydicom
from pydicom.data import get_testdata_file

from medanon.keys import Pseudonymizer, shift_date, shift_datetime
from medanon.pipeline import deidentify_bytes
from medanon.profile import PROFILES
from medanon.scrub import Scrubber


def test_every_date_of_a_range_is_shifted_and_what_is_not_a_date_goes():
    assert shift_date("20200315", -10) == "20200305"
    assert shift_date("20200315-20200320", -10) == "20200305-20200310"
    assert shift_date("-20200320", -10) == "-20200310"
    assert shift_date("20200315-", -10) == "20200305-"
    assert shift_datetime("20200315101112.5-20200316", 1) == "20200316101112.5-20200317"
    # the time is kept; a UTC offset (where the exam took place) is dropped, not taken for a range
    assert shift_datetime("20200315101112.123+0530", 1) == "20200316101112.123"
    assert shift_datetime("20200315101112-0500", 1) == "20200316101112"
    assert shift_datetime("20200315-0500-20200316+0100", 1) == "20200316-20200317"
    assert shift_datetime("2020", 1) == "2020"  # a year alone cannot be shifted by days
    # text after a date, a partial or impossible date: not a date, nothing of it kept
    for junk in ("20200315 MRN7733421", "20200315x", "202003", "20200230", "-", "2020-03-15"):
        assert shift_date(junk, 1) == "" and shift_datetime(junk, 1) == "", junk


def test_a_date_range_in_a_header_keeps_no_real_date():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyDate = "20200315-20200320"
    ds.SeriesDate = "20200315 MRN7733421"
    ds.AcquisitionDateTime = "20200315101112-20200316"
    profile = PROFILES["research"]
    pseudo = Pseudonymizer(b"keys-test", profile.uid_root)
    data, ctx = deidentify_bytes(copy.deepcopy(ds), Scrubber(profile, pseudo))
    out = pydicom.dcmread(io.BytesIO(data))
    shift = ctx.date_shift
    assert shift and out.StudyDate == shift_date("20200315", shift) + "-" + shift_date("20200320", shift)
    assert out.AcquisitionDateTime.startswith(shift_date("20200315", shift))
    assert out.AcquisitionDateTime.endswith("-" + shift_date("20200316", shift))
    assert b"20200320" not in data and b"20200316" not in data and b"MRN7733421" not in data


def test_a_utc_offset_in_a_header_is_dropped_with_the_timezone():
    """Under Modified Dates the Timezone Offset From UTC is cleaned to +0000; a DT's own offset
    (+0530: where the exam took place) goes too, in the header and in nested items."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.TimezoneOffsetFromUTC = "+0530"
    ds.AcquisitionDateTime = "20200315083000.000000+0530"
    item = Dataset()
    item.add_new(0x0040A120, "DT", "20200315090000+0530")  # a DateTime content item value
    ds.add_new(0x00400560, "SQ", Sequence([item]))  # Specimen Description Sequence (unlisted)
    profile = PROFILES["research"]
    data, ctx = deidentify_bytes(copy.deepcopy(ds), Scrubber(profile, Pseudonymizer(b"keys-test", profile.uid_root)))
    out = pydicom.dcmread(io.BytesIO(data))
    assert out.TimezoneOffsetFromUTC == "+0000"
    assert out.AcquisitionDateTime == shift_date("20200315", ctx.date_shift) + "083000.000000"
    assert out[0x00400560][0][0x0040A120].value == shift_date("20200315", ctx.date_shift) + "090000"
    assert b"0530" not in data
