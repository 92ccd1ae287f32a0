"""Every typed config schema (the one place defaults live), registered in Hydra's ConfigStore, and composition.

    python -m ech0.train --cfg job +preset=lora      # print the composed, typed config
    cfg = compose("train", ["+preset=lora", "trainer.max_steps=3"])   # UserError (one line) if bad
    cfg = compose_or_exit("eval", argv)                                # exit 2 with one line if bad

One root config per stage in ``conf/`` (train.yaml, eval.yaml, data.yaml) sits on a schema here. A typo
in an override (``trainer.max_step=3``) or a wrong type (``trainer.max_steps=abc``) fails at
composition, before torch is imported, with one line naming the key. Each field's help is its comment.
This module imports only omegaconf/hydra so that ``--help`` and config errors stay fast.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ech0.errors import UserError


def _conf_dir() -> Path:
    """``conf/`` at the repository's top level (a checkout, an editable install), or the copy the wheel
    carries inside the package (``pyproject.toml`` maps ``conf/`` to ``ech0/conf``)."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "train.yaml").is_file() else here.parent / "conf"


CONF_DIR = _conf_dir()


@dataclass
class ModelConfig:
    name_or_path: str = "local:tiny-llama"  # hub id, local folder, or local:<recipe> (built offline)
    revision: Optional[str] = None  # hub revision (commit/tag) for reproducible GPU runs
    dtype: str = "float32"  # dtype the weights are loaded in (bfloat16 on GPU boxes)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    recipe: dict = field(default_factory=dict)  # overrides of ech0.models.tiny.TinyRecipe for local:*
    gguf_file: Optional[str] = None  # a GGUF file to use instead (converted once into base_models/)
    packaged_gguf: Optional[str] = None  # package/file.gguf used when the hub id is neither cached nor reachable


@dataclass
class LoraSchema:
    _target_: str = "ech0.train.adapters.lora"
    r: int = 8  # adapter rank
    lora_alpha: int = 16  # scale = alpha / r; usually 2*r
    lora_dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"
    # the fraction of decoder layers, counted from the input, that get no adapter (0: every layer); their
    # backward pass is skipped too. README.md, "make demo-real", has what it measured on SmolLM2.
    skip_lower_layers: float = 0.0


@dataclass
class FullSchema:
    _target_: str = "ech0.train.adapters.full"
    freeze_embeddings: bool = False  # keep input/output embeddings fixed (saves memory on big vocabularies)


@dataclass
class TrainerConfig:
    max_steps: int = 100  # optimizer steps
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # > 0 (LoRA only): adds this weight times KL(tuned || base) at every trained token, the base being the
    # same model with its adapter off. It holds what the tuning does not teach near the base (general
    # knowledge) at the price of one more forward pass per step; the step logs train/kl_to_base.
    kl_to_base: float = 0.0
    # the KL's weight instead at the trained tokens that are the base's own greedy choice, what the base
    # already says (None: kl_to_base there too)
    kl_to_base_agreed: Optional[float] = None
    # > 0: the KL at the untrained positions too (system and user turns), with this weight; the LM head
    # then runs on every position, not only the trained ones
    kl_to_base_prompt: float = 0.0
    batch_size: int = 16  # rows per optimizer step (split into micro-batches by grad_accum)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # tokens per row, prompt + completion + EOS
    packing: bool = True  # pack each micro-batch into one padding-free row (attention stays per row)
    truncation: str = "right"  # right: cut the completion's tail | left: cut the prompt's head | drop: skip the row
    precision: str = "auto"  # auto (measured: bf16 only where it is faster) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    # with more than one process (torchrun): ddp (each process holds the whole model) | fsdp (FSDP2: each holds
    # 1/N of weights, gradients and AdamW state; for models too big for one device). One process ignores it.
    strategy: str = "ddp"
    num_threads: Optional[int] = None  # torch intra-op threads on CPU (None: torch's default)
    # CPU: keep freed activation buffers in the process instead of returning them to the kernel each step
    # (ech0.host_memory: 175 -> 268 tokens/s on SmolLM2, 2 cores; freed blocks stay resident; false: glibc's defaults)
    keep_freed_memory: bool = True
    checkpoint_every: int = 50  # steps between resumable checkpoints (0: never)
    keep_checkpoints: int = 2  # newest checkpoints kept, plus the best (lowest held-out loss); 0: all
    eval_every: int = 50  # steps between eval/loss measurements (0: only before and after)
    generations: int = 4  # held-out prompts answered greedily at step 0, each eval step and the end (MLflow table)
    generation_max_new_tokens: int = 48  # tokens per answer in that table
    log_every: int = 1  # steps between metric logs
    status_every_seconds: float = 2.0  # status.json is rewritten at most this often (and on state changes)
    progress: bool = True  # show a progress bar


