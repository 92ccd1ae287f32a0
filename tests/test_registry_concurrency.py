"""Several processes promoting and rolling back at once: the history stays contiguous and consistent,
and every alias sits where the history's last event for its stage says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ech0.registry import history as hist, store as rstore

WORKER = r"""
import json, random, sys
from ech0.context import Context
from ech0.errors import UserError
from ech0.registry import history as h
uri, name, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = Context.from_env(tracking_uri=uri)
rng = random.Random(seed)
written = refused = 0
for _ in range(n):
    stage = rng.choice(["production", "production", "staging"])
    try:
        if rng.random() < 0.6:
            move = h.promote(ctx, version=str(rng.randint(1, 3)), stage=stage, name=name, lock_timeout=240)
        else:
            move = h.rollback(ctx, stage=stage, name=name, lock_timeout=240)
        written += move.event is not None
    except UserError as e:
        if "locked" in str(e):
            raise
        refused += 1  # nothing to roll back to: a clean refusal, nothing written
print(json.dumps({"written": written, "refused": refused}))
"""

PROCS, OPS = 4, 5


def test_parallel_promote_and_rollback_keep_history_and_alias_consistent(store, model_name, repo_root):
    for _ in range(3):
        rstore.register(store.ctx, store.runs["passed"], name=model_name)
    env = {**os.environ, "ECH0_HOME": str(store.home), "PYTHONPATH": str(repo_root)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, store.uri, model_name, str(seed), str(OPS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo_root)
             for seed in range(PROCS)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    written = sum(r["written"] for r in results)
    assert written + sum(r["refused"] for r in results) <= PROCS * OPS and written >= PROCS

    evts, problems = hist.history(store.ctx, name=model_name)
    assert problems == [], problems  # contiguous sequence, every `from` is the previous `to`, aliases agree
    assert [e.seq for e in evts] == list(range(1, len(evts) + 1))
    assert len(evts) == written and {e.action for e in evts} <= {"promote", "rollback"}
    states, _ = hist.replay(evts)
    rm = rstore.client(store.ctx).get_registered_model(model_name)
    for stage, st in states.items():
        assert (None if rm.aliases.get(stage) is None else str(rm.aliases[stage])) == st.current
    if states["production"].current:
        assert rm.tags["active_run"] == store.runs["passed"]
    assert not any(m.name == model_name + hist.LOCK_SUFFIX
                   for m in rstore.client(store.ctx).search_registered_models())  # the lock was released
