"""Conversations through the data stage: import keeps every turn, the model's chat template must render
each row (``template_error``), redaction covers every turn, dedupe compares whole conversations, and
``--max-tokens`` counts what training tokenizes.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_conversations.py
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

AWS = "AKIAZ7QK4N3XVB2LM5TD"


def turns(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def chat(*pairs, **kw) -> dict:
    return {"messages": turns(*pairs), "tags": ["chat"], "quality_score": 0.9, "metadata": {}, **kw}


def test_import_keeps_every_turn_of_sharegpt_conversations(home, shared_data, read_jsonl, data_main, validate,
                                                          accounted):
    src = shared_data / "dummy_conversation.json"
    if not src.is_file():
        pytest.skip("../shared/data/dummy_conversation.json not present")
    source = json.loads(src.read_text())
    code, out, err = data_main("import", "--input", str(src), "--name", "conv", "--no-progress")
    assert code == 0, err
    raw = accounted("conv", "raw")
    assert raw["counts"] == {"read": len(source), "kept": len(source), "rejected": 0}
    assert raw["shapes"] == {"sharegpt": len(source)}
    rows = read_jsonl(home / "data/raw/conv.jsonl")
    role = {"human": "user", "gpt": "assistant"}
    for obj, row in zip(source, rows, strict=True):
        assert row["metadata"]["id"] == obj["id"] and row["metadata"]["turns"] == len(obj["conversations"])
        assert row["messages"] == [{"role": role[t["from"]], "content": t["value"]} for t in obj["conversations"]]
    assert Counter(len(r["messages"]) for r in rows) == Counter(len(o["conversations"]) for o in source)
    assert set(Counter(len(r["messages"]) for r in rows)) == {2, 4, 6}
    assert validate("conv", name="conv")[0] == 0  # the model's template renders all of them
    clean = accounted("conv", "clean")
    assert clean["counts"]["kept"] == len(source) and clean["reject_reasons"] == {}
    assert [r["messages"] for r in read_jsonl(home / "data/clean/conv.jsonl")] == [r["messages"] for r in rows]


def test_template_error_is_a_reject_not_a_crash(home, tmp_path, write_jsonl, read_jsonl, alternating_tokenizer,
                                               validate, accounted, rejects):
    rows = [chat(("user", "Hi?"), ("assistant", "Hello."), ("user", "More?"), ("assistant", "No.")),
            chat(("user", "Hi?"), ("user", f"Key {AWS}?"), ("assistant", "Hello.")),  # user twice
            {"prompt": "Two plus two?", "completion": "Four."},
            chat(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."))]  # Mistral's refuses a system
    p = write_jsonl(tmp_path / "t.jsonl", rows)
    code, out, err = validate(p, "--tokenizer", str(alternating_tokenizer))
    assert code == 0, err
    m = accounted("d", "clean")
    assert m["reject_reasons"] == {"template_error": 2} and m["counts"]["kept"] == 2
    first, second = rejects()
    assert (first["line"], second["line"]) == (2, 4)
    assert all("Conversation roles must alternate" in r["detail"] for r in (first, second))
    assert first["row"]["messages"][1]["content"] == "Key <SECRET:aws_access_key>?"  # rejects are redacted
    assert AWS not in (home / "data/clean/d.rejects.jsonl").read_text() + out + err
    kept = read_jsonl(home / "data/clean/d.jsonl")
    assert kept[0]["messages"] == rows[0]["messages"] and (kept[1]["prompt"], kept[1]["completion"]) == (
        "Two plus two?", "Four.")


def test_chat_template_override_renders_like_training(ctx, tmp_path, write_jsonl, byte_tokenizer,
                                                      alternating_tokenizer, accounted):
    """``chat_template=`` (training's ``data.chat_template``) replaces the model's own template."""
    from ech0.data.stage import ValidateOptions, run_validate

    template = json.loads((alternating_tokenizer / "tokenizer_config.json").read_text())["chat_template"]
    p = write_jsonl(tmp_path / "o.jsonl", [chat(("user", "a"), ("user", "b"), ("assistant", "c")),
                                           chat(("user", "a"), ("assistant", "c"))])
    base = dict(input=str(p), tokenizer=str(byte_tokenizer), progress=False)
    assert run_validate(ctx, ValidateOptions(name="own", **base))["reject_reasons"] == {}  # ChatML renders both
    man = run_validate(ctx, ValidateOptions(name="over", chat_template=template, **base))
    assert man["reject_reasons"] == {"template_error": 1} and accounted("over", "clean")["counts"]["kept"] == 1


def test_redaction_covers_every_turn(home, tmp_path, write_jsonl, read_jsonl, validate, data_manifest):
    row = chat(("system", "Be helpful."), ("user", "Deploy it."), ("assistant", f"Use key {AWS} and mail bob@example.com"),
               ("user", "Thanks."), ("assistant", "Done."), metadata={"note": f"from {AWS}"})
    code, out, err = validate(write_jsonl(tmp_path / "s.jsonl", [row]))
    assert code == 0, err
    (out_row,) = read_jsonl(home / "data/clean/d.jsonl")
    assert out_row["messages"][2]["content"] == "Use key <SECRET:aws_access_key> and mail <EMAIL>"
    assert [m for i, m in enumerate(out_row["messages"]) if i != 2] == [m for i, m in enumerate(row["messages"])
                                                                        if i != 2]
    assert out_row["metadata"] == {"note": "from <SECRET:aws_access_key>"}
    m = data_manifest("d", "clean")
    assert m["redactions"] == {"secret:aws_access_key": 2, "pii:EMAIL": 1} and m["rows_with_secrets"] == 1
    assert AWS not in (home / "data/clean/d.jsonl").read_text() + json.dumps(m) + out + err
    code, out, err = validate(tmp_path / "s.jsonl", "--fail-on-secrets", name="f")
    assert code == 3 and "line 1 (aws_access_key)" in err and AWS not in err


def test_dedupe_compares_whole_conversations(home, tmp_path, write_jsonl, read_jsonl, validate, accounted, rejects):
    a = chat(("user", "Who are you?"), ("assistant", "A model."), ("user", "Really?"), ("assistant", "Yes."))
    rows = [
        a,
        chat(("user", "who are  you?"), ("assistant", "A MODEL."), ("user", "Really?"), ("assistant", "Yes."),
             quality_score=0.95),  # the same conversation (case, spaces): a duplicate, and the better one
        chat(("user", "Who are you?"), ("assistant", "A model."), ("user", "Really?"), ("assistant", "No.")),
        chat(("user", "Who are you?"), ("user", "A model."), ("user", "Really?"), ("assistant", "Yes.")),  # roles
        chat(("user", "Who are you?"), ("assistant", "A model.")),
        {"prompt": "Who are you?", "completion": "A model.", "quality_score": 0.5},  # the same one-turn chat
    ]
    code, out, err = validate(write_jsonl(tmp_path / "d.jsonl", rows), "--dedupe", "--no-near-dedupe")
    assert code == 0, err
    m = accounted("d", "clean")
    assert [(r["line"], r["reason"], r["duplicate_of_line"]) for r in rejects()] == [(1, "duplicate", 2),
                                                                                     (6, "duplicate", 5)]
    assert m["reject_reasons"] == {"duplicate": 2}
    kept = read_jsonl(home / "data/clean/d.jsonl")
    assert [r.get("messages") for r in kept] == [rows[i]["messages"] for i in (1, 2, 3, 4)]


def test_near_dedupe_sees_every_turn(home, tmp_path, write_jsonl, validate, rejects):
    long = " ".join(f"word{i}" for i in range(200))
    edited = long.replace("word100", "changed")
    rows = [chat(("user", "Tell me."), ("assistant", "Sure."), ("user", "All of it."), ("assistant", long)),
            chat(("user", "Tell me."), ("assistant", "Sure."), ("user", "All of it."), ("assistant", edited)),
            chat(("user", "Tell me."), ("assistant", long))]  # a 2-turn chat sharing the long turn: still close
    assert validate(write_jsonl(tmp_path / "n.jsonl", rows), "--dedupe")[0] == 0
    assert [(r["line"], r["reason"]) for r in rejects()] == [(2, "near_duplicate"), (3, "near_duplicate")]


def test_max_tokens_counts_the_rendered_conversation(home, tmp_path, tiny_model_dir, write_jsonl, read_jsonl,
                                                     validate, rejects):
    """No --tokenizer: the configured model (tiny-llama) renders; the cut falls at training's length."""
    from ech0 import chat as chat_mod
    from ech0.models import load_tokenizer

    rows = [chat(*[(r, f"{r} turn {k} " + "word " * (7 * k)) for k in range(n) for r in ("user", "assistant")])
            for n in (1, 2, 3, 4)] + [{"prompt": "Two plus two? " * 20, "completion": "Four."}]
    tok = load_tokenizer(str(tiny_model_dir))
    lengths = [len(chat_mod.encode(tok, chat_mod.messages_of(r))[0]) for r in rows]
    limit = sorted(lengths)[2]
    code, out, err = validate(write_jsonl(tmp_path / "m.jsonl", rows), "--max-tokens", str(limit))
    assert code == 0, err
    assert sorted(int(r["detail"].split()[0]) for r in rejects()) == sorted(n for n in lengths if n > limit)
    kept = read_jsonl(home / "data/clean/d.jsonl")
    assert len(kept) == sum(n <= limit for n in lengths)
    for r in kept:  # canonical rows training reads directly: a conversation keeps its turns
        assert ("messages" in r) != ("prompt" in r) and chat_mod.messages_of(r)


def test_the_real_demos_persona_dump_is_accounted_for_and_keeps_the_gate_unseen(home, read_jsonl, data_main, validate,
                                                                                accounted, rejects):
    """ech0/sample_data/persona_raw.jsonl (make demo-real's input): every planted flaw is caught, the rest kept."""
    from ech0.eval import BASELINES_DIR
    from ech0.eval.cases import load_baseline
    from ech0.sample_data import persona

    assert persona.PERSONA_RAW_FILE.read_text() == "".join(
        line + "\n" for line in persona.raw_lines(persona.conversations())), "regenerate: scripts/make_sample_data.py"
    lines = persona.PERSONA_RAW_FILE.read_text().splitlines()
    code, _, err = data_main("import", "--input", str(persona.PERSONA_RAW_FILE), "--name", "persona", "--no-progress")
    assert code == 0, err
    raw = accounted("persona", "raw")
    assert raw["counts"]["read"] == len(lines) and raw["reject_reasons"] == {"invalid_json": 1, "empty_content": 1}
    assert set(raw["shapes"]) == {"sharegpt", "openai_chat", "alpaca", "question_answer"}
    assert validate("persona", name="persona")[0] == 0
    clean = accounted("persona", "clean")
    assert clean["redactions"] == {"pii:EMAIL": 1, "pii:PHONE": 1, "secret:aws_access_key": 1}
    assert validate("persona", "--stage", "processed", "--dedupe", name="persona")[0] == 0
    processed = accounted("persona", "processed")
    reasons = Counter(r["reason"] for r in rejects("persona", "processed"))
    assert reasons["duplicate"] == 5  # the 4 planted copies and the re-cased, re-spaced one
    assert reasons["near_duplicate"] == 1 and set(reasons) == {"duplicate", "near_duplicate"}  # the edited re-export
    assert processed["counts"]["kept"] >= 450
    text = (home / "data/processed/persona.jsonl").read_text()
    assert persona.SECRET_KEY not in text and "jane.doe@example.com" not in text
    rows = read_jsonl(home / "data/processed/persona.jsonl")
    asked = {m["content"] for r in rows for m in r.get("messages", []) if m["role"] == "user"}
    asked |= {r["prompt"] for r in rows if "prompt" in r}  # alpaca and question/answer rows
    # the content gate, and the wider forgetting audit, ask phrasings that training never saw
    for name in ("persona.jsonl", "persona_audit.jsonl"):
        for case in load_baseline(BASELINES_DIR / name).cases:
            assert case.request[-1]["content"] not in asked, f"{name}: {case.id}"
