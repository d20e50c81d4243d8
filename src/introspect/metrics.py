"""Scoring explanations against labels: Exact Match, Has-Changed macro F1, Content Match, parse and class rates,
each with a seeded paired-bootstrap 95% CI (conventions of Li et al. 2025 as reproduced by the ThreeSwordAI fork).

Definitions (n = all scored items; an unparseable explanation counts as wrong, never dropped):
  exact_match       verdict (changed/unchanged) and letter both right, over n
  verdict_match     verdict right, the letter ignored, over n (verdict-only EM; not in METRICS, so stored results
                    and reports keep their columns: `paired_difference(..., metrics=("verdict_match",))`)
  content_match     letter right, over n (a letter counts only in a parseable explanation; the ancestor's variant,
                    `items(..., lenient_letter=True)` / `introspect score --lenient-content`, counts it whenever
                    <<<Tag: X>>> is present)
  has_changed_f1    macro F1 over {changed, unchanged} on the parseable items (a class absent from both gold and
                    predictions on those items is left out of the mean)
  parse_rate        parseable / n
  pred_changed_rate predicted "changed" / parseable (class collapse shows as ~0 or ~1)
Bootstrap: resample item indices with replacement (n_boot times, numpy default_rng(seed)); the CI is the 2.5 and
97.5 percentiles. "Paired": two scorings of the same predictions (Self vs Orig) use the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .labels import parse_explanation, parse_letter

METRICS = ("exact_match", "has_changed_f1", "content_match", "parse_rate", "pred_changed_rate")
DEFINITIONS = {  # one line each, for reports; the full text is the docstring above and docs/metrics.md
    "exact_match": "verdict (changed/unchanged) and letter both right, over all n items",
    "has_changed_f1": "macro F1 of the changed/unchanged verdict, over the parseable items",
    "content_match": "letter right, over all n items (counted only in a parseable explanation)",
    "parse_rate": "share of explanations whose verdict and tag both parse",
    "pred_changed_rate": "share of parseable explanations that say 'changed' (near 0 or 1: class collapse)",
}


@dataclass(frozen=True)
class Items:
    """Per-item arrays: what was predicted (parse ok, changed, letter) and the gold (changed, letter)."""

    ok: np.ndarray
    pred_changed: np.ndarray
    pred_letter: np.ndarray
    gold_changed: np.ndarray
    gold_letter: np.ndarray
    letter_found: np.ndarray | None = None  # lenient content match: a letter read even where no verdict parses

    def subset(self, idx: np.ndarray) -> "Items":
        return Items(*(None if a is None else a[idx] for a in (self.ok, self.pred_changed, self.pred_letter,
                                                                self.gold_changed, self.gold_letter, self.letter_found)))


def items(texts: Sequence[str], gold_changed: Sequence[bool], gold_letter: Sequence[str], choices: Sequence[str],
          *, lenient_letter: bool = False) -> Items:
    """Parsed predictions against gold. With `lenient_letter` (the ancestor's Content Match), the letter in
    <<<Tag: X>>> counts even when no verdict phrase parses; exact match and F1 are unchanged."""
    parsed = [parse_explanation(t, choices) for t in texts]
    letters = [p.letter if p else (parse_letter(t, choices) if lenient_letter else None) for p, t in zip(parsed, texts)]
    return Items(
        ok=np.array([p is not None for p in parsed], dtype=bool),
        pred_changed=np.array([bool(p and p.changed) for p in parsed], dtype=bool),
        pred_letter=np.array([x or "" for x in letters], dtype=object),
        gold_changed=np.asarray(gold_changed, dtype=bool),
        gold_letter=np.asarray(gold_letter, dtype=object),
        letter_found=np.array([x is not None for x in letters], dtype=bool) if lenient_letter else None,
    )


def _macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    f1s = []
    for c in (True, False):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def point(it: Items, idx: np.ndarray | None = None) -> dict[str, float]:
    """All metrics on the items (or on the resample `idx`)."""
    if idx is not None:
        it = it.subset(idx)
    n = len(it.ok)
    verdict = it.ok & (it.pred_changed == it.gold_changed)
    letter = it.ok & (it.pred_letter == it.gold_letter)
    lenient = letter if it.letter_found is None else it.letter_found & (it.pred_letter == it.gold_letter)
    k = int(it.ok.sum())
    return {
        "exact_match": float(np.mean(verdict & letter)) if n else float("nan"),
        "verdict_match": float(np.mean(verdict)) if n else float("nan"),
        "has_changed_f1": _macro_f1(it.pred_changed[it.ok], it.gold_changed[it.ok]) if k else float("nan"),
        "content_match": float(np.mean(lenient)) if n else float("nan"),
        "parse_rate": k / n if n else float("nan"),
        "pred_changed_rate": float(it.pred_changed[it.ok].mean()) if k else float("nan"),
    }


def resamples(n: int, seed: int, n_boot: int) -> np.ndarray:
    """The bootstrap's item indices [n_boot, n]: one seeded draw shared by every paired comparison."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _ci(values: np.ndarray) -> list[float]:
    values = values[~np.isnan(values)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else [float("nan")] * 2


def score(it: Items, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Point estimates and bootstrap 95% CIs: {metric: {"value", "ci"}, "n": n}."""
    base = point(it)
    boots = [point(it, idx) for idx in resamples(len(it.ok), seed, n_boot)]
    out: dict[str, Any] = {"n": len(it.ok)}
    for m in METRICS:
        out[m] = {"value": base[m], "ci": _ci(np.array([b[m] for b in boots]))}
    return out


def paired_difference(a: Items, b: Items, *, seed: int = 0, n_boot: int = 1000,
                      metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """metric(a) - metric(b) with a paired-bootstrap CI: both scored on the same resampled items."""
    if len(a.ok) != len(b.ok):
        raise ValueError("paired scores need the same items")
    pa, pb = point(a), point(b)
    diffs: dict[str, list[float]] = {m: [] for m in metrics}
    for idx in resamples(len(a.ok), seed, n_boot):
        ra, rb = point(a, idx), point(b, idx)
        for m in metrics:
            diffs[m].append(ra[m] - rb[m])
    return {"n": len(a.ok), **{m: {"value": pa[m] - pb[m], "ci": _ci(np.array(diffs[m]))} for m in metrics}}


def format_table(result: dict[str, Any], metrics: Sequence[str] = METRICS, fmt: Callable[[float], str] = "{:.3f}".format) -> str:
    lines = [f"n = {result['n']}", f"{'metric':<18} {'value':>7}   95% CI"]
    for m in metrics:
        v, (lo, hi) = result[m]["value"], result[m]["ci"]
        lines.append(f"{m:<18} {fmt(v):>7}   [{fmt(lo)}, {fmt(hi)}]")
    return "\n".join(lines)
