"""Radiology reports: recognise, parse and de-identify plain-text and HL7 v2 (ORU) reports.

* :func:`sniff_report` tells a report file from a DICOM file or other binary data;
* :func:`parse_report` extracts the text and the identifiers used to pair the report
  with its study (accession numbers, study UIDs, patient ids/names, exam/birth dates);
* :func:`scrub_report` de-identifies it: plain text goes through
  :func:`medanon.textscrub.clean_text`; HL7 messages are rebuilt segment by segment
  (allow-listed fields kept, identifiers pseudonymised or replaced, dates shifted,
  OBX/NTE text cleaned, unknown segments dropped) with the original delimiters.

Reports that cannot be scrubbed reliably are never exported: :func:`scrub_report` raises
:class:`ReportRejected` with a PHI-free quarantine code (:data:`REPORT_REASONS`) for HL7 segments
the parser cannot take (``report-unparsed-hl7``), RTF/XML/CDA/HTML or other markup
(``report-unsupported-format``) and UTF-8 files with stray bytes of another encoding
(``report-mixed-encoding``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from .textscrub import (
    BIRTH_CUE,
    NEVER_NAME,
    KnownIdentifiers,
    clean_text,
    find_dates,
    known_tokens,
    mentions_known,
    mentions_known_details,
    replacement_lookup,
    shift_da,
    strip_invisible,
)

log = logging.getLogger(__name__)

__all__ = ["ReportDoc", "ReportRejected", "REPORT_REASONS", "sniff_report", "parse_report", "scrub_report",
           "known_for_doc"]

# Quarantine reasons of reports that cannot be scrubbed reliably (PHI-free codes; the pairing
# reasons 'report-unmatched' / 'report-ambiguous' live in medanon.pairing).
UNPARSED_HL7, UNSUPPORTED_FORMAT, MIXED_ENCODING, LEGACY_ENCODING, HL7_BATCH = (
    "report-unparsed-hl7", "report-unsupported-format", "report-mixed-encoding", "report-legacy-encoding",
    "report-hl7-batch")
REPORT_REASONS = {
    UNPARSED_HL7: "report holds HL7 segments that could not be parsed as an HL7 message",
    UNSUPPORTED_FORMAT: "report is RTF, XML/CDA, HTML or other markup that cannot be scrubbed reliably",
    MIXED_ENCODING: "report is UTF-8 with stray bytes of another encoding (names may not match)",
    HL7_BATCH: "report file holds several HL7 messages (a batch may mix patients): one message per file",
    LEGACY_ENCODING: "report is in a code page other than Latin-1 (Cyrillic, Greek, Central European…): "
                     "convert it to UTF-8",
}


class ReportRejected(Exception):
    """The report must not be exported; ``reason`` is one of :data:`REPORT_REASONS`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReportDoc:
    kind: str  # "text" or "hl7"
    text: str  # report body (HL7: OBX-5 text lines joined with "\n")
    accession_numbers: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    patient_names: list[str] = field(default_factory=list)  # DICOM style "LAST^FIRST^MIDDLE"
    exam_dates: list[str] = field(default_factory=list)  # YYYYMMDD
    birth_dates: list[str] = field(default_factory=list)  # YYYYMMDD
    raw: bytes = b""
    # extra identifiers seen in the document (staff, relatives, addresses...) used when scrubbing
    other_names: list[str] = field(default_factory=list)
    other_ids: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    institutions: list[str] = field(default_factory=list)
    encoding: str = "utf-8"
    charset: str = ""  # HL7 MSH-18, as declared (upper case)
    # quarantine reason ("" = can be scrubbed); scrub_report raises ReportRejected when set
    reject: str = ""


# --------------------------------------------------------------------------- sniffing

_KEYWORDS = re.compile(
    r"report|finding|impression|exam|history|technique|comparison|conclusion|indication|"
    r"befund|beurteilung|untersuchung|anamnese|fragestellung|indikation|technik|vergleich|"
    r"compte[\s-]rendu|r[ée]sultat|conclusion|ant[ée]c[ée]dent|indication|examen|"
    r"hallazgos|informe|impresi[óo]n|referto|esame",
    re.I,
)
_BOMS = (b"\xef\xbb\xbf",)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _strip_lead(head: bytes) -> bytes:
    h = head
    for bom in _BOMS:
        if h.startswith(bom):
            h = h[len(bom):]
    return h.lstrip(b" \t\r\n\x0b")


def _decode(data: bytes) -> tuple[str, str]:
    """-> (text, codec). UTF-8 (with BOM), UTF-16 with BOM, else Latin-1."""
    if data.startswith(_UTF16_BOMS):
        return data.decode("utf-16", errors="replace"), "utf-16"
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


_UTF8_MULTI = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _mixed_encoding(data: bytes) -> bool:
    """Not valid UTF-8, yet holding valid UTF-8 multi-byte sequences: a UTF-8 file with stray bytes
    (decoding it as Latin-1 would turn the accented names into mojibake that no longer matches)."""
    if data.startswith(_UTF16_BOMS):
        return False
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        body.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return _UTF8_MULTI.search(body) is not None


# A word of 3+ letters all from U+00C0-U+00FF (Latin-1's accented letters): Cyrillic, Greek, Hebrew
# or Arabic bytes of an 8-bit code page read as Latin-1 ("Êóçíåöîâà"), never a Western word
_ALL_HIGH_WORD = re.compile(r"(?<![^\W\d_])[\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff]{3,}(?![^\W\d_])")
# Characters HL7 MSH-18 may declare that a Latin-1 reading gets right
_LATIN1_CHARSETS = {"", "ASCII", "ISO IR6", "8859/1", "ISO IR100", "ISO-8859-1", "LATIN1", "WINDOWS-1252", "CP1252"}
# Code pages a name known from the DICOM header is looked for in, in a report read as Latin-1
_LEGACY_CODECS = ("cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "iso8859_2",
                  "iso8859_5", "iso8859_7", "koi8_r", "gb18030", "big5", "shift_jis", "euc_kr", "euc_jp")


