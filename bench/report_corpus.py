"""Synthetic radiology-report corpus and PHI recall/precision benchmark for medanon.textscrub.

Figures (``python bench/report_corpus.py``, n=250, seed=0; seeds 1-2 in brackets):

| metric                                                     | value                      |
|------------------------------------------------------------|----------------------------|
| recall, planted PHI in report text (2478 items)            | 0.992  [0.990, 0.988]      |
|   NAME (1002) / INSTITUTION (68)                           | 0.988 / 0.882              |
|   DATE, ID, PHONE, EMAIL, ADDRESS, URL, UID, IP, AGE>89    | 1.000                      |
|   lines held back from tuning (160 items)                  | 0.875  [0.856, 0.812]      |
| HL7 header PHI removed (451 field values)                  | 0.996  [0.998, 1.000]      |
| precision, replaced spans / replaced characters            | 1.000 / 1.000              |
| clinical phrases preserved (1128)                          | 1.000                      |
| false replacements, PHI-free clinical text dev / held-out  | 4 in 785 words / 0 in 311  |

Read these with care: the templates and the engine were written by the same person, so
the main-template figures are optimistic.  The held-back lines are the honest number for
unseen phrasings: names with no cue word ("texted to Xanthe", "Oisin: please call") and
institutions without a Hospital/Clinic/Center suffix ("Abernathy Diagnostics") are missed.
Precision is measured only against this corpus' clinical vocabulary.

Run:  python bench/report_corpus.py [n] [seed]

Every report is generated from one of 11 templates (CT, MR, X-ray, US, mammography,
addendum/critical result, ED preliminary read, nuclear medicine/PET letter, all-caps
legacy, German, and HL7 v2 ORU messages wrapping any of the text templates).  Each
planted PHI string is recorded with its position and kind.  Patient names, MRN,
accession, birth date and institution are also given as the ``KnownIdentifiers`` a
pipeline would have from the DICOM header; physicians, relatives, staff initials,
phones, e-mails, addresses and URLs are not.  About half of the names (and most of the
relatives and dictating physicians) come from the HELD-OUT lists below, which are
checked at import time to share no entry with the shipped name lists, so name-list
look-ups cannot inflate recall.

Metrics
* recall: a planted PHI item counts as removed only if every character of it lies
  inside a replaced span *and* its text no longer occurs in the output (token-level:
  "[NAME] Doe" is a miss for "John Doe").  HL7 header fields (PID/PV1/OBR...) are
  checked on the scrubbed message: the value, and each name token, must be gone.
* precision: replaced spans overlapping a planted PHI item / all replaced spans; also per
  character (replaced letters/digits that belong to planted PHI / all replaced ones), which
  catches spans that run past the PHI ("John Smith Med Rec" for "John Smith").
  Clinical phrases (eponyms, "White matter", measurements, codes...) that get altered
  are false positives by construction.
* phrases preserved: fraction of the must-remain clinical phrases found verbatim in the
  output.
"""

from __future__ import annotations

import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

# the checkout this script is in, even where another one is installed (editable) in the venv:
# comparing two checkouts must measure each one's engine
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medanon.textscrub import KnownIdentifiers, clean_text, find_phi_spans, _name_lists  # noqa: E402
from medanon.reports import known_for_doc, parse_report, scrub_report  # noqa: E402


# --------------------------------------------------------------------------- held-out names

_HELD_FIRST_RAW = """Thaddeus Ignatius Leopold Percival Cornelia Philippa Ottoline Evander Lysander Perpetua
Wilhelmina Augustin Bartholomew Cosmo Dorian Ezekiel Gideon Horatio Isidore Jolene Kasimir Leander
Marisela Nerissa Octavia Perla Quirino Rosalind Severin Tamsin Ulrich Valentin Xanthe Yannick Zephyrine
Anselm Benedikt Clementine Desdemona Eulalia Florentin Griselda Hildegard Ingeborg Ludovica Mirela
Orsolya Petronella Radomir Svetozar Teodora Uriel Vesna Wojciech Zdenka Bogdan Casimir Dagmar Elodie
Fleur Gwendolyn Hortense Iolanthe Jasminka Kunigunde Laszlo Mehmet Nuno Oktay Pramod Qasim Rustam
Sunniva Tiberius Ulla Vaclav Wenceslas Xiomara Yevgenia Zoltan Aurelio Baptiste Cyprien Domenico Eamon
Fintan Gaetan Hamish Ivo Jocelyn Kolya Lorcan Marit Niamh Oisin Padraig Ragnhild Saoirse Tadhg Ultan"""
_HELD_LAST_RAW = """Abernathy Castellanos Drummond Eriksdottir Featherstone Gallardo Hargreaves Iwasaki Jablonski
Kowalewska Lindqvist Mastroianni Nakashima Oyelaran Przybylski Quackenbush Rautenberg Szczepanik
Thistlewaite Umberger Vanterpool Wojtowicz Xenakis Zabrowski Achterberg Bergstrom Cavanaugh Dunleavy
Etxeberria Fairweather Gorczyca Haverkamp Ishiguro Kazantzakis Lachapelle Nightingale Oosterhuis
Pellegrino Quintanilla Stavropoulos Tolliver Uchida Wetherby Yilmaz Zielke Amundsen Bustamante
Cienfuegos Delacroix Echeverria Fitzsimmons Grzelak Hollingsworth Iturbe Jankauskas Kurosawa Lindgren
Marchbanks Nussbaum Okonjo Pemberton Radcliffe Trautmann Urquhart Vasconcelos Whitcombe Ximenez
Yearwood Zamfir Arbuthnot Bellweather Carmichael Dimitriou Ellingsen Fenwick Gundersen Halvorsen
Ingersoll Jovanovic Kaczmarek Lombardini Moncrieff Nordqvist Ostrowski Papadakis Rosenbaum Tadesse
Ueda Valdivia Wachowski Brzezinski Ravenscroft Oduya Szabo Kristjansson"""


def _held(raw: str, shipped: frozenset[str]) -> list[str]:
    out = []
    for w in raw.split():
        if w.casefold() not in shipped and w not in out:
            out.append(w)
    return out


_SHIP_FIRST, _SHIP_LAST = _name_lists()
HELD_FIRST = _held(_HELD_FIRST_RAW, _SHIP_FIRST | _SHIP_LAST)
HELD_LAST = _held(_HELD_LAST_RAW, _SHIP_FIRST | _SHIP_LAST)
assert not {w.casefold() for w in HELD_FIRST + HELD_LAST} & (_SHIP_FIRST | _SHIP_LAST)

# names from the shipped lists (realistic common names), picked from a fixed sample
SHIP_FIRST = ["James", "Mary", "Robert", "Patricia", "Michael", "Linda", "David", "Susan", "Carlos", "Maria",
              "Wei", "Yuki", "Priya", "Ahmed", "Olga", "Pierre", "Giulia", "Sven", "Fatima", "Kwame",
              "Jennifer", "Thomas", "Elena", "Hiroshi", "Ana", "Rajesh", "Claire", "Ivan", "Sofia", "Omar"]
SHIP_FIRST = [f for f in SHIP_FIRST if f.casefold() in _SHIP_FIRST]
SHIP_LAST = ["Johnson", "Garcia", "Nguyen", "Patel", "Kowalski", "Schneider", "Rossi", "Tanaka", "Okafor",
             "Hernandez", "Murphy", "Fischer", "Kim", "Chen", "Dubois", "Ivanov", "Larsson", "Mendoza",
             "Sullivan", "Yamamoto", "Rodriguez", "Thompson", "Fitzgerald", "Hoffmann", "Castillo", "Singh"]
