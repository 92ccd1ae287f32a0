"""The canonical row, reason codes, strict JSON parsing, schema checks and reject records.

Used by ``ech0 data import`` and ``ech0 data validate``::

    from ech0.data.schema import parse_values, check_row, reject_record
    values, problem = parse_values(text)        # duplicate keys / NaN / depth are reported, not hidden
    row, reason, detail = check_row(values[0], max_turns=64)  # the canonical dict, or reason is set
    reject_record(rec, None, reason, detail, redact, norm, row=values[0])   # one line of a rejects file

Canonical row (one JSON object per line): a prompt/completion pair or a conversation::

    {"prompt": str, "completion": str, "tags": [str, ...], "quality_score": float in [0, 1] | null,
     "metadata": {...}}
    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...], "tags": ..., ...}

A pair means a one-turn conversation (``ech0.chat.messages_of``). ``prompt`` and ``completion`` are
required, non-empty after stripping whitespace; in a conversation every turn has exactly ``role`` and
``content`` (a non-empty string), a system turn comes first if at all, at least one turn is the
assistant's, and there are at most ``max_turns`` turns. ``tags`` (default ``[]``), ``quality_score``
(default ``null`` = unscored) and ``metadata`` (default ``{}``) are optional; any other key is
rejected (``unknown_key``) so a misspelt field is never ignored.
"""

from __future__ import annotations

import json
import math
import re

from ech0.chat import ROLES

SCHEMA_VERSION = 2  # 2: a row may be a conversation (messages)
REQUIRED = ("prompt", "completion")  # a pair; a conversation requires "messages" instead
OPTIONAL = {"tags": list, "quality_score": None, "metadata": dict}
KEYS = ("prompt", "completion", "messages", "tags", "quality_score", "metadata")
TURN_KEYS = ("role", "content")
MAX_TURNS = 64  # default of validate's max_turns
MAX_DEPTH = 32  # nesting allowed inside metadata (and anywhere in a row)
MAX_TAGS = 256

# reason code -> what it means (README.md, "Data hygiene" renders this table)
REASONS = {
    "invalid_utf8": "the line is not valid UTF-8 (line and byte offset reported)",
    "invalid_json": "the line is not valid JSON",
    "truncated_line": "the last line (or the last array item) ends mid-value: the file was cut off",
    "line_too_long": "the line is over --max-line-bytes (default 1 MiB); skipped without being loaded",
    "too_deep": f"values nested more than {MAX_DEPTH} levels deep",
    "duplicate_key": "the same key appears twice in one object (JSON parsers silently keep the last)",
    "non_finite": "NaN or Infinity somewhere in the row (not valid JSON; cannot be compared)",
    "not_an_object": "the row is a JSON array, string, number, boolean or null, not an object",
    "missing_key": "a required key (prompt and completion, or messages; a turn's role and content) is absent",
    "unknown_key": "a key outside the canonical schema (misspelt field?)",
    "wrong_type": "a field has the wrong type (e.g. tags as a string, a boolean quality_score)",
    "empty_field": "prompt or completion (or a tag) is empty or whitespace-only, or messages is an empty list",
    "out_of_range": "quality_score outside [0, 1]",
    "unknown_shape": "import: the object matches no known dataset shape (use --map)",
    "unknown_role": "a turn's role is not system, user or assistant",
    "empty_content": "a turn's content is empty or whitespace-only (also after removing control characters)",
    "non_string_content": "a turn's content is not a string",
    "no_assistant_turn": "a conversation has no assistant turn (nothing to train on)",
    "system_not_first": "a system turn that is not the first turn",
    "too_many_turns": "a conversation with more turns than max_turns (default 64)",
    "template_error": "the model's chat template cannot render the conversation (e.g. roles that do not alternate)",
    "bad_messages": "import: messages/conversations are not a list of {role, content} / {from, value}",
    "no_instances": "import: a self-instruct task with an empty `instances` list",
    "too_many_tokens": "the conversation as the model's chat template renders it (what training tokenizes) "
                       "is over --max-tokens",
    "low_quality": "quality_score below --min-quality",
    "duplicate": "exact duplicate (normalised text) of a kept row with equal or higher quality",
    "near_duplicate": "near duplicate (MinHash LSH, Jaccard >= threshold) of a kept row",
}

