"""Discover: recognise DICOM (by content, never by extension) and read headers only.

Every file gets one outcome: a DICOM instance to process (with the header
fields the rest of the pipeline needs), a report candidate, or a quarantine
reason. Reasons are short PHI-free codes (see ``REASONS``); nothing here raises
for a bad file.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import asdict, dataclass, field, replace

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .reports import REPORT_REASONS
from .storage.base import EntryChanged, Source, SourceEntry, StorageError

REASONS = {
    "empty-file": "file is empty",
    "not-dicom": "not a DICOM file or a recognised report",
    "truncated": "DICOM file is truncated",
    "unreadable": "DICOM file could not be parsed",
    "dicomdir": "DICOMDIR media directory (holds PHI, not an instance)",
    "missing-uid": "no SOP Class, SOP Instance, Study or Series Instance UID",
    "unsupported-sop-class": "SOP class not handled by this version",
    "encapsulated-document": "encapsulated document (PDF/CDA) whose content cannot be scrubbed reliably",
    "structured-report": "structured report needs the Clean Structured Content option",
    "burned-in-annotation": "pixel data may carry burned-in text (use --allow-burned-in to export)",
    "recognizable-visual-features": "pixel data shows recognizable features such as a face "
                                    "(use --allow-recognizable-features to export)",
    "read-error": "file could not be read",
    "changed": "file changed after it was listed; the next run reads its new version",
    "scrub-error": "de-identification failed for this instance",
    "write-error": "the de-identified instance could not be written",
    "duplicate-instance": "another file holds the same SOP Instance UID",
    "repeated-element": "a top-level data element occurs more than once with different values",
    "report-unmatched": "report could not be paired to a study",
    "report-ambiguous": "report matches more than one study",
    # reports that cannot be scrubbed reliably: medanon.reports.REPORT_REASONS
    **REPORT_REASONS,
}

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
ENCAPSULATED_DOC = {"1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.104.2"}
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# Modalities and SOP classes that commonly carry burned-in text
BURNED_IN_MODALITIES = {"US", "SC", "OT", "XC", "ES", "GM", "DOC", "IVUS"}
BURNED_IN_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture family (screen captures)
    "1.2.840.10008.5.1.4.1.1.6.",  # ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # ultrasound multi-frame
    "1.2.840.10008.5.1.4.1.1.77.1.",  # visible light (photos, video, endoscopy)
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)
BURNED_IN_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6",  # ultrasound, retired
    "1.2.840.10008.5.1.4.1.1.3",  # ultrasound multi-frame, retired
}
HEAD_BYTES = 132
IN_MEMORY_LIMIT = 64 * 1024 * 1024


def in_memory(fh, size: int, limit: int = IN_MEMORY_LIMIT):
    """The whole file as a BytesIO when it is small enough, else the file rewound.

    pydicom's parser calls tell()/read() for every element; on a real file each call may
    release and re-take the GIL, and with several batch threads that costs milliseconds per
    instance. One read into memory avoids it."""
    fh.seek(0)
    if size <= limit:
        return io.BytesIO(fh.read())
    return fh


@dataclass
class Inspected:
    """Outcome of looking at one source entry (fields may hold PHI: state store only)."""

    relpath: str
    size: int
    token: str
    kind: str  # "dicom", "report" or "quarantine"
    reason: str = ""
    patient_key: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class: str = ""
    modality: str = ""
    accession: str = ""
    patient_id: str = ""
    study_date: str = ""
    header: dict = field(default_factory=dict)

    def as_row(self) -> dict:
        return asdict(self)


def sniff(head: bytes) -> str | None:
    """'part10', 'raw' (no preamble/meta but a plausible first element) or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) >= 8:
        group, elem = struct.unpack("<HH", head[:4])
        if group in (0x0002, 0x0008) and elem < 0x0100:
            vr = head[4:6]
            if vr.isalpha() and vr.isupper():
                return "raw"
            (length,) = struct.unpack("<I", head[4:8])
            if length < 0x10000:  # implicit VR little endian with a sane length
                return "raw"
        group_be, _ = struct.unpack(">HH", head[:4])
        if group_be in (0x0002, 0x0008) and head[4:6].isalpha():
            return "raw"
    return None


def _read_header(fp, kind: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fp, defer_size=4096, force=(kind == "raw"))


