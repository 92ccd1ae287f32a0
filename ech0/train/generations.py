"""A few held-out prompts, their references and the model's greedy answers at every evaluation, as one MLflow table.

    table = Generations(tokenizer, heldout_rows, n=4, max_new_tokens=48)
    table.add(step, model)                                # greedy answers now: the model leaves train mode briefly
    tracker.log_table(table.frame(), "generations.json")  # the whole table so far (step, prompt, reference, output)

Run by the training recipe (``trainer.generations=N``, 0 turns it off) at step 0 (the base model's answers),
at every eval step and at the end, so the run's Artifacts tab, and the Evaluation view across runs, show the
answers changing step by step. The prompts are spread evenly over the held-out rows (the same rows every
run of the same data: the split is by content hash); a multi-turn row is its conversation up to the last
assistant turn, the reference is that turn. Outputs pass the data stage's secret and PII redactor before
they are logged: a model can repeat what its base memorised. Greedy, batched, KV-cached
(:func:`ech0.generation.generate`); ``seconds`` records what each evaluation's generations cost the loop.
"""

from __future__ import annotations

import time
from pathlib import Path


class Generations:
    def __init__(self, tokenizer, rows: list[dict], n: int = 4, max_new_tokens: int = 48, earlier=None,
                 until: int = 0):
        """``earlier``: the ``generations.json`` of the same run before a resume: its rows up to step ``until``
        (the checkpoint it resumed from; later steps are trained again) come first."""
        from ech0.chat import messages_of
        from ech0.data.redact import Redactor

        self.tok, self.max_new_tokens = tokenizer, max_new_tokens
        picked = [rows[round(i * (len(rows) - 1) / max(1, n - 1))] for i in range(min(n, len(rows)))] if n else []
        self.prompts, self.references = [], []
        for row in picked:
            messages = messages_of(row)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            self.prompts.append(messages[:last])
            self.references.append(messages[last]["content"])
        self.redact = Redactor(secrets=True, pii=True)
        self.rows: list[dict] = []
        self.seconds: list[float] = []
        if earlier is not None and Path(earlier).is_file():
            import pandas as pd

            self.rows = [r for r in pd.read_json(earlier, orient="split").to_dict("records") if r["step"] <= until]

    def __bool__(self) -> bool:
        return bool(self.prompts)

    def add(self, step: int, model) -> float:
        """Generate for every prompt at ``step``; returns the seconds it took."""
        from ech0.generation import generate

        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            outputs = generate(model, self.tok, self.prompts, max_new_tokens=self.max_new_tokens)
        finally:
            model.train(was_training)
        for i, (prompt, reference, output) in enumerate(zip(self.prompts, self.references, outputs)):
            self.rows.append({"step": step, "case": i, "prompt": self._show(prompt),
                              "reference": self._clean(reference), "output": self._clean(output)})
        self.seconds.append(time.perf_counter() - t0)
        return self.seconds[-1]

    def _clean(self, text: str) -> str:
        return self.redact.scan(text)[1]

    def _show(self, messages: list[dict]) -> str:
        """The prompt as a person reads it: the last user turn, earlier turns counted."""
        last = self._clean(messages[-1]["content"]) if messages else ""
        return last if len(messages) <= 1 else f"[{len(messages) - 1} earlier turns] {last}"

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["step", "case", "prompt", "reference", "output"])
