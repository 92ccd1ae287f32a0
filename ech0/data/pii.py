"""Offline PII detection: e-mail, phone, payment card (Luhn), IP, IBAN (mod 97), US SSN, UK NINO.

Run by ``ech0 data validate`` (through ech0/data/redact.py) and the eval's safety scan; in code::

    from ech0.data.pii import find_pii
    spans = find_pii("mail bob@example.com")   # [(5, 20, "EMAIL")]

Replaced by ``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<IP>``, ``<IBAN>``, ``<SSN>``, ``<NATIONAL_ID>``.
Not detected (documented in README.md, "Data hygiene"): personal names, postal addresses, dates of birth,
passport/driving-licence numbers, national ids other than US SSN and UK NINO, phone numbers
written without any separator or ``+`` prefix (a bare 10-digit number is far more often not a
phone), and IPv6 addresses in rare abbreviated forms.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+"
                   r"[A-Za-z]{2,24}(?![\w\-])")
# phones need visible phone formatting: +country code, (area) code, or separators between groups
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}"
    r"|\d{3}[.\-]\d{3}[.\-]\d{4}"
    r"|\d{3} \d{3} \d{4}"
    r"|0\d{2,4}[ \-]\d{3,4}[ \-]\d{3,4})(?![\w\-])"
)
# digits glued to letters (hex digests, ids) are not cards or SSNs
CARD = re.compile(r"(?<![\w\-.])\d(?:[ \-]?\d){12,18}(?![\w\-])")
SSN = re.compile(r"(?<![\w\-.])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w\-])")
NINO = re.compile(r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
                  r"(?![A-Za-z0-9])")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
                  r"|(?:[0-9A-Fa-f]{1,4}:){1,6}(?::[0-9A-Fa-f]{1,4}){1,6}"
                  r"|(?:[0-9A-Fa-f]{1,4}:){2,7}:|::(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4})(?![0-9A-Fa-f:])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")
# A one-byte-per-character "shape" of the text (digits -> '0', upper -> 'A', lower -> 'a', phone
# separators kept, everything else -> '_') lets literal substring tests and literal-first regexes
# find the few places worth a real regex, instead of scanning every row with class-led patterns.
_SHAPE = bytearray(b"_" * 256)
for _c in range(48, 58):
    _SHAPE[_c] = ord("0")
for _c in range(65, 91):
    _SHAPE[_c] = ord("A")
for _c in range(97, 123):
    _SHAPE[_c] = ord("a")
for _c in b" -.()+/:\n":
    _SHAPE[_c] = _c
_SHAPE = bytes(_SHAPE)
_NUMRUN = re.compile(rb"0[0 \-.()/]{6,40}0")  # starts with a literal: fast
_UPPER_DIGITS = re.compile(rb"AA ?00")
_PHONEISH = re.compile(rb"000[ .\-)]{1,2}0000|000 00 00|00 00 00 00|0000 000 000|\) ?000")
_V6ISH = re.compile(rb":(?::|[0aA]{1,4}:[0aA]{1,4}:)")  # '::' or three colon-separated hex-ish groups

PII_TYPES = ("EMAIL", "PHONE", "CARD", "IP", "IBAN", "SSN", "NATIONAL_ID")


_DOUBLE = str.maketrans("0123456789", "0246813579")  # digit -> digit sum of 2*digit


def luhn_ok(digits: str) -> bool:
    rev = digits[::-1]
    odd = rev[1::2].translate(_DOUBLE)
    return (sum(map(int, rev[0::2])) + sum(map(int, odd))) % 10 == 0


def iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    r = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in r)
    return int(num) % 97 == 1


def _ipv6_ok(s: str) -> bool:
    # avoid clock times and Python slices: need at least 3 groups with a hex letter or a '::'
    return s.count(":") >= 2 and (any(c in "abcdefABCDEF" for c in s) or "::" in s) and len(s) >= 6


def _window(text: str, rx: re.Pattern, s: int, e: int, name: str, spans: list, check=None) -> None:
    for m in rx.finditer(text, s, e):
        if check is None or check(m.group()):
            spans.append((m.start(), m.end(), name))


def find_pii(text: str) -> list[tuple[int, int, str]]:
    """Spans ``(start, end, type)`` of PII, non-overlapping, sorted by start."""
    spans: list = []
    n = len(text)
    at = text.find("@")
    while at >= 0:
        _window(text, EMAIL, max(0, at - 70), min(n, at + 260), "EMAIL", spans)
        at = text.find("@", at + 260)
    shape = text.encode("ascii", "replace").translate(_SHAPE)  # same length as text
    if b"000" in shape:  # phones, cards and SSNs all have a run of 3+ digits
        for m in _NUMRUN.finditer(shape):
            s = max(0, m.start() - 5)
            e = min(n, m.end() + 1)
            digits = shape.count(b"0", m.start(), m.end())
            if digits >= 13:
                _window(text, CARD, s, e, "CARD", spans, _card_ok)
            if digits >= 9 and shape.find(b"000-00-0000", s, e) >= 0:
                _window(text, SSN, s, e, "SSN", spans)
            if digits >= 7 and (shape[m.start() - 1:m.start()] in (b"+", b"(") or _PHONEISH.search(shape, s, e)):
                _window(text, PHONE, s, e, "PHONE", spans)
    i = shape.find(b"0.0")
    while i >= 0:  # IPv4 candidates
        s, e = max(0, i - 4), min(n, i + 16)
        if shape.count(b".", s, e) >= 3:
            _window(text, IPV4, s, e, "IP", spans)
        i = shape.find(b"0.0", e - 3 if e - 3 > i else i + 1)
    for m in _UPPER_DIGITS.finditer(shape):
        s = m.start()
        _window(text, IBAN, s, min(n, s + 50), "IBAN", spans, iban_ok)
        _window(text, NINO, s, min(n, s + 16), "NATIONAL_ID", spans)
    if b":" in shape:
        last = -1
        for m in _V6ISH.finditer(shape):
            if m.start() < last:
                continue
            s, e = max(0, m.start() - 40), min(n, m.end() + 40)
            _window(text, IPV6, s, e, "IP", spans, _ipv6_ok)
            last = e
    if len(spans) > 1:
        # the order is the priority for overlaps: a card number is not also a phone
        order = {t: i for i, t in enumerate(("EMAIL", "CARD", "SSN", "IBAN", "NATIONAL_ID", "IP", "PHONE"))}
        spans.sort(key=lambda t: (t[0], -(t[1] - t[0]), order[t[2]]))
        merged = [spans[0]]
        for sp in spans[1:]:
            if sp[0] < merged[-1][1]:
                continue
            merged.append(sp)
        spans = merged
    return spans


def _card_ok(s: str) -> bool:
    d = s.replace(" ", "").replace("-", "")
    return 13 <= len(d) <= 19 and len(set(d)) > 1 and luhn_ok(d)
