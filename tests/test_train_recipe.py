"""The training recipe in parts: setup, batches, one step, evaluation, checkpoint round trip, save."""

from __future__ import annotations

import pytest

from ech0.config import compose
from ech0.context import Context

FAST = ["+preset=lora", "trainer.max_steps=4", "trainer.batch_size=8", "trainer.precision=fp32",
        "trainer.progress=false", "tracking.enabled=false"]


@pytest.fixture
def recipe(tiny_model_dir, ech0_home):
    from ech0.train.recipe import TrainRecipe

    cfg = compose("train", FAST)
    r = TrainRecipe(cfg, Context.from_config(cfg))
    r.setup()
    return r


def _attach(recipe, run_id: str | None = None):
    from ech0 import tracking

    tracker = tracking.NullTracker()
    tracker.run_id = run_id or tracker.run_id  # a resumed run: the same id, so the same run folder
    recipe.attach(tracker)
    return recipe


def test_setup_tokenizes_builds_the_adapter_and_the_optimizer(recipe):
    stats = recipe.train_stats
    assert stats.rows == len(recipe.train_rows) == stats.kept + sum(stats.skipped.values())
    assert recipe.eval_set and recipe.measure is recipe.eval_set, "the sample has an eval file: held-out rows"
    assert recipe.params and all("lora_" in n for n, p in recipe.model.named_parameters() if p.requires_grad)
    assert {id(p) for g in recipe.optimizer.param_groups for p in g["params"]} == {id(p) for p in recipe.params}
    assert recipe.steps_per_epoch == -(-len(recipe.train_set) // 8)


def test_batches_are_a_pure_function_of_seed_and_epoch(recipe):
    epoch = [i for s in range(recipe.steps_per_epoch) for i in map(id, recipe.batch_for(s))]
    assert sorted(epoch) == sorted(map(id, recipe.train_set)), "one epoch covers every row once"
    assert [id(e) for e in recipe.batch_for(3)] == [id(e) for e in recipe.batch_for(3)]
    assert [id(e) for e in recipe.batch_for(0)] != [id(e) for e in recipe.batch_for(recipe.steps_per_epoch)]


def test_one_step_moves_only_the_trainable_weights(recipe):
    import torch

    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    out = recipe.train_step()
    assert set(out) == {"loss", "grad_norm", "learning_rate", "tokens"} and out["loss"] > 0 and out["tokens"] > 0
    for n, p in recipe.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"frozen base weight {n} moved"
    assert any(not torch.equal(p, before[n]) for n, p in recipe.model.named_parameters() if "lora_B" in n)


def test_evaluate_is_a_finite_loss_that_training_lowers(recipe):
    _attach(recipe)
    first = recipe.evaluate(recipe.eval_set)
    assert 0 < first < 20
    recipe.begin()
    recipe.train()
    assert recipe.step == 4 and [s for s, _ in recipe.history["train"]] == [1, 2, 3, 4]
    assert recipe.evaluate(recipe.eval_set) < first


def test_checkpoint_round_trip_restores_weights_and_step(recipe, tiny_model_dir):
    import torch

    from ech0.train.recipe import TrainRecipe

    _attach(recipe)
    recipe.begin()
    recipe.train_step()
    recipe.step = 1
    recipe.save_checkpoint()
    saved = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if p.requires_grad}

    again = TrainRecipe(recipe.cfg, recipe.ctx)
    again.setup()
    again.resume_id = recipe.run_id
    _attach(again, recipe.run_id)
    again.begin()
    assert again.step == again.start_step == 1 and again.loss_before == recipe.loss_before
    for n, p in again.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, saved[n]), n


def test_save_writes_a_loadable_model_folder(recipe):
    from ech0.model_folder import META_FILE, load_trained

    _attach(recipe)
    recipe.save()
    folder = recipe.run_dir / "model"
    assert (folder / META_FILE).is_file() and (folder / "adapter_config.json").is_file()
    model, tok, meta = load_trained(folder)
    assert meta["run_id"] == recipe.run_id and meta["train_on"] == "assistant"
    assert tok.chat_template == recipe.tok.chat_template, "the template training used is saved with the model"


