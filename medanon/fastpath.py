"""The fast path: parse the header only, scrub it, and copy the pixel data element's bytes
as they are (never decoded, never held whole in memory for large files).

A Part 10 file is laid out as preamble, meta, dataset elements in tag order, and
usually ends with Pixel Data (7FE0,0010). We read every element before it
(``stop_before_pixels``), scrub and re-encode those in the file's own transfer
syntax, then append the source bytes of the pixel data element unchanged. When
that is not safe — anything after the pixel data element, a deflated transfer
syntax, an element we cannot delimit — the instance takes the full path
(pydicom reads and writes the whole dataset; pixel data is still never decoded).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import DeflatedExplicitVRLittleEndian

from . import rawsplit
from .discover import HEAD_BYTES, sniff
from .scrub import META_KEPT_TAGS, not_text_as_read

IN_MEMORY_LIMIT = 64 * 1024 * 1024
CHUNK = 1 << 20


@dataclass
class Deidentified:
    """One de-identified instance: its scrubbed dataset (header) and how to produce its bytes."""

    ds: object
    size: int
    sha256: str
    # the whole file in memory (small instances), as consecutive parts: the header, then the
    # pixel data as a view of the source bytes (never copied into one buffer to be written)
    parts: tuple | None
    chunks: Callable[[], Iterator[bytes]] | None  # or a re-playable stream (large instances)
    # the de-identified values the manifest row reads (keyword -> str); from ``ds`` when None
    fields: dict | None = None

    @property
    def data(self) -> bytes | None:
        """The whole file's bytes (in-memory instances only)."""
        return None if self.parts is None else b"".join(self.parts)

    def field(self, keyword: str) -> str:
        if self.fields is not None and keyword in self.fields:
            return self.fields[keyword]
        return str(self.ds.get(keyword, ""))


LONG_VR_NAMES = {v.decode() for v in rawsplit.LONG_VRS}


def _encode_header(ds, encoded: dict | None = None, spans: dict | None = None) -> bytes:
    """Encode a Part 10 file (without pixel data when read with stop_before_pixels).

    Elements still raw (never converted: kept as read) are copied with their original
    value bytes; only the elements the scrubber touched go through pydicom's encoders.
    The result is what ``save_as`` writes, minus most of its per-element overhead.

    ``encoded`` maps tag -> the whole element's bytes (header and value) of elements that are
    not in the dataset (the split path: kept as read, or known from an earlier instance); they
    are written in tag order among the dataset's own elements. ``spans``, when given, receives
    tag -> (start, end) of every element written from the dataset."""
    if _needs_save_as(ds):
        assert not encoded, "the split path is only taken where the header is encoded here"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    implicit, little = ds.original_encoding
    fp = DicomBytesIO()
    fp.write(ds.preamble or b"\x00" * 128)
    fp.write(b"DICM")
    fp.write(_encode_meta(ds.file_meta))
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    e = "<" if little else ">"
    encodings = convert_encodings(ds.get("SpecificCharacterSet", default_encoding) or default_encoding)
    own = set(map(int, ds._dict))  # plain ints sort in C; BaseTag compares in Python
    tags = sorted(own | encoded.keys()) if encoded else sorted(own)
    for tag in tags:
        if tag not in own:  # not in the dataset: its bytes are given
            fp.write(encoded[tag])
            continue
        elem = ds.get_item(tag)
        start = fp.tell()
        if getattr(elem, "is_raw", False) and elem.length != 0xFFFFFFFF and (implicit or elem.VR):
            raw = _element_bytes(tag, elem.VR, elem.value or b"", implicit, e)
            if raw is None:  # cannot happen in a valid file; let pydicom decide
                write_data_element(fp, ds[tag], encodings)
            else:
                fp.write(raw)
        elif tag == METHOD_CODE_SEQUENCE:  # the same few codes in every instance: encode once
            key = (implicit, little, tuple(str(item.get("CodeValue", "")) for item in elem.value))
            fp.write(_encoded_once(_CONSTANT_ELEMENTS, key, elem, encodings, implicit, little))
        elif type(elem.value) in _STR_TYPES:  # a single text value: its bytes depend on nothing else
            key = (tag, elem.VR, elem.value, implicit, little, tuple(encodings))
            fp.write(_encoded_once(_TEXT_ELEMENTS, key, elem, encodings, implicit, little))
        else:
            write_data_element(fp, ds[tag] if getattr(elem, "is_raw", False) else elem, encodings)
        if spans is not None:
            spans[tag] = (start, fp.tell())
    return fp.getvalue()


