"""Pure-logic de-identification of free text (radiology reports, DICOM text elements).

Detection is rule based (no ML model):

1. *known identifiers* taken from the DICOM header / HL7 message of the same
   patient (names in every common order, case and initial form, ids with or
   without separators, the birth date in any common format, address, phone,
   institution);
2. *patterns*: dates, phones, e-mail, URLs, IP addresses, DICOM UIDs, postal
   codes, street addresses, id-like tokens (numbers, MRN/accession cues),
   ages over 89, institutions;
3. *person names in context*: after titles (Dr., Mrs. ...), before credentials
   (MD, RN ...), after cue words (signed by, daughter, ...), and capitalised
   pairs of tokens from the shipped first/last name lists; every token of a
   detected name is then also removed wherever else it occurs in the text.

Overlapping spans are merged (longest wins, ties by kind priority) before the
operators are applied with presidio-anonymizer: names -> ``[NAME]``, ids -> the
pseudonym from :attr:`KnownIdentifiers.replacements` or ``[ID]``, dates ->
shifted by ``date_shift_days`` keeping their format (or ``[DATE]``), ages over
89 -> ``90+``, everything else -> ``[KIND]``.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from typing import Callable, Iterable, NamedTuple

log = logging.getLogger(__name__)

__all__ = [
    "KnownIdentifiers",
    "Span",
    "KINDS",
    "clean_text",
    "find_phi_spans",
    "shift_da",
    "shift_date_text",
    "find_dates",
    "replacement_lookup",
]


# --------------------------------------------------------------------------- API types


@dataclass
class KnownIdentifiers:
    person_names: list[str] = field(default_factory=list)  # "DOE^JOHN^Q" or "John Doe"
    ids: list[str] = field(default_factory=list)  # MRN, other ids, accession numbers, study ids
    dates: list[str] = field(default_factory=list)  # DICOM DA "YYYYMMDD" (e.g. birth date)
    addresses: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    institutions: list[str] = field(default_factory=list)
    replacements: dict[str, str] = field(default_factory=dict)  # original id -> pseudonym
    exam_dates: list[str] = field(default_factory=list)  # DICOM DA of the study: shifted in any spelling
    ages: list[str] = field(default_factory=list)  # the patient's age in years when over 89 ("93")

    def merged(self, other: "KnownIdentifiers | None") -> "KnownIdentifiers":
        """A new instance holding the union of both (self's replacements win)."""
        if other is None:
            return KnownIdentifiers(
                list(self.person_names), list(self.ids), list(self.dates), list(self.addresses),
                list(self.phones), list(self.institutions), dict(self.replacements), list(self.exam_dates),
                list(self.ages),
            )

        def u(a, b):
            out, seen = [], set()
            for x in list(a) + list(b):
                if x and x not in seen:
                    seen.add(x)
                    out.append(x)
            return out

        rep = dict(other.replacements)
        rep.update(self.replacements)
        return KnownIdentifiers(
            u(self.person_names, other.person_names), u(self.ids, other.ids), u(self.dates, other.dates),
            u(self.addresses, other.addresses), u(self.phones, other.phones),
            u(self.institutions, other.institutions), rep, u(self.exam_dates, other.exam_dates),
            u(self.ages, other.ages),
        )


class Span(NamedTuple):
    start: int
    end: int
    kind: str


KINDS = ("NAME", "ID", "DATE", "DOB", "PHONE", "EMAIL", "ADDRESS", "POSTAL", "URL", "INSTITUTION",
         "AGE_OVER_89", "UID", "IP")

# Higher wins when two candidate spans have the same length.
_PRIO = {"EMAIL": 95, "URL": 90, "IP": 88, "UID": 85, "KID": 80, "DOB": 75, "DATE": 70, "PHONE": 65, "KNAME": 60,
         "ADDRESS": 55, "POSTAL": 50, "ID": 45, "INSTITUTION": 40, "NAME": 35, "AGE_OVER_89": 30}
_OUT_KIND = {"KID": "ID", "KNAME": "NAME"}

_PLACEHOLDER = {k: f"[{k}]" for k in KINDS}
_PLACEHOLDER["AGE_OVER_89"] = "90+"


# --------------------------------------------------------------------------- word lists

def _words(s: str) -> frozenset[str]:
    return frozenset(w.strip().lower() for w in s.split() if w.strip())


# Capitalised words that are never person names in a report (section headers, anatomy,
# findings, modality/credential acronyms, English function words, months, weekdays).
NEVER_NAME = _words("""
a an the this that these those there here it its is are was were be been being am do does did done
not no nor and or but if then than so as at by for from in into of off on onto out over per to up
upon via with within without about above across after against along among around before behind
below beneath beside between beyond during except inside near outside since through throughout
toward towards under underneath until unto while whereas although though because also again
all any both each either every few many more most much neither none other several some such
same own only very just too yet still now once please thank thanks thus hence however therefore
otherwise overall additionally furthermore moreover given noted seen note see seen shows show shown
he she they we you i me my our your his her their them us him who whom whose which what when where why how
yes okay ok ie eg etc vs re cc attn fyi nb ps med rec nr nos ref req
society criteria classification scale score rules rule protocol protocols guideline guidelines manual
river beach lake lakes mount county valley bay harbor harbour park street avenue road
january february march april june july august september october november december
jan feb mar apr jun jul aug sep sept oct nov dec
monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun
today yesterday tomorrow morning afternoon evening night am pm noon midnight daily weekly
impression impressions finding findings result results conclusion conclusions summary assessment
recommendation recommendations recommend recommended history indication indications clinical
technique techniques comparison comparisons procedure procedures exam exams examination examinations
study studies report reports reported addendum addenda amended amendment correction corrected
preliminary prelim final finalized signed dictated transcribed verified approved electronically
reviewed read interpreted performed ordered requested referred referring ordering attending resident
fellow radiologist radiology radiological radiologic physician physicians provider doctor nurse
technologist technician tech sonographer staff service team department dept division section unit
clinic hospital center centre medical health healthcare institute university college school system
imaging diagnostic diagnostics services associates group partners laboratory lab pathology
emergency urgent urgency critical stat routine priority status location room bed floor ward icu
ed er or pacu nicu picu ccu micu sicu opd ipd outpatient inpatient admission discharge visit encounter
patient patients pt pts name names sex gender male female man woman boy girl child adult infant
age aged years year yrs yr yo old month months week weeks day days hour hours minute minutes
date dates time times dob mrn accession acc id no number num code order requisition account acct
contact phone tel telephone fax pager cell mobile email address street city state zip country
normal abnormal unremarkable remarkable negative positive equivocal indeterminate benign malignant
suspicious probably probable possible possibly likely unlikely definite definitely consistent
compatible concerning suggestive worrisome reassuring stable unchanged new old prior previous
previously current currently interval increased increasing decreased decreasing improved improving
worsened worsening progressed progression resolved resolving persistent persistently redemonstrated
acute subacute chronic mild mildly moderate moderately severe severely minimal minimally marked
markedly tiny trace large larger largest smaller smallest medium multiple single solitary several
diffuse diffusely focal focally patchy scattered extensive extensively limited partial partially
complete completely incomplete bilateral bilaterally unilateral left right lt rt midline central
peripheral upper lower middle mid superior inferior anterior posterior medial lateral proximal distal
apical basilar basal dorsal ventral cranial caudal deep superficial internal external ipsilateral
contralateral frontal parietal temporal occipital axial coronal sagittal oblique transverse
longitudinal views view image images series sequence sequences slice slices scan scans scanning
contrast enhanced enhancing enhancement unenhanced noncontrast non iv oral intravenous rectal
gadolinium iodinated omnipaque isovue visipaque dose low high dual energy phase arterial venous
portal delayed washout weighted flair dwi adc swi gre stir tse fse mpr mip mra mrv cta ctv
ct cat mri mr us xr cr dx rf xa mg nm pt pet spect dexa dxa ir fluoro fluoroscopy angiography
angiogram ultrasound sonography sonogram doppler duplex echo echocardiogram radiograph radiographs
radiography xray x-ray film films mammogram mammography mammo tomosynthesis scintigraphy
chest thorax thoracic abdomen abdominal pelvis pelvic head neck brain skull face facial orbit orbits
sinus sinuses spine spinal cervical lumbar sacral sacrum coccyx lumbosacral thoracolumbar
shoulder shoulders arm arms elbow elbows forearm wrist wrists hand hands finger fingers thumb hip hips
thigh femur knee knees leg legs tibia fibula ankle ankles foot feet toe toes heel extremity extremities
breast breasts axilla axillary nipple areola skin subcutaneous soft tissue tissues muscle muscles
tendon tendons ligament ligaments cartilage joint joints bone bones osseous marrow cortex cortical
liver hepatic spleen splenic kidney kidneys renal adrenal adrenals pancreas pancreatic gallbladder
biliary bile duct ducts bowel colon colonic rectum sigmoid cecum appendix stomach gastric duodenum
jejunum ileum esophagus esophageal bladder prostate uterus uterine ovary ovaries ovarian adnexa
adnexal testis testes testicle scrotum scrotal lung lungs pulmonary pleura pleural heart cardiac
pericardium pericardial aorta aortic artery arteries vein veins vessel vessels vascular
mediastinum mediastinal hilum hilar airway airways trachea bronchus bronchi bronchial lobe lobes
lobar segment segments segmental lingula diaphragm thyroid parotid lymph node nodes nodal
ventricle ventricles ventricular sulci cisterns cerebellum cerebral cerebellar brainstem pons
midbrain medulla cord thalamus basal ganglia hippocampus pituitary sella orbit globe
matter parenchyma parenchymal mass masses lesion lesions nodule nodules nodular cyst cysts cystic
tumor tumors neoplasm cancer carcinoma metastasis metastases metastatic lymphoma sarcoma adenoma
fracture fractures dislocation subluxation effusion effusions pneumothorax consolidation
atelectasis opacity opacities edema hemorrhage hematoma infarct infarction ischemia stroke
aneurysm dissection stenosis occlusion thrombus thrombosis embolism embolus calcification
calcifications calcified density densities dense fatty fat fluid air gas free collection abscess
inflammation infection pneumonia emphysema fibrosis scarring scar thickening wall walls margin
margins border borders surface contour size shape appearance morphology signal attenuation
echogenicity heterogeneous heterogeneously homogeneous homogeneously hypodense hyperdense
isodense hypoechoic hyperechoic anechoic hypointense hyperintense isointense
category birads bi-rads lirads li-rads pirads pi-rads tirads ti-rads lungrads lung-rads
fibroglandular extremely almost entirely predominantly scattered areas
follow followup follow-up correlation correlate clinically clinical further evaluation
management consider suggest suggested advised advise return repeat months additional
portable upright supine prone decubitus erect standing seated ap pa lat lateral inspiration
expiration inspiratory expiratory
hounsfield hu mm cm mmol mg ml cc kg gy mgy mgy-cm msv dlp ctdi ctdivol kv kvp mas
findings: impression: history: technique: comparison:
md m.d. do d.o. rn np pa pa-c crnp aprn phd ph.d. frcr frcpc facr frcp mbbs mbchb rt arrt rdms rvt
dnp msn bsn cnm mph dr drs mr mrs ms miss mx prof professor sir madam herr frau mme mlle
usa us uk
""")

# Words that double as common surnames/first names but are usually something else when
# capitalised in a report; blocked for heuristics and for a lone known-name token.
COMMON_WORD_NAMES = _words("""
white gray grey black brown green long short small little large young wall walls hill mass page case
cross bone stone rose may will mark hope faith joy grace june april august summer winter frost
snow glass rice bean bell hall park lane wood woods fields banks rivers moon star king prince
noble hardy wise good best rich love sharp strong church house branch bond day person power powers
fox wolf lamb crane swan bird head heart hand foot arm leg chest back side
person french english miles weeks waters rivers summers winters sparks price grant hunt ford banks pope
stout stark buck savage hale fry cherry flowers frank max ward gene lance penny ginger daisy crystal amber
jade holly dawn pearl ruby robin sterling chance chase hunter heath dale major rush gross marsh mann bass
gill pace hood barr booth hurst street north south east west early late lord
""")

# Eponyms and other name-like words of radiology: never a name unless a title/cue says so.
EPONYMS = _words("""
wilson graves paget baker barrett crohn parkinson alzheimer hodgkin addison cushing down turner
marfan ewing wilms kaposi meckel morison schatzki zenker chiari dandy walker arnold bankart
colles smith barton jones bennett rolando monteggia galeazzi segond maisonneuve lisfranc chopart
salter harris weber garden neer schatzker gustilo mason pott pellegrini stieda kienbock preiser
osgood schlatter sinding larsen perthes legg calve scheuermann klippel feil sturge hippel lindau
budd mallory weiss boerhaave zollinger ellison peutz jeghers gardner lynch meigs krukenberg
virchow murphy mcburney rovsing kerley fleischner hampton westermark golden luftsichel todd
wernicke korsakoff binswanger creutzfeldt jakob huntington pick lewy guillain barre horner
sequard gerota denonvilliers douglas retzius winslow treitz oddi vater wirsung santorini glisson
couinaud calot hartmann rokitansky aschoff meyer tornwaldt rathke luschka magendie monro sylvius
willis galen labbe trolard rosenthal heubner adamkiewicz batson kiesselbach eustachian stensen
wharton bochdalek morgagni hesselbach spigelian richter littre amyand nuck gartner nabothian
bartholin skene cowper peyronie fournier bosniak hounsfield doppler fontan glenn blalock
taussig norwood rastelli ebstein fallot eisenmenger kartagener swyer mayer hamman rich
tietze poland sprengel madelung kirner baastrup bertolotti schmorl modic pfirrmann
meyerding denis kummell chance jefferson hangman clay shoveler anderson montesano
frykman smith-petersen thompson hawkins sanders lauge hansen tillaux ottawa boehler bohler
gissane kohler freiberg sever iselin haglund achilles morton sinus
""")

# "Murphy sign", "Jones fracture", "Baker's cyst": a name-like token followed by one of these is an eponym
_EPONYM_NEXT = re.compile(
    r"(?:'s)?[ \t-]+(?:sign|signs|disease|syndrome|fracture|fractures|cyst|cysts|pouch|tumou?r|lymphoma|sarcoma|"
    r"malformation|anomaly|classification|criteria|score|scale|esophagus|diverticulum|palsy|lesion|lesions|"
    r"ring|lines?|nodes?|node|nodules?|space|triangle|hernia|type|procedure|operation|shunt|angle|guidelines?|society|"
    r"point|hump|effect|phenomenon|reflex|test|maneuver|view|views|method|technique|index|ratio|law|"
    r"deformity|dysplasia|contracture|neuroma|ulcer|canal|duct|foramen|fascia|capsule|ligament|gland|"
    r"glands|artery|vein|valve|bundle|body|bodies|cell|cells|stage|grade|system|catheter|tube|stent|"
    r"filter|needle|coil|pump|device|position|projection|formula|shadow|stripe|complex|prosthesis|"
    r"nail|rods?|plate|screws?|drain|line|repair|reconstruction|anastomosis|fundoplication|bypass|"
    r"criteria|classification|rules?|protocol|pouch|anatomy|physiology|variant|"
    r"\w*(?:ectomy|otomy|ostomy|plasty|pexy|rrhaphy|scopy|graphy))\b", re.I)


def _eponym_context(text: str, end: int) -> bool:
    return _EPONYM_NEXT.match(text, end) is not None


_PARTICLES = _words("van von de der den del della di da du la le ten ter bin ibn al el y dos das st")

_NON_NAME_SUFFIX = re.compile(
    r"(?:tion|sion|ment|ness|ity|ous|ive|ated|ized|ally|ular|ical|ology|ography|graphy|scopy|ectomy|"
    r"itis|osis|emia|oma|omas|ial|ary|ory|able|ible|less|ful|ward|wise|like)$"
)

_STATE_ABBR = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "
               "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR").split()
