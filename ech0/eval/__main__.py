"""``python -m ech0.eval`` = ``ech0 eval`` (see ech0/eval/cli.py)."""

import sys

from ech0.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
