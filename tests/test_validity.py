"""The validity rule (src/introspect/validity.py) on hand-built results: each condition fails alone, all pass together,
and a checkpoint whose explanations never parse says so instead of printing NaN."""

from __future__ import annotations

import math

import pytest

from introspect.validity import verdict


def result(agreement=0.8, orig_em=0.8, hc=0.8, pred_changed=0.5, differing=100) -> dict:
    m = lambda v: {"value": v, "ci": [v, v]}  # noqa: E731
    return {"agreement": agreement, "orig": {"exact_match": m(orig_em), "has_changed_f1": m(hc)},
            "self": {"pred_changed_rate": m(pred_changed)}, "n_label_differs": differing}


def test_all_conditions_met_is_valid() -> None:
    v = verdict(result(), majority_em=0.5, label_changed_rate=0.5)
    assert v.valid and v.failures == [] and v.line().startswith("valid test: ")


@pytest.mark.parametrize("change, words", [
    (dict(agreement=0.69), "agreement 0.69 < 0.70"),
    (dict(orig_em=0.64), "explainer did not learn"),
    (dict(hc=0.64), "Has-Changed F1 vs Orig 0.64 < 0.65"),
    (dict(pred_changed=0.71), "collapse (predicts changed 71% vs labels 50%)"),
    (dict(differing=79), "only 79 items whose label differs (< 80)"),
])
def test_each_condition_fails_alone(change: dict, words: str) -> None:
    v = verdict(result(**change), majority_em=0.5, label_changed_rate=0.5)
    assert not v.valid and len(v.failures) == 1 and words in v.failures[0]


def test_no_parseable_explanation_is_named_not_nan() -> None:
    v = verdict(result(hc=math.nan, pred_changed=math.nan), majority_em=0.5, label_changed_rate=0.5)
    assert not v.valid and "nan" not in v.line().lower()
    assert any("no explanation parses" in f for f in v.failures) and any("undefined" in f for f in v.failures)
