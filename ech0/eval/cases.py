"""Loading a regression baseline: JSONL cases with typed checks, refused at load time when malformed.

    from ech0.eval.cases import load_baseline
    baseline = load_baseline("ech0/eval/baselines/regression.jsonl")   # UserError "file:line: ..." if bad

One case per line::

    {"id": "echo-1", "prompt": "Echo this: the old cat", "reference": "ECHO: the old cat",
     "checks": [{"type": "regex", "pattern": "^ECHO: "}, {"type": "max_loss", "value": 2.0}],
     "tags": ["echo"], "weight": 1.0, "max_new_tokens": 24}

Check types (``CHECK_TYPES``): ``exact`` (``value``, default the reference), ``contains`` /
``not_contains`` (``value`` or ``values``; ``ignore_case``), ``regex`` (``pattern``; ``ignore_case``;
``re.search``), ``max_length`` (``value`` characters), ``min_similarity`` (``value`` in [0, 1],
difflib ratio to the reference), ``max_loss`` (``value``: teacher-forced loss of the reference).
Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ech0.errors import UserError

CHECK_TYPES = ("exact", "contains", "not_contains", "regex", "max_length", "min_similarity", "max_loss")
NEEDS_REFERENCE = ("min_similarity", "max_loss")
CASE_KEYS = {"id", "prompt", "messages", "reference", "checks", "tags", "weight", "max_new_tokens", "notes"}
CONTEXT_ROLES = ("system", "user", "assistant")
# allowed keys per check type (besides "type"), and the required ones
_CHECK_KEYS = {
    "exact": ({"value", "ignore_case"}, set()),
    "contains": ({"value", "values", "ignore_case"}, set()),
    "not_contains": ({"value", "values", "ignore_case"}, set()),
    "regex": ({"pattern", "ignore_case"}, {"pattern"}),
    "max_length": ({"value"}, {"value"}),
    "min_similarity": ({"value"}, {"value"}),
    "max_loss": ({"value"}, {"value"}),
}


@dataclass
class Check:
    type: str
    params: dict
    compiled: re.Pattern | None = field(default=None, repr=False)

    def describe(self) -> str:
        p = self.params
        if self.type == "regex":
            return f"regex {p['pattern']!r}"
        if self.type in ("contains", "not_contains"):
            return f"{self.type} {self.values()!r}"
        if self.type == "exact":
            return "exact" + (f" {p['value']!r}" if "value" in p else " reference")
        return f"{self.type} {p['value']}"

    def values(self) -> list[str]:
        p = self.params
        return list(p["values"]) if "values" in p else [p["value"]]


@dataclass
class Case:
    id: str
    prompt: str
    checks: list[Check]
    reference: str | None = None
    tags: list[str] = field(default_factory=list)
    weight: float = 1.0
    max_new_tokens: int | None = None
    line: int = 0
    messages: list[dict] | None = None  # a multi-turn context ending with the user's turn (instead of prompt)

    @property
    def needs_loss(self) -> bool:
        return self.reference is not None

    @property
    def request(self) -> list[dict]:
        """What the model is asked: the context's turns, or the prompt as one user turn."""
        return self.messages or [{"role": "user", "content": self.prompt}]


@dataclass
class Baseline:
    path: Path
    cases: list[Case]
    sha256: str

    @property
    def name(self) -> str:
        return self.path.stem

    def frame(self):
        """The cases as a DataFrame (logged as the run's ``eval`` dataset input)."""
        import pandas as pd

        return pd.DataFrame({
            "id": [c.id for c in self.cases], "prompt": [c.prompt for c in self.cases],
            "messages": [json.dumps(c.messages) if c.messages else None for c in self.cases],
            "reference": [c.reference for c in self.cases],
            "checks": [json.dumps([{"type": k.type, **k.params} for k in c.checks]) for c in self.cases],
            "tags": [json.dumps(c.tags) for c in self.cases], "weight": [c.weight for c in self.cases]})


