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
    assert meta["run_id"] == recipe.run_id and meta["prompt_template"] == recipe.cfg.data.prompt_template
