"""Data-stage benchmark: throughput, memory, near-dup recall/precision, secret recall, false positives.

    python -m benchmarks.data_hygiene --rows 20000 --out benchmarks/results/data_hygiene.json
    python -m benchmarks.data_hygiene --rows 1000000 --baseline-rows 20000 --out /tmp/dh_1m.json

Generates N synthetic ~1 KB rows (prose-like text from a Zipf vocabulary, with numbers, code,
URLs, hashes and UUIDs as distractors) and plants: exact duplicates (some differing only by case,
whitespace or zero-width characters), near duplicates (1-3 word edits of an original: true
Jaccard 0.8-0.97 on 5-word shingles, computed exactly), hard negatives (many edits: Jaccard
0.3-0.7), one secret of every rule type, and PII. Then runs the whole validate stage
(``--stage processed --dedupe`` with the tokenizer and ``--max-tokens``: every check on) and
reports ``rows_per_sec``, ``tokenizer_load_seconds`` (importing transformers, which imports torch, and
loading the tokenizer whose chat template renders every row: a fixed cost inside ``seconds``, measured
once more in a fresh process), ``peak_rss_mb`` (this process and its workers), ``near_dup_recall``,
``near_dup_precision``, ``secret_recall``, ``false_positive_rate`` (clean rows with any
redaction), and the same near-dup pass with datasketch's MinHashLSH at default settings
(``baseline_rows_per_sec``, ``speedup_vs_baseline``), plus detect-secrets' recall/FP on a sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

ALNUM = string.ascii_letters + string.digits


def _rs(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def fake_secrets(rng: random.Random) -> list[tuple[str, str]]:
    """One (rule, text containing a fake secret) per detector rule. Built at run time: no literal
    secrets live in the repository."""
    up = string.ascii_uppercase + string.digits
    hexd = "0123456789abcdef"
    b64 = ALNUM + "+/"
    jwt = "eyJ" + _rs(rng, 30) + ".eyJ" + _rs(rng, 40) + "." + _rs(rng, 43, ALNUM + "-_")
    return [
        ("aws_access_key", f"the key id is {rng.choice(['AKIA', 'ASIA'])}{_rs(rng, 16, up)} for prod"),
        ("aws_secret_key", f"aws_secret_access_key = {_rs(rng, 40, b64)}"),
        ("gcp_api_key", f"maps key AIza{_rs(rng, 35, ALNUM + '-_')} in the app"),
        ("gcp_oauth_secret", f"client secret GOCSPX-{_rs(rng, 28)} here"),
        ("azure_client_secret", f"AZURE_CLIENT_SECRET {_rs(rng, 3)}8Q~{_rs(rng, 34, ALNUM + '_~.-')}"),
        ("azure_storage_key", f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={_rs(rng, 86, b64)}==;"),
        ("digitalocean_token", f"DO token dop_v1_{_rs(rng, 64, hexd)}"),
        ("github_token", f"git clone with ghp_{_rs(rng, 36)} please"),
        ("gitlab_token", f"CI uses glpat-{_rs(rng, 20)} to push"),
        ("bitbucket_token", f"ATBB{_rs(rng, 32)} bitbucket app password"),
        ("npm_token", f"//registry.npmjs.org/:_authToken=npm_{_rs(rng, 36)}"),
        ("pypi_token", f"password: pypi-AgEIcHlwaS5vcmc{_rs(rng, 60, ALNUM + '-_')}"),
        ("circleci_token", f"CCIPAT_{_rs(rng, 22)}_{_rs(rng, 40, hexd)}"),
        ("docker_hub_token", f"docker login -p dckr_pat_{_rs(rng, 27)}"),
        ("slack_token", f"bot token xoxb-{_rs(rng, 12, string.digits)}-{_rs(rng, 24)}"),
        ("slack_webhook", f"post to https://hooks.slack.com/services/T{_rs(rng, 8, up)}/B{_rs(rng, 8, up)}/{_rs(rng, 24)}"),
        ("discord_webhook", f"https://discord.com/api/webhooks/{_rs(rng, 18, string.digits)}/{_rs(rng, 68)}"),
        ("telegram_bot_token", f"bot {_rs(rng, 9, string.digits)}:AA{_rs(rng, 33)}"),
        ("stripe_key", f"stripe.api_key = 'sk_live_{_rs(rng, 24)}'"),
        ("square_token", f"square sq0atp-{_rs(rng, 22)}"),
        ("paypal_braintree_token", f"access_token$production${_rs(rng, 16, string.ascii_lowercase + string.digits)}${_rs(rng, 32, hexd)}"),
        ("shopify_token", f"shpat_{_rs(rng, 32, hexd)}"),
        ("twilio_key", f"twilio SK{_rs(rng, 32, hexd)}"),
        ("sendgrid_key", f"SG.{_rs(rng, 22)}.{_rs(rng, 43)}"),
        ("mailgun_key", f"mailgun key-{_rs(rng, 32, hexd)}"),
        ("anthropic_key", f"ANTHROPIC_API_KEY=sk-ant-api03-{_rs(rng, 95, ALNUM + '-_')}"),
        ("openai_key", f"openai.api_key = 'sk-proj-{_rs(rng, 48)}T3BlbkFJ{_rs(rng, 48)}'"),
        ("huggingface_token", f"huggingface-cli login --token hf_{_rs(rng, 34, string.ascii_letters)}"),
        ("groq_key", f"gsk_{_rs(rng, 52)}"),
        ("replicate_token", f"r8_{_rs(rng, 37)}"),
        ("xai_key", f"xai-{_rs(rng, 80)}"),
        ("perplexity_key", f"pplx-{_rs(rng, 48)}"),
        ("jwt", f"Authorization: Bearer {jwt}"),
        ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + _rs(rng, 120, b64) + "\n" + _rs(rng, 64, b64)
         + "\n-----END RSA PRIVATE KEY-----"),
        ("url_password", f"DATABASE_URL=postgres://admin:{_rs(rng, 14)}@db.internal:5432/app"),
        ("password_assignment", f"password = \"{_rs(rng, 6, string.ascii_lowercase)}{_rs(rng, 6, string.digits)}!\""),
        ("high_entropy", f"use this value {_rs(rng, 40)} to authenticate"),
    ]


def fake_pii(rng: random.Random) -> list[tuple[str, str]]:
    def luhn_complete(prefix: str) -> str:
        from ech0.data.pii import luhn_ok

        for d in "0123456789":
            if luhn_ok(prefix + d):
                return prefix + d
        raise AssertionError

    card = luhn_complete("4" + _rs(rng, 14, string.digits))
    return [
        ("EMAIL", f"write to {_rs(rng, 6, string.ascii_lowercase)}.{_rs(rng, 5, string.ascii_lowercase)}@example.org"),
        ("PHONE", f"call +1 415-{rng.randint(200, 999)}-{rng.randint(1000, 9999)} today"),
        ("CARD", f"card {card[:4]} {card[4:8]} {card[8:12]} {card[12:]}"),
        # 11-99.x.x.x is all globally routed unicast (private, loopback and documentation
        # addresses are not PII: see ech0/data/pii.py)
        ("IP", f"from {rng.randint(11, 99)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
        ("IBAN", "IBAN GB82 WEST 1234 5698 7654 32"),
        ("SSN", f"SSN {rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"),
    ]


class Gen:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        syll = ["ka", "lo", "mi", "ten", "ra", "so", "vel", "an", "dor", "is", "pre", "ut", "on", "qua", "er", "sim",
                "bel", "tor", "na", "che"]
        words = set()
        while len(words) < 20000:
            words.add("".join(self.rng.choice(syll) for _ in range(self.rng.randint(1, 4))))
        self.vocab = sorted(words)
        self.cum = list(__import__("itertools").accumulate(1.0 / (i + 1) ** 0.9 for i in range(len(self.vocab))))
        self.distract = [
            lambda r: f"version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
            lambda r: f"commit {_rs(r, 40, '0123456789abcdef')}",
            lambda r: f"id {_rs(r, 8, '0123456789abcdef')}-{_rs(r, 4, '0123456789abcdef')}-4{_rs(r, 3, '0123456789abcdef')}-a{_rs(r, 3, '0123456789abcdef')}-{_rs(r, 12, '0123456789abcdef')}",
            lambda r: f"see https://docs.example.com/guide/{r.choice(self.vocab)}?page={r.randint(1, 99)}",
            lambda r: f"costs ${r.randint(1, 9999)}.{r.randint(10, 99)} in {r.randint(1990, 2030)}",
            lambda r: f"on {r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} at {r.randint(0, 23)}:{r.randint(10, 59)}",
            lambda r: f"tokenizer = AutoTokenizer.from_pretrained(path) and max_tokens: {r.randint(16, 4096)}",
            lambda r: f"the password field is required and the key point is {r.choice(self.vocab)}",
            lambda r: f"sha256 {_rs(r, 64, '0123456789abcdef')}",
            lambda r: f"src/components/{r.choice(self.vocab).capitalize()}Widget/index.tsx line {r.randint(1, 999)}",
            lambda r: f"x = np.arange({r.randint(1, 100)}); y = x[1:3] * {r.random():.4f}",
        ]

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def text(self, n_words: int) -> str:
        w = self.words(n_words)
        if self.rng.random() < 0.5:
            w.insert(self.rng.randrange(len(w)), self.rng.choice(self.distract)(self.rng))
        return " ".join(w)

    def row(self, i: int, q: float | None = None) -> dict:
        p = self.text(self.rng.randint(15, 30)).capitalize() + "?"
        c = self.text(self.rng.randint(85, 110)).capitalize() + "."
        return {"prompt": p, "completion": c, "tags": ["bench"],
                "quality_score": round(self.rng.random(), 3) if q is None else q, "metadata": {"i": i}}

    def edit(self, r: dict, n_edits: int) -> dict:
        w = r["completion"].split()
        for _ in range(n_edits):
            j = self.rng.randrange(len(w))
            w[j] = self.rng.choice(self.vocab)
        out = dict(r, completion=" ".join(w), metadata=dict(r["metadata"]))
        return out


def jaccard(a: dict, b: dict) -> float:
    """The true shingle Jaccard of two rows as dedupe sees them (whole conversations, normalised)."""
    from ech0.data.dedupe import exact_jaccard, normalized

    return exact_jaccard(normalized(a), normalized(b))


def generate(path: Path, n: int, seed: int = 7) -> dict:
    """Write ``n`` rows; return the ground truth (keyed by metadata.i)."""
    g = Gen(seed)
    rng = g.rng
    truth = {"exact": {}, "near": {}, "hard_neg": {}, "secret": {}, "pii": {}, "clean": set(), "near_j": {}}
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            u = rng.random()
            if recent and u < 0.03:  # exact duplicate (sometimes disguised)
                src = rng.choice(recent)
                r = dict(src, metadata={"i": i, "dup_of": src["metadata"]["i"]}, quality_score=round(rng.random(), 3))
                v = rng.random()
                if v < 0.3:
                    r["prompt"] = r["prompt"].upper()
                elif v < 0.6:
                    r["completion"] = r["completion"].replace(" ", "\u200b ", 3).replace(" ", "  ", 2)
                truth["exact"][i] = src["metadata"]["i"]
            elif recent and u < 0.06:  # near duplicate
                src = rng.choice(recent)
                r = g.edit(src, rng.randint(1, 3))
                r["metadata"] = {"i": i, "near_of": src["metadata"]["i"]}
                truth["near"][i] = src["metadata"]["i"]
                truth["near_j"][i] = jaccard(src, r)
            elif recent and u < 0.07:  # hard negative: same source, many edits
                src = rng.choice(recent)
                r = g.edit(src, rng.randint(15, 30))
                r["metadata"] = {"i": i, "far_of": src["metadata"]["i"]}
                truth["hard_neg"][i] = src["metadata"]["i"]
            else:
                r = g.row(i)
                if u < 0.09:
                    rule, s = rng.choice(fake_secrets(rng))
                    r["completion"] = r["completion"][:300] + " " + s + " " + r["completion"][300:]
                    truth["secret"][i] = rule
                elif u < 0.11:
                    kind, s = rng.choice(fake_pii(rng))
                    r["prompt"] = r["prompt"] + " " + s
                    truth["pii"][i] = kind
                else:
                    truth["clean"].add(i)
                if len(recent) < 2000:
                    recent.append(r)
                elif rng.random() < 0.05:
                    recent[rng.randrange(len(recent))] = r
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return truth


class PeakRSS:
    """Samples the memory of this process plus its children every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _mem(self, p) -> int:
        # PSS: pages shared between the parent and its forked workers are counted once overall
        try:
            return p.memory_full_info().pss
        except Exception:  # noqa: BLE001 - no PSS on this platform: RSS (overcounts shared pages)
            return p.memory_info().rss

    def _sample(self) -> None:
        try:
            rss = self.proc.memory_info().rss
            total = self._mem(self.proc)
            for c in self.proc.children(recursive=True):
                try:
                    total += self._mem(c)
                except Exception:  # noqa: BLE001
                    pass
            self.peak = max(self.peak, total)
            self.peak_main_rss = max(getattr(self, "peak_main_rss", 0), rss)
        except Exception:  # noqa: BLE001
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self._sample()


