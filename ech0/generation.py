"""Batched greedy generation with left padding and KV cache — shared by serving, eval and tests.

    from ech0.generation import generate
    texts = generate(model, tokenizer, ["What color is snow?"], template, max_new_tokens=32)

Prompts are encoded exactly as in training (:mod:`ech0.prompts`: BOS + template, no EOS), so what the trained model saw
and what it is asked at inference match token for token.
"""

from __future__ import annotations


def generate(model, tokenizer, prompts: list[str], template: str, max_new_tokens: int = 64,
             batch_size: int = 16) -> list[str]:
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    from ech0.prompts import encode_prompt, hf_encoder

    encode = hf_encoder(tokenizer)
    encoded = [encode_prompt(encode, tokenizer.bos_token_id, template, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                e = encoded[i]
                ids[row, width - len(e):] = torch.tensor(e)
                mask[row, width - len(e):] = 1
            with torch.inference_mode():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return out
