"""The gate's cases in MLflow's evaluation view: one ``mlflow.genai.evaluate`` record (a trace) per case.

    from ech0.eval.genai_view import log_views
    views = log_views(ctx, parent_run_id, subject, baseline, results, data, champion_results, scanner)

Called by :mod:`ech0.eval.evaluate` after the gate has decided, when ``gate.genai_view`` is true (the
default); not run directly. The evaluation is a run nested under the run the verdict went into (the
training run, or the eval-only run), linked to the model's ``LoggedModel`` so its traces also show on
the model's page. Each record holds the case's (redacted) request, the model's (redacted) answer and the
reference as ``expected_response``; its assessments are ech0's own results:

- ``gate_case`` (the case passes every check: what the gate's pass rate counts; the rationale names each
  check and the details of those that fail), ``case_score`` (mean of the check scores), both for gating
  cases only; ``not_gating`` for weight-0 cases (reported, never gating);
- ``safety`` (no secret, PII or blocklist flag in the answer; the rules, never the values);
- with ``gate.genai_view_checks``, also ``check_<type>`` per check type (``check_regex``, ``check_max_loss``, ...);
- with a champion compared: ``champion_case`` (its pass, score and redacted answer) and ``vs_champion``
  (False where the champion passes and this model fails). The champion's own cases are a second
  evaluation run, logged once per champion cache key (version, baseline, output settings) and reused by
  later candidates, so the UI can also compare the two runs side by side.

The scorers do not judge: they hand MLflow the gate's per-check results, which ech0 computed on the raw
answers (the ``max_loss`` check needs the model's loss; the raw text never reaches MLflow, and checks run
on redacted text would differ on exactly the cases that leak). The verdict stays ech0's: the run also
carries ech0's weighted ``eval/pass_rate``, ``eval/mean_score`` and ``eval/gate_passed``. MLflow's
``gate_case/mean`` is the unweighted pass rate over gating cases, equal to ech0's when their weights are
equal (the shipped baselines). Every string handed to MLflow passes through the gate's redactor first.
"""

from __future__ import annotations

import contextlib
import io
import time

from ech0.context import Context

# MLflow's evaluation harness writes each record from up to 10 threads; on a SQLite store they exhaust
# SQLAlchemy's pool (5 + 10 overflow), each waits 30 s, and the traces are dropped with a warning
# (measured: 25 of 41 records kept, 60 s). One writer keeps every record (41 of 41 in 4.3 s).
WORKERS_ENV = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
CHAMPION_ANSWER_CHARS = 300  # the champion's answer in a rationale: enough to read, bounded


def _redacted(value, scanner):
    """``value`` with every string in it (dict keys included) through the gate's redactor."""
    if isinstance(value, str):
        return scanner.redact(value)
    if isinstance(value, dict):
        return {_redacted(k, scanner): _redacted(v, scanner) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, scanner) for v in value]
    return value


def records(baseline, results: list[dict], scanner) -> list[dict]:
    """One ``mlflow.genai.evaluate`` row per case: inputs (the case id and what the model was asked),
    outputs (its answer, already redacted by scoring), expectations (the reference), tags."""
    rows = []
    for case, r in zip(baseline.cases, results):
        ask = {"messages": case.messages} if case.messages else {"prompt": case.prompt}
        row = {"inputs": {"case_id": case.id, **ask}, "outputs": r["output"],
               "tags": {"ech0.case_tags": ",".join(case.tags) or "-"}}  # one tag: each is one more write
        if case.reference is not None:
            row["expectations"] = {"expected_response": case.reference}
        rows.append(_redacted(row, scanner))
    return rows


def _failed(r: dict) -> list[str]:
    return [f"{c['check']}: {c['detail']}" for c in r["checks"] if not c["passed"]]


