"""The pre-registered decision rule of docs/claims.md (experiment_table.decide), and the experiment tables re-made
from the committed archives by `introspect experiment table`."""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import pytest

from introspect import experiment_table

ROOT = Path(__file__).resolve().parents[1]


class claims:  # the rule as experiments 1 and 2 pre-registered it (refuted below +0.02)
    decide = staticmethod(partial(experiment_table.decide, refute_below=0.02))


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


@pytest.mark.slow
@pytest.mark.parametrize("spec, results", [("claims_v1", "claims_results"), ("claims_v2", "claims_v2_results"),
                                           ("claims_v3", "claims_v3_results")])
def test_the_experiment_tables_re_make_from_the_archives(spec: str, results: str, tmp_path: Path) -> None:
    """The committed table (its JSON: every number, the pooled CIs and the decision) is what the spec's rule gives
    on the committed archive; a run directory in the way would be read first, so this runs from a copy."""
    from introspect import cli

    for rel in (f"configs/experiments/{spec}.yaml", "docs/claims_lambda.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    archive = {"claims_v1": "docs/claims_runs"}.get(spec, f"docs/{spec}_runs")
    configs = {"claims_v1": "configs/claims"}.get(spec, f"configs/{spec}")
    shutil.copytree(ROOT / archive, tmp_path / archive)
    shutil.copytree(ROOT / configs, tmp_path / configs)
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli.main(["experiment", "table", f"configs/experiments/{spec}.yaml"]) == 0
    finally:
        os.chdir(here)
    made = json.loads((tmp_path / "docs" / f"{results}.json").read_text())
    assert made == json.loads((ROOT / "docs" / f"{results}.json").read_text())
    assert made["decision"] in ("supported", "refuted", "inconclusive") or made["decision"].startswith("not a valid")


def test_the_claims_wrapper_lambda_never_runs_arms(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`scripts/claims.py lambda` is the λ selection alone: with λ* recorded it skips, and it never starts an arm."""
    import importlib.util
    import sys

    from introspect import cli

    spec = importlib.util.spec_from_file_location("claims_wrapper", ROOT / "scripts" / "claims.py")
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    monkeypatch.setattr(cli, "main", lambda argv: pytest.fail(f"claims.py lambda called introspect {argv}"))
    monkeypatch.setattr(sys, "argv", ["claims.py", "lambda"])
    here = os.getcwd()
    try:
        assert wrapper.main() == 0
    finally:
        os.chdir(here)
    assert "lambda* is recorded in docs/claims_lambda.json" in capsys.readouterr().out
