"""Benchmarks: ``python -m benchmarks.<name> --out FILE.json`` (JSON results + a short table)."""