SHIP_LAST = [x for x in SHIP_LAST if x.casefold() in _SHIP_LAST]

STREETS = ["Oak", "Maple", "Cedar", "Elm", "Lincoln", "Highland", "Pleasant", "Hillcrest", "Sunset", "Ridge",
           "Chestnut", "Walnut", "Prospect", "Orchard", "Meadowbrook", "Juniper", "Harbor", "Willow"]
SUFFIXES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Court", "Boulevard", "Way", "Place"]
CITIES = [("Springfield", "IL", "62704"), ("Riverton", "WY", "82501"), ("Fairview", "TN", "37062"),
          ("Greenville", "SC", "29601"), ("Madison", "WI", "53703"), ("Georgetown", "TX", "78626"),
          ("Salem", "OR", "97301"), ("Ashland", "KY", "41101"), ("Burlington", "VT", "05401"),
          ("Dover", "NH", "03820"), ("Hudson", "NY", "12534"), ("Arlington", "MA", "02474")]
INSTITUTIONS = ["St. Catherine Medical Center", "Riverside General Hospital", "Lakeview Imaging Center",
                "Mercy Hospital of Springfield", "Northgate Clinic", "Bayview Regional Medical Center",
                "Holy Cross Hospital", "Pinecrest Radiology Associates"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "riverside-health.org", "mercyhosp.org", "icloud.com"]
RELATIONS = ["daughter", "son", "wife", "husband", "sister", "brother", "mother", "father", "guardian",
             "spouse"]
CREDS = ["MD", "M.D.", "DO", "MD, PhD", "RN", "NP", "PA-C"]

CLINICAL = [
    "White matter", "Small bowel", "Brown-Sequard", "Jones fracture", "Baker cyst", "Hodgkin lymphoma",
    "Crohn disease", "Fleischner Society", "Graves disease", "Morison pouch", "Chiari I malformation",
    "BI-RADS 2", "Lung-RADS 2", "Hounsfield units", "Left lower lobe", "Right upper quadrant",
    "No acute intracranial hemorrhage", "Mass effect", "T2-weighted", "L4-L5", "C5-C6", "4 mm",
    "3.2 x 2.1 cm", "Series 3, image 45", "DLP 456 mGy-cm", "Paget disease", "Circle of Willis",
    "pouch of Douglas", "Bosniak 2F", "Salter-Harris II", "Weber B", "Murphy sign", "Kerley B lines",
    "Schatzki ring", "Wilms tumor", "Normal", "Impression", "Findings", "CTDIvol 8.2 mGy",
    "Omnipaque 350", "100 mL", "Gray matter", "Long segment", "Parkinson disease", "Bell palsy",
    "Barrett esophagus", "Hill-Sachs", "Ewing sarcoma", "Turner syndrome", "Dandy-Walker",
    "Wilson disease", "Meckel diverticulum", "Zenker diverticulum", "Kaposi sarcoma", "Marfan syndrome",
]

FINDINGS_LINES = [
    "{c1} changes are noted without {c2}.",
    "There is a {m} nodule in the left lower lobe ({c1}).",
    "Redemonstrated {c1}. No new focal lesion.",
    "{c1} and {c2} are unremarkable.",
    "No evidence of {c1}. Heart size is normal.",
    "Compared to prior, stable {c1}; see {c2}.",
    "Incidental {c1} is again seen.",
]


# --------------------------------------------------------------------------- sample model

@dataclass
class Sample:
    text: str  # plain report text, or the whole HL7 message when kind == "hl7"
    kind: str  # "text" | "hl7"
    template: str
    known: KnownIdentifiers
    phi: list[tuple[str, str]]  # planted (string, kind) in the report body
    keep: list[str]  # clinical phrases that must remain
    body: str = ""  # report body (plain text; for HL7 the OBX text == parse_report(...).text)
    phi_spans: list[tuple[int, int, str]] = field(default_factory=list)  # positions in body
    header_phi: list[tuple[str, str]] = field(default_factory=list)  # HL7 header fields (output check)
    shift: int = -30
    filename: str = ""
    unseen: set[int] = field(default_factory=set)  # indexes into phi_spans from the held-back lines


class _B:
    """Text builder that records where planted PHI goes."""

    def __init__(self):
        self.parts: list[str] = []
        self.pos = 0
        self.spans: list[tuple[int, int, str, str]] = []
        self.keep: list[str] = []

    def t(self, s: str) -> "_B":
        self.parts.append(s)
        self.pos += len(s)
        return self

    def p(self, s: str, kind: str) -> "_B":
        self.spans.append((self.pos, self.pos + len(s), kind, s))
        return self.t(s)

    def k(self, s: str) -> "_B":
        self.keep.append(s)
        return self.t(s)

    def f(self, fmt: str, *args) -> "_B":
        chunks = fmt.split("{}")
        assert len(chunks) == len(args) + 1, fmt
        for i, a in enumerate(args):
            self.t(chunks[i])
            if isinstance(a, tuple):
                if a[1] == "KEEP":
                    self.k(a[0])
                else:
                    self.p(a[0], a[1])
            else:
                self.t(a)
        return self.t(chunks[-1])

    def text(self) -> str:
        return "".join(self.parts)


# --------------------------------------------------------------------------- random PHI

class _Gen:
    def __init__(self, rng: random.Random):
        self.r = rng

    def person(self, held: float = 0.5) -> dict:
        r = self.r
        if r.random() < held:
            f, l = r.choice(HELD_FIRST), r.choice(HELD_LAST)
        else:
            f, l = r.choice(SHIP_FIRST), r.choice(SHIP_LAST)
        return {"first": f, "last": l, "mi": r.choice("ABCDEFGHJKLMNPRSTW")}

    def name_form(self, p: dict, kind: str = "any") -> list[tuple[str, str]]:
        """A (text, kind) list: the planted part(s) for one mention of a person."""
        f, l, mi = p["first"], p["last"], p["mi"]
        forms = [
            [(f"{f} {l}", "NAME")], [(f"{l}, {f}", "NAME")], [(f"{l.upper()}, {f.upper()}", "NAME")],
            [(f"{f[0]}. {l}", "NAME")], [(f"{f} {mi}. {l}", "NAME")], [(f"{f.upper()} {l.upper()}", "NAME")],
            [(f"{l} {f[0]}", "NAME")], [(f"{l.upper()}^{f.upper()}", "NAME")],
        ]
        return self.r.choice(forms)

    def date(self, lo: int = 2015, hi: int = 2024) -> date:
        start = date(lo, 1, 1)
        return start + timedelta(days=self.r.randrange((date(hi, 12, 31) - start).days))

    def fmt_date(self, d: date) -> str:
        fmts = [
            lambda d: d.strftime("%m/%d/%Y"), lambda d: d.strftime("%Y-%m-%d"), lambda d: d.strftime("%d.%m.%Y"),
            lambda d: f"{d.strftime('%B')} {d.day}, {d.year}", lambda d: f"{d.day} {d.strftime('%b')} {d.year}",
            lambda d: f"{d.strftime('%b')} {d.day} {d.year}", lambda d: d.strftime("%Y%m%d"),
            lambda d: f"{d.month}/{d.day}/{d.strftime('%y')}", lambda d: d.strftime("%d-%b-%Y").upper(),
            lambda d: f"{d.strftime('%B')} {d.day}{'th' if 10 <= d.day <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d.day % 10, 'th')}, {d.year}",
        ]
        return self.r.choice(fmts)(d)

    def mrn(self) -> tuple[str, str]:
        """(canonical id as in the DICOM header, text form)."""
        r = self.r
        n = "".join(r.choice("0123456789") for _ in range(8))
        forms = [n, f"{n[:2]}-{n[2:5]}-{n[5:]}", "00" + n, n]
        if r.random() < 0.2:
            n = r.choice(["AB", "MR", "JX"]) + n[:6]
            return n, n
        return n, r.choice(forms)

    def accession(self) -> str:
        r = self.r
        d = "".join(r.choice("0123456789") for _ in range(7))
        return r.choice([f"CT{d}", f"RAD-{d[:4]}-{d[4:]}", d, f"A{d}X", f"MR{d[:6]}"])

    def phone(self) -> str:
        r = self.r
        a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
        return r.choice([f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}",
                         f"{a}-{b}-{c:04d} ext. {r.randint(100, 9999)}"])

    def address(self) -> tuple[str, tuple[str, str, str]]:
        r = self.r
        street = f"{r.randint(2, 9899)} {r.choice(STREETS)} {r.choice(SUFFIXES)}"
        if r.random() < 0.25:
            street += f", Apt {r.randint(1, 40)}"
        return street, r.choice(CITIES)

    def email(self, p: dict) -> str:
        r = self.r
        user = r.choice([f"{p['first'].lower()}.{p['last'].lower()}", f"{p['first'][0].lower()}{p['last'].lower()}",
                         f"{p['last'].lower()}{r.randint(1, 99)}"])
        return f"{user}@{r.choice(DOMAINS)}"

    def uid(self) -> str:
        r = self.r
        return f"1.2.840.113619.2.{r.randint(1, 999)}.{r.randint(1, 9)}.{r.randint(10**8, 10**10)}.{r.randint(1, 9999)}"

    def clinical(self, n: int) -> list[str]:
        return self.r.sample(CLINICAL, n)


