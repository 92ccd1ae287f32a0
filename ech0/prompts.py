"""How a row becomes token ids: the one encoding shared by training, evaluation, serving and the data stage.

    from ech0.prompts import encode_pair, encode_prompt
    prompt_ids = encode_prompt(encode, bos_id, template, "What color is snow?")      # BOS + template
    prompt_ids, completion_ids = encode_pair(encode, bos_id, eos_id, template, prompt, completion)

``encode`` is any ``str -> list[int]`` that adds no special tokens: a transformers tokenizer
(:func:`hf_encoder`) or a bare ``tokenizers.Tokenizer`` (the data stage, without importing torch).
Both produce the same ids for the same text, so the length the data stage measures for
``--max-tokens`` is the length training sees: BOS + ``template.format(prompt=...)`` + completion + EOS.
"""

from __future__ import annotations

from typing import Callable

Encoder = Callable[[str], list]


def hf_encoder(tokenizer) -> Encoder:
    """``encode`` for a transformers tokenizer."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(encode: Encoder, bos_id: int | None, template: str, prompt: str) -> list[int]:
    """BOS (when the model has one) + the prompt shown through ``template``: what generation is given."""
    ids = list(encode(template.format(prompt=prompt)))
    return ([bos_id] if bos_id is not None else []) + ids


def encode_pair(encode: Encoder, bos_id: int | None, eos_id: int, template: str, prompt: str,
                completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids + EOS): a training row before truncation."""
    return encode_prompt(encode, bos_id, template, prompt), list(encode(completion)) + [eos_id]


def pair_length(encode: Encoder, bos_id: int | None, template: str, prompt: str, completion: str) -> int:
    """Tokens of a training row before truncation (BOS + prompt + completion + EOS)."""
    return (bos_id is not None) + len(encode(template.format(prompt=prompt))) + len(encode(completion)) + 1
