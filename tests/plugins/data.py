"""Fixtures for the data-stage tests (tests/test_data*.py), registered from tests/conftest.py.

    def test_x(home, tmp_path, make_row, write_jsonl, data_main, accounted):
        p = write_jsonl(tmp_path / "in.jsonl", [make_row("q", "a")])
        code, out, err = data_main("validate", "--input", str(p), "--no-progress")
        m = accounted("in", "clean")           # asserts read == kept + rejected against the files

Everything is a fixture (tests import nothing from here): row factories and JSONL helpers,
``ech0.data.cli.main`` in-process (``data_main``) or in a subprocess (``data_cli``), manifest readers
bound to the test's ECH0_HOME, throwaway tokenizer folders (one with Mistral's alternating-roles chat
template), ``validate``/``rejects``/``reasons`` shorthands, and the synthetic generators of
``benchmarks/data_hygiene.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                    "tokenizer_class": "PreTrainedTokenizerFast"}
# Mistral-7B-Instruct's chat template (v0.1/v0.2): it raises on roles that do not alternate user/assistant
ALTERNATING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def _row(prompt="What is two plus two?", completion="Four.", **kw) -> dict:
    r = {"prompt": prompt, "completion": completion, "tags": ["t"], "quality_score": 0.9, "metadata": {}}
    r.update(kw)
    return r


def _write_jsonl(path: Path, rows, raw_lines: list[bytes | str] | None = None) -> Path:
    with open(path, "wb") as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())
        for ln in raw_lines or []:
            f.write(ln.encode() if isinstance(ln, str) else ln)
    return path


def _read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f]


@pytest.fixture(scope="session")
def make_row():
    """``make_row(prompt=..., completion=..., **fields)``: a canonical row (tags ["t"], quality 0.9)."""
    return _row


@pytest.fixture(scope="session")
def write_jsonl():
    """``write_jsonl(path, rows, raw_lines=None)``: rows as JSONL, then raw lines (str or bytes) verbatim."""
    return _write_jsonl


@pytest.fixture(scope="session")
def read_jsonl():
    """``read_jsonl(path)``: the parsed rows of a JSONL file."""
    return _read_jsonl


@pytest.fixture
def data_main(capsys):
    """``data_main(*argv)``: ``ech0.data.cli.main`` in-process; returns (exit code, stdout, stderr)."""
    from ech0.data.cli import main

    def run(*argv) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def validate(data_main):
    """``validate(path, *flags, name="d")``: ``ech0 data validate`` in-process -> (code, out, err)."""
    return lambda path, *extra, name="d": data_main("validate", "--input", str(path), "--name", name, "--no-progress",
                                                    *extra)


@pytest.fixture
def rejects(home):
    """``rejects(name="d", stage="clean")``: the rejects file's records."""
    return lambda name="d", stage="clean": _read_jsonl(home / "data" / stage / f"{name}.rejects.jsonl")


@pytest.fixture
def reasons(rejects):
    """``reasons(name="d", stage="clean")``: the reason of each reject, in order."""
    return lambda name="d", stage="clean": [r["reason"] for r in rejects(name, stage)]


@pytest.fixture
def data_cli(home):
    """``data_cli(*argv, script=None)``: ``python -m ech0.data ARGV`` (or ``python SCRIPT ARGV``) in a
    subprocess with ECH0_HOME = the test's home; returns the CompletedProcess."""

    def run(*argv, script: str | None = None):
        env = dict(os.environ, ECH0_HOME=str(home), HF_HUB_OFFLINE="1")
        cmd = [sys.executable, str(ROOT / script)] if script else [sys.executable, "-m", "ech0.data"]
        return subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120)

    return run


@pytest.fixture
def data_manifest(home):
    """``data_manifest(name, stage)``: the manifest dict under the test's home."""
    return lambda name, stage: json.loads((home / "metadata" / f"{name}.{stage}.manifest.json").read_text())


@pytest.fixture
def accounted(home, data_manifest):
    """``accounted(name, stage)``: assert read == kept + rejected against the files themselves; the manifest."""

    def check(name: str, stage: str) -> dict:
        m = data_manifest(name, stage)
        kept = sum(1 for _ in open(home / "data" / stage / f"{name}.jsonl", "rb"))
        rejected = sum(1 for _ in open(home / "data" / stage / f"{name}.rejects.jsonl", "rb"))
        assert m["counts"] == {"read": kept + rejected, "kept": kept, "rejected": rejected}
        assert sum(m["reject_reasons"].values()) == rejected
        return m

    return check


def build_tokenizer(path: Path, chat_template: str | None = None) -> Path:
    """A tiny byte-level BPE tokenizer folder (tokenizer.json + tokenizer_config.json), trained in well under
    a second; AutoTokenizer loads the same folder. Without ``chat_template`` it has none (the data stage and
    training give it :data:`ech0.chat.DEFAULT_TEMPLATE`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["the quick brown fox jumps over the lazy dog " * 3, "write a poem about the sea and the sky",
            "What is the capital of France? Paris is the capital."] * 20
    tok.train_from_iterator(text, tr)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = dict(TOKENIZER_CONFIG, **({"chat_template": chat_template} if chat_template else {}))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory) -> Path:
    """A throwaway tokenizer folder (see :func:`build_tokenizer`), shared by the session."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def alternating_tokenizer(tmp_path_factory) -> Path:
    """A throwaway tokenizer folder whose chat template is Mistral-7B-Instruct's: roles must alternate."""
    return build_tokenizer(tmp_path_factory.mktemp("alternating"), ALTERNATING_TEMPLATE)


def _benchmark(name: str):
    """``benchmarks/<name>.py`` loaded as a module (benchmarks are scripts, not installed)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_hygiene():
    """The synthetic generators of ``benchmarks/data_hygiene.py`` (Gen, fake_secrets, fake_pii, ...)."""
    return _benchmark("data_hygiene")


@pytest.fixture(scope="session")
def redaction_benchmark():
    """``benchmarks/redaction_false_positives.py``: the real-text corpora and per-rule scans."""
    return _benchmark("redaction_false_positives")


@pytest.fixture
def any_model_passes(tmp_path) -> Path:
    """A gate baseline any model passes (one case, a length check): for pipeline tests about stopping,
    rerunning or concurrency, not about quality."""
    baseline = tmp_path / "any-model-passes.jsonl"
    baseline.write_text(json.dumps({"id": "short", "prompt": "Echo this: the cat", "max_new_tokens": 4,
                                    "checks": [{"type": "max_length", "value": 10000}]}) + "\n")
    return baseline
