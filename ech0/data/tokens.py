"""Token counting with the model's own (fast, Rust) tokenizer, in batches.

    from ech0.data.tokens import TokenCounter
    tc = TokenCounter("/path/to/model_or_tokenizer")   # or a hub id (HF_HUB_OFFLINE is respected)
    tc.count(["prompt"], ["completion"])               # -> numpy int32 array

A local directory with ``tokenizer.json`` (what ``ech0.models.ensure_base_model()`` writes) is read
directly with the ``tokenizers`` library: no torch/transformers import. Anything else goes through
``transformers.AutoTokenizer`` (imported only then). Prompt and completion are encoded as a pair
with the model's special tokens, i.e. the length the trainer sees before any chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ech0.errors import UserError


def default_tokenizer_path() -> str:
    """The configured base model's directory (built on first use by ``ech0.models``)."""
    try:
        from ech0.models import ensure_base_model
    except ImportError as e:  # the models package is built by the training stage
        raise UserError(f"no --tokenizer given and ech0.models is unavailable ({e}); pass --tokenizer PATH") from None
    return str(ensure_base_model())


class TokenCounter:
    def __init__(self, name_or_path: str) -> None:
        self.name = str(name_or_path)
        p = Path(name_or_path).expanduser()
        tj = p / "tokenizer.json" if p.is_dir() else p
        self._tok = None
        if tj.is_file() and tj.name.endswith(".json"):
            from tokenizers import Tokenizer

            try:
                self._tok = Tokenizer.from_file(str(tj))
            except Exception as e:  # noqa: BLE001 - a corrupt file is a user problem
                raise UserError(f"{tj}: cannot load tokenizer ({str(e)[:200]})") from None
        else:
            try:
                from transformers import AutoTokenizer

                hf = AutoTokenizer.from_pretrained(self.name)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"--tokenizer {self.name}: cannot load ({str(e).splitlines()[0][:200]}); "
                                f"pass a local model directory") from None
            if getattr(hf, "is_fast", False):
                self._tok = hf.backend_tokenizer
            else:
                self._hf = hf
        if self._tok is not None:
            self._tok.no_truncation()
            self._tok.no_padding()
            self._enc = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    def count(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        if not prompts:
            return np.zeros(0, np.int32)
        if self._tok is not None:
            encs = self._enc(list(zip(prompts, completions)), add_special_tokens=True)
            return np.fromiter((len(e) for e in encs), dtype=np.int32, count=len(encs))
        out = self._hf(prompts, completions, add_special_tokens=True)["input_ids"]
        return np.fromiter((len(x) for x in out), dtype=np.int32, count=len(out))


def configure_threads(workers: int) -> None:
    """With several worker processes let each tokenizer use one thread (no oversubscription)."""
    if workers > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
