"""A live terminal view of a run's status.json until the run ends (works for a run started elsewhere).

    ech0 watch models/<run_id>          # or the status.json path, or just the run id
    python -m ech0.watch <run_id>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ech0.errors import UserError, cli_errors

DONE = ("succeeded", "failed", "interrupted")


def _status_file(ctx, ref: str) -> Path:
    for p in (Path(ref), Path(ref) / "status.json", ctx.run_dir(ref) / "status.json"):
        if p.is_file():
            return p
    raise UserError(f"{ref}: no status.json there; pass models/<run_id> or a run id under {ctx.models_dir}")


def line(s: dict) -> str:
    step, total = s.get("step") or 0, s.get("max_steps") or 0
    width = 30
    filled = int(width * step / total) if total else 0
    eta = s.get("eta_seconds")
    parts = [f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total or '?'}", f"{s.get('state')}"]
    if s.get("loss") is not None:
        parts.append(f"loss {s['loss']:.4f}")
    if s.get("tokens_per_sec"):
        parts.append(f"{s['tokens_per_sec']:,.0f} tok/s")
    if eta is not None and s.get("state") == "running":
        parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    return "  ".join(parts)


@cli_errors
def main(argv: list[str] | None = None, interval: float = 1.0) -> int:
    from ech0.context import Context
    from ech0.status import read_status

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    path = _status_file(Context.from_env(), argv[0])
    while True:
        s = read_status(path)
        end = "\n" if s.get("state") in DONE or not sys.stdout.isatty() else "\r"
        print(line(s).ljust(100), end=end, flush=True)
        if s.get("state") in DONE:
            if s.get("error"):
                print(f"error: {s['error']}")
            return 0 if s["state"] == "succeeded" else 1
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
