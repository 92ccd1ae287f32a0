"""What every CLI entry point does first: keep the terminal for ech0's own progress and summary.

    from ech0.cli_common import quiet_libraries
    quiet_libraries()        # called once, at the CLI edge, before heavy imports

Third-party knobs that exist only as environment variables are set here and nowhere else.
"""

from __future__ import annotations

import contextlib


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
    for pattern in (".*dataset source can be interpreted.*", ".*input example was not provided.*",
                    ".*Converting a tensor with requires_grad.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notices, not the user's concern
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every model load


@contextlib.contextmanager
def library_env(name: str, value: str):
    """``name=value`` in the environment for the block only: a library knob that exists only as an environment
    variable and must hold for one call wherever ech0 is used from (the CLI or Python); a value the user set
    wins. Used by ech0.eval.genai_view (MLflow's evaluation harness workers)."""
    import os

    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