@dataclass
class DataConfig:
    name: str = "sample"  # dataset name (data/<stage>/<name>.jsonl for the data stage's outputs)
    train_file: str = MISSING  # canonical JSONL {prompt, completion, tags, quality_score, metadata}
    eval_file: Optional[str] = None  # held-out rows for eval/loss (None: no eval split)
    train_on: str = "assistant"  # assistant: every assistant turn + its end-of-turn token | last: the last one | all
    # Without an eval file, this share of the training rows (by content hash: deterministic) is held out,
    # at least eval_min_rows and at most eval_max_rows; 0 measures on training rows and says so.
    eval_fraction: float = 0.05
    eval_min_rows: int = 8
    eval_max_rows: int = 256
    chat_template: Optional[str] = None  # a Jinja chat template replacing the model's own (None: the tokenizer's)


@dataclass
class TrackingConfig:
    enabled: bool = True  # off: no MLflow at all (benchmarks only)
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///$ECH0_HOME/mlflow.db
    experiment: str = "ech0"
    run_name: Optional[str] = None  # None: <preset>-<time>
    log_system_metrics: bool = True
    log_model: bool = True  # log the trained model as an MLflow pyfunc model
    # Log through the run folder's spool (ech0/spool.py): a tracking server that is down never stalls training;
    # at the end wait this long for it to take everything, else keep the spool for `ech0 sync` (exit 3).
    spool: bool = True
    delivery_wait_seconds: float = 120.0
    parent_run_id: Optional[str] = None  # set by the pipeline / sweeps to group runs


@dataclass
class RegistryConfig:
    # the pipeline registers the run's best logged model (a checkpoint or the final one) by best_metric,
    # evaluates that one, instead of the final model (`ech0 registry register --best` does the same)
    best: bool = False
    best_metric: str = "eval/loss"  # a metric linked to the run's logged models (each one's held-out loss)
    best_mode: str = "min"  # min: lower is better | max: higher is better


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
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    preset: str = "default"  # set by +preset=NAME; names the MLflow run
    seed: int = 42  # seeds data order, init of adapters and dropout: a CPU run is repeatable
    resume: str = "false"  # false | true (newest unfinished run) | <run_id>


# ---------------------------------------------------------------------------------------- eval (conf/eval.yaml)


@dataclass
class ChampionSchema:
    enabled: bool = True  # compare with the model holding ``alias`` when there is one
    model_name: Optional[str] = None  # registered model name (None: the context's registry name)
    alias: str = "production"  # the champion's alias
    max_pass_rate_drop: float = 0.05  # fail when candidate pass rate < champion's - this
    max_mean_score_drop: float = 0.03  # fail when candidate mean score < champion's - this


@dataclass
class GateSchema:
    min_pass_rate: float = 0.8  # weighted share of cases whose every check passes
    min_mean_score: float = 0.85  # weighted mean of case scores (mean of check scores, each in [0, 1])
    max_reference_loss: Optional[float] = None  # token-weighted teacher-forced loss over references (None: off)
    # per-tag floors on the pass rate, e.g. {forgetting: 1.0}: every case so tagged must pass
    min_tag_pass_rate: Dict[str, float] = field(default_factory=dict)
    # also score the untrained base on the same cases: the report shows both side by side, with margins
    compare_base: bool = False
    # also log the cases to MLflow's evaluation view (mlflow.genai.evaluate, ech0's results as assessments);
    # presentation only: the verdict is ech0's either way
    genai_view: bool = True
    genai_view_checks: bool = False  # the view also gets one assessment per check type (check_regex, ...)
    champion: ChampionSchema = field(default_factory=ChampionSchema)


