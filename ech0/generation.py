"""Batched generation with left padding and KV cache — shared by serving, eval, the smoke check and tests.

    from ech0.generation import complete, generate
    texts = generate(model, tokenizer, ["What color is snow?"], max_new_tokens=32)          # greedy
    done = complete(model, tokenizer, [[{"role": "user", "content": "Hi"}]], max_new_tokens=32,
                    temperature=0.7, top_p=0.9, seed=1, stop=["\\n\\n"])
    done[0].text, done[0].finish_reason, done[0].prompt_tokens, done[0].completion_tokens

A request is a prompt string (one user turn) or a list of messages. It is rendered through the
model's chat template with the assistant header appended (:func:`ech0.chat.prompt_ids`), exactly
the prefix training saw before each answer, and generation stops at the end-of-turn token.
``temperature`` 0 (the default) is greedy decoding; a ``seed`` makes sampling repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop": the model ended its turn (or a stop string matched) | "length": max tokens
    prompt_tokens: int
    completion_tokens: int


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the end-of-turn token and EOS."""
    from ech0.chat import end_of_turn_id

    return sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})


def complete(model, tokenizer, requests: list, max_new_tokens: int = 64, batch_size: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None) -> list[Completion]:
    """One :class:`Completion` per request, in request order; similar lengths share a batch."""
    import torch

    from ech0.chat import prompt_ids

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ends = stop_ids(tokenizer)
    encoded = [prompt_ids(tokenizer, r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: len(encoded[i]))
    sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)} if temperature > 0 \
        else {"do_sample": False}
    out: list[Completion | None] = [None] * len(requests)
    was_training = model.training
    model.eval()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            with torch.inference_mode():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), num_beams=1,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=ends, **sampling)
            for row, i in enumerate(idx):
                out[i] = _finish(tokenizer, gen[row, width:].tolist(), ends, len(encoded[i]), stop)
    finally:
        model.train(was_training)
    return out


def _finish(tokenizer, new: list[int], ends: list[int], prompt_tokens: int, stop) -> Completion:
    """Cut the generated ids at the first end-of-turn token (or stop string) and say why it ended."""
    cut = next((k for k, t in enumerate(new) if t in ends), None)
    tokens = new[:cut] if cut is not None else new  # a row that did not stop was never padded
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    reason = "stop" if cut is not None else "length"
    for s in stop or []:
        if s and s in text:
            text, reason = text[:text.index(s)].rstrip(), "stop"
    return Completion(text, reason, prompt_tokens, len(tokens) + (cut is not None))


def generate(model, tokenizer, requests: list, max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """Greedy answers (text only) to prompt strings or conversations."""
    return [c.text for c in complete(model, tokenizer, requests, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)]
