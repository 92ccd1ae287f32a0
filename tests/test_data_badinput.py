"""Bad input: every case has a clear outcome, nothing is lost, fatal problems leave nothing behind
(conversations included: one reason code for each way a chat can be wrong).

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_badinput.py
"""

from __future__ import annotations

import gzip
import json

import pytest


ROW_LINE = json.dumps({"prompt": "What is two plus two?", "completion": "Four."}) + "\n"  # for parametrize


def nothing_written(home):
    data = home / "data"
    left = [p for p in data.rglob("*") if p.is_file()] if data.exists() else []
    meta = home / "metadata"
    # metadata/locks/ holds the dataset's lock files (coordination, never data or a manifest)
    left += [p for p in meta.rglob("*") if p.is_file() and p.parent.name != "locks"] if meta.exists() else []
    return left == []


def test_invalid_utf8_reported_with_line_and_offset_and_keeps_going(tmp_path, make_row, write_jsonl, accounted,
                                                                    validate, rejects):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row()], [b'{"prompt": "caf\xe9", "completion": "x"}\n'])
    with open(p, "ab") as f:
        f.write((json.dumps(make_row("after")) + "\n").encode())
    code, out, err = validate(p)
    assert code == 0, err
    m = accounted("d", "clean")
    assert m["counts"]["kept"] == 2
    (r,) = rejects()
    assert r["reason"] == "invalid_utf8" and r["line"] == 2
    first_len = len(json.dumps(make_row())) + 1
    bad_at = first_len + len(b'{"prompt": "caf')
    assert f"byte offset {bad_at}" in r["detail"]
    assert "\\xe9" in r["text"]  # the raw line is kept (escaped) so nothing is lost
    assert "read 3 = kept 2 + rejected 1" in out


def test_bom_and_crlf(tmp_path, make_row, accounted, validate):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (json.dumps(make_row("a")) + "\r\n" + json.dumps(make_row("b")) + "\r\n").encode())
    code, out, err = validate(p)
    assert code == 0, err
    m = accounted("d", "clean")
    assert m["counts"]["kept"] == 2
    assert m["normalizations"]["bom"] == 1 and m["normalizations"]["crlf"] == 2


def test_crlf_inside_text_is_normalised(home, tmp_path, make_row, write_jsonl, read_jsonl, validate):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row("line one\r\nline two")])
    assert validate(p)[0] == 0
    (r,) = read_jsonl(home / "data/clean/d.jsonl")
    assert r["prompt"] == "line one\nline two"


def test_truncated_last_line(tmp_path, make_row, write_jsonl, accounted, validate, reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row()], ['{"prompt": "cut off", "compl'])
    code, out, err = validate(p)
    assert code == 0, err
    accounted("d", "clean")
    assert reasons() == ["truncated_line"]


def test_blank_lines_are_counted_not_rows(tmp_path, make_row, write_jsonl, accounted, validate):
    blank = ["\n", "   \n", "\t\n", json.dumps(make_row("b")) + "\n", "\n"]
    p = write_jsonl(tmp_path / "in.jsonl", [make_row()], blank)
    code, out, err = validate(p)
    assert code == 0
    m = accounted("d", "clean")
    assert m["counts"] == {"read": 2, "kept": 2, "rejected": 0}
    assert m["normalizations"]["blank_lines"] == 4


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"[]", b"[\n]\n"])
def test_empty_file_is_a_one_line_error(home, tmp_path, content, validate):
    p = tmp_path / "in.jsonl"
    p.write_bytes(content)
    code, out, err = validate(p)
    assert code == 2
    assert err.count("\n") == 1 and "in.jsonl" in err and ("empty" in err or "no rows" in err)
    assert nothing_written(home)


