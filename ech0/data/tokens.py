"""Rows through the model's chat template, and their token lengths exactly as training measures them.

Used by ``ech0 data validate`` (the tokenizer is the configured ``model``'s, or ``--tokenizer PATH``)::

    from ech0.data.tokens import ChatTokens
    ct = ChatTokens("/path/to/model_folder")   # or a hub id (HF_HUB_OFFLINE is respected)
    text = ct.render(messages)                 # ech0.chat.TemplateError when the template cannot render them
    ct.count([text, ...])                      # -> numpy int32 array of token counts

A row's length is ``len(tok(chat.render(tok, messages), add_special_tokens=False).input_ids)``: the
conversation as the model's chat template renders it, tokenized without special tokens — what
training tokenizes (:func:`ech0.chat.encode`), so ``--max-tokens`` cuts exactly where training's
length would. The tokenizer is a transformers one (``apply_chat_template``), loaded by
:func:`ech0.models.load_tokenizer` (the model's own chat template, else :data:`ech0.chat.DEFAULT_TEMPLATE`);
``chat_template`` replaces it, as training's ``data.chat_template`` does.

For speed, :meth:`ChatTokens.render` renders through the template compiled once the way transformers
compiles it (same Jinja environment, same variables: the messages and the tokenizer's special tokens),
which skips ``apply_chat_template``'s per-call copying (~4x faster); a row that fails there is rendered
again by :func:`ech0.chat.render` itself, which decides (and words) any ``template_error``. A test
checks the two render identically.
"""

from __future__ import annotations

import numpy as np

from ech0 import chat
from ech0.errors import UserError


def load(name_or_path: str):
    """The transformers tokenizer of a model folder or hub id; a one-line ``UserError`` when it cannot load."""
    from ech0.models import load_tokenizer

    try:
        return load_tokenizer(str(name_or_path))
    except Exception as e:  # noqa: BLE001 - a missing folder, an offline hub id, a corrupt file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"tokenizer {name_or_path}: cannot load ({first[:200]}); pass --tokenizer DIR (a local "
                        f"model folder), or a model=... that is on disk") from None


def compiled_template(tok, what: str):
    """``tok``'s chat template compiled as ``apply_chat_template`` compiles it (None where this
    transformers has no such helper: every row then goes through ``chat.render``); a template that does
    not compile is a one-line ``UserError``."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    try:
        return _compile_jinja_template(tok.get_chat_template())
    except Exception as e:  # noqa: BLE001 - jinja2.TemplateSyntaxError and friends
        raise UserError(f"{what} does not compile ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


class ChatTokens:
    """One tokenizer, loaded once per process: :meth:`render` (the chat template) and :meth:`count` (tokens)."""

    def __init__(self, name_or_path: str, chat_template: str | None = None) -> None:
        self.name = str(name_or_path)
        self.tok = load(name_or_path)
        if chat_template:
            self.tok.chat_template = chat_template
        self._template = compiled_template(self.tok, "chat_template=..." if chat_template else
                                           f"tokenizer {self.name}: its chat template")
        self._variables = dict(self.tok.special_tokens_map)

    def render(self, messages: list[dict]) -> str:
        """The conversation as training renders it; :class:`ech0.chat.TemplateError` when it cannot."""
        if self._template is not None:
            try:
                return self._template.render(messages=messages, tools=None, documents=None,
                                             add_generation_prompt=False, **self._variables)
            except Exception:  # noqa: BLE001 - chat.render below decides and words the error
                pass
        return chat.render(self.tok, messages)

    def count(self, texts: list[str]) -> np.ndarray:
        """Token counts of rendered conversations (one batched tokenizer call, no special tokens added)."""
        if not texts:
            return np.zeros(0, np.int32)
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return np.fromiter(map(len, ids), dtype=np.int32, count=len(texts))
