"""Redaction: secrets first, then PII (then any extra patterns), replaced by typed placeholders.

    from ech0.data.redact import Redactor
    r = Redactor()
    clean = r("key AKIA... mail bob@example.com")   # 'key <SECRET:aws_access_key> mail <EMAIL>'
    r.counts                                       # {'secret:aws_access_key': 1, 'pii:EMAIL': 1}
    found, clean = r.scan(text)                    # [('secret', 'aws_access_key'), ('pii', 'EMAIL')], counts untouched

Used by the data stage (``ech0 data validate``) and, with extra blocklist patterns, by the
evaluation's safety scan (:mod:`ech0.eval.safety`). Counts and findings name the type, never a value.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, NamedTuple

from ech0.data.pii import find_pii
from ech0.data.secrets import find_secrets

_OURS = re.compile(r"<SECRET:\w+>|<[A-Z][A-Z_]*>|<BLOCKED:[\w\[\]]+>")  # placeholders this module writes
MIN_DETECTABLE = 6  # no secret or PII pattern matches fewer characters


class Pass(NamedTuple):
    """One redaction pass: ``find(text) -> [(start, end, rule)]``, each span replaced by ``placeholder(rule)``."""

    kind: str  # "secret" | "pii" | "blocklist": the prefix of counts and findings
    find: Callable[[str], list]
    placeholder: Callable[[str], str]


def _outside_placeholders(text: str, spans):
    """Drop spans that touch a placeholder already in ``text``: redacting twice changes nothing
    (``<SECRET:aws_access_key>`` must not read as ``secret: aws_access_key``)."""
    if "<" not in text or not spans:
        return spans
    taken = [m.span() for m in _OURS.finditer(text)]
    return [sp for sp in spans if not any(sp[0] < e and s < sp[1] for s, e in taken)]


def apply_spans(text: str, spans, placeholder: Callable[[str], str]) -> str:
    """``text`` with each non-overlapping, sorted ``(start, end, rule)`` span replaced by ``placeholder(rule)``."""
    out = []
    last = 0
    for s, e, name in spans:
        out.append(text[last:s])
        out.append(placeholder(name))
        last = e
    out.append(text[last:])
    return "".join(out)


def pattern_pass(rule: str, rx: re.Pattern) -> Pass:
    """An extra pass for one regex (a blocklist entry): matches become ``<BLOCKED:rule>``."""
    def find(text: str) -> list:
        return [(m.start(), m.end(), rule) for m in rx.finditer(text) if m.end() > m.start()]

    return Pass("blocklist", find, lambda name: f"<BLOCKED:{name}>")


SECRETS = Pass("secret", find_secrets, lambda name: f"<SECRET:{name}>")
PII = Pass("pii", find_pii, lambda name: f"<{name}>")


class Redactor:
    """Callable ``str -> str``; accumulates ``counts`` ("secret:<rule>" / "pii:<TYPE>" / "blocklist:<rule>")
    and, per row, the secret rule names seen (``row_secrets``) for ``--fail-on-secrets``."""

    def __init__(self, secrets: bool = True, pii: bool = True, extra: Iterable[Pass] = ()) -> None:
        self.passes = [p for p, on in ((SECRETS, secrets), (PII, pii)) if on] + list(extra)
        self._detect_only = not extra  # only the length-bounded detectors run
        self.counts: dict[str, int] = {}
        self.row_secrets: list[str] = []

    def scan(self, text: str) -> tuple[list[tuple[str, str]], str]:
        """``([(kind, rule), ...], redacted text)``; each pass runs on what the previous ones left."""
        found: list[tuple[str, str]] = []
        if self._detect_only and len(text) < MIN_DETECTABLE:
            return found, text
        for p in self.passes:
            spans = _outside_placeholders(text, p.find(text))
            if spans:
                found += [(p.kind, name) for *_, name in spans]
                text = apply_spans(text, spans, p.placeholder)
        return found, text

    def __call__(self, text: str) -> str:
        found, text = self.scan(text)
        for kind, name in found:
            key = f"{kind}:{name}"
            self.counts[key] = self.counts.get(key, 0) + 1
            if kind == "secret":
                self.row_secrets.append(name)
        return text

