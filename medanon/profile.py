"""De-identification profiles: PS3.15 Table E.1-1 as data, plus the chosen Options.

The table ships inside the package (``medanon/standard``, copied unchanged from
the edition 2026c CSVs). A :class:`Profile` picks the Options; :func:`ActionTable`
resolves, for every tag, the single action to apply.

Resolution rules (documented in the README):
- start from the Basic Profile cell; every enabled Option whose cell is not
  empty overrides it; when two enabled Options disagree (K vs C) the more
  protective C wins;
- combined codes use their first action (X/Z, X/D, X/Z/D -> X), except
  ``X/Z/U*`` -> ``U*`` (the sequence is kept and every UID inside it replaced,
  so references between instances keep resolving) and ``Z/D`` -> ``D`` for
  date/time VRs (a dummy is valid where the attribute is Type 1) and ``Z``
  otherwise.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EDITION = "2026c"
TABLE_E1_1 = f"ps3.15-{EDITION}_table_E.1-1.csv"
TABLE_SAFE_PRIVATE = f"ps3.15-{EDITION}_table_E.3.10-1_safe_private.csv"
TABLE_CSC = f"ps3.15-{EDITION}_table_E.3.4-1_clean_structured_content.csv"

# Profile field -> column of Table E.1-1
OPTION_COLUMNS: dict[str, str] = {
    "retain_safe_private": "RtnSafePrivOpt",
    "retain_uids": "RtnUIDsOpt",
    "retain_device_identity": "RtnDevIdOpt",
    "retain_institution_identity": "RtnInstIdOpt",
    "retain_patient_characteristics": "RtnPatCharsOpt",
    "retain_longitudinal_full_dates": "RtnLongFullDatesOpt",
    "retain_longitudinal_modified_dates": "RtnLongModifDatesOpt",
    "clean_descriptors": "CleanDescOpt",
    "clean_structured_content": "CleanStructContOpt",
    "clean_graphics": "CleanGraphOpt",
}

# CID 7050 code for each option (and the Basic Profile)
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

Action = Literal["D", "Z", "X", "K", "C", "U"]


class Profile(BaseModel):
    """Which Annex E Options apply. ``basic`` = all False."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_longitudinal_full_dates: bool = False
    retain_longitudinal_modified_dates: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    uid_root: str = Field("2.25", description="Root for new UIDs; 2.25 = UUID-derived form")
    date_shift_max_days: int = Field(1460, ge=1, le=36500)

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        if self.retain_longitudinal_full_dates and self.retain_longitudinal_modified_dates:
            raise ValueError("choose Full Dates or Modified Dates, not both")
        if not re.fullmatch(r"[12](\.(0|[1-9][0-9]*))+", self.uid_root) or len(self.uid_root) > 24:
            raise ValueError("uid_root must be a valid UID root of at most 24 characters")
        return self

    def enabled_options(self) -> list[str]:
        return [opt for opt in OPTION_COLUMNS if getattr(self, opt)]

    def identity(self) -> str:
        """Stable text identity of everything that changes the output (for cache keys)."""
        return self.model_dump_json(exclude={"name"})


