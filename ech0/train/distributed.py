"""Data-parallel training: torchrun (or accelerate launch) starts the processes, this joins them.

    torchrun --nproc_per_node=2 -m ech0.train +preset=lora               # 2 processes on this machine
    accelerate launch --num_processes=2 -m ech0.train +preset=lora       # the same environment variables
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m ech0.train ...

Each process reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from its environment; without them
(``python -m ech0.train``) :func:`init` returns a one-process :class:`Dist` whose methods do nothing.
Every process holds the whole model wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on
CUDA), computes the loss of its share ``rows[rank::world]`` of each optimizer step's batch, and DDP
averages the gradients, so a step's update equals the one-process update (see ``TrainRecipe.train_step``).
Rank 0 alone opens the MLflow run, writes ``status.json``, checkpoints and the model; evaluation runs
on every process (same weights, same number) so none of them sits waiting for it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

# Rank 0 checkpoints and evaluates alone at times while the others wait in the next all-reduce;
# NCCL's default of 10 minutes is too short for saving a 7B model's optimizer state.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, rows: list) -> list:
        """This process's rows of a step's global batch (every process knows the whole batch)."""
        return rows[self.rank::self.world]

    def wrap(self, model):
        """The model to train with: DDP around ``model`` with more than one process, else ``model`` itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        # broadcast_buffers=False: the only buffers (rotary frequencies) are identical and never change.
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def accumulating(self, model, last: bool):
        """Context of one micro-batch's backward: DDP all-reduces gradients after the step's last one only."""
        return contextlib.nullcontext() if last or self.world == 1 else model.no_sync()

    def sum(self, value: float) -> float:
        """``value`` summed over all processes."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t)

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (what rank 0 decided: run id, resumed run, precision)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. builds the cached base model), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def init(device: str) -> Dist:
    """Join the process group named by the environment (once per process); ``device`` becomes per-rank on CUDA."""
    for var, flag in (("ACCELERATE_USE_FSDP", "--use_fsdp"), ("ACCELERATE_USE_DEEPSPEED", "--use_deepspeed")):
        if os.environ.get(var, "").lower() in ("true", "1"):  # would silently be plain DDP: say so instead
            from ech0.errors import UserError

            raise UserError(f"accelerate launch {flag}: ech0 shards nothing, it trains with DDP only (each process "
                            "holds the whole model); drop the flag (README: More than one process or machine)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    import atexit

    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    elif "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1; other launchers may not: share the cores
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
        atexit.register(dist.destroy_process_group)
    return Dist(rank=rank, world=world, local_rank=local, device=device)


class Null:
    """Accepts any call and does nothing: the status writer of processes other than rank 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
