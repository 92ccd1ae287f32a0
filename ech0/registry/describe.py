"""What the MLflow UI shows a person on the registry pages: Markdown descriptions and a history table.

    from ech0.registry import describe
    text = describe.version_description(c, run, tags, headline)   # store.register: the version's page
    text = describe.model_description(old_text, name, events, current)   # history: the registered model's page
    notes = describe.log_event(ctx, c, name, event)   # the event as a row of registry/history.json in its runs

The question a person brings to the UI is "which data, config and base model made the model in
production, and what did the gate say about it". Tags answer it, but the UI shows them as a narrow
table of truncated values (``ech0.datasets`` is a JSON blob). So each version's description says it
in a few lines (base model + hash, training data + manifest digest + rows, the preset's key values,
the step, the gate's numbers against its thresholds) with links straight to the run, its config,
the data manifest and the gate report; and the registered model's description leads with which
version each alias is on and the promotion history as a table. The UI renders both as Markdown;
links are ``#/...`` routes of MLflow's own UI, so they work on any host that serves it.

The history events (tags ``ech0.history.NNNNNN``, ech0/registry/history.py) stay the source of truth:
the page is rewritten from all of them on every move (``ech0 registry history --repair`` rewrites it
too), and each event is also appended as one row to the table artifact ``registry/history.json``
(``MlflowClient.log_table``: the Artifacts tab shows it as a table) of the runs it moved to and from.
Text a person writes above the heading ``HISTORY_HEADING`` on the registered model's page is kept.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

DESCRIPTION_MAX = 5000  # MLflow's SQL stores keep at most 5000 characters of a description
HISTORY_ARTIFACT = "registry/history.json"
HISTORY_HEADING = "**Aliases and promotion history (ech0)**"  # from here on the page's text is ech0's
# The config values a reader of a fine-tune asks about first, as (param key, label); others are in the run.
CONFIG_KEYS = (("trainer.learning_rate", "lr"), ("trainer.max_steps", "steps"), ("trainer.batch_size", "batch"),
               ("trainer.grad_accum", "grad accum"), ("trainer.max_length", "max length"), ("peft.r", "LoRA r"),
               ("peft.lora_alpha", "alpha"), ("data.train_on", "train on"), ("trainer.precision", "precision"),
               ("seed", "seed"))
MANIFEST_ORDER = ("processed", "clean", "raw")  # the last data stage's manifest pins the whole chain
GENAI_VIEW_TAG = "ech0.eval.genai_view"  # the run holding the gate's cases in MLflow's evaluation view


def run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    return f"{run_link(experiment_id, run_id)}/artifactPath/{quote(path)}"


def version_link(name: str, version: str) -> str:
    return f"#/models/{quote(name, safe='')}/versions/{version}"


def cell(value: Any) -> str:
    """One Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def short(digest: str | None, n: int = 12) -> str:
    return f"`{digest[:n]}`" if digest else "?"


def fit(text: str, limit: int = DESCRIPTION_MAX) -> str:
    if len(text) <= limit:
        return text
    tail = "\n\n... (cut to MLflow's description limit; the version's ech0.* tags have everything)"
    return text[:limit - len(tail)].rstrip() + tail


# -- a version's page ------------------------------------------------------------------------------

