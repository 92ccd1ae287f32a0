"""Secret detection and redaction: a gitleaks-style rule table with keyword prefilters.

Run by ``ech0 data validate`` (through ech0/data/redact.py) and the eval's safety scan; in code::

    from ech0.data.secrets import find_secrets, RULES
    spans = find_secrets(text)   # [(start, end, rule_name), ...]; never logs the values

Speed (~1 KB rows at tens of microseconds): token-shaped secrets never contain whitespace and are
at least 20 characters long, so their rules only look at rows that have such a word, and a rule's
regex runs only when its literal prefix occurs in those words; every regex starts with a literal
(Python's ``re`` finds literal prefixes fast, class-led patterns cost ~30 us/KB). Context rules
(assignments, URL credentials, key blocks) are anchored at keyword occurrences instead of scanning. Matches are replaced by
typed placeholders such as ``<SECRET:aws_access_key>`` (see ``ech0.data.redact``). The generic
``high_entropy`` rule (ideas from detect-secrets' Base64HighEntropyString) only fires on long
base64-alphabet tokens mixing character classes whose Shannon entropy is near that of random data;
hex strings (checksums, commit ids, UUIDs) are never flagged by it, nor are identifiers and model
ids made of words (HuggingFaceM4/Idefics3-8B-Llama3). Keyword assignments need the keyword to start
a name (not bypass:, compass:, monkey:) and a value shaped like a secret (not a word, identifier,
path, date or number). Measured recall and false positives: ``python -m benchmarks.data_hygiene``
(planted) and ``python -m benchmarks.redaction_false_positives`` (real text); figures in README.md,
"Data hygiene".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, NamedTuple


class Rule(NamedTuple):
    name: str
    regex: re.Pattern  # must start with a literal (scan) or is matched at keyword ends (anchor)
    keywords: tuple[str, ...]  # the rule runs only if one occurs (see ``scope``)
    group: int = 0  # which group is the secret (the rest is context kept in the text)
    check: Callable[[str], bool] | None = None  # false-positive filter on the matched secret
    scope: str = "long"  # "long": case-sensitive keyword in a 20+ char word; "text": anywhere;
    #                      "anchor": lower-case keyword anywhere, regex matched right after it
    bound: bool = True  # the match must not be glued to a preceding [A-Za-z0-9_]
    left: Callable[[str, int], bool] | None = None  # "anchor": ``left(text, keyword_start)`` must hold


MIN_TOKEN = 20  # shortest token-shaped secret the "long" rules look for

_PLACEHOLDER = re.compile(
    r"^(?:\*+|x+|\.+|-+|#+|<[^>]*>|\[[^\]]*\]|\{[^}]*\}|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%\(?\w*\)?s?|"
    r"null|none|nil|true|false|undefined|redacted|hidden|secret|password|passwd|changeme|example|"
    r"your[_-]?\w*|my[_-]?\w*|\w*here|\w*_?placeholder\w*|\w*(?:xxx|\*\*\*)\w*|<secret:\w+>)$",
    re.I,
)


def _not_placeholder(v: str) -> bool:
    v = v.strip("'\"`")
    if len(v) < 6 or _PLACEHOLDER.match(v):
        return False
    if "(" in v or v.startswith(("os.", "process.", "env.", "self.", "config.", "settings.", "getenv")):
        return False  # code: password = get_password(), token = os.environ[...]
    if len(set(v)) < 4 or v.replace(".", "").replace("_", "").isdigit():
        return False  # aaaaaaa, 111111, max_tokens: 4096000
    if v.isalpha() and v.islower() and len(v) < 12:
        return False  # password: required / token: tokenizer
    return True


# An assigned value is a secret only when it is shaped like one. Real instruction text is full of
# "Keyword: Photosynthesis", "Key: Ctrl+Shift+P", "token = tokenizer.eos_token", "password:
# Optional[str]", {"Key": "Environment"}, "secret_name: db-credentials", "Token: 2023-10-05":
# words, identifiers, dotted names, paths, numbers and dates joined by punctuation. A value counts
# only with a password symbol, a run mixing letters and digits (hunter2hunter, s3cr3t, a1b2c3,
# 3f2a9c1d8e), or letters that are not word-shaped (random case AbCdEfGhIj, or 12+ letters in
# non-English letter pairs). Measured: benchmarks/redaction_false_positives.py (README, "Data hygiene").
_PW_SYMBOLS = frozenset("!#$&*~?@")  # not '%' (50.5%), '^' (x^2), '=' (x=5), '|' or '\\' (tables, paths)
_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_QUANTITY = re.compile(r"\d+(?:[.,]\d+)?(?:st|nd|rd|th|[A-Za-z]{1,3})")  # 42nd, 100mg, 512MB, 1080p
_HUMP = re.compile(r"[A-Z][a-z]+|[a-z]+|[A-Z]+(?![a-z])|[0-9]+")  # camelCase / UPPER / digit runs


def _word_shaped(letters: str) -> bool:
    """A run of letters as words are written: lower, UPPER, Title or camelCase humps (iPhone,
    McDonald, SuperSecretToken), not random case (AbCdEfGh, xKcDpQrS)."""
    if len(letters) <= 4:
        return True
    humps = _HUMP.findall(letters)
    return sum(1 for h in humps if len(h) == 1) <= 1 and len(letters) >= 3 * len(humps)


def _assigned_secret(v: str) -> bool:
    """``password_assignment``'s value filter: not a placeholder, and shaped like a secret."""
    if not _not_placeholder(v):
        return False
    core = v.strip("'\"`").lstrip("#$€£*_").rstrip(".,!?:;*_")  # hashtags, money, **markdown**, sentence ends
    if core.startswith(("/", "~/", "./", "../")) or "://" in core or core[1:3] in (":\\", ":/"):
        return False  # a path or URL (URL credentials are url_password's)
    if any(c in _PW_SYMBOLS for c in core):
        return True
    for part in _SPLIT.split(core):
        if part.isdigit() or not part:
            continue
        if part.isalpha():
            if not _word_shaped(part) or len(part) >= 12 and not _english_pairs(part):
                return True  # AbCdEfGhIj, kqzvxjwpfhtrmb; not InstalledPendingRebootCount
        elif len(part) >= 6 and not _QUANTITY.fullmatch(part):
            return True  # letters and digits mixed in one run
    return False


