"""The training stage's internals: data, adapters, loop, checkpoints, precision. Entry: ``python -m ech0.train``."""
