"""The generations table: held-out prompts, references and greedy answers at step 0, every eval and the end.

    pytest tests/test_train_generations.py
"""

from __future__ import annotations

import json


def test_every_evaluation_adds_its_answers_to_one_mlflow_table(trained_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ech0.generation import generate
    from ech0.train.generations import Generations

    c = MlflowClient(trained_run.tracking_uri)
    run = c.get_run(trained_run.run_id)
    tables = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "generations.json", "type": "table"} in tables  # what the UI's evaluation view lists
    mlflow.set_tracking_uri(trained_run.tracking_uri)  # load_table searches runs through the global URI
    df = c.load_table(run.info.experiment_id, "generations.json", run_ids=[trained_run.run_id])
    tc = trained_run.cfg.trainer
    steps = sorted(set(range(0, tc.max_steps, tc.eval_every)) | {tc.max_steps})
    assert sorted(df["step"].unique()) == steps
    assert df.groupby("step").size().tolist() == [tc.generations] * len(steps)
    assert (df["reference"].str.len() > 0).all() and df["output"].map(lambda t: isinstance(t, str)).all()
    first, last = df[df.step == 0].output.tolist(), df[df.step == tc.max_steps].output.tolist()
    assert first != last, "training changed nothing in the answers"
    # the last rows are the final model's greedy answers to the same prompts, exactly
    rows = [json.loads(line) for line in open(trained_run.cfg.data.eval_file)]
    table = Generations(trained_run.tokenizer, rows, tc.generations, tc.generation_max_new_tokens)
    assert table.references == df[df.step == tc.max_steps].reference.tolist()
    trained_run.model.eval()
    assert generate(trained_run.model, trained_run.tokenizer, table.prompts, tc.generation_max_new_tokens) == last
    seconds = c.get_metric_history(trained_run.run_id, "eval/generation_seconds")
    assert sorted(m.step for m in seconds) == steps and all(m.value > 0 for m in seconds)
    share = c.get_metric_history(trained_run.run_id, "train/generation_share")[0].value
    assert 0 < share < 1
    # what recording the run cost its loop, measured inside it: the main thread's tracker and status.json
    # calls, and the spool courier's CPU time during the loop (none if its first poll came after the loop)
    logging = c.get_metric_history(trained_run.run_id, "train/logging_share")[0].value
    courier = c.get_metric_history(trained_run.run_id, "train/courier_cpu_share")[0].value
    assert 0 < logging < 0.5 and 0 <= courier < 1


def test_references_and_prompts_are_redacted_before_mlflow(tiny_model_dir):
    from ech0.models import load_model, load_tokenizer
    from ech0.train.generations import Generations

    key = "AKIA" + "Z7QK4N3XVB2LM5TD"  # an AWS access key id (split: the repo's own secret scan)
    rows = [{"prompt": "Mail me at bob@example.com", "completion": f"Your key is {key}."}]
    table = Generations(load_tokenizer(str(tiny_model_dir)), rows, n=1, max_new_tokens=4)
    table.add(0, load_model(str(tiny_model_dir), dtype="float32"))
    text = table.frame().to_json()
    assert key not in text and "bob@example.com" not in text
    assert "<EMAIL>" in table.rows[0]["prompt"] and "SECRET" in table.rows[0]["reference"]
