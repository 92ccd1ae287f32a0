"""Data-parallel training: torchrun (or accelerate launch) starts the processes, this joins them.

    torchrun --nproc_per_node=2 -m ech0.train +preset=lora               # 2 processes on this machine
    accelerate launch --num_processes=2 -m ech0.train +preset=lora       # the same environment variables
    torchrun --nproc_per_node=2 -m ech0.train +preset=full trainer.strategy=fsdp   # sharded: FSDP2 (below)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m ech0.train ...

Each process reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from its environment; without them
(``python -m ech0.train``) :func:`init` returns a one-process :class:`Dist` whose methods do nothing.
Every process holds the whole model wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on
CUDA), computes the loss of its share ``rows[rank::world]`` of each optimizer step's batch, and DDP
averages the gradients, so a step's update equals the one-process update (see ``TrainRecipe.train_step``).
Rank 0 alone opens the MLflow run, writes ``status.json``, checkpoints and the model; evaluation runs
on every process (same weights, same number) so none of them sits waiting for it.

``trainer.strategy=fsdp`` (or ``accelerate launch --use_fsdp``) shards instead (FSDP2): each decoder layer,
then the whole model, goes through ``torch.distributed.fsdp.fully_shard``, so each of N processes holds
1/N of the parameters, gradients and AdamW state and all-gathers one layer's weights at a time. The loss
scaling is DDP's (FSDP's reduce-scatter averages too), so a step's update is again the one-process update.
Every rank then takes part in what touches the weights: checkpoints (``torch.distributed.checkpoint``, each
rank writes its shard) and the full state dict the model folder is saved from (gathered to rank 0's CPU).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

# Rank 0 checkpoints and evaluates alone at times while the others wait in the next all-reduce;
# NCCL's default of 10 minutes is too short for saving a 7B model's optimizer state.
TIMEOUT = timedelta(minutes=60)
STRATEGIES = ("ddp", "fsdp")
# accelerate's FSDP options ech0 would otherwise ignore without a word: (variable, the values ech0 does).
# Its other FSDP_* options (wrap policy, prefetch, state-dict type, version 1 or 2) do not change what is
# held where: ech0 always shards each decoder layer and the root with FSDP2.
ACCELERATE_FSDP = (("FSDP_OFFLOAD_PARAMS", ("", "false")), ("FSDP_ACTIVATION_CHECKPOINTING", ("", "false")),
                   ("FSDP_SHARDING_STRATEGY", ("", "1", "FULL_SHARD")),
                   ("FSDP_RESHARD_AFTER_FORWARD", ("", "true", "FULL_SHARD")))


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    strategy: str = "ddp"  # ddp | fsdp: what wrap() does with more than one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP2: each process holds a shard of the weights, so every rank joins what reads or writes them."""
        return self.world > 1 and self.strategy == "fsdp"

    def share(self, rows: list) -> list:
        """This process's rows of a step's global batch (every process knows the whole batch)."""
        return rows[self.rank::self.world]

    def wrap(self, model, amp_dtype=None):
        """The model to train with: DDP around ``model`` with more than one process, ``model`` itself sharded
        in place (fsdp; build the optimizer afterwards, on its DTensor parameters), else ``model`` itself."""
        if self.world == 1:
            return model
        if self.sharded:
            return shard(model, amp_dtype)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        # broadcast_buffers=False: the only buffers (rotary frequencies) are identical and never change.
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def accumulating(self, model, last: bool):
        """Context of one micro-batch's backward: DDP all-reduces (FSDP reduce-scatters) gradients after the
        step's last one only."""
        if self.sharded:  # FSDP2's no_sync: unsharded gradients accumulate locally until the last micro-batch
            from torch.distributed.fsdp import FSDPModule

            next(m for m in model.modules() if isinstance(m, FSDPModule)).set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last or self.world == 1 else model.no_sync()

    def full_state_dict(self, model) -> dict | None:
        """fsdp: the whole model's weights (a LoRA model's trainable ones) gathered to rank 0's CPU, ``{}`` on
        the others; every rank must call it. Otherwise None: the model's own tensors are whole."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # an adapter folder is saved from the adapter's tensors only: the frozen base stays where it is
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=is_peft(model))
        whole = get_model_state_dict(model, options=options)
        seen: set[int] = set()
        for name, p in model.named_parameters(remove_duplicate=False):  # a tied LM head: saved once, as HF does
            if id(p) in seen:
                whole.pop(name, None)
            seen.add(id(p))
        return whole

    def held(self, model, optimizer) -> dict:
        """Elements of parameters, gradients and optimizer state this process holds (the largest over ranks),
        measured between a step's ``optimizer.step()`` and ``zero_grad``; every rank must call it."""
        import torch

        def local(t):  # a DTensor's own shard, a plain tensor itself
            return t.to_local() if hasattr(t, "to_local") else t

        params = list(model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        states = [v for s in optimizer.state.values() for k, v in s.items()  # AdamW: exp_avg, exp_avg_sq
                  if k != "step" and torch.is_tensor(v)]
        mine = {name: sum(local(t).numel() for t in ts)
                for name, ts in (("params", params), ("grads", grads), ("optimizer_state", states))}
        mine["bytes"] = sum(local(t).numel() * t.element_size() for t in [*params, *grads, *states])
        every = self.gather(mine)
        return {k: max(m[k] for m in every) for k in mine}

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        box = [None] * self.world
        dist.all_gather_object(box, obj)
        return box

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


def shard(model, amp_dtype=None):
    """FSDP2 in place: ``fully_shard`` on each decoder layer, then on the transformers model (embeddings, final
    norm, LM head; under a LoRA wrapper its base model, which peft's ``generate`` calls directly); with a
    bf16/fp16 ``amp_dtype`` the shards stay fp32, are all-gathered in that dtype, gradients reduced in fp32."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) if amp_dtype is not None \
        else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model.get_base_model() if is_peft(model) else model, mp_policy=policy)
    for m in model.modules():  # transformers' FSDP2 marker: generate() then runs in step on every rank (synced_gpus)
        if hasattr(m, "generate"):
            m._is_fsdp_managed_module = True
    return model


def decoder_layers(model) -> list:
    """The repeated blocks to shard one by one: the classes the model's ``_no_split_modules`` names (Llama,
    Mistral, Qwen: ``*DecoderLayer``), else every module whose class name ends in ``DecoderLayer``; none found:
    the root alone is sharded (correct, but all weights are gathered at once)."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    found = [m for m in model.modules()
             if type(m).__name__ in names or (not names and type(m).__name__.endswith("DecoderLayer"))]
    return [m for m in found if not any(o is not m and any(c is m for c in o.modules()) for o in found)]


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def strategy_of(strategy: str) -> str:
    """The strategy to run: ``trainer.strategy``, or fsdp under ``accelerate launch --use_fsdp`` (whose options
    ech0 does not do are refused); a DeepSpeed launch is refused."""
    from ech0.errors import UserError

    if strategy not in STRATEGIES:
        raise UserError(f"trainer.strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("true", "1"):  # would silently be DDP: say so
        raise UserError("accelerate launch --use_deepspeed: ech0 does not run DeepSpeed; use --use_fsdp or "
                        "trainer.strategy=fsdp (FSDP2) instead (README: More than one process or machine)")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("true", "1"):
        return strategy
    for var, done in ACCELERATE_FSDP:
        if os.environ.get(var, "").strip().upper() not in {d.upper() for d in done}:
            flag = "--" + var.lower()
            raise UserError(f"accelerate launch --use_fsdp {flag}={os.environ[var]}: ech0's FSDP2 does not do "
                            f"that; drop {flag} (README: FSDP2)")
    return "fsdp"


def init(device: str, strategy: str = "ddp") -> Dist:
    """Join the process group named by the environment (once per process); ``device`` becomes per-rank on CUDA.
    ``strategy`` (ddp | fsdp) is what :meth:`Dist.wrap` does with more than one process."""
    strategy = strategy_of(strategy)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device, strategy=strategy)
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
    return Dist(rank=rank, world=world, local_rank=local, device=device, strategy=strategy)


class Null:
    """Accepts any call and does nothing: the status writer of processes other than rank 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
