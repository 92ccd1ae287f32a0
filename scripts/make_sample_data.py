"""Regenerate the shipped sample dataset (deterministic).

    python scripts/make_sample_data.py
"""

from ech0.sample_data import write

if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