def _encoded_once(cache: dict, key, elem, encodings, implicit: bool, little: bool) -> bytes:
    """pydicom's encoding of ``elem``, cached under ``key`` (which must hold all it depends on)."""
    cached = cache.get(key)
    if cached is None:
        tmp = DicomBytesIO()
        tmp.is_implicit_VR, tmp.is_little_endian = implicit, little
        write_data_element(tmp, elem, encodings)
        if len(cache) >= 20_000:
            cache.clear()
        cached = cache[key] = tmp.getvalue()
    return cached


def _element_bytes(tag: int, vr: str | None, value: bytes, implicit: bool, e: str) -> bytes | None:
    """Tag, VR and length header plus value, as pydicom writes a raw element; None when a
    short-VR value is too long for its 16-bit length."""
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(e + "I", len(value)) + value
    if vr in LONG_VR_NAMES:
        return head + vr.encode() + b"\x00\x00" + struct.pack(e + "I", len(value)) + value
    if len(value) <= 0xFFFF:
        return head + vr.encode() + struct.pack(e + "H", len(value)) + value
    return None


def _needs_save_as(ds) -> bool:
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or tsyntax == DeflatedExplicitVRLittleEndian or not tsyntax.is_transfer_syntax:
        return True
    return ds.original_encoding != (tsyntax.is_implicit_VR, tsyntax.is_little_endian)


METHOD_CODE_SEQUENCE = 0x00120064
_CONSTANT_ELEMENTS: dict = {}
# encoded elements holding one str or UID value, which repeat across instances (SOP class, the
# de-identification mark, replaced dates and descriptions)
_TEXT_ELEMENTS: dict = {}
_STR_TYPES = (str, pydicom.uid.UID)
_META_VR_PAD = {"UI": b"\x00", "OB": b"\x00"}


def _encode_meta(meta) -> bytes:
    """File meta information (always explicit VR little endian), with its group length;
    the same bytes pydicom's write_file_meta_info writes, without its per-call overhead."""
    from pydicom.datadict import dictionary_VR

    # the scrubber's allow-list: nothing else of the source's meta is written
    for tag in [t for t in meta._dict if int(t) not in META_KEPT_TAGS]:
        del meta[tag]
    meta.FileMetaInformationVersion = b"\x00\x01"  # never copied
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    body = io.BytesIO()
    for tag in sorted(meta._dict):
        elem = meta[tag]
        vr = elem.VR if elem.VR and len(elem.VR) == 2 else dictionary_VR(tag)
        value = elem.value
        if isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
        elif vr == "UL":
            raw = struct.pack("<I", value)
        elif vr == "US":
            raw = struct.pack("<H", value)
        else:
            raw = str(value).encode("ascii", "replace")
        if len(raw) % 2:
            raw += _META_VR_PAD.get(vr, b" ")
        body.write(_element_bytes(tag, vr, raw, False, "<"))
    data = body.getvalue()
    return struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HI", 4, len(data)) + data


