"""Split a Part 10 file's bytes into its top-level elements without building a dataset.

The scrub and inspect passes only need pydicom for the few elements they look at or
change; most of a CT or MR header (geometry, acquisition parameters) is kept exactly as
read. :func:`split` finds each top-level element's tag, VR and byte range with a struct
loop, so the caller can hand pydicom a reduced stream holding only the elements it needs
and copy the rest as they are.

Only the plain cases are handled: a Part 10 file (preamble, ``DICM``, file meta) in a little
endian, non-deflated transfer syntax whose elements are well formed. Anything else gives
``None`` and the caller takes its general path (pydicom reads everything), so this module
never decides what a malformed file means.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))
LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR", b"SV", b"UV"))
VALID_VRS = LONG_VRS | frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
                                  b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
NOT_EXPLICIT_LE = frozenset((ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian))
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_unpack_hh = struct.Struct("<HH").unpack_from
_unpack_h = struct.Struct("<H").unpack_from
_unpack_i = struct.Struct("<I").unpack_from


@dataclass
class Split:
    implicit: bool
    dataset_start: int  # offset of the first dataset element (just after the file meta)
    # top-level dataset elements before the pixel data, in file order, as tuples
    # (tag, vr, start, value_start, value_length, end); value_length is -1 when undefined
    elements: list
    pixel_start: int | None  # offset of the pixel data element, None when there is none


@lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _meta_end(buf: bytes) -> tuple[int, str] | None:
    """(offset after the file meta group, transfer syntax UID) of a Part 10 file."""
    n = len(buf)
    if n < 132 or buf[128:132] != b"DICM":
        return None
    pos, tsyntax = 132, None
    while pos + 8 <= n:
        if _unpack_h(buf, pos)[0] != 0x0002:  # the dataset may be implicit VR: stop before reading a VR
            break
        head = _header(buf, pos, False)  # the file meta is always explicit VR little endian
        if head is None:
            return None
        tag, _vr, start, length = head
        if length == UNDEFINED or start + length > n:
            return None
        if tag == 0x00020010:
            tsyntax = buf[start:start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = start + length
    if tsyntax is None:
        return None
    return pos, tsyntax


def _header(buf: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int] | None:
    """(tag, vr, value_start, length) of the element at pos; None when it cannot be read."""
    if pos + 8 > len(buf):
        return None
    group, elem = _unpack_hh(buf, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        (length,) = _unpack_i(buf, pos + 4)
        return tag, (None if group == 0xFFFE else dictionary_vr(tag)), pos + 8, length
    vr = buf[pos + 4:pos + 6]
    if vr in LONG_VRS:
        if pos + 12 > len(buf):
            return None
        (length,) = _unpack_i(buf, pos + 8)
        return tag, vr.decode(), pos + 12, length
    if vr not in VALID_VRS:
        return None
    (length,) = _unpack_h(buf, pos + 6)
    return tag, vr.decode(), pos + 8, length


def _skip_items(buf: bytes, pos: int, implicit: bool, depth: int) -> int | None:
    """Offset just past the sequence delimiter of an undefined-length sequence whose first
    item starts at pos."""
    n = len(buf)
    if depth > 16:
        return None
    while pos + 8 <= n:
        group, elem = _unpack_hh(buf, pos)
        (length,) = _unpack_i(buf, pos + 4)
        tag = group << 16 | elem
        if tag == SEQ_END:
            return pos + 8
        if tag != ITEM:
            return None
        if length != UNDEFINED:
            pos += 8 + length
            continue
        pos = _skip_dataset(buf, pos + 8, implicit, depth + 1)
        if pos is None:
            return None
    return None


def _skip_dataset(buf: bytes, pos: int, implicit: bool, depth: int) -> int | None:
    """Offset just past the item delimiter of an undefined-length item starting at pos."""
    n = len(buf)
    while pos + 8 <= n:
        head = _header(buf, pos, implicit)
        if head is None:
            return None
        tag, vr, vstart, length = head
        if tag == ITEM_END:
            return pos + 8
        if length == UNDEFINED:
            if not implicit and vr not in ("SQ", "UN"):
                return None
            # the items of an undefined-length UN are implicit VR little endian (PS3.5 6.2.2)
            pos = _skip_items(buf, vstart, implicit or vr == "UN", depth + 1)
            if pos is None:
                return None
            continue
        pos = vstart + length
    return None


def split(buf: bytes) -> Split | None:
    """The top-level elements of a Part 10 file held in ``buf`` (up to the pixel data)."""
    meta = _meta_end(buf)
    if meta is None:
        return None
    pos, tsyntax = meta
    if tsyntax == ImplicitVRLittleEndian:
        implicit = True
    elif tsyntax in NOT_EXPLICIT_LE:  # big endian or deflated
        return None
    else:
        implicit = False
    found = _elements(buf, pos, implicit)
    if found is None:
        return None
    elements, pixel_start = found
    return Split(implicit, pos, elements, pixel_start)


_unpack_explicit = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 16-bit length
_SHORT_VR_NAMES = {v: v.decode() for v in VALID_VRS - LONG_VRS}
_LONG_VR_NAMES = {v: v.decode() for v in LONG_VRS}


def _elements(buf: bytes, pos: int, implicit: bool, general: bool = False) -> tuple[list, int | None] | None:
    """(top-level elements from ``pos``, offset of the pixel data element or None); None when an
    element cannot be delimited.

    Explicit VR element headers are read with one struct call each (a CT header has about a
    hundred elements, and every inspected and scrubbed instance goes through this loop);
    ``general`` reads them with ``_header`` instead, as implicit VR ones always are: the reference
    the fast reading is tested against."""
    n = len(buf)
    elements = []
    append = elements.append
    short_names, long_names = _SHORT_VR_NAMES, _LONG_VR_NAMES
    while pos < n:
        if implicit or general:
            head = _header(buf, pos, implicit)
            if head is None:
                return None
            tag, vr, vstart, length = head
            group = tag >> 16
        else:
            if pos + 8 > n:
                return None
            group, elem, vr_bytes, length = _unpack_explicit(buf, pos)
            vr = short_names.get(vr_bytes)
            if vr is not None:
                vstart = pos + 8
            else:
                vr = long_names.get(vr_bytes)
                if vr is None or pos + 12 > n:
                    return None
                (length,) = _unpack_i(buf, pos + 8)
                vstart = pos + 12
            tag = group << 16 | elem
        if tag in PIXEL_TAGS:
            return elements, pos
        if group == 0xFFFE or group == 0x0002:
            return None
        if length == UNDEFINED:
            if not (vr == "SQ" or vr == "UN" or (implicit and vr is None)):
                return None
            end = _skip_items(buf, vstart, implicit or vr == "UN", 0)
            if end is None:
                return None
            append((tag, vr, pos, vstart, -1, end))
            pos = end
            continue
        end = vstart + length
        if end > n:
            return None
        append((tag, vr, pos, vstart, length, end))
        pos = end
    return elements, None


def element_end(fh: BinaryIO, start: int, size: int, little: bool, implicit: bool) -> int | None:
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


def plain_split(fh: BinaryIO, buf: bytes, size: int) -> Split | None:
    """``split(buf)`` (``buf`` holding at least the header of the file open as ``fh``) when the
    pixel data element is the last element of the file and ends at ``size``; else None."""
    sp = split(buf)
    if sp is None or sp.pixel_start is None:
        return None
    if element_end(fh, sp.pixel_start, size, True, sp.implicit) != size:
        return None  # truncated pixel data or elements after it: the caller's general path decides
    return sp


def dataset_stream(fh: BinaryIO) -> tuple[int, str | None, BinaryIO]:
    """(offset of the dataset, transfer syntax UID, a stream at the dataset's first element) of a
    file as pydicom reads it: preamble (if any), file meta and command set skipped; a deflated
    dataset comes inflated in memory."""
    import zlib

    from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble

    fh.seek(0)
    read_preamble(fh, True)
    syntax = _read_file_meta_info(fh).get("TransferSyntaxUID")
    _read_command_set_elements(fh)
    start = fh.tell()
    if syntax == DeflatedExplicitVRLittleEndian:
        return start, syntax, io.BytesIO(zlib.decompress(fh.read(), -zlib.MAX_WBITS))
    return start, syntax, fh


def repeated_differently(elements) -> bool:
    """True when a tag occurs more than once among ``elements`` ((tag, contents) pairs, in file
    order) and its occurrences are not known to be identical (``None`` contents: unknown).

    pydicom keeps only the last occurrence of a repeated tag, so the values of the others would
    be missing from the identifiers that free text is cleaned of, and the instance's identity
    (patient, study) could be either value."""
    seen: dict = {}
    for tag, contents in elements:
        if tag in seen and (contents is None or seen[tag] != contents):
            return True
        seen[tag] = contents
    return False


def repeats_a_tag(sp: Split) -> bool:
    """True when a tag occurs more than once among the split's top-level elements."""
    return len({e[0] for e in sp.elements}) != len(sp.elements)


def split_repeats_differ(buf: bytes, sp: Split) -> bool:
    """``repeated_differently`` over the top-level elements of a split file."""
    if not repeats_a_tag(sp):
        return False
    return repeated_differently((e[0], buf[e[2]:e[5]]) for e in sp.elements)


def read_reduced(buf: bytes, sp: Split, keep):
    """pydicom's dataset of ``reduced(buf, sp, keep)`` (without pixel data); None when pydicom
    reads its encoding differently from the split."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(reduced(buf, sp, keep)), stop_before_pixels=True)
    return ds if ds.original_encoding == (sp.implicit, True) else None


def reduced(buf: bytes, sp: Split, keep) -> bytes:
    """The file meta and only the elements ``keep(element)`` accepts: a valid Part 10 stream
    without pixel data for pydicom to read."""
    parts = [buf[:sp.dataset_start]]
    parts += [buf[e[2]:e[5]] for e in sp.elements if keep(e)]
    return b"".join(parts)
