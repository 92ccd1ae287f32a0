"""The offline base model and the shipped sample data."""

from __future__ import annotations

import json
import math

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
