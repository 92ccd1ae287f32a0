"""Merged export: a standalone Hugging Face folder that loads without peft and answers as the adapter model does.

The exported folder is loaded in a subprocess where ``peft`` cannot be imported (a meta-path blocker
and ``sys.modules["peft"] = None``, installed before transformers is imported) and greedy decoding
there, stopped only by the folder's own ``generation_config.json``, must give the adapter model's
tokens one for one (fp32).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ech0.registry import history as hist, store as rstore
from ech0.registry.export import MANIFEST, SUMS, export

PROMPTS = ["What is the opposite of day?", "Echo this: the soft cat counts the tree", "What color is snow?"]

# Runs in a fresh interpreter: nothing of peft may be importable, then the folder alone is loaded.
NO_PEFT = r'''
import importlib.abc, importlib.util, json, sys

class NoPeft(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "peft" or name.startswith("peft."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NoPeft())
sys.modules["peft"] = None  # importlib.util.find_spec("peft") -> None: transformers sees no peft installed
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import is_peft_available

folder, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
out = []
for p in prompts:
    text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():  # greedy; stops at generation_config.json's eos_token_id, nothing passed here
        gen = model.generate(**enc, max_new_tokens=n)
    out.append(gen[0, enc["input_ids"].shape[1]:].tolist())
try:
    import peft  # noqa: F401
    importable = True
except ImportError:
    importable = False
print(json.dumps({"ids": out, "peft_importable": importable, "peft_available": is_peft_available(),
                  "peft_modules": sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "peft" and v),
                  "dtype": str(next(model.parameters()).dtype), "class": type(model).__name__}))
'''


def no_peft_greedy(folder: Path, prompts: list[str], max_new_tokens: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", NO_PEFT, str(folder), json.dumps(prompts), str(max_new_tokens)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["peft_importable"] is False and got["peft_available"] is False and got["peft_modules"] == []
    assert got["dtype"] == "torch.float32" and "Peft" not in got["class"]
    return got


def adapter_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """The adapter model's greedy tokens, prompted as ech0 prompts it and stopped at ech0's stop tokens."""
    import torch

    from ech0.chat import prompt_ids
    from ech0.generation import stop_ids

    out = []
    model.eval()
    for p in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, p)])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                 max_new_tokens=max_new_tokens, eos_token_id=stop_ids(tokenizer),
                                 pad_token_id=tokenizer.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def check_folder(folder: Path, model_dir: Path) -> dict:
    """The export's files, manifest and hashes; returns the manifest."""
    from transformers import AutoTokenizer, GenerationConfig

    from ech0.chat import end_of_turn_id
    from ech0.io import sha256_file
    from ech0.model_folder import read_meta

    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", MANIFEST, SUMS} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "ech0_model.json"}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # plain float weights
    man = json.loads((folder / MANIFEST).read_text())
    meta = read_meta(model_dir)
    assert man["base_model"]["sha256"] == meta["base_model_hash"] and man["dtype"] == "float32"
    if man["source"]["kind"] == "run_dir":  # a registered version names its own run (the tests log copies)
        assert man["source"]["run_id"] == meta["run_id"]
    assert man["files"] and all(man["files"][rel]["sha256"] == sha256_file(folder / rel) for rel in man["files"])
    check = subprocess.run(["sha256sum", "--strict", "-c", SUMS], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(man["files"]) + 1, check.stdout + check.stderr

    trained_tok = AutoTokenizer.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == trained_tok.chat_template and tok.chat_template  # exactly the template training used
    eot = end_of_turn_id(trained_tok)
    gc = GenerationConfig.from_pretrained(folder)
    assert gc.eos_token_id == eot and man["end_of_turn"]["id"] == eot
    return man


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    from ech0.registry.cli import main

    dest = tmp_path_factory.mktemp("exports") / "merged"
    main(["export", "--run-dir", str(trained_run.run_dir), "--merged", "--dest", str(dest)])  # exits only on error
    return dest


def test_merged_export_loads_without_peft_and_equals_the_adapter_model(exported, trained_run):
    import torch
    from transformers import AutoModelForCausalLM

    from ech0.chat import end_of_turn_id
    from ech0.model_folder import load_trained, read_meta
    from ech0.models import load_model

    model_dir = trained_run.run_dir / "model"
    man = check_folder(exported, model_dir)
    assert man["merged"] is True and man["source"]["kind"] == "run_dir"
    adapter, tok, _ = load_trained(model_dir)
    expected = adapter_greedy(adapter, tok, PROMPTS, 24)
    got = no_peft_greedy(exported, PROMPTS, 24)
    assert got["ids"] == expected
    eot = end_of_turn_id(tok)
    assert any(seq and seq[-1] == eot for seq in expected)  # the folder's generation config ended those turns

    # the merge matters: the base alone answers differently, the merged weights match the adapter's logits
    ids = torch.tensor([tok("the soft cat counts the tree")["input_ids"]])
    with torch.inference_mode():
        want = adapter(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(exported)(ids).logits
        base = load_model(read_meta(model_dir)["base_model"])(ids).logits
    assert (base - want).abs().max() > 1e-2
    assert torch.allclose(merged, want, atol=1e-4), (merged - want).abs().max()


def test_export_refuses_to_overwrite_and_force_replaces_only_an_export(exported, trained_run, tmp_path, registry_cli):
    import shutil

    run = str(trained_run.run_dir)
    before = (exported / SUMS).read_text()
    code, _, err = registry_cli("export", "--run-dir", run, "--merged", "--dest", str(exported))
    assert code == 2 and "exists; pass --force" in err and len(err.strip().splitlines()) == 1

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = registry_cli("export", "--run-dir", run, "--merged", "--dest", str(other), "--force")
    assert code == 2 and "not an ech0 export" in err and (other / "keep.txt").read_text() == "mine"

    for args, needle in ((["--dest", str(tmp_path / "a")], "pass --merged"),
                         (["--merged", "--dest", str(tmp_path / "a"), "--format", "gguf"], "convert_hf_to_gguf.py"),
                         (["--merged", "--dest", str(tmp_path / "a"), "--run-dir", str(tmp_path / "nope")],
                          "run folder not found")):
        argv = ["export", *args] if "--run-dir" in args else ["export", "--run-dir", run, *args]
        code, _, err = registry_cli(*argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "a").exists()

    # a damaged adapter fails with one line, and the export it was to replace is left as it was
    broken = tmp_path / "broken-run"
    shutil.copytree(trained_run.run_dir / "model", broken / "model")
    weights = broken / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = registry_cli("export", "--run-dir", str(broken), "--merged", "--dest", str(exported), "--force")
    assert code == 2 and "cannot load the trained model" in err and len(err.strip().splitlines()) == 1, err
    assert (exported / SUMS).read_text() == before
    assert not [p.name for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folders left

    code, out, err = registry_cli("export", "--run-dir", run, "--merged", "--dest", str(exported), "--force")
    assert code == 0 and "exported ->" in out, err
    check_folder(exported, trained_run.run_dir / "model")
    assert not [p.name for p in exported.parent.iterdir() if p.name.startswith(".")]


def test_export_by_alias_records_the_version_and_equals_the_served_model(store, model_name, tmp_path, registry_cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ech0.generation import generate

    source = store.source
    rstore.register(store.ctx, store.runs["passed"], name=model_name)
    hist.promote(store.ctx, version="1", name=model_name)
    dest = tmp_path / "prod-merged"
    code, out, err = registry_cli("export", "--alias", "production", "--merged", "--dest", str(dest),
                                  "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0, err
    man = check_folder(dest, source.run_dir / "model")
    assert man["source"] | {"kind": "registry", "name": model_name, "version": "1", "alias": "production",
                            "run_id": store.runs["passed"], "gate": "passed"} == man["source"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the download was removed
    model = AutoModelForCausalLM.from_pretrained(dest)
    tok = AutoTokenizer.from_pretrained(dest)
    assert generate(model, tok, PROMPTS, max_new_tokens=16) == generate(source.model, source.tokenizer, PROMPTS,
                                                                        max_new_tokens=16)
    code, _, err = registry_cli("export", "--alias", "staging", "--merged", "--dest", str(tmp_path / "s"),
                                "--name", model_name, "--tracking-uri", store.uri)
    assert code == 2 and "staging" in err and not (tmp_path / "s").exists()


def test_full_finetune_exports_its_own_weights(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import fit

    cfg = compose("train", ["+preset=full", "trainer.max_steps=2", "trainer.eval_every=0", "trainer.progress=false",
                            "trainer.checkpoint_every=0", "tracking.log_model=false",
                            "tracking.log_system_metrics=false", "trainer.precision=fp32"])
    ctx = Context.from_config(cfg)
    result = fit(cfg, ctx)
    model_dir = result.run_dir / "model"
    dest = export(ctx, tmp_path / "full", run_dir=result.run_dir)
    man = check_folder(dest, model_dir)
    assert man["merged"] is False and man["preset"] == "full"
    trained, exported = load_file(model_dir / "model.safetensors"), load_file(dest / "model.safetensors")
    assert trained.keys() == exported.keys() and all(torch.equal(trained[k], exported[k]) for k in trained)
    assert no_peft_greedy(dest, PROMPTS[:2], 16)["ids"] == adapter_greedy(result.model, result.tokenizer,
                                                                          PROMPTS[:2], 16)


@pytest.mark.slow
def test_smollm2_merged_export_equals_the_adapter_model(smollm2_dir, tmp_path):
    """SmolLM2-135M-Instruct with a LoRA whose B matrices are random (non-zero), so the merge changes weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ech0.context import Context
    from ech0.model_folder import load_trained, save_trained
    from ech0.models import content_hash, load_model, load_tokenizer

    base_dir = str(smollm2_dir)
    tok = load_tokenizer(base_dir)
    model = get_peft_model(load_model(base_dir), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    run_dir = tmp_path / "smollm2-run"
    save_trained(run_dir / "model", model, tok, {
        "base_model": base_dir, "base_model_spec": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "base_model_hash": content_hash(base_dir), "dtype": "float32", "run_id": "smollm2-random-lora",
        "preset": "lora", "train_on": "assistant"})
    dest = export(Context.from_env(home=tmp_path), tmp_path / "smollm2-merged", run_dir=run_dir)
    man = check_folder(dest, run_dir / "model")
    assert man["end_of_turn"]["token"] == "<|im_end|>"

    adapter, tok, _ = load_trained(run_dir / "model")
    ids = torch.tensor([tok("The sky is blue because")["input_ids"]])
    with torch.inference_mode():
        with adapter.disable_adapter():
            base_logits = adapter(ids).logits
        assert (adapter(ids).logits - base_logits).abs().max() > 0.1  # the adapter moves the output
    assert no_peft_greedy(dest, PROMPTS[:2], 16)["ids"] == adapter_greedy(adapter, tok, PROMPTS[:2], 16)
