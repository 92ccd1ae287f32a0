"""Helpers for the data-stage tests: a throwaway tokenizer, JSONL writers, CLI runners.

    from data_fixtures.helpers import write_jsonl, run_main, run_cli
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks` (the synthetic generators) importable under plain `pytest`
    sys.path.insert(0, str(REPO))


def build_tokenizer(path: Path) -> Path:
    """A tiny byte-level BPE tokenizer (tokenizer.json) trained in well under a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["the quick brown fox jumps over the lazy dog " * 3, "write a poem about the sea and the sky",
            "What is the capital of France? Paris is the capital."] * 20
    tok.train_from_iterator(text, tr)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path


def row(prompt="What is two plus two?", completion="Four.", **kw) -> dict:
    r = {"prompt": prompt, "completion": completion, "tags": ["t"], "quality_score": 0.9, "metadata": {}}
    r.update(kw)
    return r


def write_jsonl(path: Path, rows, raw_lines: list[bytes | str] | None = None) -> Path:
    with open(path, "wb") as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())
        for ln in raw_lines or []:
            f.write(ln.encode() if isinstance(ln, str) else ln)
    return path


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """``ech0.data.cli.main`` in-process; returns (exit code, stdout, stderr)."""
    from ech0.data.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*argv, env_home: Path, module: str | None = "ech0.data", script: str | None = None):
    env = dict(os.environ, ECH0_HOME=str(env_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / script)] if script else [sys.executable, "-m", module]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120)


def manifest(home: Path, name: str, stage: str) -> dict:
    return json.loads((home / "metadata" / f"{name}.{stage}.manifest.json").read_text())


def accounted(home: Path, name: str, stage: str) -> dict:
    """Assert read == kept + rejected, against the files themselves; return the manifest."""
    m = manifest(home, name, stage)
    out = home / "data" / stage / f"{name}.jsonl"
    rej = home / "data" / stage / f"{name}.rejects.jsonl"
    kept = sum(1 for _ in open(out, "rb"))
    rejected = sum(1 for _ in open(rej, "rb"))
    assert m["counts"] == {"read": kept + rejected, "kept": kept, "rejected": rejected}
    assert sum(m["reject_reasons"].values()) == rejected
    return m
