"""``python -m ech0.data {import,validate,verify} ...`` (see ech0/data/cli.py)."""

import sys

from ech0.data.cli import main

sys.exit(main())
