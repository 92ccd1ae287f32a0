"""The data stage in parts: each pass of ``ech0 data validate`` on its own, the shared reject record and
redactor, the Hydra-composed options, and ``--max-tokens`` measuring exactly what training measures (the
conversation rendered by the model's chat template, tokenized as :func:`ech0.chat.encode` tokenizes it).

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_passes.py
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ech0.data import stage
from ech0.data.reader import Rec
from ech0.data.redact import Redactor, apply_spans, pattern_pass
from ech0.data.schema import parse_record, reject_record
from ech0.errors import UserError

AWS = "AKIAZ7QK4N3XVB2LM5TD"


def rec(text, line=1, offset=0, item=None, last=False, **kw) -> Rec:
    return Rec(line, offset, item, text, last=last, **kw)


class FakeTokens:
    """A ChatTokens stand-in: a row renders as its turns' contents joined, ``per_char`` tokens per
    character (records each count call); a turn containing "BAD" cannot be rendered."""

    def __init__(self, per_char: int = 1) -> None:
        self.per_char = per_char
        self.calls: list[int] = []

    def render(self, messages):
        from ech0.chat import TemplateError

        if any("BAD" in m["content"] for m in messages):
            raise TemplateError("the chat template cannot render it (TemplateError: roles must alternate)")
        return "".join(m["content"] for m in messages)

    def count(self, texts):
        self.calls.append(len(texts))
        return np.array([self.per_char * len(t) for t in texts], np.int32)


def worker(tokens=None, **opts) -> stage.Worker:
    o = stage.ValidateOptions(input="x", **opts)
    w = stage.Worker.build(o, None)
    w.tokens = tokens
    return w


def jrow(prompt="What is two plus two?", completion="Four.", **kw) -> str:
    return json.dumps({"prompt": prompt, "completion": completion, **kw})


# ------------------------------------------------------------------------------ shared pieces


def test_parse_record_outcomes():
    assert parse_record(rec('{"a": 1}{"b": 2}')) == ([{"a": 1}, {"b": 2}], None)
    assert parse_record(rec('{"a": 1', last=True))[1][0] == "truncated_line"
    assert parse_record(rec('{"a": 1'))[1][0] == "invalid_json"
    err = Rec(3, 10, None, None, error="line_too_long", detail="too long", preview="{...")
    assert parse_record(err) == ([], ("line_too_long", "too long", "{..."))


def test_reject_record_is_redacted_and_bounded(monkeypatch):
    red = Redactor()
    out = reject_record(rec("x", line=4, offset=99), 2, "wrong_type", f"key {AWS}", red, {}, row={"prompt": AWS})
    assert out == {"line": 4, "offset": 99, "item": 2, "reason": "wrong_type",
                   "detail": "key <SECRET:aws_access_key>", "row": {"prompt": "<SECRET:aws_access_key>"}}
    monkeypatch.setattr("ech0.data.schema.REJECT_TEXT_MAX", 8)
    out = reject_record(rec("x", offset=-1), None, "invalid_json", None, red, {}, text="0123456789abc")
    assert out == {"line": 1, "reason": "invalid_json", "text_truncated_from": 13, "text": "01234567"}


def test_redactor_scan_is_the_one_implementation():
    r = Redactor(extra=[pattern_pass("blocklist[0]", re.compile("rm -rf /"))])
    found, text = r.scan(f"key {AWS} mail bob@example.com; rm -rf /")
    assert found == [("secret", "aws_access_key"), ("pii", "EMAIL"), ("blocklist", "blocklist[0]")]
    assert text == "key <SECRET:aws_access_key> mail <EMAIL>; <BLOCKED:blocklist[0]>"
    assert r.counts == {}  # scan only looks; calling the redactor counts
    assert r(text) == text and r.counts == {}  # placeholders are never redacted again
    assert apply_spans("abcdef", [(1, 2, "X"), (4, 6, "Y")], lambda n: f"<{n}>") == "a<X>cd<Y>"

    from ech0.eval.safety import Scanner

    flags, red = Scanner(blocklist=["rm -rf /"])(f"key {AWS} mail bob@example.com; rm -rf /")
    assert [(f["kind"], f["rule"]) for f in flags] == found and red == text


# ------------------------------------------------------------------------------ pass 1, per row


def test_clean_row_cleans_redacts_and_refuses_empty():
    red = Redactor()
    norm: dict = {}
    row = {"prompt": f"use {AWS}\r\n", "completion": "ok\x00", "tags": ["a\x01"], "quality_score": None,
           "metadata": {"note": "bob@example.com"}}
    out, reason, _ = stage.clean_row(row, norm, red)
    assert reason is None and out == {"prompt": "use <SECRET:aws_access_key>\n", "completion": "ok", "tags": ["a"],
                                      "quality_score": None, "metadata": {"note": "<EMAIL>"}}
    assert norm == {"crlf_in_text": 1, "control_chars": 2}
    assert stage.clean_row({**row, "completion": "\x00\x01"}, {}, red)[1] == "empty_field"


def test_quality_problem():
    assert stage.quality_problem({"quality_score": 0.1}, 0.5)[0] == "low_quality"
    assert stage.quality_problem({"quality_score": None}, 0.5) is None  # unscored rows pass
    assert stage.quality_problem({"quality_score": 0.1}, None) is None


def test_batch_parse_keeps_order_and_accounts_for_every_row():
    recs = [rec(jrow()), rec('{"prompt": 1, "completion": "x"}', line=2), rec(jrow("a") + jrow("b"), line=3),
            rec(jrow(quality_score=0.1), line=4), rec(jrow(f"key {AWS}"), line=5)]
    b = stage.Batch(worker(min_quality=0.5))
    b.parse(recs)
    assert b.kinds == [stage.K_KEEP, stage.K_REJECT, stage.K_KEEP, stage.K_KEEP, stage.K_REJECT, stage.K_KEEP]
    assert b.linenos == [1, 2, 3, 3, 4, 5] and b.split_lines == 1
    assert b.reasons == {"wrong_type": 1, "low_quality": 1}
    assert [c.item for c in b.cands] == [None, 0, 1, None]
    assert b.secret_rows == [(5, ["aws_access_key"])]
    assert AWS not in b.cands[-1].row["prompt"]


# ------------------------------------------------------------------------------ pass 1, tokens


def test_byte_bounds_and_rows_to_measure():
    assert stage.byte_bounds(["é" * 10 + "abc", "xy"]) == [20 + 3 + stage.TOKEN_BOUND_SLACK, 2 + stage.TOKEN_BOUND_SLACK]
    bounds = [10, 100, 10, 10] * 10
    need = stage.rows_to_measure(bounds, 50, every=False)
    assert set(range(1, 40, 4)) <= set(need)  # every row over the limit's bound is measured
    assert len(need) <= 10 + stage.TOKEN_SAMPLE_PER_BATCH
    assert stage.rows_to_measure(bounds, 50, every=True) == list(range(40))
    assert stage.rows_to_measure(bounds, None, every=False) == list(range(0, 40, 5))  # no limit: the sample only


def test_filter_tokens_rejects_long_rows_and_skips_provable_ones():
    tokens = FakeTokens()
    b = stage.Batch(worker(tokens, max_tokens=60))
    b.parse([rec(jrow("x" * 100), line=1), rec(jrow(), line=2)])
    b.render()
    b.filter_tokens()
    assert b.kinds == [stage.K_REJECT, stage.K_KEEP] and b.reasons == {"too_many_tokens": 1}
    reject = json.loads(b.lines[0])
    assert reject["reason"] == "too_many_tokens" and reject["detail"] == "105 tokens > --max-tokens 60"
    assert reject["offset"] == 0 and reject["row"]["prompt"] == "x" * 100
    assert b.tok_info["bound_violations"] == 0 and b.w.bound_ok


def test_filter_tokens_switches_to_every_row_when_the_bound_breaks():
    tokens = FakeTokens(per_char=10)  # breaks "one token per byte"
    w = worker(tokens, max_tokens=10_000)
    b = stage.Batch(w)
    b.parse([rec(jrow(f"q{i}"), line=i + 1) for i in range(40)])
    b.render()
    b.filter_tokens()
    assert not w.bound_ok and b.tok_info["measured"] == 40 and b.tok_info["skipped_by_bound"] == 0
    b2 = stage.Batch(w)
    b2.parse([rec(jrow(f"r{i}"), line=i + 1) for i in range(40)])
    b2.render()
    b2.filter_tokens()
    assert tokens.calls[-1] == 40  # from then on every row is measured in one call


def test_render_rejects_what_the_template_cannot_render_and_keeps_order():
    convo = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "BAD"}]})
    b = stage.Batch(worker(FakeTokens(), max_tokens=100))
    b.parse([rec(jrow("a"), line=1), rec(convo, line=2), rec(jrow("b"), line=3)])
    b.render()
    assert b.kinds == [stage.K_KEEP, stage.K_REJECT, stage.K_KEEP] and b.reasons == {"template_error": 1}
    assert b.texts == ["aFour.", "bFour."] and [c.rec.line for c in b.cands] == [1, 3]
    reject = json.loads(b.lines[1])
    assert reject["reason"] == "template_error" and "alternate" in reject["detail"]
    assert reject["row"]["messages"][1]["content"] == "BAD"
    b.filter_tokens()
    assert b.tok_info["measured"] + b.tok_info["skipped_by_bound"] == 2


def test_sign_keys_signatures_and_rows():
    b = stage.Batch(worker(dedupe=True))
    b.parse([rec(jrow("Hello  World")), rec(jrow("hello world"), line=2)])
    b.sign()
    assert b.keys[0] == b.keys[1] and b.sig16.shape == (2, 128) and (b.sig16[0] == b.sig16[1]).all()
    assert json.loads(b.lines[0])["prompt"] == "Hello  World"
    res = b.result()
    assert res["kinds"].dtype == np.int8 and res["linenos"].tolist() == [1, 2]


# ------------------------------------------------------------------------------ spill, dedupe, pass 2


def _spill(tmp_path, lines, kinds, quality, keys=()):
    sp = stage.Spill(tmp_path / ".x.spill", 128)
    sp.add({"lines": lines, "kinds": np.array(kinds, np.int8), "linenos": np.arange(1, len(lines) + 1),
            "quality": np.array(quality, np.float32), "keys": np.array(keys, np.int64),
            "sig16": None, "ntok": None, "tok_info": {}, "reasons": {"wrong_type": kinds.count(stage.K_REJECT)},
            "redactions": {}, "normalizations": {}, "secret_rows": [], "split_lines": 0})
    sp.close()
    return sp


def test_spill_keeps_order_and_reads_rows_back(tmp_path):
    lines = [jrow("A b").encode(), b'{"line": 2, "reason": "wrong_type"}', jrow("c").encode()]
    sp = _spill(tmp_path, lines, [0, 1, 0], [0.5, -1, 0.5])
    assert sp.path.read_bytes() == b"\n".join(lines) + b"\n"
    assert sp.kinds.tolist() == [0, 1, 0]
    assert sp.offsets.tolist() == [0, len(lines[0]) + 1, len(lines[0]) + len(lines[1]) + 2]
    assert sp.normalised_text(0) == "user: a b assistant: four."  # the whole conversation, roles included
    sp.remove()
    assert not sp.path.exists()


def test_representatives_keep_best_then_earliest():
    groups = np.array([7, 7, 7, 3, 3])
    quality = np.array([0.2, 0.9, 0.9, -1.0, -1.0])
    removed, kept_to = stage.representatives(groups, quality, np.arange(5))
    assert sorted(zip(removed.tolist(), kept_to.tolist())) == [(0, 1), (2, 1), (4, 3)]


def test_dedupe_marks_exact_duplicates_in_place():
    kinds = np.array([0, 1, 0, 0], np.int8)
    keys = np.array([5, 9, 5], np.int64)  # one per kept row (rows 0, 2, 3)
    d = stage.dedupe(kinds, np.array([0.1, -1, 0.8, 0.3], np.float32), keys, type("Store", (), {"n": 0})(),
                     stage.ValidateOptions(input="x", dedupe=True))
    assert kinds.tolist() == [stage.K_DUP, 1, 0, 0] and d.dup_of[0] == 3 and d.similarity[0] == 1.0
    assert d.stats["exact"]["rows_removed"] == 1 and d.stats["exact"]["clusters"] == 1 and "near" not in d.stats


def test_fail_on_secrets_names_rows_and_types_never_values(tmp_path):
    stage.fail_on_secrets(tmp_path / "in.jsonl", [])
    with pytest.raises(stage.SecretsFound) as e:
        stage.fail_on_secrets(tmp_path / "in.jsonl", [(n, ["github_token"]) for n in range(1, 8)])
    assert e.value.exit_code == 3 and "line 5 (github_token)" in str(e.value) and "2 more" in str(e.value)
    assert "github_token x7" in str(e.value)


def test_write_outputs_and_account(tmp_path):
    lines = [jrow("a").encode(), b'{"line": 2, "reason": "wrong_type"}', jrow("a").encode()]
    sp = _spill(tmp_path, lines, [0, 1, 0], [0.5, -1, 0.1], keys=[4, 4])  # keys: one per kept row
    d = stage.dedupe(sp.kinds, sp.quality, sp.keys, sp.sigs, stage.ValidateOptions(input="x", dedupe=True))
    written = stage.write_outputs(sp, d, tmp_path / "out.jsonl", tmp_path / "rej.jsonl")
    assert written == (1, 2)
    rej = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert rej[1] == {"line": 3, "reason": "duplicate", "duplicate_of_line": 1, "row": json.loads(lines[2])}
    reasons = dict(sp.reasons)
    assert stage.account(d.kinds, reasons, written) == (1, 2) and reasons == {"wrong_type": 1, "duplicate": 1}
    with pytest.raises(AssertionError):
        stage.account(d.kinds, {"wrong_type": 1}, (2, 1))


def test_manifest_timestamps_are_utc_seconds(home, tmp_path, make_row, write_jsonl, data_manifest, data_main):
    p = write_jsonl(tmp_path / "t.jsonl", [make_row()])
    assert data_main("import", "--input", str(p), "--no-progress")[0] == 0
    assert data_main("validate", "--input", "t", "--no-progress")[0] == 0
    for level in ("raw", "clean"):
        m = data_manifest("t", level)
        for key in ("started_at", "finished_at"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", m[key]), (level, key, m[key])


# ------------------------------------------------------------------------------ options through Hydra


def test_flags_and_overrides_compose_onto_the_schema():
    from ech0.data.cli import compose_config, parse, validate_options

    cmd, flags, overrides, _ = parse(["validate", "--input", "x", "--max-tokens", "512", "--dedupe",
                                      "--no-near-dedupe", "--no-redact-pii", "--no-progress", "model=mistral-7b",
                                      "dedupe.threshold=0.9"])
    assert cmd == "validate" and overrides == ["model=mistral-7b", "dedupe.threshold=0.9"]
    assert flags == {"input": "x", "max_tokens": 512, "dedupe.enabled": True, "dedupe.near": False,
                     "redact.pii": False, "progress": False}
    opts = validate_options(compose_config(flags, overrides))
    assert (opts.max_tokens, opts.dedupe, opts.near_dedupe, opts.redact_pii, opts.threshold, opts.progress) == (
        512, True, False, False, 0.9, False)
    assert opts.model == "mistralai/Mistral-7B-Instruct-v0.3" and (opts.max_turns, opts.chat_template) == (64, None)
    _, flags, overrides, _ = parse(["validate", "--input", "x", "--max-turns", "8", "chat_template='{{ 1 }}'"])
    assert validate_options(compose_config(flags, overrides)).max_turns == 8
    assert validate_options(compose_config(flags, overrides)).chat_template == "{{ 1 }}"
    _, flags, _, _ = parse(["import", "--input", "x", "--tag", "a", "--tag", "b", "--map", "prompt=q", "--flatten"])
    assert flags == {"input": "x", "tags": ["a", "b"], "map": ["prompt=q"], "flatten": True}


@pytest.mark.parametrize("argv,needle", [
    (["validate", "--input", "x", "--bogus"], "unrecognized argument '--bogus'"),
    (["validate", "--input", "x", "stray"], "unrecognized argument 'stray'"),
    (["validate", "--input", "x", "max_tokenz=3"], "max_tokenz"),
    (["validate", "--input", "x", "max_tokens=abc"], "max_tokens"),
    (["validate", "--input", "x", "--max-tokens", "abc"], "--max-tokens"),
    (["validate", "--input", "x", "--max-turns", "0"], "max_turns=0: expected a positive integer"),
    (["validate", "--input", "x", "model=nope"], "unknown model 'nope'; available: mistral-7b, "),
    (["validate", "--stage", "clean"], "--input is required"),
    (["import", "--input", "x", "--stage", "clean"], "unrecognized argument '--stage'"),
])
def test_bad_flags_and_overrides_are_one_line(data_main, argv, needle):
    code, out, err = data_main(*argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err and out == ""


def test_model_picks_the_tokenizer(ctx, monkeypatch):
    import ech0.models

    seen = []
    monkeypatch.setattr(ech0.models, "resolve", lambda name, recipe, base: seen.append((name, recipe, base)) or name)
    opts = stage.ValidateOptions(input="x", max_tokens=5, model="mistralai/Mistral-7B-Instruct-v0.3")
    assert stage.tokenizer_for(ctx, opts) == "mistralai/Mistral-7B-Instruct-v0.3"
    assert seen == [("mistralai/Mistral-7B-Instruct-v0.3", {}, ctx.base_models)]
    assert stage.tokenizer_for(ctx, stage.ValidateOptions(input="x", max_tokens=5, tokenizer="/t")) == "/t"
    clean = stage.ValidateOptions(input="x", model="m")
    assert stage.tokenizer_for(ctx, clean) == "m"  # the clean stage renders every row through the template
    assert stage.tokenizer_for(ctx, stage.ValidateOptions(input="x", stage="processed")) is None  # nothing to do


# ------------------------------------------------------------------------------ --max-tokens = training's length


MULTI_TURN = [  # rows training sees as conversations: a system turn, 4 and 6 turns, unicode, a long turn
    {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky colour?"},
                  {"role": "assistant", "content": "Blue."}]},
    {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A model."},
                  {"role": "user", "content": "Sûr ? ünïcödé — 雪"}, {"role": "assistant", "content": "Oui, sûr."}]},
    {"messages": [m for k in range(3) for m in ({"role": "user", "content": f"question {k} " * (5 + k)},
                                                {"role": "assistant", "content": "the answer " * (40 * k + 1)})]},
]


def _training_lengths(folder, rows):
    """What training tokenizes for each row: ``chat.encode`` through the model's own chat template."""
    from ech0 import chat
    from ech0.models import load_tokenizer

    tok = load_tokenizer(str(folder))
    return [len(chat.encode(tok, chat.messages_of(r))[0]) for r in rows]


