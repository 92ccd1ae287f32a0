"""Import: the common dataset shapes, --map, provenance, and the CLI entry points.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_import.py
"""

from __future__ import annotations

import json
import time



SHAPES = [
    ({"prompt": "p", "completion": "c", "tags": ["x"], "quality_score": 0.5, "id": 7}, "prompt_completion", "p", "c"),
    ({"instruction": "Translate", "input": "hola", "output": "hello"}, "alpaca", "Translate\n\nhola", "hello"),
    ({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca", "Say hi", "hi"),
    ({"question": "2+2?", "answer": "4"}, "question_answer", "2+2?", "4"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
     "openai_chat", "hi", "hello"),
    ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "a1"}, {"role": "user", "content": "more"},
                   {"role": "assistant", "content": [{"type": "text", "text": "a2"}]}]},
     "openai_chat", "System: be brief\n\nUser: hi\n\nAssistant: a1\n\nUser: more", "a2"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt", "q", "a"),
]


CHAT_TURNS = {  # what the default import keeps of SHAPES' chats: every turn, roles canonical
    4: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    5: [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "more"},
        {"role": "assistant", "content": "a2"}],
    6: [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
}


def _import_shapes(tmp_path, write_jsonl, read_jsonl, data_main, home, name, *flags):
    p = write_jsonl(tmp_path / f"{name}.jsonl", [s[0] for s in SHAPES])
    code, out, err = data_main("import", "--input", str(p), "--tag", "crypto", "--no-progress", *flags)
    assert code == 0, err
    rows = read_jsonl(home / f"data/raw/{name}.jsonl")
    for (obj, shape, _, _), r in zip(SHAPES, rows):
        assert r["metadata"]["shape"] == shape and r["metadata"]["source"] == f"{name}.jsonl"
        assert r["metadata"]["tag"] == "crypto" and "crypto" in r["tags"]
    assert [r["metadata"]["line"] for r in rows] == list(range(1, len(SHAPES) + 1))
    return rows, out


def test_shapes(home, tmp_path, write_jsonl, read_jsonl, data_main, accounted):
    rows, out = _import_shapes(tmp_path, write_jsonl, read_jsonl, data_main, home, "mixed")
    m = accounted("mixed", "raw")
    for i, ((obj, shape, prompt, completion), r) in enumerate(zip(SHAPES, rows)):
        if i in CHAT_TURNS:  # chats keep their turns by default
            assert r["messages"] == CHAT_TURNS[i] and r["metadata"]["turns"] == len(CHAT_TURNS[i])
            assert set(r) == {"messages", "tags", "quality_score", "metadata"}
        else:
            assert (r["prompt"], r["completion"]) == (prompt, completion)
            assert set(r) == {"prompt", "completion", "tags", "quality_score", "metadata"}
    assert rows[0]["metadata"]["id"] == 7 and rows[0]["quality_score"] == 0.5 and rows[0]["tags"] == ["x", "crypto"]
    assert m["shapes"]["openai_chat"] == 2 and "self_instruct" not in m["shapes"]
    assert m["options"]["flatten"] is False and "shapes" in out


def test_flatten_makes_chats_prompt_completion(home, tmp_path, write_jsonl, read_jsonl, data_main, accounted):
    rows, _ = _import_shapes(tmp_path, write_jsonl, read_jsonl, data_main, home, "flat", "--flatten")
    assert accounted("flat", "raw")["options"]["flatten"] is True
    for (obj, shape, prompt, completion), r in zip(SHAPES, rows):
        assert (r["prompt"], r["completion"]) == (prompt, completion) and "messages" not in r


def test_chat_roles_and_content_at_import(home, tmp_path, write_jsonl, read_jsonl, data_main, accounted):
    turns = [{"role": "developer", "content": "terse"}, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                       "b"]},
             {"role": "assistant", "content": "c"}]
    p = write_jsonl(tmp_path / "r.jsonl", [
        {"messages": turns},
        {"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"},
                      {"role": "assistant", "content": "z"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"},
                           {"from": "gpt", "value": "a"}]},
    ])
    assert data_main("import", "--input", str(p), "--no-progress")[0] == 0
    m = accounted("r", "raw")
    (r,) = read_jsonl(home / "data/raw/r.jsonl")
    assert r["messages"] == [{"role": "system", "content": "terse"}, {"role": "user", "content": "a\nb"},
                             {"role": "assistant", "content": "c"}]
    assert m["reject_reasons"] == {"unknown_role": 2, "non_string_content": 1, "empty_content": 1,
                                   "system_not_first": 1}


def test_self_instruct_instances_and_array_input(home, tmp_path, read_jsonl, data_main, accounted):
    data = [{"id": "t0", "instruction": "Add", "instances": [{"input": "1 1", "output": "2"}, {"input": "2 2", "output": "4"}],
             "is_classification": False},
            {"id": "t1", "instruction": "Empty", "instances": []}]
    p = tmp_path / "legacy.json"
    p.write_text(json.dumps(data, indent=2))
    assert data_main("import", "--input", str(p), "--no-progress")[0] == 0
    m = accounted("legacy", "raw")
    rows = read_jsonl(home / "data/raw/legacy.jsonl")
    assert [(r["prompt"], r["metadata"]["instance"], r["metadata"]["item"]) for r in rows] == [
        ("Add\n\n1 1", 0, 0), ("Add\n\n2 2", 1, 0)]
    assert rows[0]["metadata"]["extra"] == {"is_classification": False} and rows[0]["metadata"]["id"] == "t0"
    assert m["reject_reasons"] == {"no_instances": 1} and m["input"]["format"] == "array"


def test_rejects_and_map(home, tmp_path, write_jsonl, read_jsonl, data_main, accounted):
    p = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}, {"messages": [{"role": "user", "content": "only user"}]},
                                           {"data": {"q": "Q?", "a": "A!"}, "uid": "u1"}])
    assert data_main("import", "--input", str(p), "--no-progress")[0] == 0
    m = accounted("x", "raw")
    assert m["reject_reasons"] == {"no_assistant_turn": 1, "unknown_shape": 2}
    code, out, err = data_main("import", "--input", str(p), "--name", "x2", "--map", "prompt=data.q",
                               "--map", "completion=data.a", "--no-progress")
    assert code == 0, err
    m = accounted("x2", "raw")
    (r,) = read_jsonl(home / "data/raw/x2.jsonl")
    assert (r["prompt"], r["completion"], r["metadata"]["id"]) == ("Q?", "A!", "u1")
    assert m["reject_reasons"] == {"missing_key": 2}
    code, out, err = data_main("import", "--input", str(p), "--map", "prompt", "--no-progress")
    assert code == 2 and "FIELD=KEY" in err


def test_cli_entry_points_and_fast_help(home, tmp_path, write_jsonl, data_cli):
    p = write_jsonl(tmp_path / "legacy.jsonl", [{"question": "q", "answer": "a"}])
    r = data_cli("--input", str(p), "--tag", "t", script="scripts/import_legacy_data.py")
    assert r.returncode == 0, r.stderr
    assert "read 1 = kept 1 + rejected 0" in r.stdout
    r = data_cli("import", "--input", str(p), "--name", "viamodule")
    assert r.returncode == 0 and (home / "data/raw/viamodule.jsonl").exists()
    t = time.perf_counter()
    r = data_cli("validate", "--help")
    assert r.returncode == 0 and "--fail-on-secrets" in r.stdout
    assert time.perf_counter() - t < 5
    r = data_cli("validate", "--input", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_cli_import_is_light():
    import subprocess
    import sys

    code = "import sys, ech0.data.cli; print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "[]"