def assessments(results: list[dict], champion: dict | None = None,
                checks: bool = False) -> dict[str, dict[str, tuple]]:
    """``{case id: {assessment name: (value, rationale)}}`` from the gate's results; a case without an
    assessment (a weight-0 case has no ``gate_case``) simply lacks the name. ``checks``: also one
    ``check_<type>`` per check type of the case."""
    who, cases, answers = None, {}, {}
    if champion and champion.get("status") == "compared":
        who = f"champion {champion['model_name']} v{champion['version']} (@{champion['alias']})"
        cases = champion.get("cases") or {}
        answers = {r["id"]: r["output"] for r in champion.get("results") or []}
    out: dict[str, dict[str, tuple]] = {}
    for r in results:
        failed, n = _failed(r), len(r["checks"])
        passing = ", ".join(c["check"] for c in r["checks"] if c["passed"])
        why = (f"all {n} checks pass ({passing})" if not failed else
               f"{len(failed)} of {n} checks fail: " + "; ".join(failed) + (f"; passing: {passing}" if passing else ""))
        a: dict[str, tuple] = {}
        if r["weight"] > 0:
            a["gate_case"] = (r["passed"], why)
            a["case_score"] = (r["score"], f"mean of {n} check scores")
        else:
            a["not_gating"] = (r["passed"], f"weight 0: reported, never gating; {why}")
        for kind in dict.fromkeys(c["type"] for c in r["checks"]) if checks else ():
            mine = [c for c in r["checks"] if c["type"] == kind]
            a[f"check_{kind}"] = (all(c["passed"] for c in mine),
                                  "; ".join(f"{c['check']}: {c['detail']}" for c in mine))
        flags = [f"{f['kind']}:{f['rule']}" for f in r["safety_flags"]]
        a["safety"] = (not flags, "no flags" if not flags else
                       f"{', '.join(flags)} (redacted in the answer); any flag fails the gate")
        theirs = cases.get(r["id"])
        if who and theirs and r["weight"] > 0:
            answer = answers.get(r["id"])
            a["champion_case"] = (theirs["passed"], f"{who}: {'passes' if theirs['passed'] else 'fails'}, score "
                                  f"{theirs['score']:.3f}" + (f"; its answer: {answer[:CHAMPION_ANSWER_CHARS]}"
                                                              if answer is not None else ""))
            how = {(True, True): "both pass", (False, False): "both fail", (True, False): "regressed: the champion "
                   "passes, this model fails", (False, True): "improved: this model passes, the champion fails"}
            a["vs_champion"] = (not (theirs["passed"] and not r["passed"]),
                                f"{how[(theirs['passed'], r['passed'])]}; score {r['score']:.3f} vs the "
                                f"{who}'s {theirs['score']:.3f}")
        out[r["id"]] = a
    return out


def _scorers(table: dict[str, dict[str, tuple]], scanner) -> list:
    """One MLflow scorer per assessment name, looking its value up by case id (rationales redacted)."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    names = list(dict.fromkeys(n for a in table.values() for n in a))
    clean = {cid: {n: (v, scanner.redact(why)) for n, (v, why) in a.items()} for cid, a in table.items()}

    def make(name: str):
        def lookup(inputs):
            hit = clean.get(inputs.get("case_id"), {}).get(name)
            return None if hit is None else Feedback(value=hit[0], rationale=hit[1])  # None: not assessed

        return scorer(lookup, name=name)

    return [make(n) for n in names]


def _one_writer(ctx: Context):
    """One harness worker on a local SQLite store (see ``WORKERS_ENV``; a value the user set is kept)."""
    from ech0.cli_common import library_env

    return library_env(WORKERS_ENV, "1") if ctx.is_local_store else contextlib.nullcontext()


def model_id_of(ctx: Context, ref: str, info: dict, run_id: str | None) -> str | None:
    """The ``LoggedModel`` a reference names: a registered version's, else the run's model of that name
    (``runs:/<id>/<name>``, or ``model`` for a run folder); None when there is none (a plain HF dir)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.tracking_uri)
    try:
        if info.get("version") and info.get("model_name"):
            return client.get_model_version(info["model_name"], info["version"]).model_id
        if not run_id:
            return None
        name = ref.split("/", 2)[2] if ref.startswith("runs:/") and ref.count("/") >= 2 else "model"
        exp = client.get_run(run_id).info.experiment_id
        found = client.search_logged_models([exp], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
                                            max_results=1,
                                            order_by=[{"field_name": "creation_timestamp", "ascending": False}])
        return found[0].model_id if found else None
    except Exception:  # an old store, a foreign model: the view is logged without the link
        return None


def _evaluate(ctx: Context, rows: list[dict], table: dict, scanner, model_id: str | None):
    """``mlflow.genai.evaluate`` into the active run; its own printout and progress bar are kept off
    the terminal (``--json`` owns stdout). Returns how many records reached the store."""
    import mlflow

    with _one_writer(ctx), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = mlflow.genai.evaluate(data=rows, scorers=_scorers(table, scanner), model_id=model_id)
    return len(result.result_df) if result.result_df is not None else 0


