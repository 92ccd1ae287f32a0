"""FSDP2 under torchrun on CPU (gloo): a sharded full fine-tune, one MLflow run, the one-process result, resumable.

Two gloo processes train ``+preset=full trainer.strategy=fsdp`` on the tiny Llama in fp32, with
``grad_accum=2`` (the gradient reduce-scatter waits for a step's last micro-batch) and clipping on
every step (the tiny model's gradient norm is ~10, ``max_grad_norm`` 1). The run is compared with the
same job in one process, its model folder is loaded and registered as any other, and a copy of it is
SIGKILLed after step 5, one shard of its newest checkpoint bit-rotten, and resumed under torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ech0.config import compose
from ech0.context import Context

ARGS = ["+preset=full", "trainer.precision=fp32", "trainer.max_steps=6", "trainer.checkpoint_every=2",
        "trainer.grad_accum=2", "trainer.eval_every=0", "trainer.progress=false", "tracking.log_system_metrics=false"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ech0.train",
            "trainer.strategy=fsdp", *ARGS]
# Measured on the 2-core VM: |loss_after(2 fsdp processes) - loss_after(1 process)| = 2.6e-7 and every weight
# within 1.8e-7 of the other run's (float sums in another order; DDP measures the same 1.8e-7), while training
# moved every tensor by >= 2e-3. A resumed fsdp run ends exactly (0.0) on the straight fsdp run's weights.
LOSS_ATOL, WEIGHT_ATOL, RESUME_ATOL = 1e-5, 1e-5, 1e-6


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= atol, (k, (a[k] - b[k]).abs().max().item())


@pytest.fixture(scope="module")
def fsdp_run(tiny_model_dir, tmp_path_factory, repo_root):
    """One finished 2-process fsdp run with its models logged: (home, proc, client, run, run_dir)."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("fsdp") / "home"
    proc = subprocess.run([*TORCHRUN, "tracking.run_name=fsdp-test"], cwd=repo_root, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "ECH0_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ech0").experiment_id])
    (run_dir,) = list((home / "models").iterdir())
    return SimpleNamespace(home=home, proc=proc, client=client, run=run, run_dir=run_dir)


@pytest.mark.slow
def test_fsdp_two_processes_match_one(fsdp_run, tiny_model_dir):
    from ech0.train.recipe import fit

    run, client, run_dir = fsdp_run.run, fsdp_run.client, fsdp_run.run_dir
    assert run.info.status == "FINISHED" and run.info.run_name == "fsdp-test" and run_dir.name == run.info.run_id
    assert run.data.params["trainer.strategy"] == "fsdp"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 6
    assert fsdp_run.proc.stdout.count(f"  run      {run.info.run_id}") == 1, "rank 0 alone prints the summary"

    cfg = compose("train", [*ARGS, "tracking.enabled=false"])
    single = fit(cfg, Context.from_config(cfg))
    (loss_after,) = [m.value for m in client.get_metric_history(run.info.run_id, "eval/loss") if m.step == 6]
    assert abs(single.loss_after - loss_after) <= LOSS_ATOL, (single.loss_after, loss_after)
    sharded, one = _weights(run_dir / "model"), _weights(single.run_dir / "model")
    _assert_close(sharded, one, WEIGHT_ATOL)
    base = _weights(tiny_model_dir)
    assert min((sharded[k] - base[k]).abs().max().item() for k in base) > 100 * WEIGHT_ATOL, "every tensor trained"
    # the same ordinary HF folder as a one-process run writes (the tied LM head saved once, as transformers does)
    names = [sorted(p.name for p in (d / "model").iterdir()) for d in (run_dir, single.run_dir)]
    assert names[0] == names[1]


@pytest.mark.slow
def test_each_rank_holds_half_of_weights_gradients_and_adamw_state(fsdp_run):
    metrics, params = fsdp_run.run.data.metrics, int(fsdp_run.run.data.params["derived.params"])
    held = {k: metrics[f"dist/{k}_per_rank"] for k in ("params", "grads", "optimizer_state")}
    # the largest rank's share: half, plus at most one padded row per sharded tensor (dim 0 split in 2)
    assert params / 2 <= held["params"] <= params / 2 * 1.01, (held, params)
    assert held["grads"] == held["params"] and held["optimizer_state"] == 2 * held["params"]  # AdamW: 2 moments
    assert metrics["dist/params_share"] == pytest.approx(0.5, abs=0.005)
    assert metrics["dist/state_mb_per_rank"] == pytest.approx(4 * 4 * held["params"] / 2**20)  # fp32: 4 x 4 bytes