@dataclass
class SafetySchema:
    secrets: bool = True  # scan outputs with ech0.data.secrets
    pii: bool = True  # scan outputs with ech0.data.pii
    blocklist: List[str] = field(default_factory=list)  # case-insensitive substrings, or re:PATTERN


@dataclass
class EvalTracking:
    enabled: bool = True  # off: no MLflow logging (reports are still written)
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///$ECH0_HOME/mlflow.db
    experiment: str = "ech0"  # for models without a training run (an eval-only run is opened there)


@dataclass
class EvalConfig:
    model_dir: Optional[str] = None  # run dir, its model/ folder, a HF model dir, runs:/... or models:/...
    baseline: Optional[str] = None  # JSONL cases (None: the shipped ech0/eval/baselines/regression.jsonl)
    max_new_tokens: int = 48  # default per case; a case's own max_new_tokens wins
    batch_size: int = 16  # prompts per generate() call and rows per loss batch
    report_dir: Optional[str] = None  # None: <run dir>/reports, or $ECH0_HOME/reports/eval/<model>
    seed: int = 0  # generation is greedy; the seed only pins anything stochastic in the model code
    gate: Any = MISSING  # config group: gate/default.yaml
    safety: SafetySchema = field(default_factory=SafetySchema)
    tracking: EvalTracking = field(default_factory=EvalTracking)
    paths: PathsConfig = field(default_factory=lambda: PathsConfig())


# ---------------------------------------------------------------------------------------- data stage (conf/data.yaml)


@dataclass
class DedupeSchema:
    enabled: bool = False  # --dedupe: remove exact and near duplicates (each cluster keeps its best row)
    near: bool = True  # near duplicates too (--no-near-dedupe: exact only)
    threshold: float = 0.8  # --threshold: near-duplicate Jaccard over word shingles
    num_perm: int = 128  # MinHash permutations
    ngram: int = 5  # words per shingle


@dataclass
class RedactSchema:
    secrets: bool = True  # replace secrets by <SECRET:rule>
    pii: bool = True  # replace e-mails, phones, ... by <EMAIL>, <PHONE>, ... (--no-redact-pii: keep them)


@dataclass
class DataStageConfig:
    input: Optional[str] = None  # --input: a file, or a dataset name from the previous level (validate, import)
    name: Optional[str] = None  # --name: dataset name (None: the input file's stem)
    stage: str = "clean"  # --stage: clean | processed (validate)
    tags: List[str] = field(default_factory=list)  # --tag: added to every imported row
    map: List[str] = field(default_factory=list)  # --map FIELD=KEY: override import's shape detection
    flatten: bool = False  # --flatten: import chats as prompt/completion (history -> prompt) instead of messages
    max_turns: int = 64  # --max-turns: reject conversations with more turns (too_many_turns)
    max_tokens: Optional[int] = None  # --max-tokens: reject rows whose rendered conversation is longer (None: no limit)
    tokenizer: Optional[str] = None  # --tokenizer: folder or hub id (None: the model's tokenizer)
    chat_template: Optional[str] = None  # Jinja template replacing the model's own (training's data.chat_template)
    exact_tokens: bool = False  # --exact-tokens: tokenize every row, not only those the byte bound cannot clear
    min_quality: Optional[float] = None  # --min-quality: reject scored rows below this (unscored rows pass)
    fail_on_secrets: bool = False  # --fail-on-secrets: exit 3, writing nothing, if any row holds a secret
    redact: RedactSchema = field(default_factory=RedactSchema)
    dedupe: DedupeSchema = field(default_factory=DedupeSchema)
    max_line_bytes: int = 1 << 20  # --max-line-bytes: longer lines are rejected unread (line_too_long)
    workers: Optional[int] = None  # --workers: processes (None: one per core for inputs over 8 MiB, else 1)
    progress: Optional[bool] = None  # --no-progress: false (None: a bar on a terminal only)
    model: ModelConfig = field(default_factory=ModelConfig)  # config group: whose chat template and tokenizer
    paths: PathsConfig = field(default_factory=PathsConfig)