_STATE_FULL = ("Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|"
               "Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|"
               "Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|"
               "New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|"
               "Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|"
               "West Virginia|Wisconsin|Wyoming|Puerto Rico")
# State codes that are also credentials/modalities/common words: only trusted with a ZIP code.
_AMBIGUOUS_STATES = {"MD", "PA", "DE", "CO", "CT", "IN", "OR", "OK", "ME", "HI", "MS", "ID", "LA", "AL",
                     "GA", "MA", "MO", "NE", "OH", "DC", "PR", "SC", "ND", "SD", "RI", "UT", "VA", "WA", "MN"}


# letters NFKD does not decompose
_NO_DECOMP = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE",
                            "đ": "d", "Đ": "D", "ı": "i", "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D"})
# German umlauts as ASCII-only systems write them ("Gröbner" -> "GROEBNER")
_UMLAUT_EXPAND = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "AE", "Ö": "OE", "Ü": "UE"})


def _strip_accents(s: str) -> str:
    s = s.translate(_NO_DECOMP)
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


_CYR_COMMON = dict(zip("абвгдезиклмнопрстуфыэъь", ["a", "b", "v", "g", "d", "e", "z", "i", "k", "l", "m", "n", "o",
                                                      "p", "r", "s", "t", "u", "f", "y", "e", "", ""]))
# three usual romanisations of Russian names: Tatyana Kuznetsova, Tatiana Kuznetsova, Tatjana Kusnezowa
_CYR_SCHEMES = [
    {**_CYR_COMMON, "ё": "e", "ж": "zh", "й": "y", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ю": "yu",
     "я": "ya"},
    {**_CYR_COMMON, "ё": "e", "ж": "zh", "й": "i", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ю": "iu",
     "я": "ia"},
    {**_CYR_COMMON, "ё": "jo", "ж": "sh", "й": "j", "х": "ch", "ц": "z", "ч": "tsch", "ш": "sch", "щ": "schtsch",
     "ю": "ju", "я": "ja", "в": "w", "з": "s"},
]


def _translit_variants(raw: str, n: str) -> set[str]:
    """Other spellings of a known name word: umlauts expanded (Gröbner -> groebner), the
    expansions of an ASCII-only header contracted (GROEBNER -> grobner, the text's Gröbner), and a
    Cyrillic name in Latin letters (Кузнецова -> kuznetsova, kusnezowa)."""
    out = {_norm(raw.translate(_UMLAUT_EXPAND)), re.sub(r"([aou])e", r"\1", n)}
    if any("\u0400" <= c <= "\u04ff" for c in n):
        for scheme in _CYR_SCHEMES:
            out.add("".join(scheme.get(c, c) for c in n))
    out.discard(n)
    return {v for v in out if len(v) >= 3}


# soft hyphen, zero-width space/joiners, word joiner, BOM, Arabic tatweel: drawn as nothing, or as
# a stretch of the line, inside a word
_INVISIBLE_RE = re.compile("[\u00ad\u200b-\u200d\u2060\ufeff\u0640]")


def _other_kana(s: str) -> str:
    """Hiragana as katakana and katakana as hiragana (the same reading in the other script)."""
    return "".join(chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else
                   chr(ord(c) - 0x60) if "\u30a1" <= c <= "\u30f6" else c for c in s)


def strip_invisible(s: str) -> str:
    """Invisible characters removed and accents composed (NFC: "Mu\u0308ller", as macOS writes
    it, is "Müller"), so a name matches however it was typed."""
    if not s:
        return s
    if not s.isascii() and not unicodedata.is_normalized("NFC", s):
        s = unicodedata.normalize("NFC", s)
    return _INVISIBLE_RE.sub("", s)


def _norm(tok: str) -> str:
    t = _strip_accents(strip_invisible(tok)).replace("\u2019", "'").replace("\u02bc", "'").casefold()
    if t.endswith("'s"):
        t = t[:-2]
    return t


@functools.lru_cache(maxsize=1)
def _name_lists() -> tuple[frozenset[str], frozenset[str]]:
    def load(fname: str) -> frozenset[str]:
        try:
            raw = resources.files("medanon.data").joinpath(fname).read_text(encoding="utf-8")
        except Exception:  # pragma: no cover - missing package data
            log.warning("name list %s not found", fname)
            return frozenset()
        return frozenset(_norm(w) for w in raw.split() if w.strip() and _norm(w) not in NEVER_NAME)

    return load("first_names.txt"), load("last_names.txt")


# --------------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(r"[^\W\d_](?:[^\W\d_]|['\u2019](?=[^\W\d_])|-(?=[^\W\d_]))*")


class _Tok(NamedTuple):
    start: int
    end: int
    text: str
    norm: str


def _tokens(text: str) -> list[_Tok]:
    return [_Tok(m.start(), m.end(), m.group(), _norm(m.group())) for m in _TOKEN_RE.finditer(text)]


def _is_initial(t: _Tok) -> bool:
    return len(t.text) == 1 and t.text.isupper()


def _is_cap(t: _Tok) -> bool:
    return t.text[:1].isupper()


def _blocked(norm: str) -> bool:
    if norm in NEVER_NAME or norm in COMMON_WORD_NAMES or norm in EPONYMS:
        return True
    if "-" in norm:  # "Brown-Sequard", "Salter-Harris": any eponym/common piece blocks heuristics
        return any(p in NEVER_NAME or p in COMMON_WORD_NAMES or p in EPONYMS for p in _pieces(norm))
    return False


def _pieces(norm: str) -> list[str]:
    return [p for p in norm.split("-") if p]


# --------------------------------------------------------------------------- dates

_MONTH_TABLES: dict[str, list[str]] = {
    "en_full": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December"],
    "en_abbr": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    "de_full": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
                "Oktober", "November", "Dezember"],
    "fr_full": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
                "octobre", "novembre", "décembre"],
}
_MONTH_LOOKUP: dict[str, tuple[int, str]] = {}
for _tbl in ("fr_full", "de_full", "en_abbr", "en_full"):  # later tables win for shared spellings
    for _i, _n in enumerate(_MONTH_TABLES[_tbl]):
        _MONTH_LOOKUP[_n.casefold()] = (_i + 1, _tbl)
_MONTH_LOOKUP.update({"sept": (9, "en_abbr"), "maerz": (3, "de_full"), "fevrier": (2, "fr_full"),
                      "aout": (8, "fr_full"), "decembre": (12, "fr_full")})
_EN_MONTHS = {n.casefold() for n in _MONTH_TABLES["en_full"] + _MONTH_TABLES["en_abbr"]} | {"sept"}

_MON_ALT = "|".join(sorted((re.escape(k) for k in _MONTH_LOOKUP), key=len, reverse=True))
_MONTH = rf"(?P<mon>{_MON_ALT})(?P<dot>\.)?"
_EN_MON_ALT = "|".join(sorted((re.escape(k) for k in _EN_MONTHS), key=len, reverse=True))
_YEAR4 = r"(?P<y>1[89]\d\d|2[01]\d\d)"
_DAY = r"(?P<d>3[01]|[12]\d|0?[1-9])"
_SFX = r"(?P<sfx>st|nd|rd|th)?"

_DATE_PATTERNS: list[tuple[str, re.Pattern]] = [
    # 2021-03-04, 2021/03/04, 2021.03.04
    ("ymd", re.compile(rf"(?<![\d.]){_YEAR4}(?P<s>[-/.])(?P<m>1[0-2]|0?[1-9])(?P=s){_DAY}(?![\d]|\.\d)")),
    # 03/04/2021, 3-4-2021, 04.03.2021, 03/04/21
    ("num3", re.compile(r"(?<![\d./-])(?P<a>\d{1,2})(?P<s>[/.-])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})"
                        r"(?![\d]|[./-]\d)")),
    # 20210304, DICOM DT 20210304101530.123
    ("compact", re.compile(r"(?<![\w.])(?P<y>(?:19|20)\d\d)(?P<m>0[1-9]|1[0-2])(?P<d>0[1-9]|[12]\d|3[01])"
                           r"(?P<t>\d{2}|\d{4}|\d{6}(?:\.\d{1,6})?)?(?![\w]|\.\d)")),
    # March 3, 2021 / Mar. 3rd 2021
    ("mdy_name", re.compile(rf"(?<![\w]){_MONTH}\s+{_DAY}{_SFX}(?:,\s*|\s+){_YEAR4}(?!\d)", re.I)),
    # 3 March 2021 / 3rd of March, 2021 / 3. März 2021
    ("dmy_name", re.compile(rf"(?<![\w]){_DAY}(?:{_SFX}|(?P<ddot>\.))(?:\s+of)?\s+{_MONTH},?\s+{_YEAR4}(?!\d)",
                            re.I)),
    # 03-Mar-2021 / 03Mar2021 / 3-MAR-21 / 03/Mar/2021
    ("dmony", re.compile(rf"(?<![\w]){_DAY}(?P<s>[-/]?)(?P<mon>{_MON_ALT})(?P=s)(?P<y>\d{{4}}|\d{{2}})(?![\w])",
                         re.I)),
    # March 2021 / Mar. 2021
    ("my", re.compile(rf"(?<![\w]){_MONTH}\s+{_YEAR4}(?!\d)", re.I)),
    # 03/2021
    ("num_my", re.compile(r"(?<![\d/.-])(?P<m>0?[1-9]|1[0-2])/(?P<y>(?:19|20)\d\d)(?![\d/])")),
    # March 3 / Mar 3rd (no year)
    ("md", re.compile(rf"(?<![\w])(?P<mon>{_EN_MON_ALT})(?P<dot>\.)?\s+{_DAY}{_SFX}"
                      r"(?![\d:.,]\d|\d|\s*(?:mm|cm|%|x\b|-\s*\d|to\s+\d))", re.I)),
    # 3 March / 3rd of March (no year)
    ("dm", re.compile(rf"(?<![\w.,]){_DAY}{_SFX}(?:\s+of)?\s+(?P<mon>{_EN_MON_ALT})(?P<dot>\.)?(?![\w])", re.I)),
]


def _two_digit_year(y: int) -> int:
    this = date.today().year
    return 2000 + y if 2000 + y <= this + 1 else 1900 + y