def _non_latin_words(text: str) -> bool:
    return _ALL_HIGH_WORD.search(text) is not None


def _declared_legacy(doc: "ReportDoc") -> bool:
    """An HL7 message whose MSH-18 declares a character set Latin-1 does not read."""
    return doc.kind == "hl7" and doc.charset not in _LATIN1_CHARSETS


def _known_name_in_legacy_bytes(doc: "ReportDoc", known: KnownIdentifiers | None) -> bool:
    """A report read as Latin-1 whose bytes hold a known name written in another code page."""
    if known is None or doc.encoding != "latin-1" or not doc.raw:
        return False
    parts = {w for raw in known.person_names for w in re.split(r"[\s^,=]+", raw or "") if len(w) >= 3}
    for w in parts:
        try:
            w.encode("latin-1")
            continue  # Latin-1 reads it right
        except UnicodeEncodeError:
            pass
        for codec in _LEGACY_CODECS:
            for form in {w, w.upper(), w.capitalize()}:
                try:
                    if form.encode(codec) in doc.raw:
                        return True
                except UnicodeEncodeError:
                    break
    return False


# markup formats that are not plain text: exported raw they would keep names hidden in escapes,
# entities or tags
_MARKUP_START = re.compile(r"[\ufeff\s]*(?:\{\\rtf|<\?xml|<ClinicalDocument|<html|<!DOCTYPE|<\w+:ClinicalDocument)", re.I)
_MARKUP_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>")
_MARKUP_ENTITY = re.compile(r"&(?:#\d+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]{1,10});")
_RTF_ESCAPE = re.compile(r"\\(?:'[0-9a-fA-F]{2}|u-?\d+|par\b|pard\b|fonttbl\b|rtf\d)")


def _looks_like_markup(text: str) -> bool:
    if _MARKUP_START.match(text):
        return True
    if len(_MARKUP_TAG.findall(text)) >= 2 or _MARKUP_ENTITY.search(text):
        return True
    return len(_RTF_ESCAPE.findall(text)) >= 2


# HL7 segment lines: MSH with its encoding characters (parsable), or any segment id followed by a
# non-alphanumeric field separator that occurs again in the line
_MSH_LINE = re.compile(r"^[\s\x0b\ufeff]*MSH(?P<fs>[^\w\s])(?P<enc>[^\w\s]{1,5})(?P=fs)", re.M)
_MSH_ANY = re.compile(r"^[\s\x0b\ufeff]*MSH[^\w\s]", re.M)
_MSH_SEGMENT = re.compile(r"(?:^|[\r\n])[\s\x0b\ufeff]*MSH[^\w\s]")  # after any segment terminator
_SEG_LINE = re.compile(
    r"^[\s\x0b\ufeff]*(?:MSH|PID|PV[12]|OBR|OBX|NK1|ORC|NTE|PD1|TXA|EVN|MSA|FHS|BHS|BTS|FTS|ZDS|AL1|DG1|IN1|GT1|"
    r"MRG|SPM|TQ1|ROL|PRT|Z[A-Z0-9]{2})(?P<fs>[^\w\s:.,;()\-])[^\r\n]*(?P=fs)", re.M)