def baseline_datasketch(path: Path, limit: int, num_perm: int = 128, threshold: float = 0.8) -> dict:
    """datasketch MinHash + MinHashLSH (default settings) over 5-word shingles: rows/s for the
    near-dup step alone (the part our numpy MinHash replaces)."""
    from datasketch import MinHash, MinHashLSH

    from ech0.data.dedupe import normalized

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    t = time.perf_counter()
    n = 0
    dups = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if n >= limit:
                break
            w = normalized(json.loads(line)).split()
            m = MinHash(num_perm=num_perm)
            m.update_batch([" ".join(w[i: i + 5]).encode() for i in range(max(1, len(w) - 4))])
            if lsh.query(m):
                dups += 1
            else:
                lsh.insert(str(n), m)
            n += 1
    dt = time.perf_counter() - t
    return {"rows": n, "seconds": round(dt, 2), "rows_per_sec": round(n / dt, 1), "flagged": dups}


def ours_near_only(path: Path, limit: int) -> dict:
    """Our near-dup step alone on the same rows (normalise + numpy MinHash + LSH + verify)."""
    import numpy as np

    from ech0.data.dedupe import MinHasher, SigStore, near_duplicate_pairs, normalized, to_bbit

    mh = MinHasher()
    store = SigStore()
    t = time.perf_counter()
    n = 0
    batch = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if n >= limit:
                break
            batch.append(normalized(json.loads(line)))
            n += 1
            if len(batch) == 512:
                store.append(to_bbit(mh.signatures(batch)))
                batch = []
    if batch:
        store.append(to_bbit(mh.signatures(batch)))
    i, j, _, _ = near_duplicate_pairs(store, np.ones(store.n, bool))
    dt = time.perf_counter() - t
    return {"rows": n, "seconds": round(dt, 2), "rows_per_sec": round(n / dt, 1), "pairs": int(i.size)}


