"""Safety flags on model outputs: the data stage's secret and PII detectors plus a configurable blocklist.

    from ech0.eval.safety import Scanner
    scan = Scanner(blocklist=["rm -rf /"])
    flags, redacted = scan("my key is AKIA...")   # [{'kind': 'secret', 'rule': 'aws_access_key'}], 'my key is <SECRET:aws_access_key>'

Detection reuses :func:`ech0.data.secrets.find_secrets` and :func:`ech0.data.pii.find_pii` (no new
detectors here). A flag records the kind and rule, never the matched value; the redacted text (the
only form of an output that reaches reports, tables and logs) replaces each match by a placeholder.
Blocklist entries are case-insensitive substrings, or regexes when written ``re:PATTERN``.
"""

from __future__ import annotations

import re

from ech0.errors import UserError


class Scanner:
    def __init__(self, blocklist: list[str] | None = None, secrets: bool = True, pii: bool = True):
        self.secrets, self.pii = secrets, pii
        self.blocklist: list[tuple[str, re.Pattern]] = []
        for i, entry in enumerate(blocklist or []):
            if not isinstance(entry, str) or not entry.strip():
                raise UserError(f"safety.blocklist[{i}]: entries are non-empty strings (substring, or re:PATTERN)")
            try:
                rx = re.compile(entry[3:], re.I) if entry.startswith("re:") else re.compile(re.escape(entry), re.I)
            except re.error as e:
                raise UserError(f"safety.blocklist[{i}]: invalid regex {entry!r} ({e})") from None
            self.blocklist.append((f"blocklist[{i}]", rx))

    def __call__(self, text: str) -> tuple[list[dict], str]:
        """(flags, redacted text). Secrets first, then PII on what is left, then the blocklist."""
        from ech0.data.pii import find_pii
        from ech0.data.redact import _apply
        from ech0.data.secrets import find_secrets

        flags: list[dict] = []
        if self.secrets:
            spans = find_secrets(text)
            flags += [{"kind": "secret", "rule": name} for *_, name in spans]
            text = _apply(text, spans, lambda name: f"<SECRET:{name}>")
        if self.pii:
            spans = find_pii(text)
            flags += [{"kind": "pii", "rule": name} for *_, name in spans]
            text = _apply(text, spans, lambda name: f"<{name}>")
        for name, rx in self.blocklist:
            hits = [(m.start(), m.end(), name) for m in rx.finditer(text) if m.end() > m.start()]
            flags += [{"kind": "blocklist", "rule": name} for _ in hits]
            text = _apply(text, hits, lambda n: f"<BLOCKED:{n}>")
        return flags, text

    def redact(self, text: str | None) -> str | None:
        return None if text is None else self(text)[1]