PROFILES: dict[str, Profile] = {
    "basic": Profile(name="basic"),
    "research": Profile(
        name="research",
        retain_longitudinal_modified_dates=True,
        retain_patient_characteristics=True,
        clean_descriptors=True,
        retain_safe_private=True,
    ),
}
# Attributes Table E.1-1 (2026c) lists that pydicom's data dictionary does not know yet, with their
# PS3.6 VR, VM and keyword. Registered so that an implicit VR file's value is read as what it is
# (a sequence's items walked, a date shifted) and an explicit VR one is held to the right VR.
STANDARD_ADDITIONS: dict[int, tuple[str, str, str, str, str]] = {
    0x00081301: ("SQ", "1", "Principal Diagnosis Code Sequence", "", "PrincipalDiagnosisCodeSequence"),
    0x00081302: ("SQ", "1", "Primary Diagnosis Code Sequence", "", "PrimaryDiagnosisCodeSequence"),
    0x00081303: ("SQ", "1", "Secondary Diagnoses Code Sequence", "", "SecondaryDiagnosesCodeSequence"),
    0x00081304: ("SQ", "1", "Histological Diagnoses Code Sequence", "", "HistologicalDiagnosesCodeSequence"),
    0x00100011: ("SQ", "1", "Person Names to Use Sequence", "", "PersonNamesToUseSequence"),
    0x00100012: ("LT", "1", "Name to Use", "", "NameToUse"),
    0x00100013: ("UT", "1", "Name to Use Comment", "", "NameToUseComment"),
    0x00100014: ("SQ", "1", "Third Person Pronouns Sequence", "", "ThirdPersonPronounsSequence"),
    0x00100015: ("SQ", "1", "Pronoun Code Sequence", "", "PronounCodeSequence"),
    0x00100016: ("UT", "1", "Pronoun Comment", "", "PronounComment"),
    0x00100041: ("SQ", "1", "Gender Identity Sequence", "", "GenderIdentitySequence"),
    0x00100042: ("UT", "1", "Sex Parameters for Clinical Use Category Comment", "",
                 "SexParametersForClinicalUseCategoryComment"),
    0x00100043: ("SQ", "1", "Sex Parameters for Clinical Use Category Sequence", "",
                 "SexParametersForClinicalUseCategorySequence"),
    0x00100044: ("SQ", "1", "Gender Identity Code Sequence", "", "GenderIdentityCodeSequence"),
    0x00100045: ("UT", "1", "Gender Identity Comment", "", "GenderIdentityComment"),
    0x00100046: ("SQ", "1", "Sex Parameters for Clinical Use Category Code Sequence", "",
                 "SexParametersForClinicalUseCategoryCodeSequence"),
    0x00100047: ("UR", "1-n", "Sex Parameters for Clinical Use Category Reference", "",
                 "SexParametersForClinicalUseCategoryReference"),
    0x00102162: ("UC", "1-n", "Ethnic Groups", "", "EthnicGroups"),
    0x0040A034: ("DT", "1", "Effective Start DateTime", "", "EffectiveStartDateTime"),
    0x0040A035: ("DT", "1", "Effective Stop DateTime", "", "EffectiveStopDateTime"),
    0x0040B034: ("DT", "1", "Annotation DateTime", "", "AnnotationDateTime"),
    0x0040B036: ("DT", "1", "Segment Definition DateTime", "", "SegmentDefinitionDateTime"),
    0x0040B03B: ("LT", "1", "Montage Name", "", "MontageName"),
    0x0040B03F: ("LO", "1", "Montage Channel Label", "", "MontageChannelLabel"),
    0x0040E012: ("UR", "1", "Display URI", "", "DisplayURI"),
}


def register_standard_additions() -> None:
    """Add STANDARD_ADDITIONS to pydicom's dictionary (those it already knows are left alone)."""
    from pydicom.datadict import add_dict_entries, dictionary_has_tag

    missing = {tag: entry for tag, entry in STANDARD_ADDITIONS.items() if not dictionary_has_tag(tag)}
    if missing:
        add_dict_entries(missing)


register_standard_additions()

DEFAULT_PROFILE = "research"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None


# ---------------------------------------------------------------------------
# Table data


@dataclass(frozen=True)
class TableRow:
    name: str
    tag: str  # "(gggg,eeee)" as in the standard, may hold x wildcards
    basic: str
    options: dict[str, str]  # profile field -> action, only non-empty cells


def _read_csv(name: str) -> list[dict[str, str]]:
    with resources.files("medanon.standard").joinpath(name).open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@lru_cache(maxsize=1)
def table_rows() -> tuple[TableRow, ...]:
    rows = []
    for r in _read_csv(TABLE_E1_1):
        opts = {opt: r[col].strip() for opt, col in OPTION_COLUMNS.items() if r[col].strip()}
        rows.append(TableRow(r["AttributeName"].strip(), r["Tag"].strip(), r["BasicProfile"].strip(), opts))
    return tuple(rows)


TAG_RE = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