def _log_one(ctx: Context, parent_run_id: str, run_name: str, tags: dict, rows, table, scanner, model_id,
             metrics: dict) -> dict:
    from ech0 import tracking

    started = time.perf_counter()
    with tracking.start_child(ctx, parent_run_id, run_name, tags=_redacted(tags, scanner)) as tr:
        logged = _evaluate(ctx, rows, table, scanner, model_id)
        tr.log_metrics(metrics, step=0)
        if logged != len(rows):  # MLflow drops a record it cannot write with only a warning: say so here
            tr.set_tags({"ech0.eval.genai_view_incomplete": f"{logged} of {len(rows)} records logged"})
    return {"run_id": tr.run_id, "model_id": model_id, "records": len(rows), "logged": logged,
            "seconds": round(time.perf_counter() - started, 2)}


def _logged_champion_view(ctx: Context, parent_run_id: str, key: str) -> str | None:
    """A complete champion view already logged for this champion cache key (in the parent's experiment), or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.tracking_uri)
    found = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                               f"tags.`ech0.eval.champion_key` = '{key}' and attributes.status = 'FINISHED'",
                               max_results=5, order_by=["attributes.start_time DESC"])
    return next((r.info.run_id for r in found if "ech0.eval.genai_view_incomplete" not in r.data.tags), None)


def _champion_view(ctx: Context, parent_run_id: str, baseline, champ: dict, champion_results, common: dict,
                   scanner, checks: bool) -> dict | None:
    """The champion's own cases as an evaluation run, once per champion cache key (model version, baseline,
    output settings): later candidates compared with the same champion point at the same run."""
    reused = _logged_champion_view(ctx, parent_run_id, champ["key"]) if champ.get("key") else None
    if reused:
        return {"run_id": reused, "reused": True}
    if not champion_results:  # a cache entry written before answers were kept: no answers to show
        return None
    name, version = champ["model_name"], champ["version"]
    view = _log_one(ctx, parent_run_id, f"genai-eval-{name}-v{version}-champion",
                    {**common, "ech0.eval.view_of": "champion", "ech0.eval.model": f"models:/{name}/{version}",
                     "ech0.eval.champion_key": champ.get("key") or "-"},
                    records(baseline, champion_results, scanner), assessments(champion_results, checks=checks),
                    scanner, model_id_of(ctx, "", {"model_name": name, "version": version}, champ.get("run_id")),
                    {"eval/pass_rate": champ["aggregates"]["pass_rate"],
                     "eval/mean_score": champ["aggregates"]["mean_score"]})
    return {**view, "reused": False}


def log_views(ctx: Context, parent_run_id: str, subject, baseline, results: list[dict], data: dict,
              champion_results: list[dict] | None, scanner, say=lambda msg: None, checks: bool = False) -> dict:
    """The candidate's evaluation run under ``parent_run_id`` (and the champion's, when compared and not logged
    before). Returns ``{"candidate": {run_id, model_id, records, logged, seconds}, "champion": {...} | None}``."""
    agg, verdict, champ = data["aggregates"], data["verdict"], data.get("champion") or {}
    common = {"ech0.kind": "eval-view", "ech0.eval.baseline": baseline.name,
              "ech0.eval.baseline_sha256": baseline.sha256}
    compared = champ.get("status") == "compared"
    out = {"candidate": None, "champion": None}
    if compared:
        out["champion"] = _champion_view(ctx, parent_run_id, baseline, champ, champion_results, common, scanner, checks)
    tags = {**common, "ech0.eval.view_of": "candidate", "ech0.eval.model": subject.ref,
            "ech0.eval.gate_passed": str(verdict["passed"]).lower(),
            "ech0.eval.reasons": ("; ".join(verdict["reasons"]) or "-")[:4900]}
    if out["champion"]:
        tags["ech0.eval.champion_view_run_id"] = out["champion"]["run_id"]
    out["candidate"] = _log_one(
        ctx, parent_run_id, f"genai-eval-{subject.label}", tags, records(baseline, results, scanner),
        assessments(results, {**champ, "results": champion_results} if compared else None, checks), scanner,
        model_id_of(ctx, subject.ref, subject.info, subject.run_id),
        {"eval/pass_rate": agg["pass_rate"], "eval/mean_score": agg["mean_score"],
         "eval/gate_passed": int(verdict["passed"]), "eval/safety_flags": agg["safety_flags"]})
    for role, v in out.items():
        if v and "logged" in v and v["logged"] != v["records"]:
            say(f"genai view ({role}): only {v['logged']} of {v['records']} records reached MLflow (see its warnings)")
    return out
