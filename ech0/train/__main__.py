"""``python -m ech0.train`` = ``ech0 train`` (see ech0/train/cli.py)."""

from ech0.train.cli import main

if __name__ == "__main__":
    main()
