"""The one rule that decides whether a Self-vs-Orig number is a valid test of introspective coupling.

Every headline (CLI closing line, summary.md, report.html, docs/claims.md tables) calls `verdict` and shows its
line beside the number. A checkpoint's Self − Orig is a valid test only when all of these hold (docs/metrics.md):

  agreement      the fixed labels E(M0) agree with the current behaviour's labels E(M_t) on >= 70% of eval items
                 (the paper's precondition: coupling is only claimed while label–behaviour agreement stays high)
  learned        the explainer beat the majority-label baseline: Orig exact match >= majority's + 0.15, and
                 Has-Changed F1 vs Orig >= 0.65 (it says "changed" when the labels do, not one class for all)
  no collapse    its predicted-changed rate is within ±0.20 of the labels' changed rate
  differing      at least 80 eval items whose label differs between E(M0) and E(M_t) (else Self and Orig are
                 scored on nearly the same targets and cannot separate)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MIN_AGREEMENT = 0.70
LEARN_MARGIN = 0.15
MIN_HC_F1 = 0.65
COLLAPSE_TOLERANCE = 0.20
MIN_DIFFERING = 80


@dataclass
class Verdict:
    valid: bool
    failures: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if self.valid:
            return "valid test: " + "; ".join(f"{k} {v}" for k, v in self.checks.items())
        return "not a valid test: " + "; ".join(self.failures)


def _v(metric: dict[str, Any]) -> float:
    return float(metric["value"])


def verdict(result: dict[str, Any], majority_em: float | None, label_changed_rate: float) -> Verdict:
    """The validity of one checkpoint's Self vs Orig. `result` is an `evaluate.compare` result; `majority_em` the
    majority-label baseline's exact match vs Orig on the same items; `label_changed_rate` the Orig labels'."""
    fails: list[str] = []
    agreement = result["agreement"]
    orig_em, hc = _v(result["orig"]["exact_match"]), _v(result["orig"]["has_changed_f1"])
    pred_changed = _v(result["self"]["pred_changed_rate"])
    differing = result["n_label_differs"]
    if agreement < MIN_AGREEMENT:
        fails.append(f"agreement {agreement:.2f} < {MIN_AGREEMENT:.2f}")
    if majority_em is None:
        fails.append("no majority baseline to compare with")
    elif not orig_em >= majority_em + LEARN_MARGIN:
        fails.append(f"explainer did not learn (Orig EM {orig_em:.3f} < majority {majority_em:.3f} + {LEARN_MARGIN})")
    if math.isnan(hc):
        fails.append("Has-Changed F1 vs Orig undefined (no parseable explanation)")
    elif hc < MIN_HC_F1:
        fails.append(f"Has-Changed F1 vs Orig {hc:.2f} < {MIN_HC_F1}")
    if math.isnan(pred_changed):
        fails.append("no explanation parses, so no predicted verdicts (counted as collapse)")
    elif abs(pred_changed - label_changed_rate) > COLLAPSE_TOLERANCE:
        fails.append(f"collapse (predicts changed {pred_changed:.0%} vs labels {label_changed_rate:.0%})")
    if differing < MIN_DIFFERING:
        fails.append(f"only {differing} items whose label differs (< {MIN_DIFFERING})")
    checks = {"agreement": f"{agreement:.2f}", "Orig EM": f"{orig_em:.3f} vs majority {majority_em}",
              "HC-F1": f"{hc:.2f}", "predicted changed": f"{pred_changed:.0%}", "differing items": differing}
    return Verdict(not fails, fails, checks)


def headline(step: int, result: dict[str, Any], v: Verdict) -> str:
    """`[not a] valid test: ... | step S: Self − Orig EM d [lo, hi]` — never the number without its verdict."""
    d = result["self_minus_orig"]["exact_match"]
    return (f"{v.line()}\n  step {step}: Self EM {_v(result['self']['exact_match']):.3f}, Orig EM "
            f"{_v(result['orig']['exact_match']):.3f}, Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
            f"(label differs on {result['n_label_differs']} of {result['n']}), drift {result['drift']:.2f}")
