"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop state, hashed and verified.

    save(run_dir / "checkpoints", step, model, optimizer, scheduler, state, loss=0.91, write_model=fn)
    gone = prune(run_dir / "checkpoints", keep=2)            # the newest 2 and the best stay; [Removed(...)]
    state = load_latest(run_dir / "checkpoints", model, optimizer, scheduler, say=print)  # None when there is none

A checkpoint is the folder ``checkpoints/step-0000010/`` with ``trainable.safetensors``, ``optim.pt`` and
``state.json``. It is built in a hidden sibling ``.step-0000010.tmp-<pid>``: each file is fsynced,
``state.json`` comes last and records the sha256 and size of every other file, then the folder is renamed
into place and the parent folder fsynced. A writer killed at any moment (SIGKILL, power loss) therefore
leaves the complete checkpoint or a hidden folder that no reader counts; hidden leftovers are removed by
the next save or resume. On resume every recorded file is hashed again: a truncated or corrupted newest
checkpoint is skipped for the previous intact one (``say`` gets one line naming the bad file and the
checkpoint used instead); when none is intact, :class:`~ech0.errors.UserError` names the bad file.
Checkpoints written before hashes were recorded (no ``files`` in ``state.json``) load unverified.
Measured cost (2-core CPU under load): a SmolLM2-135M LoRA checkpoint with a 20 MB adapter (59 MB with
AdamW's state) hashes in 80-190 ms of a 1.1-2.1 s save (the fsyncs cost more) and verifies in 170-280 ms.

With ``write_model`` (training with ``tracking.log_model``) the checkpoint also holds ``model/``, a loadable
model folder (:func:`ech0.model_folder.save_trained`) that its MLflow ``LoggedModel`` is logged from. It
lives inside the checkpoint, not beside it, so the same hidden build + rename makes it appear with the
checkpoint, ``state.json`` hashes its files too (``model/adapter_model.safetensors``, ...), and retention
removes it with the checkpoint: one folder is one checkpoint. Resume never reads it (the trainable weights
are in ``trainable.safetensors``); for a LoRA run it adds the adapter again (same tensors, peft's names).
``logged_model.json`` (the LoggedModel's id, written after logging) sits beside the sealed files and is
not hashed: it is how a later :func:`prune` names the MLflow model to delete with the folder.

Retention (:func:`prune`): the newest ``keep`` checkpoints and the best one (the lowest ``loss`` that
``state.json`` records, the held-out loss at that step) stay; ``keep=0`` keeps all.

Sharded (``trainer.strategy=fsdp``: ``save(..., dist=dist)`` and ``load_latest(..., dist=dist)`` on every
rank): ``shards/`` replaces ``trainable.safetensors`` and the optimizer half of ``optim.pt`` — it is a
``torch.distributed.checkpoint`` folder (``__<rank>_0.distcp`` per rank, ``.metadata``) of the trainable
weights and AdamW state, which each rank writes from its own shard into rank 0's hidden folder, and
``loop.pt`` holds the scheduler and RNG. Each rank hashes the files it wrote, rank 0 records them all in
``state.json`` and renames the folder into place once every rank is done; on resume the ranks verify a
share of the files each and agree on the checkpoint. ``shards/`` loads into any number of processes
(1, DDP, FSDP on another world size: the checkpoint reshards); a DDP checkpoint does not load into FSDP.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ech0.errors import UserError
from ech0.io import sha256_file

STATE = "state.json"
WEIGHTS = "trainable.safetensors"
OPTIM = "optim.pt"
SHARDS = "shards"  # sharded: the torch.distributed.checkpoint folder of trainable weights + optimizer state
LOOP = "loop.pt"  # sharded: scheduler + RNG (the optimizer's state is in shards/)
MODEL = "model"  # the loadable model folder a checkpoint's LoggedModel is logged from (write_model)


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------- write

def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(path: Path) -> dict:
    """fsync ``path`` and return what ``state.json`` records of it."""
    _fsync(path)
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` into place: the moment the checkpoint starts to exist."""
    if target.exists():  # the same step again: a resume fell back past a bad checkpoint of this step
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync(target.parent)


def tidy(folder: Path) -> list[Path]:
    """Remove the hidden ``.step-*`` folders a killed writer left behind; returns them."""
    left = sorted(folder.glob(".step-*"))
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    return left


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but ``state.json``, as paths relative to it (``model/config.json``)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != STATE)


def save(folder: Path, step: int, model, optimizer, scheduler, state: dict, loss: float | None = None,
         write_model: Callable[[Path], None] | None = None, dist=None) -> Path:
    """Write checkpoint ``step`` (``loss``: its held-out loss, which ranks it for :func:`prune`); with
    ``write_model``, that function writes the loadable model folder into the one it is given (``model/``).
    A sharded ``dist`` (:class:`ech0.train.distributed.Dist`): every rank calls this, and ``write_model``."""
    if dist is not None and dist.sharded:
        return _save_sharded(folder, step, model, optimizer, scheduler, state, loss, write_model, dist)
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tidy(folder)  # one writer per run: any hidden folder is a killed writer's
    target = folder / step_name(step)
    tmp = folder / f".{target.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        save_file({n: t.contiguous() for n, t in trainable_state(model).items()}, str(tmp / WEIGHTS))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / OPTIM)
        if write_model is not None:
            write_model(tmp / MODEL)
        files = {name: _seal(tmp / name) for name in _files(tmp)}
        (tmp / STATE).write_text(json.dumps({**state, "step": step, "loss": loss, "files": files}))
        _fsync(tmp / STATE)
        if write_model is not None:
            _fsync(tmp / MODEL)
        _fsync(tmp)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _state_dicts(model, optimizer) -> tuple[dict, dict]:
    """The trainable weights and the optimizer state keyed by parameter name (DTensor shards under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def _save_sharded(folder: Path, step: int, model, optimizer, scheduler, state: dict, loss: float | None,
                  write_model, dist) -> Path:
    import torch
    import torch.distributed.checkpoint as dcp

    target = folder / step_name(step)
    tmp = None
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        tidy(folder)  # one writer per run: any hidden folder is a killed writer's
        tmp = folder / f".{target.name}.tmp-{os.getpid()}"
        tmp.mkdir()
    tmp = Path(dist.broadcast(str(tmp)))  # every rank writes its shard into rank 0's hidden folder
    try:
        weights, optim = _state_dicts(model, optimizer)
        # collective: returns once every rank's file is written and fsynced and rank 0 wrote .metadata
        dcp.save({"model": weights, "optim": optim}, checkpoint_id=tmp / SHARDS)
        if write_model is not None:
            write_model(tmp / MODEL)  # every rank: the full weights are gathered; rank 0 writes the folder
        mine = {f"{SHARDS}/{p.name}": _seal(p) for p in sorted((tmp / SHARDS).glob(f"__{dist.rank}_*.distcp"))}
        sealed = dist.gather(mine)  # each rank hashes what it wrote (a 7B run's shards: ~87 GB in all)
        if dist.is_main:
            torch.save({"scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / LOOP)
            files = {k: v for part in sealed for k, v in part.items()}
            files.update({name: _seal(tmp / name) for name in _files(tmp) if name not in files})
            (tmp / STATE).write_text(json.dumps({**state, "step": step, "loss": loss, "files": files,
                                                 "shards": dist.world}))
            _fsync(tmp / STATE)
            for sub in (SHARDS, MODEL):
                if (tmp / sub).is_dir():
                    _fsync(tmp / sub)
            _fsync(tmp)
            _publish(tmp, target)
        dist.barrier()  # no rank goes on before the checkpoint exists
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _loss(ckpt: Path) -> float | None:
    try:
        loss = json.loads((ckpt / STATE).read_text()).get("loss")
    except (OSError, ValueError, AttributeError):
        return None
    return float(loss) if isinstance(loss, (int, float)) and loss == loss else None  # NaN ranks nothing


@dataclass
class Removed:
    path: Path
    step: int


def kept(folder: Path, keep: int) -> list[Path]:
    """The checkpoints :func:`prune` keeps: the newest ``keep`` and the one with the lowest recorded loss
    (a tie: the newest of them); ``keep=0``: all."""
    steps = sorted(folder.glob("step-*"))
    if keep <= 0:
        return steps
    ranked = [(loss, -i) for i, p in enumerate(steps) if (loss := _loss(p)) is not None]
    best = {steps[-min(ranked)[1]]} if ranked else set()
    return [p for p in steps if p in best or p in steps[-keep:]]


def prune(folder: Path, keep: int, before: Callable[[Removed], None] | None = None) -> list[Removed]:
    """Delete every checkpoint but :func:`kept`'s from disk; what was removed.
    ``before`` is called with each one before its folder goes (the model's deletion is asked for first:
    a spool still delivering it from the folder then knows it is not wanted)."""
    stay = set(kept(folder, keep))
    gone = []
    for p in sorted(folder.glob("step-*")):
        if p not in stay:
            gone.append(Removed(p, int(p.name.removeprefix("step-"))))
            if before is not None:
                before(gone[-1])
            shutil.rmtree(p, ignore_errors=True)
    return gone


# -------------------------------------------------------------------------------------------- read

def problem(ckpt: Path, share: tuple[int, int] = (0, 1)) -> str | None:
    """What is wrong with checkpoint folder ``ckpt``, naming the file (None: complete and intact).
    ``share=(i, n)``: hash only every n-th recorded file from the i-th (n processes verify one checkpoint)."""
    try:
        state = json.loads((ckpt / STATE).read_text())
    except FileNotFoundError:
        return f"{ckpt / STATE}: missing (the write never finished)"
    except (OSError, ValueError) as e:
        return f"{ckpt / STATE}: unreadable, truncated or corrupted ({type(e).__name__})"
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(state, dict) or "step" not in state or not isinstance(files, (dict, type(None))):
        return f"{ckpt / STATE}: not a checkpoint state (no step or file list)"
    for name, want in sorted((files or {}).items())[share[0]::share[1]]:
        path = ckpt / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path}: missing"
        if size != want.get("bytes"):
            return f"{path}: {size} bytes, state.json records {want.get('bytes')} (truncated or corrupted)"
        if sha256_file(path) != want.get("sha256"):
            return f"{path}: sha256 differs from state.json (corrupted)"
    return None


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint whose files match their recorded hashes (None: there is none)."""
    return next((p for p in sorted(folder.glob("step-*"), reverse=True) if problem(p) is None), None)


def _choose_sharded(folder: Path, dist) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint every rank found intact, the problems of newer ones): rank 0 lists, the ranks
    hash a share of each candidate's files and agree."""
    if dist.is_main:
        tidy(folder)
    names = dist.broadcast([p.name for p in sorted(folder.glob("step-*"), reverse=True)] if dist.is_main else None)
    bad = []
    for name in names:
        found = [w for w in dist.gather(problem(folder / name, share=(dist.rank, dist.world))) if w]
        if not found:
            return folder / name, bad
        bad.append(found[0])
    return None, bad


def load_latest(folder: Path, model, optimizer, scheduler, say=None, dist=None) -> dict | None:
    """Load the newest intact checkpoint into model/optimizer/scheduler/RNG and return its state.

    A bad newer one is skipped and ``say`` (if given) gets one line naming it; none intact: UserError.
    A sharded ``dist``: every rank calls this and all load the same checkpoint."""
    import torch
    from safetensors.torch import load_file

    bad, ckpt = [], None
    if dist is not None and dist.sharded:
        ckpt, bad = _choose_sharded(folder, dist)
    else:
        tidy(folder)
        for p in sorted(folder.glob("step-*"), reverse=True):
            if (why := problem(p)) is None:
                ckpt = p
                break
            bad.append(why)
    if ckpt is None:
        if bad:
            more = f" ({len(bad) - 1} older checkpoint(s) bad too)" if len(bad) > 1 else ""
            raise UserError(f"{bad[0]}{more}: no intact checkpoint to resume from; restore the file, or train "
                            "a new run (resume=false)")
        return None
    if bad and say is not None:
        skipped = f" ({len(bad) - 1} more bad)" if len(bad) > 1 else ""
        say(f"checkpoint skipped: {bad[0]}{skipped}; resuming from {ckpt}")
    if (ckpt / SHARDS).is_dir():
        _load_shards(ckpt, model, optimizer)
        blob = torch.load(ckpt / LOOP, weights_only=False)
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        return json.loads((ckpt / STATE).read_text())
    if dist is not None and dist.sharded:
        raise UserError(f"{ckpt}: written by a trainer.strategy=ddp run (whole weights, no {SHARDS}/); resume it "
                        "with trainer.strategy=ddp")
    weights = load_file(str(ckpt / WEIGHTS))
    params = dict(model.named_parameters())
    differ = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
    if differ:
        raise UserError(f"{ckpt / WEIGHTS}: does not match the model being resumed (differs in "
                        f"{sorted(differ)[:3]}); resume with the run's own model and peft settings")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    blob = torch.load(ckpt / OPTIM, weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    return json.loads((ckpt / STATE).read_text())


def _load_shards(ckpt: Path, model, optimizer) -> None:
    """``shards/`` into the model and optimizer, whatever they are now: sharded over any number of ranks,
    or whole (one process, DDP): torch.distributed.checkpoint reads each rank's part of every tensor."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    weights, optim = _state_dicts(model, optimizer)
    saved = {k.removeprefix("model.") for k in dcp.FileSystemReader(str(ckpt / SHARDS)).read_metadata()
             .state_dict_metadata if k.startswith("model.")}
    if differ := saved ^ set(weights):
        raise UserError(f"{ckpt / SHARDS}: does not match the model being resumed (differs in {sorted(differ)[:3]}); "
                        "resume with the run's own model and peft settings")
    dcp.load({"model": weights, "optim": optim}, checkpoint_id=ckpt / SHARDS)
    # strict=False: the frozen base weights (LoRA) are not in the checkpoint; the trainable ones were checked above
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
