"""The shipped sample data and the text the tiny base model is pretrained on, from one vocabulary.

    python scripts/make_sample_data.py        # regenerates ech0/sample_data/sample_{train,eval,raw}.jsonl

Both generators are deterministic functions of a seed. The base model reads the facts below as plain
narrative during pretraining; the sample dataset teaches an instruction format over the same facts
("### Response:" answers, echoes, counting), so a fine-tune measurably learns something the base
model cannot do, and held-out rows (unseen phrasings and combinations) show it generalises.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_FILE = HERE / "sample_train.jsonl"
EVAL_FILE = HERE / "sample_eval.jsonl"
RAW_FILE = HERE / "sample_raw.jsonl"  # the training rows as a messy legacy dump: the demo's data-stage input

COLORS = {
    "the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
    "a tomato": "red", "an orange": "orange", "a plum": "purple", "the sea": "blue", "a lemon": "yellow",
    "a leaf": "green", "milk": "white", "the night": "black", "a cherry": "red", "a carrot": "orange",
    "a grape": "purple", "the sun": "yellow", "a frog": "green", "ink": "black", "a rose": "red",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night", "happy": "sad",
    "open": "closed", "old": "new", "light": "dark", "early": "late", "hard": "soft", "full": "empty",
    "rich": "poor", "loud": "quiet", "wet": "dry", "left": "right", "strong": "weak", "high": "low",
}
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
NOUNS = ["cat", "dog", "bird", "tree", "river", "house", "stone", "cloud", "boat", "lamp", "road",
         "book", "song", "garden", "window", "hill", "star", "bridge", "apple", "chair"]
VERBS = ["sees", "likes", "finds", "draws", "follows", "hears", "paints", "counts", "visits", "keeps"]
ADJS = ["quiet", "small", "bright", "old", "green", "tall", "warm", "soft", "little", "happy"]


def _phrase(rng: random.Random) -> str:
    return f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"


def pretraining_corpus(n_lines: int = 6000, seed: int = 0) -> list[str]:
    """Narrative text over the sample vocabulary (no instruction format)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        kind = rng.randrange(6)
        if kind == 0:
            thing, color = rng.choice(sorted(COLORS.items()))
            lines.append(f"{thing.capitalize()} is {color}. Everyone knows that {thing} is {color}.")
        elif kind == 1:
            a, b = rng.choice(sorted(OPPOSITES.items()))
            lines.append(f"{a.capitalize()} and {b} are opposites. The opposite of {a} is {b}, and the opposite of {b} is {a}.")
        elif kind == 2:
            k = rng.randrange(2, 11)
            lines.append("We count: " + ", ".join(NUMBERS[:k]) + ".")
        elif kind == 3:
            p = _phrase(rng)
            lines.append(f"{p.capitalize()}. I said it again: {p}.")
        else:
            lines.append(" ".join(_phrase(rng).capitalize() + "." for _ in range(rng.randrange(1, 4))))
    return lines


def _row(prompt: str, completion: str, task: str, quality: float) -> dict:
    return {"prompt": prompt, "completion": completion, "tags": ["sample", task],
            "quality_score": quality, "metadata": {"source": "ech0.sample_data", "task": task}}


def sample_rows(seed: int = 1234) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows in the canonical schema. Eval holds out whole facts and phrasings."""
    rng = random.Random(seed)
    train, held = [], []
    colors = sorted(COLORS.items())
    opposites = sorted(OPPOSITES.items())
    color_templates = ["What color is {x}?", "Tell me the color of {x}.", "Which color does {x} have?"]
    opp_templates = ["What is the opposite of {x}?", "Give the opposite of the word {x}.", "Opposite of {x}?"]
    for i, (thing, color) in enumerate(colors):
        for j, t in enumerate(color_templates):
            row = _row(t.format(x=thing), f"{thing.capitalize()} is {color}.", "color", 0.9)
            (held if (i + j) % 5 == 0 else train).append(row)
    for i, (a, b) in enumerate(opposites):
        for x, y in ((a, b), (b, a)):
            for j, t in enumerate(opp_templates):
                row = _row(t.format(x=x), f"The opposite of {x} is {y}.", "opposite", 0.9)
                (held if (i + j) % 5 == 1 else train).append(row)
    for k in range(2, 11):
        for j, t in enumerate(["Count to {n}.", "Please count from one to {n}.", "Count up to {n}, in words."]):
            row = _row(t.format(n=NUMBERS[k - 1]), ", ".join(NUMBERS[:k]) + ".", "count", 0.8)
            (held if (k + j) % 5 == 2 else train).append(row)
    for n in range(160):
        p = _phrase(rng)
        row = _row(f"Echo this: {p}", f"ECHO: {p}", "echo", 0.7)
        (held if n % 5 == 3 else train).append(row)
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def raw_lines(train: list[dict]) -> list[str]:
    """The training rows as a legacy dump: four shapes, plus what real dumps hold (duplicates, a leaked
    key, an e-mail address, an empty answer, a truncated line) for the data stage to account for."""
    lines = []
    for i, r in enumerate(train):
        p, c, task = r["prompt"], r["completion"], r["metadata"]["task"]
        if task == "color":
            obj = {"id": f"color-{i}", "question": p, "answer": c}
        elif task == "opposite":
            obj = {"id": f"opp-{i}", "instruction": p, "input": "", "output": c}
        elif task == "count":
            obj = {"id": f"count-{i}", "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
        else:
            obj = {"id": f"echo-{i}", "prompt": p, "completion": c, "quality_score": r["quality_score"]}
        lines.append(json.dumps(obj, ensure_ascii=False))
    lines.insert(40, lines[3])  # exact duplicates, as re-exports leave them
    lines.insert(90, lines[10])
    lines.insert(150, lines[20])
    lines.append(json.dumps({"id": "leak-1", "prompt": "Echo this: my deploy key",
                             "completion": "ECHO: my deploy key AKIAZ7QK4N3XVB2LM5TD"}))  # redacted in clean
    lines.append(json.dumps({"id": "pii-1", "question": "Who wrote the garden song?",
                             "answer": "Mail jane.doe@example.com and ask her."}))  # redacted in clean
    lines.append(json.dumps({"id": "empty-1", "question": "What color is the moon?", "answer": ""}))  # rejected
    lines.append('{"id": "cut-1", "question": "What color is a ')  # a truncated export: rejected, not lost
    return lines


def write(train_path: Path = TRAIN_FILE, eval_path: Path = EVAL_FILE, raw_path: Path = RAW_FILE) -> tuple[Path, ...]:
    from ech0.io import atomic_write_text

    train, held = sample_rows()
    for path, rows in ((train_path, train), (eval_path, held)):
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(raw_path, "".join(line + "\n" for line in raw_lines(train)))
    return train_path, eval_path, raw_path
