"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop state, written atomically.

    save(run_dir / "checkpoints", step, model, optimizer, scheduler, state, keep=2)
    state = load_latest(run_dir / "checkpoints", model, optimizer, scheduler)   # None when there is none
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ech0.io import atomic_dir

STATE = "state.json"


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(folder: Path, step: int, model, optimizer, scheduler, state: dict, keep: int = 2) -> Path:
    import torch
    from safetensors.torch import save_file

    target = folder / f"step-{step:07d}"
    with atomic_dir(target, overwrite=True) as tmp:
        save_file({n: t.contiguous() for n, t in trainable_state(model).items()}, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
        (tmp / STATE).write_text(json.dumps({**state, "step": step}))
    for old in sorted(folder.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest(folder: Path) -> Path | None:
    done = [p for p in sorted(folder.glob("step-*")) if (p / STATE).exists()]
    return done[-1] if done else None


def load_latest(folder: Path, model, optimizer, scheduler) -> dict | None:
    import torch
    from safetensors.torch import load_file

    ckpt = latest(folder)
    if ckpt is None:
        return None
    weights = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
    assert not missing, f"{ckpt}: checkpoint does not match the model (differs in {sorted(missing)[:3]})"
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    blob = torch.load(ckpt / "optim.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    return json.loads((ckpt / STATE).read_text())