def _decode_head(head: bytes) -> str | None:
    if head.startswith(_UTF16_BOMS):
        try:
            return head[: len(head) - (len(head) % 2)].decode("utf-16", errors="strict")
        except UnicodeDecodeError:
            return None
    if b"\x00" in head:
        return None
    h = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    for cut in range(0, 4):  # the head may end inside a multi-byte character
        try:
            return h[: len(h) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return h.decode("latin-1")


def sniff_report(head: bytes) -> str | None:
    """"hl7", "text" or None (DICOM, binary, or text that does not look like a report)."""
    if not head:
        return None
    try:
        if len(head) >= 132 and head[128:132] == b"DICM":
            return None
        if head.lstrip()[:5] in (b"%PDF-", b"PK\x03\x04", b"\x89PNG", b"GIF89", b"GIF87") or head[:2] == b"\xff\xd8":
            return None
        stripped = _strip_lead(head)
        if stripped.startswith(b"MSH|") or (stripped[:3] in (b"FHS", b"BHS") and b"MSH|" in stripped[:2048]):
            return "hl7"
        text = _decode_head(head)
        if text is None:
            return None
        if text.lstrip("\ufeff \t\r\n\x0b").startswith("MSH|") or _MSH_LINE.search(text[:8192]):
            return "hl7"
        sample = text[:8192]
        if not sample.strip():
            return None
        printable = sum(1 for c in sample if c.isprintable() or c in "\r\n\t\f")
        if printable / len(sample) < 0.95:
            return None
        # C1 control characters are a strong sign of Latin-1-decoded binary
        if sum(1 for c in sample if "\x80" <= c <= "\x9f") > 2:
            return None
        return "text" if _KEYWORDS.search(sample) else None
    except Exception:  # pragma: no cover - never fail discovery
        log.debug("sniff_report failed", exc_info=True)
        return None


# --------------------------------------------------------------------------- HL7 helpers


class _Delims:
    def __init__(self, fs: str = "|", enc: str = "^~\\&"):
        self.fs = fs
        enc = (enc or "") + "^~\\&"[len(enc or ""):]
        self.comp, self.rep, self.esc, self.sub = enc[0], enc[1], enc[2], enc[3]

    def unescape(self, s: str) -> str:
        if not s or self.esc not in s:
            return s
        e = re.escape(self.esc)

        def rep(m: re.Match) -> str:
            code = m.group(1)
            table = {"F": self.fs, "S": self.comp, "T": self.sub, "R": self.rep, "E": self.esc}
            if code in table:
                return table[code]
            if code == ".br" or code.startswith(".sp"):
                return "\n"
            if code.startswith("X") and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", code):
                try:
                    return bytes.fromhex(code[1:]).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    return bytes.fromhex(code[1:]).decode("latin-1")
            return ""

        return re.sub(rf"{e}([^{e}]{{1,32}}){e}", rep, s)

    def escape(self, s: str) -> str:
        if not s:
            return s
        out = s.replace(self.esc, f"{self.esc}E{self.esc}")
        out = out.replace(self.fs, f"{self.esc}F{self.esc}").replace(self.comp, f"{self.esc}S{self.esc}")
        out = out.replace(self.rep, f"{self.esc}R{self.esc}").replace(self.sub, f"{self.esc}T{self.esc}")
        out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{self.esc}.br{self.esc}")
        return out


class _Seg:
    """One segment; ``f(n)`` is field n in HL7 numbering (MSH-1 is the field separator)."""

    def __init__(self, line: str, d: _Delims):
        self.d = d
        self.name = line[:3]
        self.fields = line.split(d.fs)
        self.is_msh = self.name == "MSH"

    def idx(self, n: int) -> int:
        return n - 1 if self.is_msh else n

    def f(self, n: int) -> str:
        i = self.idx(n)
        return self.fields[i] if 0 <= i < len(self.fields) else ""

    def set(self, n: int, v: str):
        i = self.idx(n)
        if i < len(self.fields):
            self.fields[i] = v

    def numbers(self) -> list[int]:
        start = 3 if self.is_msh else 1
        off = 1 if self.is_msh else 0
        return [i + off for i in range(start - off, len(self.fields))]

    def render(self) -> str:
        # drop trailing empty fields (keeps MSH-1/MSH-2)
        f = list(self.fields)
        keep = 2 if self.is_msh else 1
        while len(f) > keep and f[-1] == "":
            f.pop()
        return self.d.fs.join(f)


def _split_hl7(text: str) -> tuple[list[str], str]:
    m = re.search(r"\r\n|\r|\n", text)
    term = m.group() if m else "\r"
    lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
    return lines, term


def _strip_mllp(text: str) -> tuple[str, str, str]:
    pre = post = ""
    t = text
    lead = re.match(r"^[\ufeff\s\x0b]*", t)
    if lead and "\x0b" in lead.group():
        pre = "\x0b"
    t = t[lead.end():] if lead else t
    tail = re.search(r"[\x1c\s]*$", t)
    if tail and "\x1c" in tail.group():
        post = "\x1c\r"
    t = t[: tail.start()] if tail else t
    return t, pre, post


def _hl7_body(text: str) -> tuple[str, str, str]:
    """MLLP framing removed and any lines before the first MSH segment dropped."""
    body, pre, post = _strip_mllp(text)
    m = _MSH_LINE.search(body)
    if m and m.start() > 0 and not body.lstrip("\ufeff \t\r\n\x0b")[:3] in ("FHS", "BHS"):
        body = body[m.start():].lstrip("\ufeff \t\r\n\x0b")
    return body, pre, post


def _delims_for(lines: list[str]) -> _Delims:
    for ln in lines:
        if ln.startswith("MSH") and len(ln) >= 4 and not ln[3].isalnum() and not ln[3].isspace():
            fs = ln[3]
            enc = ln[4:].split(fs, 1)[0]
            return _Delims(fs, enc)
    return _Delims()


def _reps(d: _Delims, v: str) -> list[str]:
    return v.split(d.rep) if v else []


def _comps(d: _Delims, v: str) -> list[str]:
    return v.split(d.comp)


def _first_sub(d: _Delims, v: str) -> str:
    return v.split(d.sub)[0]


def _xpn_to_pn(d: _Delims, rep: str) -> str:
    c = _comps(d, rep) + ["", "", ""]
    fam, given, mid = d.unescape(_first_sub(d, c[0])), d.unescape(c[1]), d.unescape(c[2])
    return "^".join([fam, given, mid]).rstrip("^").strip()


def _xpn_names(d: _Delims, rep: str) -> list[str]:
    """XPN -> "FAMILY^GIVEN^MIDDLE", plus the own and partner surnames of FN (FN.3, FN.5)."""
    out = [_xpn_to_pn(d, rep)]
    c = _comps(d, rep) + ["", ""]
    subs = c[0].split(d.sub)
    for k in (2, 4):
        if k < len(subs) and subs[k].strip():
            out.append("^".join([d.unescape(subs[k]), d.unescape(c[1])]).rstrip("^").strip())
    return [x for x in out if x]


def _xcn_to_pn(d: _Delims, rep: str) -> str:
    """XCN (id^family^given^middle...) or NDL (id&family&given... in component 1, then start/end
    times, point of care...) -> "FAMILY^GIVEN"."""
    c = _comps(d, rep)
    if d.sub in c[0]:
        c = c[0].split(d.sub)
    c = c + ["", "", "", ""]
    fam, given, mid = d.unescape(_first_sub(d, c[1])), d.unescape(c[2]), d.unescape(c[3])
    if not fam and not given and c[0] and not any(ch.isdigit() for ch in c[0]):
        return d.unescape(c[0])  # free-text name in component 1
    return "^".join([fam, given, mid]).rstrip("^").strip()


def _ymd(v: str) -> str:
    digits = re.match(r"\d{8}", (v or "").strip())
    return digits.group() if digits else ""


_UID_IN_TEXT = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d*)){3,}(?![\w]|\.\d)")
_TEXT_VALUE_TYPES = {"TX", "FT", "ST"}


