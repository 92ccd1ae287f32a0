"""What every Hydra-driven entry point shares: fast config validation and the end-of-run summary.

    compose_or_exit("train", ["+preset=lora", "trainer.max_steps=3"])   # exit 2 with one line if bad
"""

from __future__ import annotations

import re
import sys

from ech0.errors import UserError

HYDRA_FLAGS = {"-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c",
               "--resolve", "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--version"}


def explain(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf composition error."""
    text = str(exc)
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        group, name = m.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1], flags=re.M)
        hint = f"; available: {', '.join(options)}" if options else ""
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


def compose_or_exit(config_name: str, argv: list[str]):
    """Validate ``argv``'s overrides against ``config_name``; a bad one prints one line and exits 2."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        return None  # multirun, --help, --cfg ...: Hydra handles (and validates) these itself
    try:
        return compose(config_name, [a for a in argv if not a.startswith("hydra")])
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


