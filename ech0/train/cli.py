"""``ech0 train`` (= ``python -m ech0.train``): compose the config, train, print a summary.

    python -m ech0.train +preset=lora                      # or: ech0 train +preset=lora
    python -m ech0.train +preset=full trainer.max_steps=50
    python -m ech0.train +preset=lora resume=true          # continue the newest unfinished run
    python -m ech0.train -m +preset=lora peft.r=4,8        # Hydra multirun sweep (see ech0/sweep.py)
    python -m ech0.train -m +preset=lora +launcher=slurm hydra.launcher.partition=gpu peft.r=4,8
    python -m ech0.train -m +preset=lora +sweep=optuna     # Optuna minimises the held-out loss
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ech0 import config
from ech0.errors import cli_errors


@hydra.main(config_path=str(config.CONF_DIR), config_name="train", version_base="1.3")
@cli_errors
def _run(cfg: DictConfig) -> float:
    from ech0 import sweep
    from ech0.cli_common import quiet_libraries
    from ech0.context import Context
    from ech0.train.recipe import fit

    quiet_libraries()
    cfg = sweep.job_config(cfg)  # in a multirun: nested under the sweep's parent run, named by its overrides
    result = fit(cfg, Context.from_config(cfg))
    if result.rank == 0:  # torchrun's other processes: rank 0 prints the one summary
        print(summary(result))
    return result.loss_after  # the objective a sweeper (Optuna) minimises


def summary(result) -> str:
    measured = "held-out" if result.heldout else "training rows: no eval file"
    return "\n".join(["",
                      f"  run      {result.run_id}",
                      f"  tracking {result.tracking_uri}",
                      f"  model    {result.run_dir / 'model'}",
                      f"  loss     {result.loss_before:.4f} -> {result.loss_after:.4f} (completion loss on {measured})",
                      f"  time     {result.wall_seconds:.1f}s for {result.steps} steps",
                      f"  see it   mlflow ui --backend-store-uri {result.tracking_uri}"])


def main(argv: list[str] | None = None) -> None:
    argv = config.expand_overrides(list(sys.argv[1:] if argv is None else argv))
    config.compose_or_exit("train", argv)  # one-line error + exit 2 on a bad override, before torch loads
    sys.argv = [sys.argv[0], *argv]
    try:
        _run()
    except BaseException as e:  # a sweep stopped by a failed job, an error or Ctrl-C: end its parent run too
        sweep = sys.modules.get("ech0.sweep")
        if sweep is not None:
            sweep.abort("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