def _add(lst: list[str], v: str):
    v = (v or "").strip()
    if v and v not in lst:
        lst.append(v)


# --------------------------------------------------------------------------- text cues

_ACC_CUE = re.compile(
    r"(?<![\w])(?:accession|acc)\.?\s*(?:no\.?|number|num|nr\.?|#)?\s*[:#=]?\s*"
    r"(?P<v>[A-Za-z0-9]*\d[A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)", re.I)
_PID_CUE = re.compile(
    r"(?<![\w])(?:MRN|MR\s*#|MR\s*No\.?|Med(?:ical)?\.?\s*Rec(?:ord)?\.?\s*(?:No\.?|Number|#)?|"
    r"Patient\s*ID|Pat(?:ient)?\.?\s*(?:No\.?|Nr\.?|#)|PID|Pt\s*ID)\s*[:#=]?\s*"
    r"(?P<v>[A-Za-z0-9]*\d[A-Za-z0-9]*(?:[-./][A-Za-z0-9]+)*)", re.I)
_NAME_CUE = re.compile(
    r"(?<![\w])(?:patient\s+name|pt\.?\s+name|patient|name|nom|patientenname|patient\(in\))\s*:[ \t]*"
    r"(?P<v>[^\n\r\t|:;]+)", re.I)
_NAME_STOP = re.compile(
    r"\s{2,}|\s+(?:MRN|DOB|D\.O\.B|ID|Sex|Age|Acc|Accession|Date|Exam|Study|Gender|Birth|Geb|PID)\b", re.I)
_EXAM_DATE_CUE = re.compile(
    r"(?<![\w])(?:exam(?:ination)?\s+date|date\s+of\s+(?:exam(?:ination)?|service|study|procedure)|"
    r"study\s+date|procedure\s+date|DOS|service\s+date|date\s+of\s+scan|scan\s+date|"
    r"untersuchungsdatum|date\s+de\s+l'examen|date\s+d'examen|exam\s+date/time)\s*[:#=]?\s*", re.I)
_DOB_CUE = re.compile(rf"(?<![\w]){BIRTH_CUE}\s*[:#=]?\s*", re.I)
_FN_ACC = re.compile(r"(?i)(?:^|[_\-. ])(?:acc(?:ession)?|an)[-_ #]?(?P<v>[A-Z0-9]*\d{3,}[A-Z0-9]*)")
_FN_PLAIN = re.compile(r"(?i)^(?P<v>[A-Z]{0,4}\d{5,})(?:[_\-. ].*)?$")


def _name_to_pn(raw: str) -> str:
    v = _NAME_STOP.split(raw.strip(), maxsplit=1)[0].strip(" ,.-")
    v = re.sub(r"\s+", " ", v)
    if not v or len(v) > 80:
        return ""
    if "^" in v:
        return v.upper()
    toks = re.findall(r"[^\W\d_][\w'\u2019-]*\.?", v)
    if not toks or any(t.rstrip(".").lower() in NEVER_NAME for t in toks if len(t.rstrip(".")) > 1):
        return ""
    if "," in v:
        fam, _, rest = v.partition(",")
        rw = rest.split()
        parts = [fam.strip(), rw[0] if rw else "", " ".join(rw[1:])]
    else:
        ws = v.split()
        if len(ws) == 1:
            parts = [ws[0]]
        else:
            parts = [ws[-1], ws[0], " ".join(ws[1:-1])]
    return "^".join(p.strip(". ") for p in parts).rstrip("^").upper()


def _date_after(text: str, pos: int) -> str:
    window = text[pos:pos + 40]
    for s, _e, d in find_dates(window):
        if s <= 3:
            return d.strftime("%Y%m%d")
        break
    return ""


def _extract_from_text(doc: ReportDoc, text: str):
    for m in _ACC_CUE.finditer(text):
        _add(doc.accession_numbers, m.group("v"))
    for m in _PID_CUE.finditer(text):
        _add(doc.patient_ids, m.group("v"))
    for m in _UID_IN_TEXT.finditer(text):
        if len(m.group()) >= 10 and m.group().count(".") >= 4:
            _add(doc.study_uids, m.group())
    for m in _NAME_CUE.finditer(text):
        pn = _name_to_pn(m.group("v"))
        if pn:
            _add(doc.patient_names, pn)
    for m in _EXAM_DATE_CUE.finditer(text):
        _add(doc.exam_dates, _date_after(text, m.end()))
    for m in _DOB_CUE.finditer(text):
        _add(doc.birth_dates, _date_after(text, m.end()))


def _extract_from_filename(doc: ReportDoc, filename: str):
    if not filename:
        return
    base = os.path.basename(filename.replace("\\", "/"))
    stem = base
    while True:
        s2, ext = os.path.splitext(stem)
        if ext.lower() in (".txt", ".hl7", ".rtf", ".text", ".rpt", ".msg", ".report", ".gz", ".doc"):
            stem = s2
        else:
            break
    for m in _UID_IN_TEXT.finditer(stem):
        if m.group().count(".") >= 3:
            _add(doc.study_uids, m.group())
    if _UID_IN_TEXT.fullmatch(stem):
        return
    m = _FN_ACC.search(stem)
    if m:
        whole = re.match(r"[A-Za-z0-9#-]+", stem[m.start():].lstrip("_-. "))
        if whole and whole.group() != m.group("v"):
            _add(doc.accession_numbers, whole.group())
        _add(doc.accession_numbers, m.group("v"))
        return
    m = _FN_PLAIN.match(stem)
    if m:
        _add(doc.accession_numbers, m.group("v"))