def _parse_date_match(kind: str, m: re.Match) -> tuple[date, dict] | None:
    """(calendar date, info needed to re-format) or None if not a valid date."""
    g = m.groupdict()
    info: dict = {}
    try:
        if kind in ("ymd", "compact"):
            y, mo, d = int(g["y"]), int(g["m"]), int(g["d"])
        elif kind == "num3":
            a, b, ys = int(g["a"]), int(g["b"]), g["y"]
            sep = g["s"]
            if len(ys) == 2 and sep != "/":
                return None
            if sep == ".":
                dmy = not (b > 12 and a <= 12)
            else:
                dmy = a > 12 and b <= 12
            mo, d = (b, a) if dmy else (a, b)
            y = int(ys) if len(ys) == 4 else _two_digit_year(int(ys))
            if not 1800 <= y <= 2199:
                return None
            info["dmy"] = dmy
        elif kind in ("mdy_name", "dmy_name", "dmony", "my", "md", "dm"):
            mon = g["mon"]
            key = mon.casefold()
            mo, tbl = _MONTH_LOOKUP[key] if key in _MONTH_LOOKUP else _MONTH_LOOKUP[_strip_accents(key)]
            if key == "may":  # "May" is both the full name and the abbreviation
                tbl = "en_full" if kind == "mdy_name" and "," in m.group(0) else "en_abbr"
            info["tbl"] = tbl
            if kind in ("md", "dm", "my") and not mon[:1].isupper():
                return None  # "may 3" is a verb far more often than a date
            if kind in ("md", "dm"):
                y = 2000  # leap reference year: keeps Feb 29 valid
                d = int(g["d"])
            elif kind == "my":
                y, d = int(g["y"]), 15
            else:
                ys = g["y"]
                y = int(ys) if len(ys) == 4 else _two_digit_year(int(ys))
                d = int(g["d"])
        elif kind == "num_my":
            y, mo, d = int(g["y"]), int(g["m"]), 15
        else:
            return None
        return date(y, mo, d), info
    except (ValueError, KeyError):
        return None


def _fmt_num(orig: str, value: int) -> str:
    return f"{value:0{len(orig)}d}" if orig.startswith("0") or len(orig) > len(str(value)) else str(value)


def _fmt_month_name(orig: str, month: int, tbl: str) -> str:
    if tbl == "en_abbr" and len(orig) == 4 and orig.casefold() == "sept":
        new = "Sept" if month == 9 else _MONTH_TABLES["en_abbr"][month - 1]
    else:
        new = _MONTH_TABLES[tbl][month - 1]
    if orig.isupper():
        return new.upper()
    if orig.islower():
        return new.lower()
    return new[:1].upper() + new[1:]


def _ordinal(day: int, orig_sfx: str) -> str:
    if 10 <= day % 100 <= 20:
        s = "th"
    else:
        s = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return s.upper() if orig_sfx.isupper() else s


def _format_shifted(kind: str, m: re.Match, info: dict, new: date) -> str:
    base = m.start()
    txt = m.group(0)
    repl: list[tuple[int, int, str]] = []

    def put(group: str, value: str):
        if m.group(group) is not None and m.start(group) >= 0:
            repl.append((m.start(group) - base, m.end(group) - base, value))

    g = m.groupdict()
    if "y" in g and g["y"] is not None:
        put("y", f"{new.year:04d}" if len(g["y"]) == 4 else f"{new.year % 100:02d}")
    if kind == "num3":
        mg, dg = ("b", "a") if info.get("dmy") else ("a", "b")
        put(mg, _fmt_num(g[mg], new.month))
        put(dg, _fmt_num(g[dg], new.day))
    else:
        if g.get("m") is not None:
            put("m", _fmt_num(g["m"], new.month))
        if g.get("mon") is not None:
            put("mon", _fmt_month_name(g["mon"], new.month, info["tbl"]))
        if g.get("d") is not None and kind not in ("my", "num_my"):
            put("d", _fmt_num(g["d"], new.day))
        if g.get("sfx"):
            put("sfx", _ordinal(new.day, g["sfx"]))
    out = txt
    for s, e, v in sorted(repl, reverse=True):
        out = out[:s] + v + out[e:]
    return out


def _iter_dates(text: str) -> Iterable[tuple[int, int, str, re.Match, date, dict]]:
    for kind, pat in _DATE_PATTERNS:
        for m in pat.finditer(text):
            parsed = _parse_date_match(kind, m)
            if parsed is not None:
                yield m.start(), m.end(), kind, m, parsed[0], parsed[1]


def find_dates(text: str) -> list[tuple[int, int, date]]:
    """Complete dates (day, month and year) found in ``text`` as (start, end, calendar date)."""
    out = []
    for s, e, kind, _m, d, _info in _iter_dates(text or ""):
        if kind not in ("my", "num_my", "md", "dm"):
            out.append((s, e, d, kind))
    # prefer the longest match at a position
    out.sort(key=lambda x: (x[0], -(x[1] - x[0])))
    res, last_end = [], -1
    for s, e, d, kind in out:
        if s >= last_end:
            res.append((s, e, d))
            last_end = e
    return res


def shift_date_text(value: str, days: int) -> str | None:
    """Shift a date written in any supported format, keeping the format; None if not a date."""
    best = None
    for kind, pat in _DATE_PATTERNS:
        m = pat.fullmatch(value)
        if m is None:
            continue
        parsed = _parse_date_match(kind, m)
        if parsed is not None:
            best = (kind, m, parsed)
            break
    if best is None:
        return None
    kind, m, (d, info) = best
    return _format_shifted(kind, m, info, d + timedelta(days=days))


def shift_da(value: str, days: int) -> str:
    """Shift a DICOM DA ("YYYYMMDD") or DT ("YYYYMMDDhhmmss.ffffff&ZZXX") by ``days``.

    Uses the same arithmetic as :func:`clean_text` (``datetime.date + timedelta``), so a
    date written in a report and the same date in a header end up equal.  The time and
    fraction of a DT are kept, its UTC offset dropped (as in the DICOM).  Legacy "YYYY.MM.DD"
    keeps its dots.  A year-only DT ("YYYY") is returned unchanged; an empty or unparseable
    value -> "".
    """
    v = (value or "").strip()
    if not v:
        return ""
    if len(v) >= 10 and re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", v[:10]):
        try:
            d = date(int(v[:4]), int(v[5:7]), int(v[8:10])) + timedelta(days=days)
        except ValueError:
            return ""
        return d.strftime("%Y.%m.%d") + v[10:]
    if len(v) == 4 and v.isdigit():
        return v
    from .keys import shift_date  # the same arithmetic as the DICOM dates

    return shift_date(v, days)


# --------------------------------------------------------------------------- regex detectors

_EMAIL_RE = re.compile(r"(?<![\w.+-])(?:[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
                       r"|[A-Za-z][\w.+-]{3,}@[A-Za-z][\w-]{3,}(?![\w@]|\.\w))")  # "user@host" too, not "mg@hs"
_URL_RE = re.compile(r"(?:\b(?:https?|ftp|sftp|dicom|file)://|\bwww\.)[^\s<>\"'\]\)]+", re.I)
_HOST_RE = re.compile(
    r"(?<![\w@.-])(?:[A-Za-z0-9-]+\.)+(?:com|org|net|edu|gov|mil|io|info|biz|us|uk|de|fr|ca|au|nl|ch|at|"
    r"it|es|jp|cn|be|se|no|dk|fi|ie|nz|health|care|hospital|local|lan)(?![\w-])(?:/[^\s<>\"']*)?", re.I)
_IP_RE = re.compile(r"(?<![\w.])(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}(?![\w]|\.\d)")
UID_RE = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d*)){3,}(?![\w]|\.\d)")

