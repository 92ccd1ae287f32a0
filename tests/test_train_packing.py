"""Packed (padding-free) steps compute the same loss and gradients as padded ones, and the LM head on the
trained positions only (``logits_to_keep``) the same as full logits."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("peft", ["lora", "none"])
def test_packed_step_equals_padded_step(tiny_model_dir, peft):
    import torch
    from hydra.utils import instantiate

    from ech0.config import compose
    from ech0.models import load_model, load_tokenizer
    from ech0.sample_data import sample_rows
    from ech0.train.data import collate, tokenize_rows
    from ech0.train.loop import _LOGITS_TO_KEEP, loss_sum
    from ech0.train.packing import collate_packed, enable

    cfg = compose("train", [f"peft={peft}"])
    tok = load_tokenizer(str(tiny_model_dir))
    rows = sample_rows()[0][:12]
    examples, _ = tokenize_rows(rows, tok, 512, "right")
    assert len({len(e) for e in examples}) > 3, "rows of different lengths"
    torch.manual_seed(0)
    model = instantiate(cfg.peft, model=load_model(str(tiny_model_dir)))
    model.train()
    results = []
    # (packed, head on trained positions only): padded with full logits is the reference
    for packed, keep in ((False, False), (False, True), (True, True), (True, False)):
        if packed:
            enable(model)
        batch = collate_packed(examples) if packed else collate(examples, tok.pad_token_id)
        _LOGITS_TO_KEEP[type(model.get_base_model() if peft == "lora" else model)] = keep
        total, count = loss_sum(model, batch, "cpu", None)
        (total / count).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        results.append((float(total), count, grads))
    _LOGITS_TO_KEEP.clear()
    t0, c0, g0 = results[0]
    for t1, c1, g1 in results[1:]:
        assert c0 == c1 and abs(t0 - t1) / t0 < 1e-5
        assert g0.keys() == g1.keys() and g0
        for n in g0:
            assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n
    model.eval()  # outside a packed training step the model is plain SDPA again: generation works
    out = model.generate(input_ids=torch.tensor([examples[0].input_ids[:5]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 8
