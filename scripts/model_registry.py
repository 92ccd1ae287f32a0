#!/usr/bin/env python
"""The seed's registry command, now a shim that forwards every argument to ``ech0 registry``
(ech0.registry.cli.main: same subcommands, flags, output and exit codes; ``--help`` is its help).

    python scripts/model_registry.py register --run-id RUN --run-dir models/RUN --eval-report R --score 0.9
    python scripts/model_registry.py list
    python scripts/model_registry.py promote --run-id RUN --stage production
    python scripts/model_registry.py rollback --stage production
    python scripts/model_registry.py package --alias production --dest ech0-prod
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ech0.registry import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
