"""Personal data in free text: what identifies a person, found by patterns with checksums.

Found (`KINDS`): Chinese mobile numbers in any common spelling (spaces or dashes between digits,
+86 / 0086, full-width digits), landlines with their area code, resident ID numbers (18 digits
with a valid GB 11643 check digit, and the older 15), bank card numbers (16-19 digits passing
Luhn), e-mail addresses and vehicle plates (京A12345, new-energy 京AD12345 / 京A12345D).
Ordinary numbers (house, building and room numbers, dates, amounts, case numbers) stay: number
plans, region codes, the birth date inside an ID number and the checksums tell them apart.

Why patterns and not Presidio (or any NER scanner): Presidio's recognisers rest on spaCy or
transformer models, and Chinese needs one, which cannot be fetched onto the bus's machines; the
identifiers that matter here are structured numbers with fixed formats and checksums, where
patterns are exact, reviewable and cost microseconds per text. Names written into free text are
not found (that takes a model); the personal fields that carry names are masked whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

KINDS = ("phone", "landline", "id_number", "bank_card", "email", "plate")

# Full-width ASCII (０-９, Ａ-Ｚ, ＋, －, （）), the ideographic and no-break spaces and the usual
# dashes, mapped one character to one, so a match in the normalised text has the same span in
# the original.
_NORMAL = str.maketrans(
    {**{chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)}, "\u3000": " ", "\u00a0": " ",
     **{d: "-" for d in "\u2010\u2011\u2012\u2013\u2014"}}
)
_SEP = r"[ \-]?"
_COUNTRY = r"(?:\(?(?:\+|00)86\)?[ \-]?)"
_AREA = r"(?:10|2\d|[3-9]\d{2})"  # 010, 02x, then four-digit codes (0755, 0371, ...)
_PROVINCES = {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
              50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_PLATE_REGIONS = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_PLATE_LETTER = "A-HJ-NP-Z"  # no I or O on plates

_ANY = re.compile(r"[0-9@]")  # every kind holds a digit, but e-mail addresses, which hold an @
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_ID18 = re.compile(r"(?<![0-9])[1-9]\d{5} ?(?:19|20)\d{6} ?\d{3}[0-9Xx](?![0-9A-Za-z])")
_ID15 = re.compile(r"(?<![0-9])[1-9]\d{14}(?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![0-9])[3-6]\d{3}(?:[ \-]?\d){12,15}(?![0-9])")
_MOBILE = re.compile(rf"(?<![0-9])(?=[(+01]){_COUNTRY}?1[3-9]\d(?:{_SEP}\d){{8}}(?![0-9])")
_LANDLINE = re.compile(
    rf"(?<![0-9])(?=[(+0])(?:{_COUNTRY}\(?{_AREA}\)?|\(?0{_AREA}\)?){_SEP}[2-9]\d{{2,3}}{_SEP}\d{{4}}(?![0-9])"
)
_PLATE = re.compile(
    rf"[{_PLATE_REGIONS}][{_PLATE_LETTER}][·•\- ]?"
    rf"(?:[DF][{_PLATE_LETTER}0-9]\d{{4}}|\d{{5}}[DF]|[{_PLATE_LETTER}0-9]{{4}}[{_PLATE_LETTER}0-9挂学警港澳])(?![A-Za-z0-9])"
)


def normalise(text: str) -> str:
    """Full-width forms and odd spaces and dashes as ASCII, one character for one."""
    return text.translate(_NORMAL)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit() or c in "Xx")


def _birth_date(text: str) -> bool:
    try:
        born = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


def valid_id_number(number: str) -> bool:
    """An 18-digit resident ID (GB 11643: region, birth date, sequence, mod-11 check digit) or a
    15-digit one (region, birth date yymmdd of the 1900s, sequence)."""
    number = number.upper()
    if not number[:2].isdigit() or int(number[:2]) not in _PROVINCES:
        return False
    if len(number) == 15:
        return number.isdigit() and _birth_date("19" + number[6:12])
    if len(number) != 18 or not number[:17].isdigit() or not _birth_date(number[6:14]):
        return False
    check = "10X98765432"[sum(int(d) * w for d, w in zip(number, _ID_WEIGHTS)) % 11]
    return number[17] == check


def luhn(number: str) -> bool:
    total = 0
    for i, digit in enumerate(reversed(number)):
        value = int(digit) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _plate(text: str) -> bool:
    """Ordinary plates have at most two letters among their last five characters."""
    tail = text[-5:]
    return text[2] in "DF" or tail[-1] in "DF" or sum(c.isdigit() for c in tail) >= 3


_DETECTORS = (  # in order: a span found by an earlier one is not looked at again
    ("email", _EMAIL, lambda s: True),  # (looked for only in a text with an @: see find_personal)
    ("id_number", _ID18, lambda s: valid_id_number(_digits(s))),
    ("id_number", _ID15, valid_id_number),
    ("bank_card", _CARD, lambda s: 16 <= len(_digits(s)) <= 19 and luhn(_digits(s))),
    ("phone", _MOBILE, lambda s: True),
    ("landline", _LANDLINE, lambda s: True),
    ("plate", _PLATE, _plate),
)


def find_personal(text: str) -> list[Finding]:
    """Every identifier of a person in `text`, in order of position, none overlapping."""
    normal = normalise(text)
    if not _ANY.search(normal):
        return []
    found: list[Finding] = []
    for kind, pattern, valid in _DETECTORS:
        if kind == "email" and "@" not in normal:
            continue
        for match in pattern.finditer(normal):
            if valid(match.group()) and not any(f.start < match.end() and match.start() < f.end for f in found):
                found.append(Finding(kind, match.start(), match.end()))
    return sorted(found, key=lambda f: f.start)


def mask_number(digits: str) -> str:
    """Long numbers keep their first 3 and last 4 characters (138****5678), so a clerk can still
    tell two callers apart; shorter ones only their last 2, and the shortest nothing: no mask
    shows a value whole."""
    if len(digits) >= 11:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if len(digits) >= 6:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "***"


def national(digits: str) -> str:
    """A phone number without its +86 / 0086 prefix."""
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) - len(prefix) >= 10:
            return digits[len(prefix):]
    return digits


def mask_finding(kind: str, text: str) -> str:
    normal = normalise(text)
    if kind == "email":
        return "***@" + normal.rsplit("@", 1)[1]
    if kind == "plate":
        return normal[:2] + "***" + normal[-2:]
    digits = _digits(normal)
    return mask_number(national(digits) if kind in ("phone", "landline") else digits)


def mask_free_text(text: str) -> tuple[str, tuple[str, ...]]:
    """`text` with every identifier of a person masked, and the kinds found (sorted, once each)."""
    findings = find_personal(text)
    if not findings:
        return text, ()
    parts, at = [], 0
    for f in findings:
        parts += [text[at : f.start], mask_finding(f.kind, text[f.start : f.end])]
        at = f.end
    parts.append(text[at:])
    return "".join(parts), tuple(sorted({f.kind for f in findings}))
