"""Data-parallel training under torchrun on CPU (gloo): one MLflow run, rank 0 writes, same result as one process."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ech0.config import compose
from ech0.context import Context

# fp32 pinned: where bf16 autocast is faster `auto` picks it, and then 2 processes and 1 differ by ~4e-4.
ARGS = ["+preset=lora", "trainer.precision=fp32", "trainer.max_steps=6", "trainer.checkpoint_every=3", "trainer.eval_every=0",
        "tracking.log_model=false", "tracking.log_system_metrics=false", "tracking.run_name=ddp-test"]
# Measured on the 2-core CI VM: |loss_after(2 processes) - loss_after(1 process)| = 7.7e-8 and adapter
# weights within 7.4e-7 of each other (float sums in another order), while every lora_B moved >= 1e-2
# from its zero init. The bounds leave 100x and 13x headroom.
LOSS_ATOL, WEIGHT_ATOL = 1e-5, 1e-5


@pytest.mark.slow  # three processes' imports, then the same job again in this one: 18 s on the fast CPUs
def test_torchrun_two_processes_match_one(tiny_model_dir, ech0_home, repo_root):
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from ech0.train.recipe import fit

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ech0.train", *ARGS]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Exactly one MLflow run (rank 1 opened none), finished, with one value per step.
    client = MlflowClient(f"sqlite:///{ech0_home / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ech0").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "ddp-test"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    loss_after = [m.value for m in client.get_metric_history(run.info.run_id, "eval/loss") if m.step == 6]
    assert len(loss_after) == 1

    # One run folder, written by rank 0: status, config, checkpoint, model.
    (run_dir,) = list((ech0_home / "models").iterdir())
    assert run_dir.name == run.info.run_id
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 6 and status["mlflow_run_id"] == run.info.run_id
    assert (run_dir / "checkpoints" / "step-0000003" / "state.json").exists() and (run_dir / "config.yaml").exists()

    # One summary and one progress bar (rank 0's).
    assert proc.stdout.count(f"  run      {run.info.run_id}") == 1 and proc.stdout.count("  run  ") == 1
    assert len(re.findall(r"ddp-test:\s+0%", proc.stderr)) == 1, proc.stderr[-3000:]

    # The same job in one process (tracking off: the store keeps its single run) ends in the same place.
    cfg = compose("train", [*ARGS, "trainer.progress=false", "tracking.enabled=false"])
    single = fit(cfg, Context.from_config(cfg))
    assert abs(single.loss_after - loss_after[0]) <= LOSS_ATOL, (single.loss_after, loss_after[0])
    assert abs(float(run.data.tags["ech0.loss_after"]) - single.loss_after) <= 1e-4  # the tag keeps 4 decimals
    ddp = load_file(str(run_dir / "model" / "adapter_model.safetensors"))
    one = load_file(str(single.run_dir / "model" / "adapter_model.safetensors"))
    assert ddp.keys() == one.keys() and any("lora_B" in k for k in ddp)
    for k in ddp:
        assert torch.allclose(ddp[k], one[k], rtol=0, atol=WEIGHT_ATOL), (k, (ddp[k] - one[k]).abs().max().item())
        if "lora_B" in k:  # initialised to zero: training moved every one of them
            assert ddp[k].abs().max().item() > 100 * WEIGHT_ATOL, k
