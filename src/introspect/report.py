"""Run report: figures/*.png, summary.md and one self-contained report.html (figures embedded) from a run directory.

Reads RUN/eval/results.json (written by `introspect evaluate`) and RUN/train/metrics.jsonl (training log).
"""

from __future__ import annotations

import base64
import html
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_path
from .paths import REPO_ROOT
from .metrics import DEFINITIONS, METRICS
from .report_figures import collapsed, figures
from .validity import COLLAPSE_TOLERANCE, MIN_AGREEMENT
from .tables import read_meta
from .validity import Verdict, headline as verdict_headline



def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _ci(m: dict[str, Any]) -> str:
    return f"{_fmt(m['value'])} [{_fmt(m['ci'][0])}, {_fmt(m['ci'][1])}]"


def load_results(run: Path) -> dict[str, Any]:
    path = run / "eval" / "results.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: run `introspect evaluate {run}` first")
    res = json.loads(path.read_text())
    if any("verdict" not in r for r in res.get("checkpoints", {}).values()):
        raise UserError(f"{path} was written by an older introspect without validity verdicts: run "
                        f"`introspect evaluate {run}` again (finished checkpoints are re-scored, nothing is retrained)")
    return res


def last_checkpoint(res: dict[str, Any]) -> dict[str, Any]:
    return max(res["checkpoints"].values(), key=lambda r: r["step"])


def headline(res: dict[str, Any]) -> str:
    """The run's closing line: the last checkpoint's validity verdict, then its Self − Orig."""
    last = last_checkpoint(res)
    return verdict_headline(last["step"], last, Verdict(**last["verdict"]))


