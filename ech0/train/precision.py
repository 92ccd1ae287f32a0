"""Choosing the compute precision by measuring, not assuming.

    dtype, why = choose("auto", device)     # torch.bfloat16 or None (fp32), and the reason

On a CPU without bf16 matrix units (e.g. AVX2-only EPYC), bf16 matmuls run 30-300x slower than
fp32 (measured here), so ``auto`` times a short matmul in both and keeps bf16 only where it wins.
"""

from __future__ import annotations

import time


def _matmul_seconds(dtypes, n: int = 512, reps: int = 2, trials: int = 3) -> list[float]:
    """Per dtype, the fastest of ``trials`` timings of ``reps`` square matmuls, the dtypes interleaved: a
    shared machine's noise only slows a timing down, so the minimum is the stable figure (one timing of
    4 matmuls of 256 per dtype read bf16 as 1.3x and 6.2x faster than fp32 in two runs minutes apart on
    the same CPU). ~20 ms in all; where one dtype is over 4x slower after the first trial (bf16 on an
    AVX2-only CPU: ~40x), the answer is plain and the trials stop there."""
    import torch

    pairs = [(torch.randn(n, n, dtype=d), torch.randn(n, n, dtype=d)) for d in dtypes]
    for a, b in pairs:
        a @ b
    best = [float("inf")] * len(dtypes)
    for _ in range(trials):
        for i, (a, b) in enumerate(pairs):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best[i] = min(best[i], time.perf_counter() - t)
        if max(best) > 4 * min(best):
            break
    return best


def choose(precision: str, device: str):
    import torch

    if precision == "fp32":
        return None, "fp32 (asked)"
    if precision == "bf16":
        return torch.bfloat16, "bf16 autocast (asked)"
    if precision != "auto":
        from ech0.errors import UserError

        raise UserError(f"trainer.precision={precision!r}: expected auto, fp32 or bf16")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast (GPU supports it)"
        return None, "fp32 (GPU without bf16)"
    fp32, bf16 = _matmul_seconds([torch.float32, torch.bfloat16])
    if bf16 * 1.2 < fp32:
        return torch.bfloat16, f"bf16 autocast (measured {fp32 / bf16:.1f}x faster than fp32 here)"
    return None, f"fp32 (bf16 measured {bf16 / fp32:.1f}x slower here)"