@pytest.fixture(scope="module")
def sample_rows():
    from ech0.sample_data import TRAIN_FILE

    with open(TRAIN_FILE, encoding="utf-8") as f:
        return [json.loads(x) for x in f][:60]


@pytest.mark.parametrize("which", ["byte", "tiny"])
def test_chat_tokens_equal_training_encoding(which, byte_tokenizer, tiny_model_dir, sample_rows):
    """``--max-tokens`` counts ``len(tok(chat.render(tok, msgs), add_special_tokens=False))``, which is
    ``len(chat.encode(tok, msgs)[0])``: sample rows and multi-turn rows, a tokenizer without a chat
    template (the default one) and the tiny model's own."""
    from ech0 import chat
    from ech0.data.tokens import ChatTokens

    folder = byte_tokenizer if which == "byte" else tiny_model_dir
    rows = sample_rows + MULTI_TURN
    ct = ChatTokens(str(folder))
    texts = [ct.render(chat.messages_of(r)) for r in rows]
    assert texts == [chat.render(ct.tok, chat.messages_of(r)) for r in rows]
    assert ct.count(texts).tolist() == _training_lengths(folder, rows)
    assert all(n <= b for n, b in zip(ct.count(texts).tolist(), stage.byte_bounds(texts)))


def test_fast_render_fails_exactly_where_chat_render_fails(alternating_tokenizer, sample_rows):
    """The compiled-once template renders what ``chat.render`` renders and refuses what it refuses, with
    ``chat.render``'s own error."""
    from ech0 import chat
    from ech0.data.tokens import ChatTokens

    ct = ChatTokens(str(alternating_tokenizer))
    assert ct._template is not None  # the fast path is the one under test
    for r in sample_rows[:10] + MULTI_TURN:
        msgs = chat.messages_of(r)
        try:
            expected = chat.render(ct.tok, msgs)
        except chat.TemplateError as e:
            with pytest.raises(chat.TemplateError) as got:
                ct.render(msgs)
            assert str(got.value) == str(e) and "must alternate" in str(e)
            continue
        assert ct.render(msgs) == expected and expected.startswith("<s>[INST] ")


