#!/usr/bin/env python
"""Screenshots of the MLflow UI as a person sees it after `make demo`, for README "In the MLflow UI".

    apt-get install -y chromium                       # Debian's; any chromium/chrome on PATH works
    .venv/bin/python scripts/ui_screenshots.py        # ~2 min on 2 cores: writes docs/ui/NN-*.png
    .venv/bin/python scripts/ui_screenshots.py --keep # ... and keeps the temporary ECH0_HOME (printed)
    .venv/bin/python scripts/ui_screenshots.py --home DIR   # screenshots of an existing home's store only

With no ``--home`` it runs the tiny demo (``python -m ech0.demo``) in a fresh temporary ECH0_HOME,
then moves the registry the way a team would (v2 registered, promoted, rolled back; v2 to staging),
starts ``mlflow server`` on that home's SQLite store on a free port, and points headless chromium at
each page a user of the production model opens: the runs, the training run, its gate report, its
logged models, the registered model (aliases + history), the production version, the history table
artifact and, when the gate logged one, its evaluation view (mlflow.genai). The server is always stopped (its
process group) and the temporary home removed. Re-running rewrites the same files; stale ``NN-*.png``
in the output folder are removed.

Two details of MLflow 3.17's UI: its Assistant panel opens on first load from ``localhost`` and takes a
third of the width, so the browser reaches the server under another name (``ech0-ui``, mapped to
127.0.0.1 by ``--host-resolver-rules``; the server allows that host and origin); experiment pages take
``?workflowType=machine_learning`` (the "Model training" switch in the sidebar) instead of the GenAI
default. Screenshots are quantized to 256 colours, which keeps each under 300 KB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ech0.errors import UserError, cli_errors  # noqa: E402

HOST = "ech0-ui"  # not localhost: MLflow's Assistant panel opens (and covers the page) only there
WIDTH = 1400
# JavaScript time each page gets before the shot (virtual time: it ends early when the page is idle);
# 20 s rendered every page here, 8 s left the run list half-loaded.
BUDGET_MS = 20000
MAX_PNG = 300_000
ML = "workflowType=machine_learning"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    raise UserError("no chromium on PATH; install Debian's: `apt-get install -y chromium`")


def _run(cmd: list[str], env: dict, what: str, timeout: float = 900) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=env.get("ECH0_HOME"), timeout=timeout)
    if out.returncode != 0:
        raise UserError(f"{what} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-400:]}")
    return out.stdout


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "ECH0_REGISTRY_NAME")}
    env.update({"ECH0_HOME": str(home), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])})
    return env


def make_store(home: Path) -> None:
    """The demo's pipeline (v1 in production), then the registry moves a team makes."""
    env = _env(home)
    py = [sys.executable, "-m"]
    t = time.time()
    _run([*py, "ech0.demo"], env, "the demo")
    print(f"  demo: {time.time() - t:.0f} s")
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run_id = c.get_model_version("ech0", "1").run_id
    reg = [*py, "ech0.registry"]
    for args in (["register", "--run-id", run_id],
                 ["promote", "--version", "2", "--reason", "walkthrough: a second version"],
                 ["rollback", "--reason", "walkthrough: back to v1"],
                 ["promote", "--version", "2", "--stage", "staging"]):
        print("  " + _run([*reg, *args], env, f"ech0 registry {args[0]}").strip().splitlines()[-1])