# The 302 letter pairs that make up 97 % of the pairs inside English words (counted over 1,500
# local .md/.rst/.txt documentation files); random letters hit 45 % of them, identifiers ~90 %.
_PAIRS = frozenset("""
aa ab ac ad af ag ai ak al am an ap ar as at au av aw ax ay az ba bc be bi bj bl bo bp br bs bu ca cc cd ce ch
ci ck cl cm co cr cs ct cu cy da db dd de di dl do dr ds dt du ea eb ec ed ee ef eg ei el em en eo ep eq er es
et ev ew ex ey fa fe ff fi fl fo fr ft fu ga ge gg gh gi gl gn go gr gs gt gu ha he hi hl ho hr ht hu ia ib ic
id ie if ig ik il im in io ip ir is it iv ix iz je ju ka ke ki ks la ld le li ll lo lp ls lt lu ly ma mb me mi
ml mm mo mp ms mt mu na nc nd ne nf ng nh ni nl nn no np ns nt nu nv ny oa ob oc od oe of og oi ok ol om on oo
op or os ot ou ov ow pa pc pd pe ph pi pl po pp pr ps pt pu py qr qu ra rc rd re rf rg ri rk rl rm rn ro rp rr
rs rt ru rv rw ry sa sc se sh si sk sl sm sn so sp sq ss st su sy ta tc te th ti tl tm to tp tr ts tt tu tw ty
ua ub uc ud ue uf ug ui ul um un up ur us ut va ve vi vo wa we wh wi wn wo wr ws xa xc xe xi xp xt xx ye yn yo
yp yr ys yt ze zo
""".split())


def _english_pairs(v: str, need: float = 0.75) -> bool:
    """At least ``need`` of the letter pairs inside v's camelCase humps are common English pairs,
    and those pairs cover a third of v (random base64 breaks into 1-2 letter humps)."""
    n = k = 0
    for h in _HUMP.findall(v):
        if h[0].isdigit():
            continue
        h = h.lower()
        for i in range(len(h) - 1):
            n += 1
            k += h[i:i + 2] in _PAIRS
    return n >= 0.35 * len(v) and k >= need * n


def _identifier_like(v: str) -> bool:
    """Names made of words: model ids (HuggingFaceM4/Idefics3-8B-Llama3), constants
    (CMAKE_C_LINK_LIBRARY_USING_load_archive), camelCase (kMaxCallbacksUntilQueueIsShortened).
    Every separator-delimited chunk is words plus at most two digit runs and one lone letter,
    and the letter pairs are English. Measured: of 176,344 random 32-86 character base64 tokens
    that ``high_entropy`` flagged before this check, 4 pass it (2e-5); of the 15 identifiers and
    model ids it flagged in local docs and code (e.g. the three above), all do."""
    for chunk in re.split(r"[-_/.+=]+", v):
        if len(chunk) <= 5 or chunk.isdigit():
            continue  # v0, 8x7B, Int4, in21k
        humps = _HUMP.findall(chunk)
        letters = [h for h in humps if not h[0].isdigit()]
        if (len(humps) - len(letters) > 2 or sum(1 for h in letters if len(h) == 1) > 1
                or sum(map(len, letters)) < 3 * len(letters)):
            return False
    return _english_pairs(v)