# characters removed or replaced in text fields, counted in the manifest under "normalizations"
_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\r\u2028\u2029\ud800-\udfff]")
_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURR = re.compile("[\ud800-\udfff]")


class _Hooks:
    """Per-parse state for json hooks: duplicate keys and NaN/Infinity are recorded, not hidden."""

    __slots__ = ("dup", "nonfinite")

    def __init__(self) -> None:
        self.dup = None
        self.nonfinite = None

    def pairs(self, pairs):
        d = dict(pairs)
        if len(d) != len(pairs) and self.dup is None:
            seen = set()
            for k, _ in pairs:
                if k in seen:
                    self.dup = k
                    break
                seen.add(k)
        return d

    def constant(self, name):
        if self.nonfinite is None:
            self.nonfinite = name
        return float(name.replace("Infinity", "inf"))


REJECT_TEXT_MAX = 1 << 20  # raw text kept in a reject record (the rest is cut, its length recorded)

_HOOKS = _Hooks()
_DECODER = json.JSONDecoder(object_pairs_hook=_HOOKS.pairs, parse_constant=_HOOKS.constant, strict=False)
_WS = re.compile(r"[ \t\n\r]*")


def parse_values(text: str) -> tuple[list, tuple[str, str] | None]:
    """Parse one line: usually one value, several when objects were concatenated on one line.

    Returns ``(values, None)`` or ``([], (reason, detail))``. Duplicate keys and NaN/Infinity make
    the whole line a reject (``duplicate_key`` / ``non_finite``) rather than being silently fixed.
    """
    h = _HOOKS
    h.dup = None
    h.nonfinite = None
    values = []
    n = len(text)
    i = _WS.match(text, 0).end()
    try:
        while i < n:
            v, i = _DECODER.raw_decode(text, i)
            values.append(v)
            i = _WS.match(text, i).end()
    except RecursionError:
        return [], ("too_deep", "nested too deeply to parse")
    except json.JSONDecodeError as e:
        return [], ("invalid_json", f"{e.msg} at column {e.pos + 1}")
    if h.dup is not None:
        return [], ("duplicate_key", f"key {_short(h.dup)!r} appears more than once in one object")
    if h.nonfinite is not None:
        return [], ("non_finite", f"{h.nonfinite} is not a valid JSON number")
    if not values:
        return [], ("invalid_json", "no JSON value on the line")
    return values, None


def parse_record(rec) -> tuple[list, tuple[str, str, str | None] | None]:
    """A reader record (:class:`ech0.data.reader.Rec`) -> ``(values, None)``, or ``([], (reason, detail, text))``
    where ``text`` is the raw line (or the reader's preview of it) to keep in the reject record."""
    if rec.error is not None:
        return [], (rec.error, rec.detail, rec.preview)
    values, problem = parse_values(rec.text)
    if problem is None:
        return values, None
    reason, detail = problem
    if reason == "invalid_json" and rec.last:
        reason, detail = "truncated_line", f"last line has no newline and does not parse ({detail})"
    return [], (reason, detail, rec.text)


def reject_record(rec, item: int | None, reason: str, detail: str | None, fix, norm: dict, *, row=None,
                  text: str | None = None) -> dict:
    """One line of a rejects file: where the row was (``line``, ``offset``, ``item``), ``reason``,
    ``detail``, and the row (``row``) or the raw line (``text``), every string cleaned and passed
    through ``fix`` (the redactor) so no secret reaches the rejects file."""
    out: dict = {"line": rec.line}
    if rec.offset is not None and rec.offset >= 0:
        out["offset"] = rec.offset
    if item is not None:
        out["item"] = item
    out["reason"] = reason
    if detail:
        out["detail"] = fix(detail)
    if row is not None:
        out["row"] = clean_value(row, norm, fix)
    elif text is not None:
        if len(text) > REJECT_TEXT_MAX:
            out["text_truncated_from"] = len(text)
            text = text[:REJECT_TEXT_MAX]
        out["text"] = clean_value(text, norm, fix)
    return out


