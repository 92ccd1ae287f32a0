"""The training stage on the tiny local model: real steps, a real SQLite MLflow store, offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from pathlib import Path

import pytest
from ech0.config import compose
from ech0.context import Context
from ech0.errors import UserError


def train_cfg(*overrides: str):
    return compose("train", ["+preset=lora", "trainer.progress=false", *overrides])


def _base_state(cfg, base_dir):
    import torch
    from hydra.utils import instantiate

    from ech0.models import load_model

    torch.manual_seed(cfg.seed)
    return load_model(str(base_dir)), instantiate(cfg.peft, model=load_model(str(base_dir)))


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from ech0.train.recipe import fit

    home = tmp_path_factory.mktemp("lora-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECH0_HOME", str(home))
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        mp.setenv("MLFLOW_TRACKING_URI", "unset")
        mp.delenv("MLFLOW_TRACKING_URI")
        cfg = train_cfg("trainer.max_steps=60", "trainer.checkpoint_every=20", "trainer.eval_every=20")
        yield cfg, fit(cfg, Context.from_config(cfg)), home


def _options(group: str) -> list[str]:
    from ech0.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("preset", _options("preset"))
@pytest.mark.parametrize("model", _options("model"))
@pytest.mark.parametrize("peft", _options("peft"))
def test_every_preset_model_and_peft_composes(preset, model, peft):
    """Every combination composes into the typed schema; a preset's own peft choice wins unless overridden."""
    from hydra.utils import get_method

    cfg = compose("train", [f"+preset={preset}", f"model={model}"])
    assert cfg.preset == preset and cfg.model.name_or_path and cfg.trainer.max_steps > 0
    get_method(cfg.peft._target_)  # the adapter builder the preset names exists
    if cfg.peft._target_.endswith(".lora"):
        assert cfg.peft.lora_alpha == 2 * cfg.peft.r, "alpha = 2r, as every preset's comment says"
    try:
        cfg = compose("train", [f"+preset={preset}", f"model={model}", f"peft={peft}"])
    except UserError as e:  # the preset tunes the other adapter's keys: refused in one line that names the key
        assert "(key: peft." in str(e) and "\n" not in str(e), e
        return
    assert cfg.peft._target_.rsplit(".", 1)[-1] == {"lora": "lora", "none": "full"}[peft]


def test_lora_learns_and_only_adapter_weights_move(lora_run, tiny_model_dir):
    import torch

    cfg, result, _ = lora_run
    assert result.loss_after < 0.7 * result.loss_before, (result.loss_before, result.loss_after)
    base, fresh = _base_state(cfg, tiny_model_dir)
    trained = dict(result.model.named_parameters())
    init = dict(fresh.named_parameters())
    lora_names = [n for n in trained if "lora_" in n]
    assert lora_names and all(trained[n].requires_grad for n in lora_names)
    assert all(not torch.equal(trained[n], init[n]) for n in lora_names), "every LoRA matrix changed"
    base_params = dict(base.named_parameters())
    for n, p in trained.items():
        if "lora_" in n:
            continue
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p, base_params[key]), f"base weight {key} changed"


def test_full_preset_changes_base_weights(tiny_model_dir):
    import torch

    from ech0.models import load_model
    from ech0.train.recipe import fit

    cfg = compose("train", ["+preset=full", "trainer.progress=false", "trainer.max_steps=4",
                            "tracking.log_model=false", "tracking.log_system_metrics=false"])
    result = fit(cfg, Context.from_config(cfg))
    base = dict(load_model(str(tiny_model_dir)).named_parameters())
    trained = dict(result.model.named_parameters())
    changed = [n for n in base if not torch.equal(base[n], trained[n])]
    assert len(changed) == len(base), f"unchanged: {set(base) - set(changed)}"
    assert (result.run_dir / "model" / "model.safetensors").exists()


