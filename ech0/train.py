"""Training entry point: compose the config, train, log, print a summary.

    python -m ech0.train +preset=lora                      # or: ech0 train +preset=lora
    python -m ech0.train +preset=full trainer.max_steps=50
    python -m ech0.train +preset=lora resume=true          # continue the newest unfinished run
    python -m ech0.train -m +preset=lora peft.r=4,8        # Hydra multirun sweep
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
def _run(cfg: DictConfig) -> None:
    from ech0.trainer.fit import fit

    quiet_libraries()
    print_summary(fit(cfg))


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
    _run()


if __name__ == "__main__":
    main()