# --------------------------------------------------------------------------- parsing

def _hl7_text_units(segs: list[_Seg], d: _Delims, include_nte: bool) -> list[tuple[int, int, int, int]]:
    """Positions (segment, field, repetition, component) of free-text leaves, in document order."""
    units = []
    for si, s in enumerate(segs):
        if s.name == "OBX":
            vt = _comps(d, s.f(2))[0].strip().upper()
            if vt in _TEXT_VALUE_TYPES or vt == "":
                for ri, rep in enumerate(s.f(5).split(d.rep)):
                    for ci, _c in enumerate(rep.split(d.comp)):
                        units.append((si, 5, ri, ci))
        elif include_nte and s.name == "NTE":
            for ri, rep in enumerate(s.f(3).split(d.rep)):
                for ci, _c in enumerate(rep.split(d.comp)):
                    units.append((si, 3, ri, ci))
    return units


def _unit_get(segs, d, u) -> str:
    si, fn, ri, ci = u
    reps = segs[si].f(fn).split(d.rep)
    return d.unescape(reps[ri].split(d.comp)[ci])


def _parse_hl7(text: str, raw: bytes, codec: str) -> ReportDoc:
    body, _pre, _post = _hl7_body(text)
    lines, _term = _split_hl7(body)
    d = _delims_for(lines)
    segs = [_Seg(ln, d) for ln in lines]
    doc = ReportDoc(kind="hl7", text="", raw=raw, encoding=codec)
    for s in segs:
        if s.name == "MSH":
            for n in (4, 6):
                _add(doc.institutions, d.unescape(_comps(d, s.f(n))[0]))
            doc.charset = doc.charset or (_reps(d, s.f(18)) or [""])[0].strip().upper()
        elif s.name == "PID":
            for n in (2, 3, 4):
                for rep in _reps(d, s.f(n)):
                    _add(doc.patient_ids, d.unescape(_comps(d, rep)[0]))
            for n in (18, 19, 20):
                for rep in _reps(d, s.f(n)):
                    _add(doc.other_ids, d.unescape(_comps(d, rep)[0]))
            for rep in _reps(d, s.f(5)):
                names = _xpn_names(d, rep)
                _add(doc.patient_names, names[0] if names else "")
                for nm in names[1:]:
                    _add(doc.other_names, nm)
            for n in (6, 9):
                for rep in _reps(d, s.f(n)):
                    for nm in _xpn_names(d, rep):
                        _add(doc.other_names, nm)
            _add(doc.birth_dates, _ymd(_comps(d, s.f(7))[0]))
            for rep in _reps(d, s.f(11)):
                c = [d.unescape(x) for x in _comps(d, rep)] + [""] * 6
                _add(doc.addresses, "^".join(x for x in (c[0], c[1], c[2], c[3], c[4]) if x))
            for n in (13, 14):
                for rep in _reps(d, s.f(n)):
                    c = _comps(d, rep) + [""] * 12
                    num = c[0] or "".join(x for x in (c[5], c[6]) if x)
                    _add(doc.phones, d.unescape(num))
        elif s.name == "PV1":
            for n in (7, 8, 9, 17, 52):
                for rep in _reps(d, s.f(n)):
                    _add(doc.other_names, _xcn_to_pn(d, rep))
            for n in (5, 19, 50):
                for rep in _reps(d, s.f(n)):
                    _add(doc.other_ids, d.unescape(_comps(d, rep)[0]))
        elif s.name in ("ORC", "OBR"):
            for n in (2, 3):
                for rep in _reps(d, s.f(n)):
                    _add(doc.accession_numbers, d.unescape(_comps(d, rep)[0]))
            if s.name == "ORC":
                for n in (10, 11, 12, 19):
                    for rep in _reps(d, s.f(n)):
                        _add(doc.other_names, _xcn_to_pn(d, rep))
                _add(doc.institutions, d.unescape(_comps(d, s.f(21))[0]))
            else:
                for n in (10, 16, 28, 32, 33, 34, 35):
                    for rep in _reps(d, s.f(n)):
                        _add(doc.other_names, _xcn_to_pn(d, rep))
                for n in (18, 19, 20, 21):
                    for rep in _reps(d, s.f(n)):
                        _add(doc.other_ids, d.unescape(_comps(d, rep)[0]))
                for n in (7, 22):
                    _add(doc.exam_dates, _ymd(_comps(d, s.f(n))[0]))
        elif s.name == "OBX":
            for n in (16, 25):
                for rep in _reps(d, s.f(n)):
                    _add(doc.other_names, _xcn_to_pn(d, rep))
            _add(doc.institutions, d.unescape(_comps(d, s.f(23))[0]))
        elif s.name == "NK1":  # next of kin: names, contact person, address, phones
            for n in (2, 30):
                for rep in _reps(d, s.f(n)):
                    for nm in _xpn_names(d, rep):
                        _add(doc.other_names, nm)
            for n in (4, 32):
                for rep in _reps(d, s.f(n)):
                    c = [d.unescape(x) for x in _comps(d, rep)] + [""] * 6
                    _add(doc.addresses, "^".join(x for x in (c[0], c[1], c[2], c[3], c[4]) if x))
            for n in (5, 6, 31):
                for rep in _reps(d, s.f(n)):
                    c = _comps(d, rep) + [""] * 12
                    _add(doc.phones, d.unescape(c[0] or "".join(x for x in (c[5], c[6]) if x)))
            _add(doc.institutions, d.unescape(_comps(d, s.f(13))[0]))
        elif s.name == "PD1":  # primary facility, primary care provider
            for rep in _reps(d, s.f(3)):
                _add(doc.institutions, d.unescape(_comps(d, rep)[0]))
            for rep in _reps(d, s.f(4)):
                _add(doc.other_names, _xcn_to_pn(d, rep))
        elif s.name == "TXA":  # document originator, transcriptionist, authenticators...
            for n in (5, 9, 10, 11, 22, 23):
                for rep in _reps(d, s.f(n)):
                    _add(doc.other_names, _xcn_to_pn(d, rep))
        elif s.name == "ZDS":
            _add(doc.study_uids, d.unescape(_comps(d, s.f(1))[0]))
    for m in _UID_IN_TEXT.finditer(body):
        if m.group().count(".") >= 4 and len(m.group()) >= 10:
            _add(doc.study_uids, m.group())
    units = _hl7_text_units(segs, d, include_nte=False)
    doc.text = "\n".join(_unit_get(segs, d, u) for u in units)
    _extract_from_text(doc, doc.text)
    return doc


