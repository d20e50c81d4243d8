"""The run report's figures (RUN/figures/*.png): Self vs Orig per checkpoint with bootstrap bands, drift and
agreement against the validity.MIN_AGREEMENT line, training losses and the coupling monitor's checks, monitor decisions marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import json  # noqa: E402

from .files import atomic_path, read_jsonl  # noqa: E402
from . import validity  # noqa: E402
from .validity import COLLAPSE_TOLERANCE, MIN_AGREEMENT  # noqa: E402
from .train.config import LossWeights  # noqa: E402


def collapsed(r: dict[str, Any]) -> bool:
    """Whether a checkpoint's explanations collapsed (the validity verdict's rule, `validity.collapsed`)."""
    return validity.collapsed(r["self"]["pred_changed_rate"]["value"], r["label_changed_rate"])


def layout_problems(fig: Any) -> dict[str, Any]:
    """What the report's browser check reads: whether the figure has a legend, and which of its labels (annotations,
    legend entries, titles, axis labels) overlap each other on the drawn image."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    texts = [t for ax in fig.axes for t in (*ax.texts, ax.title, ax.xaxis.label, ax.yaxis.label)]
    texts += [t for lg in legends for t in lg.get_texts()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    overlaps = [f"{a!r} / {b!r}" for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
    return {"legend": bool(legends), "overlaps": overlaps}


def _save(fig: Any, path: Path, checks: dict[str, Any], tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    checks[path.name] = layout_problems(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends sit outside the axes: keep them in the image
    plt.close(fig)
    return path


def figures(run: Path, res: dict[str, Any], metric: str = "exact_match") -> dict[str, Path]:
    """Every figure of a run's report -> RUN/figures/*.png, with their layout checks in figures/figures.json."""
    out_dir = run / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    layout: dict[str, Any] = {}  # figure file -> layout_problems, written to figures/figures.json
    rows = sorted(res["checkpoints"].values(), key=lambda r: r["step"])
    paths = {"self_vs_orig": self_vs_orig_figure(rows, res, metric, out_dir, layout),
             "drift": drift_figure(rows, out_dir, layout)}
    log = run / "train" / "metrics.jsonl"
    if log.is_file():
        rows_t = read_jsonl(log)
        paths["losses"] = losses_figure(rows_t, out_dir, layout)
        checks = [r for r in rows_t if "monitor" in r]
        if checks:
            paths["monitor"] = monitor_figure(rows_t, checks, out_dir, layout)
    with atomic_path(out_dir / "figures.json") as tmp:
        tmp.write_text(json.dumps(layout, indent=2))
    return paths


def self_vs_orig_figure(rows: list[dict[str, Any]], res: dict[str, Any], metric: str, out_dir: Path,
                        layout: dict[str, Any]) -> Path:
    """Self and Orig per checkpoint (EM and F1 panels) with bootstrap bands, the baselines and collapse marks."""
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, m in zip(axes, (metric, "has_changed_f1")):
        for key, color, label in (("self", "tab:blue", "Self: vs current behaviour E(M_t)"),
                                  ("orig", "tab:orange", "Orig: vs the fixed training labels")):
            vals = [r[key][m]["value"] for r in rows]
            lo = [r[key][m]["ci"][0] for r in rows]
            hi = [r[key][m]["ci"][1] for r in rows]
            ax.plot(steps, vals, "o-", color=color, label=label)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2)
        styles = {"majority": (":", "gray"), "nearest": ("-.", "tab:purple"), "few_shot": ("--", "tab:green")}
        for name, b in res.get("baselines", {}).items():
            if name in styles:
                ax.axhline(b["orig"][m]["value"], ls=styles[name][0], lw=1, color=styles[name][1],
                           label=f"baseline {name}, scored vs E(M0)")
        majority = res.get("baselines", {}).get("majority")
        span = max(steps[-1] - steps[0], 1)
        if majority:  # the same constant answer scored against the last checkpoint's own labels; set to the right
            ax.plot([steps[-1] + 0.03 * span], [majority["self_last"][m]["value"]], "*", ms=11, color="black",
                    label="majority label vs E(M_last): a constant answer (drawn right of the last step)")
        flagged = [r for r in rows if collapsed(r)]
        if flagged:
            ax.plot([r["step"] for r in flagged], [r["self"][m]["value"] for r in flagged], "x", ms=12, color="red",
                    label=f"class collapse (predicted-changed rate more than {COLLAPSE_TOLERANCE:.0%} from the labels')")
        undefined = [r["step"] for r in rows if r["self"][m]["value"] != r["self"][m]["value"]]  # NaN
        if undefined:
            ax.set_xlabel(f"training step (0 = M0); not drawn at step {', '.join(map(str, undefined))}: {m} undefined "
                          "(no explanation parses)", fontsize=8)
        if not undefined:
            ax.set_xlabel("training step (0 = M0)")
        ax.set_ylabel(m.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{m.replace('_', ' ')}, 95% bootstrap CI (n={rows[0]['n']})")
    handles, names = axes[0].get_legend_handles_labels()  # one legend below both panels, never over the data
    fig.tight_layout()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    return _save(fig, out_dir / "self_vs_orig.png", layout, tight=False)



def drift_figure(rows: list[dict[str, Any]], out_dir: Path, layout: dict[str, Any]) -> Path:
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["drift"] for r in rows], "o-", label="behaviour drift from M0 (eval pairs)")
    ax.plot(steps, [r["agreement"] for r in rows], "s-", label="agreement of E(M0) with E(M_t)")
    ax.axhline(MIN_AGREEMENT, ls="--", color="gray", lw=1,
               label=f"validity needs agreement ≥ {MIN_AGREEMENT:.2f} (a condition on the agreement line only)")
    ax.set_xlabel("training step (0 = M0)")
    ax.set_ylabel("fraction of eval pairs")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    ax.set_title("drift and label–behaviour agreement")
    return _save(fig, out_dir / "drift_agreement.png", layout)



def losses_figure(rows_t: list[dict[str, Any]], out_dir: Path, layout: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in LossWeights().terms():
        pts = [(r["step"], r[k]) for r in rows_t if k in r]
        if pts:
            ax.plot(*zip(*pts), label=k, lw=1)
    ax.set_yscale("log")
    mark_decisions(ax, rows_t)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (log scale)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_title("training losses")
    return _save(fig, out_dir / "losses.png", layout)


def monitor_figure(rows_t: list[dict[str, Any]], checks: list[dict[str, Any]], out_dir: Path,
                   layout: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("agreement", "agreement (held-out monitor pairs)"), ("self_em", "Self EM"),
                       ("orig_em", "Orig EM"), ("drift", "drift from M0")):
        ax.plot([r["step"] for r in checks], [r["monitor"][key] for r in checks], "o-", ms=3, label=label)
    ax.axhline(checks[0]["monitor_decision"].get("min_agreement", MIN_AGREEMENT), ls="--", color="gray", lw=1)
    mark_decisions(ax, rows_t)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of monitor pairs")
    ax.set_title(f"coupling monitor (policy {checks[0]['monitor_decision']['policy']})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return _save(fig, out_dir / "monitor.png", layout)


def mark_decisions(ax: Any, rows: list[dict[str, Any]]) -> None:
    """A dotted line and a label at each step where the coupling monitor acted (not at plain `ok` checks)."""
    for r in rows:
        d = r.get("monitor_decision")
        if d and d["action"] != "ok":
            ax.axvline(r["step"], ls=":", lw=1, color="red")
            ax.annotate(d["action"], (r["step"], 0.98), xycoords=("data", "axes fraction"), fontsize=7, color="red",
                        rotation=90, ha="right", va="top")
