"""Exact and near-duplicate detection: normalised-text hashes and numpy MinHash + LSH banding.

Run by ``ech0 data validate --dedupe`` (ech0/data/stage.py); in code::

    from ech0.data.dedupe import normalized, exact_key, MinHasher, SigStore, near_duplicate_pairs
    mh = MinHasher()                              # 128 permutations over 5-word shingles
    sigs = mh.signatures([normalized(row) for row in rows])   # (n, 128) uint32, one numpy pass

A row's text is its whole conversation: one ``role: content`` line per turn (a prompt/completion
pair is a user turn and an assistant turn, so it and the same two-turn ``messages`` row are duplicates).
Defaults (README.md, "Data hygiene"): 5-word shingles of the normalised text, 128 permutations, Jaccard 0.8,
LSH with 32 bands x 4 rows (candidate probability 0.9999 at J=0.8, 0.87 at J=0.5), every candidate
pair verified on its signatures (estimated Jaccard >= threshold). Normalisation: NFKC, casefold,
zero-width/format characters removed, whitespace collapsed; so ``"Hello\u200bworld"`` and
``"hello world"`` hash alike. Signatures are kept as 16-bit values (b-bit MinHash): 256 bytes
per row, ~256 MB at a million rows; texts are never kept in memory.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

from ech0.chat import messages_of

NUM_PERM = 128
NGRAM = 5
THRESHOLD = 0.8
BANDS = 32
ROWS_PER_BAND = 4
SEED = 0x5EED

_FORMAT_CHARS = dict.fromkeys(
    [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F,
     0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0x2066, 0x2067, 0x2068,
     0x2069, 0x206A, 0x206B, 0x206C, 0x206D, 0x206E, 0x206F, 0x3164, 0xFE00, 0xFE0F, 0xFEFF, 0xFFA0],
    None,
)
_WS = re.compile(r"\s+")


def conversation_text(row: dict) -> str:
    """Every turn of a canonical row as ``role: content`` lines, in order."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages_of(row))


def normalized(row: dict) -> str:
    """The text of a row's exact and near-duplicate keys: :func:`normalize` of its :func:`conversation_text`."""
    return normalize(conversation_text(row))


def normalize(t: str) -> str:
    """NFKC, zero-width/format characters removed, casefold, whitespace collapsed (not what is written out)."""
    if not t.isascii():
        t = unicodedata.normalize("NFKC", t).translate(_FORMAT_CHARS)
    return " ".join(t.casefold().split())


def exact_key(norm: str) -> int:
    """64-bit key of the normalised text (as a signed int64 for numpy)."""
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64, wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_U64 = np.uint64
_MASK_LO = np.array([(1 << (8 * n)) - 1 if n < 8 else 2**64 - 1 for n in range(17)], dtype=np.uint64)
_MASK_HI = np.array([0 if n <= 8 else ((1 << (8 * (n - 8))) - 1 if n < 16 else 2**64 - 1) for n in range(17)],
                    dtype=np.uint64)


