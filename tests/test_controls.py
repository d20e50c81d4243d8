"""Controls that tell coupling from shared drift: a constructed coupled explainer passes self-specificity and the
intervention test, an uncoupled one (explanations fixed while behaviour moves) fails both; the controls command
re-makes experiment 2's control numbers from the committed archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import write_mmlu
from introspect import behavior, cli, controls as C, intervention, labels, models
from introspect.pipeline import run
from introspect.run_config import config_of_run, load_run_config
from introspect.validity import coupling, signed

ROOT = Path(__file__).resolve().parents[1]
LETTERS = np.array(list("ABCD"))


def _step(pred: tuple, gold_self: tuple, gold_orig: tuple, answer: np.ndarray) -> C.Step:
    n = len(answer)
    return C.Step(pd.DataFrame({
        "pair_id": [f"test/subj{i % 7}/{i}" for i in range(n)], "text": [f"{c}{x}" for c, x in zip(*pred)],
        "parsed_ok": True, "pred_changed": pred[0], "pred_letter": pred[1], "self_changed": gold_self[0],
        "self_letter": gold_self[1], "orig_changed": gold_orig[0], "orig_letter": gold_orig[1],
        "label_differs": (gold_self[0] != gold_orig[0]) | (gold_self[1] != gold_orig[1]),
        "answer": answer, "answer_without": gold_orig[1]}))


def _world(seed: int, n: int = 600, coupled: bool = True) -> tuple[C.Step, C.Step, C.Step]:
    """M0's labels; the own model and a sibling drift on different items (20% each, half of it shared: the part
    that is predictable from the input). The coupled explainers read their own model's labels (90% right); the
    uncoupled ones both say the M0 label with the predictable drift applied — fixed while behaviour moves."""
    rng = np.random.default_rng(seed)
    m0 = (rng.random(n) < 0.5, LETTERS[rng.integers(0, 4, n)])
    shared = rng.random(n) < 0.10
    own_moves, sib_moves = shared | (rng.random(n) < 0.10), shared | (rng.random(n) < 0.10)

    def moved(mask: np.ndarray) -> tuple:
        return np.where(mask, ~m0[0], m0[0]), m0[1].copy()

    own, sib = moved(own_moves), moved(sib_moves)

    def noisy(lab: tuple) -> tuple:
        flip = rng.random(n) < 0.10
        return np.where(flip, ~lab[0], lab[0]), lab[1]

    if coupled:
        e_own, e_sib = noisy(own), noisy(sib)
    else:
        fixed = noisy(moved(shared))
        e_own = e_sib = fixed
    answer = LETTERS[rng.integers(0, 4, n)]
    return _step(e_own, own, m0, answer), _step(e_sib, own, m0, answer), _step(m0, m0, m0, answer)


def _verdict(coupled: bool) -> tuple:
    worlds = [_world(s, coupled=coupled) for s in (1, 2, 3)]
    own, sib, m0 = ([w[i] for w in worlds] for i in range(3))
    # the sibling's own behaviour labels are not needed: its explainer is scored on the own model's behaviour
    metric = "verdict_match"
    d = [C.self_minus_orig(o, o, metric) for o in own]
    best = C.constants(own, metric=metric, n_boot=200)["best"].split(" ", 1)
    const = [C.self_minus_orig(C.constant_step(o, best[0] == "changed", best[1]), o, metric) for o in own]
    other = C.other_model(own, sib, metric=metric, n_boot=500)
    v = coupling(valid=True, self_minus_orig=C.estimate(d, n_boot=500), own_minus_other={"sibling": other["own_minus_other"]},
                 over_constant=C.estimate([a - b for a, b in zip(d, const)], n_boot=500),
                 shuffle_p=C.shuffle_null(own, m0, strata=["m0_label", "group"], metric=metric, n_perm=200)["p_value"],
                 over_seeds=C.over_seeds([x.mean() for x in d]),
                 own_minus_other_over_seeds={"sibling": other["own_minus_other_over_seeds"]})
    return v, other


def test_coupled_explainer_is_self_specific() -> None:
    v, other = _verdict(coupled=True)
    assert v.valid, v.failures
    assert other["own_minus_other"]["ci"][0] > 0
    assert other["own_minus_other_over_seeds"]["n_seeds"] == 3 and other["own_minus_other_over_seeds"]["ci"][0] > 0
    assert "own − sibling over seeds" in v.checks


def test_self_specific_over_items_but_not_over_seeds_fails() -> None:
    """Inference over seeds (pre-registration 3): a pooled item-level CI above 0 is not enough when the per-seed
    own − sibling values scatter around 0."""
    est = {"value": 0.05, "ci": [0.02, 0.08]}
    seeds = C.over_seeds([0.09, -0.02, 0.08, -0.03, 0.06])
    assert seeds["ci"][0] < 0
    v = coupling(valid=True, self_minus_orig=est, own_minus_other={"sibling": est}, over_constant=est, shuffle_p=0.001,
                 own_minus_other_over_seeds={"sibling": seeds})
    assert not v.valid and v.failures == [f"not self-specific over seeds: per-seed own − sibling {signed(seeds)} "
                                          "(5 seeds, t-interval lower bound ≤ 0)"]
    one = C.over_seeds([0.05])  # a single seed has no interval over seeds: the condition does not apply
    assert coupling(valid=True, self_minus_orig=est, own_minus_other={"sibling": est}, over_constant=est,
                    shuffle_p=0.001, own_minus_other_over_seeds={"sibling": one}).valid


def test_uncoupled_explainer_is_not_self_specific() -> None:
    v, other = _verdict(coupled=False)
    assert not v.valid
    assert other["own_minus_other"]["value"] == 0.0  # the two explainers say the same thing
    assert any(f.startswith("not self-specific: own − sibling") for f in v.failures), v.failures
    assert any(f.startswith("not self-specific over seeds: per-seed own − sibling") for f in v.failures), v.failures


def test_missing_control_fails_the_coupling_verdict() -> None:
    est = {"value": 0.1, "ci": [0.05, 0.15]}
    v = coupling(valid=True, self_minus_orig=est, own_minus_other={}, over_constant=est, shuffle_p=0.001)
    assert not v.valid and "no other-model control was run" in v.failures[0]


def test_a_planned_intervention_missing_on_a_seed_fails_even_when_the_others_pass() -> None:
    est = {"value": 0.1, "ci": [0.05, 0.15]}
    kw = dict(valid=True, self_minus_orig=est, own_minus_other={"sibling": est}, over_constant=est, shuffle_p=0.001)
    assert coupling(**kw, intervention_did=est).valid
    v = coupling(**kw, intervention_did=est, intervention_missing=["s6"])
    assert not v.valid and v.failures == ["intervention test planned but not run on s6"]
    none = coupling(**kw, intervention_did={"value": float("nan"), "ci": [float("nan")] * 2})
    assert none.failures == ["intervention test planned but not run"]


def test_over_seeds_t_interval() -> None:
    r = C.over_seeds([0.013333333333333334, 0.024166666666666666])  # experiment 2's two seeds
    assert r["ci"] == pytest.approx([-0.0501, 0.0876], abs=1e-4)


@pytest.mark.slow
def test_controls_command_reproduces_experiment_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "c"
    assert cli.main(["experiment", "controls", "configs/experiments/claims_v2.yaml", "--n-perm", "50",
                     "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    em = r["metrics"]["exact_match"]
    assert em["self_minus_orig"]["value"] == pytest.approx(0.01875)
    assert em["sibling"]["other"]["value"] == pytest.approx(0.018333, abs=1e-6)
    assert em["sibling"]["own_minus_other"]["value"] == pytest.approx(0.000417, abs=1e-6)
    assert em["constants"]["best"] == "unchanged C"
    assert em["constants"]["best_value"]["value"] == pytest.approx(0.045417, abs=1e-6)
    assert r["metrics"]["verdict_match"]["self_minus_orig"]["value"] == pytest.approx(0.013333, abs=1e-6)
    assert em["cross_seed_pairs"]["s3<-s2"]["own_minus_other_behaviour"]["value"] == pytest.approx(-0.001667, abs=1e-6)
    assert r["coupling_line"].startswith("no coupling verdict: not self-specific: own − sibling +0.000")
    assert "**no coupling verdict" in capsys.readouterr().out


def test_partial_controls_report_only_finished_seeds_and_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--partial: experiment 2's archive with a third, unfinished seed planned gives seeds 2 and 3 only, marked as
    not the verdict; without --partial the missing arms are an error naming the config to run."""
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((ROOT / "configs/experiments/claims_v2.yaml").read_text())
    spec.update(seeds=[2, 3, 9], intervention={"seeds": [3, 9]})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    assert cli.main(["experiment", "controls", str(path), "--n-perm", "20"]) == 2
    assert "hint_expert_lamstar_s9" in capsys.readouterr().err
    out = tmp_path / "p"
    assert cli.main(["experiment", "controls", str(path), "--n-perm", "20", "--partial", "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["seeds"] == [2, 3] and r["partial"] == {"planned": [2, 3, 9]}
    assert r["intervention"]["missing"] == ["s3"]  # planned on a finished seed, not run: the verdict names it
    assert "intervention test planned but not run on s3" in r["coupling_verdict"]["failures"]
    text = out.with_suffix(".md").read_text()
    assert "**PARTIAL: seeds [2, 3] of the planned [2, 3, 9]" in text and "partial, not the verdict: **no coupling" in text


def test_spec_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "configs": "c", "archive": "a", "arms": {"a": "a"}, "seeds": [1],
                                   "primary": "b"}))
    assert cli.main(["experiment", "controls", str(bad)]) == 2
    assert "primary 'b' is not one of arms" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"name": "x", "configs": "c", "archive": "a", "arms": {"a": "a"}, "seeds": [1],
                                   "primary": "a", "intervention": {"seeds": [2], "settings": {"stpes": 3}}}))
    assert cli.main(["experiment", "controls", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "intervention.seeds must be a non-empty subset of seeds" in err and "unknown keys ['stpes']" in err


def test_planned_interventions_are_found_in_the_archive_and_missing_ones_listed(tmp_path: Path) -> None:
    from introspect.experiment import intervention_results, intervention_settings, load_spec

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "x", "configs": str(tmp_path / "c"), "archive": str(tmp_path / "a"),
                                         "arms": {"lamstar": "arm"}, "seeds": [4, 5], "primary": "lamstar",
                                         "intervention": {"seeds": [4, 5], "settings": {"steps": 30}}}))
    spec, _ = load_spec(spec_file)
    where = intervention.result_dir(tmp_path / "a" / "arm_s4", intervention_settings(spec), step=300)
    where.mkdir(parents=True)
    (where / "result.json").write_text(json.dumps({"toward_new_behaviour": {"value": 0.1, "ci": [0.05, 0.15]}}))
    other = intervention.result_dir(tmp_path / "a" / "arm_s5", intervention.InterventionSpec(steps=31), step=300)
    other.mkdir(parents=True)  # other settings: not this plan's result
    (other / "result.json").write_text("{}")
    r = intervention_results(spec)
    assert list(r["per_seed"]) == ["s4"] and r["missing"] == ["s5"]