def parse_tag(tag: str) -> int | None:
    m = TAG_RE.match(tag.upper())
    return int(m.group(1) + m.group(2), 16) if m else None


@lru_cache(maxsize=1)
def safe_private_vrs() -> dict[tuple[int, str, int], str]:
    """(group, private creator exactly as in the table, element low byte) -> the table's VR
    ("" when it gives none; "OW/OB" when either) of Table E.3.10-1."""
    out: dict[tuple[int, str, int], str] = {}
    for r in _read_csv(TABLE_SAFE_PRIVATE):
        m = re.match(r"^\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$", r["Data Element"].strip())
        if m:
            key = (int(m.group(1), 16), r["Private Creator"].strip(), int(m.group(2), 16))
            vr = r["VR"].strip().upper()
            if key in out and out[key] != vr:  # listed twice with different VRs: either
                vr = "/".join(sorted(set(out[key].split("/")) | set(vr.split("/")) - {""}))
            out[key] = vr
    return out


@lru_cache(maxsize=1)
def csc_codes() -> dict[tuple[str, str], dict[str, str]]:
    """(coding scheme, code value) -> {"basic": action, option: action} from Table E.3.4-1."""
    cols = {
        "Basic Prof.": "basic",
        "Rtn. UIDs Opt.": "retain_uids",
        "Rtn. Dev. Id. Opt.": "retain_device_identity",
        "Rtn. Inst. Id. Opt.": "retain_institution_identity",
        "Rtn. Pat. Chars. Opt.": "retain_patient_characteristics",
        "Rtn. Long. Full Dates Opt.": "retain_longitudinal_full_dates",
        "Rtn. Long. Modif. Dates Opt.": "retain_longitudinal_modified_dates",
        "Clean Desc. Opt.": "clean_descriptors",
    }
    out: dict[tuple[str, str], dict[str, str]] = {}
    for r in _read_csv(TABLE_CSC):
        key = (r["Coding Scheme Designator"].strip(), r["Code Value"].strip())
        out[key] = {v: r[k].strip() for k, v in cols.items() if r.get(k, "").strip()}
    return out


DATE_VRS = {"DA", "DT", "TM"}


def resolve(basic: str, options: dict[str, str], profile: Profile, vr: str | None = None) -> str:
    """One action code ("D","Z","X","K","C","U" or "U*") for a table cell set under a profile."""
    chosen = [options[o] for o in profile.enabled_options() if o in options]
    if chosen:
        action = "C" if "C" in chosen else chosen[0]
    else:
        action = basic
    if "/" not in action:
        return action
    if action == "X/Z/U*":
        return "U*"
    if action == "Z/D":
        return "D" if vr in DATE_VRS else "Z"
    return action.split("/")[0]


class ActionTable:
    """Per-tag actions for one profile (built once, looked up per element)."""

    def __init__(self, profile: Profile):
        from pydicom.datadict import dictionary_VR

        self.profile = profile
        self.exact: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.curve = "X"
        self.overlay: dict[int, str] = {}  # element -> action for 60xx groups
        self.private = "X"
        for row in table_rows():
            tag = parse_tag(row.tag)
            if tag is not None:
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = None
                self.exact[tag] = resolve(row.basic, row.options, profile, vr)
                self.names[tag] = row.name
            elif row.tag.upper().startswith("(50XX"):
                self.curve = resolve(row.basic, row.options, profile)
            elif row.tag.upper().startswith("(60XX"):
                elem = int(row.tag[6:10], 16)
                self.overlay[elem] = resolve(row.basic, row.options, profile)
            elif "gggg" in row.tag.lower():
                self.private = resolve(row.basic, row.options, profile)

    def lookup(self, tag: int) -> str | None:
        """Action for a tag, or None when Table E.1-1 does not list it."""
        a = self.exact.get(tag)
        if a is not None:
            return a
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 1:
            return self.private
        if 0x5000 <= group <= 0x50FF and not group & 1:
            return self.curve
        if 0x6000 <= group <= 0x60FF and not group & 1:
            return self.overlay.get(elem)
        return None