def parse_report(data: bytes, filename: str = "") -> ReportDoc:
    """Parse a report file (HL7 v2 or plain text); ``filename`` may carry an accession or UID."""
    data = bytes(data or b"")
    text, codec = _decode(data)
    if (sniff_report(data[:4096]) == "hl7" or text.lstrip("\ufeff \t\r\n\x0b").startswith("MSH|")
            or _MSH_LINE.search(text)):
        doc = _parse_hl7(text, data, codec)
        if len(_MSH_SEGMENT.findall(text)) > 1:
            doc.reject = HL7_BATCH  # only the first message would be paired and scrubbed as the study's
        if not doc.reject and _looks_like_markup(doc.text):
            doc.reject = UNSUPPORTED_FORMAT  # RTF or HTML inside OBX-5: names hidden in escapes and tags
    else:
        doc = ReportDoc(kind="text", text=text.lstrip("\ufeff"), raw=data, encoding=codec)
        _extract_from_text(doc, doc.text)
        if _MSH_ANY.search(text) or _SEG_LINE.search(text):
            doc.reject = UNPARSED_HL7  # HL7 segments the parser did not take: never cleaned as prose
        elif _looks_like_markup(text):
            doc.reject = UNSUPPORTED_FORMAT
    if not doc.reject and _mixed_encoding(data):
        doc.reject = MIXED_ENCODING
    if not doc.reject and codec == "latin-1" and (_non_latin_words(text) or _declared_legacy(doc)):
        doc.reject = LEGACY_ENCODING
    _extract_from_filename(doc, filename)
    return doc


# --------------------------------------------------------------------------- scrubbing


def known_for_doc(doc: ReportDoc, known: KnownIdentifiers | None) -> KnownIdentifiers:
    """``known`` (from the DICOM study) plus everything the report itself reveals."""
    own = KnownIdentifiers(
        person_names=list(doc.patient_names) + list(doc.other_names),
        ids=list(doc.patient_ids) + list(doc.accession_numbers) + list(doc.other_ids),
        dates=list(doc.birth_dates),
        addresses=list(doc.addresses),
        phones=list(doc.phones),
        institutions=list(doc.institutions),
    )
    base = known if known is not None else KnownIdentifiers()
    return base.merged(own)


# field handlers per segment (HL7 numbering); unlisted non-empty fields are cleared
_KEEP, _ID, _NAME, _DATE, _DOB, _TEXT, _CODED, _ADDR, _PHONE, _INST, _VALUE = (
    "keep", "id", "name", "date", "dob", "text", "coded", "addr", "phone", "inst", "value")
_RULES: dict[str, dict[int, str]] = {
    "MSH": {3: _INST, 4: _INST, 5: _INST, 6: _INST, 7: _DATE, 9: _KEEP, 10: _ID, 11: _KEEP, 12: _KEEP,
            13: _KEEP, 14: _KEEP, 15: _KEEP, 16: _KEEP, 17: _KEEP, 18: _KEEP, 19: _KEEP, 20: _KEEP, 21: _CODED,
            22: _INST, 23: _INST},
    "PID": {1: _KEEP, 2: _ID, 3: _ID, 4: _ID, 5: _NAME, 6: _NAME, 7: _DOB, 8: _KEEP, 9: _NAME, 10: _KEEP,
            11: _ADDR, 13: _PHONE, 14: _PHONE, 15: _KEEP, 16: _KEEP, 17: _KEEP, 18: _ID, 19: _ID, 20: _ID,
            21: _ID, 22: _KEEP, 24: _KEEP, 25: _KEEP, 27: _KEEP, 28: _KEEP, 29: _DATE, 30: _KEEP},
    "PV1": {1: _KEEP, 2: _KEEP, 4: _KEEP, 5: _ID, 7: _NAME, 8: _NAME, 9: _NAME, 10: _KEEP, 14: _KEEP,
            15: _KEEP, 16: _KEEP, 17: _NAME, 18: _KEEP, 19: _ID, 36: _KEEP, 41: _KEEP, 44: _DATE, 45: _DATE,
            50: _ID, 52: _NAME},
    "ORC": {1: _KEEP, 2: _ID, 3: _ID, 4: _ID, 5: _KEEP, 6: _KEEP, 9: _DATE, 10: _NAME, 11: _NAME, 12: _NAME,
            14: _PHONE, 15: _DATE, 16: _CODED, 17: _INST, 19: _NAME, 21: _INST, 22: _ADDR, 23: _PHONE,
            24: _ADDR},
    "OBR": {1: _KEEP, 2: _ID, 3: _ID, 4: _CODED, 5: _KEEP, 6: _DATE, 7: _DATE, 8: _DATE, 9: _KEEP,
            10: _NAME, 11: _KEEP, 12: _CODED, 13: _TEXT, 14: _DATE, 15: _KEEP, 16: _NAME, 17: _PHONE, 18: _ID,
            19: _ID, 20: _ID, 21: _ID, 22: _DATE, 24: _KEEP, 25: _KEEP, 28: _NAME, 30: _KEEP, 31: _CODED,
            32: _NAME, 33: _NAME, 34: _NAME, 35: _NAME, 36: _DATE, 37: _KEEP, 44: _CODED, 45: _CODED},
    "OBX": {1: _KEEP, 2: _KEEP, 3: _CODED, 4: _KEEP, 5: _VALUE, 6: _KEEP, 7: _KEEP, 8: _KEEP, 9: _KEEP,
            10: _KEEP, 11: _KEEP, 12: _DATE, 14: _DATE, 16: _NAME, 17: _KEEP, 19: _DATE, 23: _INST, 24: _ADDR,
            25: _NAME},
    "NTE": {1: _KEEP, 2: _KEEP, 3: _VALUE, 4: _CODED},
}