def _artifacts(c, run_id: str, folder: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        return [a.path for a in c.list_artifacts(run_id, folder) if not a.is_dir]
    except (MlflowException, OSError):
        return []


def _report(c, run, tags: dict, listed: list[str]) -> dict | None:
    """The gate report the version was judged by: the local file, else the copy in the run's artifacts."""
    from mlflow.exceptions import MlflowException

    for p in (tags.get("ech0.eval_report"), run.data.tags.get("ech0.eval.report")):
        if p and Path(p).is_file():
            try:
                return json.loads(Path(p).read_text())
            except (ValueError, OSError):
                return None
    remote = next((a for a in listed if a.endswith("_report.json")), None)
    if remote is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(c.download_artifacts(run.info.run_id, remote, tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            return None


def _data_rows(c, run, tags: dict) -> list[tuple[str, str]]:
    """(context, text) per dataset the run logged (and per file given with ``--datasets``)."""
    exp, run_id = run.info.experiment_id, run.info.run_id
    digests = json.loads(tags.get("ech0.datasets") or "{}")
    lines, seen = [], set()
    for inp in getattr(run.inputs, "dataset_inputs", None) or []:
        itags = {t.key: t.value for t in inp.tags}
        context = itags.get("mlflow.data.context", "")
        name = inp.dataset.name
        seen.add(name)
        try:
            rows = json.loads(inp.dataset.profile or "{}").get("num_rows")
        except ValueError:
            rows = None
        digest = digests.get(name) or itags.get("sha256") or inp.dataset.digest
        listed = _artifacts(c, run_id, f"data/{context}") if context else []
        manifest = next((a for stage in MANIFEST_ORDER for a in listed if a.endswith(f".{stage}.manifest.json")), None)
        what = "manifest" if manifest else "sha256"
        text = (f"`{cell(name)}`: {rows if rows is not None else '?'} rows, "
                f"{what} {short(digest)}")
        if manifest:
            text += f" · [manifest]({artifact_link(exp, run_id, manifest)})"
        lines.append((context, text))
    for name, digest in digests.items():  # --datasets files given at registration
        if name not in seen:
            lines.append(("training", f"`{cell(name)}`: sha256 {short(digest)}"))
    return sorted(lines, key=lambda x: x[0] == "eval")  # training data first


def _config_text(c, run, tags: dict) -> str:
    p = run.data.params
    preset = tags.get("ech0.preset") or p.get("preset") or "?"
    adapter = p.get("peft._target_", "")
    values = [f"{label} {cell(p[k])}" for k, label in CONFIG_KEYS
              if k in p and p[k] not in ("None", "") and not (k.startswith("peft.") and "lora" not in adapter)
              and not (k == "trainer.grad_accum" and p[k] == "1")]
    text = f"preset `{cell(preset)}`" + (": " + ", ".join(values) if values else "")
    exp, run_id = run.info.experiment_id, run.info.run_id
    cfg = next((a for a in _artifacts(c, run_id, "config") if a.endswith("config.yaml")), None)
    if cfg:
        text += f" · [{Path(cfg).name}]({artifact_link(exp, run_id, cfg)})"
    if tags.get("ech0.config_sha256"):
        text += f" (sha256 {short(tags['ech0.config_sha256'])})"
    return text


def _gate_text(tags: dict, report: dict | None, report_link: str | None, view_link: str | None = None) -> str:
    verdict = tags.get("ech0.gate") or "none"
    if verdict == "none":
        return "no evaluation recorded: `ech0 eval` the run, then register again"
    agg = (report or {}).get("aggregates") or {}
    gate = (report or {}).get("gate") or {}
    parts = [f"**{verdict}**"]
    if agg.get("cases"):
        parts.append(f"{agg.get('passed', '?')}/{agg['cases']} cases")
    rate = agg.get("pass_rate", tags.get("ech0.pass_rate"))
    if rate is not None:
        parts.append(f"pass rate {float(rate):.3f}" + (f" (gate ≥ {gate['min_pass_rate']})"
                                                       if gate.get("min_pass_rate") is not None else ""))
    score = agg.get("mean_score", tags.get("ech0.score"))
    if score is not None:
        parts.append(f"mean score {float(score):.3f}" + (f" (gate ≥ {gate['min_mean_score']})"
                                                         if gate.get("min_mean_score") is not None else ""))
    flags = agg.get("safety_flags", tags.get("ech0.safety_flags"))
    if flags is not None:
        parts.append(f"safety flags {int(float(flags))}")
    text = ", ".join(parts)
    reasons = ((report or {}).get("verdict") or {}).get("reasons") or []
    if reasons:
        text += "; " + "; ".join(cell(r) for r in reasons[:3])
    champion = (report or {}).get("champion") or {}
    if champion.get("status") not in (None, "none"):
        text += f"; champion check {cell(champion['status'])}"
    if report_link:
        text += f" · [report]({report_link})"
    elif tags.get("ech0.gate_source"):
        text += f" ({cell(tags['ech0.gate_source'])})"
    if view_link:
        text += f" · [each case]({view_link})"
    return text


def version_description(c, run, tags: dict, headline: str) -> str:
    """Markdown for a new version's page: ``headline``, then one table row per question a reviewer asks."""
    exp, run_id = run.info.experiment_id, run.info.run_id
    listed = _artifacts(c, run_id, "eval")
    md = next((a for a in listed if a.endswith("_report.md")), None)
    report = _report(c, run, tags, listed) if tags.get("ech0.gate", "none") != "none" else None
    base = tags.get("ech0.base_model") or "?"
    rows = [("Base model", f"`{cell(base)}`" + (f" (sha256 {short(tags['ech0.base_model_hash'])})"
                                                if tags.get("ech0.base_model_hash") else ""))]
    shown = set()
    for context, line in _data_rows(c, run, tags):
        label = "Evaluation data" if context == "eval" else "Training data"
        rows.append(("" if label in shown else label, line))
        shown.add(label)
    rows.append(("Config", _config_text(c, run, tags)))
    if tags.get("ech0.logged_model") or tags.get("ech0.step"):
        model = f"`{cell(tags.get('ech0.logged_model', 'model'))}` at step {cell(tags.get('ech0.step', '?'))}"
        if tags.get("ech0.best_metric"):
            model += f" (the best {cell(tags['ech0.best_metric'])}: {cell(tags.get('ech0.best_value', '?'))})"
        rows.append(("Model", model))
    view = run.data.tags.get(GENAI_VIEW_TAG)
    rows.append(("Gate", _gate_text(tags, report, artifact_link(exp, run_id, md) if md else None,
                                    f"{run_link(exp, view)}/evaluations" if view else None)))
    commit = tags.get("ech0.git_commit")
    rows.append(("Run", f"[{cell(run.info.run_name or run_id)}]({run_link(exp, run_id)})"
                 + (f" · code {short(commit, 8)}" if commit else "")
                 + f" · registered {cell(tags.get('ech0.registered_at', ''))}"
                 + f" by {cell(tags.get('ech0.registered_by', ''))}"))
    table = "\n".join(["| | |", "|---|---|"] + [f"| **{k}** | {v} |" if k else f"| | {v} |" for k, v in rows])
    return fit(f"{headline.strip()}\n\n{table}\n")


# -- the registered model's page -------------------------------------------------------------------

def history_row(name: str, e) -> dict:
    """One event as a table row (the page's table and ``registry/history.json``)."""
    return {"seq": e.seq, "at": e.at, "stage": e.stage, "action": e.action + (" (forced)" if e.forced else ""),
            "from": f"v{e.from_version}" if e.from_version else "-", "to": f"v{e.to_version}", "reason": e.reason,
            "who": e.who, "model": name, "run_id": e.run_id}


def model_description(old: str | None, name: str, events: list, current: dict[str, str | None],
                      limit: int = DESCRIPTION_MAX) -> str:
    """The registered model's page: the person's text kept, then each alias's version and the history
    (newest first; the oldest rows left out when the page would pass MLflow's limit)."""
    keep = (old or "").split(HISTORY_HEADING, 1)[0].rstrip()
    now = []
    for stage, v in current.items():
        last = next((e for e in reversed(events) if e.stage == stage), None)
        if v is None:
            now.append(f"- **{stage}**: no version yet")
        else:
            since = f", since {last.at.replace('T', ' ').replace('+00:00', ' UTC')} ({last.action} #{last.seq})" \
                if last else ""
            now.append(f"- **{stage}** → [version {v}]({version_link(name, v)}){since}")
    head = "\n".join([HISTORY_HEADING, "", *now, "", "History, newest first (UTC):", ""])
    lines = []
    for e in reversed(events):  # a list, not a table: the UI draws Markdown tables without cell padding
        r = history_row(name, e)
        to = f"[{r['to']}]({version_link(name, e.to_version)})"
        lines.append(f"- #{r['seq']} · {cell(r['at'].replace('T', ' ').replace('+00:00', ''))} · {r['stage']} "
                     f"**{cell(r['action'])}** {r['from']} → {to} · {cell(r['reason'])[:160]} · {cell(r['who'])}")
    text = (keep + "\n\n" if keep else "") + head
    for i, line in enumerate(lines):
        more = f"\n\n{len(lines) - i} older events: `ech0 registry history --name {name}`"
        if len(text) + 1 + len(line) + len(more) > limit:
            return text + more
        text += "\n" + line
    return text + ("\n\n(no promotions yet)" if not lines else "")


def log_event(ctx, c, name: str, e) -> list[str]:
    """Append ``e`` as a row of ``registry/history.json`` in the runs of the versions it moved to and from;
    a note (not an error: the move is done) for a run this user may not write to."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from ech0 import tracking

    runs = [e.run_id]
    if e.from_version and e.from_version != e.to_version:
        try:
            runs.append(c.get_model_version(name, e.from_version).run_id)
        except MlflowException:
            pass
    notes = []
    for run_id in dict.fromkeys(r for r in runs if r):
        try:
            tracking.attach(ctx, run_id).log_table(pd.DataFrame([history_row(name, e)]), HISTORY_ARTIFACT)
        except (MlflowException, OSError) as err:  # OSError: requests' HTTPError from the artifact upload
            denied = getattr(err, "error_code", "") == "PERMISSION_DENIED" or \
                getattr(getattr(err, "response", None), "status_code", None) == 403
            why = "no EDIT on its experiment" if denied else \
                (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            notes.append(f"history row not added to run {run_id}'s {HISTORY_ARTIFACT} ({why})")
    return notes
