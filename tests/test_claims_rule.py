"""The pre-registered decision rule of docs/claims.md, as scripts/claims.py applies it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("claims_script", Path(__file__).resolve().parents[1] / "scripts" / "claims.py")
claims = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(claims)


def est(lo: float, hi: float) -> dict:
    return {"value": (lo + hi) / 2, "ci": [lo, hi]}


def test_a_failing_lambda_star_arm_is_final_whatever_else_ran() -> None:
    out = claims.decide(False, ["b", "c"], 4, None, None)
    assert out.startswith("not a valid test") and "b, c" in out
    assert claims.decide(False, [], 4, est(0.05, 0.10), est(0.02, 0.08)).startswith("not a valid test")


def test_no_verdict_while_arms_are_missing() -> None:
    assert claims.decide(True, ["hint_expert_lam0_s2"], 4, est(0.05, 0.1), None).startswith("none yet: 1 of 4")


@pytest.mark.parametrize("reg, contrast, want", [
    (est(0.01, 0.05), est(0.001, 0.04), "supported"),
    (est(0.01, 0.05), est(-0.01, 0.04), "inconclusive"),  # coupling, but not shown to be the regulariser's
    (est(-0.03, 0.019), est(-0.02, 0.02), "refuted"),      # every effect of +0.02 or more excluded
    (est(-0.03, 0.02), est(-0.02, 0.02), "inconclusive"),  # +0.02 itself not excluded
    (est(-0.006, 0.033), est(0.01, 0.03), "inconclusive"),
])
def test_the_rule_on_complete_experiments(reg: dict, contrast: dict, want: str) -> None:
    assert claims.decide(True, [], 4, reg, contrast) == want


def test_a_complete_experiment_without_its_estimates_is_an_error() -> None:
    with pytest.raises(ValueError):
        claims.decide(True, [], 4, None, None)
