"""The validate stage: a streaming, two-pass pipeline with bounded memory and nothing lost.

    python -m ech0.data validate --input data/raw/crypto.jsonl --stage clean --max-tokens 2048 --min-quality 0.25
    python -m ech0.data validate --input crypto --stage processed --dedupe --fail-on-secrets

    from ech0.data.stage import ValidateOptions, run_validate
    man = run_validate(ctx, ValidateOptions(input="x.jsonl", stage="clean"))   # -> dict (the manifest)

The passes, in order, each a named piece of this module:

1. :class:`Batch` (pass 1, per batch of records, in worker processes or inline): ``parse`` (strict
   JSON, schema of pairs and conversations, text cleaning, redaction of secrets and PII in every turn,
   quality filter), ``render`` (every row through the model's chat template: ``template_error``),
   ``filter_tokens`` (``--max-tokens``, the rendered conversation measured as training measures it),
   ``sign`` (exact-duplicate key and MinHash signature of every surviving row's whole conversation).
2. :class:`Spill`: each batch's outcomes (the redacted canonical row, or a redacted reject record)
   are appended to a spill file beside the output, in input order; in memory stay ~30 bytes of
   per-row bookkeeping plus a 256-byte signature.
3. :func:`fail_on_secrets`, then :func:`dedupe` (exact, then near duplicates) decide on those compact
   arrays, keeping each cluster's highest-quality row (ties: the earliest).
4. :func:`write_outputs` (pass 2) copies the spill into ``<name>.jsonl`` and ``<name>.rejects.jsonl``
   (atomic writes); :func:`account` asserts ``read == kept + rejected``; the manifest is written last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ech0.config import ModelConfig
from ech0.context import Context
from ech0.data import manifest as mf
from ech0.data.reader import DEFAULT_MAX_LINE_BYTES, Rec, iter_records, normalizations, sniff
from ech0.data.schema import MAX_TURNS
from ech0.errors import UserError
from ech0.io import atomic_open

K_KEEP, K_REJECT, K_DUP, K_NEAR = 0, 1, 2, 3
TOKEN_BOUND_SLACK = 32  # room for prefix-space tokens on top of one token per byte of the rendered text
TOKEN_SAMPLE_PER_BATCH = 8  # rows per batch tokenized anyway, for the manifest's token statistics
BIG_INPUT = 8 << 20  # inputs over this use one worker per core (up to MAX_AUTO_WORKERS)
MAX_AUTO_WORKERS = 4


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
    max_turns: int = MAX_TURNS  # conversations with more turns are rejected (too_many_turns)
    dedupe: bool = False
    near_dedupe: bool = True  # with --dedupe; --no-near-dedupe keeps only exact dedupe
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    fail_on_secrets: bool = False
    redact_secrets: bool = True
    redact_pii: bool = True
    tokenizer: str | None = None  # a tokenizer folder or hub id; None: the model's
    model: str = ModelConfig.name_or_path  # whose chat template renders rows, whose tokenizer counts (local:* is built)
    model_config: dict = field(default_factory=dict)  # the rest of conf/model/*.yaml: recipe, gguf_file, packaged_gguf
    chat_template: str | None = None  # a Jinja template replacing the model's own (training's data.chat_template)
    exact_tokens: bool = False  # tokenize every row (exact statistics) instead of the byte bound
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    workers: int | None = None
    batch_size: int = 512
    progress: bool | None = None  # None: only on a TTY
    quiet: bool = False
    extra: dict = field(default_factory=dict)


def check_options(opts: ValidateOptions) -> None:
    """Refuse impossible option values before anything is read (one line each)."""
    if opts.stage not in ("clean", "processed"):
        raise UserError(f"--stage {opts.stage}: expected clean or processed")
    if opts.min_quality is not None and not 0.0 <= opts.min_quality <= 1.0:
        raise UserError(f"--min-quality {opts.min_quality}: expected a number in [0, 1]")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise UserError(f"--max-tokens {opts.max_tokens}: expected a positive integer")
    if opts.max_turns < 1:
        raise UserError(f"max_turns={opts.max_turns}: expected a positive integer")
    if not 0.0 < opts.threshold <= 1.0:
        raise UserError(f"--threshold {opts.threshold}: expected a number in (0, 1]")
    if opts.workers is not None and opts.workers < 1:
        raise UserError(f"--workers {opts.workers}: expected 1 or more")


# ----------------------------------------------------------------------------------- pass 1 (per batch)


@dataclass
class Worker:
    """What pass 1 needs in a process: built once inline, inherited by forked worker processes."""

    opts: ValidateOptions
    redactor: object  # ech0.data.redact.Redactor
    minhash: object | None  # ech0.data.dedupe.MinHasher, with near dedupe
    tokens: object | None  # ech0.data.tokens.ChatTokens, when a tokenizer is configured
    bound_ok: bool = True  # False once the tokenizer broke the byte bound: every row is measured from then on

    @classmethod
    def build(cls, opts: ValidateOptions, tok_name: str | None) -> "Worker":
        from ech0.data.dedupe import MinHasher
        from ech0.data.redact import Redactor

        tokens = None
        if tok_name is not None:
            from ech0.data.tokens import ChatTokens

            tokens = ChatTokens(tok_name, opts.chat_template)
        return cls(opts, Redactor(secrets=opts.redact_secrets, pii=opts.redact_pii),
                   MinHasher(opts.num_perm, opts.ngram) if opts.dedupe and opts.near_dedupe else None, tokens)


_worker: Worker | None = None  # this process's pass-1 state (set by init_worker)


def init_worker(opts: ValidateOptions, tok_name: str | None) -> Worker:
    global _worker
    _worker = Worker.build(opts, tok_name)
    return _worker


def process_batch(recs: list[Rec]) -> dict:
    """Pass 1 for one batch with this process's :class:`Worker` (runs in a worker process or inline)."""
    return Batch(_worker).run(recs)


