"""The smoke stage (ech0.smoke) against a real `mlflow models serve`: the trained model passes (golden
prompts and OpenAI-style chat equal to in process), its base without the adapter fails, malformed
payloads and bad chat requests get a 4xx while the server stays up, the result lands on the version,
and bad model URIs are one-line exit-2 errors. The chat request through Python-side ``predict``:
the same completion, temperature 0 is greedy, a seed repeats a sample, stop strings cut, bad
requests raise INVALID_PARAMETER_VALUE."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from ech0.registry import history as hist, store as rstore
from ech0.smoke import (bad_chat_payloads, chat_contexts, chat_shape_problems, expected_chat, golden_prompts, main,
                        served_chat, smoke)

CHAT_CHECKS = ("chat: response shape", "chat: greedy answer equals in-process", "chat: usage equals in-process",
               "chat: multi-turn context honoured", "chat: finish_reason stop", "chat after bad requests")


@pytest.fixture(scope="module")
def chat_package(trained_run, tmp_path_factory):
    """The trained model saved as a pyfunc folder (as ech0.mlflow_model logs it)."""
    from ech0.mlflow_model import save_pyfunc
    from ech0.model_folder import read_meta

    model_dir = trained_run.run_dir / "model"
    path = tmp_path_factory.mktemp("chat-pyfunc") / "pkg"
    save_pyfunc(path, model_dir, read_meta(model_dir)["base_model"])
    return path


@pytest.fixture(scope="module")
def chat_pyfunc(chat_package):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(chat_package))


@pytest.fixture(scope="module")
def in_process(trained_run):
    """(model, tokenizer) of the run's model folder: the in-process reference."""
    from ech0.model_folder import load_trained

    model, tok, _ = load_trained(trained_run.run_dir / "model")
    return model, tok


def ask(pyfunc, messages, **fields) -> dict:
    return pyfunc.predict({"messages": messages, **fields})


def test_served_trained_model_passes_and_is_recorded(sqlite_store, chat_pyfunc, capsys):
    s = sqlite_store
    rstore.register(s.ctx, s.runs["passed"], name="served")
    hist.promote(s.ctx, version="1", name="served")
    with pytest.raises(SystemExit) as e:
        main(["--model-uri", "models:/served@production", "--tracking-uri", s.uri, "--json"])
    out = capsys.readouterr().out
    res = json.loads(out)
    assert e.value.code == 0, out
    assert res["passed"] and res["version"] == "1" and res["served_uri"] == "models:/served/1"
    assert res["reference"] == str(s.source.run_dir / "model")
    names = [c["name"] for c in res["checks"]]
    assert names[:2] == ["ping", "golden prompts"] and "golden prompts after malformed input" in names
    assert sum(n.startswith("malformed") for n in names) >= 5
    assert all(400 <= c["detail"]["status"] < 500 for c in res["checks"] if c["name"].startswith("malformed"))
    assert res["golden"] == [4, 4]
    by_name = {c["name"]: c for c in res["checks"]}
    assert all(by_name[n]["passed"] for n in CHAT_CHECKS), [by_name[n] for n in CHAT_CHECKS]
    bad = [c for c in res["checks"] if c["name"].startswith("bad chat: ")]
    assert [c["name"][len("bad chat: "):] for c in bad] == [label for label, _ in bad_chat_payloads(2048)]
    assert all(400 <= c["detail"]["status"] < 500 and c["detail"]["server_up"] for c in bad)
    assert all(c["detail"]["reason"] and "\n" not in c["detail"]["reason"] for c in bad)
    # What the server answered equals Python-side predict() on the same requests.
    prompts = golden_prompts()
    contexts = chat_contexts(prompts, chat_pyfunc.predict(pd.DataFrame({"prompt": prompts}),
                                                          params={"max_new_tokens": 16}))
    served = [by_name["chat: greedy answer equals in-process"]["detail"]["single"]["served"],
              by_name["chat: multi-turn context honoured"]["detail"]["multi"]["served"]]
    assert served == [ask(chat_pyfunc, contexts[n], max_tokens=64, temperature=0)["choices"][0]["message"]["content"]
                      for n in ("single", "multi")]
    tags = rstore.client(s.ctx).get_model_version("served", "1").tags
    assert tags["ech0.smoke"] == "passed" and json.loads(tags["ech0.smoke_detail"])["served"] == "models:/served/1"


