"""Apply a de-identification profile to one dataset, in one walk.

Like dicognito, the work is split into small handlers, each owning one
concern; :class:`Scrubber` walks every element (recursing into every sequence at
any depth) and asks the handlers in turn:

- ``_identity``: Patient ID / Name, Accession Number, Study ID -> keyed pseudonyms
- ``_private``: private groups (removed, or kept per Table E.3.10-1 under Retain Safe Private)
- table actions D, Z, X, K, C, U from Table E.1-1 (``_apply``), with per-VR dummies,
  date shifting and free-text cleaning for C
- ``_unlisted``: what to do with standard attributes Table E.1-1 does not list

Policy for attributes the table does not list (documented in the README):
- a tag unknown to the DICOM dictionary (even group) is removed;
- a PN value is replaced by a dummy; a UI value that is not a UID registered in
  the standard (transfer syntaxes, SOP classes, coding schemes...) is replaced
  by its keyed pseudonym unless Retain UIDs is chosen;
- inside a sequence whose action is D (e.g. Content Sequence under the Basic
  Profile), free-text VRs (LO, SH, LT, ST, UT, UC) are replaced by a dummy; elsewhere
  they are cleaned like a description (the identifiers the header names, what looks like PHI);
- a URL (UR) is removed, and so are Patient's Birth/Death Date in Alternative Calendar,
  Patient's Alternative Calendar and Filename in Container;
- a date, date-time or time is treated as the profile treats listed ones: kept with
  Retain Longitudinal Temporal Information Full Dates, shifted with Modified Dates, else removed;
  elsewhere standard attributes not listed are kept (Annex E lists the
  attributes that can identify).

The VR written in an explicit VR file is not trusted: an element that would be kept (or
handled by its table action) with a VR the data dictionary does not give its tag (UN, an
invalid or a wrong VR) is removed. A kept safe private element must have the VR Table
E.3.10-1 gives it and a value of that form; its text is cleaned and its UIDs replaced.
The file meta information is an allow-list (see ``META_KEPT_TAGS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom import config
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from . import __version__
from .keys import Pseudonymizer, shift_date, shift_datetime
from .profile import CID7050, ActionTable, Profile, csc_codes, resolve, safe_private_vrs
from .textscrub import UID_RE, KnownIdentifiers, clean_text, known_tokens, mentions_known, mentions_known_details

try:  # registered UIDs (transfer syntaxes, SOP classes, ...) are not identifying
    from pydicom._uid_dict import UID_dictionary as _REGISTERED_UIDS
except ImportError:  # pragma: no cover
    _REGISTERED_UIDS = {}

_KNOWN_PN_TAGS = (0x00100010, 0x00101001, 0x00101060, 0x00080090, 0x00081050, 0x00081060, 0x00081070,
             0x00321032, 0x00081048, 0x0040A075, 0x00400006, 0x40080114, 0x00101005,
             0x0008009C, 0x00401010, 0x00102297, 0x00402008, 0x00700084)  # consulting, intended recipients,
             # responsible person, order entered by, content creator
_KNOWN_ID_TAGS = (0x00100020, 0x00101000, 0x00080050, 0x00200010, 0x00101002, 0x00380010, 0x00401001, 0x00400009,
             0x00402016, 0x00402017, 0x00101090, 0x00102297, 0x00400253)  # ..., performed procedure step ID
_KNOWN_ADDRESS_TAGS = (0x00101040, 0x00080081, 0x00080092)  # patient's, institution's, referring physician's
_KNOWN_PHONE_TAGS = (0x00102154, 0x00080094)  # patient's, referring physician's telephone numbers
# Sequences whose items name the patient or staff (other IDs, referenced patient, request
# attributes, the staff identification sequences): their PN values and known IDs, at any depth,
# are known identifiers too
_KNOWN_SEQ_TAGS = (0x00101002, 0x00081120, 0x00400275, 0x00080096, 0x00081049, 0x00081052, 0x00081062,
                   0x00081072, 0x00321031, 0x0040A073, 0x00400036)


PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ACCESSION = 0x00080050
STUDY_ID = 0x00200010
PATIENT_AGE = 0x00101010
TIMEZONE_OFFSET = 0x00080201
CONTENT_SEQUENCE = 0x0040A730
IDENTITY_TAGS = frozenset((PATIENT_ID, PATIENT_NAME, ACCESSION, STUDY_ID))
CONTENT_ITEM_VALUE_TAGS = frozenset((0x0040A160, 0x0040A123, 0x0040A121, 0x0040A122, 0x0040A120, 0x0040A124))
# Every top-level element context_for reads (patient_key_of and known_identifiers): the
# ScrubContext of an instance is a function of these elements' bytes, the profile and the key.
CONTEXT_INPUT_TAGS = frozenset(_KNOWN_PN_TAGS + _KNOWN_ID_TAGS + _KNOWN_ADDRESS_TAGS + _KNOWN_PHONE_TAGS
                               + _KNOWN_SEQ_TAGS + (0x00100021, 0x00100030, 0x00080080, 0x00081040, 0x00081010,
                                                    0x0020000D, 0x00380300, 0x00080020, 0x00080021,
                                                    0x00080022, 0x00080023, 0x00101010))
# Read besides the element being scrubbed (context_for, known_identifiers, the file meta, the
# encoder's character set, the manifest row): never copied past the scrubber.
CONTEXT_TAGS = CONTEXT_INPUT_TAGS | {0x00080005, 0x00080016, 0x00080018, 0x00080060, 0x0020000E}
# Written by _mark
MARK_TAGS = frozenset((0x00120062, 0x00120063, 0x00120064, 0x00280303))
TEXT_VRS = {"LO", "SH", "LT", "ST", "UT", "UC"}
LONG_TEXT_VRS = {"LT", "ST", "UT", "UC"}
# File meta elements written to an output (an allow-list; the group length is recomputed)
META_KEPT_TAGS = frozenset((0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013))
# Standard attributes Table E.1-1 does not list that are removed all the same: Patient's Birth
# Date, Death Date in Alternative Calendar, Patient's Alternative Calendar, Filename in Container
UNLISTED_REMOVED_TAGS = frozenset((0x00100033, 0x00100034, 0x00100035, 0x0008040B))
# The coded parts of a Code Sequence Macro item (PS3.3 Table 8.8-1) and of a Coding Scheme
# Identification item: codes, versions, a scheme's name and owner, never about a patient. Kept
# unless they hold a known ID or a known person's name (two of its words), since a code may
# equal one word of a name (designator TEST, patient Test^S R).
CODE_ITEM_TAGS = frozenset((0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080122, 0x00080115,
                            0x00080116))
# The maker of a device, its model and software (unlisted): often the institution's own name in a
# vendor's test site ("Philips"), never checked for the institution's or address's words
DEVICE_TAGS = frozenset((0x00080070, 0x00081090, 0x00181020))
NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
BYTES_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}

DUMMY = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "PN": "ANONYMOUS",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "UR": "urn:anonymized",
}
TEXT_DUMMY = "ANONYMIZED"


@dataclass
class ScrubContext:
    """Everything the walk needs about one instance's patient and study."""

    patient_key: str  # original Patient ID (or a fallback) -> pseudonyms and date shift
    study_uid: str
    date_shift: int | None  # days, when dates are shifted (Modified Dates)
    known: KnownIdentifiers = field(default_factory=KnownIdentifiers)
    removed: int = 0
    replaced: int = 0
    known_key: tuple | None = None  # hashable form of ``known`` (computed on first use)


