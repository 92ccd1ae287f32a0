"""The validate stage: a streaming, two-pass pipeline with bounded memory and nothing lost.

    python -m ech0.data validate --input data/raw/crypto.jsonl --stage clean --max-tokens 2048 --min-quality 0.25
    python -m ech0.data validate --input crypto --stage processed --dedupe --fail-on-secrets

    from ech0.data.stage import ValidateOptions, run_validate
    result = run_validate(ValidateOptions(input="x.jsonl", stage="clean"))   # -> dict (the manifest)

Pass 1 streams the input in batches (optionally across worker processes): parse strictly, check the
schema, clean text, redact secrets and PII, filter on quality and token count, and compute the
exact-duplicate key and MinHash signature of every surviving row. Each row's outcome (the redacted
canonical row, or a redacted reject record) goes to a spill file beside the output, in input order;
in memory stay only ~30 bytes of per-row bookkeeping plus a 256-byte signature. Between the passes,
exact and near-duplicate clusters are resolved keeping the highest-quality copy (ties: the earliest).
Pass 2 copies the spill into ``<name>.jsonl`` and ``<name>.rejects.jsonl`` (atomic writes), and the
manifest is written last. ``read == kept + rejected`` is asserted and printed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ech0 import paths
from ech0.data import manifest as mf
from ech0.data.reader import DEFAULT_MAX_LINE_BYTES, Rec, iter_records, sniff
from ech0.errors import UserError
from ech0.io import atomic_open

K_KEEP, K_REJECT, K_DUP, K_NEAR = 0, 1, 2, 3
TOKEN_BOUND_SLACK = 32  # room for BOS/EOS/separator/prefix-space tokens on top of one token per byte
TOKEN_SAMPLE_PER_BATCH = 8  # rows per batch tokenized anyway, for the manifest's token statistics
REJECT_TEXT_MAX = 1 << 20


class SecretsFound(UserError):
    """``--fail-on-secrets`` and the input holds secrets (exit code 3)."""

    exit_code = 3


@dataclass
class ValidateOptions:
    input: str
    stage: str = "clean"
    name: str | None = None
    max_tokens: int | None = None
    min_quality: float | None = None
    dedupe: bool = False
    near_dedupe: bool = True  # with --dedupe; --no-near-dedupe keeps only exact dedupe
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    fail_on_secrets: bool = False
    redact_secrets: bool = True
    redact_pii: bool = True
    tokenizer: str | None = None
    exact_tokens: bool = False  # tokenize every row (exact statistics) instead of the byte bound
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    workers: int | None = None
    batch_size: int = 512
    progress: bool | None = None  # None: only on a TTY
    quiet: bool = False
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- workers

_W: dict = {}


def _init_worker(opts: ValidateOptions, tok_name: str | None) -> None:
    from ech0.data.dedupe import MinHasher
    from ech0.data.redact import Redactor

    _W["opts"] = opts
    _W["redactor"] = Redactor(secrets=opts.redact_secrets, pii=opts.redact_pii)
    _W["minhash"] = MinHasher(opts.num_perm, opts.ngram) if opts.dedupe and opts.near_dedupe else None
    if tok_name is not None and "tokens" not in _W:
        from ech0.data.tokens import TokenCounter

        _W["tokens"] = TokenCounter(tok_name)


def _bump(d: dict, k: str, n: int = 1) -> None:
    d[k] = d.get(k, 0) + n


def _reject_line(rec: Rec, item, reason: str, detail: str | None, redactor, norm: dict, *, row=None,
                 text: str | None = None) -> bytes:
    from ech0.data.schema import clean_value

    out = {"line": rec.line}
    if rec.offset is not None and rec.offset >= 0:
        out["offset"] = rec.offset
    if item is not None:
        out["item"] = item
    out["reason"] = reason
    if detail:
        out["detail"] = redactor(detail)
    if row is not None:
        out["row"] = clean_value(row, norm, redactor)
    elif text is not None:
        if len(text) > REJECT_TEXT_MAX:
            out["text_truncated_from"] = len(text)
            text = text[:REJECT_TEXT_MAX]
        out["text"] = clean_value(text, norm, redactor)
    return json.dumps(out, ensure_ascii=False).encode("utf-8", "replace")


def process_batch(recs: list[Rec]) -> dict:
    """Pass 1 for one batch (runs in a worker process or inline). Pure function of its input."""
    from ech0.data.dedupe import exact_key, normalize, to_bbit
    from ech0.data.schema import check_row, clean_text, clean_value, parse_values

    opts: ValidateOptions = _W["opts"]
    red = _W["redactor"]
    red.counts = {}
    reasons: dict = {}
    norm: dict = {}
    lines: list[bytes] = []
    kinds: list[int] = []
    linenos: list[int] = []
    secret_rows: list = []
    cand_rows: list[dict] = []  # kept candidates, in order
    cand_pos: list[int] = []  # their index in ``lines``
    quality: list[float] = []
    split_lines = 0
    fix = red

    for rec in recs:
        red.row_secrets = []
        if rec.error is not None:
            lines.append(_reject_line(rec, rec.item, rec.error, rec.detail, red, norm, text=rec.preview))
            kinds.append(K_REJECT)
            linenos.append(rec.line)
            _bump(reasons, rec.error)
            quality.append(-1.0)
            if red.row_secrets:
                secret_rows.append((rec.line, sorted(set(red.row_secrets))))
            continue
        values, problem = parse_values(rec.text)
        if problem is not None:
            reason, detail = problem
            if reason == "invalid_json" and rec.last:
                reason, detail = "truncated_line", f"last line has no newline and does not parse ({detail})"
            lines.append(_reject_line(rec, rec.item, reason, detail, red, norm, text=rec.text))
            kinds.append(K_REJECT)
            linenos.append(rec.line)
            _bump(reasons, reason)
            quality.append(-1.0)
            if red.row_secrets:
                secret_rows.append((rec.line, sorted(set(red.row_secrets))))
            continue
        multi = len(values) > 1
        if multi:
            split_lines += 1
        for k, v in enumerate(values):
            red.row_secrets = []
            item = k if multi else rec.item
            row, reason, detail = check_row(v)
            if row is not None:
                p = fix(clean_text(row["prompt"], norm))
                c = fix(clean_text(row["completion"], norm))
                if not p.strip() or not c.strip():
                    row, reason, detail = None, "empty_field", "prompt or completion is empty after removing control characters"
                else:
                    row["prompt"] = p
                    row["completion"] = c
                    row["tags"] = [fix(clean_text(t, norm)) for t in row["tags"]]
                    if row["metadata"]:
                        row["metadata"] = clean_value(row["metadata"], norm, fix)
                    q = row["quality_score"]
                    if opts.min_quality is not None and q is not None and q < opts.min_quality:
                        reason, detail = "low_quality", f"quality_score {q} < --min-quality {opts.min_quality}"
            if reason is not None:
                lines.append(_reject_line(rec, item, reason, detail, red, norm, row=v))
                kinds.append(K_REJECT)
                quality.append(-1.0)
                _bump(reasons, reason)
            else:
                cand_pos.append(len(lines))
                cand_rows.append(row)
                lines.append(b"")
                kinds.append(K_KEEP)
                q = row["quality_score"]
                quality.append(-1.0 if q is None else q)
            linenos.append(rec.line)
            if red.row_secrets:
                secret_rows.append((rec.line, sorted(set(red.row_secrets))))

    ntok = None
    tok_info = {"measured": 0, "skipped_by_bound": 0, "bound_violations": 0, "bound_max": 0}
    if cand_rows and "tokens" in _W:
        # A token always covers at least one byte of text, so a row whose UTF-8 length (plus room for
        # special tokens) is within --max-tokens cannot be over it: only rows that might be over the
        # limit, and a small sample for the statistics, go through the (slow) tokenizer.
        lens = [(len(r["prompt"]) if r["prompt"].isascii() else len(r["prompt"].encode("utf-8")))
                + (len(r["completion"]) if r["completion"].isascii() else len(r["completion"].encode("utf-8")))
                + TOKEN_BOUND_SLACK for r in cand_rows]
        if opts.exact_tokens or opts.max_tokens is None or not _W.get("bound_ok", True):
            need = list(range(len(cand_rows)))
        else:
            need = [j for j, b in enumerate(lens) if b > opts.max_tokens]
            sample = [j for j in range(0, len(cand_rows), max(1, len(cand_rows) // TOKEN_SAMPLE_PER_BATCH))
                      if lens[j] <= opts.max_tokens]
            need = sorted(set(need) | set(sample[:TOKEN_SAMPLE_PER_BATCH]))
        counted = _W["tokens"].count([cand_rows[j]["prompt"] for j in need], [cand_rows[j]["completion"] for j in need])
        exact = dict(zip(need, counted.tolist()))
        tok_info["measured"] = len(need)
        tok_info["skipped_by_bound"] = len(cand_rows) - len(need)
        tok_info["bound_max"] = max((b for j, b in enumerate(lens) if j not in exact), default=0)
        tok_info["bound_violations"] = sum(1 for j, n in exact.items() if n > lens[j])
        if tok_info["bound_violations"]:
            _W["bound_ok"] = False  # this tokenizer breaks the byte bound: count every row from now on
        ntok = np.array(counted, np.int32)
        if opts.max_tokens is not None:
            over = sorted((j for j, n in exact.items() if n > opts.max_tokens), reverse=True)
            if tok_info["bound_violations"]:
                # rows skipped in this batch are re-checked exactly
                rest = [j for j in range(len(cand_rows)) if j not in exact]
                more = _W["tokens"].count([cand_rows[j]["prompt"] for j in rest], [cand_rows[j]["completion"] for j in rest])
                over = sorted(set(over) | {j for j, n in zip(rest, more.tolist()) if n > opts.max_tokens}, reverse=True)
                exact.update(zip(rest, more.tolist()))
                tok_info["measured"] += len(rest)
                tok_info["skipped_by_bound"] = 0
                ntok = np.array(list(exact.values()), np.int32)
            for j in over:
                pos = cand_pos[j]
                r = cand_rows[j]
                line = linenos[pos]
                lines[pos] = json.dumps({"line": line, "reason": "too_many_tokens",
                                         "detail": f"{exact[j]} tokens > --max-tokens {opts.max_tokens}",
                                         "row": r}, ensure_ascii=False).encode("utf-8", "replace")
                kinds[pos] = K_REJECT
                quality[pos] = -1.0
                _bump(reasons, "too_many_tokens")
                del cand_pos[j], cand_rows[j]
    keys = np.zeros(len(cand_rows), np.int64)
    sig16 = None
    if cand_rows:
        norms = [normalize(r["prompt"], r["completion"]) for r in cand_rows]
        if opts.dedupe:
            keys = np.fromiter((exact_key(t) for t in norms), dtype=np.int64, count=len(norms))
            mh = _W.get("minhash")
            if mh is not None:
                sig16 = to_bbit(mh.signatures(norms))
        for pos, r in zip(cand_pos, cand_rows):
            lines[pos] = json.dumps(r, ensure_ascii=False).encode("utf-8")
    return {
        "lines": lines,
        "kinds": np.array(kinds, np.int8),
        "linenos": np.array(linenos, np.int64),
        "quality": np.array(quality, np.float32),
        "keys": keys,
        "sig16": sig16,
        "ntok": ntok,
        "tok_info": tok_info,
        "reasons": reasons,
        "redactions": dict(red.counts),
        "normalizations": norm,
        "secret_rows": secret_rows,
        "split_lines": split_lines,
    }


# ----------------------------------------------------------------------------------------- helpers


def resolve_input(inp: str, stage: str) -> Path:
    p = Path(inp).expanduser()
    if p.exists():
        return p.resolve()
    if "/" not in inp and not p.suffix:
        order = {"clean": ["raw"], "processed": ["clean", "raw"], "raw": []}[stage]
        for s in order:
            q = paths.data_dir(s) / f"{inp}.jsonl"
            if q.is_file():
                return q.resolve()
    raise UserError(f"{inp}: not found (pass a file, or a dataset name from `ech0 data import`)")


def default_name(path: Path) -> str:
    name = path.name
    for suf in (".jsonl", ".json", ".ndjson", ".jsonlines", ".txt"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    for st in (".raw", ".clean", ".processed", ".rejects"):
        if name.endswith(st):
            name = name[: -len(st)]
    return name or "dataset"


def check_name(name: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (max 100)")
    return name


def make_progress(total: int, desc: str, enabled: bool | None):
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=disable, leave=False, mininterval=0.5)


def token_stats(chunks: list[np.ndarray]) -> dict | None:
    if not chunks:
        return None
    a = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if a.size == 0:
        return None
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": int(np.percentile(a, 50)),
            "p95": int(np.percentile(a, 95)), "max": int(a.max()), "total": int(a.sum())}


# ------------------------------------------------------------------------------------------- stage


def run_validate(opts: ValidateOptions) -> dict:
    t0 = time.time()
    if opts.stage not in ("clean", "processed"):
        raise UserError(f"--stage {opts.stage}: expected clean or processed")
    if opts.min_quality is not None and not 0.0 <= opts.min_quality <= 1.0:
        raise UserError(f"--min-quality {opts.min_quality}: expected a number in [0, 1]")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise UserError(f"--max-tokens {opts.max_tokens}: expected a positive integer")
    if not 0.0 < opts.threshold <= 1.0:
        raise UserError(f"--threshold {opts.threshold}: expected a number in (0, 1]")
    src = resolve_input(opts.input, opts.stage)
    name = check_name(opts.name or default_name(src))
    out_path = paths.data_dir(opts.stage) / f"{name}.jsonl"
    rej_path = paths.data_dir(opts.stage) / f"{name}.rejects.jsonl"
    man_path = mf.manifest_path(name, opts.stage)
    fmt = sniff(src, opts.max_line_bytes)
    in_sha = mf.sha256_file(src)
    parent = mf.find_parent(src)

    tok_name = None
    if opts.max_tokens is not None or opts.tokenizer:
        from ech0.data.tokens import default_tokenizer_path

        tok_name = opts.tokenizer or default_tokenizer_path()
    workers = opts.workers
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if fmt.size > (8 << 20) else 1
    workers = max(1, workers)
    if workers > 1:
        from ech0.data.tokens import configure_threads

        configure_threads(workers)
    _init_worker(opts, tok_name)  # inline state (also inherited by forked workers)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    spill_path = out_path.parent / f".{name}.{os.getpid()}.spill"
    kinds_l, lines_l, qual_l, keys_l, ntok_l, offs_l = [], [], [], [], [], []
    from ech0.data.dedupe import SigStore

    store = SigStore(opts.num_perm)
    reasons: dict = {}
    redactions: dict = {}
    normalizations: dict = dict(fmt.notes)
    secret_rows: list = []
    split_lines = 0
    tok_info: dict = {}

    spill_pos = 0

    def merge(res: dict) -> None:
        nonlocal split_lines, spill_pos
        offs = np.empty(len(res["lines"]), np.int64)
        for k, ln in enumerate(res["lines"]):
            offs[k] = spill_pos
            spill.write(ln)
            spill.write(b"\n")
            spill_pos += len(ln) + 1
        offs_l.append(offs)
        kinds_l.append(res["kinds"])
        lines_l.append(res["linenos"])
        qual_l.append(res["quality"])
        keys_l.append(res["keys"])
        if res["sig16"] is not None:
            store.append(res["sig16"])
        if res["ntok"] is not None:
            ntok_l.append(res["ntok"])
        for k, v in res["tok_info"].items():
            tok_info[k] = max(tok_info.get(k, 0), v) if k == "bound_max" else tok_info.get(k, 0) + v
        for d, src_d in ((reasons, res["reasons"]), (redactions, res["redactions"]),
                         (normalizations, res["normalizations"])):
            for k, v in src_d.items():
                d[k] = d.get(k, 0) + v
        secret_rows.extend(res["secret_rows"])
        split_lines += res["split_lines"]

    bar = make_progress(fmt.size, f"validate {name}", opts.progress)
    pool = None
    try:
        with open(spill_path, "wb", buffering=1 << 20) as spill:
            def batches():
                batch = []
                for rec in iter_records(fmt, opts.max_line_bytes, progress=bar.update):
                    batch.append(rec)
                    if len(batch) >= opts.batch_size:
                        yield batch
                        batch = []
                if batch:
                    yield batch

            if workers == 1:
                for b in batches():
                    merge(process_batch(b))
            else:
                import multiprocessing as mp

                ctx = mp.get_context("fork")
                pool = ctx.Pool(workers, initializer=_init_worker, initargs=(opts, tok_name))
                inflight: deque = deque()
                for b in batches():
                    inflight.append(pool.apply_async(process_batch, (b,)))
                    while len(inflight) >= 2 * workers:
                        merge(inflight.popleft().get())
                while inflight:
                    merge(inflight.popleft().get())
                pool.close()
                pool.join()
                pool = None
        bar.close()
        if fmt.notes.get("unclosed_array"):
            normalizations["unclosed_array"] = fmt.notes["unclosed_array"]
        for k in ("blank_lines", "bom", "crlf"):
            if k in fmt.notes:
                normalizations[k] = fmt.notes[k]
        if split_lines:
            normalizations["lines_with_several_objects"] = split_lines

        kinds = np.concatenate(kinds_l) if kinds_l else np.zeros(0, np.int8)
        linenos = np.concatenate(lines_l) if lines_l else np.zeros(0, np.int64)
        quality = np.concatenate(qual_l) if qual_l else np.zeros(0, np.float32)
        keys = np.concatenate(keys_l) if keys_l else np.zeros(0, np.int64)
        n_read = int(kinds.size)
        if n_read == 0:
            raise UserError(f"{src}: no rows (only blank lines or an empty array); nothing to validate")

        if opts.fail_on_secrets and secret_rows:
            by_type: dict = {}
            for _, types in secret_rows:
                for t in types:
                    by_type[t] = by_type.get(t, 0) + 1
            shown = ", ".join(f"line {ln} ({'/'.join(t)})" for ln, t in secret_rows[:5])
            more = f" and {len(secret_rows) - 5} more" if len(secret_rows) > 5 else ""
            raise SecretsFound(f"{src}: secrets in {len(secret_rows)} rows: {shown}{more}; types: "
                               + ", ".join(f"{k} x{v}" for k, v in sorted(by_type.items()))
                               + "; remove them, or drop --fail-on-secrets to write redacted output")

        dup_of = np.full(n_read, -1, np.int64)
        similarity = np.zeros(n_read, np.float32)
        dedupe_stats = None
        if opts.dedupe:
            offsets = np.concatenate(offs_l)
            dedupe_stats = _dedupe(kinds, quality, keys, store, opts, dup_of, similarity,
                                   _spill_reader(spill_path, offsets))

        n_rows_written = {"kept": 0, "rejected": 0}
        with atomic_open(out_path, "wb") as out, atomic_open(rej_path, "wb") as rej, open(spill_path, "rb") as sp:
            for idx, raw in enumerate(sp):
                k = kinds[idx]
                if k == K_KEEP:
                    out.write(raw)
                    n_rows_written["kept"] += 1
                elif k == K_REJECT:
                    rej.write(raw)
                    n_rows_written["rejected"] += 1
                else:
                    reason = "duplicate" if k == K_DUP else "near_duplicate"
                    head = {"line": int(linenos[idx]), "reason": reason,
                            "duplicate_of_line": int(linenos[dup_of[idx]])}
                    if k == K_NEAR:
                        head["similarity"] = round(float(similarity[idx]), 3)
                    rej.write(json.dumps(head)[:-1].encode() + b', "row": ' + raw.rstrip(b"\n") + b"}\n")
                    n_rows_written["rejected"] += 1
            if idx + 1 != n_read:
                raise AssertionError(f"spill has {idx + 1} rows, expected {n_read}")
            kept = int((kinds == K_KEEP).sum())
            rejected = n_read - kept
            for k, reason in ((K_DUP, "duplicate"), (K_NEAR, "near_duplicate")):
                c = int((kinds == k).sum())
                if c:
                    reasons[reason] = c
            # every row accounted for: read = kept + rejected, and the reasons add up
            assert kept == n_rows_written["kept"] and rejected == n_rows_written["rejected"], n_rows_written
            assert kept + rejected == n_read
            assert sum(reasons.values()) == rejected, (reasons, rejected)
    except BaseException:
        if pool is not None:
            pool.terminate()
        bar.close()
        raise
    finally:
        try:
            os.unlink(spill_path)
        except FileNotFoundError:
            pass

    man = mf.base(name, opts.stage, "validate", _options(opts, tok_name, workers))
    mf.record_io(man, t0, src, in_sha, fmt.mode, n_read, out_path, kept, rej_path, rejected)
    man["reject_reasons"] = dict(sorted(reasons.items()))
    man["redactions"] = dict(sorted(redactions.items()))
    man["rows_with_secrets"] = len(secret_rows)
    man["normalizations"] = dict(sorted(normalizations.items()))
    man["dedupe"] = dedupe_stats
    man["tokens"] = token_stats(ntok_l)
    if man["tokens"] is not None:
        man["tokens"]["tokenizer"] = tok_name
        man["tokens"]["rows_measured"] = tok_info.get("measured", 0)
        man["tokens"]["rows_within_byte_bound"] = tok_info.get("skipped_by_bound", 0)
        man["tokens"]["byte_bound_max"] = tok_info.get("bound_max", 0)
        man["tokens"]["byte_bound_violations"] = tok_info.get("bound_violations", 0)
        man["tokens"]["note"] = ("statistics over measured rows (all rows that could exceed --max-tokens, plus a "
                                 "sample); the others are within the bound utf8_bytes + "
                                 f"{TOKEN_BOUND_SLACK} <= --max-tokens")
    man["parent"] = parent
    man["finished_at"] = mf.now()
    man["duration_s"] = round(time.time() - t0, 3)
    mf.write(man_path, man)
    man["_manifest_path"] = str(man_path)
    return man


def _options(opts: ValidateOptions, tok_name, workers) -> dict:
    d = asdict(opts)
    for k in ("progress", "quiet", "extra", "workers", "batch_size"):
        d.pop(k, None)
    d["tokenizer"] = tok_name
    return d


def _spill_reader(path: Path, offsets: np.ndarray):
    """Row index -> normalised text, read back from the spill (for exact Jaccard checks)."""
    from ech0.data.dedupe import normalize

    def get(idx: int) -> str:
        with open(path, "rb") as f:
            f.seek(int(offsets[idx]))
            r = json.loads(f.readline())
        return normalize(r["prompt"], r["completion"])

    return get


def _dedupe(kinds, quality, keys, store, opts, dup_of, similarity, text_of=None) -> dict:
    """Mark duplicates in ``kinds`` (K_DUP / K_NEAR), keeping the highest quality_score per cluster."""
    from ech0.data.dedupe import ROWS_PER_BAND, clusters, estimate_jaccard, exact_jaccard, near_duplicate_pairs

    cand = np.flatnonzero(kinds == K_KEEP)  # rows with keys/signatures, in order
    stats = {"exact": {"key": "blake2b-64 of normalised prompt+completion (NFKC, casefold, zero-width removed, "
                              "whitespace collapsed)"}}
    if cand.size == 0:
        stats["exact"].update(rows_removed=0, clusters=0)
        return stats
    q = quality[cand]
    # exact: sort by key, then best quality, then earliest; the first of each key is kept
    order = np.lexsort((cand, -q, keys))
    k_sorted = keys[order]
    first = np.ones(order.size, bool)
    first[1:] = k_sorted[1:] != k_sorted[:-1]
    head_pos = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    dups = order[~first]
    reps = order[head_pos[~first]]
    kinds[cand[dups]] = K_DUP
    dup_of[cand[dups]] = cand[reps]
    similarity[cand[dups]] = 1.0
    n_groups = int(np.unique(k_sorted[~first]).size) if dups.size else 0
    stats["exact"].update(rows_removed=int(dups.size), clusters=n_groups)
    if not (opts.near_dedupe and store.n):
        return stats
    assert store.n == cand.size, (store.n, cand.size)
    active = np.ones(cand.size, bool)
    active[dups] = False
    bands = max(1, opts.num_perm // ROWS_PER_BAND)
    checked = [0]

    def exact(a: np.ndarray, b: np.ndarray) -> list[float]:
        checked[0] += len(a)
        return [exact_jaccard(text_of(int(cand[x])), text_of(int(cand[y])), opts.ngram)
                for x, y in zip(a.tolist(), b.tolist())]

    i, j, est, n_cand = near_duplicate_pairs(store, active, opts.threshold, bands, ROWS_PER_BAND,
                                             exact=exact if text_of is not None else None)
    roots = clusters(cand.size, i, j)
    near_removed = 0
    n_clusters = 0
    largest = 1
    if i.size:
        idx = np.flatnonzero(active)
        r = roots[idx]
        # the representative of each cluster: best quality, then earliest
        o = np.lexsort((idx, -q[idx], r))
        r_sorted = r[o]
        head = np.ones(o.size, bool)
        head[1:] = r_sorted[1:] != r_sorted[:-1]
        hp = np.maximum.accumulate(np.where(head, np.arange(o.size), 0))
        rep = idx[o[hp]]
        member = idx[o]
        removed = member != rep
        rm, rp = member[removed], rep[removed]
        kinds[cand[rm]] = K_NEAR
        dup_of[cand[rm]] = cand[rp]
        a, b = store.rows(rm), store.rows(rp)
        similarity[cand[rm]] = estimate_jaccard((a == b).mean(axis=1))
        near_removed = int(rm.size)
        sizes = np.bincount(np.searchsorted(np.unique(rp), rp))
        n_clusters = int(np.unique(rp).size)
        largest = int(sizes.max()) + 1 if sizes.size else 1
    stats["near"] = {
        "method": "MinHash LSH (b-bit 16 signatures); candidate pairs verified on the signature estimate, "
                  "and on exact shingle Jaccard when the estimate is within [t-0.10, t+0.05)",
        "exact_checks": int(checked[0]),
        "shingle": f"{opts.ngram}-word", "num_perm": opts.num_perm, "threshold": opts.threshold,
        "bands": bands, "rows_per_band": ROWS_PER_BAND, "candidate_pairs": int(n_cand), "verified_pairs": int(i.size),
        "rows_removed": near_removed, "clusters": n_clusters, "largest_cluster": largest,
        "signature_mb": round(store.nbytes() / 2**20, 1),
    }
    return stats