def test_without_an_eval_file_rows_are_held_out_by_content(tiny_model_dir, ech0_home):
    from ech0.train.recipe import TrainRecipe, split_by_content

    cfg = compose("train", [*FAST, "data.eval_file=null", "data.eval_fraction=0.1"])
    r = TrainRecipe(cfg, Context.from_config(cfg))
    r.setup()
    held = {id(x) for x in r.eval_rows}
    assert 8 <= len(r.eval_rows) <= 256 and r.measure is r.eval_set and not held & {id(x) for x in r.train_rows}
    assert len(r.train_rows) + len(r.eval_rows) == 284, "every row is trained on or held out"
    # deterministic by content: the same rows in another order hold out the same rows
    rows = [{k: v for k, v in x.items() if k != "_line"} for x in r.train_rows + r.eval_rows]
    again = split_by_content(list(reversed(rows)), 0.1, 8, 256)
    assert sorted(map(str, again[1])) == sorted(str({k: v for k, v in x.items() if k != "_line"}) for x in r.eval_rows)
    assert again[2] == r.split_digest


def test_a_tiny_file_is_not_split_and_its_loss_is_not_called_held_out(tiny_model_dir, ech0_home, tmp_path):
    import json

    from ech0.train.recipe import TrainRecipe

    rows = tmp_path / "few.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": f"{i}."}) + "\n" for i in range(10)))
    cfg = compose("train", [*FAST, f"data.train_file={rows}", "data.eval_file=null"])
    r = TrainRecipe(cfg, Context.from_config(cfg))
    r.setup()
    assert r.eval_rows == [] and r.measure is not r.eval_set
    _attach(r)
    r.begin()
    assert [k for k, _ in r.history["eval"]] == [0]


def test_a_run_whose_end_of_turn_is_never_trained_stops_at_start(tiny_model_dir, ech0_home, tmp_path):
    import json

    from ech0 import chat
    from ech0.errors import UserError
    from ech0.models import load_tokenizer
    from ech0.train.recipe import TrainRecipe

    rows = tmp_path / "long.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "Hi", "completion": f"{i} one two three four five six seven eight " * 4})
                            + "\n" for i in range(40)))
    header = len(chat.prompt_ids(load_tokenizer(str(tiny_model_dir)), "Hi"))
    # right truncation keeps a few answer tokens but never the end-of-turn token
    cfg = compose("train", [*FAST, f"data.train_file={rows}", "data.eval_file=null",
                            f"trainer.max_length={header + 4}", "trainer.truncation=right"])
    with pytest.raises(UserError, match="end-of-turn token '</s>'"):
        TrainRecipe(cfg, Context.from_config(cfg)).setup()


def test_a_row_without_an_assistant_turn_is_refused_with_its_line(tiny_model_dir, ech0_home, tmp_path):
    import json

    from ech0.errors import UserError
    from ech0.train.recipe import TrainRecipe

    rows = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}]}
    rows.write_text("".join(json.dumps(r) + "\n" for r in [good] * 40 + [bad]))
    cfg = compose("train", [*FAST, f"data.train_file={rows}", "data.eval_file=null"])
    with pytest.raises(UserError, match=f"{rows}:41: no token is trained"):
        TrainRecipe(cfg, Context.from_config(cfg)).setup()