def _known_key(ctx: ScrubContext) -> tuple:
    """The hashable form of an instance's known identifiers (computed once per context)."""
    if ctx.known_key is None:
        k = ctx.known
        ctx.known_key = (tuple(k.person_names), tuple(k.ids), tuple(k.dates), tuple(k.addresses),
                         tuple(k.phones), tuple(k.institutions), tuple(sorted(k.replacements.items())),
                         tuple(k.exam_dates), tuple(k.ages))
    return ctx.known_key


def put_element(ds: Dataset, tag: int, vr: str, value) -> None:
    """Set an element to a value medanon wrote (a constant, a pseudonym, a registered UID) as a new
    element with its dictionary VR, without pydicom's per-value validation (``setattr`` also looks
    the keyword up and validates the value: the mark and file meta took 1.7 times as long)."""
    ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _registered(uid: str) -> bool:
    return uid in _REGISTERED_UIDS


class Scrubber:
    def __init__(self, profile: Profile, pseudo: Pseudonymizer):
        self.profile = profile
        self.pseudo = pseudo
        self.table = ActionTable(profile)
        self.safe_private_vr = safe_private_vrs() if profile.retain_safe_private else {}
        self.csc = csc_codes() if profile.clean_structured_content else {}
        self._text_cache: dict = {}
        self._tokens_cache: dict = {}
        self._mentions_cache: dict = {}
        self._kept_cache: dict = {}
        self._mark_elements: tuple | None = None
        if profile.retain_longitudinal_full_dates:
            self.temporal = "UNMODIFIED"
        elif profile.retain_longitudinal_modified_dates:
            self.temporal = "MODIFIED"
        else:
            self.temporal = "REMOVED"

    # ------------------------------------------------------------------ context
    def context_for(self, ds: Dataset) -> ScrubContext:
        patient_key = patient_key_of(ds)
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        shift = self.pseudo.date_shift_days(patient_key) if self.profile.retain_longitudinal_modified_dates else None
        return ScrubContext(patient_key, study_uid, shift, known_identifiers(ds, self.pseudo, patient_key))

    # ------------------------------------------------------------------ entry
    def scrub(self, ds: Dataset, ctx: ScrubContext | None = None) -> ScrubContext:
        ctx = ctx or self.context_for(ds)
        meta = getattr(ds, "file_meta", None)
        self._walk(ds, ctx, mode="")
        self._mark(ds)
        if meta is not None:
            self._scrub_meta(meta, ds)
        return ctx

    def _scrub_meta(self, meta: Dataset, ds: Dataset) -> None:
        sop = ds.get("SOPInstanceUID")
        if sop:
            put_element(meta, 0x00020003, "UI", sop)  # Media Storage SOP Instance UID
        # an allow-list: AE titles, presentation addresses, RTV elements, private and unknown meta
        # information (and the group length, recomputed by writers) are dropped
        for tag in list(meta.keys()):
            if int(tag) not in META_KEPT_TAGS:
                del meta[tag]
        if 0x00020001 in meta._dict:  # never copied: it may carry anything after its two bytes
            put_element(meta, 0x00020001, "OB", b"\x00\x01")

    def _mark(self, ds: Dataset) -> None:
        """Patient Identity Removed, De-identification Method (and its code sequence: CID 7050 codes of
        the profile and options) and Longitudinal Temporal Information Modified: the same in every
        instance this scrubber writes, so their values are worked out once."""
        if self._mark_elements is None:
            items = []
            for value, meaning in [CID7050["basic"]] + [CID7050[o] for o in self.profile.enabled_options()]:
                item = Dataset()
                item.CodeValue = value
                item.CodingSchemeDesignator = "DCM"
                item.CodeMeaning = meaning
                items.append(item)
            method = f"medanon {__version__}; PS3.15 Annex E (2026c) profile {self.profile.name}"[:64]
            self._mark_elements = ((0x00120062, "CS", "YES"), (0x00120063, "LO", method),
                                   (0x00120064, "SQ", items), (0x00280303, "CS", self.temporal))
        for tag, vr, value in self._mark_elements:
            put_element(ds, tag, vr, Sequence(value) if vr == "SQ" else value)

    # ------------------------------------------------------------------ kept as read
    def keeps_as_read(self, tag: int, vr: str | None) -> bool:
        """True when the walk keeps a top-level element with this tag and raw VR exactly as
        read, whatever its value, and nothing else reads it: the fast path then copies its
        bytes without handing it to pydicom. Mirrors ``_walk`` in mode '' (tested for
        byte-identical output)."""
        key = (tag, vr)
        hit = self._kept_cache.get(key)
        if hit is None:
            hit = self._kept_cache[key] = self._keeps_as_read(tag, vr)
        return hit

    def _keeps_as_read(self, tag: int, vr: str | None) -> bool:
        group, elem = tag >> 16, tag & 0xFFFF
        if (elem == 0 and group != 0xFFFE) or group in (0x0000, 0x0002) or group & 1:
            return False
        if tag in CONTEXT_TAGS or tag in MARK_TAGS or vr in ("SQ", "UN"):
            return False  # pydicom may give an explicit UN element its dictionary VR when it reads it
        if vr is not None and not vr_allowed(tag, vr):
            return False  # a VR the dictionary does not give this tag: the walk removes it
        action = self.table.lookup(tag)
        if tag in IDENTITY_TAGS and action != "K":
            return False
        if _allowed_vrs(tag) is None:
            return False  # a tag the dictionary does not know: the walk decides from its VR
        if action is None:
            dvr = vr or (_allowed_vrs(tag) and dictionary_VR(tag))  # implicit VR: the dictionary's
            return (dictionary_has_tag(tag) and dvr not in ("PN", "UI", "UR", "DA", "DT", "TM")
                    and dvr not in TEXT_VRS and tag not in UNLISTED_REMOVED_TAGS)
        return action == "K" and tag != PATIENT_AGE

    def element_memo(self):
        """A memo of this scrubber's encoded output per element and context (the fast path's)."""
        from .fastpath import ElementMemo

        return ElementMemo(CONTEXT_INPUT_TAGS, MARK_TAGS)

    # ------------------------------------------------------------------ walk
    def _walk(self, ds: Dataset, ctx: ScrubContext, mode: str) -> None:
        """mode: '' normal, 'D' inside a dummied sequence, 'CSC' inside cleaned structured content."""
        tags = list(ds.keys())
        kept_private_blocks: set[tuple[int, int]] = set()
        private_creators: list = []
        for tag in tags:
            tag = int(tag)  # plain ints: BaseTag comparisons are slow in a hot loop
            group, elem = tag >> 16, tag & 0xFFFF
            if (elem == 0 and group != 0xFFFE) or group in (0x0000, 0x0002):
                # group lengths are recomputed by writers; command (0000) and file meta (0002)
                # elements do not belong in a stored dataset's body (the meta is handled apart)
                del ds[tag]
                continue
            if group & 1:
                if 0x0010 <= elem <= 0x00FF:
                    private_creators.append(tag)
                    continue
                if self._keep_private(ds, tag) and self._scrub_kept(ds, tag, ctx, mode):
                    kept_private_blocks.add((group, elem >> 8))
                else:
                    del ds[tag]
                    ctx.removed += 1
                continue
            if mode == "CSC" and self._csc_item_value(ds, tag, ctx):
                continue
            action = self.table.lookup(tag)
            if tag in IDENTITY_TAGS and action != "K":
                self._identity(ds, tag, ctx)
                continue
            if action is None:
                self._unlisted(ds, tag, ctx, mode)
            else:
                self._apply(ds, tag, action, ctx, mode)
        for tag in private_creators:
            group, elem = tag >> 16, tag & 0xFFFF
            if (group, elem) not in kept_private_blocks:
                del ds[tag]

    # ------------------------------------------------------------------ handlers
    def _identity(self, ds: Dataset, tag: int, ctx: ScrubContext) -> None:
        if tag == PATIENT_ID:
            ds[tag].value = self.pseudo.patient_id(ctx.patient_key)
        elif tag == PATIENT_NAME:
            ds[tag].value = self.pseudo.patient_name(ctx.patient_key)
        elif tag == ACCESSION:
            value = str(ds[tag].value or "")
            ds[tag].value = self.pseudo.accession(ctx.study_uid, value) if value else ""
        elif tag == STUDY_ID:
            value = str(ds[tag].value or "")
            ds[tag].value = self.pseudo.study_code(ctx.study_uid) if value else ""
        ctx.replaced += 1

    def _safe_private_key(self, ds: Dataset, tag) -> tuple[int, str, int] | None:
        """(group, private creator, element byte) of a private element, as Table E.3.10-1 keys it."""
        group, elem = tag >> 16, tag & 0xFFFF
        creator = ds.get((group << 16) | (elem >> 8))
        if creator is None or elem < 0x1000:
            return None
        value = creator.value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        # exact match: DICOM pads with trailing spaces (and UI-style NULs), case is significant
        return group, str(value or "").rstrip(" \x00"), elem & 0xFF

    def _keep_private(self, ds: Dataset, tag) -> bool:
        return bool(self.safe_private_vr) and self._safe_private_key(ds, tag) in self.safe_private_vr

    def _scrub_kept(self, ds: Dataset, tag, ctx: ScrubContext, mode: str) -> bool:
        """Scrub a safe private element; False when it cannot be kept (it is then removed)."""
        table_vr = self.safe_private_vr.get(self._safe_private_key(ds, tag), "")
        stored = _stored_vr(ds, tag)  # as written (explicit VR), before pydicom gives a UN one a VR
        elem = ds[tag]
        vr = elem.VR
        if table_vr:
            allowed = table_vr.split("/")
            if vr not in allowed or stored is not None and stored not in allowed:
                return False  # not the VR Table E.3.10-1 gives it: its content is not what is safe
        elif vr not in _BLANK_SAFE_VRS or stored not in (None, vr):
            return False  # no VR in the table: numbers, codes, text, names, UIDs and dates only
        check = _VALUE_FORMS.get(vr)
        if check is not None and elem.value not in (None, ""):
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            if not all(check.match(str(v)) for v in values):
                return False  # not a number or code: free text hidden in a safe slot
        if vr == "SQ":
            for item in elem.value:
                self._walk(item, ctx, mode)
        elif vr == "UI":
            if not self.profile.retain_uids:
                self._replace_uids(elem, ctx, unregistered_only=True)
        elif vr == "PN":
            if elem.value:
                elem.value = DUMMY["PN"]
        elif vr in TEXT_VRS:
            if elem.value:
                elem.value = self._clean_text_value(elem, ctx)
        elif vr in ("DA", "DT", "TM"):
            return self._temporal_kept(ds, tag, vr, ctx)
        elif vr in BYTES_VRS and elem.value:
            # opaque bytes the table calls safe: not when they spell out a known name, ID or date
            text = bytes(elem.value).decode("latin-1")
            if self._mentions_known(text, ctx) or any(d and d in text for d in ctx.known.dates):
                return False
        return True

    def _unlisted(self, ds: Dataset, tag, ctx: ScrubContext, mode: str) -> None:
        if not dictionary_has_tag(tag) and (tag >> 16) not in (0x0002, 0xFFFE):
            del ds[tag]
            ctx.removed += 1
            return
        stored = _stored_vr(ds, tag)
        if stored == "UN" and _from_un(ds, tag) is not None:
            stored = ds[tag].VR  # given its dictionary VR (a UN sequence's items are then walked)
        if stored is not None and not vr_allowed(tag, stored):
            # a VR the dictionary does not give this tag (a wrong or invalid VR, a UN value that
            # cannot be read as its dictionary VR): its value cannot be trusted to be what the
            # tag holds: removed
            del ds[tag]
            ctx.removed += 1
            return
        # decide from the raw element's VR first: most attributes are kept as read,
        # without converting (and re-encoding) their values
        vr = _raw_vr(ds, tag)
        if vr == "UR" or tag in UNLISTED_REMOVED_TAGS:
            del ds[tag]  # URLs hold hosts, UIDs and query strings; alternative calendar dates, file names
            ctx.removed += 1
            return
        if vr in ("DA", "DT", "TM"):
            self._unlisted_temporal(ds, tag, vr, ctx)
            return
        if vr not in ("SQ", "PN", "UI") and vr not in TEXT_VRS:
            return
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._walk(item, ctx, mode)
        elif vr == "PN":
            if elem.value:
                elem.value = DUMMY["PN"]
                ctx.replaced += 1
        elif vr == "UI":
            if not self.profile.retain_uids:
                self._replace_uids(elem, ctx, unregistered_only=True)
        elif mode == "D" and vr in TEXT_VRS and elem.value:
            elem.value = TEXT_DUMMY
            ctx.replaced += 1
        elif vr in TEXT_VRS and elem.value:
            self._clean_unlisted_text(elem, vr, ctx, tag)

    def _unlisted_temporal(self, ds: Dataset, tag, vr: str, ctx: ScrubContext) -> None:
        if not self._temporal_kept(ds, tag, vr, ctx):
            del ds[tag]
            ctx.removed += 1

    def _temporal_kept(self, ds: Dataset, tag, vr: str, ctx: ScrubContext) -> bool:
        """A date or time the table does not list (or a safe private one) is treated as the profile
        treats listed ones: kept (full dates retained), shifted (modified dates; a time of day is
        unchanged by a shift of whole days), else removed (False: the caller removes it)."""
        if self.temporal == "UNMODIFIED":
            return True
        if self.temporal == "REMOVED" or ctx.date_shift is None:
            return False
        if vr == "TM":
            return True
        elem = ds[tag]
        value = elem.value
        if value not in (None, ""):
            text = "\\".join(str(v) for v in value) if elem.VM > 1 else str(value)
            elem.value = self._date(text, ctx, shift_date if vr == "DA" else shift_datetime)
            ctx.replaced += 1
        return True

    def _apply(self, ds: Dataset, tag, action: str, ctx: ScrubContext, mode: str) -> None:
        if action == "X":
            del ds[tag]
            ctx.removed += 1
            return
        if _allowed_vrs(tag) is None and _raw_vr(ds, tag) is None:
            del ds[tag]  # listed, unknown to the dictionary, implicit VR: what it holds cannot be read
            ctx.removed += 1
            return
        stored = _stored_vr(ds, tag)
        if stored == "UN" and _from_un(ds, tag) is None:
            del ds[tag]  # never copied as read: a UN value hides its real content (a sequence's items)
            ctx.removed += 1
            return
        if stored is not None and stored != "UN" and not vr_allowed(tag, stored):
            del ds[tag]  # a wrong or invalid VR: its value is not what the table's action expects
            ctx.removed += 1
            return
        if action == "K" and tag != PATIENT_AGE and _raw_vr(ds, tag) != "SQ":
            if stored is None and not_text_as_read(tag, ds.get_item(tag).value):
                del ds[tag]  # implicit VR text whose bytes are not text (a sequence's, say)
                ctx.removed += 1
            return  # kept as read (a UN one given its dictionary VR above, and written with it)
        elem = ds[tag]
        vr = elem.VR
        if not vr_allowed(tag, vr):  # a UN value pydicom could not give its dictionary VR
            del ds[tag]
            ctx.removed += 1
            return
        if action == "K":
            if vr == "SQ":
                for item in elem.value:
                    self._walk(item, ctx, mode)
            elif tag == PATIENT_AGE:
                elem.value = _cap_age(elem.value)
            return
        if action == "Z":
            elem.value = Sequence() if vr == "SQ" else None
            ctx.replaced += 1
            return
        if action in ("U", "U*"):
            if vr == "SQ":
                for item in elem.value:
                    self._walk(item, ctx, mode)
            elif vr == "UI":
                self._replace_uids(elem, ctx)
            else:  # a U on a non-UID VR: treat as dummy
                self._dummy(elem)
            ctx.replaced += 1
            return
        if action == "D":
            if vr == "SQ":
                for item in elem.value:
                    self._walk(item, ctx, "D" if mode != "CSC" else mode)
            else:
                self._dummy(elem)
            ctx.replaced += 1
            return
        if action == "C":
            self._clean(ds, tag, elem, ctx, mode)
            ctx.replaced += 1
            return
        raise ValueError(f"unknown action {action}")  # pragma: no cover - table is validated in tests

    def _dummy(self, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "UI":
            elem.value = self.pseudo.uid(str(elem.value or "dummy"))
        elif vr in NUMERIC_VRS:
            elem.value = 0
        elif vr in BYTES_VRS:
            elem.value = b"\x00\x00"
        elif vr in DUMMY:
            elem.value = DUMMY[vr]
        else:
            elem.value = TEXT_DUMMY

    def _replace_uids(self, elem: DataElement, ctx: ScrubContext, unregistered_only: bool = False) -> None:
        value = elem.value
        if not value:
            return
        values = list(value) if elem.VM > 1 else [value]
        out = []
        for v in values:
            s = str(v).strip().rstrip("\x00")
            if not s or (unregistered_only and _registered(s)):
                out.append(s)
            else:
                out.append(self.pseudo.uid(s))
                ctx.replaced += 1
        elem.value = out if elem.VM > 1 else out[0]

    def _clean(self, ds: Dataset, tag, elem: DataElement, ctx: ScrubContext, mode: str) -> None:
        vr = elem.VR
        group = tag >> 16
        if vr == "SQ":
            sub = "CSC" if tag == CONTENT_SEQUENCE or self.profile.clean_structured_content and tag in (
                0x00400555, 0x0040B020) else mode
            for item in elem.value:
                self._walk(item, ctx, sub)
            return
        if 0x5000 <= group <= 0x60FF and vr in BYTES_VRS:
            # Curve and overlay bitmaps cannot be cleaned of burned text: removed.
            del ds[tag]
            return
        if vr == "DA":
            elem.value = self._date(str(elem.value or ""), ctx, shift_date)
        elif vr == "DT":
            elem.value = self._date(str(elem.value or ""), ctx, shift_datetime)
        elif vr == "TM":
            pass  # shifting by whole days leaves the time of day unchanged
        elif tag == TIMEZONE_OFFSET:
            elem.value = "+0000"
        elif vr == "PN":
            elem.value = DUMMY["PN"] if elem.value else ""
        elif vr == "UI":
            self._replace_uids(elem, ctx)
        elif vr == "AS":
            elem.value = _cap_age(elem.value)
        elif vr in TEXT_VRS:
            elem.value = self._clean_text_value(elem, ctx)
        elif vr in BYTES_VRS:
            del ds[tag]
        # numbers and codes are not free text: kept

    def _clean_unlisted_text(self, elem: DataElement, vr: str, ctx: ScrubContext, tag: int) -> None:
        """Free text the table does not list. Long text (comments, a Text Value: LT, ST, UT, UC) is
        cleaned like a description. A short string (LO, SH: a Code Meaning, a code, a version) is
        cleaned only when it names a known identifier, since the PHI patterns would take codes
        and version numbers for IDs and addresses; a value that still names one is replaced.
        A name word under 3 letters counts there only standing alone (``OB`` is not named by
        ``OB_GENERAL``); the known birth date, the study's dates, phones, the words of the address
        and institution and unregistered UIDs count too, except in the device's maker, model and
        software (DEVICE_TAGS). The coded parts of a code item (CODE_ITEM_TAGS) are kept unless
        they hold a known ID, a known person's name or an unregistered UID, and are then replaced
        whole."""
        values = [str(v) for v in elem.value] if elem.VM > 1 else [str(elem.value)]
        if tag in CODE_ITEM_TAGS:
            if any(self._mentions_known(v, ctx, "code") for v in values):
                elem.value = [TEXT_DUMMY] * len(values) if elem.VM > 1 else TEXT_DUMMY
                ctx.replaced += 1
            return
        mode = "long" if vr in LONG_TEXT_VRS else "device" if tag in DEVICE_TAGS else "short"
        if mode != "long" and not any(self._mentions_known(v, ctx, mode) for v in values):
            return
        cleaned = [self._clean_text(v, ctx) for v in values]
        cleaned = [TEXT_DUMMY if self._mentions_known(v, ctx, mode) else v for v in cleaned]
        if cleaned != values:
            elem.value = cleaned if elem.VM > 1 else cleaned[0]
            ctx.replaced += 1

    _MENTION_MODES = {"long": {}, "short": {"short_glued": False}, "device": {"short_glued": False},
                      "code": {"name_words": 2, "short_glued": False}}

    def _mentions_known(self, text: str, ctx: ScrubContext, mode: str = "long") -> bool:
        """Does ``text`` name one of the instance's known identifiers (memoised per known set)."""
        if not text.strip():
            return False
        known_key = _known_key(ctx)
        tokens = self._tokens_cache.get(known_key)
        if tokens is None:
            if len(self._tokens_cache) >= 1000:
                self._tokens_cache.clear()
            tokens = self._tokens_cache[known_key] = known_tokens(ctx.known)
        key = (text, known_key, mode)
        hit = self._mentions_cache.get(key)
        if hit is None:
            if len(self._mentions_cache) >= 20_000:
                self._mentions_cache.clear()
            hit = self._mentions_cache[key] = (
                mentions_known(text, ctx.known, tokens, **self._MENTION_MODES[mode])
                or (mode == "short" and mentions_known_details(text, ctx.known))
                or (mode in ("short", "code") and _holds_own_uid(text)))
        return hit

    def _clean_text_value(self, elem: DataElement, ctx: ScrubContext):
        if elem.VM > 1:
            return [self._clean_text(str(v), ctx) for v in elem.value]
        return self._clean_text(str(elem.value or ""), ctx)

    def _clean_text(self, text: str, ctx: ScrubContext) -> str:
        """clean_text, memoised: descriptors repeat across the instances of a series, and the
        result depends only on the text, the known identifiers and the date shift."""
        if not text.strip():
            return text
        key = (text, _known_key(ctx), ctx.date_shift)
        cached = self._text_cache.get(key)
        if cached is None:
            if len(self._text_cache) >= 20_000:
                self._text_cache.clear()
            cached = self._text_cache[key] = clean_text(text, ctx.known, ctx.date_shift)
        return cached

    def _date(self, value: str, ctx: ScrubContext, fn) -> str:
        if not value:
            return value
        if ctx.date_shift is None:
            return DUMMY["DA"] if fn is shift_date else DUMMY["DT"]
        parts = [fn(v, ctx.date_shift) for v in value.split("\\")]
        return "\\".join(parts)

    # ------------------------------------------------------------------ SR
    def _csc_item_value(self, ds: Dataset, tag, ctx: ScrubContext) -> bool:
        """Under Clean Structured Content, a content item's value follows Table E.3.4-1
        for its concept name; True when handled here."""
        if tag not in CONTENT_ITEM_VALUE_TAGS:
            return False
        concept = ds.get("ConceptNameCodeSequence")
        action = None
        if concept:
            code = concept[0]
            row = self.csc.get((str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", ""))))
            if row:
                action = resolve(row.get("basic", "X"), {k: v for k, v in row.items() if k != "basic"}, self.profile)
        elem = ds[tag]
        if action is None:  # concept not listed: clean by value type
            action = {"PN": "D", "UI": "U"}.get(elem.VR, "C")
        if action == "X":
            del ds[tag]
        elif action == "K":
            pass
        elif action in ("U", "U*"):
            self._replace_uids(elem, ctx)
        elif action == "D":
            self._dummy(elem)
        elif action == "Z":
            elem.value = None
        else:
            self._clean(ds, tag, elem, ctx, "CSC")
        ctx.replaced += 1
        return True


# VRs whose value is text (encoded characters)
_STRING_VRS = TEXT_VRS | {"PN", "CS", "UI", "DA", "DT", "TM", "AS", "AE", "DS", "IS", "UR"}
# What a safe private element Table E.3.10-1 gives no VR may be kept as
_BLANK_SAFE_VRS = NUMERIC_VRS | {"DS", "IS", "CS", "SQ", "UI", "PN", "DA", "DT", "TM"} | TEXT_VRS
_VALUE_FORMS = {
    "DS": re.compile(r"^ *[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)? *$"),
    "IS": re.compile(r"^ *[+-]?\d+ *$"),
    "CS": re.compile(r"^[A-Z0-9 _]*$"),
}


def vr_allowed(tag: int, vr: str | None) -> bool:
    """True when ``vr`` is one the data dictionary gives ``tag`` (any of an ambiguous entry's)."""
    allowed = _allowed_vrs(int(tag))
    if allowed is None:  # a tag the table lists but this dictionary does not know: any valid VR but UN
        return vr in VALID_VRS and vr != "UN"
    return vr in allowed


VALID_VRS = frozenset(("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
                       "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
                       "UR", "US", "UT", "UV"))


@lru_cache(maxsize=8192)
def _allowed_vrs(tag: int) -> frozenset | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return frozenset([vr] + [v.strip() for v in vr.split(" or ")])


def _stored_vr(ds: Dataset, tag) -> str | None:
    """The VR an element was written with in an explicit VR file (or its VR once converted);
    None for an implicit VR element not yet converted."""
    return getattr(ds.get_item(tag), "VR", None) or None


# Characters no text value holds (C0 controls but TAB, LF, FF, CR and ESC): bytes of another
# encoding, such as a sequence's, read as text (as str, and as the raw bytes)
_NOT_TEXT_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_NOT_TEXT = re.compile(_NOT_TEXT_BYTES.pattern.decode("ascii"))


def _from_un(ds: Dataset, tag) -> DataElement | None:
    """A public element written with VR UN, given its dictionary VR (pydicom does so when the
    element is read; a sequence's items are parsed as implicit VR). None when it cannot be:
    its value does not decode or has the wrong length, it is 64 KiB or more (pydicom leaves it
    UN), or a text value holds control characters (other bytes read as text)."""
    try:
        elem = ds[tag]
    except Exception:  # noqa: BLE001 - a value that does not decode as its dictionary VR
        return None
    vr = elem.VR
    if not vr_allowed(tag, vr):  # still UN (a tag whose dictionary VR is UN is allowed it)
        return None
    if vr in _STRING_VRS:
        values = elem.value if elem.VM > 1 else [elem.value]
        if any(_NOT_TEXT.search(str(v).rstrip("\x00 ")) for v in values if v is not None):
            return None
    return elem


def _holds_own_uid(text: str) -> bool:
    """A UID in free text that the standard does not register (an instance's, a study's…)."""
    return "." in text and any(not _registered(m.group()) for m in UID_RE.finditer(text))


@lru_cache(maxsize=8192)
def _string_vr(tag: int) -> bool:
    return _allowed_vrs(tag) is not None and dictionary_VR(tag) in _STRING_VRS


def not_text_as_read(tag: int, value) -> bool:
    """An implicit VR element of a string VR whose raw bytes hold control characters: not the text
    its tag holds (the bytes of a sequence written where a URL or a code should be). Kept as
    read, it would carry whatever those bytes hide."""
    if not isinstance(value, (bytes, bytearray)) or not _string_vr(int(tag)):
        return False
    return _NOT_TEXT_BYTES.search(bytes(value).rstrip(b"\x00 ")) is not None


def _raw_vr(ds: Dataset, tag) -> str | None:
    """The VR of an element without converting its value (dictionary VR for implicit files)."""
    vr = getattr(ds.get_item(tag), "VR", None)
    if vr:
        return vr
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


_AGE_RE = re.compile(r"^\s*(\d+)\s*([DWMYdwmy])\s*$")
_AGE_DAYS = {"D": 1, "W": 7, "M": 30, "Y": 365}


def _cap_age(age) -> str:
    """Ages over 89 years are aggregated to 090Y (HIPAA Safe Harbor); a value that is not an age
    is emptied. Each value of a multi-valued element is capped."""
    if age is None or isinstance(age, (str, bytes)):
        values = str(age or "").split("\\")
    else:
        values = [str(v) for v in age]  # pydicom's MultiValue
    if not any(v.strip() for v in values):
        return str(age or "") if isinstance(age, str) else ""
    out = []
    for v in values:
        if len(v) == 4 and v[:3].isdigit() and v[3] in "DWMY":  # conformant: nnnD/W/M/Y
            out.append("090Y" if v[3] == "Y" and int(v[:3]) > 89 else v)
            continue
        m = _AGE_RE.match(v)
        if m is None:
            return ""  # not an age: emptied
        n, unit = int(m.group(1)), m.group(2).upper()
        if n * _AGE_DAYS[unit] > 89 * 365 or unit == "Y" and n > 89:
            out.append("090Y")
        else:
            out.append(f"{n:03d}{unit}")
    return "\\".join(out)


def patient_key_of(ds: Dataset) -> str:
    """The original identity a patient's pseudonyms derive from."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
        return f"{issuer}\x00{pid}" if issuer else pid
    name = str(ds.get("PatientName", "") or "").strip()
    birth = str(ds.get("PatientBirthDate", "") or "").strip()
    if name:
        return f"name\x00{name}\x00{birth}"
    return f"study\x00{ds.get('StudyInstanceUID', '')}"


def _known_in_items(seq, k: KnownIdentifiers, depth: int) -> None:
    """The person names, known IDs and institutions in a sequence's items, at any depth."""
    if depth > 8 or getattr(seq, "VR", None) != "SQ":
        return
    for item in seq.value or []:
        for el in item:
            if el.VR == "SQ":
                _known_in_items(el, k, depth + 1)
                continue
            if el.value in (None, "", b""):
                continue
            vals = [str(x) for x in el.value] if el.VM > 1 else [str(el.value)]
            vals = [v for v in vals if v.strip()]
            if el.VR == "PN":
                k.person_names += vals
            elif el.tag in _KNOWN_ID_TAGS:
                k.ids += vals
            elif el.tag in (0x00080080, 0x00081040):
                k.institutions += vals


def known_identifiers(ds: Dataset, pseudo: Pseudonymizer | None = None, patient_key: str = "") -> KnownIdentifiers:
    """Identifiers of this instance's patient, staff and site, for cleaning free text."""
    k = KnownIdentifiers()

    present = ds._dict

    def values(tag):
        if tag not in present:  # most are absent: skip pydicom's lookup
            return []
        el = ds[tag]
        if el is None or el.value in (None, ""):
            return []
        if el.VR == "SQ":
            return []
        v = el.value
        return [str(x) for x in v] if el.VM > 1 else [str(v)]

    for t in _KNOWN_PN_TAGS:
        k.person_names += [v for v in values(t) if v.strip()]
    for t in _KNOWN_ID_TAGS:
        k.ids += [v for v in values(t) if v.strip()]
    k.dates += values(0x00100030)
    k.exam_dates += [v for t in (0x00080020, 0x00080021, 0x00080022, 0x00080023) for v in values(t)
                     if v not in k.exam_dates]
    for age in values(0x00101010):  # Patient's Age over 89: the number is an identifier in text
        m = re.fullmatch(r"\s*0*(\d{1,3})\s*Y\s*", age, re.I)
        if m and int(m.group(1)) >= 90:
            k.ages.append(m.group(1))
    for t in _KNOWN_ADDRESS_TAGS:
        k.addresses += values(t)
    for t in _KNOWN_PHONE_TAGS:
        k.phones += values(t)
    # institution, department, station; the issuer of the patient's ID and the patient's current
    # location (a hospital's or ward's name) too
    k.institutions += (values(0x00080080) + values(0x00081040) + values(0x00081010) + values(0x00100021)
                       + values(0x00380300))
    for t in _KNOWN_SEQ_TAGS:
        if t in present:
            _known_in_items(ds[t], k, 0)
    if pseudo is not None:
        acc = str(ds.get("AccessionNumber", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        if acc:
            k.replacements[acc] = pseudo.accession(study_uid, acc)
        for pid in values(0x00100020):
            k.replacements[pid] = pseudo.patient_id(patient_key or pid)
    return k
