"""The fast path (header-only parse, pixel data bytes copied) gives the same bytes as pydicom's
full read + write, streams large instances, and falls back where splicing is unsafe."""

from __future__ import annotations

import io
import os

import pydicom
import pytest

from medanon import fastpath
from medanon.keys import Pseudonymizer
from medanon.pipeline import deidentify_bytes, prepare
from medanon.profile import PROFILES
from medanon.samples import data_file
from medanon.storage import LocalTarget

FILES = ["693_UNCI.dcm", "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "emri_small_big_endian.dcm",
         "MR_small_implicit.dcm", "liver.dcm", "reportsi.dcm", "US1_UNCR.dcm", "SC_rgb.dcm",
         "color3d_jpeg_baseline.dcm", "ExplVR_LitEndNoMeta.dcm", "emri_small_RLE.dcm", "OBXXXX1A_expb_2frame.dcm"]


def _scrubber():
    from medanon.scrub import Scrubber

    return Scrubber(PROFILES["research"], Pseudonymizer(b"fast-key"))


@pytest.mark.parametrize("name", FILES)
def test_fast_path_equals_full_read_and_write(name):
    path = data_file(name)
    size = os.path.getsize(path)
    sc = _scrubber()
    with open(path, "rb") as fh:
        out = fastpath.deidentify_file(fh, size, lambda ds: prepare(ds, sc))
    full = pydicom.dcmread(path, force=True)
    expected, _ = deidentify_bytes(full, _scrubber())
    assert out.data == expected
    back = pydicom.dcmread(io.BytesIO(out.data))
    if "PixelData" in full:
        assert back.PixelData == pydicom.dcmread(path, force=True).PixelData


def test_large_instance_streams_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(fastpath, "IN_MEMORY_LIMIT", 64 * 1024)  # anything bigger streams
    monkeypatch.setattr(fastpath, "CHUNK", 16 * 1024)
    path = data_file("693_UNCI.dcm")
    sc = _scrubber()
    with open(path, "rb") as fh:
        out = fastpath.deidentify_file(fh, os.path.getsize(path), lambda ds: prepare(ds, sc))
        assert out.data is None and out.chunks is not None
        assert max(len(b) for b in out.chunks()) <= 16 * 1024 + 4096
        target = LocalTarget(tmp_path)
        assert fastpath.write(target, "a/b.dcm", out) is True
        assert fastpath.write(target, "a/b.dcm", out) is False  # identical: skipped
    expected, _ = deidentify_bytes(pydicom.dcmread(path), _scrubber())
    assert (tmp_path / "a" / "b.dcm").read_bytes() == expected


def test_trailing_elements_after_pixel_data_take_the_full_path(tmp_path):
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)  # data set trailing padding after the pixel data
    path = tmp_path / "padded.dcm"
    ds.save_as(path)
    sc = _scrubber()
    with open(path, "rb") as fh:
        out = fastpath.deidentify_file(fh, os.path.getsize(path), lambda d: prepare(d, sc))
    back = pydicom.dcmread(io.BytesIO(out.data))
    assert back.PixelData == ds.PixelData
