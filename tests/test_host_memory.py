"""ech0.host_memory: freed blocks stay in the process, so re-allocating them faults no pages in."""

import subprocess
import sys

import pytest

from ech0.host_memory import keep_freed_memory

# A fresh interpreter: the setting is process-wide, and pytest's process may already have it from training.
PROBE = """
import resource, sys, torch
from ech0.host_memory import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        t = torch.empty(16 << 20).fill_(1.0)  # 64 MB: over glibc's largest default mmap threshold (32 MiB)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = faults()
kept = keep_freed_memory()
faults()  # the first allocation after the change still faults its pages in once
print(default, kept, faults())
"""


def test_freed_blocks_are_reused_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("not glibc: the C library has no mallopt")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    default, kept, after = int(out[0]), out[1], int(out[2])
    assert kept == "True"
    # 20 x 64 MB: 16k faults each with glibc's defaults (32 where transparent huge pages are always on),
    # about none once freed blocks are kept
    assert default >= 20 and after <= default / 20, (default, after)


@pytest.mark.parametrize("keep", [True, False])
def test_training_on_cpu_keeps_freed_memory_unless_told_not_to(tiny_model_dir, ech0_home, monkeypatch, keep):
    from ech0 import host_memory
    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import TrainRecipe

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = compose("train", ["+preset=lora", "trainer.max_steps=1", "trainer.precision=fp32", "trainer.progress=false",
                            "tracking.enabled=false", f"trainer.keep_freed_memory={str(keep).lower()}"])
    TrainRecipe(cfg, Context.from_config(cfg)).setup()
    assert calls == ([1] if keep else [])
