"""The structured schema of every training config, registered in Hydra's ConfigStore.

    python -m ech0.train --cfg job +preset=lora      # print the composed, typed config

A typo in an override (``trainer.max_step=3``) or a wrong type (``trainer.max_steps=abc``) fails at
composition, before torch is imported, with one line naming the key. Each field's help is its comment.
This module imports only omegaconf/hydra so that ``--help`` and config errors stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ModelConfig:
    name_or_path: str = "local:tiny-llama"  # hub id, local folder, or local:<recipe> (built offline)
    revision: Optional[str] = None  # hub revision (commit/tag) for reproducible GPU runs
    dtype: str = "float32"  # dtype the weights are loaded in (bfloat16 on GPU boxes)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    recipe: dict = field(default_factory=dict)  # overrides of ech0.models.tiny.TinyRecipe for local:*


@dataclass
class LoraSchema:
    _target_: str = "ech0.trainer.adapters.lora"
    r: int = 8  # adapter rank
    lora_alpha: int = 16  # scale = alpha / r; usually 2*r
    lora_dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"


@dataclass
class FullSchema:
    _target_: str = "ech0.trainer.adapters.full"
    freeze_embeddings: bool = False  # keep input/output embeddings fixed (saves memory on big vocabularies)


@dataclass
class TrainerConfig:
    max_steps: int = 100  # optimizer steps
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 16  # rows per optimizer step (split into micro-batches by grad_accum)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # tokens per row, prompt + completion + EOS
    packing: bool = True  # pack each micro-batch into one padding-free row (attention stays per row)
    truncation: str = "right"  # right: cut the completion's tail | left: cut the prompt's head | drop: skip the row
    precision: str = "auto"  # auto (measured: bf16 only where it is faster) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    num_threads: Optional[int] = None  # torch intra-op threads on CPU (None: torch's default)
    checkpoint_every: int = 50  # steps between resumable checkpoints (0: never)
    keep_checkpoints: int = 2  # newest checkpoints kept
    eval_every: int = 50  # steps between eval/loss measurements (0: only before and after)
    log_every: int = 1  # steps between metric logs
    status_every_seconds: float = 2.0  # status.json is rewritten at most this often (and on state changes)
    progress: bool = True  # show a progress bar


@dataclass
class DataConfig:
    name: str = "sample"  # dataset name (data/<stage>/<name>.jsonl for the data stage's outputs)
    train_file: str = MISSING  # canonical JSONL {prompt, completion, tags, quality_score, metadata}
    eval_file: Optional[str] = None  # held-out rows for eval/loss (None: no eval split)
    prompt_template: str = "### Instruction:\n{prompt}\n\n### Response:\n"  # how a prompt is shown to the model


@dataclass
class TrackingConfig:
    enabled: bool = True  # off: no MLflow at all (benchmarks only)
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///$ECH0_HOME/mlflow.db
    experiment: str = "ech0"
    run_name: Optional[str] = None  # None: <preset>-<time>
    log_system_metrics: bool = True
    log_model: bool = True  # log the trained model as an MLflow pyfunc model
    parent_run_id: Optional[str] = None  # set by the pipeline / sweeps to group runs


@dataclass
class PathsConfig:
    home: str = "${oc.env:ECH0_HOME,.}"  # root of everything ech0 writes


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: Any = MISSING  # config group: lora | none
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    preset: str = "default"  # set by +preset=NAME; names the MLflow run
    seed: int = 42  # seeds data order, init of adapters and dropout: a CPU run is repeatable
    resume: str = "false"  # false | true (newest unfinished run) | <run_id>


def _sample_file(split: str) -> str:
    from ech0.sample_data import EVAL_FILE, TRAIN_FILE

    return str({"train": TRAIN_FILE, "eval": EVAL_FILE}[split])


def register() -> None:
    if not OmegaConf.has_resolver("ech0.sample"):
        OmegaConf.register_new_resolver("ech0.sample", _sample_file)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="peft", name="lora_schema", node=LoraSchema)
    cs.store(group="peft", name="full_schema", node=FullSchema)


register()