# ---------------------------------------------------------------------------------------- registration


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
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(group="gate", name="gate_schema", node=GateSchema)
    cs.store(name="data_schema", node=DataStageConfig)


register()


# ---------------------------------------------------------------------------------------- composition


MULTIRUN_FLAGS = {"-m", "--multirun"}
PLUGINS = {"hydra/launcher/submitit": "slurm", "hydra/sweeper/optuna": "sweep"}  # config group -> extra
MAX_SWEEP_CHECKS = 16  # compositions a sweep's validation may spend (about 0.1 s each)
HYDRA_FLAGS = {"-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c",
               "--resolve", "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--version"}


def explain(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf composition error."""
    text = str(exc)
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if m:
        group, name = m.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1], flags=re.M)
        hint = f"; available: {', '.join(options)}" if options else ""
        plugin = next((extra for prefix, extra in PLUGINS.items() if f"{group}/{name}".startswith(prefix)), None)
        if plugin:
            hint += f" (install the plugin: pip install 'ech0[{plugin}]')"
        return f"unknown {group} {name!r}{hint}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        detail = str(cause).strip().splitlines()
        key = next((ln.split(":", 1)[1].strip() for ln in detail if ln.strip().startswith("full_key:")), None)
        msg = detail[0]
        return f"{first} — {msg}" + (f" (key: {key})" if key and key not in msg else "")
    return first


def compose(config_name: str, overrides: list[str], with_hydra: bool = False):
    """The composed, resolved config; a bad override raises :class:`UserError` with one line."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=with_hydra)
            if not with_hydra:
                OmegaConf.resolve(cfg)
    except Exception as e:  # Hydra raises several unrelated types for user mistakes
        raise UserError(explain(e)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def sweep_jobs(overrides: list[str], limit: int = MAX_SWEEP_CHECKS) -> list[list[str]]:
    """Override lists that together try every value of a ``-m`` sweep once: the first job, then each
    further value of each swept key with the other keys at their first value. Range sweeps
    (``interval(...)``, which a sweeper samples) are left out; a malformed override raises UserError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # OverrideParseException: a typo in the sweep syntax
        raise UserError(explain(e)) from None
    choices: list[list[str]] = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
        elif o.is_discrete_sweep():
            try:
                values = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            except Exception:  # glob(...) needs Hydra's config loader: Hydra checks it itself
                continue
            if values:
                choices.append(values)
    first = [values[0] for values in choices]
    jobs = [first]
    for i, values in enumerate(choices):
        for v in values[1:]:
            jobs.append([*first[:i], v, *first[i + 1:]])
    return jobs[:limit]


def compose_or_exit(config_name: str, argv: list[str]):
    """Validate ``argv``'s overrides against ``config_name``; a bad one prints one line and exits 2.

    With ``-m`` every swept value is tried (up to :data:`MAX_SWEEP_CHECKS` compositions) and None is
    returned: Hydra composes each job itself."""
    flags = {a.split("=")[0] for a in argv if a.split("=")[0] in HYDRA_FLAGS}
    if flags - MULTIRUN_FLAGS:
        return None  # --help, --cfg ...: Hydra handles (and validates) these itself
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS and not a.startswith("hydra")]
    try:
        if flags:
            for job in sweep_jobs(overrides):
                compose(config_name, job)
            return None
        return compose(config_name, overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


EXPANDED = ("--overrides", "--args")


def expand_overrides(argv: list[str]) -> list[str]:
    """``--overrides "a=1 b=2"`` or ``--args "..."`` (how MLproject passes a list: one quoted parameter)
    -> ``a=1 b=2``, split with shell rules."""
    import shlex

    out, it = [], iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if arg in EXPANDED:
            out += shlex.split(next(it, ""))
        elif eq and flag in EXPANDED:
            out += shlex.split(value)
        else:
            out.append(arg)
    return out