def _number(where: str, what: str, v, lo: float | None = None, hi: float | None = None, integer: bool = False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise UserError(f"{where}: {what} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise UserError(f"{where}: {what}={v} is out of range [{lo}, {hi if hi is not None else 'inf'}]")
    return v


def parse_check(raw, where: str, has_reference: bool) -> Check:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise UserError(f"{where}: each check is an object with a string 'type' (one of {', '.join(CHECK_TYPES)})")
    kind = raw["type"]
    if kind not in CHECK_TYPES:
        raise UserError(f"{where}: unknown check type {kind!r}; expected one of {', '.join(CHECK_TYPES)}")
    allowed, required = _CHECK_KEYS[kind]
    params = {k: v for k, v in raw.items() if k != "type"}
    extra = set(params) - allowed
    if extra:
        raise UserError(f"{where}: check {kind!r} has unknown key(s) {', '.join(sorted(extra))}; "
                        f"allowed: {', '.join(sorted(allowed))}")
    missing = required - set(params)
    if missing:
        raise UserError(f"{where}: check {kind!r} needs {', '.join(sorted(missing))}")
    if "ignore_case" in params and not isinstance(params["ignore_case"], bool):
        raise UserError(f"{where}: check {kind!r}: ignore_case must be true or false")
    compiled = None
    if kind in NEEDS_REFERENCE and not has_reference:
        raise UserError(f"{where}: check {kind!r} compares with the reference, but the case has none")
    if kind == "exact":
        if "value" in params and not isinstance(params["value"], str):
            raise UserError(f"{where}: check 'exact': value must be a string")
        if "value" not in params and not has_reference:
            raise UserError(f"{where}: check 'exact' needs a value or a reference")
    elif kind in ("contains", "not_contains"):
        if ("value" in params) == ("values" in params):
            raise UserError(f"{where}: check {kind!r} needs exactly one of value (a string) or values (a list)")
        vals = params["values"] if "values" in params else [params["value"]]
        if not isinstance(vals, list) or not vals or not all(isinstance(v, str) and v for v in vals):
            raise UserError(f"{where}: check {kind!r}: value(s) must be non-empty strings")
    elif kind == "regex":
        if not isinstance(params["pattern"], str):
            raise UserError(f"{where}: check 'regex': pattern must be a string")
        try:
            compiled = re.compile(params["pattern"], re.I if params.get("ignore_case") else 0)
        except re.error as e:
            raise UserError(f"{where}: check 'regex': invalid pattern {params['pattern']!r} ({e})") from None
    elif kind == "max_length":
        _number(where, "max_length value", params["value"], 1, integer=True)
    elif kind == "min_similarity":
        _number(where, "min_similarity value", params["value"], 0.0, 1.0)
    elif kind == "max_loss":
        _number(where, "max_loss value", params["value"], 0.0)
    return Check(kind, params, compiled)


def parse_case(obj, where: str, line: int) -> Case:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a case is a JSON object, got {type(obj).__name__}")
    extra = set(obj) - CASE_KEYS
    if extra:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(CASE_KEYS))}")
    if not isinstance(obj.get("id"), str) or not obj["id"].strip():
        raise UserError(f"{where}: 'id' must be a non-empty string")
    messages = _messages(obj, where)
    prompt = messages[-1]["content"] if messages else obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: 'prompt' must be a non-empty string (or give 'messages')")
    ref = obj.get("reference")
    if ref is not None and (not isinstance(ref, str) or not ref):
        raise UserError(f"{where}: 'reference' must be a non-empty string when given")
    checks = obj.get("checks")
    if not isinstance(checks, list) or not checks:
        raise UserError(f"{where}: 'checks' must be a non-empty list of typed checks")
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UserError(f"{where}: 'tags' must be a list of strings")
    weight = _number(where, "weight", obj.get("weight", 1.0), 0.0)
    mnt = obj.get("max_new_tokens")
    if mnt is not None:
        _number(where, "max_new_tokens", mnt, 1, 4096, integer=True)
    parsed = [parse_check(c, f"{where}: checks[{i}]", ref is not None) for i, c in enumerate(checks)]
    return Case(obj["id"], prompt, parsed, ref, tags, float(weight), mnt, line, messages)


def _messages(obj: dict, where: str) -> list[dict] | None:
    """A case's ``messages``: {role, content} turns ending with a user turn; exclusive with ``prompt``."""
    if "messages" not in obj:
        return None
    if "prompt" in obj:
        raise UserError(f"{where}: give 'prompt' or 'messages', not both")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in CONTEXT_ROLES \
                or not isinstance(m["content"], str) or not m["content"].strip():
            raise UserError(f"{where}: messages[{i}] must be {{\"role\": {'|'.join(CONTEXT_ROLES)}, "
                            "\"content\": non-empty string}")
    if msgs[-1]["role"] != "user":
        raise UserError(f"{where}: the last of 'messages' is the user's turn the model answers")
    return [dict(m) for m in msgs]


def load_baseline(path: str | Path) -> Baseline:
    """Every case of a JSONL baseline; the first problem raises ``UserError("path:line: ...")``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: baseline file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        case = parse_case(obj, where, n)
        if case.id in seen:
            raise UserError(f"{where}: duplicate id {case.id!r} (first at line {seen[case.id]})")
        seen[case.id] = n
        cases.append(case)
    if not cases:
        raise UserError(f"{path}: no cases; a baseline needs at least one")
    return Baseline(path.resolve(), cases, hashlib.sha256(data).hexdigest())
