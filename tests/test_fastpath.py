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
from medanon.samples import data_file, with_element
from medanon.storage import LocalTarget

FILES = ["693_UNCI.dcm", "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "emri_small_big_endian.dcm",
         "MR_small_implicit.dcm", "liver.dcm", "reportsi.dcm", "US1_UNCR.dcm", "SC_rgb.dcm",
         "color3d_jpeg_baseline.dcm", "ExplVR_LitEndNoMeta.dcm", "emri_small_RLE.dcm", "OBXXXX1A_expb_2frame.dcm",
         "image_dfl.dcm"]


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


def test_a_deflated_instance_is_an_instance_and_keeps_its_pixel_data(tmp_path, monkeypatch):
    """Deflated Explicit VR Little Endian: the whole dataset, pixel data included, is one deflate
    stream. Inspection takes it as an instance (element offsets are in the inflated stream, not
    a sign of truncation), a cut stream is unreadable, and the scrub writes its pixel data."""
    from pathlib import Path

    path = Path(data_file("image_dfl.dcm"))
    fast, full = _inspect_both(path, monkeypatch)
    assert fast == full and fast.kind == "dicom" and fast.sop_uid
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-300])
    fast, full = _inspect_both(cut, monkeypatch)
    assert (fast.kind, fast.reason) == (full.kind, full.reason) == ("quarantine", "unreadable")
    data = path.read_bytes()
    out = _deidentify(data, PROFILES["research"], True)
    back = pydicom.dcmread(io.BytesIO(out.data))
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert back.PixelData == pydicom.dcmread(path).PixelData


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


# --------------------------------------------------------------------------- the split path

SPLIT_FILES = ["693_UNCI.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm",
               "explicit_VR-UN.dcm", "rtdose_rle_1frame.dcm", "SC_rgb.dcm", "emri_small_RLE.dcm",
               "color3d_jpeg_baseline.dcm"]


def _deidentify(data: bytes, profile, split: bool, scrubber=None, memo=None):
    sc = scrubber or _split_scrubber(profile)
    return fastpath.deidentify_file(io.BytesIO(data), len(data), lambda ds, ctx=None: prepare(ds, sc, ctx),
                                    sc.keeps_as_read if split else None, memo)


def _split_scrubber(profile=PROFILES["research"]):
    from medanon.scrub import Scrubber

    return Scrubber(profile, Pseudonymizer(b"split-key"))


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("name", sorted(set(FILES) | set(SPLIT_FILES)))
def test_split_path_gives_the_same_bytes(name, profile):
    """Copying the elements the scrubber keeps as read, and parsing only the others, gives
    exactly the bytes of parsing everything, under every profile (files the split path
    refuses, like CT_small.dcm with elements after its pixel data, compare the general path
    with itself)."""
    with open(data_file(name), "rb") as fh:
        data = fh.read()
    assert _deidentify(data, PROFILES[profile], True).data == _deidentify(data, PROFILES[profile], False).data


@pytest.mark.parametrize("name", SPLIT_FILES)
def test_split_path_is_taken_for_plain_files(name):
    with open(data_file(name), "rb") as fh:
        data = fh.read()
    sc = _split_scrubber()
    out = fastpath._split_path(io.BytesIO(data), len(data), lambda ds, ctx=None: prepare(ds, sc, ctx),
                               sc.keeps_as_read)
    assert out is not None
    # most of the header never went through pydicom: only what the scrubber needs was parsed
    parsed = len(out.ds._dict)
    assert parsed < len(pydicom.dcmread(io.BytesIO(out.data), stop_before_pixels=True)._dict)