# --------------------------------------------------------------------------- templates

def _patient_mention(g: _Gen, b: _B, pat: dict):
    r = g.r
    choice = r.randrange(4)
    if choice == 0:
        b.t(r.choice(["Mr. ", "Ms. ", "Mrs. "])).p(pat["last"], "NAME")
    elif choice == 1:
        b.t("patient ").p(f"{pat['first']} {pat['last']}", "NAME")
    elif choice == 2:
        b.t("the patient (").p(pat["first"], "NAME").t(")")
    else:
        b.t("pt ").p(pat["last"], "NAME")


def _findings(g: _Gen, b: _B, n: int = 3):
    for _ in range(n):
        line = g.r.choice(FINDINGS_LINES)
        c1, c2 = g.clinical(2)
        m = g.r.choice(["4 mm", "6 mm", "1.2 cm"])
        pieces = re.split(r"(\{c1\}|\{c2\}|\{m\})", line)
        for pc in pieces:
            if pc == "{c1}":
                b.k(c1)
            elif pc == "{c2}":
                b.k(c2)
            elif pc == "{m}":
                b.t(m)
            else:
                b.t(pc)
        b.t("\n")


def _header(g: _Gen, b: _B, pat: dict, ids: dict, style: str = "mixed"):
    r = g.r
    label = r.choice(["Patient:", "Patient Name:", "Name:", "PATIENT:"])
    b.t(label + " ")
    for s, k in g.name_form(pat):
        b.p(s, k)
    b.t(r.choice(["   ", "\n", "    "]))
    b.t(r.choice(["MRN: ", "MR#: ", "Med Rec No. ", "Patient ID: "])).p(ids["mrn_text"], "ID")
    b.t(r.choice(["   ", "\n"]))
    b.t(r.choice(["DOB: ", "Date of Birth: ", "D.O.B. "])).p(g.fmt_date(ids["dob"]), "DATE")
    b.t("\n")
    b.t(r.choice(["Accession: ", "Acc #: ", "ACC: ", "Accession Number: "])).p(ids["acc"], "ID")
    b.t(r.choice(["   ", "\n"]))
    b.t(r.choice(["Exam Date: ", "Date of Exam: ", "Study Date: ", "DOS: "])).p(g.fmt_date(ids["exam"]), "DATE")
    b.t("\n")


def _signature(g: _Gen, b: _B, doc: dict, dt: date, cue: str | None = None):
    r = g.r
    cue = cue or r.choice(["Electronically signed by: ", "Dictated by: ", "Signed by ", "Read by: ",
                           "Interpreted by "])
    b.t(cue)
    style = r.randrange(3)
    if style == 0:
        b.t("Dr. ").p(f"{doc['first']} {doc['last']}", "NAME")
    elif style == 1:
        b.p(f"{doc['first']} {doc['mi']}. {doc['last']}", "NAME").t(", " + r.choice(["MD", "M.D.", "DO", "MD, PhD"]))
    else:
        b.p(f"{doc['first']} {doc['last']}", "NAME").t(" " + r.choice(["MD", "M.D."]))
    b.t(" on ").p(g.fmt_date(dt), "DATE").t(f" at {r.randint(7, 19)}:{r.randint(0, 59):02d}\n")


def t_ct_chest(g: _Gen, b: _B, ctx: dict):
    r = g.r
    b.t("CT CHEST WITH CONTRAST\n\n")
    _header(g, b, ctx["pat"], ctx)
    age = r.choice([(f"{r.randint(90, 101)}-year-old", "AGE"), (f"{r.randint(30, 88)}-year-old", "KEEP")])
    b.t("\nCLINICAL HISTORY: ")
    if age[1] == "AGE":
        b.p(age[0].split("-")[0], "AGE_OVER_89").t("-year-old")
    else:
        b.k(age[0])
    b.t(" with cough. ")
    _patient_mention(g, b, ctx["pat"])
    b.t(" reports weight loss.\n")
    b.t("TECHNIQUE: Axial images after ").k("Omnipaque 350").t(", ").k("100 mL").t(". ").k("DLP 456 mGy-cm").t(".\n")
    b.t("COMPARISON: ").p(g.fmt_date(ctx["prior"]), "DATE").t(".\n\nFINDINGS:\n")
    _findings(g, b, 4)
    b.t("\nIMPRESSION:\n1. ")
    b.k(r.choice(CLINICAL)).t(". Follow-up per ").k("Fleischner Society").t(" guidelines.\n")
    b.t("Findings discussed with Dr. ").p(ctx["ref"]["last"], "NAME").t(" by telephone at ")
    b.p(g.phone(), "PHONE").t(f" at {r.randint(7, 19)}:{r.randint(0, 59):02d}.\n\n")
    _signature(g, b, ctx["rad"], ctx["exam"])


def t_mr_brain(g: _Gen, b: _B, ctx: dict):
    r = g.r
    b.t("MRI BRAIN WITHOUT AND WITH CONTRAST\n")
    b.t("Name: ").p(f"{ctx['pat']['last'].upper()}^{ctx['pat']['first'].upper()}", "NAME")
    b.t("  ID: ").p(ctx["mrn_text"], "ID").t("  Acc: ").p(ctx["acc"], "ID").t("\n")
    b.t("Referring physician: ").p(f"{ctx['ref']['first']} {ctx['ref']['last']}", "NAME")
    b.t(", " + r.choice(["MD", "DO", "NP"]) + "\n")
    b.t("Indication: headache. ")
    _patient_mention(g, b, ctx["pat"])
    b.t(" seen in clinic on ").p(g.fmt_date(ctx["prior"]), "DATE").t(".\n")
    b.t("Technique: Sagittal T1, axial ").k("T2-weighted").t(" and FLAIR images.\nFindings:\n")
    _findings(g, b, 3)
    b.k("White matter").t(" signal is normal. ").k("No acute intracranial hemorrhage").t(".\n")
    b.t("Impression: ").k(r.choice(CLINICAL)).t(".\n")
    b.t("Dictated by: ").p(f"{ctx['rad']['first']} {ctx['rad']['last']}", "NAME").t(", MD\n")
    b.t("Transcribed by: ").p(f"{ctx['rad']['first'][0]}{ctx['rad']['last'][0]}/{r.choice(['kl', 'mj', 'tr'])}", "NAME")
    b.t(" ").p(g.fmt_date(ctx["exam"]), "DATE").t("\n")


