"""The seed's hub command, now a shim that forwards every argument to ``ech0 pipeline`` (ech0.pipeline.main).

    python ech0_hub_enhanced.py --mode train --config lora
    python ech0_hub_enhanced.py --mode eval --model-dir models/<run_id>
    python ech0_hub_enhanced.py --mode pipeline --promote-on-pass

Prefer ``ech0 pipeline`` / ``python -m ech0.pipeline``: same flags, same output (``--help`` is its help).
"""

import sys

from ech0.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
