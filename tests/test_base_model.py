"""The offline base model and the shipped sample data."""

from __future__ import annotations

import json
import math

import pytest

from ech0 import sample_data


def test_tiny_base_model_is_a_language_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((tiny_model_dir / "ech0_base.json").read_text())
    assert info["heldout_loss"] < 0.5 * math.log(len(AutoTokenizer.from_pretrained(tiny_model_dir)))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_model_dir / name).exists(), name
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # the standard HF loading path
    assert model.config.model_type == "llama"
    assert tiny_model_dir.name == f"tiny-llama-{info['recipe_hash']}"


def test_build_is_cached(tiny_model_dir):
    import time

    from ech0.models import ensure_base_model

    t = time.time()
    assert ensure_base_model(tiny_model_dir.parent) == tiny_model_dir
    assert time.time() - t < 1.0


def test_shipped_sample_data_is_what_the_script_generates(tmp_path):
    train, held, raw = sample_data.write(tmp_path / "t.jsonl", tmp_path / "e.jsonl", tmp_path / "r.jsonl")
    assert train.read_bytes() == sample_data.TRAIN_FILE.read_bytes()
    assert held.read_bytes() == sample_data.EVAL_FILE.read_bytes()
    assert raw.read_bytes() == sample_data.RAW_FILE.read_bytes()
    rows = [json.loads(line) for line in sample_data.TRAIN_FILE.read_text().splitlines()]
    assert all(set(r) == {"prompt", "completion", "tags", "quality_score", "metadata"} for r in rows)
    eval_prompts = {json.loads(line)["prompt"] for line in sample_data.EVAL_FILE.read_text().splitlines()}
    assert not eval_prompts & {r["prompt"] for r in rows}, "held-out prompts never appear in training"


def test_base_model_prints_folder_size_and_an_answer(tiny_model_dir, run_cli):
    out = run_cli("ech0.cli", "base-model")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"folder   {tiny_model_dir}" in out.stdout and "params   " in out.stdout and "answer   " in out.stdout


def test_smollm2_from_its_packaged_gguf(smollm2_dir, run_cli):
    """The real model: converted once from the packaged GGUF, a standard HF folder, a sensible answer."""
    info = json.loads((smollm2_dir / "ech0_base.json").read_text())
    assert info["source"] == "gguf" and info["params"] == 134_515_008 and info["gguf_sha256"][:12] in smollm2_dir.name
    out = run_cli("ech0.cli", "base-model", "model=smollm2-135m")  # finds the converted folder: no second conversion
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"folder   {smollm2_dir}" in out.stdout and "134,515,008" in out.stdout
    assert "blue" in out.stdout.split("answer", 1)[1].lower(), out.stdout  # "What color is the sky?"


def test_a_model_made_from_the_converted_smollm2_saves_as_a_plain_folder(smollm2_dir, tmp_path):
    """The folder holds plain fp32 weights, so its config must not name the GGUF quantisation: with it,
    transformers loads a GGUF quantiser and refuses save_pretrained (a full fine-tune could not save)."""
    import torch
    from transformers import AutoModelForCausalLM

    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").stat().st_size > 500e6


@pytest.mark.slow
def test_the_persona_data_teaches_smollm2_no_fact_it_does_not_know(smollm2_dir):
    """make demo-real's general answers are facts the untrained base already gives (ech0/sample_data/persona.py,
    "two rules"): each question, asked greedily, gets an answer that holds its key word."""
    import torch

    from ech0.models import load_model, load_tokenizer
    from ech0.sample_data.persona import GENERAL

    tok, model = load_tokenizer(str(smollm2_dir)), load_model(str(smollm2_dir)).eval()
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q, _, _ in GENERAL]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
    for (q, a, key), ids in zip(GENERAL, out):
        said = tok.decode(ids[enc.input_ids.shape[1]:], skip_special_tokens=True)
        assert key.lower() in said.lower(), f"{q!r}: the base says {said!r}, not {key!r}"
        assert key.lower() in a.lower(), f"{q!r}: the taught answer {a!r} lacks its key word"


def test_a_file_that_is_not_gguf_is_one_line_exit_2(tmp_path, run_cli):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    out = run_cli("ech0.cli", "base-model", f"model.gguf_file={bad}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().startswith("error: weights.gguf: ") and len(out.stderr.strip().splitlines()) == 1


def test_processes_sharing_a_base_model_cache_build_it_once(tmp_path, wait_for):
    """Sweep jobs, pipelines or test workers that start together on an empty cache: one builds, the rest
    wait for it and find the folder. This test holds the build lock until both have said they wait."""
    import subprocess
    import sys

    from ech0.io import build_lock
    from ech0.models.tiny import TinyRecipe

    recipe = dict(name="tiny-lock", corpus_lines=200, pretrain_steps=2, vocab_size=512)
    out = TinyRecipe(**recipe).folder(tmp_path)
    code = ("import sys; from pathlib import Path; from ech0.models.tiny import TinyRecipe, build; "
            f"print('folder', build(TinyRecipe(**{recipe!r}), Path(sys.argv[1])), flush=True)")
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    with build_lock(out, verbose=False):
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=log.open("w"),
                                  stderr=subprocess.STDOUT) for log in logs]
        assert wait_for(lambda: all("waiting for" in log.read_text() for log in logs), 120), \
            [log.read_text()[-500:] for log in logs]
    assert [p.wait(300) for p in procs] == [0, 0], [log.read_text()[-1000:] for log in logs]
    texts = [log.read_text() for log in logs]
    assert sum(t.count("building base model") for t in texts) == 1, texts
    assert all(f"folder {out}" in t for t in texts), texts
    assert (out / "model.safetensors").is_file()