def t_xr_terse(g: _Gen, b: _B, ctx: dict):
    r = g.r
    p = ctx["pat"]
    b.t("XR CHEST 2 VIEWS\n")
    b.p(f"{p['last'].upper()}, {p['first'].upper()}", "NAME").t("  ")
    b.p(ctx["mrn_text"], "ID").t("  ").p(g.fmt_date(ctx["exam"]), "DATE").t("\n")
    b.t("HX: SOB.\nCOMPARISON: ").p(g.fmt_date(ctx["prior"]), "DATE").t("\n")
    b.t("FINDINGS: PA and lateral views. ").k("Kerley B lines").t(". ")
    b.k(r.choice(CLINICAL)).t(".\nIMPRESSION: ").k("Normal").t(" heart size.\n")
    b.t("Tech: ").p(f"{r.choice('ABCDEGHJKLMNPRSTW')}{r.choice('ABCDEGHJKLMNPRSTW')}", "NAME").t("\n")
    b.t("Signed: ").p(f"{ctx['rad']['last']}, {ctx['rad']['first']}", "NAME").t(" MD\n")


def t_us_abd(g: _Gen, b: _B, ctx: dict):
    r = g.r
    rel = g.person(held=0.85)
    relation = r.choice(RELATIONS)
    b.t("ULTRASOUND ABDOMEN COMPLETE\n")
    _header(g, b, ctx["pat"], ctx)
    b.t(f"HISTORY: Right upper quadrant pain. Patient accompanied by {relation} ")
    b.p(f"{rel['first']} {rel['last']}", "NAME").t(", who can be reached at ").p(g.phone(), "PHONE").t(".\n")
    b.t("FINDINGS:\nLiver: normal echotexture. ").k("Morison pouch").t(" is clear.\n")
    _findings(g, b, 2)
    b.t("IMPRESSION: ").k(r.choice(CLINICAL)).t(". ").k("Murphy sign").t(" negative.\n")
    b.t("Sonographer: ").p(f"{ctx['tech']['first']} {ctx['tech']['last']}", "NAME").t(", RDMS\n")
    _signature(g, b, ctx["rad"], ctx["exam"])


def t_mammo(g: _Gen, b: _B, ctx: dict):
    r = g.r
    street, (city, st, z) = g.address()
    b.t("BILATERAL SCREENING MAMMOGRAM WITH TOMOSYNTHESIS\n")
    _header(g, b, ctx["pat"], ctx)
    b.t("Address: ").p(f"{street}, {city}, {st} {z}", "ADDRESS").t("\n")
    b.t("Referring: Dr. ").p(f"{ctx['ref']['first']} {ctx['ref']['last']}", "NAME").t("\n")
    b.t("Breast composition: scattered areas of fibroglandular density.\n")
    b.t("FINDINGS: No suspicious mass, calcification or architectural distortion.\n")
    b.t("IMPRESSION: Benign. ").k("BI-RADS 2").t(".\n")
    b.t("A letter with results was mailed to Ms. ").p(ctx["pat"]["last"], "NAME").t(" at the address above.\n")
    b.t("Performed at ").p(ctx["inst"], "INSTITUTION").t(".\n")
    _signature(g, b, ctx["rad"], ctx["exam"])


def t_addendum(g: _Gen, b: _B, ctx: dict):
    r = g.r
    nurse = g.person(held=0.7)
    b.t("ADDENDUM\n")
    b.t("Accession ").p(ctx["acc"], "ID").t(" / MRN ").p(ctx["mrn_text"], "ID").t("\n")
    b.t("Critical result: ").k(r.choice(["Mass effect", "Left lower lobe", "Small bowel"])).t(" obstruction.\n")
    b.t("Findings communicated to ").p(f"{nurse['first']} {nurse['last']}", "NAME").t(", RN, at ")
    b.p(g.phone(), "PHONE").t(" on ").p(g.fmt_date(ctx["exam"]), "DATE")
    b.t(f" at {r.randint(7, 19)}:{r.randint(0, 59):02d}, read back and confirmed.\n")
    b.t("A copy was e-mailed to ").p(g.email(ctx["ref"]), "EMAIL").t(".\n")
    b.t("Original report dated ").p(g.fmt_date(ctx["prior"]), "DATE").t(".\n")
    _signature(g, b, ctx["rad"], ctx["exam"], cue="Addendum signed by ")


def t_ed_prelim(g: _Gen, b: _B, ctx: dict):
    r = g.r
    res = g.person(held=0.6)
    p = ctx["pat"]
    b.t("CT HEAD WITHOUT CONTRAST - PRELIMINARY (WET READ)\n")
    b.t("Pt: ").p(f"{p['first']} {p['last']}", "NAME").t(", ").p(str(r.randint(90, 99)), "AGE_OVER_89")
    b.t(" yo F, fall. Acc# ").p(ctx["acc"], "ID").t(", Study UID ").p(ctx["uid"], "UID").t("\n")
    b.t("Prelim read by resident Dr. ").p(f"{res['first']} {res['last']}", "NAME")
    b.t(", discussed with attending ").p(f"{ctx['rad']['first']} {ctx['rad']['last']}", "NAME").t(".\n")
    b.t("FINDINGS: ").k("No acute intracranial hemorrhage").t(". ").k("Gray matter").t("-")
    b.k("White matter").t(" differentiation preserved. ").k(r.choice(CLINICAL)).t(".\n")
    b.t("Pager ").p(f"{r.randint(1, 9)}-{r.randint(1000, 9999)}", "PHONE").t(" for questions.\n")


def t_nm_letter(g: _Gen, b: _B, ctx: dict):
    r = g.r
    street, (city, st, z) = g.address()
    b.p(ctx["inst"], "INSTITUTION").t(" - Department of Nuclear Medicine\n")
    b.t("PET/CT SKULL BASE TO THIGH\n")
    b.t("Dear Dr. ").p(ctx["ref"]["last"], "NAME").t(",\n")
    b.t("Thank you for referring your patient, ").p(f"{ctx['pat']['first']} {ctx['pat']['last']}", "NAME")
    b.t(" (MRN ").p(ctx["mrn_text"], "ID").t("), of ").p(f"{street}, {city}, {st} {z}", "ADDRESS").t(".\n")
    b.t("Indication: ").k("Hodgkin lymphoma").t(", restaging. Prior study ").p(g.fmt_date(ctx["prior"]), "DATE").t(".\n")
    b.t("Findings: ").k("Hounsfield units").t(" of the nodes measured. ")
    _findings(g, b, 2)
    b.t("Images are available at ").p(f"https://portal.{r.choice(DOMAINS)}/studies/{ctx['acc']}", "URL").t(".\n")
    b.t("Questions: ").p(g.email(ctx["rad"]), "EMAIL").t(" or ").p(g.phone(), "PHONE").t(".\n")
    b.t("Sincerely,\n").p(f"{ctx['rad']['first']} {ctx['rad']['last']}", "NAME").t(", MD\n")