def test_json_array_where_jsonl_expected(tmp_path, make_row, accounted, validate, rejects):
    p = tmp_path / "in.json"
    p.write_text(json.dumps([make_row("a"), make_row("b"), 5], indent=2))
    code, out, err = validate(p)
    assert code == 0, err
    m = accounted("d", "clean")
    assert m["input"]["format"] == "array"
    assert m["counts"] == {"read": 3, "kept": 2, "rejected": 1}
    assert rejects()[0]["item"] == 2 and rejects()[0]["reason"] == "not_an_object"


def test_jsonl_where_json_expected_and_pretty_printed_objects(tmp_path, make_row, write_jsonl, data_main, accounted,
                                                              validate):
    # import is documented for "legacy JSON"; JSONL and concatenated pretty-printed objects work too
    p = write_jsonl(tmp_path / "legacy.json", [{"instruction": "Say hi", "output": "hi"}] * 2)
    assert data_main("import", "--input", str(p), "--no-progress")[0] == 0
    assert accounted("legacy", "raw")["counts"]["kept"] == 2
    q = tmp_path / "pretty.json"
    q.write_text("\n".join(json.dumps(make_row(str(i)), indent=2) for i in range(3)))
    code, out, err = validate(q, name="pretty")
    assert code == 0, err
    m = accounted("pretty", "clean")
    assert m["input"]["format"] == "stream" and m["counts"]["kept"] == 3


def test_several_objects_on_one_line_are_split(tmp_path, make_row, accounted, validate):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps(make_row("a")) + json.dumps(make_row("b")) + " " + json.dumps(make_row("c")) + "\n")
    code, out, err = validate(p)
    assert code == 0
    m = accounted("d", "clean")
    assert m["counts"]["kept"] == 3 and m["normalizations"]["lines_with_several_objects"] == 1


def test_non_object_rows(tmp_path, make_row, write_jsonl, accounted, validate, reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row(), [1, 2], "text", 3, None, True])
    validate(p)
    accounted("d", "clean")
    assert reasons() == ["not_an_object"] * 5


def test_missing_and_unknown_keys(home, tmp_path, make_row, write_jsonl, read_jsonl, accounted, validate, rejects,
                                  reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}, {"completion": "y"}, dict(make_row(), respones="typo"),
                                            {"prompt": "a", "completion": "b"}])
    validate(p)
    m = accounted("d", "clean")
    assert reasons() == ["missing_key", "missing_key", "unknown_key"]
    assert "respones" in rejects()[2]["detail"]
    (kept,) = read_jsonl(home / "data/clean/d.jsonl")
    assert kept == {"prompt": "a", "completion": "b", "tags": [], "quality_score": None, "metadata": {}}
    assert m["counts"]["kept"] == 1


def test_wrong_types_are_strict(home, tmp_path, make_row, write_jsonl, read_jsonl, accounted, validate, reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [
        make_row(tags="crypto"),  # a string is not a list of characters
        make_row(quality_score=True),  # a boolean is not a score
        make_row(quality_score="0.9"),
        make_row(prompt=["a"]),
        make_row(metadata=[1]),
        make_row(tags=["ok", 3]),
        make_row(quality_score=1.5),
        make_row(quality_score=-0.1),
        make_row(quality_score=1),  # an int in range is fine
    ])
    validate(p)
    m = accounted("d", "clean")
    assert reasons() == ["wrong_type"] * 6 + ["out_of_range"] * 2
    assert m["counts"]["kept"] == 1
    assert read_jsonl(home / "data/clean/d.jsonl")[0]["quality_score"] == 1.0


