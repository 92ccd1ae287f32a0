"""Token lengths of training rows, measured exactly as training measures them, in batches.

Used by ``ech0 data validate --max-tokens N`` (the tokenizer is the configured ``model``'s, or
``--tokenizer PATH``)::

    from ech0.data.tokens import TokenCounter
    tc = TokenCounter("/path/to/model_folder", template)   # or a hub id (HF_HUB_OFFLINE is respected)
    tc.count(["prompt"], ["completion"])                    # -> numpy int32 array

A row's length is :func:`ech0.prompts.pair_length`: BOS + ``template.format(prompt=...)`` +
completion + EOS, the row ``ech0.train.data.encode_row`` builds before truncation. A local folder with
``tokenizer.json`` (what ``ech0.models`` writes; any Hugging Face model folder) is read with the Rust
``tokenizers`` library and its BOS/EOS tokens from ``tokenizer_config.json`` (or
``special_tokens_map.json``): no torch/transformers import. Anything else goes through
``transformers.AutoTokenizer`` (imported only then). Both give the ids transformers gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ech0.errors import UserError
from ech0.prompts import pair_length

SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _token_text(v) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def special_tokens(folder: Path) -> dict:
    """``{"bos_token": str | None, "eos_token": str | None}`` from a model folder's tokenizer files."""
    found: dict = {"bos_token": None, "eos_token": None}
    for name in SPECIAL_FILES:
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{f}: cannot read ({str(e)[:200]})") from None
        for key in found:
            found[key] = found[key] or _token_text(data.get(key))
    return found


class TokenCounter:
    def __init__(self, name_or_path: str, template: str) -> None:
        self.name = str(name_or_path)
        try:
            template.format(prompt="")
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"prompt template {template!r}: expected one {{prompt}} field ({e!r})") from None
        self.template = template
        p = Path(name_or_path).expanduser()
        tj = p / "tokenizer.json" if p.is_dir() else p
        if tj.is_file() and tj.name.endswith(".json"):
            self._load_file(tj)
        else:
            self._load_hf()
        if self.eos_id is None:
            raise UserError(f"{self.name}: the tokenizer names no eos_token (training ends every row with one); "
                            f"pass a model folder with tokenizer_config.json")

    def _load_file(self, tj: Path) -> None:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(tj))
        except Exception as e:  # noqa: BLE001 - a corrupt file is a user problem
            raise UserError(f"{tj}: cannot load tokenizer ({str(e)[:200]})") from None
        specials = special_tokens(tj.parent)
        self.bos_id, self.eos_id = (None if t is None else tok.token_to_id(t)
                                    for t in (specials["bos_token"], specials["eos_token"]))
        self._use_rust(tok)

    def _load_hf(self) -> None:
        try:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(self.name)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"tokenizer {self.name}: cannot load ({str(e).splitlines()[0][:200]}); pass "
                            f"--tokenizer DIR (a local model folder), or a model=... that is on disk") from None
        self.bos_id, self.eos_id = hf.bos_token_id, hf.eos_token_id
        if getattr(hf, "is_fast", False):
            self._use_rust(hf.backend_tokenizer)
        else:
            self._encode_batch = lambda texts: hf(texts, add_special_tokens=False)["input_ids"]

    def _use_rust(self, tok) -> None:
        tok.no_truncation()
        tok.no_padding()
        enc = getattr(tok, "encode_batch_fast", tok.encode_batch)
        self._encode_batch = lambda texts: [e.ids for e in enc(texts, add_special_tokens=False)]

    def count(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Training-row lengths of ``zip(prompts, completions)`` (one batched tokenizer call)."""
        if not prompts:
            return np.zeros(0, np.int32)
        shown = [self.template.format(prompt=p) for p in prompts]
        texts = shown + list(completions)
        ids = dict(zip(texts, self._encode_batch(texts)))
        return np.fromiter((pair_length(ids.__getitem__, self.bos_id, self.template, p, c)
                            for p, c in zip(prompts, completions)), dtype=np.int32, count=len(prompts))
