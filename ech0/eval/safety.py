"""Safety flags on model outputs: the data stage's secret and PII redactor plus a configurable blocklist.

Run by the evaluation stage (``ech0 eval --model-dir ...``, config ``safety.*``)::

    from ech0.eval.safety import Scanner
    scan = Scanner(blocklist=["rm -rf /"])
    flags, redacted = scan("my key is AKIA...")   # [{'kind': 'secret', 'rule': 'aws_access_key'}], 'my key is <SECRET:aws_access_key>'

Detection and redaction are :class:`ech0.data.redact.Redactor`'s (no new detectors here); each
blocklist entry is one more of its passes. A flag records the kind and rule, never the matched value;
the redacted text (the only form of an output that reaches reports, tables and logs) replaces each
match by a placeholder. Blocklist entries are case-insensitive substrings, or regexes when written
``re:PATTERN``.
"""

from __future__ import annotations

import re

from ech0.errors import UserError


def _blocklist_pattern(i: int, entry) -> re.Pattern:
    if not isinstance(entry, str) or not entry.strip():
        raise UserError(f"safety.blocklist[{i}]: entries are non-empty strings (substring, or re:PATTERN)")
    try:
        return re.compile(entry[3:], re.I) if entry.startswith("re:") else re.compile(re.escape(entry), re.I)
    except re.error as e:
        raise UserError(f"safety.blocklist[{i}]: invalid regex {entry!r} ({e})") from None


class Scanner:
    def __init__(self, blocklist: list[str] | None = None, secrets: bool = True, pii: bool = True):
        from ech0.data.redact import Redactor, pattern_pass

        extra = [pattern_pass(f"blocklist[{i}]", _blocklist_pattern(i, e)) for i, e in enumerate(blocklist or [])]
        self._redactor = Redactor(secrets=secrets, pii=pii, extra=extra)

    def __call__(self, text: str) -> tuple[list[dict], str]:
        """(flags, redacted text). Secrets first, then PII on what is left, then the blocklist."""
        found, text = self._redactor.scan(text)
        return [{"kind": kind, "rule": rule} for kind, rule in found], text

    def redact(self, text: str | None) -> str | None:
        return None if text is None else self(text)[1]