def _repeats_differ(fh, ds, size: int) -> bool:
    """The general path's check for a top-level tag repeated with different contents: pydicom's
    own element generator walks the file's top level again, past the pixel data too (its
    fragments are stepped over, never read). A file this walk cannot follow is left to the
    other checks (truncated, unreadable, the scrub's full read)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.filereader import data_element_generator

    from . import rawsplit

    implicit, little = ds.original_encoding
    if implicit is None:
        return False
    try:
        _, syntax, fh = rawsplit.dataset_stream(fh)
        if syntax == DeflatedExplicitVRLittleEndian:
            size = len(fh.getvalue())

        def elements():
            while True:
                for e in data_element_generator(fh, implicit, little, defer_size=1024,
                                                stop_when=lambda tag, vr, length: tag in rawsplit.PIXEL_TAGS):
                    known = isinstance(e, RawDataElement) and e.value is not None  # else deferred or a sequence
                    yield int(e.tag), ((e.VR, e.length, e.value) if known else None)
                start = fh.tell()
                if start + 8 > size:
                    return
                fh.seek(start)
                group, elem = struct.unpack("<HH" if little else ">HH", fh.read(4))
                yield group << 16 | elem, None
                end = rawsplit.element_end(fh, start, size, little, implicit)
                if end is None or end <= start:
                    return
                fh.seek(end)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rawsplit.repeated_differently(elements())
    except (EntryChanged, StorageError):
        raise
    except Exception:  # noqa: BLE001 - what the walk cannot follow, the other checks judge
        return False


def _truncated(ds, size: int, end: int) -> bool:
    if end > size:
        return True
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False  # offsets are in the inflated dataset; zlib refuses a cut stream (unreadable)
    for elem in ds._dict.values():
        length = getattr(elem, "length", None)
        if length is None or length == 0xFFFFFFFF:
            continue
        raw_value = getattr(elem, "value", None)
        tell = getattr(elem, "value_tell", None)
        if raw_value is None and tell is not None and tell + length > size:
            return True
        if isinstance(raw_value, (bytes, bytearray)) and len(raw_value) < length:
            return True
    return False


def inspect_entry(source: Source, entry: SourceEntry, report_sniffer=None, memo: dict | None = None) -> Inspected:
    """``memo``: a dict kept across the entries of a batch (see ``_inspect_split``)."""
    base = dict(relpath=entry.relpath, size=entry.size, token=entry.token)
    if entry.size == 0:
        return Inspected(**base, kind="quarantine", reason="empty-file")
    try:
        fh = source.open_header(entry)
    except EntryChanged:
        return Inspected(**base, kind="quarantine", reason="changed")
    except OSError:
        return Inspected(**base, kind="quarantine", reason="read-error")
    with fh:
        try:
            head = fh.read(HEAD_BYTES)
            kind = sniff(head)
            if kind is None:
                if report_sniffer is not None:
                    more = head + fh.read(8192)
                    if report_sniffer(more):
                        return Inspected(**base, kind="report")
                return Inspected(**base, kind="quarantine", reason="not-dicom")
            if kind == "part10":
                fast = _inspect_split(fh, entry.size, base, memo)
                if fast is not None:
                    return fast
            if getattr(fh, "ranged", False):  # a remote object: parsed where it is, by ranged reads
                fh.seek(0)
            else:
                fh = in_memory(fh, entry.size)
            ds = _read_header(fh, kind)
            end = fh.tell()
            if _repeats_differ(fh, ds, entry.size):
                return Inspected(**base, kind="quarantine", reason="repeated-element")
        except (InvalidDicomError, EOFError):
            return Inspected(**base, kind="quarantine", reason="truncated" if kind else "not-dicom")
        except EntryChanged:  # an object replaced while it was read
            return Inspected(**base, kind="quarantine", reason="changed")
        except OSError:  # including an object that vanished while it was read
            return Inspected(**base, kind="quarantine", reason="read-error")
        except StorageError:  # the storage failed (retries exhausted), not the file: the batch fails
            raise
        except Exception:  # noqa: BLE001 - any parser failure is a quarantine reason, never a crash
            return Inspected(**base, kind="quarantine", reason="unreadable")
    return classify(ds, base, entry.size, end)


# What classify reads (and the character set its names are decoded with)
INSPECT_TAGS = frozenset((0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080050, 0x00080060, 0x00041220,
                          0x0020000D, 0x0020000E, 0x00100010, 0x00100020, 0x00100021, 0x00100030, 0x00280301,
                          0x00280302))
SPLIT_HEAD = 256 * 1024  # the longest header split here
FIRST_HEAD = 16 * 1024  # read first: most headers (a CT's is about 2 KB) end before it
SOP_INSTANCE_UID = 0x00080018


def _inspect_split(fh, size: int, base: dict, memo: dict | None = None) -> Inspected | None:
    """Inspect a plain Part 10 instance from its first bytes, parsing only what classify reads;
    None when the file is not a plain case (the caller then reads the whole header).

    With a ``memo``, an instance whose classify elements other than its SOP Instance UID have
    the same bytes as an earlier one's (the instances of a series) reuses that outcome: only its
    own UID is decoded."""
    from pydicom.values import convert_UI

    from . import rawsplit

    fh.seek(0)
    buf = fh.read(min(size, FIRST_HEAD))
    sp = rawsplit.plain_split(fh, buf, size)
    if sp is None and len(buf) < min(size, SPLIT_HEAD):  # a longer header (or none we can split)
        fh.seek(0)
        buf = fh.read(min(size, SPLIT_HEAD))
        sp = rawsplit.plain_split(fh, buf, size)
    if sp is None:
        return None
    if rawsplit.split_repeats_differ(buf, sp):
        return Inspected(**base, kind="quarantine", reason="repeated-element")
    key = None
    if memo is not None:
        read = [e for e in sp.elements if e[0] in INSPECT_TAGS]
        sop = [e for e in read if e[0] == SOP_INSTANCE_UID]
        if (len(sop) == 1 and sop[0][1] == "UI" and 0x00080016 in {e[0] for e in read}
                and len({e[0] for e in read}) == len(read)):
            sop_raw = buf[sop[0][3]:sop[0][5]]
            if sop_raw.rstrip(b"\0 ") and b"\\" not in sop_raw:
                key = (sp.implicit,) + tuple(buf[e[2]:e[5]] for e in read if e[0] != SOP_INSTANCE_UID)
                known = memo.get(key)
                if known is not None:
                    return replace(known, **base, sop_uid=str(convert_UI(sop_raw, True)), header=dict(known.header))
    ds = rawsplit.read_reduced(buf, sp, lambda e: e[0] in INSPECT_TAGS)
    if ds is None:
        return None
    got = classify(ds, base, size, 0, has_pixels=True)
    if key is not None and got.kind == "dicom":
        if len(memo) >= 10_000:
            memo.clear()
        memo[key] = got
    return got


def classify(ds, base: dict, size: int, end: int, has_pixels: bool | None = None) -> Inspected:
    try:
        meta = getattr(ds, "file_meta", None)
        sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
        if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
            return Inspected(**base, kind="quarantine", reason="dicomdir")
        if _truncated(ds, size, end):
            return Inspected(**base, kind="quarantine", reason="truncated")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not (sop_class and sop_uid and study_uid and series_uid):
            return Inspected(**base, kind="quarantine", reason="missing-uid")
        from .scrub import patient_key_of

        info = dict(
            patient_key=patient_key_of(ds),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class=sop_class,
            modality=str(ds.get("Modality", "") or ""),
            accession=str(ds.get("AccessionNumber", "") or ""),
            patient_id=str(ds.get("PatientID", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            header={
                "burned_in": burned_in_flag(ds.get("BurnedInAnnotation", "")),
                "recognizable": burned_in_flag(ds.get("RecognizableVisualFeatures", "")),
                "has_pixels": has_pixels if has_pixels is not None else (
                    0x7FE00010 in ds._dict or 0x7FE00008 in ds._dict or 0x7FE00009 in ds._dict),
            },
        )
    except Exception:  # noqa: BLE001
        return Inspected(**base, kind="quarantine", reason="unreadable")
    return Inspected(**base, kind="dicom", **info)


def burned_in_flag(value) -> str:
    """Burned In Annotation as 'YES', 'NO' or '' (absent or empty). Only a plain NO clears an
    instance: leading spaces do not count (CS), and any other value, or several values of which
    one is not NO (``YES\\NO``), is taken as YES."""
    if value is None or isinstance(value, str):
        value = (value or "").split("\\")
    values = [str(v).strip().upper() for v in value]  # a str, or pydicom's MultiValue
    values = [v for v in values if v]
    if not values:
        return ""
    return "NO" if all(v == "NO" for v in values) else "YES"


def needs_burned_in_guard(item: Inspected) -> bool:
    burned = burned_in_flag(item.header.get("burned_in", ""))
    if burned == "YES":
        return True
    if burned == "NO" or not item.header.get("has_pixels"):
        return False
    return (item.modality.strip().upper() in BURNED_IN_MODALITIES or item.sop_class in BURNED_IN_CLASSES
            or item.sop_class.startswith(BURNED_IN_CLASS_PREFIXES))


def policy_reason(item: Inspected, clean_structured_content: bool, allow_burned_in: bool,
                  allow_recognizable: bool = False) -> str:
    """A quarantine reason for an instance this run must not export, or ''."""
    if item.sop_class in ENCAPSULATED_DOC:
        return "encapsulated-document"
    if item.sop_class.startswith(SR_PREFIX) and not clean_structured_content:
        return "structured-report"
    if not allow_burned_in and needs_burned_in_guard(item):
        return "burned-in-annotation"
    if not allow_recognizable and needs_recognizable_guard(item):
        return "recognizable-visual-features"
    return ""


def needs_recognizable_guard(item: Inspected) -> bool:
    """Recognizable Visual Features (0028,0302) says the pixels could identify the patient (a face,
    a photo); this version has no Clean Recognizable Visual Features option. Only a plain NO, or
    no value, clears an instance (as for Burned In Annotation)."""
    return bool(item.header.get("has_pixels")) and burned_in_flag(item.header.get("recognizable", "")) == "YES"