def deidentify_file(fh: BinaryIO, size: int, scrub: Callable,
                    keeps_as_read: Callable[[int, str | None], bool] | None = None,
                    memo: ElementMemo | None = None) -> Deidentified:
    """``scrub(ds, ctx=None)`` de-identifies a dataset in place (with the instance's scrub
    context when known), prepares its file meta and returns the context.

    With ``keeps_as_read(tag, vr)`` (the scrubber's) and an instance held in memory, the
    elements it accepts are copied as read and only the others are parsed and scrubbed
    (the split path), and with a ``memo`` elements already scrubbed in the same context are
    not scrubbed again; the output is the same bytes either way."""
    if keeps_as_read is not None and isinstance(fh, io.BytesIO):
        out = _split_path(fh, size, scrub, keeps_as_read, memo)
        if out is not None:
            return out
        fh.seek(0)
    raw = sniff(fh.read(HEAD_BYTES)) == "raw"
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=raw)
    start = fh.tell()
    implicit, little = ds.original_encoding
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    if deflated:  # the whole dataset was inflated to read its header: pixel data is inside it
        return _full(fh, size, scrub, raw)
    end = None
    if start < size and implicit is not None:
        end = rawsplit.element_end(fh, start, size, little, implicit)
    if end != size:  # pixel data not last, or no pixel data and more elements: full path
        return _full(fh, size, scrub, raw) if start < size else _header_only(ds, scrub)
    scrub(ds)
    header = _encode_header(ds)
    total = len(header) + (size - start)
    if total <= IN_MEMORY_LIMIT:
        fh.seek(start)
        data = header + fh.read(size - start)
        return Deidentified(ds, len(data), hashlib.sha256(data).hexdigest(), (data,), None)

    def chunks() -> Iterator[bytes]:
        yield header
        fh.seek(start)
        left = size - start
        while left > 0:
            block = fh.read(min(CHUNK, left))
            if not block:
                raise OSError("source shrank while reading")
            left -= len(block)
            yield block

    sha = hashlib.sha256()
    for block in chunks():
        sha.update(block)
    return Deidentified(ds, total, sha.hexdigest(), None, chunks)


class ElementMemo:
    """Encoded output of top-level elements already scrubbed, by context and input bytes.

    The instances of a series repeat most of their header: descriptions, dates, physicians,
    the study and series UIDs. The first instance with a given element goes through pydicom
    and the scrubber; a later one whose element has the same bytes *in the same context* reuses
    that output instead of parsing, scrubbing and encoding it again.

    The context is everything outside an element that its output can depend on: the transfer
    syntax, and the bytes of every element the scrubber's context reads (``context_tags``:
    patient and study identity, the identifiers free text is cleaned of), of the character
    set, and of the pixel description elements pydicom resolves ambiguous VRs with. Elements the
    scrubber treats apart (``never``: written by the de-identification mark, read for the file
    meta) and private elements (their handling reads their creator) are always parsed.

    One memo serves one scrubber (one profile and key), typically for one batch."""

    FIELD_TAGS = {0x00100020: "PatientID", 0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID",
                  0x00080060: "Modality"}
    ALWAYS_PARSED = frozenset((0x00080016, 0x00080018))  # SOP class and instance: the file meta reads them

    def __init__(self, context_tags, never=(), limit: int = 50_000):
        self.fingerprint_tags = frozenset(context_tags) | {0x00080005, 0x00280100, 0x00280103}
        self.never = frozenset(never) | self.ALWAYS_PARSED
        self.limit = limit
        self._contexts: dict = {}  # fingerprint -> (context id, ScrubContext)
        self._elements: dict = {}  # (context id, whole element bytes) -> (output bytes or None, field value)
        self.hits = self.misses = 0

    def eligible(self, tag: int) -> bool:
        group = tag >> 16
        return not (group & 1 or group in (0x0000, 0x0002, 0xFFFE) or tag & 0xFFFF == 0 or tag in self.never)

    def context(self, fingerprint: tuple):
        """(context id, ScrubContext or None when it must still be read from the dataset)."""
        found = self._contexts.get(fingerprint)
        if found is None:
            if len(self._contexts) >= 1024:
                self.clear()
            found = self._contexts[fingerprint] = (len(self._contexts), None)
        return found

    def set_context(self, fingerprint: tuple, ctx) -> None:
        self._contexts[fingerprint] = (self._contexts[fingerprint][0], ctx)

    def get(self, key):
        return self._elements.get(key)

    def put(self, key, value) -> None:
        if len(self._elements) >= self.limit:
            self._elements.clear()
        self._elements[key] = value

    def clear(self) -> None:
        self._contexts.clear()
        self._elements.clear()


