"""Training entry point: compose the config, train, log, print a summary.

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
from ech0.cli_common import compose_or_exit, print_summary, quiet_libraries
from ech0.errors import cli_errors


@hydra.main(config_path=str(config.CONF_DIR), config_name="train", version_base="1.3")
@cli_errors
def _run(cfg: DictConfig) -> float:
    from ech0 import sweep
    from ech0.trainer.fit import fit

    quiet_libraries()
    result = fit(sweep.job_config(cfg))  # in a multirun: nested under the sweep's parent run, named by its overrides
    print_summary(result)
    return result.loss_after  # held-out loss: the objective a sweeper (Optuna) minimises


def expand_overrides(argv: list[str]) -> list[str]:
    """``--overrides "a=1 b=2"`` (how MLproject passes a list: one quoted parameter) -> ``a=1 b=2``."""
    import shlex

    out, it = [], iter(argv)
    for arg in it:
        if arg == "--overrides":
            out += shlex.split(next(it, ""))
        elif arg.startswith("--overrides="):
            out += shlex.split(arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = expand_overrides(list(sys.argv[1:] if argv is None else argv))
    compose_or_exit("train", argv)  # one-line error + exit 2 on a bad override, before torch loads
    sys.argv = [sys.argv[0], *argv]
    try:
        _run()
    except BaseException as e:  # a sweep stopped by a failed job, an error or Ctrl-C: end its parent run too
        sweep = sys.modules.get("ech0.sweep")
        if sweep is not None:
            sweep.abort("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


if __name__ == "__main__":
    main()