def test_served_base_without_adapter_fails(sqlite_store, tmp_path):
    """A pyfunc whose artifacts hold only the base model, claiming the trained run's folder: caught."""
    s = sqlite_store
    meta = json.loads((s.source.run_dir / "model" / "ech0_model.json").read_text())
    base_only = tmp_path / "base-only"
    shutil.copytree(meta["base_model"], base_only)
    (base_only / "ech0_model.json").write_text(json.dumps({**meta, "adapter": False}))
    mv = rstore.register(s.ctx, s.log_run(gate=1.0, score=0.9, model_dir=base_only), name="impostor")
    res = smoke(s.ctx, f"models:/impostor/{mv.version}")
    assert not res.passed
    by_name = {c["name"]: c for c in res.checks}
    assert by_name["ping"]["passed"] and not by_name["golden prompts"]["passed"]
    assert by_name["golden prompts"]["detail"]["mismatches"]
    assert all(c["passed"] for n, c in by_name.items() if n.startswith(("malformed", "bad chat")))  # the server is fine
    assert rstore.client(s.ctx).get_model_version("impostor", mv.version).tags["ech0.smoke"] == "failed"
    assert res.line().startswith("smoke FAILED: served impostor v") and "failed: golden prompts" in res.line()


@pytest.mark.parametrize("uri, expected", [("models:/nope@production", "not found"),
                                           ("models:/served", "expected models:/NAME@ALIAS"),
                                           ("/no/such/dir", "not a model URI")])
def test_smoke_bad_uri_is_one_line_exit_2(sqlite_store, capsys, uri, expected):
    with pytest.raises(SystemExit) as e:
        main(["--model-uri", uri, "--tracking-uri", sqlite_store.uri])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err and err.count("\n") == 1, err


def test_python_side_chat_is_the_in_process_completion(chat_pyfunc, in_process):
    from ech0.generation import complete

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What color is snow?"}]
    out = ask(chat_pyfunc, messages, max_tokens=64, temperature=0)
    assert chat_shape_problems(out) == [] and out["object"] == "chat.completion"
    assert served_chat(out) == expected_chat(complete(*in_process, [messages], max_new_tokens=64)[0])
    assert served_chat(ask(chat_pyfunc, messages, max_tokens=64)) == served_chat(out)  # temperature 0 is the default


def test_python_side_chat_sampling(chat_pyfunc):
    messages = [{"role": "user", "content": "What is the opposite of day?"}]
    greedy = ask(chat_pyfunc, messages, max_tokens=16, temperature=0)["choices"][0]["message"]["content"]
    sample = {"max_tokens": 16, "temperature": 1.5, "top_p": 0.95}
    texts = {seed: ask(chat_pyfunc, messages, seed=seed, **sample)["choices"][0]["message"]["content"]
             for seed in range(6)}
    assert ask(chat_pyfunc, messages, seed=3, **sample)["choices"][0]["message"]["content"] == texts[3]
    assert len(set(texts.values()) | {greedy}) > 1  # sampling samples; the seed repeats it
    cut = greedy.split()[1]
    stopped = ask(chat_pyfunc, messages, max_tokens=16, temperature=0, stop=[cut])
    assert stopped["choices"][0]["message"]["content"] == greedy[:greedy.index(cut)].rstrip()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    long = ask(chat_pyfunc, messages, max_tokens=1, temperature=0)
    assert long["choices"][0]["finish_reason"] == "length" and long["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("label, body", bad_chat_payloads(2048), ids=[label for label, _ in bad_chat_payloads(2048)])
def test_python_side_bad_chat_raises_invalid_parameter(chat_pyfunc, label, body):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as e:
        chat_pyfunc.predict(json.loads(body))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_prompt_cap_is_configurable(chat_package):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    capped = mlflow.pyfunc.load_model(str(chat_package), model_config={"max_prompt_tokens": 10, "max_tokens_cap": 8})
    hi = [{"role": "user", "content": "What is the opposite of day?"}]
    with pytest.raises(MlflowException, match="this model takes at most 10"):
        ask(capped, hi, max_tokens=4)
    with pytest.raises(MlflowException, match="'max_tokens' must be an integer from 1 to 8"):
        ask(capped, [{"role": "user", "content": "Hi"}], max_tokens=9)
