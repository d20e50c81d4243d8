"""Run report: figures/*.png, summary.md and one self-contained report.html (figures embedded) from a run directory.

Reads RUN/eval/results.json (written by `introspect evaluate`) and RUN/train/metrics.jsonl (training log).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .config import UserError, atomic_path, read_jsonl  # noqa: E402
from .metrics import METRICS  # noqa: E402
from .validity import Verdict, headline as verdict_headline  # noqa: E402

COLLAPSE = (0.05, 0.95)


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


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figures(run: Path, res: dict[str, Any], metric: str = "exact_match") -> dict[str, Path]:
    out_dir = run / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(res["checkpoints"].values(), key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    paths: dict[str, Path] = {}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, m in zip(axes, (metric, "has_changed_f1")):
        for key, color, label in (("self", "tab:blue", "Self: vs current behaviour E(M_t)"),
                                  ("orig", "tab:orange", "Orig: vs the fixed training labels")):
            vals = [r[key][m]["value"] for r in rows]
            lo = [r[key][m]["ci"][0] for r in rows]
            hi = [r[key][m]["ci"][1] for r in rows]
            ax.plot(steps, vals, "o-", color=color, label=label)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2)
        for name, b in res.get("baselines", {}).items():
            if name in ("majority", "nearest", "few_shot"):
                ax.axhline(b["orig"][m]["value"], ls=":", lw=1, color="gray")
                ax.annotate(f"{name} (vs E(M0))", (steps[-1], b["orig"][m]["value"]), fontsize=7, color="gray",
                            ha="right", va="bottom")
        majority = res.get("baselines", {}).get("majority")
        if majority:  # the same constant answer scored against the last checkpoint's own labels
            ax.plot([steps[-1]], [majority["self_last"][m]["value"]], "*", ms=11, color="black",
                    label="majority label vs E(M_last): a constant answer")
        collapsed = [r for r in rows if _collapsed(r)]
        if collapsed:
            ax.plot([r["step"] for r in collapsed], [r["self"][m]["value"] for r in collapsed], "x", ms=12, color="red",
                    label="class collapse (predicted-changed rate < 5% or > 95%)")
        ax.set_xlabel("training step (0 = M0)")
        ax.set_ylabel(m.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{m.replace('_', ' ')}, 95% bootstrap CI (n={rows[0]['n']})")
        ax.legend(fontsize=8, loc="lower left")
    paths["self_vs_orig"] = _save(fig, out_dir / "self_vs_orig.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["drift"] for r in rows], "o-", label="behaviour drift from M0 (eval pairs)")
    ax.plot(steps, [r["agreement"] for r in rows], "s-", label="agreement of E(M0) with E(M_t)")
    ax.axhline(0.7, ls="--", color="gray", lw=1)
    ax.annotate("coupling condition ≈ 0.7", (steps[0], 0.71), fontsize=7, color="gray")
    ax.set_xlabel("training step (0 = M0)")
    ax.set_ylabel("fraction of eval pairs")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("drift and label–behaviour agreement")
    paths["drift"] = _save(fig, out_dir / "drift_agreement.png")

    log = run / "train" / "metrics.jsonl"
    if log.is_file():
        rows_t = read_jsonl(log)
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in ("explanation", "behavior_kl", "sycophancy_reduction", "refusal_tuning"):
            pts = [(r["step"], r[k]) for r in rows_t if k in r]
            if pts:
                ax.plot(*zip(*pts), label=k, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (log scale)")
        ax.legend(fontsize=8)
        ax.set_title("training losses")
        paths["losses"] = _save(fig, out_dir / "losses.png")
    return paths


def last_checkpoint(res: dict[str, Any]) -> dict[str, Any]:
    return max(res["checkpoints"].values(), key=lambda r: r["step"])


def headline(res: dict[str, Any]) -> str:
    """The run's closing line: the last checkpoint's validity verdict, then its Self − Orig."""
    last = last_checkpoint(res)
    return verdict_headline(last["step"], last, Verdict(**last["verdict"]))


def summary_markdown(res: dict[str, Any]) -> str:
    rows = sorted(res["checkpoints"].values(), key=lambda r: r["step"])
    lines = [f"# Run summary: {res.get('name', '')}", "", "**Verdict (last checkpoint)**: " + headline(res).replace("\n", "  \n"), "",
             "| step | verdict |", "|---|---|"] + [f"| {r['step']} | {Verdict(**r['verdict']).line()} |" for r in rows] + ["",
             f"Eval set: {rows[0]['n']} pairs ({res.get('eval_split', '?')}), never used in training. "
             "Values are point estimates with paired-bootstrap 95% CIs.", ""]
    for m in METRICS:
        lines += [f"## {m}", "", "| step | Self | Orig | Self − Orig | Self − Orig on differing items (n) |",
                  "|---|---|---|---|---|"]
        for r in rows:
            d = r.get("self_minus_orig_on_differing")
            lines.append(f"| {r['step']} | {_ci(r['self'][m])} | {_ci(r['orig'][m])} | {_ci(r['self_minus_orig'][m])} | "
                         f"{_ci(d[m]) + ' (' + str(r['n_label_differs']) + ')' if d else 'n/a (0)'} |")
        lines.append("")
    lines += ["## Drift and coupling condition", "", "| step | drift | agreement E(M0)↔E(M_t) | items whose label differs | behaviour changed rate |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {_fmt(r['drift'])} | {_fmt(r['agreement'])} | {r['n_label_differs']} | {_fmt(r['behavior_changed_rate'])} |")
    lines.append("")
    if res.get("baselines"):
        lines += ["## Baselines (scored against E(M0) = Self of M0, and against Self of the last checkpoint)", "",
                  "| baseline | " + " | ".join(f"{m} vs E(M0)" for m in METRICS) + " | exact_match vs E(M_last) |",
                  "|---|" + "---|" * (len(METRICS) + 1)]
        for name, b in res["baselines"].items():
            lines.append(f"| {name} | " + " | ".join(_ci(b["orig"][m]) for m in METRICS) + f" | {_ci(b['self_last']['exact_match'])} |")
        lines.append("")
    lines += ["## Strata (exact match of the model's explanations, by the label's class)", "",
              "| step | Self: changed items (n) | Self: unchanged items (n) | Orig: changed (n) | Orig: unchanged (n) |", "|---|---|---|---|---|"]
    for r in rows:
        s = r.get("strata", {})
        cell = lambda k: f"{_fmt(s[k]['exact_match'])} ({s[k]['n']})" if k in s else "n/a"  # noqa: E731
        lines.append(f"| {r['step']} | {cell('self_changed')} | {cell('self_unchanged')} | {cell('orig_changed')} | {cell('orig_unchanged')} |")
    lines.append("")
    warnings = collapse_warnings(res)
    lines += ["## Warnings", ""] + ([f"- {w}" for w in warnings] or ["- none"]) + [""]
    return "\n".join(lines)


def _collapsed(r: dict[str, Any]) -> bool:
    rate = r["self"]["pred_changed_rate"]["value"]
    return not math.isnan(rate) and not COLLAPSE[0] <= rate <= COLLAPSE[1]


def collapse_warnings(res: dict[str, Any]) -> list[str]:
    out = []
    for r in sorted(res["checkpoints"].values(), key=lambda r: r["step"]):
        rate = r["self"]["pred_changed_rate"]["value"]
        if _collapsed(r):
            out.append(f"class collapse at step {r['step']}: the model predicts 'changed' for {rate:.0%} of parseable "
                       f"items (outside {COLLAPSE[0]:.0%}–{COLLAPSE[1]:.0%}); its Has-Changed F1 is near chance")
    return out


def write_report(run: Path) -> Path:
    run = Path(run)
    res = load_results(run)
    figs = figures(run, res)
    md = summary_markdown(res)
    with atomic_path(run / "summary.md") as tmp:
        tmp.write_text(md)
    imgs = "".join(f'<h2>{html.escape(k)}</h2><img alt="{k}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}">' for k, p in figs.items())
    last = last_checkpoint(res)
    ok = last["verdict"]["valid"]
    box = (f"<div class='verdict {'valid' if ok else 'invalid'}'><b>{'Valid' if ok else 'Not a valid'} test of coupling "
           f"(step {last['step']})</b><br>{html.escape(headline(res)).replace(chr(10), '<br>')}</div>")
    body = f"<pre>{html.escape(md)}</pre>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>introspect report</title>"
            f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}img{{max-width:100%}}"
            f"pre{{white-space:pre-wrap;font-size:13px}}.verdict{{padding:10px;border:2px solid;margin:10px 0}}"
            f".valid{{border-color:#2a7;background:#efe}}.invalid{{border-color:#c33;background:#fee}}</style></head><body>"
            f"<h1>introspect report: {html.escape(str(run))}</h1>{box}{imgs}{body}</body></html>")
    with atomic_path(run / "report.html") as tmp:
        tmp.write_text(page)
    return run / "report.html"
