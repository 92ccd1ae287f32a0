"""Offline PII detection: e-mail, phone, payment card (Luhn), IP, IBAN (mod 97), US SSN, UK NINO.

Run by ``ech0 data validate`` (through ech0/data/redact.py) and the eval's safety scan; in code::

    from ech0.data.pii import find_pii
    spans = find_pii("mail bob@example.com")   # [(5, 20, "EMAIL")]

Replaced by ``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<IP>``, ``<IBAN>``, ``<SSN>``, ``<NATIONAL_ID>``.
Not detected (documented in README.md, "Data hygiene"): personal names, postal addresses, dates of birth,
passport/driving-licence numbers, national ids other than US SSN and UK NINO, phone numbers
written without any separator or ``+`` prefix (a bare 10-digit number is far more often not a
phone) or only in 1-2 digit groups (+33 1 23 45 67 89), and IPv6 addresses in rare abbreviated forms.

Not PII by design (real text is full of them; README.md, "Redaction on real text"): non-global IP
addresses (loopback, private, link-local, documentation, netmasks, multicast) and public DNS
resolvers, dotted version/section numbers, digit strings outside every card issuer's range or
length or not grouped as cards are printed, binary numbers, EAN-13 barcodes, ``git@host`` SSH
logins and ``name@2x.png`` image names.
"""

from __future__ import annotations

import ipaddress
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
# digits glued to letters (hex digests, ids) are not cards or SSNs; nor are 16 of the digits of a
# longer run of 4-digit groups (4111 1111 1111 1111 1111); an expiry or CVV may follow (... 1111 12/26)
CARD = re.compile(r"(?<![\w\-.])(?<!\d{4}[ \-])\d(?:[ \-]?\d){12,18}(?![\w\-]|[ \-]\d{4})")
SSN = re.compile(r"(?<![\w\-.])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w\-])")
NINO = re.compile(r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
                  r"(?![A-Za-z0-9])")
# an address may end a sentence ("... at 203.0.113.9."), but 1.2.3.4.5 is not an address
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                  r"(?!\d|\.\d)")
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


# IBAN length per country (SWIFT's IBAN registry, ISO 13616): a code and length outside it is a
# product or lot code that happened to pass mod 97 (1 in 97 random strings do)
_IBAN_LENGTHS = dict((c[:2], int(c[2:])) for c in """
AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 DK18 DO28 EE20 EG29
ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28
LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25
QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30
""".split())


def iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    r = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in r)
    return int(num) % 97 == 1


# Well-known public DNS resolvers: in tutorials ("set DNS to 8.8.8.8"), they identify no one.
_PUBLIC_RESOLVERS = frozenset(("8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
                               "208.67.222.222", "208.67.220.220", "4.2.2.2", "2001:4860:4860::8888",
                               "2001:4860:4860::8844", "2606:4700:4700::1111", "2606:4700:4700::1001"))


def _ip_global(s: str) -> bool:
    """Only a globally routed unicast address can point at a person. Loopback (127.0.0.1, ::1),
    private (10/8, 172.16/12, 192.168/16), link-local (169.254/16, fe80::), documentation
    (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32), netmasks (255.255.255.0), the
    unspecified address (0.0.0.0), multicast and public resolvers are text about networks."""
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast and s not in _PUBLIC_RESOLVERS


# a dotted number right after v / version / release / upgrade ... (a name and "to" may come between)
# is a version or section number: v3.11.10.10, "Upgrade V8 to 3.6.6.20", "section 12.4.1.30",
# "paragraph 7.1.2.30"
_VERSION_BEFORE = re.compile(r"(?:(?<![A-Za-z])[vV]|(?i:\b(?:version|ver|release|rel|build|upgraded?|updated?|"
                             r"downgraded?|patch|section|chapter|clause|paragraph|article|appendix|figure|table|"
                             r"item|step|§)\.?\s+(?:\S+\s+)?(?:to\s+|is\s+)?))$")


def _ipv4_ok(s: str) -> bool:
    # every part below 20 (1.7.12.1, 2.3.1.4, 3.11.10.10): a version or section number; a random
    # global address looks like that with probability (20/256)**4 ~ 4e-5
    return any(int(p) >= 20 for p in s.split(".")) and _ip_global(s)


def _ipv6_ok(s: str) -> bool:
    # avoid clock times and Python slices: need at least 3 groups with a hex letter or a '::';
    # no digit at all (Foo::Face, std::cafe) is a C++/Rust/Ruby scope, not an address
    return (s.count(":") >= 2 and (any(c in "abcdefABCDEF" for c in s) or "::" in s) and len(s) >= 6
            and any(c.isdigit() for c in s) and _ip_global(s))


def _email_ok(s: str) -> bool:
    local, _, domain = s.rpartition("@")
    if local.lower() == "git":
        return False  # git@github.com:org/repo.git: the forges' shared SSH login, not a person
    return re.match(r"\d+(?:\.\d+)?x\.", domain) is None  # icon@2x.png, logo@3x.webp: image scales


