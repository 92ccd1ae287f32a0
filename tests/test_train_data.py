"""Training on the data stage's output: manifest digest as the MLflow dataset digest, chain as artifacts."""

from __future__ import annotations

from ech0.sample_data import TRAIN_FILE


def _prepare(tiny_model_dir, run_cli):
    for args in (["import", "--input", str(TRAIN_FILE), "--name", "demo"],
                 ["validate", "--input", "demo", "--stage", "clean", "--tokenizer", str(tiny_model_dir)],
                 ["validate", "--input", "demo", "--stage", "processed", "--dedupe", "--fail-on-secrets",
                  "--tokenizer", str(tiny_model_dir)]):
        out = run_cli("ech0.data", *args, "--no-progress")
        assert out.returncode == 0, out.stderr


def test_train_logs_manifest_digest_and_chain(tiny_model_dir, ech0_home, ctx, run_cli):
    from mlflow.tracking import MlflowClient

    from ech0.config import compose
    from ech0.data import processed_dataset
    from ech0.train.recipe import fit

    _prepare(tiny_model_dir, run_cli)
    cfg = compose("train", ["+preset=lora", "data=processed", "data.name=demo", "trainer.max_steps=3",
                            "trainer.progress=false", "tracking.log_model=false", "tracking.log_system_metrics=false"])
    result = fit(cfg, ctx)
    client = MlflowClient(result.tracking_uri)
    inputs = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i.dataset
              for i in client.get_run(result.run_id).inputs.dataset_inputs}
    expected = processed_dataset(ctx, "demo")
    assert inputs["training"].digest == expected["digest"][:36] and inputs["training"].name == "demo-train"
    # no eval file: rows held out of the processed file, logged as their own input, never called training rows
    assert inputs["eval"].name == "demo-eval-split" and inputs["eval"].digest != inputs["training"].digest
    assert result.heldout
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(result.run_id, "data/training")}
    assert names == {"demo.processed.manifest.json", "demo.clean.manifest.json", "demo.raw.manifest.json"}


def test_tampered_processed_file_is_refused(tiny_model_dir, ech0_home, run_cli):
    _prepare(tiny_model_dir, run_cli)
    processed = ech0_home / "data" / "processed" / "demo.jsonl"
    processed.write_text(processed.read_text().replace("ECHO", "ECH0", 1))
    out = run_cli("ech0.train", "+preset=lora", "data=processed", "data.name=demo", "trainer.max_steps=2")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-1500:]
    assert "demo" in out.stderr.strip().splitlines()[-1]
    assert not (ech0_home / "models").exists(), "no run is started on tampered data"