def test_split_path_on_the_sample_archive(tmp_path):
    """The planted-PHI sample archive (odd charsets, private blocks, sequences) gives the same
    bytes by both paths."""
    from medanon.samples import build_sample_archive

    build_sample_archive(tmp_path / "s")
    n = 0
    for path in sorted((tmp_path / "s").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            try:
                expected = _deidentify(data, PROFILES["research"], False).data
            except Exception:  # noqa: BLE001 - not an instance (reports, junk): both paths refuse it
                with pytest.raises(Exception):
                    _deidentify(data, PROFILES["research"], True)
                continue
            assert _deidentify(data, PROFILES["research"], True).data == expected, path.name
            # and both equal pydicom's own writer (odd character sets included)
            full = pydicom.dcmread(io.BytesIO(data), force=True)
            assert deidentify_bytes(full, _split_scrubber())[0] == expected, path.name
            n += 1
    assert n >= 10


def test_split_refuses_what_it_does_not_handle():
    from medanon import rawsplit

    big = open(data_file("emri_small_big_endian.dcm"), "rb").read()
    assert rawsplit.split(big) is None  # big endian
    no_meta = open(data_file("ExplVR_LitEndNoMeta.dcm"), "rb").read()
    assert rawsplit.split(no_meta) is None  # no preamble / meta
    ct = open(data_file("CT_small.dcm"), "rb").read()
    sp = rawsplit.split(ct)
    assert sp is not None and sp.pixel_start is not None
    assert rawsplit.split(ct[:sp.elements[10][3] + 2]) is None  # truncated inside an element


def test_the_explicit_vr_loop_delimits_like_the_general_one(tmp_path):
    """split's one-struct-call loop for explicit VR files finds the same elements (or refuses the
    same files) as the general element loop, on real files cut short anywhere near an element
    boundary and with bytes overwritten at random (seeded)."""
    import random

    from medanon import rawsplit
    from medanon.samples import build_sample_archive

    build_sample_archive(tmp_path / "s")
    datas = [p.read_bytes() for p in sorted((tmp_path / "s").rglob("*")) if p.is_file()]
    datas += [open(data_file(name), "rb").read() for name in sorted(set(FILES) | set(SPLIT_FILES))]
    rng = random.Random(7)
    compared = refused = 0
    for data in datas:
        meta = rawsplit._meta_end(data)
        if meta is None or meta[1] in rawsplit.NOT_EXPLICIT_LE:
            continue
        start = meta[0]
        whole = rawsplit._elements(data, start, implicit=False, general=True)
        cuts = {len(data)} | {e[k] + d for e in (whole[0] if whole else []) for k in (2, 3, 5) for d in (-1, 0, 1, 3)}
        variants = [data[:c] for c in sorted(cuts) if start < c <= len(data)]
        for e in (whole[0] if whole else [])[::7]:  # an item tag where an element should be
            variants.append(data[:e[2]] + b"\xfe\xff\x00\xe0" + data[e[2] + 4:])
        for _ in range(40):
            b = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(start, min(len(b), start + 4096))
                b[at] = rng.randrange(256)
            variants.append(bytes(b))
        for v in variants:
            expected = rawsplit._elements(v, start, implicit=False, general=True)
            assert rawsplit._elements(v, start, implicit=False) == expected
            compared += 1
            refused += expected is None
    assert compared > 2000 and 100 < refused < compared


# --------------------------------------------------------------------------- the element memo

MANIFEST_FIELDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality")


def _sample_instances(root) -> list[bytes]:
    from medanon.samples import build_sample_archive

    build_sample_archive(root)
    datas = [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()]
    datas += [open(data_file(name), "rb").read() for name in sorted(set(FILES) | set(SPLIT_FILES))]
    return datas


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_element_memo_gives_the_same_bytes_and_manifest_fields(tmp_path, profile):
    """One memo over the whole sample archive and the test files, twice in a row (so that
    elements repeat within a series, across a patient's studies, and between passes): every
    output and every manifest field equals the split path without a memo."""
    datas = _sample_instances(tmp_path / "s")
    sc = _split_scrubber(PROFILES[profile])
    memo = sc.element_memo()
    compared = 0
    for data in datas + datas:
        try:
            expected = _deidentify(data, PROFILES[profile], True)
        except Exception:  # noqa: BLE001 - not an instance: the memo changes nothing about that
            with pytest.raises(Exception):
                _deidentify(data, PROFILES[profile], True, sc, memo)
            continue
        got = _deidentify(data, PROFILES[profile], True, sc, memo)
        assert got.data == expected.data
        assert [got.field(k) for k in MANIFEST_FIELDS] == [expected.field(k) for k in MANIFEST_FIELDS]
        compared += 1
    assert compared >= 40
    assert memo.hits > memo.misses  # the second pass, at least, came from the memo


def test_element_memo_keeps_patients_apart():
    """The same description in two patients' instances: it names the second patient, so only
    the second's copy must be cleaned. A memo keyed on the element alone would hand the
    second instance the first one's output, name included."""
    def instance(name: str, pid: str) -> bytes:
        ds = pydicom.dcmread(data_file("693_UNCI.dcm"))
        ds.PatientName, ds.PatientID = name, pid
        ds.StudyDescription = "CT HEAD RECALL ZABROWSKI"
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    first, second = instance("DOE^JOHN", "MRN1"), instance("ZABROWSKI^ANNA", "MRN2")
    sc = _split_scrubber()
    memo = sc.element_memo()
    assert b"ZABROWSKI" in _deidentify(first, PROFILES["research"], True, sc, memo).data
    out = _deidentify(second, PROFILES["research"], True, sc, memo)
    assert b"ZABROWSKI" not in out.data
    assert out.data == _deidentify(second, PROFILES["research"], True).data


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm"])
def test_scrub_context_reads_only_its_input_tags(tmp_path, name):
    """The memo fingerprints an instance's context by CONTEXT_INPUT_TAGS: removing any other
    top-level element leaves the context unchanged (planted identifiers included)."""
    from medanon.samples import build_sample_archive
    from medanon.scrub import CONTEXT_INPUT_TAGS

    sc = _split_scrubber()
    build_sample_archive(tmp_path / "s")
    planted = [p for p in sorted((tmp_path / "s").rglob("*.dcm")) if p.is_file()]
    paths = [data_file(name)] + planted[:3]
    for path in paths:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        before = sc.context_for(ds)
        others = [t for t in ds.keys() if t not in CONTEXT_INPUT_TAGS]
        assert others
        for tag in others:
            reduced = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            del reduced[tag]
            assert sc.context_for(reduced) == before, (path, tag)
        assert any(t in CONTEXT_INPUT_TAGS for t in ds.keys())


# --------------------------------------------------------------------------- discovery's split path

def _inspect_both(path, monkeypatch):
    from medanon import discover
    from medanon.storage import SourceEntry, open_source

    source = open_source(str(path.parent))
    entry = SourceEntry(path.name, path.stat().st_size, str(path.stat().st_mtime_ns))
    fast = discover.inspect_entry(source, entry)
    with monkeypatch.context() as m:
        m.setattr(discover, "_inspect_split", lambda *a, **k: None)
        full = discover.inspect_entry(source, entry)
    return fast, full


@pytest.mark.parametrize("name", sorted(set(FILES) | set(SPLIT_FILES)))
def test_inspect_split_classifies_like_the_full_header_read(name, monkeypatch):
    from pathlib import Path

    fast, full = _inspect_both(Path(data_file(name)), monkeypatch)
    assert fast == full


def test_inspect_split_on_the_sample_archive(tmp_path, monkeypatch):
    """Same classification (kind, reason, identity fields, burned-in header) for every file of the
    planted-PHI sample archive, truncated and non-DICOM files included."""
    from medanon.samples import build_sample_archive

    build_sample_archive(tmp_path / "s")
    files = [p for p in sorted((tmp_path / "s").rglob("*")) if p.is_file()]
    kinds = set()
    for path in files:
        fast, full = _inspect_both(path, monkeypatch)
        assert fast == full, path.name
        kinds.add((fast.kind, fast.reason))
    assert ("dicom", "") in kinds and ("quarantine", "truncated") in kinds


def test_inspect_memo_gives_the_same_outcomes(tmp_path, monkeypatch):
    """With a batch memo, the instances of a series reuse the first one's outcome with their own
    SOP Instance UID: every file of the sample archive (twice over) gets exactly the outcome of
    inspecting it alone, and fewer headers are parsed."""
    from medanon import discover, rawsplit
    from medanon.samples import build_sample_archive
    from medanon.storage import open_source

    build_sample_archive(tmp_path / "s", ct_series_size=6)
    source = open_source(str(tmp_path / "s"))
    entries = list(source.iter_entries())
    parsed = {"n": 0}
    read_reduced = rawsplit.read_reduced

    def counting(*a, **k):
        parsed["n"] += 1
        return read_reduced(*a, **k)

    monkeypatch.setattr(rawsplit, "read_reduced", counting)
    alone = [discover.inspect_entry(source, e) for e in entries]
    parsed_alone, parsed["n"] = parsed["n"], 0
    memo: dict = {}
    assert [discover.inspect_entry(source, e, memo=memo) for e in entries] == alone
    assert [discover.inspect_entry(source, e, memo=memo) for e in entries] == alone
    assert len({i.sop_uid for i in alone if i.kind == "dicom"}) > 10
    assert parsed["n"] < parsed_alone  # the second pass, at least, came from the memo


@pytest.mark.parametrize("name", SPLIT_FILES)
def test_inspect_split_is_taken_for_plain_files(name):
    from medanon import discover

    size = os.path.getsize(data_file(name))
    with open(data_file(name), "rb") as fh:
        got = discover._inspect_split(fh, size, dict(relpath=name, size=size, token="t"))
    assert got is not None and got.kind == "dicom" and got.sop_uid


def test_inspect_reads_a_short_head_first_and_more_for_a_long_header(tmp_path, monkeypatch):
    """A CT's header ends within the first FIRST_HEAD bytes, which are all inspection reads of it
    (not the 0.5 MB file); a header longer than that is read further, split all the same, and
    classified as a full header read classifies it."""
    from medanon import discover

    class Counting(io.FileIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    def split_reads(path):
        Counting.read_bytes = 0
        size = os.path.getsize(path)
        with Counting(path, "rb") as fh:
            got = discover._inspect_split(fh, size, dict(relpath=path.name, size=size, token="t"))
        return got, Counting.read_bytes

    ct = tmp_path / "ct.dcm"
    ct.write_bytes(open(data_file("693_UNCI.dcm"), "rb").read())
    got, read = split_reads(ct)
    assert got is not None and got.kind == "dicom" and read <= discover.FIRST_HEAD + 64

    ds = pydicom.dcmread(data_file("693_UNCI.dcm"))
    for keyword in ("ImageComments", "AdditionalPatientHistory", "PatientComments", "StudyComments"):
        setattr(ds, keyword, "a long comment " * 600)  # 9 KB each: a 38 KB header
    long_header = tmp_path / "long.dcm"
    ds.save_as(long_header, enforce_file_format=True)
    got, read = split_reads(long_header)
    assert got is not None and got.kind == "dicom" and discover.FIRST_HEAD < read <= 2 * discover.SPLIT_HEAD
    fast, full = _inspect_both(long_header, monkeypatch)
    assert fast == full


# --------------------------------------------------------------------------- a tag written twice

REPEAT_FORMS = {  # file, where the second element goes; the split path, or the general path and why
    "explicit, split path": ("693_UNCI.dcm", False),
    "implicit, split path": ("MR_small_implicit.dcm", False),
    "elements after the pixel data": ("CT_small.dcm", False),
    "after the pixel data": ("CT_small.dcm", True),
    "big endian": ("emri_small_big_endian.dcm", False),
    "deflated": ("image_dfl.dcm", False),
}


@pytest.mark.parametrize("form", list(REPEAT_FORMS))
def test_a_tag_repeated_with_another_value_is_quarantined(form, tmp_path, monkeypatch):
    """A second Patient ID with another value (a faulty exporter): pydicom keeps only one, so the
    other would escape the free-text cleaning and the instance's patient is ambiguous. Both the
    split and the general inspection quarantine it as ``repeated-element``, in every encoding and
    wherever the second element lies; the same file without it is an instance."""
    from pathlib import Path

    name, at_end = REPEAT_FORMS[form]
    data = open(data_file(name), "rb").read()
    path = tmp_path / "twice.dcm"
    path.write_bytes(with_element(data, 0x00100020, b"MRN-OTHER-77", at_end))
    assert pydicom.dcmread(path, force=True).PatientID == "MRN-OTHER-77"  # pydicom kept the last one
    fast, full = _inspect_both(path, monkeypatch)
    assert (fast.kind, fast.reason) == (full.kind, full.reason) == ("quarantine", "repeated-element")
    fast, full = _inspect_both(Path(data_file(name)), monkeypatch)
    assert fast.kind == full.kind == "dicom"


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "CT_small.dcm"])
def test_a_tag_repeated_with_the_same_bytes_is_exported_once(name, tmp_path, monkeypatch):
    """The same element written twice, byte for byte, is harmless: the instance is inspected as
    one (split and general path alike) and de-identified with the element once, exactly as
    pydicom's own read and write of it."""
    from medanon import rawsplit

    data = open(data_file(name), "rb").read()
    e = next(e for e in rawsplit.split(data).elements if e[0] == 0x00280030)  # Pixel Spacing
    twice = data[:e[5]] + data[e[2]:e[5]] + data[e[5]:]
    path = tmp_path / "twice.dcm"
    path.write_bytes(twice)
    fast, full = _inspect_both(path, monkeypatch)
    assert fast == full and fast.kind == "dicom"
    out = _deidentify(twice, PROFILES["research"], True).data
    assert out == _deidentify(twice, PROFILES["research"], False).data
    assert out == deidentify_bytes(pydicom.dcmread(io.BytesIO(twice)), _split_scrubber())[0]
    sp = rawsplit.split(out)
    assert [t[0] for t in sp.elements].count(0x00280030) == 1