def _sequence_like(v: str) -> bool:
    """Alphabets and counting runs (abcdefghijklmnopqrstuvwxyzABCDEF..., 0123456789ABCDEF...)."""
    steps = sum(1 for a, b in zip(v, v[1:]) if ord(b) - ord(a) == 1)
    return steps >= 0.5 * (len(v) - 1)


_NAME_PREFIXES = ("api", "auth", "access", "app", "aws", "bearer", "client", "db", "admin", "master", "my",
                  "pg", "private", "refresh", "root", "secret", "session", "ssh", "sudo", "user", "wifi")


def _starts_name(text: str, i: int) -> bool:
    """The keyword at ``text[i:]`` starts a name (password, db_password, dbPassword, APIKEY, x-api-key),
    not the tail of a word (bypass, compass, monkey, turkey) or a path/URN segment (arn:...:secret:Name)."""
    if i == 0:
        return True
    p = text[i - 1]
    if not p.isalnum():
        return p not in ":/\\"
    if text[i].isupper() and (p.islower() or p.isdigit()):
        return True  # camelCase: dbPassword, apiKey, authToken
    low = text[max(0, i - 7):i].lower()
    for g in _NAME_PREFIXES:  # glued compounds: apikey, PGPASSWORD, ACCESSTOKEN, mysecret
        if low.endswith(g) and (i == len(g) or not text[i - len(g) - 1].isalnum()):
            return True
    return False


def shannon_entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


_UP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LO = frozenset("abcdefghijklmnopqrstuvwxyz")
_DI = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF-")


def _high_entropy(v: str) -> bool:
    chars = set(v)
    if chars <= _HEX:
        return False  # checksums, commit ids, UUIDs: not flagged without context
    up, lo, di = bool(chars & _UP), bool(chars & _LO), bool(chars & _DI)
    if up + lo + di < 2 or len(chars) < 16:
        return False
    if v.count("/") >= 2 and not any(c.isdigit() for c in v.replace("/", "")[:8]):
        return False  # a path such as src/components/Widget
    # random base64 of length n has entropy close to log2(min(n, 64)); identifiers sit far below
    if shannon_entropy(v) < 0.82 * math.log2(min(len(v), 64)):
        return False
    if v.startswith(("sha256-", "sha384-", "sha512-")):
        return False  # subresource-integrity digests (<script integrity="sha384-...">)
    head, sep, rest = v.partition("-") if "-" in v[:9] else v.partition("_")
    if sep and len(head) <= 8 and head.isalpha() and len(rest) >= 16 and set(rest) <= _HEX:
        return False  # an id such as tr-0123456789abcdef...: a short prefix and hex
    return not _sequence_like(v) and not _identifier_like(v)


def _r(p: str, flags: int = 0) -> re.Pattern:
    return re.compile(p, flags)


E = r"(?![A-Za-z0-9_])"  # right boundary (a trailing lookahead costs nothing; a leading one defeats
# the literal-prefix search, so the left boundary is checked in Python: ``Rule.bound``)

# after the keyword: "pass" may go on as password/passwd/passphrase/passcode, any keyword may take
# a plural "s"; nothing else glued to it (keyword:, passport:, tokenizer: are other words)
_ASSIGN_TAIL = (r"(?i:(?<=pass)(?:word|wd|phrase|code))?(?i:s)?(?:[_\-.][A-Za-z0-9]+){0,3}['\"]?\s{0,3}"
                r"(?:=>|:=|=|:|\sis\s)\s{0,3}['\"`]?([^\s'\"`,;)}\]]{6,200})")