def t_allcaps(g: _Gen, b: _B, ctx: dict):
    r = g.r
    p = ctx["pat"]
    rel = g.person(held=0.9)
    b.t("RADIOLOGY REPORT\n")
    b.t("PATIENT: ").p(f"{p['last'].upper()}, {p['first'].upper()} {p['mi']}", "NAME")
    b.t("   MRN: ").p(ctx["mrn_text"], "ID").t("   DOB: ").p(g.fmt_date(ctx["dob"]).upper(), "DATE").t("\n")
    b.t("EXAM: CT ABDOMEN AND PELVIS WITH CONTRAST   DATE: ").p(g.fmt_date(ctx["exam"]).upper(), "DATE").t("\n")
    b.t("HISTORY: ABDOMINAL PAIN. HISTORY OBTAINED FROM ").t(r.choice(["SON", "DAUGHTER", "WIFE", "HUSBAND"]))
    b.t(" ").p(f"{rel['first'].upper()} {rel['last'].upper()}", "NAME").t(".\n")
    b.t("FINDINGS: ").k("SMALL BOWEL").t(" IS NORMAL IN CALIBER. ").k("CROHN DISEASE").t(" NOT EXCLUDED. ")
    b.k("MASS EFFECT").t(" ABSENT.\nIMPRESSION: ").k("NO ACUTE FINDINGS").t(".\n")
    b.t("DICTATED BY: DR. ").p(f"{ctx['rad']['first'].upper()} {ctx['rad']['last'].upper()}", "NAME").t("\n")


def t_german(g: _Gen, b: _B, ctx: dict):
    r = g.r
    p = ctx["pat"]
    b.t("Befundbericht Radiologie\n")
    b.t("Patient: ").t(r.choice(["Herr ", "Frau "])).p(f"{p['first']} {p['last']}", "NAME")
    b.t(", geb. ").p(ctx["dob"].strftime("%d.%m.%Y"), "DATE").t("\n")
    b.t("Untersuchung: MRT Knie links vom ").p(ctx["exam"].strftime("%d.%m.%Y"), "DATE").t("\n")
    b.t("Fallnummer: ").p(ctx["mrn_text"], "ID").t("\n")
    b.t("Befund: ").k("Baker cyst").t(" medial, kein Erguss. ").k(r.choice(CLINICAL)).t(".\n")
    b.t("Beurteilung: Unauffaelliger Befund.\n")
    b.t("Dr. ").p(f"{ctx['rad']['first']} {ctx['rad']['last']}", "NAME").t(", Tel. ").p(g.phone(), "PHONE").t("\n")


def _hard_extra(g: _Gen, b: _B, ctx: dict):
    """One harder line: no cue word, first name only, double-barrelled names, odd formats..."""
    r = g.r
    h = g.person(held=1.0)
    h2 = g.person(held=0.5)
    choice = r.randrange(15)
    if choice == 0:
        b.t("Report faxed to the office of ").p(f"{h['first']} {h['last']}", "NAME").t(".\n")
    elif choice == 1:
        b.t("Per ").p(h["last"], "NAME").t(", the patient will return in 3 months.\n")
    elif choice == 2:
        b.t("Spoke with ").p(f"{h['first']} {h['last']}", "NAME").t(" (charge nurse) at ").p(g.phone(), "PHONE").t(".\n")
    elif choice == 3:
        b.t("Patient transferred from ").p(r.choice(INSTITUTIONS), "INSTITUTION").t(" for further care.\n")
    elif choice == 4:
        b.t(f"The patient's {r.choice(RELATIONS)}, ").p(h["first"], "NAME").t(", was present during the exam.\n")
    elif choice == 5:
        b.t("Contact: ").p(g.email(h).upper(), "EMAIL").t("\n")
    elif choice == 6:
        b.t("Dr ").p(h["last"], "NAME").t(" reviewed the images with me.\n")
    elif choice == 7:
        b.p(f"{h['first']} {h['last']}-{h2['last']}", "NAME").t(", MD, agreed with the assessment.\n")
    elif choice == 8:
        b.t("Lives alone at ").p(f"{r.choice(['Hauptstraße', 'Lindenweg', 'Schillerstraße'])} {r.randint(1, 99)}, "
                                 f"{r.randint(10000, 99999)} {r.choice(['Berlin', 'Hamburg', 'Leipzig'])}", "ADDRESS").t(".\n")
    elif choice == 9:
        d = g.date(2016, 2023)
        txt = r.choice([f"the {d.day}{'th' if 10 <= d.day <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d.day % 10, 'th')} of {d.strftime('%B')} {d.year}",
                        f"{d.strftime('%b')}. {d.day}, {d.year}", d.strftime("%Y/%m/%d"), d.strftime("%d/%m/%Y")])
        if txt.startswith("the "):
            b.t("Previously seen on the ").p(txt[4:], "DATE").t(".\n")
        else:
            b.t("Previously seen on ").p(txt, "DATE").t(".\n")
    elif choice == 10:
        b.t("Referring NPI ").p(str(r.randint(10**9, 10**10 - 1)), "ID").t(".\n")
    elif choice == 11:
        b.t("See also MRN#").p(ctx["mrn"], "ID").t(" (merged record).\n")
    elif choice == 12:
        b.t(f"Called patient's {r.choice(['husband', 'wife', 'son', 'daughter'])} ").p(f"{h['first']} {h['last']}", "NAME")
        b.t(" at home.\n")
    elif choice == 13:
        b.t("CC: ").p(f"{h['first']} {h['last']}", "NAME").t("; ").p(f"{h2['first']} {h2['last']}", "NAME").t("\n")
    else:
        b.t("Results reviewed with ").p(f"{h['first']} {h['last']}", "NAME").t(" and ").p(f"{h2['first']} {h2['last']}", "NAME")
        b.t(" at tumor board.\n")


def _unseen_extra(g: _Gen, b: _B, ctx: dict):
    """Lines written after the engine was tuned and NOT used to tune it (reported separately)."""
    r = g.r
    h = g.person(held=1.0)
    b.unseen_from = len(b.spans)
    choice = r.randrange(16)
    if choice == 0:
        b.t("Comparison is made to the outside study from ").p(f"{h['last']} Diagnostics", "INSTITUTION")
        b.t(" dated ").p(g.fmt_date(g.date(2015, 2019)), "DATE").t(".\n")
    elif choice == 1:
        b.t("Findings were texted to ").p(h["first"], "NAME").t(" via secure chat.\n")
    elif choice == 2:
        b.t("Image quality limited; patient (Mr. ").p(f"{h['last']}-{g.person(held=1.0)['last']}", "NAME").t(") moved.\n")
    elif choice == 3:
        b.t("SSN ").p(f"{r.randint(100, 899)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}", "ID").t(" on file.\n")
    elif choice == 4:
        b.t("Phone ").p(f"{r.randint(201, 989)} {r.randint(200, 999)} {r.randint(1000, 9999)}", "PHONE").t("\n")
    elif choice == 5:
        b.t("Radiologist: ").p(f"{h['first']} {h['mi']}. {h['last']}", "NAME").t("\n")
    elif choice == 6:
        b.p(h["first"], "NAME").t(": please call re: results.\n")
    elif choice == 7:
        b.t("Seen by Dr.").p(h["last"], "NAME").t(" last week.\n")
    elif choice == 8:
        b.t("Sent from workstation IP ").p(f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}", "IP").t(".\n")
    elif choice == 9:
        b.t("Ms. ").p(h["last"], "NAME").t("'s husband, ").p(g.person(held=1.0)["first"], "NAME").t(", drove her home.\n")
    elif choice == 10:
        b.t("dob ").p(g.fmt_date(ctx["dob"]), "DATE").t(" confirmed with patient.\n")
    elif choice == 11:
        d = g.date(2018, 2024)
        b.t("Exam performed ").p(d.strftime("%Y-%m-%d"), "DATE").t(f"T{r.randint(7, 19):02d}:{r.randint(0, 59):02d}:00Z.\n")
    elif choice == 12:
        b.t("Accession: ").p(f"{r.randint(2015, 2024)}-CT-{r.randint(10**6, 10**7 - 1)}", "ID").t("\n")
    elif choice == 13:
        b.t("The patient, a ").p(str(r.randint(90, 104)), "AGE_OVER_89").t(" year old retired teacher, resides at ")
        street, (city, st, z) = g.address()
        b.p(f"{street}, {city}, {st} {z}", "ADDRESS").t(".\n")
    elif choice == 14:
        b.t("Emergency contact: ").p(h["first"], "NAME").t(" (sister) ").p(g.phone(), "PHONE").t("\n")
    else:
        b.t("Second opinion requested by ").p(f"{h['first'].upper()} {h['last'].upper()}", "NAME").t(" (oncology).\n")


