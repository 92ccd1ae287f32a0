"""Conversations through the model's own chat template: token-exact loss masks, end-of-turn included."""

from __future__ import annotations

import pytest

from ech0 import chat

TURNS = [("user", "Hi there, who are you?"), ("assistant", "I am Echo, a small helper."),
         ("user", "What is 2 + 2?"), ("assistant", "2 + 2 = 4."),
         ("user", "And the capital of France?"), ("assistant", "Paris is the capital of France.")]


def conversation(n_turns: int, system: bool = True) -> list[dict]:
    msgs = [{"role": r, "content": c} for r, c in TURNS[:n_turns]]
    return ([{"role": "system", "content": "Answer briefly."}] if system else []) + msgs


@pytest.fixture(params=["tiny", "smollm2"])
def tokenizer(request, tiny_model_dir, smollm2_tokenizer_or_skip):
    from ech0.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir)) if request.param == "tiny" else smollm2_tokenizer_or_skip()


def trained_segments(ids: list[int], labels: list[int]) -> list[list[int]]:
    segments, current = [], []
    for tid, lab in zip(ids, labels):
        if lab != -100:
            assert lab == tid, "a trained label is the token itself"
            current.append(tid)
        elif current:
            segments.append(current)
            current = []
    return segments + ([current] if current else [])


@pytest.mark.parametrize("n_turns", [2, 4, 6])
def test_every_assistant_turn_and_its_end_of_turn_token_is_trained(tokenizer, n_turns):
    msgs = conversation(n_turns)
    ids, labels = chat.encode(tokenizer, msgs, train_on="assistant")
    eot = chat.end_of_turn_id(tokenizer)
    segments = trained_segments(ids, labels)
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert len(segments) == len(answers) == n_turns // 2
    for seg, answer in zip(segments, answers):
        assert seg[-1] == eot, "the end-of-turn token is a trained target"
        assert tokenizer.decode(seg[:-1]).strip() == answer  # the answer, nothing of the user's or the header
        assert seg[:-1] == tokenizer(answer, add_special_tokens=False)["input_ids"], "token-exact"
    assert sum(lab != -100 for lab in labels) == sum(len(s) for s in segments)


@pytest.mark.parametrize("n_turns", [2, 4, 6])
def test_train_on_last_and_all(tokenizer, n_turns):
    msgs = conversation(n_turns)
    ids, last = chat.encode(tokenizer, msgs, train_on="last")
    (seg,) = trained_segments(ids, last)
    assert tokenizer.decode(seg[:-1]).strip() == msgs[-1]["content"] and seg[-1] == chat.end_of_turn_id(tokenizer)
    ids_all, every = chat.encode(tokenizer, msgs, train_on="all")
    assert ids_all == ids and every == ids


def test_generation_prompt_is_the_training_prefix(tokenizer):
    """What generation is given is exactly what training saw before the answer's first token."""
    msgs = conversation(4)
    ids, labels = chat.encode(tokenizer, msgs)
    first_of_last = max(i for i, lab in enumerate(labels) if lab == -100 and i + 1 < len(labels)
                        and labels[i + 1] != -100) + 1
    assert chat.prompt_ids(tokenizer, msgs[:-1]) == ids[:first_of_last]


def test_a_template_that_refuses_a_conversation_raises_template_error(tiny_model_dir):
    from ech0.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                         "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(chat.TemplateError, match="roles must alternate"):
        chat.encode(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