_PHONE_RES = [
    re.compile(r"(?<![\w+.])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s*|\d{3}[\s.-])\d{3}[\s.-]\d{4}"
               r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?(?![\w])", re.I),
    re.compile(r"(?<![\w+.])\+\d{1,3}(?:[\s.-]?(?:\(\d{1,5}\)|\d{1,5})){2,6}(?![\w])"),
    re.compile(r"(?<![\w.-])\d{3}-\d{4}(?![\w-]|\.\d)"),
    re.compile(r"(?<![\w])x\d{3,5}(?![\w])"),
]
_PHONE_CUE_RE = re.compile(
    r"\b(?:phone|ph|tel|telephone|cell|cellphone|mobile|pager|pgr|beeper|fax|callback|call\s*back|"
    r"contact\s*(?:no\.?|number|#)|ext|extension|tel\.?\s*no|telefon|t[ée]l[ée]phone|portable)\b\.?"
    r"\s*(?:#|no\.?|number|num)?\s*[:#=]?\s*"
    r"(?P<v>\+?(?:\(\d{1,5}\)|\d{1,5})(?:(?:[.-]|\s[.-]?\s?)?(?:\(\d{1,5}\)|\d{2,5})){0,5})", re.I)
_SSN_RE = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")

_ID_CUE_RE = re.compile(
    r"(?<![\w])(?:MRN|MR\s*#|MR\s*No\.?|Med(?:ical)?\.?\s*Rec(?:ord)?\.?\s*(?:No\.?|Number|Num|#)?|"
    r"Patient\s*(?:ID|Id|No\.?|Number|#)|Pat(?:ient)?\.?\s*-?\s*(?:ID|Nr\.?|No\.?|#)|PID|Pt\s*ID|"
    r"Acc(?:ession)?\.?\s*(?:No\.?|Number|Num|Nr\.?|#)?|Order\s*(?:ID|No\.?|Number|Nr\.?|#)|"
    r"Req(?:uisition)?\.?\s*(?:No\.?|Number|#)|Encounter\s*(?:ID|No\.?|Number|#)?|"
    r"Visit\s*(?:ID|No\.?|Number|#)|Account\s*(?:No\.?|Number|#)?|Acct\.?\s*(?:No\.?|#)?|CSN|FIN|"
    r"SSN|Social\s+Security\s*(?:No\.?|Number|#)?|Study\s*(?:ID|No\.?|#)|Exam\s*(?:ID|No\.?|#)|"
    r"Case\s*(?:ID|No\.?|#)|Insurance\s*(?:ID|No\.?|#)|Policy\s*(?:No\.?|#)|Member\s*ID|NPI|DEA|"
    r"License\s*(?:No\.?|#)|Fallnummer|Fall-Nr\.?|Auftragsnummer|Auftrags-Nr\.?|IPP|NIP|"
    r"Unit\s*(?:No\.?|Number)|Hosp(?:ital)?\.?\s*(?:No\.?|Number|#))"
    r"\s*[:#=]?\s*(?:is\s+)?(?P<v>[A-Za-z0-9]*\d[A-Za-z0-9]*(?:[-./][A-Za-z0-9]+)*(?:\s\d+(?:[-./]\d+)*)*)",
    re.I)
_DIGITS_RE = re.compile(r"(?<![\w.,])\d{6,}(?![\w]|[.,]\d)")
_DASHED_RE = re.compile(r"(?<![\w.-])\d{2,}(?:[-/]\d{2,}){2,}(?![\w-]|[.]\d)")
_ALNUM_RE = re.compile(r"(?<![\w-])[A-Za-z0-9](?:[A-Za-z0-9]|[-_](?=[A-Za-z0-9]))*(?![\w-])")
_UNIT_TOKEN_RE = re.compile(r"\d+(?:[-_]?[A-Za-z]{1,6}(?:[-_][A-Za-z]{1,6})?)")

_UNITS_WORDS = "one|two|three|four|five|six|seven|eight|nine"
_AGE_WORDS = (rf"(?:ninety(?:[ -](?:{_UNITS_WORDS}))?|a[ \t]+hundred(?:[ \t]+and)?(?:[ \t]+(?:{_UNITS_WORDS}))?"
              rf"|one[ \t]+hundred(?:[ \t]+and)?(?:[ \t]+(?:{_UNITS_WORDS}|ten))?)")
_NOT_AGE_AFTER = (r"[ \t]*(?:%|°|(?:percent|per[ \t]*cent|degrees?|mm|cm|ml|mg|kg|lbs?|pounds|minutes?|mins?|"
                  r"seconds?|secs?|hours?|hrs?|days?|weeks?|months?|times|beats|bpm|units?|feet|ft|inches)\b)")
_AGE_RES = [
    re.compile(r"(?<![\w.])(?P<n>9\d|1[0-3]\d)(?:\s*|-)(?:years?|yrs?|yr)(?:\s*|-)(?:old|of\s+age)\b", re.I),
    re.compile(r"(?<![\w.])(?P<n>9\d|1[0-3]\d)\s*-?\s*(?:yo|y/o|y\.o\.?|yr\.?\s*old|year\s*old)(?![\w])", re.I),
    re.compile(r"\bage[ds]?\s*[:=]?\s*(?P<n>9\d|1[0-3]\d)(?!\d|\.\d)", re.I),
    re.compile(r"(?<![\w.])(?P<n>0?(?:9\d|1[0-3]\d)Y)(?![\w])"),
    re.compile(r"(?<![\w.])(?P<n>(?:9\d|1[0-3]\d)\s?(?:y|yrs?|years?))(?![\w/])(?![ \t-]*(?:old|of\s+age)\b)",
               re.I),  # "92y", "92 yrs" ("92 year old" is the rules' above: the number alone goes)
    re.compile(r"(?<![\w.])(?P<n>9\d|1[0-3]\d)\s*-?\s*(?:year|yr)s?\s*-?\s*old\b", re.I),
    re.compile(r"(?<![\w.])(?P<n>9\d|1[0-3]\d)(?:\s*|-)(?:jährige[rn]?|ans|años|anni|jaar|Jahre)\b", re.I),
    re.compile(r"(?<![\w.])(?P<n>9\d|1[0-3]\d)\s?(?:歳|才)"),
    # spelled out: "is ninety-two", "aged one hundred and one", "ninety-two years old"
    re.compile(rf"(?:(?<![\w])(?:is|aged?|turned|now)[ \t]+(?P<n>{_AGE_WORDS})(?![\w-])(?!{_NOT_AGE_AFTER})"
               rf"|(?<![\w-])(?P<m>{_AGE_WORDS})(?=[ \t-]*(?:years?|yrs?)[ \t-]*old\b))", re.I),
]

_SUFFIX_FULL = ("Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Terrace|Circle|Highway|Parkway|"
                "Square|Trail|Alley|Crescent|Close|Loop|Turnpike|Plaza|Way|Row|Pike|Expressway|Freeway|"
                "Gardens|Mews|Grove|Walk|Parade|Rise|Vale|Heights|Quay|Wharf")
_SUFFIX_ABBR = "St|Ave|Av|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Cir|Hwy|Pkwy|Sq|Trl|Cres|Expy|Fwy"
_STREET_SUFFIX = (rf"(?:{_SUFFIX_FULL}|{_SUFFIX_FULL.upper()}|(?:{_SUFFIX_ABBR})\b\.?|"
                  rf"(?:{_SUFFIX_ABBR.upper()})\b\.)")
_ZIP = r"\d{5}(?:-\d{4})?"
_STATES = rf"(?:{'|'.join(_STATE_ABBR)}|{_STATE_FULL})"
_CITY = r"[A-Z][A-Za-z.'\u2019-]+(?:\s+[A-Z][A-Za-z.'\u2019-]+){0,2}"
_UNIT = r"(?:,?\s*(?:Apt|APT|Apartment|Suite|SUITE|Ste|STE|Unit|UNIT|Fl|Floor|Rm|Room|Bldg|#)\.?\s*#?\s*[A-Za-z0-9-]+)"
_ADDR_RE = re.compile(
    rf"(?<![\w.])\d{{1,6}}[A-Za-z]?[ \t]+(?:(?:[NSEW]|North|South|East|West|NORTH|SOUTH|EAST|WEST)\.?[ \t]+)?"
    rf"(?:(?:[A-Z][\w'\u2019.-]*|\d+(?:st|nd|rd|th|ST|ND|RD|TH))[ \t]+){{1,4}}?{_STREET_SUFFIX}"
    rf"(?:\s+(?:[NSEW]{{1,2}}|North|South|East|West)\b\.?)?"
    rf"{_UNIT}?"
    rf"(?:,\s*{_CITY}(?:(?:,\s*|\s+){_STATES}\b\.?)?(?:,?\s*{_ZIP})?"
    rf"|,?\s*{_STATES}\b\.?,?\s*{_ZIP})?"
)
_POBOX_RE = re.compile(r"\bP\.?\s*O\.?\s*Box\s+\d+\b", re.I)
_CITY_STATE_ZIP_RE = re.compile(rf"(?<![\w])(?P<city>{_CITY}),?\s+{_STATES}\.?,?\s+{_ZIP}(?![\w-])")
_CITY_FULLSTATE_RE = re.compile(rf"(?<![\w])(?P<city>{_CITY}),\s*(?:{_STATE_FULL})\b")
_CITY_STATE_RE = re.compile(rf"(?<![\w])(?P<city>{_CITY}),\s*(?P<st>[A-Z]{{2}})(?![\w])")
_ZIP_CUE_RE = re.compile(rf"\b(?:zip|zip\s*code|postal\s*code|postcode|PLZ)\s*[:#]?\s*(?P<v>{_ZIP}|\d{{4,5}})\b", re.I)
_RESIDES_RE = re.compile(rf"\b(?:lives|living|resides|residing|resident|born)\s+(?:in|at|of)\s+(?P<v>{_CITY})")
_UK_POSTCODE_RE = re.compile(r"(?<![\w])[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}(?![\w])")
_EU_STREET_RE = re.compile(
    r"(?<![\w])[A-ZÄÖÜ][\wäöüß.-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|chaussee)"
    r"\s+\d+\s?[a-z]?(?:,\s*(?:D-)?\d{4,5}\s+[A-ZÄÖÜ][\wäöüß-]+(?:\s+[A-ZÄÖÜ][\wäöüß-]+)?)?")
_FR_STREET_RE = re.compile(
    r"(?<![\w])\d{1,4}(?:\s*(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|allee|impasse|"
    r"quai|route|cours)\s+(?:(?:de|du|des|la|le|l'|d')\s*)*[A-ZÉÈ][\w'-]+(?:\s+[A-ZÉÈ][\w'-]+){0,3}"
    r"(?:,\s*\d{5}\s+[A-ZÉÈ][\w-]+)?", re.I)
_EU_ZIP_CITY_RE = re.compile(
    r"(?<![\w.-])(?:(?:D|F|A|CH|B|L|NL)-\d{4,5}|\d{5})[ \t]+(?=[A-ZÄÖÜ])(?P<city>[A-ZÄÖÜ][a-zäöüßé]+)(?![\w])")

# Words that announce a birth date (report header extraction in reports.py uses them too).
BIRTH_CUE = (r"(?:DOB|D\.O\.B\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?|geb\.?|geboren(?:\s+am)?|"
             r"geburtsdatum|date\s+de\s+naissance|n[ée]+\s+le)")
_DOB_CUE_RE = re.compile(rf"(?<![\w]){BIRTH_CUE}\s*[:#=]?\s*$", re.I)

_INST_SUFFIX = (r"(?:Hospital|Hospitals|Medical\s+Center|Medical\s+Centre|Health\s+Center|Health\s+System|"
                r"Healthcare|Health\s+Care|Clinic|Clinics|Infirmary|Imaging\s+Center|Imaging\s+Centre|"
                r"Radiology\s+Associates|Radiology\s+Group|Cancer\s+Center|Cancer\s+Institute|Medical\s+Group|"
                r"Klinikum|Krankenhaus|Klinik|Universitätsklinikum|Sanatorium|Hospice|Nursing\s+Home|"
                r"Rehabilitation\s+Center|Surgery\s+Center|Medical\s+Associates|Health|Institute|Diagnostics)")
_INST_RE = re.compile(
    rf"(?<![\w])(?:(?:St\.|Saint|Mount|Mt\.)[ \t]+)?(?:[A-Z][\w'\u2019&.-]*[ \t]+){{1,5}}(?:of[ \t]+[A-Z]\w+[ \t]+)?"
    rf"{_INST_SUFFIX}(?![\w])(?:[ \t]+(?:of|at)[ \t]+[A-Z][\w'-]*(?:[ \t]+[A-Z][\w'-]*){{0,3}})?")
_INST_OF_RE = re.compile(
    r"(?<![\w])(?:Hospital|University|Clinic|Hôpital|Hopital|Centre\s+Hospitalier|Universit[yä]t\w*|"
    r"Clinique)[ \t]+(?:of|de|du|des|d'|at)[ \t]*[A-Z][\w'-]*(?:[ \t]+[A-Z][\w'-]*){0,3}")
_INST_GENERIC = _words("""the a an outside other local our this that community regional general memorial
university county city state general hospital clinic medical center health emergency main new
department dept radiology imaging ultrasound ct mri mr outpatient inpatient pediatric childrens children's
women's womens veterans va cancer heart""")

_TITLE_RE = re.compile(
    r"(?<![\w.])(?P<t>Dr|DR|Drs|DRS|Doctor|DOCTOR|Mr|Mrs|MRS|Ms|Miss|MISS|Mx|Prof|PROF|Professor|"
    r"Herr|Frau|Mme|Mlle|Madame|Monsieur|Sr|Sra|Srta|Dra|Pr)(?:\.(?=\s*\S)|(?=\s))"
    r"(?:\s+(?:med|dent|rer\.\s*nat|phil|univ|h\.\s*c)\.(?:\s+(?:dent|univ)\.)?)?"
    r"|(?<![\w.])(?P<tu>MR|MS)\.")
_CRED_RE = re.compile(
    r"(?<![\w.])(?P<c>M\.\s?D\.|MD|D\.\s?O\.|DO|R\.N\.|RN|PA-C|PA|NP|CRNP|APRN|Ph\.\s?D\.|PhD|FRCR|FRCPC|FACR|"
    r"FRCP|MBBS|MBChB|RT\s?\(R\)(?:\s?\(CT\))?|RT|RDMS|RVT|ARRT|CNM|DNP)(?![\w])")
_STRICT_CREDS = {"DO", "PA", "RT", "NP"}
_TITLE_WORDS = {"dr", "drs", "mr", "mrs", "ms", "mx", "prof", "sir", "dra", "sr", "sra", "pr"}

_CUES_FREE = [
    "electronically signed by", "electronically signed", "e-signed by", "signed by", "dictated by",
    "transcribed by", "read by", "reviewed by", "interpreted by", "verified by", "approved by",
    "performed by", "acknowledged by", "confirmed by", "reported by", "ordered by", "requested by",
    "referred by", "discussed with", "communicated to", "communicated with", "called to", "relayed to",
    "conveyed to", "reported to", "spoke with", "spoke to", "d/w", "notified", "paged", "informed",
    "reviewed with", "consulted with", "conferred with", "in consultation with", "seen with", "met with",
    "office of", "care of", "c/o", "attention", "faxed to", "sent to", "mailed to", "forwarded to",
    "copied to", "per", "according to", "accompanied by", "escorted by", "brought in by", "translated by",
    "interpreter", "consent obtained from", "consented by", "texted to", "texted", "emailed to", "messaged",
    "phoned", "neighbour", "neighbor",
    "referring physician", "referring provider", "referring doctor", "referring clinician",
    "ordering physician", "ordering provider", "ordering clinician", "attending physician",
    "attending radiologist", "attending", "resident", "fellow", "technologist", "sonographer",
    "radiologist", "physician", "provider", "primary care physician", "pcp", "cc", "copy to", "copies to",
    "patient", "pt", "daughter", "son", "wife", "husband", "mother", "father", "sister", "brother",
    "spouse", "guardian", "partner", "caregiver", "friend", "aunt", "uncle", "niece", "nephew",
    "cousin", "grandson", "granddaughter", "grandmother", "grandfather", "mom", "dad", "boyfriend",
    "girlfriend", "fiance", "fiancee", "stepdaughter", "stepson", "stepmother", "stepfather",
    "next of kin", "emergency contact", "proxy", "nok", "poa", "healthcare proxy", "nurse",
    "befundet von", "unterschrieben von", "arzt", "ärztin", "zuweiser", "sohn", "tochter", "ehefrau",
    "ehemann", "signé par", "dicté par", "médecin", "fils", "fille", "épouse", "époux",
    "mrs", "mr", "ms",
]
_CUES_COLON = ["name", "patient name", "pt name", "patient", "names", "author", "signed", "dictated", "reader",
               "from", "to", "attn", "contact", "referrer", "referring", "requesting", "requested",
               "ordering", "doctor", "dr", "nurse", "tech", "nom", "prénom", "patientin", "patienten", "vorname",
               "nachname"]
_CUE_FREE_RE = re.compile(
    r"(?<![\w])(?:" + "|".join(re.escape(c).replace(r"\ ", r"\s+") for c in sorted(_CUES_FREE, key=len, reverse=True))
    + r")(?![\w])", re.I)
_CUE_COLON_RE = re.compile(
    r"(?<![\w])(?:" + "|".join(re.escape(c).replace(r"\ ", r"\s+") for c in sorted(_CUES_COLON, key=len, reverse=True))
    + r")\s*:", re.I)
_INITIALS_CUE_RE = re.compile(
    r"(?<![\w])(?:tech(?:nologist)?s?|sonographer|transcriptionist|initials|dict(?:ated)?(?:\s+by)?|"
    r"trans(?:cribed)?(?:\s+by)?|scribe|rad(?:iologist)?|read\s+by|performed\s+by)\.?(?P<colon>\s*[:#/-])?\s*"
    r"(?P<v>[A-Z]{2,3}(?:/[A-Za-z]{2,3})?)(?![\w])", re.I)
_TRANS_INITIALS_RE = re.compile(r"(?<![\w/])(?P<v>[A-Z]{2,3}/[a-z]{2,4})(?![\w/])")


# --------------------------------------------------------------------------- detector helpers


class _Ctx:
    """Per-call state: text, tokens, collected candidate spans."""

    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.starts = {t.start: i for i, t in enumerate(self.toks)}
        self.spans: list[tuple[int, int, str]] = []
        self.name_context_tokens: set[str] = set()  # normalized tokens proven to be names

    def add(self, s: int, e: int, kind: str):
        if 0 <= s < e <= len(self.text):
            self.spans.append((s, e, kind))

    def tok_index_at_or_after(self, pos: int) -> int | None:
        lo, hi = 0, len(self.toks)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.toks[mid].start < pos:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self.toks) else None

    def tok_index_ending_at_or_before(self, pos: int) -> int | None:
        lo, hi = 0, len(self.toks)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.toks[mid].end <= pos:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1 if lo > 0 else None


def _namey(t: _Tok, first: frozenset, last: frozenset, *, allow_common: bool = True,
           allow_short_upper: bool = False) -> bool:
    """Could this capitalised token be part of a person name (context supplied by caller)?"""
    if not _is_cap(t) or len(t.text) < 2:
        return False
    n = t.norm
    if n in NEVER_NAME:
        return False
    if not allow_common and _blocked(n):
        return False
    in_lists = n in first or n in last or any(p in first or p in last for p in _pieces(n))
    if t.text.isupper() and len(t.text) <= 3 and not in_lists and not (allow_short_upper and len(t.text) == 3):
        return False  # acronyms: CT, ICU, LLL ...
    if not in_lists and len(n) > 5 and _NON_NAME_SUFFIX.search(n):
        return False
    return True


# inside a name: one blank (two or more usually separate form fields: "Name: X Y    MRN ...")
_SEP_SPACE = re.compile(r"[ \t]|\^| ?- ?(?=\S)")
_SEP_AFTER_INITIAL = re.compile(r"\.? ?|\.?\^")
_SEP_COMMA = re.compile(r"[ \t]*,[ \t]*")


