"""The seed's command, kept as a shim: ``python -m ech0.eval.runner ARGS`` forwards to ``python -m ech0.eval ARGS``.

The evaluation itself is :mod:`ech0.eval.evaluate`; its command line is :mod:`ech0.eval.cli`.
"""

import sys

from ech0.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
