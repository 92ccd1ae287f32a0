"""Deliver what training runs could not: the spools a tracking-server outage left in their run folders.

    ech0 sync                    # every run under $ECH0_HOME/models with undelivered records
    ech0 sync RUN_ID [RUN_ID..]  # only these runs
    ech0 sync --wait 300         # wait up to 5 minutes for a server that is still down (default: 30 s)

A training run logs through ``models/<run>/spool`` (ech0/spool.py). When the server is still down when
training ends, the run's model and folder stay here, the command exits 3 and says so; this command then
delivers the spool in order (metrics, params, tags, datasets, artifacts, models, the run's end) to the same
store (``MLFLOW_TRACKING_URI``), and removes the spool once everything is in. Run twice, the second finds
nothing to do: a delivered record is never sent again. Exit 0 when everything was delivered, 3 when the
server did not answer within ``--wait``, 2 on a bad argument or a spool recorded for another store.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from ech0.errors import UserError, cli_errors


class StillDown(UserError):
    exit_code = 3


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ech0 sync", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run ids (default: every run with undelivered records)")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a server that is down")
    return p.parse_args(argv)


def sync(ctx, runs: list[str], wait: float) -> list[tuple[str, dict, int]]:
    """Deliver the pending spools of ``runs`` (all when empty); returns (run id, what was sent, refused)."""
    from ech0 import spool as spooling, tracking
    from ech0.errors import safe_uri

    spools = spooling.pending_spools(ctx.models_dir)
    if runs:
        unknown = [r for r in runs if not (ctx.run_dir(r) / "spool" / spooling.META).is_file()]
        if unknown:
            raise UserError(f"{unknown[0]}: no spool under {ctx.run_dir(unknown[0])}; `ech0 sync` with no run "
                            "id delivers every run that has one")
        spools = [s for s in spools if s.run_id in runs]
    for s in spools:
        if s.recorded_uri != safe_uri(ctx.tracking_uri):
            raise UserError(f"{s.folder}: run {s.run_id} logged to {s.recorded_uri}, not {safe_uri(ctx.tracking_uri)}; "
                            f"set MLFLOW_TRACKING_URI to that store and run `ech0 sync` again")
    tracking.point_at(ctx)  # MLflow's model logging resolves the store through the global URI
    done = []
    for s in spools:
        box = spooling.Spool.open(s.folder, ctx.tracking_uri)  # with the credentials the environment gives
        before, refused_before = box.summary(), len(box.state["refused"])
        try:
            spooling.deliver(box, wait_seconds=wait)
        except ConnectionError:
            raise StillDown(f"{safe_uri(ctx.tracking_uri)} did not answer within {wait:.0f} s: run {box.run_id} "
                            f"keeps {spooling.describe(box.summary())} in {box.folder}; run `ech0 sync` again "
                            "once the server is back (nothing is sent twice)") from None
        finally:
            box.close()
        refused = len(box.state["refused"]) - refused_before
        if not refused:
            shutil.rmtree(box.folder, ignore_errors=True)
        done.append((box.run_id, before, refused))
    return done


@cli_errors
def main(argv: list[str] | None = None) -> int:
    from ech0.cli_common import quiet_libraries
    from ech0.context import Context
    from ech0.spool import describe

    args = parse(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    ctx = Context.from_env()
    t0 = time.monotonic()
    done = sync(ctx, args.runs, args.wait)
    if not done:
        print(f"nothing to deliver: no run under {ctx.models_dir} has undelivered records")
        return 0
    for run_id, sent, refused in done:
        note = f"; {refused} refused by the store (see its spool's delivered.json)" if refused else ""
        print(f"run {run_id}: delivered {describe(sent)}{note}")
    print(f"synced {len(done)} run(s) in {time.monotonic() - t0:.1f} s")
    return 1 if any(r for _, _, r in done) else 0


if __name__ == "__main__":
    raise SystemExit(main())
