"""The secret key and the keyed, deterministic pseudonyms derived from it.

Every pseudonym is an HMAC-SHA256 of the original value under a secret key, so
every worker and every run agrees without coordination, and nobody without the
key can go back from a pseudonym to the original (or confirm a guess).

Key sources, first found wins: an explicit key (bytes), ``--key-file``, a
Prefect Secret block name, the ``MEDANON_KEY`` environment variable, and last a
key generated once in the state directory (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from datetime import date, timedelta
from pathlib import Path

KEY_ENV = "MEDANON_KEY"
KEY_FILE_NAME = "secret.key"
MAX_UID_LEN = 64


class KeyError_(Exception):
    pass


def _decode_key(text: str) -> bytes:
    text = text.strip()
    if not text:
        raise KeyError_("the key is empty")
    return text.encode("utf-8")


def _read_key_file(path: str | os.PathLike) -> bytes:
    """A key file's key. Its bytes never reach an exception: a file that is not UTF-8 text raises
    a message of its own (a UnicodeDecodeError would carry the bytes into logs and Prefect)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        raise KeyError_("cannot read the key file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyError_("the key file is not text: write the key as UTF-8 text (e.g. base64 or hex)") from None
    return _decode_key(text)


def load_key(
    key_file: str | None = None,
    key_block: str | None = None,
    state_dir: str | os.PathLike | None = None,
    create: bool = True,
) -> bytes:
    if key_file:
        return _read_key_file(key_file)
    if key_block:
        from prefect.blocks.system import Secret

        return _decode_key(str(Secret.load(key_block).get()))
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env)
    if state_dir is None:
        raise KeyError_("no key: set MEDANON_KEY, --key-file, --key-block or a state dir")
    path = Path(state_dir) / KEY_FILE_NAME
    if path.exists():
        return _read_key_file(path)
    if not create:
        raise KeyError_("no key in the state dir")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key.encode()


def _keep(cache: dict, key, value):
    """Remember a derived value; the cache starts over past 100 000 entries (bounded memory)."""
    if len(cache) > 100_000:
        cache.clear()
    cache[key] = value
    return value


class Pseudonymizer:
    """All keyed derivations: UIDs, IDs, names, date shifts, fingerprints."""

    def __init__(self, key: bytes, uid_root: str = "2.25", date_shift_max_days: int = 1460):
        if not key:
            raise KeyError_("the key is empty")
        self._key = key
        self.uid_root = uid_root.rstrip(".")
        self.date_shift_max_days = date_shift_max_days
        self._uid_cache: dict[str, str] = {}
        self._code_cache: dict[tuple, str] = {}

    def digest(self, domain: str, value: str) -> bytes:
        return hmac.new(self._key, f"{domain}\x00{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def fingerprint(self) -> str:
        """A non-reversible, PHI-free identity of the key (safe for cache keys and summaries)."""
        return self.digest("fingerprint", "medanon").hex()[:16]

    def code(self, domain: str, value: str, length: int = 12) -> str:
        """Upper-case base32 code, e.g. for patient IDs and folder names: the first ``length``
        characters of the digest's base32. Base32 turns each 5 bytes into 8 characters on their
        own, so only the first whole groups are encoded (the same characters, without encoding
        all 32 bytes). Codes repeat (a study's, a patient's): they are kept once computed."""
        key = (domain, value, length)
        cached = self._code_cache.get(key)
        if cached is not None:
            return cached
        digest = self.digest(domain, value)
        return _keep(self._code_cache, key,
                     base64.b32encode(digest[:min(len(digest), 5 * -(-length // 8))]).decode("ascii")[:length])

    def uid(self, original: str) -> str:
        original = original.strip().rstrip("\x00")
        cached = self._uid_cache.get(original)
        if cached is not None:
            return cached
        n = int.from_bytes(self.digest("uid", original)[:16], "big")
        if self.uid_root == "2.25":
            new = f"2.25.{n}"
        else:
            digits = str(n)
            room = MAX_UID_LEN - len(self.uid_root) - 1
            digits = digits[:room].lstrip("0") or "1"
            new = f"{self.uid_root}.{digits}"
        return _keep(self._uid_cache, original, new)

    def patient_id(self, original: str) -> str:
        return "P" + self.code("patient", original, 11)

    def patient_name(self, original_id: str) -> str:
        return "ANON^" + self.code("patient", original_id, 11)

    def study_code(self, study_uid: str) -> str:
        return "S" + self.code("study", study_uid, 11)

    def series_code(self, series_uid: str) -> str:
        return "R" + self.code("series", series_uid, 11)

    def instance_code(self, sop_uid: str) -> str:
        return "I" + self.code("instance", sop_uid, 15)

    def accession(self, study_uid: str, accession: str) -> str:
        return "A" + self.code("accession", f"{study_uid}\x00{accession}", 11)

    def date_shift_days(self, patient_original_id: str) -> int:
        """Per-patient offset in days: always negative (1 .. max days back)."""
        n = int.from_bytes(self.digest("dateshift", patient_original_id)[:8], "big")
        return -(1 + n % self.date_shift_max_days)

    def cache_token(self, *parts: str) -> str:
        """A keyed hash of PHI-bearing identity (e.g. source paths): safe to store as a cache key."""
        return self.digest("cache", "\x1f".join(parts)).hex()


# a DT: the date, then optional hh, mm, ss, .ffffff, and a UTC offset (&ZZXX)
_DT = r"\d{8}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?(?:[+-]\d{4})?"
_DT_ONE = re.compile(f"({_DT})")
_DT_RANGE = re.compile(f"({_DT})?-({_DT})?")


_UTC_OFFSET = re.compile(r"[+-]\d{4}$")


def _shift_one(v: str, days: int) -> str | None:
    """One DA or DT value with its date shifted and the time kept; None if not one. A DT's
    UTC offset (&ZZXX) is dropped: it tells where the exam took place, and Timezone Offset From
    UTC, which a DT without one refers to, is cleaned to +0000 under Modified Dates."""
    try:
        d = date(int(v[:4]), int(v[4:6]), int(v[6:8])) + timedelta(days=days)
    except ValueError:
        return None
    return d.strftime("%Y%m%d") + _UTC_OFFSET.sub("", v[8:])


def _shift_value(value: str, days: int) -> str:
    """A DA or DT value, or a range of them ("A-B", "-B", "A-"), every date in it shifted.
    Anything else (text after a date, a partial date) is not a date: ''."""
    v = value.strip()
    if _DT_ONE.fullmatch(v):
        return _shift_one(v, days) or ""
    m = _DT_RANGE.fullmatch(v)
    if m and v != "-":
        ends = [_shift_one(e, days) if e else "" for e in m.groups()]
        return "" if None in ends else "-".join(ends)
    return ""


def shift_date(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD, or a range of them) by days; unparseable -> '' ."""
    return _shift_value(value, days)


def shift_datetime(value: str, days: int) -> str:
    """Shift a DT value (YYYYMMDDhhmmss.ffffff&zzzz, or a range) keeping the time part."""
    v = value.strip()
    if len(v) == 4 and v.isdigit():  # year only: cannot shift by days meaningfully
        return v
    return _shift_value(v, days)