@dataclass
class Table:
    """One table of the report, rendered both as Markdown (summary.md) and as HTML (report.html)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    note_href: str = ""  # the HTML note links here (summary.md keeps the plain text)

    def markdown(self) -> list[str]:
        out = [f"## {self.title}", ""] + ([self.note, ""] if self.note else [])
        out += ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        return out + ["| " + " | ".join(r) + " |" for r in self.rows] + [""]

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        text = html.escape(self.note)
        if self.note_href:
            text = f"<a href='{html.escape(self.note_href)}'>{text}</a>"
        note = f"<p class='note'>{text}</p>" if self.note else ""
        return f"<section><h2>{html.escape(self.title)}</h2>{note}<table><tr>{head}</tr>{body}</table></section>"


TERMS = {  # what the report's words mean, one line each (docs/metrics.md has the full text)
    "C, x, x∖C": "C is the input feature under test (a hint, a stated opinion, a context claim); x is a prompt with C, "
                 "x∖C the same prompt without it; the pair (x, x∖C) is one item",
    "M0, M_t": "M0 is the base model before training (step 0); M_t the model after t training steps",
    "E(M)": "explanation labels written from model M's behaviour on each pair: whether its answer changes when C is "
            "removed, and to what (E(M0): from M0 = the fixed training labels; E(M_t): from the current model)",
    "Self": "the model's explanations scored against labels written from its current behaviour, E(M_t)",
    "Orig": "the same explanations scored against the fixed training labels, E(M0)",
    "Self − Orig": "coupling when > 0: the explanations follow the current model, not only the labels they were trained on",
    "agreement": "share of eval items whose label is the same under E(M0) and E(M_t) (coupling precondition: ≥ "
                 f"{MIN_AGREEMENT:.2f})",
    "drift": "share of eval items where the model's behaviour (its answers on x and x∖C) differs from M0's",
    "label differs": "items whose label differs between E(M0) and E(M_t): the only items where Self and Orig can differ",
}


def tables(res: dict[str, Any]) -> list[Table]:
    rows = sorted(res["checkpoints"].values(), key=lambda r: r["step"])
    out = [Table("Validity verdict per checkpoint", ["step", "verdict"],
                 [[str(r["step"]), Verdict(**r["verdict"]).line()] for r in rows],
                 "docs/metrics.md#validity-of-a-self-vs-orig-number lists the conditions; one function decides them.",
                 note_href="#metrics-doc")]
    for m in METRICS:
        t = Table(m, ["step", "Self", "Orig", "Self − Orig", "Self − Orig on differing items (n)"], [],
                  f"{DEFINITIONS[m]}. Point estimates with paired-bootstrap 95% CIs over the {rows[0]['n']} eval items.")
        for r in rows:
            d = r.get("self_minus_orig_on_differing")
            t.rows.append([str(r["step"]), _ci(r["self"][m]), _ci(r["orig"][m]), _ci(r["self_minus_orig"][m]),
                           f"{_ci(d[m])} ({r['n_label_differs']})" if d else "n/a (0)"])
        out.append(t)
    out.append(Table("Drift and the coupling condition",
                     ["step", "drift", "agreement E(M0)↔E(M_t)", "items whose label differs", "behaviour changed rate"],
                     [[str(r["step"]), _fmt(r["drift"]), _fmt(r["agreement"]), str(r["n_label_differs"]),
                       _fmt(r["behavior_changed_rate"])] for r in rows]))
    if res.get("baselines"):
        out.append(Table("Baselines (scored against E(M0) = Self of M0, and against Self of the last checkpoint)",
                         ["baseline", *(f"{m} vs E(M0)" for m in METRICS), "exact_match vs E(M_last)"],
                         [[name, *(_ci(b["orig"][m]) for m in METRICS), _ci(b["self_last"]["exact_match"])]
                          for name, b in res["baselines"].items()]))
    strata = Table("Strata (exact match of the model's explanations, by the label's class)",
                   ["step", "Self: changed items (n)", "Self: unchanged items (n)", "Orig: changed (n)", "Orig: unchanged (n)"], [])
    for r in rows:
        s = r.get("strata", {})
        cell = lambda k: f"{_fmt(s[k]['exact_match'])} ({s[k]['n']})" if k in s else "n/a"  # noqa: E731
        strata.rows.append([str(r["step"]), cell("self_changed"), cell("self_unchanged"), cell("orig_changed"), cell("orig_unchanged")])
    return out + [strata]


def summary_markdown(res: dict[str, Any]) -> str:
    rows = sorted(res["checkpoints"].values(), key=lambda r: r["step"])
    warnings = collapse_warnings(res)
    lines = [f"# Run summary: {res.get('name', '')}", "", "**Verdict (last checkpoint)**: " + headline(res).replace("\n", "  \n"), "",
             "**Warnings**: " + ("; ".join(warnings) if warnings else "none"), "",
             f"Eval set: {rows[0]['n']} pairs ({res.get('eval_split', '?')}), never used in training. "
             "Values are point estimates with paired-bootstrap 95% CIs. Terms:", ""]
    lines += [f"- **{k}**: {v}" for k, v in TERMS.items()] + [""]
    for t in tables(res):
        lines += t.markdown()
    return "\n".join(lines)


def collapse_warnings(res: dict[str, Any]) -> list[str]:
    out = []
    for r in sorted(res["checkpoints"].values(), key=lambda r: r["step"]):
        rate = r["self"]["pred_changed_rate"]["value"]
        if rate != rate:  # NaN: no explanation parses
            if r["step"] != 0:  # M0 before training never writes the format: expected, not a warning
                out.append(f"no explanation parses at step {r['step']}: no predicted verdicts (counted as collapse)")
            continue
        if collapsed(r):
            out.append(f"class collapse at step {r['step']}: the model predicts 'changed' for {rate:.0%} of parseable "
                       f"items, more than {COLLAPSE_TOLERANCE:.0%} from the labels' {r['label_changed_rate']:.0%}; its "
                       "Has-Changed F1 is near chance")
    return out


def provenance_rows(run: Path) -> list[list[str]]:
    """What the run was made from: code commit, model and its weights hash, data files and their hashes."""
    rows = [["introspect code (when this report was written)", _commit()]]
    for rel in ("train/behavior.parquet", "eval/m0_behavior.parquet"):
        if (run / rel).is_file():
            meta = read_meta(run / rel)
            rows.append([f"{rel}: model", f"{meta.get('model_id')} (weights hash {meta.get('weights_hash')})"])
            rows.append([f"{rel}: pairs", f"{meta.get('n')} {meta.get('task')} pairs, split {meta.get('split')}, seed "
                         f"{meta.get('seed')}, {meta.get('precision')} (pairs hash {meta.get('pairs_hash')})"])
            rows += [[f"{rel}: data file", f"{path} ({h})"] for path, h in sorted(meta.get("sources", {}).items())]
    return rows


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown (git not found)"


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 12px;color:#222}img{max-width:100%}"
       "table{border-collapse:collapse;margin:6px 0 18px;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
       "text-align:left}th{background:#f3f3f3}.note{font-size:13px;color:#555}.box{padding:10px;border:2px solid;"
       "margin:10px 0}.valid{border-color:#2a7;background:#efe}.invalid{border-color:#c33;background:#fee}"
       ".warn{border-color:#c90;background:#ffd}dt{font-weight:bold;float:left;width:9em}dd{margin-left:10em}"
       "pre{white-space:pre-wrap;font-size:12px;background:#f7f7f7;padding:8px}")


def _figure_attrs(check: dict[str, Any] | None) -> str:
    """The figure's layout check (report_figures.layout_problems) as attributes the browser check reads."""
    if check is None:
        return ""
    return (f'data-legend="{int(check["legend"])}" data-overlaps="{html.escape("; ".join(check["overlaps"]))}" ')


