"""Packaging: a hashed, self-contained folder that peft/transformers and MLflow load; verify; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ech0.registry import history as hist, store as rstore
from ech0.registry.package import MANIFEST, package, verify

PROMPTS = ["What is the opposite of day?", "Echo this: the soft cat counts the tree"]


@pytest.fixture(scope="module")
def packaged(trained_run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packages")
    return package(trained_run.ctx, "from-run", run_dir=trained_run.run_dir, root=root)


def test_package_loads_with_peft_and_mlflow_and_matches_training(packaged, trained_run):
    import mlflow.pyfunc
    import pandas as pd
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ech0.generation import generate

    man = json.loads((packaged / MANIFEST).read_text())
    assert man["source"]["run_id"] == trained_run.run_id and man["adapter_dir"] and man["base_dir"]
    assert {"MLmodel", f"{man['adapter_dir']}/adapter_config.json", f"{man['adapter_dir']}/tokenizer.json",
            f"{man['base_dir']}/model.safetensors"} <= set(man["files"])
    assert all(len(f["sha256"]) == 64 for f in man["files"].values())
    expected = generate(trained_run.model, trained_run.tokenizer, PROMPTS, max_new_tokens=12)

    tok = AutoTokenizer.from_pretrained(packaged / man["adapter_dir"])
    base = AutoModelForCausalLM.from_pretrained(packaged / man["base_dir"])
    model = PeftModel.from_pretrained(base, packaged / man["adapter_dir"])
    assert generate(model, tok, PROMPTS, max_new_tokens=12) == expected

    pyfunc = mlflow.pyfunc.load_model(str(packaged))
    assert pyfunc.predict(pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 12}) == expected
    assert verify(packaged) == []


def test_verify_detects_tampering_and_package_refuses_overwrite_and_escape(packaged, trained_run, tmp_path, registry_cli):
    import shutil

    copy = tmp_path / "root" / "pkg"
    shutil.copytree(packaged, copy)
    code, out, _ = registry_cli("verify", str(copy))
    assert code == 0 and out.strip().endswith("OK")
    man = json.loads((copy / MANIFEST).read_text())
    weights = copy / man["adapter_dir"] / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    (copy / "extra.txt").write_text("x")
    (copy / man["adapter_dir"] / "tokenizer_config.json").unlink()
    code, out, _ = registry_cli("verify", str(copy))
    assert code == 1
    assert f"changed: {man['adapter_dir']}/adapter_model.safetensors" in out
    assert "unexpected: extra.txt" in out and f"missing: {man['adapter_dir']}/tokenizer_config.json" in out

    root = str(tmp_path / "root")
    code, _, err = registry_cli("package", "--run-dir", str(trained_run.run_dir), "--root", root, "--dest", "pkg")
    assert code == 2 and "exists; pass --force" in err
    for dest in ("../outside", "a/../../outside", str(tmp_path / "elsewhere"), "."):
        code, _, err = registry_cli("package", "--run-dir", str(trained_run.run_dir), "--root", root, "--dest", dest)
        assert code == 2 and "outside" in err, (dest, err)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "elsewhere").exists()
    code, _, err = registry_cli("verify", str(tmp_path / "nope"))
    assert code == 2 and "not an ech0 package" in err
    code, _, err = registry_cli("package", "--run-dir", str(tmp_path / "nope"), "--root", root, "--dest", "p2")
    assert code == 2 and "run folder not found" in err


def test_package_by_alias_and_force_replace(store, model_name, tmp_path, registry_cli):
    rstore.register(store.ctx, store.runs["passed"], name=model_name)
    hist.promote(store.ctx, version="1", name=model_name)
    args = ["package", "--alias", "production", "--dest", "prod", "--root", str(tmp_path), "--name", model_name,
            "--tracking-uri", store.uri]
    code, out, err = registry_cli(*args)
    assert code == 0, err
    man = json.loads((tmp_path / "prod" / MANIFEST).read_text())
    assert man["source"] | {"version": "1", "alias": "production", "run_id": store.runs["passed"]} == man["source"]
    assert verify(tmp_path / "prod") == []
    (tmp_path / "prod" / "MLmodel").write_text("tampered")
    code, _, err = registry_cli(*args)
    assert code == 2 and "--force" in err
    code, _, err = registry_cli(*args, "--force")
    assert code == 0, err
    assert verify(tmp_path / "prod") == [] and not list(tmp_path.glob(".prod*"))  # no temp folders left