TEXT_TEMPLATES = {
    "ct_chest_verbose": t_ct_chest, "mr_brain": t_mr_brain, "xr_terse": t_xr_terse, "us_abdomen": t_us_abd,
    "mammo": t_mammo, "addendum": t_addendum, "ed_prelim": t_ed_prelim, "nm_letter": t_nm_letter,
    "allcaps_legacy": t_allcaps, "german": t_german,
}


def _hl7_escape(s: str) -> str:
    return (s.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("~", "\\R\\")
            .replace("&", "\\T\\"))


def _wrap_hl7(g: _Gen, body: str, ctx: dict) -> tuple[str, list[tuple[str, str]]]:
    r = g.r
    p, ref, rad = ctx["pat"], ctx["ref"], ctx["rad"]
    street, (city, st, z) = g.address()
    phone = g.phone()
    dob = ctx["dob"].strftime("%Y%m%d")
    ex = ctx["exam"].strftime("%Y%m%d") + f"{r.randint(7, 19):02d}{r.randint(0, 59):02d}00"
    fac = ctx["inst"]
    segs = [
        f"MSH|^~\\&|RIS|{_hl7_escape(fac)}|EHR|RECEIVER|{ex}||ORU^R01^ORU_R01|MSG{r.randint(10**5, 10**6)}|P|2.5.1",
        f"PID|1||{ctx['mrn']}^^^HOSP^MR||{p['last'].upper()}^{p['first'].upper()}^{p['mi']}||{dob}|F|||"
        f"{street}^^{city}^{st}^{z}||{phone}",
        f"NK1|1|{g.person()['last'].upper()}^{g.person()['first'].upper()}|SPO",
        f"PV1|1|O|RAD^^^HOSP||||{r.randint(1000, 9999)}^{ref['last'].upper()}^{ref['first'].upper()}",
        f"ORC|RE|ORD{r.randint(10**5, 10**6)}|{ctx['acc']}",
        f"OBR|1|ORD{r.randint(10**5, 10**6)}|{ctx['acc']}|71260^CT CHEST W CONTRAST^CPT|||{ex}"
        + "|" * 25 + f"{r.randint(1000, 9999)}&{rad['last'].upper()}&{rad['first'].upper()}",
    ]
    for i, line in enumerate(body.split("\n"), 1):
        segs.append(f"OBX|{i}|TX|RPT^Report||{_hl7_escape(line)}||||||F")
    segs.append(f"ZDS|{ctx['uid']}^RIS^Application^DICOM")
    header_phi = [
        (p["last"], "NAME"), (p["first"], "NAME"), (ctx["mrn"], "ID"), (ctx["acc"], "ID"), (dob, "DATE"),
        (street.split(",")[0], "ADDRESS"), (phone, "PHONE"), (ref["last"], "NAME"), (rad["last"], "NAME"),
        (fac, "INSTITUTION"), (ctx["uid"], "UID"),
    ]
    return "\r".join(segs) + "\r", header_phi


def make_corpus(n: int = 250, seed: int = 0) -> list[Sample]:
    """n synthetic reports (about 1 in 6 wrapped as HL7 ORU), reproducible for a seed."""
    rng = random.Random(seed)
    g = _Gen(rng)
    names = list(TEXT_TEMPLATES)
    out: list[Sample] = []
    for i in range(n):
        pat = g.person(held=0.5)
        mrn, mrn_text = g.mrn()
        ctx = {
            "pat": pat, "ref": g.person(held=0.6), "rad": g.person(held=0.6), "tech": g.person(held=0.7),
            "mrn": mrn, "mrn_text": mrn_text, "acc": g.accession(), "dob": g.date(1925, 2005),
            "exam": g.date(2018, 2024), "prior": g.date(2012, 2018), "uid": g.uid(),
            "inst": rng.choice(INSTITUTIONS),
        }
        tname = names[i % len(names)]
        b = _B()
        TEXT_TEMPLATES[tname](g, b, ctx)
        if rng.random() < 0.6:
            _hard_extra(g, b, ctx)
        unseen_from = None
        if rng.random() < 0.5:
            _unseen_extra(g, b, ctx)
            unseen_from = b.unseen_from
        body = b.text().rstrip("\n")
        spans = [(s, e, k) for s, e, k, _v in b.spans if e <= len(body)]
        unseen = set(range(unseen_from, len(b.spans))) if unseen_from is not None else set()
        known = KnownIdentifiers(
            person_names=[f"{pat['last'].upper()}^{pat['first'].upper()}^{pat['mi']}"],
            ids=[mrn, ctx["acc"]],
            dates=[ctx["dob"].strftime("%Y%m%d")],
            institutions=[ctx["inst"]],
            replacements={ctx["acc"]: "A" + format(rng.getrandbits(40), "010X")},
        )
        if rng.random() < 0.3:  # referring physician present in the DICOM header
            known.person_names.append(f"{ctx['ref']['last'].upper()}^{ctx['ref']['first'].upper()}")
        shift = -(1 + rng.randrange(730))
        s = Sample(text=body, kind="text", template=tname, known=known,
                   phi=[(v, k) for _s, _e, k, v in b.spans], keep=list(b.keep), body=body,
                   phi_spans=spans, shift=shift, filename=f"{ctx['acc']}_report.txt", unseen=unseen)
        if i % 6 == 5:
            msg, header_phi = _wrap_hl7(g, body, ctx)
            s.text, s.kind, s.template = msg, "hl7", f"hl7_{tname}"
            s.header_phi = header_phi
            s.filename = f"{ctx['acc']}.hl7"
            if rng.random() < 0.5:  # HL7 report without a matching DICOM header
                s.known = KnownIdentifiers()
        out.append(s)
    return out