def test_unloadable_tokenizer_or_template_is_a_one_line_user_error(tmp_path, byte_tokenizer):
    from ech0.data.tokens import ChatTokens

    with pytest.raises(UserError, match="cannot load") as e:
        ChatTokens(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="chat_template=... does not compile") as e:
        ChatTokens(str(byte_tokenizer), chat_template="{% for m in messages %}{{ m.content }")
    assert "\n" not in str(e.value)


def test_max_tokens_with_the_configured_model_is_the_training_length(tiny_model_dir, sample_rows, tmp_path,
                                                                     write_jsonl, read_jsonl, data_main, home):
    """No --tokenizer: the default ``model`` (tiny-llama) measures; the cut falls exactly at training's length."""
    lengths = _training_lengths(tiny_model_dir, sample_rows)
    limit = sorted(lengths)[len(lengths) // 2]
    p = write_jsonl(tmp_path / "s.jsonl", sample_rows)
    code, out, err = data_main("validate", "--input", str(p), "--max-tokens", str(limit), "--no-progress")
    assert code == 0, err
    kept = read_jsonl(home / "data/clean/s.jsonl")
    rejected = read_jsonl(home / "data/clean/s.rejects.jsonl")
    assert len(kept) == sum(n <= limit for n in lengths) and all(r["reason"] == "too_many_tokens" for r in rejected)
    over = [n for n in lengths if n > limit]
    assert sorted(int(r["detail"].split()[0]) for r in rejected) == sorted(over)
