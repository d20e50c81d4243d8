"""`introspect screen`: is a setting testable at all, before any training?

On N candidate pairs scored in fp32 it reports margin histograms on both sides, the changed rate, the label class
balance (verdict x answer), the share of pairs whose argmax survives a KL budget ε, and a verdict against the
thresholds below, projected from the sample to the whole train and eval splits.

Thresholds (docs/tasks.md): after selection at `min_margin`, at least MIN_TRAIN training and MIN_EVAL evaluation
pairs, with 25–75% changed (or, with class balancing, at least half the required count in each class). The flip
cost of a pair side is the smallest KL(p ‖ q) that ties its top two choices,
    p1 log(2 p1 / (p1 + p2)) + p2 log(2 p2 / (p1 + p2)),
and a pair "survives ε" when both sides cost more than ε: a regulariser holding the mean KL near ε can then not
flip it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .selection import margins

MIN_TRAIN, MIN_EVAL = 200, 300
CHANGED_RANGE = (0.25, 0.75)


def flip_cost(probs: np.ndarray) -> np.ndarray:
    top2 = np.sort(probs, axis=1)[:, -2:]
    p2, p1 = np.clip(top2[:, 0], 1e-30, None), top2[:, 1]
    m = (p1 + p2) / 2
    return p1 * np.log(p1 / m) + p2 * np.log(p2 / m)


def report(df: pd.DataFrame, *, min_margin: float, epsilon: float, balance: bool, available_train: int,
           available_eval: int, setting: str = "") -> dict[str, Any]:
    """The screen's numbers and verdict for one BehaviorTable (the candidate pairs of one setting)."""
    m_with, m_without = margins(df)
    m = np.minimum(m_with, m_without)
    kept = m >= min_margin
    changed = df["changed"].to_numpy()
    cost = np.minimum(flip_cost(np.array(df["probs"].tolist())), flip_cost(np.array(df["probs_without"].tolist())))
    n = len(df)
    keep_rate = float(kept.mean())
    changed_kept = float(changed[kept].mean()) if kept.any() else float("nan")
    classes = (pd.DataFrame({"verdict": np.where(changed, "changed", "unchanged"), "answer": df["answer_without"]})[kept]
               .value_counts().sort_index())
    out: dict[str, Any] = {
        "setting": setting, "n": n, "min_margin": min_margin, "epsilon": epsilon, "balance": balance,
        "changed_rate": float(changed.mean()),
        "keep_rate": keep_rate, "changed_rate_kept": changed_kept,
        "keep_rate_at": {str(t): float((m >= t).mean()) for t in (0.25, 0.5, 1.0)},
        "changed_kept_at": {str(t): float(changed[m >= t].mean()) if (m >= t).any() else None for t in (0.25, 0.5, 1.0)},
        "survive_epsilon": float((cost > epsilon).mean()),
        "survive_epsilon_changed": float((cost[changed] > epsilon).mean()) if changed.any() else None,
        "median_margin": {"with": float(np.median(m_with)), "without": float(np.median(m_without))},
        "class_balance": {f"{v}/{a}": int(c) for (v, a), c in classes.items()},
        "available": {"train": available_train, "eval": available_eval},
    }
    verdict, why = [], []
    for name, avail, need in (("train", available_train, MIN_TRAIN), ("eval", available_eval, MIN_EVAL)):
        proj_c = avail * keep_rate * (changed_kept if kept.any() else 0.0)
        proj_u = avail * keep_rate - proj_c
        out[f"projected_{name}"] = {"changed": int(proj_c), "unchanged": int(proj_u)}
        if balance:
            ok = min(proj_c, proj_u) >= need / 2
            why.append(f"{name}: ~{int(proj_c)} changed / ~{int(proj_u)} unchanged selectable (need {need // 2} each)")
        else:
            ok = proj_c + proj_u >= need and CHANGED_RANGE[0] <= (changed_kept if kept.any() else 0) <= CHANGED_RANGE[1]
            why.append(f"{name}: ~{int(proj_c + proj_u)} selectable, {changed_kept:.0%} changed (need {need}, "
                       f"{CHANGED_RANGE[0]:.0%}–{CHANGED_RANGE[1]:.0%})")
        verdict.append(ok)
    out["testable"] = all(verdict)
    out["line"] = (f"{'testable' if out['testable'] else 'untestable'}{' ' + setting if setting else ''}: margin >= "
                   f"{min_margin} keeps {keep_rate:.0%} of {n} pairs ({changed_kept:.0%} changed among kept; "
                   f"{out['survive_epsilon']:.0%} survive KL budget {epsilon}); " + "; ".join(why))
    return out


def figure(df: pd.DataFrame, rep: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m_with, m_without = margins(df)
    changed = df["changed"].to_numpy()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    bins = np.linspace(0, max(3.0, float(np.percentile(np.r_[m_with, m_without], 99))), 30)
    for ax, m, side in ((axes[0], m_with, "with C"), (axes[1], m_without, "without C")):
        ax.hist([m[changed], m[~changed]], bins=bins, stacked=True, label=["changed pairs", "unchanged pairs"],
                color=["tab:red", "tab:blue"])
        ax.axvline(rep["min_margin"], ls="--", color="black", lw=1, label=f"min_margin {rep['min_margin']}")
        ax.set_xlabel("top-1 minus top-2 choice log-prob (nats)")
        ax.set_ylabel("pairs")
        ax.set_title(f"margin {side} (n={rep['n']})")
        ax.legend(fontsize=8)
    cb = rep["class_balance"]
    axes[2].bar(range(len(cb)), list(cb.values()), color=["tab:red" if k.startswith("changed") else "tab:blue" for k in cb])
    axes[2].set_xticks(range(len(cb)), list(cb), rotation=60, fontsize=7)
    axes[2].set_title("labels kept: verdict / answer without C")
    fig.suptitle(rep["line"][:160], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