def write_report(run: Path) -> Path:
    run = Path(run)
    res = load_results(run)
    figs = figures(run, res)
    with atomic_path(run / "summary.md") as tmp:
        tmp.write_text(summary_markdown(res))
    last = last_checkpoint(res)
    ok = last["verdict"]["valid"]
    box = (f"<div class='box verdict {'valid' if ok else 'invalid'}'><b>{'Valid' if ok else 'Not a valid'} test of "
           f"coupling (step {last['step']})</b><br>{html.escape(headline(res)).replace(chr(10), '<br>')}</div>")
    warnings = collapse_warnings(res)
    warn = ("<div class='box warn'><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
            + "</ul></div>") if warnings else ""
    terms = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in TERMS.items())
    terms += "".join(f"<dt>{m}</dt><dd>{html.escape(DEFINITIONS[m])}</dd>" for m in METRICS)
    metrics_doc = REPO_ROOT / "docs" / "metrics.md"  # embedded: the page stays readable wherever it is opened
    doc = (f"<section id='metrics-doc'><h2>docs/metrics.md (embedded)</h2><details><summary>the full definitions, "
           f"parsing and the bootstrap</summary><pre>{html.escape(metrics_doc.read_text())}</pre></details></section>"
           if metrics_doc.is_file() else "")
    how = (f"<section><h2>How to read this page</h2><dl>{terms}</dl><p class='note'>Full definitions, parsing and the "
           + ("bootstrap: <a href='#metrics-doc'>docs/metrics.md, embedded at the end of this page</a>.</p></section>"
              if doc else "bootstrap: docs/metrics.md in the introspect repository.</p></section>"))
    checks_path = run / "figures" / "figures.json"
    checks = json.loads(checks_path.read_text()) if checks_path.is_file() else {}
    imgs = "".join(f'<section><h2>{html.escape(k.replace("_", " "))}</h2><img alt="{k}" '
                   + _figure_attrs(checks.get(p.name)) + f'src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"></section>' for k, p in figs.items())
    config = run / "run_config.json"
    prov = Table("Provenance", ["what", "value"], provenance_rows(run))
    details = ("<section><h2>Config and provenance</h2><details><summary>run_config.json, model and data hashes, commit"
               "</summary>" + (f"<pre>{html.escape(config.read_text())}</pre>" if config.is_file() else "")
               + prov.html().replace("<h2>Provenance</h2>", "") + "</details></section>" + doc)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>introspect report: {html.escape(run.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>introspect report: {html.escape(str(run))}</h1>{box}{warn}{how}{imgs}"
            + "".join(t.html() for t in tables(res)) + details + "</body></html>")
    with atomic_path(run / "report.html") as tmp:
        tmp.write_text(page)
    return run / "report.html"