# --------------------------------------------------------------------------- local target space checks

def test_local_target_reads_free_space_rarely_until_near_full(tmp_path, monkeypatch):
    """Far from full, the filesystem's free space is read once per RECHECK_BYTES written, not per
    file; within NEAR_FULL of the reserve it is read before every write, and a write that would eat
    into the reserve is refused."""
    from medanon.storage.base import TargetFull

    target = LocalTarget(tmp_path / "out")
    free = {"bytes": 100 << 30, "reads": 0}

    def disk_free():
        free["reads"] += 1
        return free["bytes"]

    monkeypatch.setattr(target, "_disk_free", disk_free)
    monkeypatch.setattr(LocalTarget, "RECHECK_BYTES", 10_000)
    data = b"x" * 1000
    for i in range(50):
        assert target.put_bytes(f"a/{i}.dcm", data, fastpath.hashlib.sha256(data).hexdigest())
    assert 4 <= free["reads"] <= 6  # 50 000 bytes written, read every 10 000
    free["bytes"], free["reads"] = target.reserve + LocalTarget.NEAR_FULL, 0
    target._free_seen = None
    for i in range(5):
        target.put_bytes(f"b/{i}.dcm", data, fastpath.hashlib.sha256(data).hexdigest())
    assert free["reads"] == 5  # near full: every write reads it
    free["bytes"] = target.reserve + 2000
    with pytest.raises(TargetFull):
        target.put_bytes("c/0.dcm", data, fastpath.hashlib.sha256(data).hexdigest())