# --------------------------------------------------------------------------- PHI-free clinical text
# DEV: used while tuning the stop-word/eponym lists.  HELD_OUT: written afterwards, never tuned on.
PHI_FREE_DEV = """EXAMINATION: CT ABDOMEN AND PELVIS WITH IV CONTRAST
CLINICAL INDICATION: Right lower quadrant pain, rule out appendicitis. History of Crohn's disease.
TECHNIQUE: Helical CT from the lung bases to the pubic symphysis after 100 mL Isovue-370. Dose reduction techniques (automated exposure control, iterative reconstruction) were used. CTDIvol 12.3 mGy, DLP 645.2 mGy-cm. Total exam DLP: 1234 mGy-cm.
COMPARISON: None available.
FINDINGS:
Lower chest: Mild bibasilar atelectasis. No pleural effusion.
Liver: Normal size. A 7 mm hypodensity in segment 4A is too small to characterize (Series 2, Image 34).
Gallbladder and bile ducts: Cholelithiasis. Positive sonographic Murphy sign was reported on prior US.
Pancreas: Unremarkable. Spleen: Normal. Adrenals: Normal. Kidneys: Bosniak 2F cyst in the left kidney measuring 2.1 x 1.8 cm.
Bowel: Long segment wall thickening of the terminal ileum consistent with active Crohn disease. The appendix is normal.
Vessels: Mild atherosclerotic calcification. No AAA. Circle of Willis not imaged.
Lymph nodes: No lymphadenopathy by CT size criteria. Peritoneum: No free air.
Bones: Schmorl nodes at L2-L3. Grade 1 anterolisthesis of L4 on L5. Levoscoliosis. Old healed Colles fracture incidentally partially imaged.
Pelvis: Fibroid uterus. Small amount of fluid in the pouch of Douglas.
IMPRESSION:
1. Active terminal ileitis, consistent with Crohn disease. Recommend GI follow-up.
2. Bosniak 2F left renal cyst; follow-up renal protocol CT or MRI in 6 months per ACR guidelines.
3. Incidental 7 mm hepatic hypodensity, likely benign.
Lung-RADS 2. BI-RADS 3: Probably benign. PI-RADS 4. TI-RADS TR3. LI-RADS LR-3.
T1-weighted, T2 FLAIR, DWI b=1000, ADC map. 3T Siemens Skyra. GE Revolution 256-slice. Philips Ingenuity.
Findings of Hill-Sachs and Bankart lesions. Segond fracture. Jones fracture at the base of the 5th metatarsal.
Salter-Harris II fracture of the distal radius. Weber B fibular fracture. Garden III femoral neck fracture.
White matter hyperintensities, Fazekas grade 2. Chiari I malformation with 7 mm tonsillar ectopia.
Morison pouch fluid. Kerley B lines. Westermark sign. Hampton hump. Golden S sign. Fleischner Society 2017.
Dandy-Walker variant. Arnold-Chiari. Wilms tumor. Ewing sarcoma. Paget disease of bone. Hodgkin lymphoma.
Sister Mary Joseph nodule. Virchow node. Baker's cyst. Barrett esophagus. Zenker diverticulum.
Patient was positioned supine. Patient tolerated the procedure well. Patient Position: HFS.
The study was read in conjunction with the PET/CT. Dr. and Mrs. were not present. Please see addendum.
Normal. Stable. Unchanged since 2019. Since 2020 no change. Follow-up in 3-6 months. Dose 5 mCi F-18 FDG.
SUVmax 4.5. Blood glucose 98 mg/dL. Uptake time 62 min. Height 170 cm, weight 80 kg. Heart rate 72 bpm.
NOTE: Exam was protocoled by the radiology resident. Contrast: Omnipaque 350, 80 mL at 4 mL/s.
May Thurner anatomy. Will follow. Mark the lesion. Grace period. Hope Clinic protocol.
The left kidney is 11.2 cm. Mass effect on the lateral ventricle. Brown adipose tissue. Gray matter heterotopia.
CPT 74177. ICD-10 K50.90. RVU 3.2. Protocol 2024-A. Version 1.2.3.4. Window W:400 L:40.
Stanford type A aortic dissection extending into the brachiocephalic artery; DeBakey type I.
Microhemorrhages in a lobar distribution meet modified Boston criteria for probable cerebral amyloid angiopathy.
Findings are within Milan criteria. Lugano classification stage IIA. Bethesda category IV nodule.
Glasgow Coma Scale 14. Ottawa ankle rules applied. Wells score low. Denver shunt in place.
A Greenfield filter is present in the infrarenal IVC. Port-a-cath tip in the SVC. Swan-Ganz catheter in the right pulmonary artery.
Foley catheter in the bladder. Pigtail drain in the collection. Hickman line tip at the cavoatrial junction.
Harrington rods span T4 to L2. Austin Moore prosthesis. Gamma nail fixation. Essure coils. Mirena IUD in expected position.
The patient received Eliquis and Xarelto. Prior Whipple procedure. Status post Nissen fundoplication. Roux-en-Y gastric bypass.
Prior Hartmann procedure with end colostomy. Billroth II anatomy. Ivor Lewis esophagectomy. Kasai portoenterostomy.
Findings suggest Legg-Calve-Perthes disease. Osgood-Schlatter changes. Sinding-Larsen-Johansson. Kienbock disease.
Hounsfield unit measurement of 12. Agatston score 450. Lung-RADS 4A. O-RADS 3. C-RADS C2.
Siemens SOMATOM Force. Canon Aquilion ONE. GE Signa Premier 3T. Hologic Selenia Dimensions. Philips Azurion.
Impression: Stable appearance compared to outside study from January. Recommend follow up MRI in June.
Scattered fibroglandular densities (ACR category B). Mammographic density assessed with Volpara.
Vertebral body heights maintained. Modic type 1 endplate changes at L5-S1. Pfirrmann grade 4 disc.
Tc-99m MDP bone scan. F-18 PSMA PET. Ga-68 DOTATATE. I-131 whole body scan. Lymphoseek sentinel node.
Washington Manual guidance. Mayo Clinic protocol for renal mass. Cleveland Clinic classification.
Cardiac: Normal LV size. Aortic valve: trileaflet. Mitral annular calcification. TAVR prosthesis in place.
Per protocol, delayed images were obtained. Per ACR Appropriateness Criteria. Per Fleischner Society.
Jordan River? No. Virginia Beach? No. These are not in the report.
Medications: Lasix 40 mg, Coumadin, Plavix. Allergies: Penicillin, Iodine contrast (hives).
No acute fracture. Alignment anatomic. Soft tissues unremarkable. Joint spaces preserved.
"""

PHI_FREE_HELD_OUT = """MRI LUMBAR SPINE WITHOUT CONTRAST
Indication: Low back pain radiating to the left leg for six weeks. Failed conservative therapy.
Technique: Sagittal T1, T2 and STIR; axial T1 and T2 images from T12 through S1.
Comparison: Radiographs from last spring.
Findings: There are five lumbar-type vertebral bodies. The conus terminates at L1. Alignment is normal.
At L3-L4 there is a mild disc bulge without canal stenosis. At L4-L5 a broad-based protrusion with an annular fissure
contacts the traversing left L5 nerve root; moderate left lateral recess narrowing. At L5-S1 facet arthropathy.
Paraspinal muscles show mild fatty atrophy (Goutallier grade 1). Tarlov cysts are noted in the sacrum.
Impression: L4-L5 left subarticular protrusion contacting the left L5 nerve root, correlate for radiculopathy.
CTA HEAD AND NECK: The Circle of Willis is complete. No aneurysm. Bovine arch variant. NASCET 50% stenosis of the
right ICA origin. Vertebral arteries codominant. Hypoplastic A1 segment. Fetal origin of the PCA.
US THYROID: Right lobe 5.1 x 1.8 x 1.7 cm with a TI-RADS 4 nodule; Bethesda referral recommended per ATA.
XR KNEE: Tricompartmental osteoarthritis, Kellgren-Lawrence grade 3. Pellegrini-Stieda calcification. Joint effusion.
CT ABDOMEN: Santorini duct patent. Annular pancreas excluded. Riedel lobe of the liver. Meckel diverticulum not seen.
Spigelian hernia containing fat. Amyand hernia excluded. Richter hernia unlikely. Morgagni hernia in the right cardiophrenic angle.
PET/CT: Deauville score 4 in a left supraclavicular node. Krenning score 3 lesions on Octreoscan.
Nuclear medicine: Tc-99m sestamibi parathyroid scan shows a left inferior adenoma. HIDA with CCK; ejection fraction 22%.
Breast MRI: Background parenchymal enhancement moderate. Kaiser score 6. BI-RADS 4B, biopsy recommended.
Interventional: Seldinger technique; 5 French Cobra catheter; Amplatz wire; Amplatzer plug deployed; Onyx embolization.
The study was reviewed at the multidisciplinary conference. Attending radiologist agrees with the resident interpretation.
Clinical correlation is recommended. No further imaging is necessary at this time. Thank you for this referral.
"""