def _split_path(fh: io.BytesIO, size: int, scrub: Callable, keeps_as_read: Callable,
                memo: ElementMemo | None = None) -> Deidentified | None:
    """Parse only the elements the scrubber needs; None when the file is not a plain case."""
    buf = fh.getvalue()
    if len(buf) != size:
        return None
    sp = rawsplit.plain_split(fh, buf, size)
    if sp is None:
        return None
    encoded, hits, misses, parse = {}, {}, {}, set()
    cid = ctx = fingerprint = None
    if memo is not None and not rawsplit.repeats_a_tag(sp):
        fingerprint = (sp.implicit,) + tuple(buf[e[2]:e[5]] for e in sp.elements if e[0] in memo.fingerprint_tags)
        cid, ctx = memo.context(fingerprint)
    for e in sp.elements:  # e: (tag, vr, start, value_start, length, end)
        tag = e[0]
        if (e[4] >= 0 and keeps_as_read(tag, e[1])
                and not (sp.implicit and not_text_as_read(tag, buf[e[3]:e[5]]))):  # implicit VR: bytes checked
            encoded[tag] = buf[e[2]:e[5]]
        elif cid is not None and memo.eligible(tag):
            key = (cid, buf[e[2]:e[5]])
            hit = memo.get(key)
            if hit is None:
                misses[tag] = key
                parse.add(e[2])
            else:
                hits[tag] = hit
        else:
            parse.add(e[2])
    ds = rawsplit.read_reduced(buf, sp, lambda e: e[2] in parse)
    if ds is None or _needs_save_as(ds):
        return None
    for tag in ds._dict.keys() & encoded.keys():  # a repeated tag, parsed once: the parsed one is written
        del encoded[tag]
    known_ctx = ctx
    ctx = scrub(ds, ctx)
    if fingerprint is not None:
        memo.hits += len(hits)
        memo.misses += len(misses)
        if known_ctx is None:  # read from this instance's (fully parsed) context elements
            memo.set_context(fingerprint, ctx)
    for tag, (out, _field) in hits.items():
        if out is not None:
            encoded[tag] = out
    spans: dict | None = {} if misses else None
    header = _encode_header(ds, encoded, spans)
    fields = None
    if memo is not None:
        for tag, key in misses.items():
            span = spans.get(tag)
            value = str(ds[tag].value) if tag in memo.FIELD_TAGS and span is not None else None
            memo.put(key, (header[span[0]:span[1]] if span is not None else None, value))
        fields = {memo.FIELD_TAGS[tag]: (hit[1] or "") for tag, hit in hits.items() if tag in memo.FIELD_TAGS
                  and hit[0] is not None}
    pixels = memoryview(buf)[sp.pixel_start:]
    sha = hashlib.sha256(header)
    sha.update(pixels)
    return Deidentified(ds, len(header) + len(pixels), sha.hexdigest(), (header, pixels), None, fields)


def _header_only(ds, scrub) -> Deidentified:
    scrub(ds)
    data = _encode_header(ds)
    return Deidentified(ds, len(data), hashlib.sha256(data).hexdigest(), (data,), None)


def _full(fh: BinaryIO, size: int, scrub, raw: bool) -> Deidentified:
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fh, force=raw)
    scrub(ds)
    data = _encode_header(ds)
    return Deidentified(ds, len(data), hashlib.sha256(data).hexdigest(), (data,), None)


def write(target, relpath: str, out: Deidentified) -> bool:
    """Write a de-identified instance; large ones stream (the target's put_stream, or a spooled file)."""
    put_stream = getattr(target, "put_stream", None)
    if out.parts is not None:
        if put_stream is not None:
            return put_stream(relpath, out.parts, out.sha256, out.size)
        return target.put_bytes(relpath, out.data, out.sha256)
    if put_stream is not None:
        return put_stream(relpath, out.chunks(), out.sha256, out.size)
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="medanon-", delete=True) as tmp:
        for block in out.chunks():
            tmp.write(block)
        tmp.flush()
        os.fsync(tmp.fileno())
        return target.put_file(relpath, tmp.name, out.sha256)