class _HL7Scrubber:
    def __init__(self, d: _Delims, known: KnownIdentifiers, shift: int | None):
        self.d = d
        self.known = known
        self.shift = shift
        self.look = replacement_lookup(known)
        self.tokens = known_tokens(known)

    def _map_leaves(self, v: str, fn) -> str:
        d = self.d
        return d.rep.join(
            d.comp.join(d.sub.join(d.escape(fn(d.unescape(sc))) if sc else sc for sc in c.split(d.sub))
                        for c in r.split(d.comp))
            for r in v.split(d.rep))

    def date(self, v: str, dob: bool = False) -> str:
        d = self.d
        out_reps = []
        for rep in v.split(d.rep):
            comps = rep.split(d.comp)
            c0 = comps[0].strip()
            if not c0:
                out_reps.append(rep)
                continue
            if dob:
                new = ""  # a birth date is removed, never shifted (as Patient's Birth Date in the DICOM)
            elif self.shift is not None:
                new = shift_da(c0, self.shift) if len(c0) >= 8 else c0[:4]
            else:
                new = c0[:4]
            if not new:
                out_reps.append("")
                continue
            comps[0] = new
            out_reps.append(d.comp.join(comps[:2] if len(comps) > 1 else comps))
        return d.rep.join(out_reps).strip(d.rep)

    def ident(self, v: str, seg: str, n: int) -> str:
        d = self.d
        out = []
        for rep in v.split(d.rep):
            comps = rep.split(d.comp)
            orig = d.unescape(comps[0]).strip()
            if not orig:
                out.append("")
                continue
            new = self.look(orig) or "[ID]"
            keep_type = seg == "PID" and n in (2, 3, 4) and len(comps) > 4 and comps[4]
            parts = [d.escape(new)] + ([""] * 3 + [comps[4]] if keep_type else [])
            out.append(d.comp.join(parts))
        return d.rep.join(out)

    def text(self, v: str) -> str:
        def one(x: str) -> str:
            out = clean_text(x, self.known, self.shift)
            return "[REDACTED]" if mentions_known(out, self.known, self.tokens) else out
        return self._map_leaves(v, one)

    def leaf(self, x: str) -> str:
        """One unescaped component of a coded/structured field: a pure code that holds no known
        identifier is kept; a known id becomes its pseudonym (or [ID]); anything else is cleaned,
        and replaced whole if a known identifier survives the cleaning."""
        x = strip_invisible(x)
        if not x.strip():
            return x
        known_hit = mentions_known(x, self.known, self.tokens) or mentions_known_details(x, self.known)
        if not known_hit and re.fullmatch(r"[\w.\-]+", x):
            return x
        if known_hit and re.fullmatch(r"[\w.\-/ ]+", x.strip()) and any(ch.isdigit() for ch in x):
            new = self.look(x.strip())
            if new:
                return new
        out = clean_text(x, self.known, self.shift)
        if mentions_known(out, self.known, self.tokens) or mentions_known_details(out, self.known):
            return "[REDACTED]"  # a known identifier (a name, ID, birth date, institution word) survived
        return out

    def coded(self, v: str) -> str:
        """CE/CWE/CNE/HD... : every component and subcomponent (code, text, coding system,
        alternate code/text, original text) goes through :meth:`leaf`."""
        return self._map_leaves(v, self.leaf)

    _NUMERIC = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
    _TIME = re.compile(r"\s*(?:[01]\d|2[0-3])(?:[0-5]\d(?:[0-5]\d(?:\.\d{1,4})?)?)?(?:[+-]\d{4})?\s*")
    _SN_COMP = re.compile(r"\s*(?:>|<|>=|<=|=|<>|-|\+|/|\.|:)?\s*")

    def _typed_ok(self, vt: str, v: str) -> bool:
        """Is OBX-5 really of its numeric/coded type (and free of known identifiers)?"""
        d = self.d
        if mentions_known(d.unescape(v), self.known, self.tokens):
            return False
        for r in v.split(d.rep):
            comps = r.split(d.comp)
            if vt == "NM" and not (len(comps) == 1 and self._NUMERIC.fullmatch(r)):
                return False
            if vt == "NA" and not all(self._NUMERIC.fullmatch(c) or not c for c in comps):
                return False
            if vt == "TM" and not (len(comps) == 1 and self._TIME.fullmatch(r)):
                return False
            if vt in ("ID", "IS") and not (len(comps) == 1 and re.fullmatch(r"[\w.\-]*", r)):
                return False
            if vt == "SN":
                if len(comps) > 4:
                    return False
                for k, c in enumerate(comps):
                    ok = self._NUMERIC.fullmatch(c) if k in (1, 3) else self._SN_COMP.fullmatch(c)
                    if c and not ok:
                        return False
        return True

    def value(self, seg: _Seg, v: str) -> str:
        if not v:
            return v
        vt = _comps(self.d, seg.f(2))[0].strip().upper() if seg.name == "OBX" else "TX"
        if vt in ("NM", "SN", "NA", "ID", "IS", "TM"):
            return v if self._typed_ok(vt, v) else self.text(v)
        if vt in ("DT", "DTM", "TS"):
            return self.date(v)
        if vt in ("CE", "CWE", "CNE", "CF"):
            return self.coded(v)
        if vt in ("ED", "RP", "MA", "AD", "XAD", "XPN", "XCN", "CX", "PN", "TN", "XTN"):
            return {"XPN": "[NAME]", "XCN": "[NAME]", "PN": "[NAME]", "XAD": "[ADDRESS]", "AD": "[ADDRESS]",
                    "TN": "[PHONE]", "XTN": "[PHONE]", "CX": "[ID]"}.get(vt, "")
        return self.text(v)

    def segment(self, seg: _Seg, done: dict[int, str] | None = None) -> _Seg:
        """Apply the field rules; ``done`` holds fields already cleaned (field number -> value)."""
        rules = _RULES[seg.name]
        done = done or {}
        for n in seg.numbers():
            v = seg.f(n)
            if n in done:
                seg.set(n, done[n])
                continue
            if v == "":
                continue
            rule = rules.get(n)
            if rule == _KEEP:
                continue
            if rule == _ID:
                seg.set(n, self.ident(v, seg.name, n))
            elif rule == _NAME:
                seg.set(n, "[NAME]")
            elif rule == _DATE:
                seg.set(n, self.date(v))
            elif rule == _DOB:
                seg.set(n, self.date(v, dob=True))
            elif rule == _TEXT:
                seg.set(n, self.text(v))
            elif rule == _CODED:
                seg.set(n, self.coded(v))
            elif rule == _ADDR:
                seg.set(n, "[ADDRESS]")
            elif rule == _PHONE:
                seg.set(n, "[PHONE]")
            elif rule == _INST:
                seg.set(n, "[INSTITUTION]")
            elif rule == _VALUE:
                seg.set(n, self.value(seg, v))
            else:
                seg.set(n, "")
        return seg