@pytest.mark.slow
def test_logged_and_registered_model_is_an_ordinary_hf_folder(fsdp_run):
    import mlflow
    from transformers import AutoModelForCausalLM

    from ech0.io import sha256_file
    from ech0.registry.store import register

    run_dir, run_id = fsdp_run.run_dir, fsdp_run.run.info.run_id
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "still tied"
    saved = _weights(run_dir / "model")
    for k, v in model.state_dict().items():
        assert k == "lm_head.weight" or (v == saved[k]).all(), k
    exp = fsdp_run.run.info.experiment_id
    logged = {m.name for m in fsdp_run.client.search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")}
    assert logged == {"checkpoint-2", "checkpoint-4", "model"}
    # each checkpoint's logged folder holds that step's whole weights, gathered from the shards
    for step in (2, 4):
        assert (run_dir / "checkpoints" / f"step-{step:07d}" / "model" / "model.safetensors").is_file()

    ctx = Context.from_env(home=fsdp_run.home)
    version = register(ctx, run_id)
    source = Path(mlflow.artifacts.download_artifacts(
        fsdp_run.client.get_model_version(version.name, version.version).source,
        dst_path=str(fsdp_run.home.parent / "registered"), tracking_uri=ctx.tracking_uri))
    (weights,) = list(source.rglob("model.safetensors"))
    assert sha256_file(weights) == sha256_file(run_dir / "model" / "model.safetensors")
    AutoModelForCausalLM.from_pretrained(weights.parent)


@pytest.mark.slow
def test_sharded_checkpoint_loads_into_one_process(fsdp_run, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from ech0.train import checkpoint
    from ech0.train.loop import make_scheduler

    folder = fsdp_run.run_dir / "checkpoints"
    ckpt = folder / "step-0000004"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["shards"] == 2
    assert {n for n in state["files"] if n.startswith("shards/")} == \
        {"shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp"}, "each rank wrote its shard"
    assert checkpoint.problem(ckpt) is None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = make_scheduler(optimizer, "cosine", 10, 6)
    assert checkpoint.load_latest(folder, model, optimizer, scheduler)["step"] == 4
    assert scheduler.last_epoch == 4 and len(optimizer.state) == len(list(model.parameters()))
    step4 = _weights(ckpt / "model")
    for k, v in model.state_dict().items():
        assert k == "lm_head.weight" or torch.equal(v, step4[k]), k


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and both of its workers (each in a session of its own): the whole job dies at once."""
    import psutil

    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for w in workers:
        w.kill()
    psutil.wait_procs(workers, timeout=60)


@pytest.mark.slow
def test_sigkill_then_resume_with_a_bad_shard_ends_like_the_straight_run(fsdp_run, ech0_home, repo_root, wait_for,
                                                                        hold_at_step):
    from ech0.train import checkpoint

    env, flag = hold_at_step(5)  # rank 0 holds after step 5; rank 1 waits in step 6's first all-gather
    job = subprocess.Popen([*TORCHRUN, "tracking.log_model=false"], cwd=repo_root, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "ECH0_HOME": str(ech0_home), **env})
    try:
        assert wait_for(flag.exists, 600, job), "the run was never held at step 5"
    finally:
        _kill_job(job)
    (run_dir,) = list((ech0_home / "models").iterdir())
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000002", "step-0000004"]
    bad = folder / "step-0000004" / "shards" / "__1_0.distcp"  # verified by rank 1: each rank hashes a share
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))

    resumed = subprocess.run([*TORCHRUN, "tracking.log_model=false", "resume=true"], cwd=repo_root, text=True,
                             capture_output=True, timeout=600, env={**os.environ, "ECH0_HOME": str(ech0_home)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in resumed.stderr.splitlines() if "checkpoint skipped" in line]
    assert said == [f"checkpoint skipped: {bad}: sha256 differs from state.json (corrupted); resuming from "
                    f"{folder / 'step-0000002'}"], resumed.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    assert checkpoint.problem(folder / "step-0000004") is None, "the redone step 4 wrote a new, intact checkpoint"
    assert not list(folder.glob(".*")), "no hidden leftover"
    _assert_close(_weights(run_dir / "model"), _weights(fsdp_run.run_dir / "model"), RESUME_ATOL)


def test_strategy_and_accelerate_fsdp_flags(monkeypatch):
    from ech0.errors import UserError
    from ech0.train.distributed import init, strategy_of

    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_OFFLOAD_PARAMS", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert strategy_of("ddp") == "ddp" and strategy_of("fsdp") == "fsdp"
    with pytest.raises(UserError, match=r"trainer.strategy='zero3': expected one of ddp, fsdp"):
        strategy_of("zero3")
    one = init("cpu", "fsdp")
    assert one.world == 1 and one.strategy == "fsdp" and not one.sharded, "one process ignores the strategy"
    # accelerate launch --use_fsdp (with its defaults) is ech0's fsdp, whatever trainer.strategy says
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "false")
    assert strategy_of("ddp") == "fsdp"
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")  # what ech0 does not do is refused, not ignored
    with pytest.raises(UserError, match=r"--use_fsdp --fsdp_offload_params=true: ech0's FSDP2 does not do that"):
        strategy_of("ddp")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match="--use_deepspeed: ech0 does not run DeepSpeed"):
        strategy_of("fsdp")


def test_decoder_layers_are_found_in_plain_and_lora_models(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ech0.train.distributed import decoder_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert decoder_layers(model) == list(model.model.layers)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert decoder_layers(lora) == list(lora.get_base_model().model.layers)


@pytest.mark.slow
def test_memory_benchmark_quick_reports_each_rank(tmp_path, run_cli):
    out = tmp_path / "fm.json"
    proc = run_cli("benchmarks.fsdp_memory", "--quick", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for strategy in ("ddp", "fsdp"):
        res = r["results"][strategy]
        assert len(res["peak_rss_mb"]) == 2
        assert all(p > f > 0 for p, f in zip(res["peak_rss_mb"], res["rss_before_training_mb"]))
        assert set(res["phase_peak_rss_mb"][0]) == {"load_and_wrap", "step_loop", "save_model"}
    assert r["state_fsdp_over_ddp"] == pytest.approx(0.5, abs=0.005) and abs(r["loss_after_fsdp_minus_ddp"]) <= 1e-5
