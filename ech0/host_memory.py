"""Keeping freed host memory in the process, so a CPU training step does not page-fault its buffers back in.

    from ech0.host_memory import keep_freed_memory
    keep_freed_memory()        # once, before the step loop; True where the C library took the settings

glibc hands every block over its mmap threshold (128 KiB, rising to at most 32 MiB as blocks are freed)
to the kernel on free, and the next allocation of that size faults fresh zeroed pages in. A CPU training
step allocates and frees gigabytes of such blocks: the logits at trained positions alone are
n_trained x vocabulary fp32 values (96 MB a step on `make demo-real`'s persona: 490 trained tokens x
49,152), and the KL term and backward make several more of that size. Measured there (2-core EPYC,
bf16, LoRA r16 + KL, 12 steps): 6.1M minor page faults and 64 s of system time with glibc's defaults,
175 tokens/s; with freed blocks kept (this function) 1.3M faults, 25 s, 268 tokens/s, the same loss to
the last digit. The price is resident memory: freed blocks stay mapped for reuse (peak RSS 5.4 -> 5.9 GB
there). Generation gains nothing measurable (12 greedy answers: 12.9/10.9 s with the defaults, 11.9/13.5 s
kept), so only training calls it (``trainer.keep_freed_memory``, on CPU). Without glibc (macOS, musl) it
does nothing and returns False. The setting is process-wide and stays.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_LIMIT = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB are kept; larger ones still go back to the kernel

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 2 GiB (once per process): blocks up to that size come from
    the heap and freed ones stay there for the next step instead of going back to the kernel."""
    global _done
    if _done is None:
        _done = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        # both, or neither: a fixed trim threshold alone also pins the mmap threshold at 128 KiB, which
        # measured 4x slower (46 tokens/s, 67M page faults in 12 steps)
        _done = bool(mallopt(M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(M_TRIM_THRESHOLD, _LIMIT))
    return _done