RULES: list[Rule] = [
    # cloud
    Rule("aws_access_key", _r(r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|ROA|NPA|NVA|IPA)[0-9A-Z]{16}" + E),
         ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA")),
    Rule("aws_secret_key", _r(r"(?i:[A-Za-z0-9_\-. ]{0,30}?(?:key|token)[A-Za-z0-9_\-]{0,10})['\"]?\s{0,3}(?:=>|=|:)"
                              r"\s{0,3}['\"]?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"),
         ("aws",), 1, None, "anchor", False, _starts_name),
    Rule("gcp_api_key", _r(r"AIza[0-9A-Za-z_\-]{35}" + E), ("AIza",)),
    Rule("gcp_oauth_secret", _r(r"GOCSPX-[0-9A-Za-z_\-]{28}" + E), ("GOCSPX-",)),
    Rule("azure_storage_key", _r(r"AccountKey=([A-Za-z0-9+/]{86}==)"), ("AccountKey=",), 1, None, "long", False),
    Rule("azure_client_secret", _r(r"(?<=[A-Za-z0-9_~.\-]{3}\d)Q~[A-Za-z0-9_~.\-]{31,34}" + E), ("Q~",), 0, None, "long", False),
    Rule("digitalocean_token", _r(r"do[opr]_v1_[a-f0-9]{64}" + E), ("_v1_",)),
    # version control and CI
    Rule("github_token", _r(r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{82})" + E),
         ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    Rule("gitlab_token", _r(r"(?:gl(?:pat|dt|rt|cbt|ptt|ft|soat)-[0-9A-Za-z_\-]{20,}|GR1348941[0-9A-Za-z_\-]{20})" + E),
         ("glpat-", "gldt-", "glrt-", "glcbt-", "glptt-", "glft-", "glsoat-", "GR1348941")),
    Rule("bitbucket_token", _r(r"ATBB[A-Za-z0-9_=.\-]{32,}" + E), ("ATBB",)),
    Rule("npm_token", _r(r"npm_[A-Za-z0-9]{36}" + E), ("npm_",)),
    Rule("pypi_token", _r(r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}"), ("pypi-AgEIcHlwaS5vcmc",)),
    Rule("circleci_token", _r(r"CCIPAT_[A-Za-z0-9]{22}_[a-f0-9]{40}" + E), ("CCIPAT_",)),
    Rule("docker_hub_token", _r(r"dckr_pat_[A-Za-z0-9_\-]{27}" + E), ("dckr_pat_",)),
    # chat platforms
    Rule("slack_token", _r(r"xox[baprse]-[0-9A-Za-z\-]{10,250}"), ("xox",)),
    Rule("slack_webhook", _r(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,}"),
         ("hooks.slack.com",)),
    Rule("discord_webhook", _r(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{60,}"),
         ("discord",)),
    Rule("telegram_bot_token", _r(r"(?<=\d{8}):AA[0-9A-Za-z_\-]{33}" + E), (":AA",), 0, None, "long", False),
    # payments and SaaS
    Rule("stripe_key", _r(r"[spr]k_(?:live|test)_[0-9A-Za-z]{24,99}" + E), ("_live_", "_test_")),
    Rule("square_token", _r(r"(?:sq0atp|sq0csp)-[0-9A-Za-z_\-]{22,60}" + E), ("sq0",)),
    Rule("paypal_braintree_token", _r(r"access_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32}"),
         ("access_token$production$",)),
    Rule("shopify_token", _r(r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}" + E), ("shp",)),
    Rule("twilio_key", _r(r"SK[0-9a-fA-F]{32}" + E), ("SK",)),
    Rule("sendgrid_key", _r(r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}" + E), ("SG.",)),
    Rule("mailgun_key", _r(r"key-[0-9a-f]{32}" + E), ("key-",)),
    # LLM providers
    Rule("anthropic_key", _r(r"sk-ant-(?:api|admin|sid)\d\d-[A-Za-z0-9_\-]{80,120}" + E), ("sk-ant-",)),
    Rule("openai_key", _r(r"sk-(?:(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,200}T3BlbkFJ[A-Za-z0-9_\-]{20,200}"
                          r"|(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200}|[A-Za-z0-9]{48})" + E), ("sk-",)),
    Rule("huggingface_token", _r(r"hf_[A-Za-z]{34}" + E), ("hf_",)),
    Rule("groq_key", _r(r"gsk_[A-Za-z0-9]{52}" + E), ("gsk_",)),
    Rule("replicate_token", _r(r"r8_[A-Za-z0-9]{37}" + E), ("r8_",)),
    Rule("xai_key", _r(r"xai-[A-Za-z0-9]{80}" + E), ("xai-",)),
    Rule("perplexity_key", _r(r"pplx-[A-Za-z0-9]{48}" + E), ("pplx-",)),
    # generic formats
    Rule("jwt", _r(r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), ("eyJ",)),
    Rule("private_key", _r(r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]{0,20000}?"
                           r"(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|$)"), ("PRIVATE KEY",), 0, None, "text", False),
    Rule("url_password", _r(r"[^\s:/@'\"<>]{1,100}:([^\s@/'\"<>]{3,200})@[\w.\-]+"), ("://",), 1,
         lambda v: not _PLACEHOLDER.match(v) and len(set(v)) > 2, "anchor", False),
    Rule("password_assignment", _r(_ASSIGN_TAIL),
         ("pass", "pwd", "secret", "key", "token", "credential"), 1, _assigned_secret, "anchor", False, _starts_name),
]

_LONG = re.compile(r"[A-Za-z0-9+/_\-]{32,400}={0,2}")
_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-=")


_WSHAPE = bytes(32 if c in b" \t\n\r\x0b\x0c" else 120 for c in range(256))
_RUN20 = b"x" * MIN_TOKEN
_LONG_RULES = [r for r in RULES if r.scope == "long"]
_TEXT_RULES = [r for r in RULES if r.scope == "text"]
_ANCHOR_RULES = [r for r in RULES if r.scope == "anchor"]
_KW_RULES: dict[str, list[Rule]] = {}
for _rule in _LONG_RULES:
    for _k in _rule.keywords:
        _KW_RULES.setdefault(_k, []).append(_rule)
# every keyword occurrence, overlapping ones included (a lookahead at each position of the short
# string of long words)
_KW_RX = re.compile("(?=(" + "|".join(re.escape(k) for k in sorted(_KW_RULES, key=len, reverse=True)) + "))")


def _scan(rule: Rule, text: str, spans: list) -> None:
    g = rule.group
    check = rule.check
    for m in rule.regex.finditer(text):
        s, e = m.span(g)
        if rule.bound and s > 0:
            c = text[s - 1]
            if c.isalnum() or c == "_":
                continue
        if check is not None and not check(m.group(g)):
            continue
        spans.append((s, e, rule.name))


def find_secrets(text: str) -> list[tuple[int, int, str]]:
    """Spans ``(start, end, rule)`` of secrets in ``text``, non-overlapping, sorted by start."""
    spans: list = []
    if len(text) < 6:
        return spans
    wshape = text.encode("ascii", "replace").translate(_WSHAPE)  # 'x' for non-space, ' ' for space
    i = wshape.find(_RUN20)
    if i >= 0:  # some word is 20+ characters long: only then look for tokens, only in such words
        longs = []
        longest = 0
        while i >= 0:
            j = wshape.find(b" ", i)
            if j < 0:
                j = len(wshape)
            longs.append(text[i:j])
            longest = max(longest, j - i)
            i = wshape.find(_RUN20, j)
        lw = " ".join(dict.fromkeys(longs))
        seen = set()
        for k in _KW_RX.findall(lw):
            for rule in _KW_RULES[k]:
                if rule.name not in seen:
                    seen.add(rule.name)
                    _scan(rule, text, spans)
        if longest >= 32:  # generic high-entropy tokens, only inside long words
            for m in _LONG.finditer(lw):
                tok = m.group()
                s, e = m.span()
                if s > 0 and lw[s - 1] in _B64 or e < len(lw) and lw[e] in _B64 or not _high_entropy(tok):
                    continue
                i = text.find(tok)
                while i >= 0:
                    j = i + len(tok)
                    if not (i > 0 and text[i - 1] in _B64 or j < len(text) and text[j] in _B64):
                        spans.append((i, j, "high_entropy"))
                    i = text.find(tok, j)
    for rule in _TEXT_RULES:
        for k in rule.keywords:
            if k in text:
                _scan(rule, text, spans)
                break
    low = text.lower()
    same_len = len(low) == len(text)  # lower() changes the length of a few non-ASCII strings
    for rule in _ANCHOR_RULES:
        rx = rule.regex
        g = rule.group
        check = rule.check
        left = rule.left
        for k in rule.keywords:
            i = low.find(k)
            if i < 0:
                continue
            if not same_len:
                hits = [m.end() for m in re.finditer(re.escape(k), text, re.I)]
            else:
                hits = []
                while i >= 0:
                    hits.append(i + len(k))
                    i = low.find(k, i + 1)
            for end in hits:
                if left is not None and not left(text, end - len(k)):
                    continue
                m = rx.match(text, end)
                if m is not None and (check is None or check(m.group(g))):
                    spans.append((m.start(g), m.end(g), rule.name))
    if len(spans) > 1:
        spans.sort(key=lambda t: (t[0], -(t[1] - t[0]), _PRIORITY[t[2]]))
        merged = [spans[0]]
        for sp in spans[1:]:
            if sp[0] < merged[-1][1]:
                continue  # overlaps an earlier or longer match; ties: specific rules before generic
            merged.append(sp)
        spans = merged
    return spans


RULE_NAMES = [r.name for r in RULES] + ["high_entropy"]
_PRIORITY = {n: i for i, n in enumerate(RULE_NAMES)}