def _phone_ok(s: str) -> bool:
    d = "".join(c for c in s if c.isdigit())
    if set(d) <= {"0", "1"}:
        return False  # binary: 0110 1001 1010
    if s.startswith("+"):
        # E.164 numbers are at least 9 digits with the country code in practice; +12 345 678 and
        # +1.234.567 are signed counts with thousands separators
        groups = re.split(r"[ .\-()]+", s[1:])
        return len(d) >= 9 and not ("." in s and len(groups) > 2 and all(len(g) == 3 for g in groups[1:]))
    rest = s.rpartition(")")[2].lstrip(" .-")
    if len({c for c in rest if c in " .-"}) > 1:
        return False  # 252.227-7014: a clause number; a phone keeps one separator
    # national numbers written with a trunk 0 or as (area) 3-3-4 have 10-11 digits: 0046 0066 0069
    # (code points) and 0800 1200 1600 (times) have 12
    return 10 <= len(d) <= 11


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
        _window(text, EMAIL, max(0, at - 70), min(n, at + 260), "EMAIL", spans, _email_ok)
        at = text.find("@", at + 260)
    shape = text.encode("ascii", "replace").translate(_SHAPE)  # same length as text
    if b"000" in shape:  # phones, cards and SSNs all have a run of 3+ digits
        for m in _NUMRUN.finditer(shape):
            s = max(0, m.start() - 5)
            e = min(n, m.end() + 1)
            digits = shape.count(b"0", m.start(), m.end())
            if digits >= 13:
                for m in CARD.finditer(text, s, e):
                    c = m.group()
                    while not _card_ok(c) and (" " in c or "-" in c):
                        c = c[:max(c.rfind(" "), c.rfind("-"))]  # "4111 1111 1111 1111 12/26": drop the expiry
                    if _card_ok(c):
                        spans.append((m.start(), m.start() + len(c), "CARD"))
            if digits >= 9 and shape.find(b"000-00-0000", s, e) >= 0:
                _window(text, SSN, s, e, "SSN", spans)
            if digits >= 7 and (shape[m.start() - 1:m.start()] in (b"+", b"(") or _PHONEISH.search(shape, s, e)):
                _window(text, PHONE, s, e, "PHONE", spans, _phone_ok)
    i = shape.find(b"0.0")
    while i >= 0:  # IPv4 candidates
        s, e = max(0, i - 4), min(n, i + 16)
        if shape.count(b".", s, e) >= 3:
            for m in IPV4.finditer(text, s, e):
                if _ipv4_ok(m.group()) and not _VERSION_BEFORE.search(text, max(0, m.start() - 40), m.start()):
                    spans.append((m.start(), m.end(), "IP"))
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


# Issuer identification numbers: (first digits low, high, how many digits, valid lengths) per
# scheme (ISO/IEC 7812 ranges as the schemes publish them). A number outside every range is not a
# payment card, whatever its checksum: millisecond timestamps (1318289051000), ids, digit strings.
_IIN = (
    (4, 4, 1, (13, 16, 19)),  # Visa
    (51, 55, 2, (16,)), (2221, 2720, 4, (16,)),  # Mastercard
    (34, 34, 2, (15,)), (37, 37, 2, (15,)),  # American Express
    (6011, 6011, 4, (16, 17, 18, 19)), (644, 649, 3, (16, 17, 18, 19)), (65, 65, 2, (16, 17, 18, 19)),  # Discover
    (3528, 3589, 4, (16, 17, 18, 19)),  # JCB
    (300, 305, 3, (14, 15, 16, 17, 18, 19)), (3095, 3095, 4, (14, 15, 16, 17, 18, 19)),  # Diners Club
    (36, 36, 2, (14, 15, 16, 17, 18, 19)), (38, 39, 2, (16, 17, 18, 19)),
    (62, 62, 2, (16, 17, 18, 19)),  # UnionPay
    (2200, 2204, 4, (16, 17, 18, 19)),  # Mir
    (5018, 5018, 4, (13, 14, 15, 16, 17, 18, 19)), (5020, 5020, 4, (13, 14, 15, 16, 17, 18, 19)),  # Maestro
    (5038, 5038, 4, (13, 14, 15, 16, 17, 18, 19)), (5893, 5893, 4, (13, 14, 15, 16, 17, 18, 19)),
    (6304, 6304, 4, (13, 14, 15, 16, 17, 18, 19)), (6759, 6759, 4, (13, 14, 15, 16, 17, 18, 19)),
    (6761, 6763, 4, (13, 14, 15, 16, 17, 18, 19)),
    (60, 60, 2, (16,)), (508, 508, 3, (16,)), (6521, 6522, 4, (16,)),  # RuPay
)
# how card numbers are printed: 4-4-4-4 (Visa, Mastercard, ...; 4-4-4-4-3 for 19 digits, 4-4-4-1 for
# 13), 4-6-5 (Amex), 4-6-4 (Diners 14), or no separators; 4 5 3 9 1 4 8 8 ... is a list of digits
_AMEX_DINERS = ((4, 6, 5), (4, 6, 4))


def card_issuer_ok(d: str) -> bool:
    """``d`` (digits only) starts with a card scheme's issuer range and has that scheme's length."""
    for low, high, k, lengths in _IIN:
        if len(d) in lengths and low <= int(d[:k]) <= high:
            return True
    return False


def _ean13_ok(d: str) -> bool:
    return (sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(d[:12])) + int(d[12])) % 10 == 0


def _card_ok(s: str) -> bool:
    d = s.replace(" ", "").replace("-", "")
    if not 13 <= len(d) <= 19 or len(set(d)) < 2 or set(d) <= {"0", "1"}:
        return False  # 0/1 only: binary (1010 1100 0011 0101), never a card
    seps = {c for c in s if c in " -"}
    if len(seps) > 1:
        return False
    if seps:
        groups = tuple(len(g) for g in s.split(seps.pop()))
        if not (len(groups) >= 3 and all(g == 4 for g in groups[:-1]) and groups[-1] <= 4 or groups in _AMEX_DINERS):
            return False
    elif len(d) == 13 and _ean13_ok(d):
        return False  # an EAN-13 barcode (4006381333931): GS1's checksum, not Luhn's
    return card_issuer_ok(d) and luhn_ok(d)