def test_mlflow_run_has_everything(lora_run):
    from mlflow.tracking import MlflowClient

    cfg, result, home = lora_run
    client = MlflowClient(result.tracking_uri)
    assert result.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("lora-")
    p = run.data.params
    assert p["trainer.learning_rate"] == str(cfg.trainer.learning_rate) and p["peft.r"] == "16"
    assert p["preset"] == "lora" and "derived.precision" in p
    for key in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_sec", "eval/loss"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 60
    assert [m.step for m in client.get_metric_history(result.run_id, "eval/loss")] == [0, 20, 40, 60]
    assert any(k.startswith("system/") for k in run.data.metrics), "system metrics logged"
    t = run.data.tags
    assert t["ech0.preset"] == "lora" and len(t["ech0.base_model_hash"]) == 64 and "ech0.git_dirty" in t
    assert t["mlflow.source.git.commit"] == t["ech0.git_commit"]
    assert t["ech0.loss_measured_on"] == "held-out"
    arts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for d in ("plots", "config") for a in client.list_artifacts(result.run_id, d)}
    assert {"plots/loss_curve.png", "config/resolved.yaml", "config/config.yaml"} <= arts
    inputs = run.inputs.dataset_inputs
    by_context = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i for i in inputs}
    from ech0.io import sha256_file

    assert by_context["training"].dataset.digest == sha256_file(cfg.data.train_file)[:36]
    assert by_context["eval"].dataset.name == "sample-eval"
    assert json.loads(by_context["training"].dataset.profile)["num_rows"] == 284
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 60 and status["mlflow_run_id"] == result.run_id
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "loss_curve.png").stat().st_size > 5000


def test_logged_model_loads_offline_and_matches_in_process(lora_run, tiny_model_dir):
    from ech0.generation import generate
    from ech0.models import load_model, load_tokenizer

    cfg, result, home = lora_run
    prompts = ["What color is the sky?", "What is the opposite of hot?", "Echo this: the warm cat sees the hill", "Count to four."]
    expected = generate(result.model, result.tokenizer, prompts, max_new_tokens=24)
    base_out = generate(load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)), prompts,
                        max_new_tokens=24)
    assert expected != base_out, "the fine-tuned model must differ from its base"
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('runs:/{result.run_id}/model')\n"
        f"print(json.dumps(list(m.predict(pd.DataFrame({{'prompt': {prompts!r}}}), params={{'max_new_tokens': 24}}))))\n"
    )
    # A fresh process: the logged adapter finds its base by the recorded folder and content hash.
    env = {**os.environ, "MLFLOW_TRACKING_URI": result.tracking_uri, "HF_HUB_OFFLINE": "1",
           "ECH0_BASE_MODELS_DIR": str(home / "empty-cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
    assert not (home / "empty-cache").exists(), "loading must not rebuild the base model"
    import mlflow.artifacts

    mlflow.set_tracking_uri(result.tracking_uri)  # runs:/…/model resolves its logged model through the global store
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/model", dst_path=str(home / "dl"),
                                                      tracking_uri=result.tracking_uri))
    logged = sorted(p.name for p in (local / "artifacts").iterdir())
    assert logged == ["model"], f"no copy of the base weights in the logged model: {logged}"


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tiny_model_dir, ech0_home, repo_root, run_cli, wait_for,
                                                   hold_at_step):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    # fp32 pinned: the comparison is exact to 1e-6, whichever precision `auto` would pick on this CPU.
    args = ["ech0.train", "+preset=lora", "trainer.max_steps=30", "trainer.checkpoint_every=10", "trainer.eval_every=0",
            "trainer.precision=fp32", "trainer.progress=false", "tracking.log_model=false",
            "tracking.log_system_metrics=false"]
    hold, held = hold_at_step(13)  # held after step 13: past the step-10 checkpoint, 3 steps to redo
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=repo_root, env={**os.environ, **hold},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    models = ech0_home / "models"
    assert wait_for(held.exists, 240, proc), "the run never reached step 13"
    assert list(models.glob("*/checkpoints/step-0000010/state.json")), "no checkpoint at step 10"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = list(models.iterdir())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    resumed = run_cli(*args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    straight = run_cli(*args)
    assert straight.returncode == 0, straight.stderr[-2000:]
    (other,) = [d for d in models.iterdir() if d != run_dir]
    a = load_file(str(run_dir / "model" / "adapter_model.safetensors"))
    b = load_file(str(other / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    client = MlflowClient(f"sqlite:///{ech0_home / 'mlflow.db'}")
    assert len(client.search_runs(client.get_experiment_by_name("ech0").experiment_id)) == 2, "resume reuses the run"
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == 30
