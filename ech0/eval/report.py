"""Writing the regression report: ``regression_report.json`` (everything) and ``.md`` (for people).

    from ech0.eval.report import write, to_markdown
    json_path, md_path = write(data, run_dir / "reports")

Called by :mod:`ech0.eval.evaluate`; not run directly. Both files are written atomically. Outputs in
``data`` are already redacted (secrets, PII and blocklisted phrases replaced by placeholders).
"""

from __future__ import annotations

from pathlib import Path


def _cell(s) -> str:
    text = "" if s is None else str(s)
    return text.replace("|", "\\|").replace("\n", "\\n")[:160]


def to_markdown(d: dict) -> str:
    v, a, m, b = d["verdict"], d["aggregates"], d["model"], d["baseline"]
    loss = "n/a" if a["reference_loss"] is None else f"{a['reference_loss']:.3f}"
    lines = [f"# Regression report: {'PASSED' if v['passed'] else 'FAILED'}", "",
             f"- model: `{m['ref']}` ({m['kind']}{', run ' + m['run_id'] if m.get('run_id') else ''})",
             f"- baseline: `{b['path']}` ({b['cases']} cases, sha256 `{b['sha256'][:16]}`)",
             f"- pass rate **{a['pass_rate']:.3f}** (gate ≥ {d['gate']['min_pass_rate']}), "
             f"mean score **{a['mean_score']:.3f}** (gate ≥ {d['gate']['min_mean_score']}), "
             f"reference loss {loss}, safety flags **{a['safety_flags']}**",
             f"- created {d['created_at']}; generation {d['timing']['generate_seconds']}s "
             f"({d['timing']['cases_per_sec']} cases/s)", ""]
    if v["reasons"]:
        lines += ["## Why it failed", ""] + [f"- {r}" for r in v["reasons"]] + [""]
    c = d.get("champion") or {}
    lines += ["## Champion", ""]
    if c.get("status") == "compared":
        ca = c["aggregates"]
        lines += [f"{c['model_name']} v{c['version']} (@{c['alias']}){' (cached)' if c.get('cached') else ''}: "
                  f"pass rate {ca['pass_rate']:.3f}, mean score {ca['mean_score']:.3f}; tolerances "
                  f"{c['max_pass_rate_drop']} / {c['max_mean_score_drop']}."]
        regressed = [r["id"] for r in d["cases"] if not r["passed"] and c["cases"].get(r["id"], {}).get("passed")]
        if regressed:
            lines += ["", f"Cases the champion passes and this model fails: {', '.join(regressed)}"]
    else:
        lines += [{"none": "No model holds the alias: nothing to compare with.",
                   "disabled": "Comparison disabled (gate.champion.enabled=false).",
                   "same_model": "The candidate is the champion itself.",
                   "error": f"Comparison failed: {c.get('error')}"}.get(c.get("status"), str(c.get("status")))]
    lines += _base_section(d)
    lines += ["", "## By tag", "", "| tag | cases | passed | pass rate | mean score |", "|---|---|---|---|---|"]
    for t, s in a["by_tag"].items():
        if s["pass_rate"] is None:  # weight-0 cases only: reported, not gating
            u = s["ungated"]
            lines.append(f"| {t} (weight 0, not gating) | {u['cases']} | {u['passed']} | – | – |")
        else:
            lines.append(f"| {t} | {s['cases']} | {s['passed']} | {s['pass_rate']:.3f} | {s['mean_score']:.3f} |")
    lines += ["", "## Cases", "", "| id | ok | score | loss | output | failed checks |", "|---|---|---|---|---|---|"]
    for r in sorted(d["cases"], key=lambda r: (r["passed"], r["id"])):
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in r["checks"] if not c["passed"])
        if r["safety_flags"]:
            failed = f"SAFETY {[f['kind'] + ':' + f['rule'] for f in r['safety_flags']]}; " + failed
        lines.append(f"| {_cell(r['id'])} | {'✅' if r['passed'] else '❌'} | {r['score']:.2f} | "
                     f"{'' if r['loss'] is None else format(r['loss'], '.2f')} | {_cell(r['output'])} | {_cell(failed)} |")
    return "\n".join(lines) + "\n"


def _base_section(d: dict) -> list[str]:
    """The untrained base beside the candidate (gate.compare_base): margins, then both answers per case."""
    b = d.get("base_model")
    if not b:
        return []
    lines = ["", "## Against the untrained base", ""]
    if b["status"] != "compared":
        return lines + [f"Not compared: {b['error']}"]
    lines += [f"Base: {b['model']}. It {'PASSES' if b['verdict']['passed'] else 'fails'} this gate"
              f"{': these cases do not measure what the fine-tune taught' if b['verdict']['passed'] else ''}.", "",
              "| measure | gate | candidate | base | candidate margin | base margin |", "|---|---|---|---|---|---|"]
    for key, m in b["margins"].items():
        lines.append(f"| {key.replace('_', ' ')} | ≥ {m['threshold']} | {m['candidate']:.3f} | {m['base']:.3f} | "
                     f"{m['candidate_margin']:+.3f} | {m['base_margin']:+.3f} |")
    lines += ["", "| id | base | base answer | candidate | candidate answer |", "|---|---|---|---|---|"]
    for r in d["cases"]:
        o = b["cases"].get(r["id"], {})
        lines.append(f"| {_cell(r['id'])} | {'✅' if o.get('passed') else '❌'} | {_cell(o.get('output'))} | "
                     f"{'✅' if r['passed'] else '❌'} | {_cell(r['output'])} |")
    return lines


def write(data: dict, out_dir: str | Path, json_name: str = "regression_report.json",
          md_name: str = "regression_report.md") -> tuple[Path, Path]:
    from ech0.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    json_path, md_path = out_dir / json_name, out_dir / md_name
    atomic_write_json(json_path, data)
    atomic_write_text(md_path, to_markdown(data))
    return json_path, md_path