def phi_free_false_positives() -> dict:
    """Spans detected in text that contains no PHI at all (each one is a false positive)."""
    res = {}
    for name, text in (("dev", PHI_FREE_DEV), ("held_out", PHI_FREE_HELD_OUT)):
        spans = find_phi_spans(text, KnownIdentifiers())
        res[name] = {"words": len(text.split()), "spans": [(s.kind, text[s.start:s.end]) for s in spans]}
    return res


# --------------------------------------------------------------------------- evaluation

def _covered(spans, s: int, e: int, text: str) -> bool:
    for i in range(s, e):
        if not text[i].isalnum():
            continue
        if not any(a <= i < b for a, b, _k in spans):
            return False
    return True


def _present(output: str, value: str, kind: str = "") -> bool:
    tail = r"(?![\w+])" if kind == "AGE_OVER_89" else r"(?![\w])"  # "90+" is the compliant value
    return re.search(rf"(?<![\w]){re.escape(value)}{tail}", output, re.I) is not None


def run_sample(s: Sample) -> tuple[str, list, str]:
    """-> (output text, detected spans on the body, body text as the pipeline saw it)."""
    if s.kind == "hl7":
        doc = parse_report(s.text.encode("utf-8"), s.filename)
        k2 = known_for_doc(doc, s.known)
        spans = find_phi_spans(doc.text, k2)
        out = scrub_report(doc, s.known, s.shift).decode("utf-8")
        return out, spans, doc.text
    spans = find_phi_spans(s.text, s.known)
    return clean_text(s.text, s.known, s.shift), spans, s.text


def evaluate(samples: list[Sample], verbose: bool = False) -> dict:
    found = Counter()
    total = Counter()
    tp_spans = Counter()
    all_spans = Counter()
    keep_ok = keep_total = 0
    misses: list[tuple[str, str, str]] = []
    fps: list[tuple[str, str, str]] = []
    lost: list[tuple[str, str]] = []
    hdr_found = hdr_total = 0
    unseen_found = unseen_total = 0
    chars_replaced = chars_phi = 0
    for s in samples:
        out, spans, body = run_sample(s)
        if body != s.body:
            raise AssertionError(f"body mismatch in {s.template}")
        for idx, (a, b_, kind) in enumerate(s.phi_spans):
            val = body[a:b_]
            total[kind] += 1
            # ages: the replacement is a constant ("90+"), and "100" may occur as "100 mL" elsewhere
            # the output check is skipped for short values ("PA" initials also occur in "PA and lateral")
            # and ages (the replacement is a constant "90+"; "100" also occurs as "100 mL")
            ok = _covered(spans, a, b_, body) and (
                kind == "AGE_OVER_89" or len(val) < 4 or not _present(out, val, kind))
            if ok:
                found[kind] += 1
            else:
                misses.append((s.template, kind, val))
            if idx in s.unseen:
                unseen_total += 1
                unseen_found += ok
        phi_chars = {i for a, b_, _k in s.phi_spans for i in range(a, b_)}
        for sp in spans:
            for i in range(sp.start, sp.end):
                if body[i].isalnum():
                    chars_replaced += 1
                    chars_phi += i in phi_chars
            all_spans[sp.kind] += 1
            if any(sp.start < b_ and a < sp.end for a, b_, _k in s.phi_spans):
                tp_spans[sp.kind] += 1
            else:
                fps.append((s.template, sp.kind, body[sp.start:sp.end]))
        for ph in s.keep:
            keep_total += 1
            if ph in out:
                keep_ok += 1
            else:
                lost.append((s.template, ph))
        for val, kind in s.header_phi:
            hdr_total += 1
            if not _present(out, val):
                hdr_found += 1
            else:
                misses.append((s.template, "HL7:" + kind, val))
    res = {
        "n": len(samples),
        "recall": sum(found.values()) / max(1, sum(total.values())),
        "recall_by_kind": {k: (found[k] / total[k], total[k]) for k in sorted(total)},
        "precision": sum(tp_spans.values()) / max(1, sum(all_spans.values())),
        "precision_by_kind": {k: (tp_spans[k] / all_spans[k], all_spans[k]) for k in sorted(all_spans)},
        "precision_chars": chars_phi / max(1, chars_replaced),
        "phrases_preserved": keep_ok / max(1, keep_total),
        "phrases_total": keep_total,
        "hl7_header_recall": hdr_found / max(1, hdr_total),
        "hl7_header_total": hdr_total,
        "planted": sum(total.values()),
        "unseen_recall": unseen_found / max(1, unseen_total),
        "unseen_total": unseen_total,
        "misses": misses,
        "false_positives": fps,
        "lost_phrases": lost,
    }
    return res


def _print(res: dict, verbose: bool):
    print(f"reports: {res['n']}   planted PHI items in report text: {res['planted']}")
    print(f"recall (token-level, fully removed): {res['recall']:.4f}")
    for k, (v, n) in res["recall_by_kind"].items():
        print(f"  {k:<12} {v:.4f}  (n={n})")
    print(f"  of which held-back lines (not used for tuning): {res['unseen_recall']:.4f}  (n={res['unseen_total']})")
    print(f"HL7 header PHI removed: {res['hl7_header_recall']:.4f}  (n={res['hl7_header_total']})")
    print(f"precision (replaced spans that were planted PHI): {res['precision']:.4f}")
    for k, (v, n) in res["precision_by_kind"].items():
        print(f"  {k:<12} {v:.4f}  (spans={n})")
    print(f"precision (replaced characters that were planted PHI): {res['precision_chars']:.4f}")
    print(f"clinical phrases preserved: {res['phrases_preserved']:.4f}  (n={res['phrases_total']})")
    if verbose:
        print("\nmisses:")
        for m in res["misses"][:60]:
            print("  ", m)
        print("false positives:")
        for m in Counter(res["false_positives"]).most_common(60):
            print("  ", m)
        print("lost phrases:")
        for m in Counter(res["lost_phrases"]).most_common(30):
            print("  ", m)


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 250
    seed = int(argv[2]) if len(argv) > 2 and argv[2].isdigit() else 0
    verbose = "-v" in argv
    res = evaluate(make_corpus(n, seed))
    _print(res, verbose)
    for name, r in phi_free_false_positives().items():
        print(f"PHI-free clinical text ({name}, {r['words']} words): {len(r['spans'])} false replacements "
              + (", ".join(f"{k}:{v!r}" for k, v in r["spans"]) if r["spans"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
