"""Choosing the compute precision by measuring, not assuming.

    dtype, why = choose("auto", device)     # torch.bfloat16 or None (fp32), and the reason

On a CPU without bf16 matrix units (e.g. AVX2-only EPYC), bf16 matmuls run 30-300x slower than
fp32 (measured here), so ``auto`` times a short matmul in both and keeps bf16 only where it wins.
"""

from __future__ import annotations

import time


def _matmul_seconds(dtype, n: int = 256, reps: int = 4) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return time.perf_counter() - t


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
    fp32, bf16 = _matmul_seconds(torch.float32), _matmul_seconds(torch.bfloat16)
    if bf16 * 1.2 < fp32:
        return torch.bfloat16, f"bf16 autocast (measured {fp32 / bf16:.1f}x faster than fp32 here)"
    return None, f"fp32 (bf16 measured {bf16 / fp32:.1f}x slower here)"
