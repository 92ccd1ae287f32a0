"""Loss curves as PNG (matplotlib, headless).

    loss_curve({"train": [(1, 2.3), ...], "eval": [(0, 2.5), ...]}, "loss_curve.png", title="lora-...")
"""

from __future__ import annotations

from pathlib import Path


def loss_curve(series: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ech0.io import atomic_open

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 20 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("completion loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(path)