def _short(s: str, n: int = 40) -> str:
    s = str(s)
    return s if len(s) <= n else s[:n] + "..."


def _tname(v) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def clean_text(s: str, counts: dict) -> str:
    """Normalise line breaks and remove control characters / lone surrogates (each counted)."""
    if _BAD.search(s) is None:
        return s
    if "\r" in s:
        counts["crlf_in_text"] = counts.get("crlf_in_text", 0) + 1
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    if "\u2028" in s or "\u2029" in s:
        counts["line_separator"] = counts.get("line_separator", 0) + 1
        s = s.replace("\u2028", "\n").replace("\u2029", "\n")
    if _CTRL.search(s):
        counts["control_chars"] = counts.get("control_chars", 0) + 1
        s = _CTRL.sub("", s)
    if _SURR.search(s):
        counts["lone_surrogate"] = counts.get("lone_surrogate", 0) + 1
        s = _SURR.sub("\ufffd", s)
    return s


def _depth_ok(v, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(v, dict):
        return all(_depth_ok(x, depth + 1) for x in v.values())
    if isinstance(v, list):
        return all(_depth_ok(x, depth + 1) for x in v)
    return True


def clean_value(v, counts: dict, fix):
    """Apply ``clean_text`` then ``fix`` (redaction) to every string in a JSON value, keys included."""
    if isinstance(v, str):
        return fix(clean_text(v, counts))
    if isinstance(v, dict):
        return {fix(clean_text(k, counts)) if isinstance(k, str) else k: clean_value(x, counts, fix)
                for k, x in v.items()}
    if isinstance(v, list):
        return [clean_value(x, counts, fix) for x in v]
    return v


def check_row(obj, max_turns: int | None = None) -> tuple[dict | None, str | None, str | None]:
    """Strict schema check of a pair or a conversation (``max_turns``: None = no limit). Returns
    ``(row, None, None)`` or ``(None, reason, detail)``.

    ``row`` has exactly the canonical keys (defaults filled in). Text is not yet cleaned or redacted.
    """
    if type(obj) is not dict:
        return None, "not_an_object", f"row is a JSON {_tname(obj)}, expected an object"
    required = ("messages",) if "messages" in obj else REQUIRED
    for k in required:
        if k not in obj:
            return None, "missing_key", f"missing required key {k!r} (or a 'messages' conversation)"
    for k in obj:
        if k not in OPTIONAL and k not in required:
            allowed = ", ".join(x for x in KEYS if x in OPTIONAL or x in required)
            return None, "unknown_key", f"unknown key {_short(k)!r} (allowed: {allowed})"
    body, reason, detail = check_messages(obj["messages"], max_turns) if "messages" in obj else check_pair(obj)
    if reason is None:
        extras, reason, detail = check_extras(obj)
    return (None, reason, detail) if reason is not None else ({**body, **extras}, None, None)


def check_pair(obj: dict) -> tuple[dict | None, str | None, str | None]:
    """``({"prompt", "completion"}, None, None)`` or ``(None, reason, detail)``."""
    for k in REQUIRED:
        v = obj[k]
        if type(v) is not str:
            return None, "wrong_type", f"{k}: expected a string, got {_tname(v)}"
        if not v.strip():
            return None, "empty_field", f"{k} is empty or whitespace-only"
    return {"prompt": obj["prompt"], "completion": obj["completion"]}, None, None


def check_turn(i: int, m) -> tuple[str, str] | None:
    """``(reason, detail)`` for turn ``i`` of a conversation that is not ``{role, content}`` as it must be."""
    where = f"messages[{i}]"
    if type(m) is not dict:
        return "wrong_type", f"{where}: expected an object {{role, content}}, got {_tname(m)}"
    for k in TURN_KEYS:
        if k not in m:
            return "missing_key", f"{where}: missing {k!r}"
    for k in m:
        if k not in TURN_KEYS:
            return "unknown_key", f"{where}: unknown key {_short(k)!r} (allowed: role, content)"
    if type(m["role"]) is not str or m["role"] not in ROLES:
        shown = repr(_short(m["role"])) if type(m["role"]) is str else _tname(m["role"])
        return "unknown_role", f"{where}.role {shown}: expected one of {', '.join(ROLES)}"
    if type(m["content"]) is not str:
        return "non_string_content", f"{where}.content: expected a string, got {_tname(m['content'])}"
    if not m["content"].strip():
        return "empty_content", f"{where}.content is empty or whitespace-only"
    if m["role"] == "system" and i > 0:
        return "system_not_first", f"{where}: a system turn after turn 1 (it may only open the conversation)"
    return None


def check_messages(msgs, max_turns: int | None) -> tuple[dict | None, str | None, str | None]:
    """``({"messages"}, None, None)`` or ``(None, reason, detail)`` for the first problem found."""
    if type(msgs) is not list:
        return None, "wrong_type", f"messages: expected an array of {{role, content}}, got {_tname(msgs)}"
    if not msgs:
        return None, "empty_field", "messages is an empty list"
    if max_turns is not None and len(msgs) > max_turns:
        return None, "too_many_turns", f"{len(msgs)} turns > max_turns {max_turns}"
    for i, m in enumerate(msgs):
        problem = check_turn(i, m)
        if problem is not None:
            return None, *problem
    if not any(m["role"] == "assistant" for m in msgs):
        return None, "no_assistant_turn", "no assistant turn: nothing to train on"
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}, None, None


