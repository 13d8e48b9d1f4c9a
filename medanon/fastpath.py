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
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .discover import HEAD_BYTES, sniff

PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
IN_MEMORY_LIMIT = 64 * 1024 * 1024
CHUNK = 1 << 20


@dataclass
class Deidentified:
    """One de-identified instance: its scrubbed dataset (header) and how to produce its bytes."""

    ds: object
    size: int
    sha256: str
    data: bytes | None  # whole file in memory (small instances)
    chunks: Callable[[], Iterator[bytes]] | None  # or a re-playable stream (large instances)


def _element_end(fh: BinaryIO, start: int, size: int, little: bool, implicit: bool) -> int | None:
    """Offset just past the pixel data element that starts at ``start``; None if unsure."""
    e = "<" if little else ">"
    fh.seek(start)
    hdr = fh.read(12)
    if len(hdr) < 8:
        return None
    group, elem = struct.unpack(e + "HH", hdr[:4])
    if (group << 16 | elem) not in PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack(e + "I", hdr[4:8])
        pos = start + 8
    elif hdr[4:6] in LONG_VRS:
        (length,) = struct.unpack(e + "I", hdr[8:12])
        pos = start + 12
    else:
        (length,) = struct.unpack(e + "H", hdr[6:8])
        pos = start + 8
    if length != 0xFFFFFFFF:
        return pos + length
    while pos + 8 <= size:  # encapsulated fragments: walk item headers, never read their data
        fh.seek(pos)
        g, el, ln = struct.unpack("<HHI", fh.read(8))
        if (g, el) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (g, el) != (0xFFFE, 0xE000):
            return None
        pos += 8 + ln
    return None


def _encode_header(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def deidentify_file(fh: BinaryIO, size: int, scrub: Callable) -> Deidentified:
    """``scrub(ds)`` de-identifies a dataset in place and prepares its file meta."""
    raw = sniff(fh.read(HEAD_BYTES)) == "raw"
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=raw)
    start = fh.tell()
    implicit, little = ds.original_encoding
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    end = None
    if start < size and implicit is not None and not deflated:
        end = _element_end(fh, start, size, little, implicit)
    if end != size:  # pixel data not last, or no pixel data and more elements: full path
        return _full(fh, size, scrub, raw) if start < size else _header_only(ds, scrub)
    scrub(ds)
    header = _encode_header(ds)
    total = len(header) + (size - start)
    if total <= IN_MEMORY_LIMIT:
        fh.seek(start)
        data = header + fh.read(size - start)
        return Deidentified(ds, len(data), hashlib.sha256(data).hexdigest(), data, None)

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


def _header_only(ds, scrub) -> Deidentified:
    scrub(ds)
    data = _encode_header(ds)
    return Deidentified(ds, len(data), hashlib.sha256(data).hexdigest(), data, None)


def _full(fh: BinaryIO, size: int, scrub, raw: bool) -> Deidentified:
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fh, force=raw)
    scrub(ds)
    data = _encode_header(ds)
    return Deidentified(ds, len(data), hashlib.sha256(data).hexdigest(), data, None)


def write(target, relpath: str, out: Deidentified) -> bool:
    """Write a de-identified instance; large ones stream (the target's put_stream, or a spooled file)."""
    if out.data is not None:
        return target.put_bytes(relpath, out.data, out.sha256)
    put_stream = getattr(target, "put_stream", None)
    if put_stream is not None:
        return put_stream(relpath, out.chunks(), out.sha256, out.size)
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="medanon-", delete=True) as tmp:
        for block in out.chunks():
            tmp.write(block)
        tmp.flush()
        os.fsync(tmp.fileno())
        return target.put_file(relpath, tmp.name, out.sha256)