def _run_forward(ctx: _Ctx, i: int, *, allow_comma: bool, max_tokens: int = 4,
                 allow_common: bool = True) -> tuple[int, int] | None:
    """Extend a person-name run starting at token i; returns (start, end) chars or None."""
    first, last = _name_lists()
    toks, text = ctx.toks, ctx.text
    run: list[tuple[_Tok, str]] = []
    comma_used = False
    j = i
    while j < len(toks) and len([r for r in run if r[1] != "particle"]) < max_tokens:
        t = toks[j]
        if run and _CRED_RE.match(text, t.start):
            break  # "John Smith M.D." / "Smith, MD"
        if run:
            prev = run[-1][0]
            sep = text[prev.end:t.start]
            ok = False
            if _is_initial(prev) and _SEP_AFTER_INITIAL.fullmatch(sep):
                ok = True
            elif _SEP_SPACE.fullmatch(sep):
                ok = True
            elif allow_comma and not comma_used and _SEP_COMMA.fullmatch(sep) and run[-1][1] == "full":
                ok = True
                comma_used = True
            if not ok:
                break
        if _is_initial(t):
            role = "initial"
        elif t.text.islower() and t.norm in _PARTICLES and run:
            role = "particle"
        elif _namey(t, first, last, allow_common=allow_common or bool(run), allow_short_upper=allow_common):
            role = "full"
        else:
            break
        if comma_used and run and run[-1][1] == "full" and role != "full" and text[run[-1][0].end:t.start].strip() == ",":
            break
        run.append((t, role))
        j += 1
    while run and run[-1][1] == "particle":
        run.pop()
    if not any(r == "full" for _, r in run):
        return None
    fulls = [t for t, r in run if r == "full"]
    if len(fulls) == 1 and fulls[0].text.isupper() and len(fulls[0].text) <= 3 and len(run) == 1 \
            and fulls[0].norm not in first and fulls[0].norm not in last:
        return None  # a lone acronym ("per ACR"), not a name
    if _eponym_context(text, run[-1][0].end):
        return None  # "per Fleischner criteria"
    s, e = run[0][0].start, run[-1][0].end
    if run[-1][1] == "initial" and e < len(text) and text[e] == ".":
        e += 1
    for t, r in run:
        if r == "full" and len(t.norm) >= 3:
            ctx.name_context_tokens.add(t.norm)
    return s, e


def _run_backward(ctx: _Ctx, j: int, *, max_tokens: int = 4) -> tuple[int, int] | None:
    """Person-name run ending at token j (walking left)."""
    first, last = _name_lists()
    toks, text = ctx.toks, ctx.text
    run: list[tuple[_Tok, str]] = []
    k = j
    while k >= 0 and len(run) < max_tokens:
        t = toks[k]
        if run:
            nxt = run[-1][0]
            sep = text[t.end:nxt.start]
            if not (_SEP_SPACE.fullmatch(sep) or (_is_initial(t) and _SEP_AFTER_INITIAL.fullmatch(sep))):
                break
        if _is_initial(t):
            role = "initial"
        elif _namey(t, first, last):
            role = "full"
        else:
            break
        run.append((t, role))
        k -= 1
    while run and run[-1][1] != "full" and not _is_initial(run[-1][0]):
        run.pop()
    if not any(r == "full" for _, r in run):
        return None
    for t, r in run:
        if r == "full" and len(t.norm) >= 3:
            ctx.name_context_tokens.add(t.norm)
    return run[-1][0].start, run[0][0].end


# --------------------------------------------------------------------------- known identifiers


def _alnum(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", _strip_accents(s).casefold())


# separators written inside an ID or a phone: ASCII ones and the Unicode dashes and hyphens
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_ID_SEP = rf"[\s\-./_{_DASHES}]?"


def _id_regex(norm: str) -> re.Pattern:
    body = _ID_SEP.join(re.escape(c) for c in norm)
    lead = r"0*" if norm[:1].isdigit() else ""
    if not any(c.isdigit() for c in norm):  # a word-like id ("RESEARCH01" has digits; "ANONPAT" not):
        body = _ID_SEP.join(re.escape(c.upper()) for c in norm)  # only its upper-case spelling
        return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])")
    return re.compile(rf"(?<![A-Za-z0-9]){lead}{body}(?![A-Za-z0-9])", re.I)


_UID_SHAPE = re.compile(r"[0-2](?:\.\d+){3,}")


def _known_ids(ctx: _Ctx, known: KnownIdentifiers):
    seen: set[str] = set()
    for raw in list(known.ids) + list(known.replacements):
        for piece in {raw, *re.split(r"[\\^]", raw or "")}:
            s = (piece or "").strip()
            if not s:
                continue
            if _UID_SHAPE.fullmatch(s):
                for m in re.finditer(rf"(?<![\w.]){re.escape(s)}(?![\w]|\.\d)", ctx.text):
                    ctx.add(m.start(), m.end(), "UID")
                continue
            n = _alnum(s)
            n_stripped = n.lstrip("0")
            if len(n_stripped) < 4 or n in seen:
                continue
            if not any(c.isdigit() for c in n) and (len(n) < 6 or n in NEVER_NAME):
                continue
            seen.add(n)
            for m in _id_regex(n_stripped if n_stripped else n).finditer(ctx.text):
                ctx.add(m.start(), m.end(), "KID")


_KNOWN_DATE_FORMATS = ["{Y}{m}{d}", "{m}{d}{Y}", "{d}{m}{Y}", "{m}{d}{y}", "{d}{m}{y}", "{y}{m}{d}",
                       "{d}.{m}.{y}", "{D}.{M}.{y}", "{m}-{d}-{y}", "{Y}{m}", "{d}/{m}/{y}",
                       "{m}/{d}/{Y}", "{M}/{D}/{Y}", "{d}/{m}/{Y}", "{D}/{M}/{Y}", "{Y}-{m}-{d}", "{Y}/{m}/{d}",
                       "{d}.{m}.{Y}", "{D}.{M}.{Y}", "{m}-{d}-{Y}", "{d}-{m}-{Y}", "{m}/{d}/{y}", "{M}/{D}/{y}",
                       "{M}-{D}-{y}", "{D}-{M}-{y}", "{D}/{M}/{y}", "{M}-{D}-{Y}", "{D}-{M}-{Y}"]


# The study's own dates in spellings the date detector does not read, shifted (or replaced):
# "15 03 2019", "2019年3月15日", "20190315T101500", "March the 15th, 2019", "15 de marzo de 2019"
_EXAM_DATE_FORMATS = ["{d} {m} {Y}", "{D} {M} {Y}", "{Y}年{M}月{D}日", "{Y}年{m}月{d}日", "{Y}{m}{d}T",
                      "{Mon} the {D}{th}, {Y}", "{Mon} the {D}{th} {Y}", "{D} de {mes} de {Y}", "{d}.{m}.{y}",
                      "{D}.{M}.{y}", "{d}/{m}/{y}", "{M}-{D}-{y}", "{D}-{M}-{y}", "{Y}.{m}.{d}", "{d}-{m}-{Y}"]
_EN_MONTH_NAMES = _MONTH_TABLES["en_full"]
_ES_MONTH_NAMES = ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
                   "octubre", "noviembre", "diciembre"]


def _date_parts(raw: str) -> tuple[date, dict] | None:
    v = re.sub(r"\D", "", raw or "")[:8]
    if len(v) != 8:
        return None
    try:
        dd = date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return None
    th = "th" if 10 <= dd.day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(dd.day % 10, "th")
    return dd, {"Y": f"{dd.year:04d}", "y": f"{dd.year % 100:02d}", "m": f"{dd.month:02d}", "d": f"{dd.day:02d}",
                "M": str(dd.month), "D": str(dd.day), "Mon": _EN_MONTH_NAMES[dd.month - 1],
                "mes": _ES_MONTH_NAMES[dd.month - 1], "th": th}


def _add_date_literals(ctx: _Ctx, parts: dict, formats: list[str], kind: str) -> None:
    """Spans of ``kind`` for one date written in each of ``formats`` (a "…T" format takes the time
    of day after it)."""
    for fmt in formats:
        lit = fmt.format(**parts)
        pat = (rf"(?<![\w.]){re.escape(lit)}\d{{0,6}}" if lit.endswith("T")
               else rf"(?<![\w.]){re.escape(lit)}(?![\w]|\.\d)")
        for m in re.finditer(pat, ctx.text, re.I):
            ctx.add(m.start(), m.end(), kind)


def _known_exam_dates(ctx: _Ctx, known: KnownIdentifiers):
    for raw in known.exam_dates:
        parts = _date_parts(raw)
        if parts is not None:
            _add_date_literals(ctx, parts[1], _EXAM_DATE_FORMATS, "DATE")


def _known_ages(ctx: _Ctx, known: KnownIdentifiers):
    """The patient's age over 89 written as clinical shorthand: "93F", "Pt 93 F", "F/93", "93yoF"."""
    for n in known.ages:
        if not n.isdigit():
            continue
        for pat in (rf"(?<![\w.])({n})\s?(?:[MF]|yo[MF]?)\b", rf"\b[MF]\s?/\s?({n})(?![\w]|\.\d)"):
            for m in re.finditer(pat, ctx.text):
                ctx.add(m.start(1), m.end(1), "AGE_OVER_89")


def _known_dates(ctx: _Ctx, known: KnownIdentifiers):
    for raw in known.dates:
        parts = _date_parts(raw)
        if parts is None:
            continue
        dd = parts[0]
        _add_date_literals(ctx, parts[1], _KNOWN_DATE_FORMATS, "DOB")  # a birth date is removed, never shifted
        for s, e, found in find_dates(ctx.text):  # any other spelling ("3 Dec 1926", "December 3, 1926")
            if found == dd:
                ctx.add(s, e, "DOB")


_SUFFIX_EQUIV = {
    "street": "st", "avenue": "ave", "road": "rd", "boulevard": "blvd", "lane": "ln", "drive": "dr",
    "court": "ct", "place": "pl", "terrace": "ter", "circle": "cir", "highway": "hwy", "parkway": "pkwy",
    "square": "sq", "apartment": "apt", "suite": "ste", "north": "n", "south": "s", "east": "e", "west": "w",
}
_SUFFIX_EQUIV.update({v: k for k, v in list(_SUFFIX_EQUIV.items())})


def _flex_phrase(words: list[str]) -> str:
    parts = []
    for w in words:
        lw = w.lower().rstrip(".")
        alts = {re.escape(lw)}
        if lw in _SUFFIX_EQUIV:
            alts.add(re.escape(_SUFFIX_EQUIV[lw]))
        parts.append("(?:" + "|".join(sorted(alts, key=len, reverse=True)) + r")\.?")
    return r"[\s,]+".join(parts)


def _known_addresses(ctx: _Ctx, known: KnownIdentifiers):
    for raw in known.addresses:
        if not raw or not raw.strip():
            continue
        comps = [c.strip() for c in re.split(r"[\^\n\r;]|,\s*", raw) if c and c.strip()]
        for c in comps:
            words = c.split()
            if c.upper() in _STATE_ABBR or re.fullmatch(_STATE_FULL, c, re.I):
                continue
            if re.fullmatch(r"\d{5}(?:-\d{4})?", c):
                for m in re.finditer(rf"(?<![\w-]){re.escape(c)}(?![\w-])", ctx.text):
                    ctx.add(m.start(), m.end(), "POSTAL")
                continue
            if len(c) < 4 or all(_norm(w) in NEVER_NAME for w in words):
                continue
            pat = re.compile(rf"(?<![\w]){_flex_phrase(words)}(?![\w])", re.I)
            for m in pat.finditer(ctx.text):
                ctx.add(m.start(), m.end(), "ADDRESS")
            # street line without the number ("Main Street") is still a locator
            if len(words) >= 3 and words[0].isdigit():
                pat2 = re.compile(rf"(?<![\w]){_flex_phrase(words[1:])}(?![\w])", re.I)
                for m in pat2.finditer(ctx.text):
                    if ctx.text[m.start()].isupper():
                        ctx.add(m.start(), m.end(), "ADDRESS")


def _known_phones(ctx: _Ctx, known: KnownIdentifiers):
    for raw in known.phones:
        raw = (raw or "").strip()
        digits = re.sub(r"\D", "", raw)
        if len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]
        elif raw.startswith(("+", "00")) and len(digits) >= 10:
            # international: the national number after the country code (1-3 digits), written at
            # home with a trunk 0 ("+44 20 7946 0958" is "020 7946 0958")
            cc = re.match(r"\+?(?:00)?\s*(\d{1,3})[\s\-.(]", raw)
            if cc and digits.startswith(("00" if raw.startswith("00") else "") + cc.group(1)):
                digits = digits[len(cc.group(1)) + (2 if raw.startswith("00") else 0):]
        if len(digits) < 7:
            continue
        body = rf"[\s\-.()/{_DASHES}]*".join(re.escape(c) for c in digits)
        pat = re.compile(rf"(?<!\d)(?:(?:\+|00)?\d{{1,3}}[\s\-.{_DASHES}]*|0[\s\-.]*)?\(?(?:0[\s\-.)]*)?{body}(?!\d)")
        for m in pat.finditer(ctx.text):
            ctx.add(m.start(), m.end(), "PHONE")