def _bump(d: dict, k: str, n: int = 1) -> None:
    d[k] = d.get(k, 0) + n


def _dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")


def clean_row(row: dict, norm: dict, fix) -> tuple[dict | None, str | None, str | None]:
    """Clean and redact every text field of a schema-checked row (every turn of a conversation):
    ``(row, None, None)``, or ``(None, reason, detail)`` when a prompt, completion or turn is empty
    afterwards (``empty_field`` / ``empty_content``)."""
    from ech0.data.schema import clean_row_text, emptied

    out = clean_row_text(row, norm, fix)
    problem = emptied(out)
    return (out, None, None) if problem is None else (None, *problem)


def quality_problem(row: dict, min_quality: float | None) -> tuple[str, str] | None:
    """``("low_quality", detail)`` for a scored row below ``min_quality`` (unscored rows pass)."""
    q = row["quality_score"]
    if min_quality is not None and q is not None and q < min_quality:
        return "low_quality", f"quality_score {q} < --min-quality {min_quality}"
    return None


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def byte_bounds(texts: list[str]) -> list[int]:
    """An upper bound of each rendered row's token count: every token covers at least one byte of text."""
    return [_utf8_len(t) + TOKEN_BOUND_SLACK for t in texts]


def rows_to_measure(bounds: list[int], max_tokens: int | None, every: bool) -> list[int]:
    """Rows that go through the (slow) tokenizer: those whose bound exceeds ``max_tokens`` (all of
    them without a limit: none), plus a small sample for the statistics; or all of them (``every``)."""
    if every:
        return list(range(len(bounds)))
    limit = float("inf") if max_tokens is None else max_tokens
    over = [j for j, b in enumerate(bounds) if b > limit]
    step = max(1, len(bounds) // TOKEN_SAMPLE_PER_BATCH)
    sample = [j for j in range(0, len(bounds), step) if bounds[j] <= limit][:TOKEN_SAMPLE_PER_BATCH]
    return sorted(set(over) | set(sample))


class Cand(NamedTuple):
    """A row that passed so far: its position in the batch's outcomes, where it came from, the row."""

    pos: int
    rec: Rec
    item: int | None
    row: dict


class Batch:
    """Pass 1 over one batch of records: :meth:`parse`, :meth:`filter_tokens`, :meth:`sign`, then
    :meth:`result`, the outcome of every row in input order (``read == kept + rejected`` per batch)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.opts = worker.opts
        self.red = worker.redactor
        self.red.counts = {}
        self.reasons: dict = {}
        self.norm: dict = {}
        self.lines: list[bytes] = []  # one spill line per row: the row (filled in by sign) or its reject record
        self.kinds: list[int] = []
        self.linenos: list[int] = []
        self.quality: list[float] = []
        self.cands: list[Cand] = []
        self.texts: list[str] = []  # each candidate rendered through the chat template (with a tokenizer)
        self.secret_rows: list = []  # (line, [secret rules]) for --fail-on-secrets
        self.split_lines = 0
        self.ntok = None
        self.tok_info = {"measured": 0, "skipped_by_bound": 0, "bound_violations": 0, "bound_max": 0}
        self.keys = np.zeros(0, np.int64)
        self.sig16 = None

    def run(self, recs: list[Rec]) -> dict:
        self.parse(recs)
        if self.w.tokens is not None:
            self.render()
            self.filter_tokens()
        self.sign()
        return self.result()

    # ---- outcomes
    def _append(self, line: bytes, kind: int, lineno: int, quality: float) -> None:
        self.lines.append(line)
        self.kinds.append(kind)
        self.linenos.append(lineno)
        self.quality.append(quality)

    def reject(self, rec: Rec, item, reason: str, detail: str | None, *, row=None, text=None) -> None:
        from ech0.data.schema import reject_record

        self._append(_dumps(reject_record(rec, item, reason, detail, self.red, self.norm, row=row, text=text)),
                     K_REJECT, rec.line, -1.0)
        _bump(self.reasons, reason)

    def keep(self, rec: Rec, item, row: dict) -> None:
        self.cands.append(Cand(len(self.lines), rec, item, row))
        q = row["quality_score"]
        self._append(b"", K_KEEP, rec.line, -1.0 if q is None else q)

    def drop(self, j: int, reason: str, detail: str) -> None:
        """Candidate ``j`` (already cleaned and redacted) becomes a reject."""
        from ech0.data.schema import reject_record

        c = self.cands.pop(j)
        if self.texts:
            del self.texts[j]
        self.lines[c.pos] = _dumps(reject_record(c.rec, c.item, reason, detail, self.red, self.norm, row=c.row))
        self.kinds[c.pos] = K_REJECT
        self.quality[c.pos] = -1.0
        _bump(self.reasons, reason)

    def _secrets_seen(self, rec: Rec) -> None:
        if self.red.row_secrets:
            self.secret_rows.append((rec.line, sorted(set(self.red.row_secrets))))
        self.red.row_secrets = []

    # ---- the passes
    def parse(self, recs: list[Rec]) -> None:
        """Strict JSON -> schema -> clean + redact -> quality filter: each value kept or rejected."""
        from ech0.data.schema import parse_record

        self.red.row_secrets = []
        for rec in recs:
            values, problem = parse_record(rec)
            if problem is not None:
                reason, detail, text = problem
                self.reject(rec, rec.item, reason, detail, text=text)
                self._secrets_seen(rec)
                continue
            self.split_lines += len(values) > 1
            for k, value in enumerate(values):
                self.check(rec, k if len(values) > 1 else rec.item, value)
                self._secrets_seen(rec)

    def check(self, rec: Rec, item, value) -> None:
        from ech0.data.schema import check_row

        row, reason, detail = check_row(value, self.opts.max_turns)
        if row is not None:
            row, reason, detail = clean_row(row, self.norm, self.red)
        if row is not None:
            reason, detail = quality_problem(row, self.opts.min_quality) or (None, None)
        if reason is None:
            self.keep(rec, item, row)
        else:
            self.reject(rec, item, reason, detail, row=value)

    def render(self) -> None:
        """Every candidate through the model's chat template (already redacted); a conversation the
        template cannot render becomes a ``template_error`` reject."""
        from ech0.chat import TemplateError, messages_of

        texts, failed = [], []
        for j, c in enumerate(self.cands):
            try:
                texts.append(self.w.tokens.render(messages_of(c.row)))
            except TemplateError as e:
                texts.append("")
                failed.append((j, str(e)))
        self.texts = texts
        for j, detail in reversed(failed):
            self.drop(j, "template_error", detail)

    def filter_tokens(self) -> None:
        """``--max-tokens`` on the rendered rows: those whose byte bound proves they fit skip the tokenizer
        (plus a sample measured for the statistics); if a measured row ever breaks its bound, every row is measured."""
        texts = self.texts
        if not texts:
            return
        w, limit = self.w, self.opts.max_tokens
        bounds = byte_bounds(texts)
        measured = self._measure(texts, rows_to_measure(bounds, limit, self.opts.exact_tokens or not w.bound_ok))
        violations = sum(1 for j, n in measured.items() if n > bounds[j])
        if violations:
            w.bound_ok = False  # this tokenizer breaks the byte bound: the rows skipped here are measured too
            measured.update(self._measure(texts, [j for j in range(len(texts)) if j not in measured]))
        self.ntok = np.fromiter(measured.values(), np.int32, count=len(measured))
        self.tok_info = {"measured": len(measured), "skipped_by_bound": len(texts) - len(measured),
                         "bound_violations": violations,
                         "bound_max": max((b for j, b in enumerate(bounds) if j not in measured), default=0)}
        if limit is not None:
            for j in sorted((j for j, n in measured.items() if n > limit), reverse=True):
                self.drop(j, "too_many_tokens", f"{measured[j]} tokens > --max-tokens {limit}")

    def _measure(self, texts: list[str], which: list[int]) -> dict[int, int]:
        if not which:
            return {}
        return dict(zip(which, self.w.tokens.count([texts[j] for j in which]).tolist()))

    def sign(self) -> None:
        """Exact-duplicate keys and b-bit MinHash signatures of the kept rows (with dedupe); serialise them."""
        from ech0.data.dedupe import exact_key, normalized, to_bbit

        self.keys = np.zeros(len(self.cands), np.int64)
        if self.cands and self.opts.dedupe:
            norms = [normalized(c.row) for c in self.cands]
            self.keys = np.fromiter((exact_key(t) for t in norms), dtype=np.int64, count=len(norms))
            if self.w.minhash is not None:
                self.sig16 = to_bbit(self.w.minhash.signatures(norms))
        for c in self.cands:
            self.lines[c.pos] = json.dumps(c.row, ensure_ascii=False).encode("utf-8")

    def result(self) -> dict:
        return {
            "lines": self.lines,
            "kinds": np.array(self.kinds, np.int8),
            "linenos": np.array(self.linenos, np.int64),
            "quality": np.array(self.quality, np.float32),
            "keys": self.keys,
            "sig16": self.sig16,
            "ntok": self.ntok,
            "tok_info": self.tok_info,
            "reasons": self.reasons,
            "redactions": dict(self.red.counts),
            "normalizations": self.norm,
            "secret_rows": self.secret_rows,
            "split_lines": self.split_lines,
        }


# ----------------------------------------------------------------------------------- the spill


def _merge_counts(into: dict, more: dict) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


class Spill:
    """Pass 1's outcomes in input order: one line per row in a file beside the output, compact
    per-row arrays (kind, line, quality, exact key, spill offset) and signatures in memory."""

    def __init__(self, path: Path, num_perm: int) -> None:
        from ech0.data.dedupe import SigStore

        self.path = path
        self._f = open(path, "wb", buffering=1 << 20)
        self._pos = 0
        self._parts: dict[str, list[np.ndarray]] = {k: [] for k in ("offsets", "kinds", "linenos", "quality", "keys")}
        self.ntok: list[np.ndarray] = []
        self.sigs = SigStore(num_perm)
        self.reasons: dict = {}
        self.redactions: dict = {}
        self.normalizations: dict = {}
        self.secret_rows: list = []
        self.split_lines = 0
        self.tok_info: dict = {}

    def add(self, res: dict) -> None:
        offs = np.empty(len(res["lines"]), np.int64)
        for k, ln in enumerate(res["lines"]):
            offs[k] = self._pos
            self._f.write(ln)
            self._f.write(b"\n")
            self._pos += len(ln) + 1
        for key, arr in (("offsets", offs), ("kinds", res["kinds"]), ("linenos", res["linenos"]),
                         ("quality", res["quality"]), ("keys", res["keys"])):
            self._parts[key].append(arr)
        if res["sig16"] is not None:
            self.sigs.append(res["sig16"])
        if res["ntok"] is not None:
            self.ntok.append(res["ntok"])
        for k, v in res["tok_info"].items():
            self.tok_info[k] = max(self.tok_info.get(k, 0), v) if k == "bound_max" else self.tok_info.get(k, 0) + v
        _merge_counts(self.reasons, res["reasons"])
        _merge_counts(self.redactions, res["redactions"])
        _merge_counts(self.normalizations, res["normalizations"])
        self.secret_rows.extend(res["secret_rows"])
        self.split_lines += res["split_lines"]

    def close(self) -> None:
        """Finish writing; the per-row arrays become attributes (``kinds``, ``linenos``, ...)."""
        self._f.close()
        dtypes = {"offsets": np.int64, "kinds": np.int8, "linenos": np.int64, "quality": np.float32, "keys": np.int64}
        for key, parts in self._parts.items():
            setattr(self, key, np.concatenate(parts) if parts else np.zeros(0, dtypes[key]))

    def remove(self) -> None:
        self._f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def normalised_text(self, idx: int) -> str:
        """Row ``idx``'s normalised text, read back from the spill (for exact Jaccard checks)."""
        from ech0.data.dedupe import normalized

        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[idx]))
            return normalized(json.loads(f.readline()))


