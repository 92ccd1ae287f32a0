"""Redaction: secrets first, then PII, replaced by typed placeholders; counts by type, never values.

    from ech0.data.redact import Redactor
    r = Redactor()
    clean = r("key AKIA... mail bob@example.com")   # 'key <SECRET:aws_access_key> mail <EMAIL>'
    r.counts   # {'secret:aws_access_key': 1, 'pii:EMAIL': 1}
"""

from __future__ import annotations

import re

from ech0.data.pii import find_pii
from ech0.data.secrets import find_secrets

_OURS = re.compile(r"<SECRET:\w+>|<[A-Z][A-Z_]*>")  # placeholders this module writes


def _outside_placeholders(text: str, spans):
    """Drop spans that touch a placeholder already in ``text``: redacting twice changes nothing
    (``<SECRET:aws_access_key>`` must not read as ``secret: aws_access_key``)."""
    if "<" not in text or not spans:
        return spans
    taken = [m.span() for m in _OURS.finditer(text)]
    return [sp for sp in spans if not any(sp[0] < e and s < sp[1] for s, e in taken)]


def _apply(text: str, spans, fmt) -> str:
    out = []
    last = 0
    for s, e, name in spans:
        out.append(text[last:s])
        out.append(fmt(name))
        last = e
    out.append(text[last:])
    return "".join(out)


def _secret_ph(name: str) -> str:
    return f"<SECRET:{name}>"


def _pii_ph(name: str) -> str:
    return f"<{name}>"


class Redactor:
    """Callable ``str -> str``; accumulates ``counts`` ("secret:<rule>" / "pii:<TYPE>") and, per row,
    the secret rule names seen (``row_secrets``) for ``--fail-on-secrets``."""

    def __init__(self, secrets: bool = True, pii: bool = True) -> None:
        self.secrets = secrets
        self.pii = pii
        self.counts: dict[str, int] = {}
        self.row_secrets: list[str] = []

    def __call__(self, text: str) -> str:
        if len(text) < 6:
            return text
        if self.secrets:
            spans = _outside_placeholders(text, find_secrets(text))
            if spans:
                c = self.counts
                for *_, name in spans:
                    k = "secret:" + name
                    c[k] = c.get(k, 0) + 1
                    self.row_secrets.append(name)
                text = _apply(text, spans, _secret_ph)
        if self.pii:
            spans = _outside_placeholders(text, find_pii(text))
            if spans:
                c = self.counts
                for *_, name in spans:
                    k = "pii:" + name
                    c[k] = c.get(k, 0) + 1
                text = _apply(text, spans, _pii_ph)
        return text

    def redact_value(self, v):
        """Redact every string inside a JSON value (dict keys too)."""
        if isinstance(v, str):
            return self(v)
        if isinstance(v, dict):
            return {self(k) if isinstance(k, str) else k: self.redact_value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.redact_value(x) for x in v]
        return v