def _known_institutions(ctx: _Ctx, known: KnownIdentifiers):
    for raw in known.institutions:
        s = (raw or "").strip()
        words = s.split()
        if len(s) < 4 or not words or all(_norm(w) in NEVER_NAME or _norm(w) in _INST_GENERIC for w in words):
            continue
        body = r"[\s,]+".join(re.escape(w) for w in words)
        pat = re.compile(r"(?<![\w])" + body + r"(?![\w])", re.I)
        for m in pat.finditer(ctx.text):
            ctx.add(m.start(), m.end(), "INSTITUTION")
        # the name written another way ("St. Ophelia Gen. Hosp." for St Ophelia General Hospital):
        # its distinctive words, capitalised, next to a word that says institution
        for w in _distinctive_institution_words(words):
            for m in re.finditer(r"(?<![\w])" + re.escape(w) + r"(?![\w])", ctx.text, re.I):
                if m.group()[:1].isupper() and _near_institution_hint(ctx.text, m.start(), m.end()):
                    ctx.add(m.start(), m.end(), "INSTITUTION")


# Words of an institution's name that name no institution in particular
_INST_COMMON = _words("""st saint mt mount of and at the de du des la le les der die das und für fur zu am
institute institut instituto institution centre centrum zentrum hospitals healthcare system systems group
associates foundation trust nhs clinics college school medicine medical sciences science diagnostic
diagnostics services service partners network care specialty specialists surgical surgery orthopedic
orthopaedic rehabilitation rehab children women infirmary sanatorium klinikum krankenhaus klinik kliniken
hôpital hopital hospitalier clinique universitaire universitätsklinikum universitatsklinikum uniklinik
campus unit north south east west northern southern eastern western central upper lower greater
inc llc ltd gmbh co corp corporation pc pa hosp gen univ med ctr""")


_INST_HINT_RE = re.compile(
    r"(?<![\w])(?:st|saint|mt|mount|gen|general|hosp|hospital|hospitals|med|medical|ctr|cntr|center|centre|"
    r"clinic|clin|inst|institute|univ|university|mem|memorial|reg|regional|health|healthcare|infirmary|"
    r"klinik|klinikum|krankenhaus|khs|hôpital|hopital|clinique|chu|ospedale|hospice)(?![\w])", re.I)


def _near_institution_hint(text: str, start: int, end: int, reach: int = 24) -> bool:
    """Is there a word such as Hosp., General, St., Clinic within ``reach`` characters, on the
    same line?"""
    lo, hi = max(0, start - reach), min(len(text), end + reach)
    nl = text.rfind("\n", lo, start)
    lo = nl + 1 if nl >= 0 else lo
    nl = text.find("\n", end, hi)
    hi = nl if nl >= 0 else hi
    return bool(_INST_HINT_RE.search(text[lo:start]) or _INST_HINT_RE.search(text[end:hi]))


def _distinctive_institution_words(words: list[str]) -> list[str]:
    out = []
    for w in words:
        for tm in _TOKEN_RE.finditer(w):
            n = _norm(tm.group())
            if (len(n) >= 4 and n not in _INST_GENERIC and n not in _INST_COMMON and n not in NEVER_NAME
                    and n not in COMMON_WORD_NAMES):
                out.append(tm.group())
    return out


_CJK_RE = re.compile(r"[\u2E80-\u9FFF\uAC00-\uD7AF\u3040-\u30FF\uF900-\uFAFF]")


def _parse_person_name(raw: str) -> list[tuple[list[str], list[str], list[str]]]:
    """-> list of (family words, given words, middle words) for each PN component group."""
    out = []
    for group in (raw or "").split("="):
        g = group.strip()
        if not g:
            continue
        if "^" in g:
            comps = g.split("^") + ["", "", "", ""]
            fam, given, middle = comps[0], comps[1], comps[2]
            # prefix (comps[3]) and suffix (comps[4]) are titles -> ignored
        elif "," in g:
            fam, _, rest = g.partition(",")
            rw = rest.split()
            given = rw[0] if rw else ""
            middle = " ".join(rw[1:])
        else:
            ws = g.split()
            if len(ws) == 1:
                fam, given, middle = ws[0], "", ""
            else:
                fam, given, middle = ws[-1], ws[0], " ".join(ws[1:-1])
        out.append((fam.split(), given.split(), middle.split()))
    return out


# Common words that are known names too, never taken for the name on their own: body parts,
# months, directions and words a report starts a sentence or a heading with
_COMMON_NEVER_ALONE = _words("""head heart hand foot arm leg chest back side mass wall walls bone case page day
person may june april august summer winter north south east west early late will mark long short small
little large young white gray grey black brown green good best strong major cross street church house
branch power powers chance fields""")
_PERSON_VERB_RE = re.compile(
    r"(?:['\u2019]s\b|[ \t]+(?:was|is|has|had|did|does|tolerated|agreed|agrees|reports|reported|states|stated|"
    r"denies|denied|complains|complained|presents|presented|returned|underwent|received|consented|declined|"
    r"refused|requested|arrived|called|informed|notified|understood|asked|said|tolerates|prefers|lives|"
    r"lived|works|worked|feels|felt|wants|wanted)\b)")


def _common_word_names_someone(text: str, t: _Tok) -> bool:
    """A known name that is also a common word (Grace, Rose, King) names the person when it is
    capitalised and either stands inside a sentence or starts one followed by what a person does
    ("Grace tolerated", "King was", "Rose's")."""
    if t.norm in _COMMON_NEVER_ALONE or not (t.text[:1].isupper() and t.text[1:].islower()):
        return False
    if re.match(r"[ \t]*\d", text[t.end:t.end + 3]):
        return False  # "Grace 2" a list item, a date
    before = text[:t.start].rstrip(" \t")
    if _PERSON_VERB_RE.match(text, t.end) or re.search(r"['\u2019]s$", t.text):
        return True
    return bool(before) and before[-1] not in ".!?:;\n-*#>(\"'"


_LINE_BREAK_HYPHEN = re.compile(r"([^\W\d_]+)-[ \t]*\r?\n[ \t]*([^\W\d_]+)")


def _known_names(ctx: _Ctx, known: KnownIdentifiers):
    strong: dict[str, str] = {}  # norm -> "family" | "given" | "middle"
    weak: set[str] = set()
    initials: set[str] = set()
    cjk: set[str] = set()
    for raw in known.person_names:
        for fam, given, middle in _parse_person_name(strip_invisible(raw)):
            if any(_CJK_RE.search(w) for w in fam + given + middle):
                parts = ["".join(fam), "".join(given), "".join(fam) + "".join(given),
                         " ".join(fam + given), "".join(given) + "".join(fam)]
                cjk.update(p for p in parts if p)
                cjk.update(_other_kana(p) for p in parts if p)  # やまだ written ヤマダ, and back
                continue
            for role, words in (("family", fam), ("given", given), ("middle", middle)):
                for w in words:
                    for tm in _TOKEN_RE.finditer(w):
                        n = _norm(tm.group())
                        if not n:
                            continue
                        initials.add(n[0])
                        pieces = [n] + (_pieces(n) if "-" in n else [])
                        if "'" in n:  # O'Quarrell -> also "Quarrell", "OQuarrell" (apostrophe dropped)
                            pieces += [p for p in re.split(r"['-]", n) if p] + [n.replace("'", "")]
                        for v in _translit_variants(tm.group(), n):  # Gröbner / GROEBNER
                            pieces += [v] + (_pieces(v) if "-" in v else [])
                        for p in pieces:
                            if len(p) == 1:
                                continue
                            if p in _PARTICLES or p in NEVER_NAME:
                                weak.add(p)
                            elif role != "middle" or len(p) >= 3:
                                strong.setdefault(p, role)
                            else:
                                weak.add(p)
            # family and given names glued together ("OQUARRELLTESSANDRA")
            cat_f = re.sub(r"[^\w]", "", _norm("".join(fam)))
            cat_g = re.sub(r"[^\w]", "", _norm("".join(given)))
            if cat_f and cat_g and not _CJK_RE.search(cat_f + cat_g):
                strong.setdefault(cat_f + cat_g, "family")
                strong.setdefault(cat_g + cat_f, "family")
                if len(cat_f) >= 4:  # a login or mailbox: "bplumwick", "PlumwickB"
                    strong.setdefault(cat_g[0] + cat_f, "family")
                    strong.setdefault(cat_f + cat_g[0], "family")
    for s in cjk:
        for m in re.finditer(re.escape(s), ctx.text):
            ctx.add(m.start(), m.end(), "KNAME")
    if not strong:
        return
    toks, text = ctx.toks, ctx.text
    # a known name hyphenated at a line's end ("Garneth-" / "waite")
    for m in _LINE_BREAK_HYPHEN.finditer(text):
        if _norm(m.group(1) + m.group(2)) in strong:
            ctx.add(m.start(1), m.end(2), "KNAME")

    def role_of(t: _Tok) -> str | None:
        if t.norm in strong:
            return "full"
        if (len(t.norm) > 4 and t.norm.endswith("s") and t.norm[:-1] in strong and _is_cap(t)
                and t.norm[:-1] not in COMMON_WORD_NAMES):
            return "full"  # genitive without apostrophe ("Jürgens Sturz")
        if "-" in t.norm and any(p in strong for p in _pieces(t.norm)):
            return "full"
        if t.norm in weak:
            return "weak"
        if _is_initial(t) and t.norm in initials:
            return "initial"
        return None

    i = 0
    while i < len(toks):
        r = role_of(toks[i])
        if r is None:
            i += 1
            continue
        run = [(toks[i], r)]
        j = i + 1
        while j < len(toks):
            prev, t = run[-1][0], toks[j]
            sep = text[prev.end:t.start]
            if not (re.fullmatch(r"[ \t]*[,^]?[ \t]*|[ \t]*\n[ \t]*", sep)
                    or (_is_initial(prev) and re.fullmatch(r"\.[ \t]*", sep))):
                break
            rj = role_of(t)
            if rj is None or (rj == "initial" and _CRED_RE.match(text, t.start)):
                break
            run.append((t, rj))
            j += 1
        fulls = [t for t, rr in run if rr == "full"]
        accept_idx: list[int] = []
        if len(fulls) >= 2 or (fulls and len(run) >= 2 and any(rr == "initial" for _, rr in run)
                               and all(_is_cap(t) for t in fulls)):
            accept_idx = list(range(len(run)))
        elif fulls:
            for k, (t, rr) in enumerate(run):
                if rr != "full":
                    continue
                n = t.norm
                role = strong.get(n) or next((strong[p] for p in _pieces(n) if p in strong), "given")
                if not _is_cap(t) and (len(n) < 4 or n in COMMON_WORD_NAMES or n in NEVER_NAME):
                    continue  # a known name in lower case still goes, unless it is also a common word
                hits = [p for p in _pieces(n) if p in strong] if "-" in n and n not in strong else []
                common = n in COMMON_WORD_NAMES or (bool(hits) and all(p in COMMON_WORD_NAMES for p in hits))
                if common and not (t.text.isupper() and len(t.text) > 3) and not _common_word_names_someone(text, t):
                    continue  # "Rose-shaped", "Head CT", "King size" for KING^GRACE^ROSE
                if role == "family" and len(n) < 3 and not (t.text.istitle() or t.text.isupper()):
                    continue  # a two-letter family name ("Ng") goes on its own in "Ng" / "NG" only
                if _eponym_context(text, t.end):
                    continue
                accept_idx.append(k)
        if accept_idx:
            # trim leading/trailing non-full members that were not attached
            seg = [run[k] for k in accept_idx]
            if len(accept_idx) == len(run):
                while seg and seg[0][1] == "weak":
                    seg.pop(0)
                while seg and seg[-1][1] == "weak":
                    seg.pop()
                if seg:
                    e = seg[-1][0].end
                    if seg[-1][1] == "initial" and e < len(text) and text[e] == ".":
                        e += 1
                    ctx.add(seg[0][0].start, e, "KNAME")
            else:
                for t, _ in seg:
                    ctx.add(t.start, t.end, "KNAME")
        i = j


# --------------------------------------------------------------------------- pattern detectors