def batches(fmt, opts: ValidateOptions, progress) -> Iterator[list[Rec]]:
    """The input's records in batches of ``opts.batch_size``."""
    batch: list[Rec] = []
    for rec in iter_records(fmt, opts.max_line_bytes, progress=progress):
        batch.append(rec)
        if len(batch) >= opts.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_into(spill: Spill, fmt, opts: ValidateOptions, workers: int, progress) -> None:
    """Pass 1 over the whole input, inline or across ``workers`` forked processes (at most 2 batches
    per worker in flight: memory stays bounded); outcomes reach the spill in input order."""
    if workers == 1:
        for b in batches(fmt, opts, progress):
            spill.add(process_batch(b))
        return
    import gc
    import multiprocessing as mp

    gc.freeze()  # the inherited heap (transformers, torch) is not scanned by the workers' gc: no copy-on-write
    pool = mp.get_context("fork").Pool(workers)  # workers inherit this process's Worker
    gc.unfreeze()
    try:
        inflight: deque = deque()
        for b in batches(fmt, opts, progress):
            inflight.append(pool.apply_async(process_batch, (b,)))
            while len(inflight) >= 2 * workers:
                spill.add(inflight.popleft().get())
        while inflight:
            spill.add(inflight.popleft().get())
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# ----------------------------------------------------------------------------------- between the passes


