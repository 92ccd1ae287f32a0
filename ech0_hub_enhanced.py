"""Compatibility entry for the seed's hub commands; everything is ech0.pipeline.

    python ech0_hub_enhanced.py --mode train --config lora
    python ech0_hub_enhanced.py --mode eval --model-dir models/<run_id>
    python ech0_hub_enhanced.py --mode pipeline --promote-on-pass

Prefer ``python -m ech0.pipeline`` / ``ech0 pipeline`` (same flags).
"""

import sys

from ech0.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