@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
def test_nan_infinity(home, tmp_path, const, make_row, write_jsonl, accounted, validate, reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row()],
                    [f'{{"prompt": "a", "completion": "b", "quality_score": {const}}}\n',
                     f'{{"prompt": "a", "completion": "b", "metadata": {{"x": {const}}}}}\n'])
    code, out, err = validate(p)
    assert code == 0
    accounted("d", "clean")
    assert reasons() == ["non_finite", "non_finite"]
    # the rejects file is strict JSON (no NaN literal leaks out)
    for line in open(home / "data/clean/d.rejects.jsonl"):
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_duplicate_keys(tmp_path, write_jsonl, accounted, validate, reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [], ['{"prompt": "a", "completion": "b", "prompt": "c"}\n',
                                                '{"prompt": "a", "completion": "b", "metadata": {"k": 1, "k": 2}}\n'])
    validate(p)
    accounted("d", "clean")
    assert reasons() == ["duplicate_key", "duplicate_key"]


def test_empty_and_whitespace_fields(tmp_path, make_row, write_jsonl, accounted, validate, reasons):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row(""), make_row("   \n\t"), make_row("a", ""), make_row(tags=[" "]),
                                            make_row("\u0000\u0001")])
    validate(p)
    accounted("d", "clean")
    assert reasons() == ["empty_field"] * 5


def test_megabyte_lines_are_capped(tmp_path, make_row, write_jsonl, accounted, validate, rejects):
    big = json.dumps(make_row("x" * (3 << 20)))  # 3 MB line, over the 1 MiB default cap
    p = write_jsonl(tmp_path / "in.jsonl", [make_row("a")], [big + "\n", json.dumps(make_row("b")) + "\n"])
    code, out, err = validate(p)
    assert code == 0
    m = accounted("d", "clean")
    (r,) = rejects()
    assert r["reason"] == "line_too_long" and r["line"] == 2 and str(len(big) + 1) in r["detail"]
    assert len(json.dumps(r)) < 2000  # a preview, not the megabytes
    assert m["counts"]["kept"] == 2
    code, out, err = validate(p, "--max-line-bytes", str(8 << 20), name="d2")
    assert accounted("d2", "clean")["counts"]["kept"] == 3


def test_deeply_nested_values(tmp_path, make_row, write_jsonl, accounted, validate, reasons):
    deep = "[" * 100000 + "]" * 100000
    nested = {"a": 1}
    for _ in range(50):
        nested = {"n": nested}
    p = write_jsonl(tmp_path / "in.jsonl", [make_row(metadata=nested), make_row()],
                    [f'{{"prompt": "a", "completion": "b", "metadata": {{"x": {deep}}}}}\n'])
    code, out, err = validate(p)
    assert code == 0, err
    accounted("d", "clean")
    assert reasons() == ["too_deep", "too_deep"]


def test_lone_surrogates_become_replacement_chars(home, tmp_path, write_jsonl, read_jsonl, accounted, validate):
    p = write_jsonl(tmp_path / "in.jsonl", [], ['{"prompt": "bad \\ud800 here", "completion": "ok \\udfff", '
                                                '"metadata": {"k": "\\ud801"}}\n',
                                                '{"prompt": "pair \\ud83d\\ude00 fine", "completion": "x"}\n'])
    code, out, err = validate(p)
    assert code == 0, err
    m = accounted("d", "clean")
    rows = read_jsonl(home / "data/clean/d.jsonl")
    assert rows[0]["prompt"] == "bad \ufffd here" and rows[0]["metadata"]["k"] == "\ufffd"
    assert rows[1]["prompt"] == "pair \U0001F600 fine"
    assert m["normalizations"]["lone_surrogate"] == 3


def test_nul_and_control_characters(home, tmp_path, make_row, write_jsonl, read_jsonl, accounted, validate):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row("a\u0000b\u0007c\u001bd\u007f\u0085e\tf\ng")])
    p2 = tmp_path / "raw.jsonl"  # raw control bytes inside strings (not valid strict JSON) are accepted too
    p2.write_bytes(b'{"prompt": "x\x01y\x00z", "completion": "ok"}\n')
    assert validate(p)[0] == 0
    assert read_jsonl(home / "data/clean/d.jsonl")[0]["prompt"] == "abcde\tf\ng"
    assert accounted("d", "clean")["normalizations"]["control_chars"] == 1
    assert validate(p2, name="d2")[0] == 0
    assert read_jsonl(home / "data/clean/d2.jsonl")[0]["prompt"] == "xyz"


