"""What every Hydra-driven entry point shares: fast config validation and the end-of-run summary.

    compose_or_exit("train", ["+preset=lora", "trainer.max_steps=3"])   # exit 2 with one line if bad
"""

from __future__ import annotations

import re
import sys

from ech0.errors import UserError

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
    from omegaconf import OmegaConf

    from ech0 import config

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config.CONF_DIR), version_base="1.3"):
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


def quiet_libraries() -> None:
    """Keep the terminal for ech0's progress bar and summary: library chatter goes to the log file only."""
    import logging
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow re-applies its own level on import
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("mlflow", "matplotlib", "transformers", "peft", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*dataset source can be interpreted.*", ".*type hints to the `predict` method.*",
                    ".*input example was not provided.*", ".*Converting a tensor with requires_grad.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notices, not the user's concern
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every model load


def print_summary(result) -> None:
    if result.rank:  # torchrun's other processes: rank 0 prints the one summary
        return
    lines = [
        "",
        f"  run      {result.run_id}",
        f"  tracking {result.tracking_uri}",
        f"  model    {result.run_dir / 'model'}",
        f"  loss     {result.loss_before:.4f} -> {result.loss_after:.4f} (held-out completion loss, before -> after)",
        f"  time     {result.wall_seconds:.1f}s for {result.steps} steps",
        f"  see it   mlflow ui --backend-store-uri {result.tracking_uri}",
    ]
    print("\n".join(lines))


