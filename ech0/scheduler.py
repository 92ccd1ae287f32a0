"""The seed's job command, kept as a shim: ``python -m ech0.scheduler [--launcher L] <stage> ARGS``.

    python -m ech0.scheduler eval --model-dir models/<run_id>       = python -m ech0.eval --model-dir models/<run_id>
    python -m ech0.scheduler train +preset=lora                     = python -m ech0.train +preset=lora
    python -m ech0.scheduler --launcher slurm train +preset=lora    = python -m ech0.train -m +launcher=slurm +preset=lora

Running stages as jobs is Hydra's launchers' work (``conf/launcher/{local,slurm}.yaml``, through
submitit, which keeps each job's logs and result); this module only forwards to the stage's own
command line. With ``--launcher local`` (the default: this machine, now) the stage runs in this
process and this command exits with the stage's code (eval: 0 gate passed, 1 gate failed, 2 usage
error). ``--launcher slurm`` submits training through Hydra's SLURM launcher (``ech0 train -m
+launcher=slurm``; for submitit's local launcher run ``ech0 train -m +launcher=local`` itself).
Evaluation is not a Hydra app: to evaluate on a cluster, run ``ech0 eval ...`` inside the job.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ech0.errors import UserError, cli_errors

ENTRY_POINTS = {"eval": "ech0.eval.cli", "train": "ech0.train.cli"}  # stage -> module whose main(argv) runs it
IN_PROCESS = "local"  # this machine, now: the stage's main() in this process
HYDRA_LAUNCHERS = {"slurm": "+launcher=slurm"}  # --launcher -> the override that picks conf/launcher/<name>.yaml


def forward(launcher: str, stage: str, args: list[str]) -> tuple[str, list[str]]:
    """(module, argv) that runs ``stage`` with ``args`` under ``launcher``; UserError for what cannot."""
    if launcher == IN_PROCESS:
        return ENTRY_POINTS[stage], list(args)
    if launcher not in HYDRA_LAUNCHERS:
        raise UserError(f"--launcher {launcher}: expected {IN_PROCESS} (default) or {', '.join(HYDRA_LAUNCHERS)}")
    if stage != "train":
        raise UserError(f"--launcher {launcher} {stage}: only training runs under a Hydra launcher; "
                        f"run `ech0 {stage} ...` inside the job instead")
    multirun = [] if {"-m", "--multirun"} & set(args) else ["-m"]
    return ENTRY_POINTS[stage], [*multirun, HYDRA_LAUNCHERS[launcher], *args]


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ech0.scheduler",
                                description="Forward to a stage's own command (ech0 eval, ech0 train); "
                                            "exits with the stage's code.")
    p.add_argument("--launcher", default=IN_PROCESS,
                   help=f"{IN_PROCESS} (default: in this process, now) or, for training, a Hydra launcher: "
                        f"{', '.join(HYDRA_LAUNCHERS)}")
    p.add_argument("stage", choices=sorted(ENTRY_POINTS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    module, stage_argv = forward(ns.launcher, ns.stage, ns.args)
    return importlib.import_module(module).main(stage_argv) or 0


if __name__ == "__main__":
    sys.exit(main())