def test_a_written_file_is_already_on_its_way_to_disk(tmp_path):
    """LocalTarget starts the writeback of each file as it writes it, so the batch's sync waits for
    writes under way instead of starting them all at the end: right after put_bytes the file has
    no dirty page left, where a file written plainly keeps them until the kernel or a sync flushes."""
    from conftest import dirty_pages, fs_type

    if fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("tmpfs has no disk to write back to")
    data = os.urandom(4 << 20)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(data)
    control = dirty_pages(plain)
    if control is None:
        pytest.skip("cachestat(2) is not available here (Linux 6.5+)")
    if control == 0:
        pytest.skip("the kernel wrote the plain file back at once here: nothing to compare with")
    target = LocalTarget(tmp_path / "out")
    target.put_bytes("a/1.dcm", data, fastpath.hashlib.sha256(data).hexdigest())
    assert dirty_pages(tmp_path / "out" / "a" / "1.dcm") == 0
    assert (tmp_path / "out" / "a" / "1.dcm").read_bytes() == data


def test_written_files_leave_the_page_cache_once_durable(tmp_path):
    """drop_cached lets the kernel drop a synced file's pages (an export is not read back), skipping
    a file gone since; a scrub batch that flushes its own writes (Dask workers) drops its outputs."""
    from conftest import fs_type, resident_pages

    from medanon.pipeline import WorkerConfig, scrub_batch
    from medanon.profile import get_profile

    if fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("on tmpfs the page cache is where files are stored")
    target = LocalTarget(tmp_path / "out")
    data = os.urandom(1 << 20)
    target.put_bytes("a/1.dcm", data, fastpath.hashlib.sha256(data).hexdigest())
    path = tmp_path / "out" / "a" / "1.dcm"
    before = resident_pages(path)
    if before is None:
        pytest.skip("mincore(2) is not available here")
    assert before > 0  # just written: cached
    target.sync()
    target.drop_cached(["a/1.dcm", "a/gone.dcm"])
    assert resident_pages(path) == 0 and path.read_bytes() == data

    src = tmp_path / "src"
    src.mkdir()
    for name in ("693_UNCI.dcm", "CT_small.dcm"):
        (src / name).write_bytes(open(data_file(name), "rb").read())
    items = [(i, name, f"x/{i}.dcm", str((src / name).stat().st_mtime_ns))
             for i, name in enumerate(("693_UNCI.dcm", "CT_small.dcm"))]
    for sync, out in ((True, "synced"), (False, "unsynced")):
        cfg = WorkerConfig(source=str(src), target=str(tmp_path / out), profile=get_profile("research"),
                           key=b"k" * 32, sync=sync)
        assert scrub_batch(cfg, 1, items)["exported"] == 2
        pages = [resident_pages(tmp_path / out / "x" / f"{i}.dcm") for i in range(2)]
        assert (pages == [0, 0]) if sync else min(pages) > 0