# --- the intervention test on the tiny model -------------------------------------------------------------------

SHARPEN = 100.0


@pytest.fixture(scope="module")
def sharp():
    """The tiny random model with its final norm scaled up: its answers get margins of tenths of a nat instead of
    thousandths, so a label moves only when behaviour really moves, not from any update's noise."""
    original = models.tiny_random

    def load(seed: int = 0, **kw):
        model, tok = original(seed, **kw)
        with torch.no_grad():
            model.model.norm.weight.mul_(SHARPEN)
        return model, tok

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "tiny_random", load)
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, sharp) -> Path:
    root = tmp_path_factory.mktemp("intervene")
    data = write_mmlu(root / "data")
    write_mmlu(data, "test", {"misc": [[f"Test question number {i}?", "a", "b", "c", "d", "ABCD"[i % 4]]
                                       for i in range(32)]})
    cfg = {"run_dir": str(root / "run"), "model": "tiny-random", "data_root": str(data), "train_split": "val",
           "train_n": 8, "precision": "fp32",
           "train": {"steps": 2, "checkpoint_every": 2, "probe_every": 0, "explanation_per_step": 4,
                     "behavior_per_step": 4, "lr": 1e-3},
           "evaluate": {"split": "test", "n": 32, "n_boot": 20, "max_new_tokens": 4, "baselines": False}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run(load_run_config(root / "cfg.yaml"))
    return root / "run"


def reading_explainer(model, tok, task, pairs) -> list[str]:
    """Says what the model does now: its explanation is the label of its current behaviour."""
    beh, _ = behavior.sample_behavior(model, tok, task, pairs, precision="fp32", progress=False)
    return labels.make_labels(beh, task)["target"].tolist()


@pytest.mark.slow
def test_intervention_runs_from_the_checkpoint_and_scores_explainers(tiny_run: Path) -> None:
    """The pipeline on the tiny model: behaviour-only training starts from the checkpoint's weights (lr ~0: nothing
    moves), the treated half is the trainer's split, and a fixed explainer's explanations never move. The tiny random
    model's answers follow one global A/B bias, so it cannot be treated item by item: the discrimination itself is
    tested on constructed before/after tables below."""
    cfg = config_of_run(tiny_run)
    m0 = pd.read_parquet(tiny_run / "eval" / "m0_behavior.parquet")
    from introspect.tables import read_table, task_of

    task = task_of(read_table(tiny_run / "eval" / "m0_behavior.parquet")[1])
    fixed = labels.make_labels(m0, task)["target"].tolist()  # E(M0), whatever the model does
    spec = intervention.InterventionSpec(steps=2, lr=1e-12, seed=0, n_boot=200, treatment="gold")
    r = intervention.run(cfg, spec, explain=reading_explainer)
    assert r["n_treated"] == r["n_control"] == 16
    assert r["behaviour_moved"]["value"] == 0.0 and r["behaviour_moved"]["treated"] == 0.0
    out = Path(r["dir"])
    assert out.parent == tiny_run / "intervention" and out.name.startswith("step_000002_seed_0_")
    before, after = pd.read_parquet(out / "before.parquet"), pd.read_parquet(out / "after.parquet")
    step2 = pd.read_parquet(tiny_run / "eval" / "step_000002" / "items.parquet")
    assert (before["answer"] == step2["answer"]).all()  # "before" is the checkpoint's own behaviour
    assert (after["answer"] == before["answer"]).all()  # training started from it (init_from), not from M0
    spec2 = intervention.InterventionSpec(steps=2, lr=1e-12, seed=1, n_boot=200, treatment="gold")
    r2 = intervention.run(cfg, spec2, explain=lambda model, tok, task, pairs: fixed)
    assert r2["explanation_moved"]["value"] == 0.0 and r2["toward_new_behaviour"]["ci"] == [0.0, 0.0]
    assert "explanation moved toward the new behaviour" in intervention.format_result(r)


@pytest.mark.slow
def test_intervene_command_reuses_the_evaluated_explanations(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["intervene", str(tiny_run), "--steps", "2", "--lr", "1e-12", "--treatment", "gold",
                     "--n-boot", "50", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "its explanations from" in out and "(current)" in out and "[intervene]" in out
    folder = next((tiny_run / "intervention").glob("step_000002_seed_2_*"))
    before = pd.read_parquet(folder / "before.parquet")
    step2 = pd.read_parquet(tiny_run / "eval" / "step_000002" / "items.parquet")
    assert before["text"].tolist() == step2["text"].tolist()
    assert cli.main(["intervene", str(tiny_run), "--steps", "0"]) == 2


def _intervened(coupled: bool, seed: int, n: int = 400) -> tuple[C.Step, C.Step, np.ndarray]:
    """Before/after tables of a constructed intervention: behaviour moves on 60% of treated items and 5% of control
    items; the coupled explainer says its current behaviour (90% right), the uncoupled one keeps its explanations."""
    rng = np.random.default_rng(seed)
    treated = rng.random(n) < 0.5
    m0 = (rng.random(n) < 0.5, LETTERS[rng.integers(0, 4, n)])
    moves = np.where(treated, rng.random(n) < 0.6, rng.random(n) < 0.05)
    after_lab = (np.where(moves, ~m0[0], m0[0]), m0[1])
    flip_b, flip_a = rng.random(n) < 0.1, rng.random(n) < 0.1
    e_before = (np.where(flip_b, ~m0[0], m0[0]), m0[1])
    e_after = (np.where(flip_a, ~after_lab[0], after_lab[0]), after_lab[1]) if coupled else e_before
    answer = LETTERS[rng.integers(0, 4, n)]
    return _step(e_before, m0, m0, answer), _step(e_after, after_lab, m0, answer), treated


@pytest.mark.parametrize("coupled", [True, False])
def test_intervention_did_separates_coupled_from_fixed_explainer(coupled: bool) -> None:
    dids = []
    for seed in (0, 1, 2):
        before, after, treated = _intervened(coupled, seed)
        r = C.intervention(before, after, treated, n_boot=300)
        assert r["behaviour_moved"]["ci"][0] > 0  # the intervention itself worked, in both worlds
        dids.append(r["toward_new_behaviour"]["value"])
        assert (r["toward_new_behaviour"]["ci"][0] > 0) is coupled
    seeds = C.over_seeds(dids)
    assert (seeds["ci"][0] > 0) is coupled