def _detect_patterns(ctx: _Ctx):
    text = ctx.text
    for m in _EMAIL_RE.finditer(text):
        ctx.add(m.start(), m.end(), "EMAIL")
    for m in _URL_RE.finditer(text):
        e = m.end()
        while e > m.start() and text[e - 1] in ".,;:!?)":
            e -= 1
        ctx.add(m.start(), e, "URL")
    for m in _HOST_RE.finditer(text):
        ctx.add(m.start(), m.end(), "URL")
    for m in _IP_RE.finditer(text):
        ctx.add(m.start(), m.end(), "IP")
    for m in UID_RE.finditer(text):
        if len(m.group()) >= 10 and m.group().count(".") >= 4:
            ctx.add(m.start(), m.end(), "UID")
    for s, e, *_ in _iter_dates(text):
        # a date after a birth cue is a birth date: removed, never shifted (shifted birth and exam
        # dates together would still give the exact age)
        ctx.add(s, e, "DOB" if _DOB_CUE_RE.search(text[max(0, s - 24):s]) else "DATE")
    for pat in _PHONE_RES:
        for m in pat.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if pat is _PHONE_RES[1] and not 8 <= digits <= 15:
                continue
            ctx.add(m.start(), m.end(), "PHONE")
    for m in _PHONE_CUE_RE.finditer(text):
        v = m.group("v")
        if v and sum(c.isdigit() for c in v) >= 4:
            ctx.add(m.start("v"), m.end("v"), "PHONE")
    for m in _SSN_RE.finditer(text):
        ctx.add(m.start(), m.end(), "ID")
    for m in _ID_CUE_RE.finditer(text):
        v = m.group("v")
        if v and len(_alnum(v)) >= 3:
            ctx.add(m.start("v"), m.end("v"), "ID")
    for m in _DIGITS_RE.finditer(text):
        ctx.add(m.start(), m.end(), "ID")
    for m in _DASHED_RE.finditer(text):
        if sum(c.isdigit() for c in m.group()) >= 7:
            ctx.add(m.start(), m.end(), "ID")
    for m in _ALNUM_RE.finditer(text):
        tok = m.group()
        nd = sum(c.isdigit() for c in tok)
        if nd < 4 or not any(c.isalpha() for c in tok) or _UNIT_TOKEN_RE.fullmatch(tok):
            continue
        if re.match(r"(?:\d{4}-\d\d-\d\d|\d{8})T\d", tok):  # ISO date-time: the date is shifted, time kept
            continue
        ctx.add(m.start(), m.end(), "ID")
    for pat in _AGE_RES:
        for m in pat.finditer(text):
            g = "n" if m.group("n") is not None else "m"
            ctx.add(m.start(g), m.end(g), "AGE_OVER_89")
    # addresses and postal codes
    for m in _ADDR_RE.finditer(text):
        s, e = m.start(), m.end()
        while e > s and text[e - 1] in " ,":
            e -= 1
        ctx.add(s, e, "ADDRESS")
    for pat in (_POBOX_RE, _EU_STREET_RE, _FR_STREET_RE):
        for m in pat.finditer(text):
            ctx.add(m.start(), m.end(), "ADDRESS")
    for m in _CITY_STATE_ZIP_RE.finditer(text):
        s = _trim_city(ctx, m.start("city"), m.end("city"))
        ctx.add(s if s is not None else m.end("city"), m.end(), "ADDRESS")
    for m in _CITY_FULLSTATE_RE.finditer(text):
        s = _trim_city(ctx, m.start("city"), m.end("city"))
        if s is not None:
            ctx.add(s, m.end("city"), "ADDRESS")
    for m in _CITY_STATE_RE.finditer(text):
        if m.group("st") in _STATE_ABBR and m.group("st") not in _AMBIGUOUS_STATES:
            s = _trim_city(ctx, m.start("city"), m.end("city"))
            if s is not None:
                ctx.add(s, m.end("city"), "ADDRESS")
    for m in _ZIP_CUE_RE.finditer(text):
        ctx.add(m.start("v"), m.end("v"), "POSTAL")
    for m in _RESIDES_RE.finditer(text):
        s = _trim_city(ctx, m.start("v"), m.end("v"))
        if s is not None:
            ctx.add(s, m.end("v"), "ADDRESS")
    for m in _UK_POSTCODE_RE.finditer(text):
        ctx.add(m.start(), m.end(), "POSTAL")
    for m in _EU_ZIP_CITY_RE.finditer(text):
        if _norm(m.group("city")) not in NEVER_NAME:
            ctx.add(m.start(), m.end(), "POSTAL")
    # institutions
    for pat in (_INST_RE, _INST_OF_RE):
        for m in pat.finditer(text):
            s, e = m.start(), m.end()
            i = ctx.tok_index_at_or_after(s)
            # drop leading generic words ("The", "Outside") and require one specific word
            while i is not None and i < len(ctx.toks) and ctx.toks[i].start < e and (
                    ctx.toks[i].norm in NEVER_NAME and ctx.toks[i].norm not in _INST_GENERIC
                    or ctx.toks[i].norm in {"the", "a", "an", "outside", "other", "local", "our", "this", "that"}):
                i += 1
            if i is None or i >= len(ctx.toks) or ctx.toks[i].start >= e:
                continue
            s = ctx.toks[i].start
            inner = [t for t in ctx.toks[i:] if t.end <= e]
            if all(t.norm in _INST_GENERIC or t.norm in NEVER_NAME for t in inner):
                continue
            ctx.add(s, e, "INSTITUTION")


def _trim_city(ctx: _Ctx, s: int, e: int) -> int | None:
    """Start of the city after dropping leading words that are not place names; None if nothing left."""
    i = ctx.tok_index_at_or_after(s)
    while i is not None and i < len(ctx.toks) and ctx.toks[i].start < e:
        t = ctx.toks[i]
        if t.norm in NEVER_NAME or t.norm in EPONYMS:
            i += 1
            continue
        return t.start
    return None


# --------------------------------------------------------------------------- name detectors


_LIST_SEP = re.compile(r"[ \t]*(?:,|;|/|&|\band\b|\bor\b)[ \t]*(?:(?:and|or)[ \t]+)?")


def _add_with_continuation(ctx: _Ctx, r: tuple[int, int], allow_comma: bool = False, limit: int = 6):
    """Add a name run, then any names listed after it ("X and Y", "X; Y", "X, Y")."""
    ctx.add(r[0], r[1], "NAME")
    text = ctx.text
    for _ in range(limit):
        mm = _LIST_SEP.match(text, r[1])
        if not mm or mm.end() == r[1]:
            return
        pos = mm.end()
        tm = _TITLE_RE.match(text, pos)
        if tm:
            pos = tm.end()
            while pos < len(text) and text[pos] in " \t":
                pos += 1
        k = ctx.tok_index_at_or_after(pos)
        if k is None or ctx.toks[k].start != pos:
            return
        r2 = _run_forward(ctx, k, allow_comma=False)
        if not r2:
            return
        # a bare continuation must look like a full name (two tokens) unless a title introduced it
        toks_in = [t for t in ctx.toks[k:] if t.end <= r2[1]]
        if not tm and len(toks_in) < 2:
            return
        ctx.add(r2[0], r2[1], "NAME")
        r = r2


_LONE_WORD_LINE = re.compile(r"[ \t]*\r?\n[ \t]*([^\W\d_][\w'\u2019-]*)\.?[ \t]*(?=\r?\n|$)")


def _add_next_line_surname(ctx: _Ctx, r: tuple[int, int]) -> None:
    """A title and one name at a line's end, then a line of one capitalised word that is not a
    common word: the name goes on ("Dictated by Dr Harold\nVintnerley")."""
    if len([t for t in ctx.toks if r[0] <= t.start and t.end <= r[1]]) != 1:
        return
    mm = _LONE_WORD_LINE.match(ctx.text, r[1])
    if not mm:
        return
    word = mm.group(1)
    if word[:1].isupper() and len(word) >= 2 and not _blocked(_norm(word)):
        ctx.add(mm.start(1), mm.end(1), "NAME")


def _detect_names(ctx: _Ctx):
    text, toks = ctx.text, ctx.toks
    first, last = _name_lists()
    # titles
    for m in _TITLE_RE.finditer(text):
        after = m.end()
        if not re.match(r"[ \t]*\S", text[after:after + 3] or ""):
            # "Dictated by Dr\nSmith": a signature broken after the title
            nl = re.match(r"[ \t]*\r?\n[ \t]*(?=\S)", text[after:after + 40])
            if not nl:
                continue
            after += nl.end()
        i = ctx.tok_index_at_or_after(after)
        if i is None or text[after:toks[i].start].strip(" \t.") != "":
            continue
        r = _run_forward(ctx, i, allow_comma=False)
        if r:
            _add_with_continuation(ctx, r)
            _add_next_line_surname(ctx, r)
            title = m.group("t") or ""
            # "Drs. Smith and Jones"
            if title.lower().startswith("drs"):
                mm = re.match(r"[ \t]*(?:,|and|&)[ \t]*", text[r[1]:])
                while mm:
                    k = ctx.tok_index_at_or_after(r[1] + mm.end())
                    r2 = _run_forward(ctx, k, allow_comma=False) if k is not None else None
                    if not r2 or r2[0] != r[1] + mm.end():
                        break
                    ctx.add(r2[0], r2[1], "NAME")
                    r = r2
                    mm = re.match(r"[ \t]*(?:,|and|&)[ \t]*", text[r[1]:])
    # credentials after the name: "John Smith, MD"
    for m in _CRED_RE.finditer(text):
        cred = m.group("c").replace(" ", "")
        before = text[:m.start()]
        mm = re.search(r"(?:[ \t]*,[ \t]*|[ \t]+)$", before)
        if not mm:
            continue
        j = ctx.tok_index_ending_at_or_before(m.start() - len(mm.group()))
        if j is None or toks[j].end != m.start() - len(mm.group()):
            continue
        if cred in _STRICT_CREDS and "," not in mm.group():
            t = toks[j]
            if not (t.norm in last or t.norm in first or t.norm in ctx.name_context_tokens):
                continue
        if cred in _STRICT_CREDS:
            after = text[m.end():m.end() + 12]
            if re.match(r"\s+(?:not|and|lateral|lat|view|views|chest|or)\b", after, re.I):
                continue
        r = _run_backward(ctx, j)
        if r:
            ctx.add(r[0], r[1], "NAME")
    # cue words / phrases
    for pat, colon in ((_CUE_FREE_RE, False), (_CUE_COLON_RE, True)):
        for m in pat.finditer(text):
            rest = text[m.end():m.end() + 40]
            sep = re.match(r"[ \t]*(?:[:#=\-(]|,)?[ \t]*(?:(?:is|was|named|called|name\s+is)[ \t]+)?", rest)
            pos = m.end() + (sep.end() if sep else 0)
            has_colon = colon or bool(sep and ":" in sep.group())
            if "\n" in text[m.end():pos]:
                continue
            i = ctx.tok_index_at_or_after(pos)
            if i is None or toks[i].start != pos:
                continue
            # skip a title right after the cue ("discussed with Dr. ...") - the title rule handles it
            if _TITLE_RE.match(text, pos):
                continue
            r = _run_forward(ctx, i, allow_comma=has_colon)
            if r:
                _add_with_continuation(ctx, r)
    # initials of technologists / transcriptionists
    for m in _INITIALS_CUE_RE.finditer(text):
        v = m.group("v")
        head = v.split("/")[0]
        after_v = text[m.end("v"):m.end("v") + 3]
        if re.match(r"\.\s*[A-Z]", after_v) or (head.lower() in _TITLE_WORDS and "/" not in v
                                                 and re.match(r"\.?[ \t]+[A-Z]", after_v)):
            continue
        if head.isupper() and (m.group("colon") or _norm(head) not in NEVER_NAME):
            ctx.add(m.start("v"), m.end("v"), "NAME")
    for m in _TRANS_INITIALS_RE.finditer(text):
        head, tail = m.group("v").split("/")
        if _norm(head) not in NEVER_NAME and _norm(tail) not in NEVER_NAME:
            ctx.add(m.start(), m.end(), "NAME")
    # name-list heuristics
    n = len(toks)
    for i, t in enumerate(toks):
        if not _is_cap(t) or len(t.text) < 2 or _blocked(t.norm):
            continue
        if _eponym_context(text, t.end) or (i + 1 < n and _eponym_context(text, toks[i + 1].end)
                                            and re.fullmatch(r"[ \t]+", text[t.end:toks[i + 1].start])):
            continue
        upper = t.text.isupper()
        in_first = t.norm in first
        in_last = t.norm in last or ("-" in t.norm and any(p in last for p in _pieces(t.norm)))
        if not (in_first or in_last):
            continue
        # First Last / First M. Last
        if in_first and i + 1 < n:
            k = i + 1
            sep = text[t.end:toks[k].start]
            if _is_initial(toks[k]) and re.fullmatch(r"[ \t]+", sep) and k + 1 < n and \
                    re.fullmatch(r"\.?[ \t]+", text[toks[k].end:toks[k + 1].start]):
                k += 1
                sep = " "
            nt = toks[k]
            if re.fullmatch(r"[ \t]+", sep) and _is_cap(nt) and not _blocked(nt.norm) and len(nt.text) >= 2:
                nt_listed = nt.norm in last or nt.norm in first
                if upper or nt.text.isupper():
                    ok = nt_listed and upper == nt.text.isupper()
                else:
                    ok = nt_listed or _namey(nt, first, last, allow_common=False)
                if ok:
                    r = _run_forward(ctx, i, allow_comma=False, allow_common=False)
                    if r:
                        ctx.add(r[0], r[1], "NAME")
                        continue
        # Last, First
        if in_last and i + 1 < n and re.fullmatch(r"[ \t]*,[ \t]*", text[t.end:toks[i + 1].start]):
            nt = toks[i + 1]
            if nt.norm in first and _is_cap(nt) and not _blocked(nt.norm) and upper == nt.text.isupper():
                ctx.add(t.start, nt.end, "NAME")
                ctx.name_context_tokens.update({t.norm, nt.norm})
                continue
        # Prev Last (prev capitalised, not a section word)
        if in_last and i > 0 and not upper:
            pt = toks[i - 1]
            if re.fullmatch(r"[ \t]+|\.[ \t]+", text[pt.end:t.start]) and (
                    (_is_initial(pt) and text[pt.end:t.start].startswith("."))
                    or (_is_cap(pt) and not pt.text.isupper() and not _blocked(pt.norm)
                        and (pt.norm in first or (_namey(pt, first, last, allow_common=False)
                                                  and text[pt.end:t.start] == " ")))):
                s = pt.start
                ctx.add(s, t.end, "NAME")
                ctx.name_context_tokens.update({t.norm} | ({pt.norm} if len(pt.norm) >= 3 else set()))
                continue
        # lone listed surname in mid-sentence ("... per Gonzalez ...")
        if in_last and not upper and len(t.norm) >= 4 and i > 0:
            before = text[:t.start].rstrip(" \t")
            if before and before[-1] not in ".!?:\n\r;" and toks[i - 1].text[:1].islower():
                ctx.add(t.start, t.end, "NAME")