def check_extras(obj: dict) -> tuple[dict | None, str | None, str | None]:
    """``({"tags", "quality_score", "metadata"}, None, None)`` with defaults filled in, or ``(None, reason, detail)``."""
    tags = obj.get("tags", [])
    if tags is None:
        tags = []
    if type(tags) is not list:
        return None, "wrong_type", f"tags: expected an array of strings, got {_tname(tags)}"
    for j, t in enumerate(tags):
        if type(t) is not str:
            return None, "wrong_type", f"tags[{j}]: expected a string, got {_tname(t)}"
        if not t.strip():
            return None, "empty_field", f"tags[{j}] is empty or whitespace-only"
    if len(tags) > MAX_TAGS:
        return None, "wrong_type", f"tags: {len(tags)} tags, more than {MAX_TAGS}"
    q = obj.get("quality_score")
    if q is not None:
        if type(q) not in (int, float):  # bool is a subclass of int: rejected here on purpose
            return None, "wrong_type", f"quality_score: expected a number in [0, 1] or null, got {_tname(q)}"
        if not math.isfinite(q):
            return None, "non_finite", f"quality_score is {q}"
        if not 0.0 <= q <= 1.0:
            return None, "out_of_range", f"quality_score {q} is outside [0, 1]"
        q = float(q)
    md = obj.get("metadata", {})
    if md is None:
        md = {}
    if type(md) is not dict:
        return None, "wrong_type", f"metadata: expected an object, got {_tname(md)}"
    if md and not _depth_ok(md, 1):
        return None, "too_deep", f"metadata is nested more than {MAX_DEPTH} levels deep"
    return {"tags": tags, "quality_score": q, "metadata": md}, None, None


def clean_row_text(row: dict, counts: dict, fix) -> dict:
    """A checked row with every string through :func:`clean_text` then ``fix`` (the redactor, or
    identity): prompt and completion or every turn's content, tags, metadata (keys included)."""
    out = dict(row)
    if "messages" in row:
        out["messages"] = [{"role": m["role"], "content": fix(clean_text(m["content"], counts))}
                           for m in row["messages"]]
    else:
        out["prompt"] = fix(clean_text(row["prompt"], counts))
        out["completion"] = fix(clean_text(row["completion"], counts))
    out["tags"] = [fix(clean_text(t, counts)) for t in row["tags"]]
    out["metadata"] = clean_value(row["metadata"], counts, fix) if row["metadata"] else row["metadata"]
    return out


def emptied(row: dict) -> tuple[str, str] | None:
    """``(reason, detail)`` when cleaning left a prompt, completion or turn empty (control characters only)."""
    if "messages" not in row:
        if not row["prompt"].strip() or not row["completion"].strip():
            return "empty_field", "prompt or completion is empty after removing control characters"
        return None
    for i, m in enumerate(row["messages"]):
        if not m["content"].strip():
            return "empty_content", f"messages[{i}].content is empty after removing control characters"
    return None