def test_line_and_paragraph_separators(home, tmp_path, make_row, read_jsonl, accounted, validate):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps(make_row("one\u2028two\u2029three"), ensure_ascii=False) + "\n"
                 + json.dumps(make_row("b")) + "\n",
                 encoding="utf-8")
    assert validate(p)[0] == 0
    m = accounted("d", "clean")
    assert m["counts"]["kept"] == 2  # U+2028 did not split the line
    assert read_jsonl(home / "data/clean/d.jsonl")[0]["prompt"] == "one\ntwo\nthree"
    raw = (home / "data/clean/d.jsonl").read_bytes()
    assert "\u2028".encode() not in raw


def test_zero_width_characters_do_not_dodge_exact_dedupe(home, tmp_path, make_row, write_jsonl, read_jsonl, accounted,
                                                         validate, rejects):
    p = write_jsonl(tmp_path / "in.jsonl", [make_row("Hello world", quality_score=0.5),
                                            make_row("Hel\u200blo\u2060 wo\ufeffrld", quality_score=0.9),
                                             make_row("HELLO   world", quality_score=0.1)])
    assert validate(p, "--dedupe")[0] == 0
    accounted("d", "clean")
    (kept,) = read_jsonl(home / "data/clean/d.jsonl")
    assert kept["quality_score"] == 0.9  # the highest-quality copy survives
    assert sorted(r["duplicate_of_line"] for r in rejects()) == [2, 2]


@pytest.mark.parametrize("content,needle", [
    (ROW_LINE.encode("utf-16"), "UTF-16"),
    (ROW_LINE.encode("utf-16-le"), "UTF-16"),
    (gzip.compress(b'{"a": 1}\n', mtime=0), "gzip"),
    (bytes(range(256)) * 40, "binary"),
    (b"prompt,completion\nhello,world\n" * 30, "not JSON"),
    (b"just some text\nnot json at all\n", "not JSON"),
])
def test_fatal_inputs_one_line_exit_2_nothing_left(home, tmp_path, content, needle, data_main, validate):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    code, out, err = validate(p)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and str(p) in err and needle in err
    assert "Traceback" not in err
    assert nothing_written(home)
    code, out, err = data_main("import", "--input", str(p), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and nothing_written(home)


def test_unreadable_file_and_directory(tmp_path, make_row, write_jsonl, validate):
    code, out, err = validate(tmp_path / "missing.jsonl")
    assert code == 2 and "missing.jsonl" in err and err.count("\n") == 1
    code, out, err = validate(tmp_path)
    assert code == 2 and "directory" in err
    p = write_jsonl(tmp_path / "locked.jsonl", [make_row()])
    p.chmod(0)
    try:
        if open(p, "rb"):  # running as root: permissions do not apply
            pytest.skip("root can read a chmod 000 file")
    except PermissionError:
        code, out, err = validate(p)
        assert code == 2 and "cannot read" in err
    finally:
        p.chmod(0o600)


def test_malformed_array_is_fatal_with_position(home, tmp_path, validate):
    p = tmp_path / "a.json"
    p.write_text('[\n{"prompt": "a", "completion": "b"},\n{"prompt": "a" "completion": "b"}\n]')
    code, out, err = validate(p)
    assert code == 2 and "line 3" in err and err.count("\n") == 1
    assert nothing_written(home)


def test_truncated_array_keeps_complete_items(tmp_path, accounted, validate, reasons):
    p = tmp_path / "a.json"
    p.write_text('[{"prompt": "a", "completion": "b"}, {"prompt": "c", "compl')
    code, out, err = validate(p)
    assert code == 0, err
    m = accounted("d", "clean")
    assert m["counts"] == {"read": 2, "kept": 1, "rejected": 1} and reasons() == ["truncated_line"]


# ------------------------------------------------------------------------------ conversations


def _turns(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


CHAT_OK = _turns(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."))
BAD_CHATS = [  # (messages, reason, a piece of the detail)
    (_turns(("user", "Hi?"), ("tool", "42"), ("assistant", "ok")), "unknown_role", "messages[1].role 'tool'"),
    ([{"role": 3, "content": "x"}, {"role": "assistant", "content": "y"}], "unknown_role", "messages[0].role integer"),
    (_turns(("user", "Hi?"), ("assistant", "   ")), "empty_content", "messages[1].content is empty"),
    (_turns(("user", "\x00\x01"), ("assistant", "ok")), "empty_content", "after removing control characters"),
    ([{"role": "user", "content": [{"type": "text", "text": "Hi?"}]}, {"role": "assistant", "content": "ok"}],
     "non_string_content", "messages[0].content: expected a string, got array"),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}], "non_string_content", "got null"),
    (_turns(("system", "s"), ("user", "Hi?"), ("user", "Anyone?")), "no_assistant_turn", "no assistant turn"),
    (_turns(("user", "Hi?"), ("system", "Be brief."), ("assistant", "ok")), "system_not_first", "messages[1]"),
    (_turns(*[("user", "q"), ("assistant", "a")] * 33), "too_many_turns", "66 turns > max_turns 64"),
    ([], "empty_field", "messages is an empty list"),
    ({"role": "user"}, "wrong_type", "messages: expected an array"),
    (["hi", {"role": "assistant", "content": "ok"}], "wrong_type", "messages[0]: expected an object"),
    ([{"role": "user"}, {"role": "assistant", "content": "ok"}], "missing_key", "messages[0]: missing 'content'"),
    ([{"role": "user", "content": "q", "name": "bob"}, {"role": "assistant", "content": "ok"}], "unknown_key",
     "messages[0]: unknown key 'name'"),
]