class Server:
    def __init__(self, home: Path, log: Path):
        from ech0.smoke import free_port

        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log, self.log_path = open(log, "wb"), log
        hosts = ",".join(f"{h}:{self.port}" for h in (HOST, "127.0.0.1", "localhost"))
        env = {**_env(home), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners: a faster boot
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", "--allowed-hosts", hosts,
             "--cors-allowed-origins", self.url],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=home, env=env, start_new_session=True)
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                raise UserError(f"mlflow server exited {self.proc.returncode}: {log.read_text()[-400:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise UserError(f"mlflow server not up after 180 s: {log.read_text()[-400:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        from ech0.smoke import stop_process

        stop_process(self.proc)
        self.log.close()


def pages(home: Path) -> list[tuple[str, str, int]]:
    """(file stem, UI route, window height) of each page, in the order a person opens them."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    prod = c.get_model_version_by_alias("ech0", "production")
    run = c.get_run(prod.run_id)
    exp, r = run.info.experiment_id, run.info.run_id
    runs = f"/experiments/{exp}/runs"
    out = [("01-registered-model", "/models/ech0", 1000),
           ("02-production-version", f"/models/ech0/versions/{prod.version}", 1000),
           ("03-gate-report", f"{runs}/{r}/artifactPath/eval/regression_report.md?{ML}", 1000),
           ("04-training-run", f"{runs}/{r}?{ML}", 1000),
           ("05-history-table", f"{runs}/{r}/artifactPath/registry/history.json?{ML}", 700),
           ("06-runs", f"{runs}?{ML}", 600),
           ("07-logged-models", f"/experiments/{exp}/models?{ML}", 600)]
    model_id = (prod.source or "").removeprefix("models:/") if (prod.source or "").startswith("models:/m-") else None
    if model_id:
        out.append(("08-logged-model", f"/experiments/{exp}/models/{model_id}?{ML}", 1000))
    view = run.data.tags.get("ech0.eval.genai_view") or next(  # the gate's cases in MLflow's evaluation view
        (v.info.run_id for v in c.search_runs([exp], "tags.`mlflow.runType` = 'genai_evaluate'", max_results=1)), None)
    if view:  # (not the Traces page: its first visit covers the table with a "Detect Issues" popover)
        out.append(("09-evaluation", f"/experiments/{exp}/runs/{view}/evaluations", 900))
    return out


def shoot(chromium: str, url: str, dest: Path, height: int, profile: Path) -> None:
    cmd = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
           f"--host-resolver-rules=MAP {HOST} 127.0.0.1", f"--window-size={WIDTH},{height}",
           f"--virtual-time-budget={BUDGET_MS}", f"--screenshot={dest}", url]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # chromium refuses to run its sandbox as root
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if out.returncode != 0 or not dest.is_file():
        raise UserError(f"chromium failed on {url}: {out.stderr.strip()[-300:]}")
    from PIL import Image

    with Image.open(dest) as im:
        small = im.convert("RGB").quantize(colors=256)
    small.save(dest, optimize=True)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/ui_screenshots.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", help="an existing ECH0_HOME to screenshot (default: a fresh one with the demo in it)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "ui"), help="where the PNGs go (default docs/ui)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary ECH0_HOME")
    args = ap.parse_args(argv)
    chromium = _chromium()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ech0-ui-"))
    home = Path(args.home).resolve() if args.home else tmp / "home"
    try:
        if args.home:
            if not (home / "mlflow.db").is_file():
                raise UserError(f"{home / 'mlflow.db'}: not found; run `make demo` with ECH0_HOME={home} first")
        else:
            home.mkdir()
            print(f"ECH0_HOME={home}")
            make_store(home)
        server = Server(home, tmp / "ui-server.log")
        try:
            written = []
            for stem, route, height in pages(home):
                dest = out / f"{stem}.png"
                part = out / f".{stem}.part.png"
                shoot(chromium, f"{server.url}/#{route}", part, height, tmp / "profile")
                os.replace(part, dest)
                size = dest.stat().st_size
                print(f"  {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}  {size // 1024} KB  #{route}")
                if size > MAX_PNG:
                    print(f"  warning: {dest.name} is over {MAX_PNG // 1000} KB", file=sys.stderr)
                written.append(dest.name)
        finally:
            server.stop()
        for stale in out.glob("[0-9][0-9]-*.png"):
            if stale.name not in written:
                stale.unlink()
    finally:
        shutil.rmtree(tmp / "profile", ignore_errors=True)
        if args.keep and not args.home:
            print(f"kept ECH0_HOME={home} (server log: {tmp / 'ui-server.log'})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
