"""Conversations through the model's own chat template: rendering and loss masks, shared by every stage.

    from ech0 import chat
    messages = chat.messages_of(row)                         # a prompt/completion row is a one-turn chat
    ids, labels = chat.encode(tokenizer, messages, train_on="assistant")
    prompt_ids = chat.prompt_ids(tokenizer, messages[:-1])   # what generation is given (ends "assistant\\n")

Training, evaluation, serving and the data stage all render through :func:`render`, so a model is
asked exactly the way it was trained. The template is the tokenizer's own ``chat_template``; a
tokenizer without one gets :data:`DEFAULT_TEMPLATE` (ChatML's layout, each turn closed by the
tokenizer's EOS token, so no token has to be added to the vocabulary). The template used is saved
with the model's tokenizer.

Masks come from character offsets of the rendered text, never from re-tokenising pieces (which merge
differently at turn boundaries): each assistant turn's span is found by rendering the conversation
up to that turn with and without it, and a token is trained when its characters overlap a trained
span. A span runs from the turn's first content character through its end-of-turn token; the
whitespace a template puts after that token is not trained.
"""

from __future__ import annotations

from typing import Iterable

ROLES = ("system", "user", "assistant")
TRAIN_ON = ("assistant", "last", "all")

# ChatML's layout with the model's own EOS closing each turn (``eos_token`` is the tokenizer's).
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """A conversation the model's chat template cannot render (or renders inconsistently)."""


def messages_of(row: dict) -> list[dict]:
    """The row's conversation: its ``messages``, or a prompt/completion row as user + assistant turns."""
    if "messages" in row:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def prompt_messages(prompt_or_messages) -> list[dict]:
    """A generation request: a plain prompt string is one user turn."""
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    return list(prompt_or_messages)


def ensure_template(tokenizer):
    """Give ``tokenizer`` :data:`DEFAULT_TEMPLATE` when it has no chat template; returns it."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_TEMPLATE
    return tokenizer


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn: ``<|im_end|>`` for ChatML models, else EOS."""
    ensure_template(tokenizer)
    probe = render(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    vocab = tokenizer.get_vocab()
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        if token in vocab and token in probe:
            return vocab[token]
    return tokenizer.eos_token_id


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the model's template writes it; :class:`TemplateError` when it cannot."""
    ensure_template(tokenizer)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja's raise_exception(), a missing key, a role the template refuses
        raise TemplateError(f"the chat template cannot render it ({type(e).__name__}: {str(e)[:200]})") from None


def trained_spans(tokenizer, messages: list[dict], train_on: str = "assistant") -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans whose tokens are trained)."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on={train_on!r}: expected one of {', '.join(TRAIN_ON)}")
    text = render(tokenizer, messages)
    if train_on == "all":
        return text, [(0, len(text))]
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (train_on == "last" and i != _last_assistant(messages)):
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(before)):
            raise TemplateError(f"turn {i + 1}: the template does not render the conversation as a sequence of "
                                "turns (a prefix renders differently); masks cannot be derived")
        end = len(upto.rstrip())  # through the end-of-turn token, not the whitespace after it
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def _last_assistant(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def encode(tokenizer, messages: list[dict], train_on: str = "assistant") -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are -100 except on the tokens of trained spans."""
    text, spans = trained_spans(tokenizer, messages, train_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], []
    for tid, (s, e) in zip(ids, enc["offset_mapping"]):
        labels.append(tid if any(s < b and e > a for a, b in spans) else -100)
    return list(ids), labels


def prompt_ids(tokenizer, messages: Iterable[dict] | str) -> list[int]:
    """Token ids of a generation request: the conversation so far + the template's assistant header."""
    text = render(tokenizer, prompt_messages(messages), add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