def test_each_conversation_problem_has_its_reason(home, tmp_path, write_jsonl, read_jsonl, accounted, validate,
                                                   rejects):
    rows = [{"messages": CHAT_OK}] + [{"messages": m, "tags": ["t"]} for m, _, _ in BAD_CHATS]
    rows.append({"messages": CHAT_OK, "prompt": "p"})  # a row is a conversation or a pair, not both
    code, out, err = validate(write_jsonl(tmp_path / "c.jsonl", rows))
    assert code == 0, err
    m = accounted("d", "clean")
    (kept,) = read_jsonl(home / "data/clean/d.jsonl")
    assert kept["messages"] == CHAT_OK and set(kept) == {"messages", "tags", "quality_score", "metadata"}
    got = rejects()
    assert [(r["line"], r["reason"]) for r in got] == [(i + 2, reason) for i, (_, reason, _) in enumerate(BAD_CHATS)] \
        + [(len(rows), "unknown_key")]
    for r, (_, _, needle) in zip(got, BAD_CHATS):
        assert needle in r["detail"], (r["reason"], r["detail"])
    assert "'prompt'" in got[-1]["detail"] and "messages" in got[-1]["detail"]
    assert m["reject_reasons"]["unknown_role"] == 2 and m["counts"]["kept"] == 1


def test_max_turns_is_configurable(tmp_path, write_jsonl, accounted, validate, reasons):
    six = {"messages": _turns(*[("user", "q"), ("assistant", "a")] * 3)}
    p = write_jsonl(tmp_path / "t.jsonl", [six, {"messages": CHAT_OK}])
    assert validate(p, "--max-turns", "4")[0] == 0
    assert accounted("d", "clean")["options"]["max_turns"] == 4 and reasons() == ["too_many_turns"]
    assert validate(p, "max_turns=6", name="e")[0] == 0
    assert accounted("e", "clean")["counts"]["rejected"] == 0
