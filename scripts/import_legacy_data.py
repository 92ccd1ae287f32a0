"""Import a legacy JSON array / JSONL dump into ECH0_HOME/data/raw/<name>.jsonl (thin shim).

Forwards every argument to ``ech0 data import`` (``ech0.data.cli.main(["import", *argv])``): the same
flags, and ``KEY=VALUE`` overrides of ``conf/data.yaml`` after them.

    python scripts/import_legacy_data.py --input legacy.json --tag crypto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ech0.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["import", *sys.argv[1:]]))