class MinHasher:
    """MinHash signatures for a batch of normalised texts, without a per-shingle Python loop.

    All texts of a batch are joined into one byte array. A word's hash mixes its first 16 bytes
    (read as two uint64 through a strided view) and its length; a shingle's hash mixes ``ngram``
    consecutive word hashes; the ``num_perm`` permutations are ``a * x + b mod 2**32`` over 32-bit
    shingle hashes, min-reduced per text. Every step is a handful of numpy passes per batch.
    """

    def __init__(self, num_perm: int = NUM_PERM, ngram: int = NGRAM, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.ngram = ngram
        self.mult = rng.integers(0, 2**63, size=ngram, dtype=np.uint64) * _U64(2) + _U64(1)
        self.a = (rng.integers(0, 2**31, size=(num_perm, 1), dtype=np.uint32) * np.uint32(2) + np.uint32(1))
        self.b = rng.integers(0, 2**32, size=(num_perm, 1), dtype=np.uint32)

    def word_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every word (uint64) and, per text, the index of its first word (len n+1).

        ``texts`` must be normalised (single spaces, no newlines): see ``normalize``.
        """
        raw = "\n".join(texts).encode("utf-8", "surrogatepass")
        b = np.frombuffer(raw, dtype=np.uint8)
        n = len(texts)
        if b.size == 0:
            return np.zeros(0, np.uint64), np.zeros(n + 1, np.int64)
        sep = b <= 32  # space or the newline between texts
        st = np.flatnonzero(sep[:-1] > sep[1:]) + 1
        if not sep[0]:
            st = np.concatenate([[0], st])
        if st.size == 0:
            return np.zeros(0, np.uint64), np.zeros(n + 1, np.int64)
        nxt = np.append(np.flatnonzero(sep), b.size)  # the separator (or the end) after each word
        length = nxt[np.searchsorted(nxt, st)] - st
        pad = np.concatenate([b, np.zeros(16, np.uint8)])
        win = np.lib.stride_tricks.sliding_window_view(pad, 16)[st].view(np.uint64)
        lc = np.minimum(length, 16)
        x = (win[:, 0] & _MASK_LO[lc]) * _U64(0x9E3779B97F4A7C15)
        x ^= (win[:, 1] & _MASK_HI[lc]) * _U64(0xC2B2AE3D27D4EB4F)
        x ^= length.astype(np.uint64)
        wh = _mix64(x)
        newlines = np.flatnonzero(b == 10)
        text_of_word = np.searchsorted(newlines, st)
        bounds = np.searchsorted(text_of_word, np.arange(n + 1), side="left")
        return wh, bounds

    def signatures(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32 MinHash signatures (all-ones for a text without words)."""
        n = len(texts)
        sig = np.full((n, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        if n == 0:
            return sig
        wh, bounds = self.word_hashes(texts)
        counts = np.diff(bounds)
        k = self.ngram
        W = wh.size
        text_of = np.repeat(np.arange(n), counts)
        # shingle i covers words i .. i+k-1, all within one text; texts shorter than k -> one shingle
        if W >= k:
            m = W - k + 1
            sh = wh[:m] * self.mult[0]
            for j in range(1, k):
                sh += wh[j: m + j] * self.mult[j]
            ok = text_of[:m] == text_of[k - 1:]
            sh = sh[ok]
            sh_text = text_of[:m][ok]
        else:
            sh = np.zeros(0, np.uint64)
            sh_text = np.zeros(0, np.int64)
        short = np.flatnonzero((counts > 0) & (counts < k))
        if short.size:
            extra = np.array([np.sum(wh[bounds[t]: bounds[t + 1]] * self.mult[: counts[t]]) for t in short],
                             dtype=np.uint64)
            sh = np.concatenate([sh, extra])
            sh_text = np.concatenate([sh_text, short])
            order = np.argsort(sh_text, kind="stable")
            sh, sh_text = sh[order], sh_text[order]
        if sh.size == 0:
            return sig
        x = (_mix64(sh) >> _U64(32)).astype(np.uint32)
        rows_with = np.flatnonzero(np.bincount(sh_text, minlength=n))
        starts = np.searchsorted(sh_text, rows_with)
        # (perms x shingles) blocks of ~8k shingles stay in cache; min-reduce along the shingles
        blk = 8192
        i = 0
        r = len(rows_with)
        out = np.empty((self.num_perm, r), dtype=np.uint32)
        while i < r:
            s0 = starts[i]
            j = min(r, i + max(1, blk // max(1, int(x.size // max(r, 1)))))
            e0 = starts[j] if j < r else x.size
            h = self.a * x[s0:e0]
            h += self.b
            out[:, i:j] = np.minimum.reduceat(h, starts[i:j] - s0, axis=1)
            i = j
        sig[rows_with] = out.T
        return sig


def to_bbit(sig: np.ndarray) -> np.ndarray:
    """Keep the low 16 bits of each minimum (b-bit MinHash): a quarter of the memory."""
    return (sig & np.uint32(0xFFFF)).astype(np.uint16)


def estimate_jaccard(match_fraction: np.ndarray, bits: int = 16) -> np.ndarray:
    """Unbiased Jaccard from the fraction of equal b-bit values (random collisions removed)."""
    c = 2.0 ** -bits
    return np.clip((match_fraction - c) / (1 - c), 0.0, 1.0)


class SigStore:
    """Append-only, chunked store of b-bit signatures (no doubling copies as it grows)."""

    CHUNK = 1 << 14

    def __init__(self, num_perm: int = NUM_PERM) -> None:
        self.num_perm = num_perm
        self.chunks: list[np.ndarray] = []
        self.n = 0

    def append(self, sig16: np.ndarray) -> None:
        i = 0
        while i < len(sig16):
            if not self.chunks or len(self.chunks[-1]) == self.CHUNK:
                self.chunks.append(np.empty((0, self.num_perm), np.uint16))
            last = self.chunks[-1]
            take = min(self.CHUNK - len(last), len(sig16) - i)
            self.chunks[-1] = np.concatenate([last, sig16[i: i + take]]) if len(last) else sig16[i: i + take].copy()
            i += take
            self.n += take

    def rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.num_perm), np.uint16)
        if len(idx) == 0:
            return out
        ch = idx // self.CHUNK
        off = idx % self.CHUNK
        for c in np.unique(ch):
            m = ch == c
            out[m] = self.chunks[c][off[m]]
        return out

    def columns(self, lo: int, hi: int) -> np.ndarray:
        return np.concatenate([c[:, lo:hi] for c in self.chunks]) if self.chunks else np.empty((0, hi - lo), np.uint16)

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)


def _band_keys(cols: np.ndarray) -> np.ndarray:
    """One 64-bit key per row for a band of 16-bit values."""
    h = np.full(len(cols), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for j in range(cols.shape[1]):
        h = _mix64(h ^ cols[:, j].astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F + 2 * j))
    return h


AMBIGUOUS_BELOW = 0.10  # estimates in [threshold - 0.10, threshold + 0.05) are checked exactly
AMBIGUOUS_ABOVE = 0.05


def shingles(norm: str, k: int = NGRAM) -> set:
    w = norm.split()
    return {" ".join(w[i: i + k]) for i in range(max(1, len(w) - k + 1))}


def exact_jaccard(a: str, b: str, k: int = NGRAM) -> float:
    x, y = shingles(a, k), shingles(b, k)
    return len(x & y) / len(x | y) if x or y else 1.0


def near_duplicate_pairs(store: SigStore, active: np.ndarray, threshold: float = THRESHOLD,
                         bands: int = BANDS, rows_per_band: int = ROWS_PER_BAND,
                         verify_chunk: int = 1 << 16, exact=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Verified near-duplicate edges among rows where ``active`` is True.

    Returns ``(i, j, est_jaccard, candidates)``. In each LSH bucket every member is paired with the
    bucket's first member (a star, so a bucket of n rows costs n-1 checks, not n^2), then pairs are
    de-duplicated and verified on the full signatures. With ``exact`` (a function of two index
    arrays returning true Jaccard similarities), pairs whose estimate is within the estimator's
    noise of the threshold (~0.035 at 128 permutations) are decided on the exact value instead.
    """
    ids = np.flatnonzero(active)
    pairs = []
    for band in range(bands):
        cols = store.columns(band * rows_per_band, (band + 1) * rows_per_band)[ids]
        keys = _band_keys(cols)
        order = np.argsort(keys, kind="stable")
        k = keys[order]
        same = np.flatnonzero(k[1:] == k[:-1]) + 1  # positions (in order) whose key equals the previous
        if same.size == 0:
            continue
        # first member of each run: for position p in a run, head = start of that run
        run_start = np.ones(len(k), dtype=bool)
        run_start[same] = False
        head = np.maximum.accumulate(np.where(run_start, np.arange(len(k)), 0))
        a = ids[order[head[same]]]
        b = ids[order[same]]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    if not pairs:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0), 0
    allp = np.unique(np.concatenate(pairs), axis=0)
    cand = len(allp)
    keep_i, keep_j, keep_s = [], [], []
    lo = threshold - AMBIGUOUS_BELOW if exact is not None else threshold
    for s in range(0, cand, verify_chunk):
        p = allp[s: s + verify_chunk]
        frac = (store.rows(p[:, 0]) == store.rows(p[:, 1])).mean(axis=1)
        est = estimate_jaccard(frac)
        ok = est >= lo
        if exact is not None:
            amb = np.flatnonzero(ok & (est < threshold + AMBIGUOUS_ABOVE))
            if amb.size:
                true = np.asarray(exact(p[amb, 0], p[amb, 1]), dtype=float)
                est[amb] = true
                ok[amb] = true >= threshold
        keep_i.append(p[ok, 0])
        keep_j.append(p[ok, 1])
        keep_s.append(est[ok])
    return np.concatenate(keep_i), np.concatenate(keep_j), np.concatenate(keep_s), cand


def clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Union-find over edges; returns the root (smallest index) of each of ``n`` nodes."""
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    while True:  # pointer jumping, vectorised
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt
