"""Import legacy dumps (JSON array, JSONL, pretty-printed objects) into the canonical raw stage.

    python -m ech0.data import --input dump.jsonl --name qa --map prompt=question --map completion=best_answer
    python -m ech0.data import --input sharegpt.json --flatten   # chats as prompt/completion instead of messages
    python scripts/import_legacy_data.py --input legacy.json --tag crypto      # the same, a thin shim

    from ech0.data.importers import run_import
    man = run_import(ctx, "legacy.json", tags=["crypto"])    # -> dict (the manifest)

Recognised shapes (detected per row, counted in the summary and the manifest):

==================  ==========================================================================
prompt_completion   ``prompt`` + ``completion`` (already canonical; also prompt/response)
alpaca              ``instruction`` [+ ``input``] + ``output``  (prompt = instruction + blank line + input)
question_answer     ``question`` + ``answer``  (also query/response, input/output)
openai_chat         ``messages``: [{role, content}] -> a ``messages`` row, every turn kept (roles
                    system/developer -> system, user, assistant; text content parts joined)
sharegpt            ``conversations``: [{from, value}] (system, human -> user, gpt -> assistant), the same
self_instruct       ``instruction`` + ``instances``: [{input, output}] -> one row per instance
==================  ==========================================================================

``--map FIELD=KEY`` (FIELD in prompt, completion, tags, quality_score, id; KEY a dotted path, or
several joined with ``+``) overrides detection for every row. ``--flatten`` makes a chat a prompt/completion
row instead: the last assistant turn is the completion, the turns before it the prompt (a lone user turn
verbatim, else "System: ...", "User: ...", "Assistant: ..." blocks). Every row keeps its provenance in
``metadata``: source file name, line (and array item), original id, ``--tag``, shape, instance, and
the keys it did not use under ``metadata.extra``. Raw rows are a faithful copy (not redacted: the
clean stage redacts); the rejects file is redacted.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ech0.context import Context
from ech0.data import manifest as mf
from ech0.data.reader import DEFAULT_MAX_LINE_BYTES, Rec, iter_records, normalizations, sniff
from ech0.data.redact import Redactor
from ech0.data.schema import check_row, clean_row_text, parse_record, reject_record
from ech0.data.stage import check_name, default_name, make_progress
from ech0.errors import UserError
from ech0.io import atomic_open

MAP_FIELDS = ("prompt", "completion", "tags", "quality_score", "id")
ID_KEYS = ("id", "_id", "uid", "uuid", "task_id", "idx")
USER_ROLES = {"user": "user", "human": "user", "prompter": "user"}
ASSISTANT_ROLES = {"assistant": "assistant", "gpt": "assistant", "bot": "assistant", "chatgpt": "assistant",
                   "model": "assistant", "bard": "assistant", "bing": "assistant", "claude": "assistant"}
SYSTEM_ROLES = {"system": "system", "developer": "system"}
TOOL_ROLES = {"tool": "tool", "function": "tool", "ipython": "tool", "observation": "tool"}


class Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_maps(items: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--map {it!r}: expected FIELD=KEY, e.g. --map prompt=question")
        field, key = it.split("=", 1)
        field = field.strip()
        if field not in MAP_FIELDS:
            raise UserError(f"--map {it!r}: FIELD must be one of {', '.join(MAP_FIELDS)}")
        keys = [k.strip() for k in key.split("+") if k.strip()]
        if not keys:
            raise UserError(f"--map {it!r}: KEY is empty")
        out[field] = keys
    return out


def _get(obj, dotted: str):
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(dotted)
    return cur


def _text(v, what: str) -> str:
    if isinstance(v, str):
        return v
    raise Reject("wrong_type", f"{what}: expected a string, got {type(v).__name__ if v is not None else 'null'}")


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p and p.strip())


def _content(v, where: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        out = []
        for j, part in enumerate(v):
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text") \
                    and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Reject("bad_messages", f"{where}[{j}]: non-text content part ({kind!s:.30})")
        return "\n".join(out)
    raise Reject("non_string_content", f"{where}: content must be a string or a list of text parts")


def _flatten_chat(turns: list[tuple[str, str]], key: str) -> tuple[dict, dict]:
    """``--flatten``: ({prompt, completion}, extra metadata) of a chat; its last assistant turn is the completion."""
    last = max((i for i, (r, _) in enumerate(turns) if r == "assistant"), default=-1)
    if last < 0:
        raise Reject("no_assistant_turn", f"{key}: no assistant turn to use as the completion")
    history = turns[:last]
    completion = turns[last][1]
    extra = {}
    if len(turns) > last + 1:
        extra["trailing_turns_dropped"] = len(turns) - last - 1
    roles = [r for r, _ in history]
    if roles == ["user"]:
        prompt = history[0][1]
    elif roles == ["system", "user"]:
        prompt = _join(history[0][1], history[1][1])
    else:
        prompt = "\n\n".join(f"{r.capitalize()}: {c}" for r, c in history)
    extra["turns"] = len(history) + 1
    return {"prompt": prompt, "completion": completion}, extra


def _chat(turns: list[tuple[str, str]], key: str, flatten: bool) -> tuple[dict, dict]:
    """(row body, extra metadata) of a chat: every turn as ``messages`` (roles checked by ``check_row``),
    or flattened."""
    if flatten:
        return _flatten_chat(turns, key)
    return {"messages": [{"role": r, "content": c} for r, c in turns]}, {"turns": len(turns)}


def _chat_turns(msgs, key: str, role_key: str, content_key: str) -> list[tuple[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise Reject("bad_messages", f"{key}: expected a non-empty list")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or role_key not in m:
            raise Reject("bad_messages", f"{key}[{i}]: expected an object with {role_key!r} and {content_key!r}")
        r = str(m[role_key]).lower()
        role = USER_ROLES.get(r) or ASSISTANT_ROLES.get(r) or SYSTEM_ROLES.get(r) or TOOL_ROLES.get(r)
        if role is None:
            raise Reject("unknown_role", f"{key}[{i}]: unknown role {str(m[role_key])[:30]!r}")
        turns.append((role, _content(m.get(content_key), f"{key}[{i}].{content_key}")))
    return turns


def detect(obj: dict) -> str | None:
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    if "messages" in obj:
        return "openai_chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "instances" in obj:
        return "self_instruct"
    if "instruction" in obj and ("output" in obj or "response" in obj):
        return "alpaca"
    if "question" in obj and "answer" in obj:
        return "question_answer"
    if "prompt" in obj and "response" in obj:
        return "prompt_response"
    if "query" in obj and "response" in obj:
        return "query_response"
    if "input" in obj and "output" in obj:
        return "input_output"
    return None


USED = {
    "prompt_completion": {"prompt", "completion"},
    "openai_chat": {"messages"},
    "sharegpt": {"conversations"},
    "self_instruct": {"instruction", "instances"},
    "alpaca": {"instruction", "input", "output", "response"},
    "question_answer": {"question", "answer"},
    "prompt_response": {"prompt", "response"},
    "query_response": {"query", "response"},
    "input_output": {"input", "output"},
}


def _pair(prompt: str, completion: str, extra: dict | None = None) -> tuple[dict, dict]:
    return {"prompt": prompt, "completion": completion}, extra or {}


def convert(obj, maps: dict[str, list[str]], flatten: bool = False) -> tuple[str, list[tuple[dict, dict]], set]:
    """``obj`` -> (shape, [(row body: {prompt, completion} or {messages}, extra_metadata)], used_keys).
    Raises ``Reject``."""
    if type(obj) is not dict:
        raise Reject("not_an_object", f"row is a JSON {type(obj).__name__}, expected an object")
    if "prompt" in maps or "completion" in maps:
        if "prompt" not in maps or "completion" not in maps:
            raise UserError("--map needs both prompt=... and completion=...")
        vals = {}
        for f in ("prompt", "completion"):
            parts = []
            for k in maps[f]:
                try:
                    parts.append(_text(_get(obj, k), k))
                except KeyError:
                    raise Reject("missing_key", f"--map {f}={'+'.join(maps[f])}: key {k!r} not in row") from None
            vals[f] = _join(*parts)
        used = {k.split(".")[0] for f in ("prompt", "completion") for k in maps[f]}
        return "mapped", [_pair(vals["prompt"], vals["completion"])], used
    shape = detect(obj)
    if shape is None:
        keys = ", ".join(sorted(str(k)[:30] for k in obj)[:12])
        raise Reject("unknown_shape", f"no known shape for keys [{keys}]; use --map prompt=KEY --map completion=KEY")
    used = USED[shape]
    if shape == "prompt_completion":
        return shape, [_pair(obj["prompt"], obj["completion"])], used  # types checked by check_row
    if shape in ("question_answer", "prompt_response", "query_response", "input_output"):
        pk = next(k for k in ("prompt", "question", "query", "input") if k in used)
        ck = next(k for k in ("completion", "answer", "response", "output") if k in used)
        return shape, [_pair(_text(obj[pk], pk), _text(obj[ck], ck))], used
    if shape == "alpaca":
        ins = _text(obj["instruction"], "instruction")
        inp = obj.get("input") or ""
        out = obj["output"] if "output" in obj else obj["response"]
        return shape, [_pair(_join(ins, _text(inp, "input")), _text(out, "output"))], used
    if shape == "self_instruct":
        ins = _text(obj["instruction"], "instruction")
        inst = obj["instances"]
        if not isinstance(inst, list):
            raise Reject("wrong_type", "instances: expected a list of {input, output}")
        if not inst:
            raise Reject("no_instances", "instances is empty")
        rows = []
        for i, it in enumerate(inst):
            if not isinstance(it, dict) or "output" not in it:
                raise Reject("wrong_type", f"instances[{i}]: expected an object with input and output")
            inp = it.get("input") or ""
            rows.append(_pair(_join(ins, _text(inp, f"instances[{i}].input")),
                              _text(it["output"], f"instances[{i}].output"), {"instance": i}))
        return shape, rows, used
    if shape == "openai_chat":
        return shape, [_chat(_chat_turns(obj["messages"], "messages", "role", "content"), "messages", flatten)], used
    if shape == "sharegpt":
        turns = _chat_turns(obj["conversations"], "conversations", "from", "value")
        return shape, [_chat(turns, "conversations", flatten)], used
    raise AssertionError(shape)


def _tags(obj: dict, maps, tag: list[str]):
    key = maps.get("tags", ["tags"])[0]
    try:
        t = _get(obj, key)
    except KeyError:
        t = []
    if isinstance(t, str):
        t = [t]  # import is lenient here: one tag, never a list of characters
    if isinstance(t, list):  # anything else is left as is: check_row rejects it with wrong_type
        t = list(t) + [x for x in tag if x not in t]
    return t, key.split(".")[0]


def _quality(obj: dict, maps):
    keys = maps.get("quality_score") or ["quality_score", "score", "quality"]
    for k in keys:
        try:
            v = _get(obj, k)
        except KeyError:
            continue
        if k == "quality_score" or maps.get("quality_score"):
            return v, k.split(".")[0]  # validated strictly by check_row
        if type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 1:
            return v, k
    return None, None


def _orig_id(obj: dict, maps):
    for k in maps.get("id") or ID_KEYS:
        try:
            v = _get(obj, k)
        except KeyError:
            continue
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return v, k.split(".")[0]
    return None, None


def provenance(obj: dict, maps, tag_list: list[str], source: str, rec: Rec, item) -> tuple[list, object, dict, set]:
    """(tags, quality_score, metadata, keys taken) of a source object: its own metadata plus where it
    came from, the original id and the ``--tag``; the keys read for tags, score and id."""
    t, tkey = _tags(obj, maps, tag_list)
    q, qkey = _quality(obj, maps)
    oid, idkey = _orig_id(obj, maps)
    md = dict(obj["metadata"]) if isinstance(obj.get("metadata"), dict) else {}
    md.update({"source": source, "line": rec.line})
    if item is not None:
        md["item"] = item
    if oid is not None:
        md["id"] = oid
    if tag_list:
        md["tag"] = tag_list[0] if len(tag_list) == 1 else list(tag_list)
    return t, q, md, {tkey, qkey, idkey}


class Importer:
    """One ``import`` run's state: every source value becomes raw rows or reject records."""

    def __init__(self, maps: dict, tag_list: list[str], source: str, out, rej, flatten: bool = False) -> None:
        self.maps, self.tag_list, self.source, self.flatten = maps, tag_list, source, flatten
        self.out, self.rej = out, rej
        self.red = Redactor()  # rejects are redacted; raw rows are a faithful copy
        self.reasons: dict = {}
        self.shapes: dict = {}
        self.norm: dict = {}
        self.read = self.kept = self.rejected = 0

    def reject(self, rec: Rec, item, reason: str, detail: str | None, row=None, text=None) -> None:
        self.rej.write(json.dumps(reject_record(rec, item, reason, detail, self.red, {}, row=row, text=text),
                                  ensure_ascii=False) + "\n")
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rejected += 1

    def record(self, rec: Rec) -> None:
        values, problem = parse_record(rec)
        if problem is not None:
            self.read += 1
            reason, detail, text = problem
            self.reject(rec, rec.item, reason, detail, text=text)
            return
        if len(values) > 1:
            self.norm["lines_with_several_objects"] = self.norm.get("lines_with_several_objects", 0) + 1
        for k, obj in enumerate(values):
            self.value(rec, k if len(values) > 1 else rec.item, obj)

    def value(self, rec: Rec, item, obj) -> None:
        self.read += 1
        try:
            shape, rows, used = convert(obj, self.maps, self.flatten)
        except Reject as e:
            self.reject(rec, item, e.reason, e.detail, row=obj)
            return
        self.shapes[shape] = self.shapes.get(shape, 0) + 1
        self.read += len(rows) - 1  # one source object may become several rows
        tags, quality, base_md, taken = provenance(obj, self.maps, self.tag_list, self.source, rec, item)
        extra = {k: v for k, v in obj.items() if k not in used and k not in taken and k != "metadata"}
        if "metadata" in obj and not isinstance(obj.get("metadata"), dict):
            extra["metadata"] = obj["metadata"]
        for body, more in rows:
            md = {**base_md, "shape": shape, **more}
            if extra:
                md["extra"] = extra
            self.row(rec, item, {**body, "tags": tags, "quality_score": quality, "metadata": md})

    def row(self, rec: Rec, item, cand: dict) -> None:
        row, reason, detail = check_row(cand)
        if reason is not None:
            self.reject(rec, item, reason, detail, row=cand)
            return
        row = clean_row_text(row, self.norm, lambda s: s)
        self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.kept += 1


def run_import(ctx: Context, input: str, name: str | None = None, tags: list[str] | None = None,
               maps: list[str] | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               progress: bool | None = None, flatten: bool = False, lock: bool = True) -> dict:
    """Import ``input`` into ``ctx``'s raw level as dataset ``name``; returns the manifest (also written).
    Chats keep every turn as ``messages`` unless ``flatten`` (prompt/completion rows). Written under the
    dataset's :class:`ech0.data.manifest.DatasetLock`; ``lock=False``: the caller holds it."""
    src = Path(input).expanduser()
    if not src.exists():
        raise UserError(f"{input}: not found")
    name = check_name(name or default_name(src.resolve()))
    args = (ctx, input, src.resolve(), name, tags, maps, max_line_bytes, progress, flatten)
    if not lock:
        return _import(*args)
    with mf.DatasetLock(ctx, name, "ech0 data import").writing():
        return _import(*args)


def _import(ctx: Context, input: str, src: Path, name: str, tags, maps, max_line_bytes: int, progress,
            flatten: bool) -> dict:
    t0 = time.time()
    tag_list = [t.strip() for t in (tags or []) if t and t.strip()]
    mp = parse_maps(maps)
    fmt = sniff(src, max_line_bytes)
    in_sha = mf.sha256_file(src)
    out_path = ctx.data_file("raw", name)
    rej_path = ctx.data_dir("raw") / f"{name}.rejects.jsonl"
    bar = make_progress(fmt.size, f"import {name}", progress)
    try:
        with atomic_open(out_path) as out, atomic_open(rej_path) as rej:
            imp = Importer(mp, tag_list, src.name, out, rej, flatten)
            for rec in iter_records(fmt, max_line_bytes, progress=bar.update):
                imp.record(rec)
            if imp.read == 0:
                raise UserError(f"{src}: no rows (only blank lines or an empty array); nothing to import")
            assert imp.read == imp.kept + imp.rejected, (imp.read, imp.kept, imp.rejected)
    finally:
        bar.close()
    man = mf.base(name, "raw", "import", {"input": str(input), "name": name, "tags": tag_list,
                                          "map": {k: "+".join(v) for k, v in mp.items()},
                                          "max_line_bytes": max_line_bytes, "flatten": flatten}, t0)
    mf.record_io(ctx, man, src, in_sha, fmt.mode, imp.read, out_path, imp.kept, rej_path, imp.rejected)
    man["shapes"] = dict(sorted(imp.shapes.items()))
    man["reject_reasons"] = dict(sorted(imp.reasons.items()))
    man["redactions"] = {}
    man["redactions_in_rejects"] = dict(sorted(imp.red.counts.items()))
    man["normalizations"] = dict(sorted({**imp.norm, **normalizations(fmt)}.items()))
    man["parent"] = None
    return mf.finish(man, mf.manifest_path(ctx, name, "raw"), t0)