def _detect_learned(ctx: _Ctx, name_spans: list[tuple[int, int]]):
    """Every strong token of a detected name is removed wherever else it is capitalised."""
    learned: set[str] = set(ctx.name_context_tokens)
    for s, e in name_spans:
        i = ctx.tok_index_at_or_after(s)
        while i is not None and i < len(ctx.toks) and ctx.toks[i].end <= e:
            t = ctx.toks[i]
            if len(t.norm) >= 3 and _is_cap(t) and not (t.text.isupper() and len(t.text) <= 3):
                learned.add(t.norm)
            i += 1
    learned = {w for w in learned if not _blocked(w) and len(w) >= 3}
    if not learned:
        return
    toks = ctx.toks
    for i, t in enumerate(toks):
        if _is_cap(t) and (t.norm in learned or ("-" in t.norm and any(p in learned for p in _pieces(t.norm)))):
            if not _eponym_context(ctx.text, t.end):
                ctx.add(t.start, t.end, "NAME")
                # "Texted to Xanthe" taught the given name: "Xanthe Brightwater was paged" goes
                # whole (the next word capitalised, then what a person does: not "Test Document")
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                if (nxt is not None and ctx.text[t.end:nxt.start] == " " and nxt.text[:1].isupper()
                        and nxt.text[1:].islower() and len(nxt.norm) >= 3 and not _blocked(nxt.norm)
                        and nxt.norm not in learned and not _CRED_RE.match(ctx.text, nxt.start)
                        and not _INST_HINT_RE.match(ctx.text, nxt.start) and _PERSON_VERB_RE.match(ctx.text, nxt.end)):
                    ctx.add(nxt.start, nxt.end, "NAME")


# --------------------------------------------------------------------------- merge


def _merge(text: str, raw: list[tuple[int, int, str]]) -> list[Span]:
    if not raw:
        return []
    raw = sorted(raw, key=lambda x: (x[0], -x[1]))
    clusters: list[list[tuple[int, int, str]]] = []
    cur: list[tuple[int, int, str]] = []
    cur_end = -1
    for sp in raw:
        if cur and sp[0] < cur_end:
            cur.append(sp)
            cur_end = max(cur_end, sp[1])
        else:
            if cur:
                clusters.append(cur)
            cur, cur_end = [sp], sp[1]
    if cur:
        clusters.append(cur)
    out: list[Span] = []
    for cl in clusters:
        best = max(cl, key=lambda x: (x[1] - x[0], _PRIO.get(x[2], 0)))
        s = min(x[0] for x in cl)
        e = max(x[1] for x in cl)
        out.append(Span(s, e, _OUT_KIND.get(best[2], best[2])))
    out = [Span(sp.start, sp.end - 2, sp.kind)
           if sp.kind == "NAME" and sp.end - sp.start > 3 and text[sp.end - 2:sp.end] in ("'s", "\u2019s") else sp
           for sp in out]
    # glue name pieces separated by blanks only: "[NAME] [NAME]" -> "[NAME]"
    glued: list[Span] = []
    for sp in out:
        if glued and glued[-1].kind == sp.kind == "NAME" and re.fullmatch(r"[ \t]*[,.]?[ \t]*", text[glued[-1].end:sp.start]) \
                and text[glued[-1].end:sp.start].strip() in ("",):
            glued[-1] = Span(glued[-1].start, sp.end, "NAME")
        else:
            glued.append(sp)
    return glued


def find_phi_spans(text: str, known: KnownIdentifiers | None = None) -> list[Span]:
    """Merged, non-overlapping PHI spans of ``text`` (sorted by start)."""
    if not text:
        return []
    if not isinstance(text, str):
        text = str(text)
    ctx = _Ctx(text)
    if known is not None:
        _known_ids(ctx, known)
        _known_dates(ctx, known)
        _known_exam_dates(ctx, known)
        _known_ages(ctx, known)
        _known_addresses(ctx, known)
        _known_phones(ctx, known)
        _known_institutions(ctx, known)
        _known_names(ctx, known)
    _detect_patterns(ctx)
    _detect_names(ctx)
    _detect_learned(ctx, [(s, e) for s, e, k in ctx.spans if k in ("NAME", "KNAME")])
    return _merge(text, ctx.spans)


# --------------------------------------------------------------------------- anonymize


def known_tokens(known: KnownIdentifiers | None) -> tuple[frozenset[str], frozenset[str]]:
    """(normalised words of every known person name, 2+ letters; alphanumeric forms of every known
    id, 3+ characters) -- used to check short structured values (HL7 codes) for known identifiers."""
    names: set[str] = set()
    ids: set[str] = set()
    if known is None:
        return frozenset(), frozenset()
    for raw in known.person_names:
        for fam, given, middle in _parse_person_name(strip_invisible(raw)):
            for w in fam + given + middle:
                for tm in _TOKEN_RE.finditer(w):
                    n = _norm(tm.group())
                    for p in [n] + [x for x in re.split(r"['-]", n) if x] + [n.replace("'", "")]:
                        if len(p) >= 2 and p not in _PARTICLES:
                            names.add(p)
    for raw in list(known.ids) + list(known.replacements):
        for piece in {raw, *re.split(r"[\\^]", raw or "")}:
            a = _alnum(piece or "")
            if len(a.lstrip("0")) >= 3:
                ids.add(a.lstrip("0"))
    return frozenset(names), frozenset(ids)


def mentions_known(text: str, known: KnownIdentifiers | None,
                   tokens: tuple[frozenset[str], frozenset[str]] | None = None, *,
                   name_words: int = 1, short_glued: bool = True) -> bool:
    """True when ``text`` holds a word equal to a known name part, or a known id.

    ``name_words``: how many different known name words it takes (2: a person's name, not one
    word of it that a code may equal, such as ``TEST``). ``short_glued=False``: a name word of
    fewer than 3 letters counts only standing alone, not glued into a code (``OB`` in
    ``OB_GENERAL`` or ``OB-GEN``)."""
    if not text:
        return False
    names, ids = tokens if tokens is not None else known_tokens(known)
    text = strip_invisible(text)
    hits: set[str] = set()
    for m in _TOKEN_RE.finditer(text):
        n = _norm(m.group())
        found = [n] if n in names else [p for p in _pieces(n) if p in names]
        if not short_glued:
            found = [p for p in found if len(p) >= 3 or (p == n and not _glued(text, m.start(), m.end()))]
        hits.update(found)
        if len(hits) >= name_words:
            return True
    if ids:
        whole = _alnum(text).lstrip("0")
        if whole in ids:
            return True
        for m in re.finditer(r"[A-Za-z0-9]+(?:[-./_ ][A-Za-z0-9]+)*", text):
            for cand in {m.group(), *re.split(r"[-./_ ]", m.group())}:
                a = _alnum(cand).lstrip("0")
                if a in ids:
                    return True
            if any(i in _alnum(m.group()) for i in ids if len(i) >= 5):
                return True
    return False


_DIGIT_RUN = re.compile(r"\d(?:[\d./ -]*\d)?")
_ADDRESS_COMMON = frozenset(w.casefold() for w in _SUFFIX_FULL.split("|")) | {
    "apartment", "suite", "floor", "unit", "north", "south", "east", "west", "city", "county", "state"}


@functools.lru_cache(maxsize=1024)
def _detail_needles(dates: tuple, phones: tuple, addresses: tuple, institutions: tuple):
    digits: set[str] = set()
    for d in dates:
        d = re.sub(r"\D", "", d or "")
        if len(d) == 8:
            digits |= {d, d[6:8] + d[4:6] + d[:4], d[4:6] + d[6:8] + d[:4]}  # YYYYMMDD, DDMMYYYY, MMDDYYYY
    for p in phones:
        p = re.sub(r"\D", "", p or "")
        if len(p) >= 7:
            digits.add(p[-7:])
    words: set[str] = set()
    for a in addresses:
        for tm in _TOKEN_RE.finditer(a or ""):
            n = _norm(tm.group())
            if len(n) >= 4 and n not in _ADDRESS_COMMON and n not in NEVER_NAME:
                words.add(n)
    for inst in institutions:
        words |= {_norm(w) for w in _distinctive_institution_words((inst or "").split())}
    return frozenset(digits), frozenset(words)


def mentions_known_details(text: str, known: KnownIdentifiers | None) -> bool:
    """Does ``text`` hold the known birth date or a date of the study (YYYYMMDD, DD.MM.YYYY,
    MM/DD/YYYY…), a known phone number, or a distinctive word of a known address or institution?"""
    if not text or known is None:
        return False
    digits, words = _detail_needles(tuple(known.dates) + tuple(known.exam_dates), tuple(known.phones),
                                    tuple(known.addresses), tuple(known.institutions))
    if digits:
        for m in _DIGIT_RUN.finditer(text):
            run = re.sub(r"\D", "", m.group())
            if any(d in run for d in digits):
                return True
    if words:
        return any(_norm(tm.group()) in words for tm in _TOKEN_RE.finditer(strip_invisible(text)))
    return False


def _glued(text: str, start: int, end: int) -> bool:
    """Is text[start:end] joined to a digit, an underscore or a dot (part of a code)?"""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    return any(c.isdigit() or c in "_." for c in (before, after))


def replacement_lookup(known: KnownIdentifiers | None) -> Callable[[str], str | None]:
    exact: dict[str, str] = {}
    normed: dict[str, str] = {}
    if known is not None:
        for k, v in known.replacements.items():
            if not k or v is None:
                continue
            exact[k.strip()] = str(v)
            exact[k.strip().casefold()] = str(v)
            n = _alnum(k)
            if len(n.lstrip("0")) >= 3:
                normed[n] = str(v)
                normed[n.lstrip("0")] = str(v)

    def look(s: str) -> str | None:
        s2 = s.strip()
        if s2 in exact:
            return exact[s2]
        if s2.casefold() in exact:
            return exact[s2.casefold()]
        n = _alnum(s2)
        return normed.get(n) or normed.get(n.lstrip("0"))

    return look


def _operator_fns(known: KnownIdentifiers | None, date_shift_days: int | None) -> dict[str, Callable[[str], str]]:
    look = replacement_lookup(known)

    def id_fn(s: str) -> str:
        return look(s) or _PLACEHOLDER["ID"]

    def uid_fn(s: str) -> str:
        return look(s) or _PLACEHOLDER["UID"]

    def date_fn(s: str) -> str:
        if date_shift_days is None:
            return _PLACEHOLDER["DATE"]
        try:
            out = shift_date_text(s, date_shift_days)
        except Exception:  # pragma: no cover - defensive
            out = None
        return out if out is not None else _PLACEHOLDER["DATE"]

    fns: dict[str, Callable[[str], str]] = {k: (lambda _s, _v=v: _v) for k, v in _PLACEHOLDER.items()}
    fns.update({"ID": id_fn, "UID": uid_fn, "DATE": date_fn})
    return fns


@functools.lru_cache(maxsize=1)
def _engine():
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def _apply_presidio(text: str, spans: list[Span], fns: dict[str, Callable[[str], str]]) -> str:
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    results = [RecognizerResult(entity_type=s.kind, start=s.start, end=s.end, score=1.0) for s in spans]
    operators = {}
    for kind in {s.kind for s in spans}:
        fn = fns.get(kind) or (lambda _s, _k=kind: f"[{_k}]")
        if kind in ("ID", "UID", "DATE"):
            operators[kind] = OperatorConfig("custom", {"lambda": fn})
        else:
            operators[kind] = OperatorConfig("replace", {"new_value": fn("")})
    try:
        res = _engine().anonymize(text=text, analyzer_results=results, operators=operators,
                                  merge_entities_with_spaces=False)
    except TypeError:  # older presidio without merge_entities_with_spaces
        res = _engine().anonymize(text=text, analyzer_results=results, operators=operators)
    return res.text


def _apply_manual(text: str, spans: list[Span], fns: dict[str, Callable[[str], str]]) -> str:
    out = text
    for s in sorted(spans, key=lambda x: x.start, reverse=True):
        fn = fns.get(s.kind) or (lambda _s, _k=s.kind: f"[{_k}]")
        out = out[:s.start] + fn(text[s.start:s.end]) + out[s.end:]
    return out


def clean_text(text: str, known: KnownIdentifiers | None = None, date_shift_days: int | None = None) -> str:
    """De-identify free text.  Never raises; fails closed ("[REDACTED]") on internal errors."""
    if text is None:
        return ""
    if not isinstance(text, str):
        try:
            text = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
        except Exception:
            return "[REDACTED]"
    text = strip_invisible(text)
    if not text:
        return text
    try:
        spans = find_phi_spans(text, known)
    except Exception:  # pragma: no cover - fail closed
        log.exception("PHI detection failed; redacting the whole text")
        return "[REDACTED]"
    if not spans:
        return text
    fns = _operator_fns(known, date_shift_days)
    try:
        return _apply_presidio(text, spans, fns)
    except Exception:  # pragma: no cover - presidio problem: same replacement by hand
        log.warning("presidio-anonymizer failed; applying replacements directly", exc_info=True)
        try:
            return _apply_manual(text, spans, fns)
        except Exception:
            log.exception("replacement failed; redacting the whole text")
            return "[REDACTED]"
