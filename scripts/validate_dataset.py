"""Validate, redact, filter and dedupe a dataset into ECH0_HOME/data/<stage>/ (thin shim).

Forwards every argument to ``ech0 data validate`` (``ech0.data.cli.main(["validate", *argv])``): the same
flags, and ``KEY=VALUE`` overrides of ``conf/data.yaml`` after them.

    python scripts/validate_dataset.py --input data/raw/crypto.jsonl --stage clean --max-tokens 2048 --min-quality 0.25
    python scripts/validate_dataset.py --input crypto --stage processed --dedupe --fail-on-secrets
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ech0.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
