"""The typed schema of ``conf/eval.yaml`` and ``conf/gate/*.yaml``, registered in Hydra's ConfigStore.

    from ech0.eval.config import compose_eval
    cfg = compose_eval(["gate.min_pass_rate=0.9"])      # what `ech0 eval ... gate.min_pass_rate=0.9` uses

A typo in an override (``gate.min_pass_rat=0.9``) fails at composition with one line, exit 2, before
torch is imported. Imports only omegaconf/hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ChampionSchema:
    enabled: bool = True  # compare with the model holding ``alias`` when there is one
    model_name: str = "ech0"  # registered model name
    alias: str = "production"  # the champion's alias
    max_pass_rate_drop: float = 0.05  # fail when candidate pass rate < champion's - this
    max_mean_score_drop: float = 0.03  # fail when candidate mean score < champion's - this


@dataclass
class GateSchema:
    min_pass_rate: float = 0.8  # weighted share of cases whose every check passes
    min_mean_score: float = 0.85  # weighted mean of case scores (mean of check scores, each in [0, 1])
    max_reference_loss: Optional[float] = None  # token-weighted teacher-forced loss over references (None: off)
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
class EvalPaths:
    home: str = "${oc.env:ECH0_HOME,.}"


@dataclass
class EvalConfig:
    model_dir: Optional[str] = None  # run dir, its model/ folder, a HF model dir, runs:/... or models:/...
    baseline: Optional[str] = None  # JSONL cases (None: the shipped ech0/eval/baselines/regression.jsonl)
    max_new_tokens: int = 48  # default per case; a case's own max_new_tokens wins
    batch_size: int = 16  # prompts per generate() call and rows per loss batch
    prompt_template: Optional[str] = None  # None: the model's own (ech0_model.json), else the training default
    report_dir: Optional[str] = None  # None: <run dir>/reports, or $ECH0_HOME/reports/eval/<model>
    seed: int = 0  # generation is greedy; the seed only pins anything stochastic in the model code
    gate: Any = MISSING  # config group: gate/default.yaml
    safety: SafetySchema = field(default_factory=SafetySchema)
    tracking: EvalTracking = field(default_factory=EvalTracking)
    paths: EvalPaths = field(default_factory=EvalPaths)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(group="gate", name="gate_schema", node=GateSchema)


def compose_eval(overrides: list[str]):
    """The composed, resolved eval config; a bad override raises UserError (one line)."""
    from ech0.cli_common import compose

    register()
    return compose("eval", overrides)


register()