def _scrub_hl7(doc: ReportDoc, known: KnownIdentifiers, shift: int | None) -> bytes:
    text, codec = _decode(doc.raw) if doc.raw else (doc.text, "utf-8")
    body, pre, post = _hl7_body(text)
    lines, term = _split_hl7(body)
    d = _delims_for(lines)
    segs = [_Seg(ln, d) for ln in lines if ln[:3] in _RULES]
    sc = _HL7Scrubber(d, known, shift)

    # Clean all report text (OBX-5 text + NTE-3) in one pass so context crosses lines.
    units = _hl7_text_units(segs, d, include_nte=True)
    leaves = [_unit_get(segs, d, u) for u in units]
    joined = "\n".join(leaves)
    cleaned = clean_text(joined, known, shift) if joined.strip() else joined
    if cleaned.count("\n") == joined.count("\n"):
        lines_out = cleaned.split("\n")
        new_leaves, k = [], 0
        for leaf in leaves:
            n = leaf.count("\n") + 1
            new_leaves.append("\n".join(lines_out[k:k + n]))
            k += n
    else:  # a replacement swallowed a line break: clean leaf by leaf instead
        new_leaves = [clean_text(leaf, known, shift) for leaf in leaves]
    by_field: dict[tuple[int, int], list[list[str]]] = {}
    for u, new in zip(units, new_leaves):
        si, fn, ri, ci = u
        grid = by_field.setdefault((si, fn), [r.split(d.comp) for r in segs[si].f(fn).split(d.rep)])
        grid[ri][ci] = d.escape(new)

    out_lines = []
    for si, seg in enumerate(segs):
        done = {fn: d.rep.join(d.comp.join(c) for c in grid) for (sj, fn), grid in by_field.items() if sj == si}
        out_lines.append(sc.segment(seg, done).render())
    return (pre + term.join(out_lines) + term + post).encode(codec if codec != "utf-16" else "utf-8",
                                                             errors="replace")


def scrub_report(doc: ReportDoc, known: KnownIdentifiers, date_shift_days: int | None) -> bytes:
    """De-identified report bytes: UTF-8 text, or an HL7 message with the original delimiters.

    Raises :class:`ReportRejected` for a report that cannot be scrubbed reliably (its ``reason`` is
    a quarantine code of :data:`REPORT_REASONS`)."""
    if doc.reject:
        raise ReportRejected(doc.reject)
    if _known_name_in_legacy_bytes(doc, known):
        raise ReportRejected(LEGACY_ENCODING)
    k = known_for_doc(doc, known)
    if doc.kind == "hl7":
        try:
            return _scrub_hl7(doc, k, date_shift_days)
        except Exception:  # noqa: BLE001 - a message we cannot rebuild is not exported
            log.warning("HL7 scrub failed; report quarantined")
            raise ReportRejected(UNPARSED_HL7) from None
    return clean_text(doc.text, k, date_shift_days).encode("utf-8")