def test_split_path_does_not_copy_an_element_whose_stored_vr_is_wrong():
    """keeps_as_read trusts no stored VR the dictionary does not give the tag: an unlisted PN
    written as LO and a UN-encoded sequence are parsed (and removed by the walk), never copied
    as read (an invalid VR makes the split path refuse the file)."""
    import struct

    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(data_file("SC_rgb.dcm"))
    item = struct.pack("<HHI", 0x0010, 0x0010, 12) + b"Qxzwv^Brenda"
    ds.add(DataElement(0x00081115, "OB", struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item))
    ds.add(DataElement(0x00140104, "LO", "Reviewerqz^Agnes"))  # Secondary Reviewer Name (PN)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    for tag, old, new in ((0x00081115, b"OB", b"UN"),):
        i = data.find(struct.pack("<HH", tag >> 16, tag & 0xFFFF) + old)
        data = data[:i + 4] + new + data[i + 6:]
    sc = _split_scrubber()
    assert not sc.keeps_as_read(0x00140104, "LO") and not sc.keeps_as_read(0x00082228, "ZZ")
    assert sc.keeps_as_read(0x00140104, "PN") is False and sc.keeps_as_read(0x00280002, "US")
    split = fastpath._split_path(io.BytesIO(data), len(data), lambda ds, ctx=None: prepare(ds, sc, ctx),
                                 sc.keeps_as_read)
    assert split is not None
    for out in (split.data, _deidentify(data, PROFILES["research"], False).data):
        for phi in (b"Qxzwv", b"Reviewerqz"):
            assert phi not in out
    assert split.data == _deidentify(data, PROFILES["research"], False).data