def test_an_adapter_loads_only_onto_the_base_it_was_trained_on(recipe, tmp_path):
    import shutil

    from ech0.errors import UserError
    from ech0.model_folder import read_meta, verified_base

    _attach(recipe)
    recipe.save()
    meta = read_meta(recipe.run_dir / "model")
    assert verified_base(meta) == recipe.base_path
    with pytest.raises(UserError, match="is not at"):
        verified_base({**meta, "base_model": str(tmp_path / "gone")})
    other = tmp_path / "other-base"
    shutil.copytree(recipe.base_path, other)
    (other / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(UserError, match="not the ones this adapter was trained on"):
        verified_base({**meta, "base_model": str(other)})


def _kl_on(recipe, examples) -> float:
    """Mean KL(tuned || base) per completion token of ``examples``, the base being the adapter switched off."""
    import torch

    from ech0.train.loop import loss_and_kl_sum

    recipe.model.eval()
    with torch.no_grad():
        _, _, kl, n = loss_and_kl_sum(recipe.model, recipe.collate(examples), "cpu", None, 1.0)
    recipe.model.train()
    return kl / n


def test_kl_to_base_holds_the_tuned_model_nearer_its_base(tiny_model_dir, ech0_home):
    from ech0.train.recipe import TrainRecipe

    held, runs = None, {}
    for beta in (0.0, 2.0):
        cfg = compose("train", [*FAST, "trainer.max_steps=12", f"trainer.kl_to_base={beta}"])
        r = TrainRecipe(cfg, Context.from_config(cfg))
        r.setup()
        held = held or r.eval_set[:16]
        before = r.evaluate(held)
        outs = [r.train_step() for r.step in range(12)]
        if beta:
            assert outs[0]["kl_to_base"] == 0.0, "a fresh adapter (lora_B = 0) is the base itself"
            assert all(o["kl_to_base"] >= 0 for o in outs) and outs[-1]["kl_to_base"] > 0
        else:
            assert "kl_to_base" not in outs[0]
        runs[beta] = (before, r.evaluate(held), _kl_on(r, held))
    (b0, a0, kl0), (b1, a1, kl1) = runs[0.0], runs[2.0]
    assert a0 < b0 and a1 < b1, "both still learn"
    assert kl1 < 0.6 * kl0, f"held-out KL to the base: {kl1:.4f} with the term, {kl0:.4f} without"


def test_kl_to_base_weights_each_position_by_what_it_is(recipe):
    """A trained position's KL gets ``agreed`` where the base's greedy token is the trained one, else
    ``weight``; a prompt position (next token untrained, same row) gets ``prompt``: checked against the
    full logits, computed another way (no logits_to_keep)."""
    import torch

    from ech0.train.loop import loss_and_kl_sum

    for recipe.step in range(8):
        recipe.train_step()  # an adapter away from its base
    recipe.model.eval()
    batch = recipe.collate(recipe.eval_set[:16])
    with torch.no_grad():
        ce, full, kl, n = loss_and_kl_sum(recipe.model, batch, "cpu", None, 1.0)
        _, only_agreed, kl2, _ = loss_and_kl_sum(recipe.model, batch, "cpu", None, 0.0, 1.0)
        _, mixed, _, _ = loss_and_kl_sum(recipe.model, batch, "cpu", None, 0.2, 3.0)
        ce2, on_prompt, kl3, n2 = loss_and_kl_sum(recipe.model, batch, "cpu", None, 0.0, None, 0.5)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        tuned = recipe.model(**inputs).logits
        with recipe.model.disable_adapter():
            base = recipe.model(**inputs).logits
    target = batch["labels"][:, 1:]
    trained = target != -100
    log_q, log_p = tuned[:, :-1].log_softmax(-1), base[:, :-1].log_softmax(-1)
    every = (log_q.exp() * (log_q - log_p)).sum(-1)
    per_token = every[trained]
    agrees = base[:, :-1][trained].argmax(-1) == target[trained]
    prompt = (batch["position_ids"][:, 1:] != 0) & ~trained  # packed rows: a row starts at position 0
    assert prompt.sum() > 0 and float(ce2) == pytest.approx(float(ce), rel=1e-5) and (kl3, n2) == (kl, n)
    assert float(on_prompt) == pytest.approx(0.5 * float(every[prompt].sum()), rel=1e-4)
    assert n == int(trained.sum()) and 0 < int(agrees.sum()) < n, "some trained tokens are the base's own, some not"
    assert kl == kl2 == pytest.approx(float(full), rel=1e-5) == pytest.approx(float(per_token.sum()), rel=1e-4)
    assert float(only_agreed) == pytest.approx(float(per_token[agrees].sum()), rel=1e-4)
    assert float(mixed) == pytest.approx(0.2 * float(per_token[~agrees].sum()) + 3.0 * float(only_agreed), rel=1e-4)

    # right-padded rows (trainer.packing=false): a prompt position is one whose next token is real
    from ech0.train.data import collate

    padded = collate(recipe.eval_set[:16], recipe.tok.pad_token_id)
    with torch.no_grad():
        _, on_prompt, _, _ = loss_and_kl_sum(recipe.model, padded, "cpu", None, 0.0, None, 1.0)
        inputs = {k: v for k, v in padded.items() if k != "labels"}
        tuned = recipe.model(**inputs).logits
        with recipe.model.disable_adapter():
            base = recipe.model(**inputs).logits
    log_q, log_p = tuned[:, :-1].log_softmax(-1), base[:, :-1].log_softmax(-1)
    every = (log_q.exp() * (log_q - log_p)).sum(-1)
    prompt = padded["attention_mask"][:, 1:].bool() & (padded["labels"][:, 1:] == -100)
    assert prompt.sum() > 0 and float(on_prompt) == pytest.approx(float(every[prompt].sum()), rel=1e-4)


def test_kl_to_base_on_a_full_fine_tune_is_one_line(tiny_model_dir, ech0_home):
    from ech0.errors import UserError
    from ech0.train.recipe import TrainRecipe

    for key in ("kl_to_base", "kl_to_base_agreed", "kl_to_base_prompt"):
        cfg = compose("train", ["+preset=full", *FAST[1:], f"trainer.{key}=0.5"])
        with pytest.raises(UserError, match=f"trainer.{key} needs a LoRA adapter"):
            TrainRecipe(cfg, Context.from_config(cfg)).setup()


def test_skip_lower_layers_adapts_only_the_upper_layers(tiny_model_dir, ech0_home):
    import torch

    from ech0.train.recipe import TrainRecipe

    cfg = compose("train", [*FAST, "peft.skip_lower_layers=0.5"])
    r = TrainRecipe(cfg, Context.from_config(cfg))
    r.setup()
    n = r.model.config.num_hidden_layers
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, _ in r.model.named_parameters() if "lora_" in name}
    assert n >= 2 and adapted == set(range(n // 2, n)), f"{n} layers, adapters on {sorted(adapted)}"
    before = {k: p.detach().clone() for k, p in r.model.named_parameters()}
    r.train_step()
    moved = {k for k, p in r.model.named_parameters() if not torch.equal(p, before[k])}
    assert moved and all("lora_B" in k or "lora_A" in k for k in moved), "only adapter weights move"


def test_skip_lower_layers_out_of_range_is_one_line_and_the_top_layer_always_adapts(tiny_model_dir, ech0_home):
    from ech0.errors import UserError
    from ech0.train.recipe import TrainRecipe

    cfg = compose("train", [*FAST, "peft.skip_lower_layers=1.0"])
    with pytest.raises(UserError, match=r"peft.skip_lower_layers=1.0: expected a fraction"):
        TrainRecipe(cfg, Context.from_config(cfg)).setup()
    cfg = compose("train", [*FAST, "peft.skip_lower_layers=0.99"])  # rounds to every layer: the top one stays
    r = TrainRecipe(cfg, Context.from_config(cfg))
    r.setup()
    n = r.model.config.num_hidden_layers
    assert {int(k.split(".layers.")[1].split(".")[0]) for k, _ in r.model.named_parameters() if "lora_" in k} == {n - 1}