def detect_secrets_eval(n: int = 300, seed: int = 11) -> dict:
    """Recall / false positives / speed of detect-secrets (default plugins) on the same kind of data."""
    try:
        from detect_secrets.core.scan import _scan_line
        from detect_secrets.settings import default_settings, get_plugins
        from detect_secrets.util.code_snippet import get_code_snippet
    except ImportError:
        return {"available": False}
    rng = random.Random(seed)
    g = Gen(seed)
    secrets = [s for _ in range(max(1, n // 36)) for _, s in fake_secrets(rng)]
    clean = [g.row(i)["completion"] for i in range(n)]

    def hits(line: str) -> bool:
        # the file-scanning path (quoted strings / keywords), not scan_line's eager ad-hoc mode,
        # which reports every word as a candidate
        ctx = get_code_snippet(lines=[line], line_number=1)
        return any(True for p in get_plugins() for _ in _scan_line(plugin=p, filename="x.txt", line=line,
                                                                     line_number=0, enable_eager_search=False,
                                                                     context=ctx))

    with default_settings():
        t = time.perf_counter()
        hit = sum(1 for s in secrets if hits(s))
        fp = sum(1 for c in clean if hits(c))
        dt = time.perf_counter() - t
    return {"available": True, "secret_recall": round(hit / len(secrets), 4),
            "false_positive_rate": round(fp / len(clean), 4),
            "rows_per_sec": round((len(secrets) + len(clean)) / dt, 1)}


def tokenizer_load_seconds(tok: str) -> float:
    """Seconds a fresh process takes to import the data stage's tokenizer code and load ``tok``."""
    import subprocess

    code = ("import time; t = time.perf_counter(); from ech0.data.tokens import ChatTokens; "
            f"ChatTokens({tok!r}); print(time.perf_counter() - t)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--tokenizer", default=None, help="default: the configured base model's (built once)")
    ap.add_argument("--workers", type=int, default=None, help="validate workers (default: CPU count)")
    ap.add_argument("--baseline-rows", type=int, default=None,
                    help="rows for the datasketch baseline (default: min(rows, 20000))")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = args.tokenizer
    if tok is None:
        # resolve (and build once) the configured base model in a child process, under the user's
        # ECH0_HOME, so torch is not loaded into the process being measured
        import subprocess

        r = subprocess.run([sys.executable, "-c", "from ech0.context import Context; from ech0.models import "
                            "ensure_base_model; print('\\n' + str(ensure_base_model(Context.from_env().base_models)))"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            tok = r.stdout.strip().splitlines()[-1]
        else:
            print(f"ech0.models unavailable ({r.stderr.strip().splitlines()[-1:] }); using a throwaway tokenizer",
                  file=sys.stderr)
    from ech0.context import Context

    work = Path(tempfile.mkdtemp(prefix="ech0-bench-"))
    ctx = Context.from_env(home=work / "home")
    src = work / "bench.jsonl"
    t = time.perf_counter()
    truth = generate(src, args.rows)
    gen_s = time.perf_counter() - t
    size = src.stat().st_size
    print(f"generated {args.rows} rows ({size / args.rows:.0f} B/row) in {gen_s:.1f}s", file=sys.stderr)
    if tok is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from plugins.data import build_tokenizer

        tok = str(build_tokenizer(work / "tok"))

    from ech0.data.stage import ValidateOptions, run_validate

    workers = args.workers or (os.cpu_count() or 1)
    opts = ValidateOptions(input=str(src), stage="processed", name="bench", dedupe=True, max_tokens=4096,
                           min_quality=0.0, tokenizer=tok, workers=workers, progress=False)
    import resource

    def cpu() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    load_s = tokenizer_load_seconds(tok)
    load_before = os.getloadavg()[0]
    with PeakRSS() as rss:
        c0 = cpu()
        t = time.perf_counter()
        man = run_validate(ctx, opts)
        dt = time.perf_counter() - t
        cpu_s = cpu() - c0

    # ---- accuracy against the ground truth
    out_rows = {}
    with open(work / "home/data/processed/bench.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out_rows[r["metadata"]["i"]] = r
    removed_near = {}
    removed_exact = {}
    with open(work / "home/data/processed/bench.rejects.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            i = r["row"]["metadata"]["i"] if isinstance(r.get("row"), dict) else None
            if r["reason"] == "near_duplicate":
                removed_near[i] = r
            elif r["reason"] == "duplicate":
                removed_exact[i] = r
    # a planted near-dup pair counts as found when the two rows end up in one cluster (one removed)
    near_pos = {i: s for i, s in truth["near"].items() if truth["near_j"][i] >= 0.8 and s not in truth["exact"]}
    found = sum(1 for i, s in near_pos.items() if i in removed_near or s in removed_near or i in removed_exact)
    near_recall = found / max(1, len(near_pos))

    def root(i):  # follow "derived from" links to the original row
        seen = 0
        while seen < 10:
            s = truth["near"].get(i, truth["exact"].get(i))
            if s is None:
                return i
            i = s
            seen += 1
        return i

    # a removed row is a true near-duplicate when it and its kept copy derive from the same original
    tp = sum(1 for i, r in removed_near.items() if root(i) == root(r["duplicate_of_line"] - 1))
    near_precision = tp / max(1, len(removed_near))
    exact_recall = sum(1 for i in truth["exact"] if i in removed_exact or truth["exact"][i] in removed_exact) / max(1, len(truth["exact"]))

    sec_total = len(truth["secret"])
    sec_found = 0
    misses: dict = {}
    for i, rule in truth["secret"].items():
        r = out_rows.get(i) or (removed_exact.get(i) or removed_near.get(i) or {}).get("row")
        if r is None:
            continue
        if "<SECRET:" in r["completion"]:
            sec_found += 1
        else:
            misses[rule] = misses.get(rule, 0) + 1
    clean_ids = [i for i in truth["clean"] if i in out_rows]
    fp = sum(1 for i in clean_ids if "<SECRET:" in out_rows[i]["completion"] + out_rows[i]["prompt"]
             or "<" in (out_rows[i]["completion"] + out_rows[i]["prompt"]) and any(
                 ph in out_rows[i]["completion"] + out_rows[i]["prompt"]
                 for ph in ("<EMAIL>", "<PHONE>", "<CARD>", "<IP>", "<IBAN>", "<SSN>", "<NATIONAL_ID>")))
    fp_secret = sum(1 for i in clean_ids if "<SECRET:" in out_rows[i]["completion"] + out_rows[i]["prompt"])

    n_base = args.baseline_rows or min(args.rows, 20000)
    base = baseline_datasketch(src, n_base)
    ours = ours_near_only(src, n_base)
    ds = detect_secrets_eval()
    import platform

    res = {
        "rows": args.rows,
        "bytes_per_row": round(size / args.rows),
        "seconds": round(dt, 2),
        "rows_per_sec": round(args.rows / dt, 1),
        "tokenizer_load_seconds": round(load_s, 2),
        "rows_per_sec_after_tokenizer_load": round(args.rows / max(1e-9, dt - load_s), 1),
        "cpu_seconds": round(cpu_s, 2),
        "rows_per_cpu_sec": round(args.rows / cpu_s, 1),
        "rows_per_sec_if_all_cores_free": round(min(workers, os.cpu_count() or 1) * args.rows / cpu_s, 1),
        "load_average_before": round(load_before, 2),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "peak_rss_note": "sum of PSS of the process and its worker processes, sampled every 50 ms",
        "peak_rss_main_process_mb": round(getattr(rss, "peak_main_rss", 0) / 2**20, 1),
        "workers": workers,
        "near_dup_planted_j_ge_0_8": len(near_pos),
        "near_dup_recall": round(near_recall, 4),
        "near_dup_precision": round(near_precision, 4),
        "near_dup_removed": len(removed_near),
        "exact_dup_recall": round(exact_recall, 4),
        "secret_planted": sec_total,
        "secret_recall": round(sec_found / max(1, sec_total), 4),
        "secret_misses_by_rule": misses,
        "false_positive_rate": round(fp / max(1, len(clean_ids)), 5),
        "false_positive_rate_secrets_only": round(fp_secret / max(1, len(clean_ids)), 5),
        "baseline": "datasketch MinHash(num_perm=128).update_batch + MinHashLSH(threshold=0.8) defaults, "
                    "near-dup step only",
        "baseline_rows": base["rows"],
        "baseline_rows_per_sec": base["rows_per_sec"],
        "ours_near_dup_only_rows_per_sec": ours["rows_per_sec"],
        "speedup_vs_baseline": round(ours["rows_per_sec"] / base["rows_per_sec"], 2),
        "end_to_end_vs_baseline_near_dup_only": round((args.rows / dt) / base["rows_per_sec"], 2),
        "detect_secrets": ds,
        "manifest_counts": man["counts"],
        "reject_reasons": man["reject_reasons"],
        "tokenizer": tok,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
