"""Regenerate the shipped sample datasets (deterministic): the toy sample and the real demo's persona dump.

    python scripts/make_sample_data.py
"""

from ech0.sample_data import persona, write

if __name__ == "__main__":
    for path in (*write(), persona.write()):
        print(f"wrote {path}")