def fail_on_secrets(src: Path, secret_rows: list) -> None:
    """``SecretsFound`` (exit 3) naming up to 5 rows and the secret types with counts, never a value."""
    if not secret_rows:
        return
    by_type: dict = {}
    for _, types in secret_rows:
        for t in types:
            _bump(by_type, t)
    shown = ", ".join(f"line {ln} ({'/'.join(t)})" for ln, t in secret_rows[:5])
    more = f" and {len(secret_rows) - 5} more" if len(secret_rows) > 5 else ""
    raise SecretsFound(f"{src}: secrets in {len(secret_rows)} rows: {shown}{more}; types: "
                       + ", ".join(f"{k} x{v}" for k, v in sorted(by_type.items()))
                       + "; remove them, or drop --fail-on-secrets to write redacted output")


def representatives(groups: np.ndarray, quality: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``index`` grouped by ``groups``: (rows removed, the row each one keeps to), a group's kept
    row being its highest ``quality``, then its earliest."""
    o = np.lexsort((index, -quality, groups))
    g = groups[o]
    head = np.ones(o.size, bool)
    head[1:] = g[1:] != g[:-1]
    head_pos = np.maximum.accumulate(np.where(head, np.arange(o.size), 0))
    return index[o[~head]], index[o[head_pos[~head]]]


@dataclass
class Dedupe:
    """Dedupe decisions over pass 1's candidates: ``kinds`` marked K_DUP / K_NEAR, what each removed row
    duplicates (``dup_of``, a row index) and how similar it is; ``stats`` for the manifest."""

    kinds: np.ndarray
    dup_of: np.ndarray
    similarity: np.ndarray
    stats: dict


def dedupe(kinds: np.ndarray, quality: np.ndarray, keys: np.ndarray, store, opts: ValidateOptions,
           text_of=None) -> Dedupe:
    """Exact duplicates (same key), then near duplicates (MinHash LSH) among the rows left; ``kinds`` is
    updated in place. ``text_of(row index)`` gives normalised text for exact Jaccard checks."""
    d = Dedupe(kinds, np.full(kinds.size, -1, np.int64), np.zeros(kinds.size, np.float32),
               {"exact": {"key": "blake2b-64 of the normalised conversation, one 'role: content' line per turn "
                                 "(NFKC, casefold, zero-width removed, whitespace collapsed)"}})
    cand = np.flatnonzero(kinds == K_KEEP)  # rows with keys/signatures, in order
    if cand.size == 0:
        d.stats["exact"].update(rows_removed=0, clusters=0)
        return d
    q = quality[cand]
    dups, reps = representatives(keys, q, np.arange(cand.size))
    d.kinds[cand[dups]] = K_DUP
    d.dup_of[cand[dups]] = cand[reps]
    d.similarity[cand[dups]] = 1.0
    d.stats["exact"].update(rows_removed=int(dups.size), clusters=int(np.unique(keys[dups]).size))
    if opts.near_dedupe and store.n:
        active = np.ones(cand.size, bool)
        active[dups] = False
        d.stats["near"] = near_duplicates(d, cand, q, active, store, opts, text_of)
    return d


def near_duplicates(d: Dedupe, cand: np.ndarray, q: np.ndarray, active: np.ndarray, store, opts: ValidateOptions,
                    text_of=None) -> dict:
    """Near-duplicate clusters among the ``active`` candidates (LSH pairs verified, then union-find)."""
    from ech0.data.dedupe import ROWS_PER_BAND, clusters, estimate_jaccard, exact_jaccard, near_duplicate_pairs

    assert store.n == cand.size, (store.n, cand.size)
    bands = max(1, opts.num_perm // ROWS_PER_BAND)
    checked = [0]

    def exact(a: np.ndarray, b: np.ndarray) -> list[float]:
        checked[0] += len(a)
        return [exact_jaccard(text_of(int(cand[x])), text_of(int(cand[y])), opts.ngram)
                for x, y in zip(a.tolist(), b.tolist())]

    i, j, _, n_cand = near_duplicate_pairs(store, active, opts.threshold, bands, ROWS_PER_BAND,
                                           exact=exact if text_of is not None else None)
    removed, n_clusters, largest = 0, 0, 1
    if i.size:
        idx = np.flatnonzero(active)
        rm, rp = representatives(clusters(cand.size, i, j)[idx], q[idx], idx)
        d.kinds[cand[rm]] = K_NEAR
        d.dup_of[cand[rm]] = cand[rp]
        d.similarity[cand[rm]] = estimate_jaccard((store.rows(rm) == store.rows(rp)).mean(axis=1))
        removed = int(rm.size)
        sizes = np.bincount(np.searchsorted(np.unique(rp), rp))
        n_clusters = int(np.unique(rp).size)
        largest = int(sizes.max()) + 1 if sizes.size else 1
    return {
        "method": "MinHash LSH (b-bit 16 signatures); candidate pairs verified on the signature estimate, "
                  "and on exact shingle Jaccard when the estimate is within [t-0.10, t+0.05)",
        "exact_checks": int(checked[0]),
        "shingle": f"{opts.ngram}-word", "num_perm": opts.num_perm, "threshold": opts.threshold,
        "bands": bands, "rows_per_band": ROWS_PER_BAND, "candidate_pairs": int(n_cand), "verified_pairs": int(i.size),
        "rows_removed": removed, "clusters": n_clusters, "largest_cluster": largest,
        "signature_mb": round(store.nbytes() / 2**20, 1),
    }


# ----------------------------------------------------------------------------------- pass 2


def duplicate_line(raw: bytes, kind: int, line: int, of_line: int, similarity: float) -> bytes:
    """The reject record of a duplicate: the spilled row (already redacted) after where and of what."""
    head = {"line": line, "reason": "duplicate" if kind == K_DUP else "near_duplicate", "duplicate_of_line": of_line}
    if kind == K_NEAR:
        head["similarity"] = round(similarity, 3)
    return json.dumps(head)[:-1].encode() + b', "row": ' + raw.rstrip(b"\n") + b"}\n"


def write_outputs(spill: Spill, d: Dedupe, out_path: Path, rej_path: Path) -> tuple[int, int]:
    """Copy the spill, in input order, into the kept rows and the rejects file (both atomic); returns
    the rows written to each."""
    kept = rejected = 0
    with atomic_open(out_path, "wb") as out, atomic_open(rej_path, "wb") as rej, open(spill.path, "rb") as sp:
        for idx, raw in enumerate(sp):
            k = d.kinds[idx]
            if k == K_KEEP:
                out.write(raw)
                kept += 1
                continue
            if k != K_REJECT:
                raw = duplicate_line(raw, k, int(spill.linenos[idx]), int(spill.linenos[d.dup_of[idx]]),
                                     float(d.similarity[idx]))
            rej.write(raw)
            rejected += 1
    if kept + rejected != d.kinds.size:
        raise AssertionError(f"spill has {kept + rejected} rows, expected {d.kinds.size}")
    return kept, rejected


def account(kinds: np.ndarray, reasons: dict, written: tuple[int, int]) -> tuple[int, int]:
    """Every row accounted for: read = kept + rejected, as written, and the reasons add up (adds the
    duplicate reasons to ``reasons``); returns (kept, rejected)."""
    kept = int((kinds == K_KEEP).sum())
    rejected = int(kinds.size) - kept
    for k, reason in ((K_DUP, "duplicate"), (K_NEAR, "near_duplicate")):
        c = int((kinds == k).sum())
        if c:
            reasons[reason] = c
    assert (kept, rejected) == written, (kept, rejected, written)
    assert kept + rejected == kinds.size
    assert sum(reasons.values()) == rejected, (reasons, rejected)
    return kept, rejected


# ----------------------------------------------------------------------------------- helpers


def resolve_input(ctx: Context, inp: str, stage: str) -> Path:
    """A file, or a dataset name looked up in the levels before ``stage`` (clean: raw; processed: clean, raw)."""
    p = Path(inp).expanduser()
    if p.exists():
        return p.resolve()
    if "/" not in inp and not p.suffix:
        order = {"clean": ["raw"], "processed": ["clean", "raw"], "raw": []}[stage]
        for s in order:
            q = ctx.data_file(s, inp)
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


def tokenizer_for(ctx: Context, opts: ValidateOptions) -> str | None:
    """The tokenizer whose chat template renders rows and whose tokens are counted: ``opts.tokenizer``,
    else the model's (a ``local:*`` model is built under ``ctx.base_models`` on first use) at the clean
    stage (every row must render) or with ``--max-tokens``; None when nothing needs one."""
    if opts.tokenizer:
        return opts.tokenizer
    if opts.stage != "clean" and opts.max_tokens is None:
        return None
    from ech0.models import resolve_config

    return resolve_config({**opts.model_config, "name_or_path": opts.model}, ctx.base_models)


def worker_count(requested: int | None, size: int) -> int:
    if requested is None:
        return min(os.cpu_count() or 1, MAX_AUTO_WORKERS) if size > BIG_INPUT else 1
    return max(1, requested)


# ----------------------------------------------------------------------------------- the stage


class Validation:
    """One ``validate`` run: options checked and inputs resolved on construction, then :meth:`run`
    does the passes in order with the state between them on ``self``."""

    def __init__(self, ctx: Context, opts: ValidateOptions) -> None:
        self.t0 = time.time()
        check_options(opts)
        self.ctx, self.opts = ctx, opts
        self.src = resolve_input(ctx, opts.input, opts.stage)
        self.name = check_name(opts.name or default_name(self.src))
        self.out_path = ctx.data_file(opts.stage, self.name)
        self.rej_path = ctx.data_dir(opts.stage) / f"{self.name}.rejects.jsonl"
        self.man_path = mf.manifest_path(ctx, self.name, opts.stage)
        self.fmt = sniff(self.src, opts.max_line_bytes)
        self.in_sha = mf.sha256_file(self.src)
        self.parent = mf.find_parent(ctx, self.src)
        self.tok_name = tokenizer_for(ctx, opts)
        self.workers = worker_count(opts.workers, self.fmt.size)

    def run(self) -> dict:
        opts = self.opts
        init_worker(opts, self.tok_name)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        spill = Spill(self.out_path.parent / f".{self.name}.{os.getpid()}.spill", opts.num_perm)
        bar = make_progress(self.fmt.size, f"validate {self.name}", opts.progress)
        try:
            read_into(spill, self.fmt, opts, self.workers, bar.update)
            bar.close()
            spill.close()
            if spill.kinds.size == 0:
                raise UserError(f"{self.src}: no rows (only blank lines or an empty array); nothing to validate")
            if opts.fail_on_secrets:
                fail_on_secrets(self.src, spill.secret_rows)
            d = dedupe(spill.kinds, spill.quality, spill.keys, spill.sigs, opts, spill.normalised_text) \
                if opts.dedupe else Dedupe(spill.kinds, None, None, None)
            kept, rejected = account(d.kinds, spill.reasons, write_outputs(spill, d, self.out_path, self.rej_path))
        finally:
            bar.close()
            spill.remove()
        return self.manifest(spill, d.stats, kept, rejected)

    def manifest(self, spill: Spill, dedupe_stats: dict | None, kept: int, rejected: int) -> dict:
        man = mf.base(self.name, self.opts.stage, "validate", self.options(), self.t0)
        mf.record_io(self.ctx, man, self.src, self.in_sha, self.fmt.mode, kept + rejected, self.out_path, kept,
                     self.rej_path, rejected)
        norm = {**spill.normalizations, **normalizations(self.fmt)}
        if spill.split_lines:
            norm["lines_with_several_objects"] = spill.split_lines
        man["reject_reasons"] = dict(sorted(spill.reasons.items()))
        man["redactions"] = dict(sorted(spill.redactions.items()))
        man["rows_with_secrets"] = len(spill.secret_rows)
        man["normalizations"] = dict(sorted(norm.items()))
        man["dedupe"] = dedupe_stats
        man["tokens"] = self.token_summary(spill)
        man["parent"] = self.parent
        return mf.finish(man, self.man_path, self.t0)

    def options(self) -> dict:
        d = asdict(self.opts)
        for k in ("progress", "quiet", "extra", "workers", "batch_size"):
            d.pop(k, None)
        d["tokenizer"] = self.tok_name
        return d

    def token_summary(self, spill: Spill) -> dict | None:
        t = token_stats(spill.ntok)
        if t is None:
            return None
        info = spill.tok_info
        return {**t, "tokenizer": self.tok_name, "rows_measured": info.get("measured", 0),
                "rows_within_byte_bound": info.get("skipped_by_bound", 0),
                "byte_bound_max": info.get("bound_max", 0),
                "byte_bound_violations": info.get("bound_violations", 0),
                "measures": "the conversation rendered by the model's chat template, tokenized without special "
                            "tokens (what training tokenizes: ech0.chat.encode)",
                "note": "statistics over measured rows (all rows that could exceed --max-tokens, plus a sample); "
                        f"the others are within the bound utf8_bytes(rendered conversation) + "
                        f"{TOKEN_BOUND_SLACK} <= --max-tokens"}


def run_validate(ctx: Context, opts: ValidateOptions, lock: bool = True) -> dict:
    """Validate ``opts.input`` into ``ctx``'s ``opts.stage`` level; returns the manifest (also written).

    The output dataset is written under its :class:`ech0.data.manifest.DatasetLock` (another writer of
    the same name, or a pipeline training on it, is waited for); ``lock=False``: the caller holds it.
    """
    if not lock:
        return Validation(ctx, opts).run()
    check_options(opts)  # a bad option or input fails at once, without waiting for anyone
    name = check_name(opts.name or default_name(resolve_input(ctx, opts.input, opts.stage)))
    with mf.DatasetLock(ctx, name, f"ech0 data validate --stage {opts.stage}").writing():
        return Validation(ctx, opts).run()
