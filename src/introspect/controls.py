"""Controls that tell introspective coupling from shared drift (DESIGN §6, "Controls before claims").

Self − Orig > 0 alone can come from shared drift: which items drift is often predictable from the input, so any
explainer trained on the same labels "tracks" it. Each control here scores one explainer's predictions against one
model's behaviour labels, item by item, on one shared eval set (the per-item tables `eval/step_*/items.parquet`):

  d(E, B)          per item: correct(E vs E(B_t)) − correct(E vs E(M0)); its mean is Self − Orig
  other_model      own − other: d(E_own, B_own) − d(E_other, B_own) — does this model's explainer predict *its own*
                   behaviour better than another model's explainer does (a same-seed λ = 0 sibling, another seed)?
                   overall and on the items where the two models' behaviour labels differ
  temporal         correct(E_t vs E(B_t)) − correct(E_t vs E(B_t')): step t's explanations against step t's
                   behaviour vs another evaluated step's (overall and on items whose label moved between them)
  constants        Self − Orig of every constant explanation ("unchanged, C", ...); the best is a chance baseline
  shuffle_null     the explainer's predictions permuted within strata (default: M0 label × M0's hinted answer ×
                   item group), Self − Orig recomputed: null mean and a one-sided permutation p-value
  over_seeds       a t-interval over the seeds' estimates (inference over seeds, not only items)

`correct` is exact match (verdict and letter) or verdict match (verdict only, the letter ignored). Seeds are pooled
as the experiment table pools them: the mean of the per-seed statistics, one item resample shared by all seeds
(paired bootstrap, `metrics.resamples`). Everything here is pure numpy on stored tables: no model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import metrics

CORRECTNESS = ("exact_match", "verdict_match")
STRATA = ("m0_label", "m0_answer", "group")  # what the shuffle null may hold fixed (config key controls.strata)
# two-sided 95% Student t quantiles for 1..30 degrees of freedom (over more, 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Step:
    """One evaluated checkpoint of one run: its explainer's parsed predictions and its behaviour labels, per item."""

    items: pd.DataFrame  # an eval/step_*/items.parquet table (pair_id, parsed_ok, pred_*, self_*, orig_*, answer*)

    @property
    def pair_ids(self) -> np.ndarray:
        return self.items["pair_id"].to_numpy()


def correct(explainer: Step, behaviour: Step, *, against: str, metric: str) -> np.ndarray:
    """Per item (0/1): is `explainer`'s prediction right about `behaviour`'s labels — its current ones
    (against="self", E(B_t)) or the fixed ones (against="orig", E(M0))."""
    if metric not in CORRECTNESS:
        raise ValueError(f"metric must be one of {CORRECTNESS}, not {metric!r}")
    e, b = explainer.items, behaviour.items
    if len(e) != len(b) or not (e["pair_id"].to_numpy() == b["pair_id"].to_numpy()).all():
        raise ValueError("controls compare runs on the same eval items in the same order (same eval set)")
    ok = e["parsed_ok"].to_numpy(bool)
    right = ok & (e["pred_changed"].to_numpy(bool) == b[f"{against}_changed"].to_numpy(bool))
    if metric == "exact_match":
        right &= e["pred_letter"].astype(str).to_numpy() == b[f"{against}_letter"].astype(str).to_numpy()
    return right.astype(float)


def self_minus_orig(explainer: Step, behaviour: Step, metric: str = "exact_match") -> np.ndarray:
    """d(E, B) per item; its mean is Self − Orig of explainer E scored on model B's behaviour."""
    return (correct(explainer, behaviour, against="self", metric=metric)
            - correct(explainer, behaviour, against="orig", metric=metric))


def estimate(per_seed: Sequence[np.ndarray], *, seed: int = 0, n_boot: int = 2000,
             subset: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Mean over seeds of per-item statistics' means, with a 95% paired-bootstrap CI over items.

    Without `subset`: one resample of the shared eval items for all seeds. With `subset` (a boolean mask per seed,
    e.g. the items whose labels differ there): each seed's selected items resampled on their own, then averaged."""
    if subset is None:
        stacked = np.mean(np.stack(per_seed), axis=0)
        idx = metrics.resamples(len(stacked), seed, n_boot)
        boots = stacked[idx].mean(axis=1)
        value, n = float(stacked.mean()), len(stacked)
    else:
        chosen = [v[np.asarray(m, bool)] for v, m in zip(per_seed, subset)]
        n = int(sum(len(c) for c in chosen))
        if any(len(c) == 0 for c in chosen):
            return {"value": float("nan"), "ci": [float("nan")] * 2, "n": n}
        rng = np.random.default_rng(seed)
        boots = np.mean([[c[rng.integers(0, len(c), len(c))].mean() for c in chosen] for _ in range(n_boot)], axis=1)
        value = float(np.mean([c.mean() for c in chosen]))
    return {"value": value, "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))], "n": n}


def labels_differ(a: Step, b: Step) -> np.ndarray:
    """Items whose current-behaviour labels E(B_t) differ between two runs (verdict or letter)."""
    return ((a.items["self_changed"].to_numpy(bool) != b.items["self_changed"].to_numpy(bool))
            | (a.items["self_letter"].astype(str).to_numpy() != b.items["self_letter"].astype(str).to_numpy()))


def other_model(own: Sequence[Step], other: Sequence[Step], *, metric: str = "exact_match", seed: int = 0,
                n_boot: int = 2000) -> dict[str, Any]:
    """Own − other, pooled over seeds: own[i]'s Self − Orig on its own behaviour minus other[i]'s explainer's Self −
    Orig on own[i]'s behaviour. Positive: this model's explanations follow its own behaviour better than another
    model's do. Also each side alone, on the items where the two runs' behaviour labels differ, and the other
    direction (`own_minus_other_behaviour`: own's explainer on its own behaviour minus on the other's)."""
    own_d = [self_minus_orig(o, o, metric) for o in own]
    other_d = [self_minus_orig(x, o, metric) for o, x in zip(own, other)]
    diff = [a - b for a, b in zip(own_d, other_d)]
    differ = [labels_differ(o, x) for o, x in zip(own, other)]
    # the other direction: this explainer on the other model's behaviour (a behaviour contrast, not a control)
    on_other = [self_minus_orig(o, x, metric) for o, x in zip(own, other)]
    same_text = [float(np.mean(o.items["text"].to_numpy() == x.items["text"].to_numpy())) for o, x in zip(own, other)]
    return {"own": estimate(own_d, seed=seed, n_boot=n_boot), "other": estimate(other_d, seed=seed, n_boot=n_boot),
            "own_minus_other": estimate(diff, seed=seed, n_boot=n_boot),
            "own_minus_other_over_seeds": over_seeds([float(d.mean()) for d in diff]),
            "own_minus_other_where_behaviour_differs": estimate(diff, seed=seed, n_boot=n_boot, subset=differ),
            "n_behaviour_differs": [int(m.sum()) for m in differ],
            "own_explainer_on_other_behaviour": estimate(on_other, seed=seed, n_boot=n_boot),
            "own_minus_other_behaviour": estimate([a - b for a, b in zip(own_d, on_other)], seed=seed, n_boot=n_boot),
            "identical_explanations": same_text}


def temporal(at: Step, other_step: Step, *, metric: str = "exact_match", seed: int = 0,
             n_boot: int = 2000) -> dict[str, Any]:
    """Step t's explanations against step t's behaviour minus against another step's (the Orig labels cancel):
    positive when the explanations follow the behaviour of their own checkpoint. Also on the items whose label
    moved between the two checkpoints."""
    diff = correct(at, at, against="self", metric=metric) - correct(at, other_step, against="self", metric=metric)
    moved = labels_differ(at, other_step)
    return {"all": estimate([diff], seed=seed, n_boot=n_boot),
            "label_moved": estimate([diff], seed=seed, n_boot=n_boot, subset=[moved])}


def constant_step(template: Step, changed: bool, letter: str) -> Step:
    """The constant explainer: the same parsed prediction on every item."""
    items = template.items.copy()
    items["parsed_ok"], items["pred_changed"], items["pred_letter"] = True, changed, letter
    items["text"] = f"constant: {'changed' if changed else 'unchanged'}, {letter}"
    return Step(items)


def constants(behaviour: Sequence[Step], *, metric: str = "exact_match", seed: int = 0,
              n_boot: int = 2000) -> dict[str, Any]:
    """Self − Orig of every constant explanation, pooled over seeds; `best` is the largest."""
    letters = (sorted({str(x) for b in behaviour for col in ("self_letter", "orig_letter") for x in b.items[col]})
               if metric == "exact_match" else ["(any letter)"])  # verdict match ignores the letter
    out = {}
    for changed in (False, True):
        for letter in letters:
            d = [self_minus_orig(constant_step(b, changed, letter), b, metric) for b in behaviour]
            out[f"{'changed' if changed else 'unchanged'} {letter}"] = estimate(d, seed=seed, n_boot=n_boot)
    best = max(out, key=lambda k: out[k]["value"])  # the first of equals: "unchanged" before "changed", A before B
    return {"all": out, "best": best, "best_value": out[best]}


def strata_keys(step: Step, m0: Step, strata: Sequence[str]) -> np.ndarray:
    """One stratum key per item: M0's label (verdict and letter), M0's answer on x, the item's group (its pair id up
    to the last '/', e.g. the MMLU subject), in the combination `strata` names."""
    bad = [s for s in strata if s not in STRATA]
    if bad:
        raise ValueError(f"unknown strata {bad}: choose from {list(STRATA)} (config key controls.strata)")
    parts = []
    for s in strata:
        if s == "m0_label":
            parts.append(step.items["orig_changed"].astype(str) + step.items["orig_letter"].astype(str))
        elif s == "m0_answer":
            parts.append(m0.items["answer"].astype(str).reset_index(drop=True))
        else:
            parts.append(step.items["pair_id"].astype(str).str.rsplit("/", n=1).str[0])
    if not parts:
        return np.zeros(len(step.items), dtype=object)
    key = parts[0].reset_index(drop=True)
    for p in parts[1:]:
        key = key + "|" + p.reset_index(drop=True)
    return key.to_numpy()


def shuffle_null(steps: Sequence[Step], m0: Sequence[Step], *, strata: Sequence[str] = STRATA,
                 metric: str = "exact_match", n_perm: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The explainer's predictions permuted within strata (each seed on its own), Self − Orig recomputed, pooled.
    p = (1 + #{null ≥ observed}) / (1 + n_perm): small when the explainer puts its predictions on the right items
    *within* strata, beyond what the strata (predictable from the input) explain."""
    rng = np.random.default_rng(seed)
    observed = float(np.mean([self_minus_orig(s, s, metric).mean() for s in steps]))
    groups = [[np.flatnonzero(k == u) for u in np.unique(k)] for k in
              (strata_keys(s, z, strata) for s, z in zip(steps, m0))]
    arrays = [_arrays(s, metric) for s in steps]
    null = np.empty(n_perm)
    for i in range(n_perm):
        vals = []
        for (pred, gold_self, gold_orig), g in zip(arrays, groups):
            perm = np.arange(len(pred))
            for idx in g:
                perm[idx] = rng.permutation(idx)
            p = pred[perm]
            vals.append(np.mean((p == gold_self).astype(float) - (p == gold_orig)))
        null[i] = np.mean(vals)
    return {"observed": observed, "null_mean": float(null.mean()),
            "null_ci": [float(np.percentile(null, 2.5)), float(np.percentile(null, 97.5))],
            "p_value": float((1 + np.sum(null >= observed)) / (1 + n_perm)), "n_perm": n_perm,
            "strata": list(strata), "n_strata": [len(g) for g in groups]}


def _arrays(step: Step, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions and gold as one string per item ("" where nothing parses), so `pred == gold` is `correct`."""
    it = step.items

    def key(changed: Any, letter: Any) -> np.ndarray:
        c = np.where(np.asarray(changed, bool), "changed", "unchanged").astype(object)
        return c + ("|" + letter.astype(str).to_numpy() if metric == "exact_match" else "")

    pred = np.where(it["parsed_ok"].to_numpy(bool), key(it["pred_changed"], it["pred_letter"]), "")
    return pred, key(it["self_changed"], it["self_letter"]), key(it["orig_changed"], it["orig_letter"])


def over_seeds(values: Sequence[float]) -> dict[str, Any]:
    """Mean of per-seed estimates with a 95% t-interval over seeds (n − 1 degrees of freedom)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return {"value": float(v.mean()) if len(v) else float("nan"), "ci": [float("nan")] * 2, "n_seeds": len(v)}
    half = (_T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    return {"value": float(v.mean()), "ci": [float(v.mean() - half), float(v.mean() + half)], "n_seeds": len(v),
            "per_seed": [float(x) for x in v]}


def intervention(before: Step, after: Step, treated: np.ndarray, *, metric: str = "verdict_match", seed: int = 0,
                 n_boot: int = 2000) -> dict[str, Any]:
    """The causal intervention test on one seed: behaviour was moved on the `treated` items only (no explanation
    loss), then the explanations were regenerated. Per item:

      behaviour moved   E(B_after) differs from E(B_before)
      toward            correct(E_after vs E(B_after)) − correct(E_before vs E(B_after)): did the explanation move
                        toward the new behaviour?
    DiD = mean toward on treated − on control items, with a bootstrap resampling treated and control items apart.
    Coupling predicts DiD > 0: explanations follow the behaviour change where it happened and not elsewhere."""
    treated = np.asarray(treated, bool)
    if not treated.any() or treated.all():
        raise ValueError("the intervention test needs treated and control items")
    moved = labels_differ(before, after).astype(float)
    toward = (correct(after, after, against="self", metric=metric)
              - correct(before, after, against="self", metric=metric))
    pred_cols = ["parsed_ok", "pred_changed", "pred_letter"]
    expl_moved = (before.items[pred_cols].astype(str).to_numpy() != after.items[pred_cols].astype(str).to_numpy()).any(1)
    t_idx, c_idx = np.flatnonzero(treated), np.flatnonzero(~treated)
    rng = np.random.default_rng(seed)
    boots_t = [rng.integers(0, len(t_idx), len(t_idx)) for _ in range(n_boot)]
    boots_c = [rng.integers(0, len(c_idx), len(c_idx)) for _ in range(n_boot)]

    def did(v: np.ndarray) -> dict[str, Any]:
        vt, vc = v[t_idx], v[c_idx]
        b = np.array([vt[i].mean() - vc[j].mean() for i, j in zip(boots_t, boots_c)])
        return {"value": float(vt.mean() - vc.mean()),
                "ci": [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))],
                "treated": float(vt.mean()), "control": float(vc.mean())}

    return {"n_treated": len(t_idx), "n_control": len(c_idx), "metric": metric,
            "behaviour_moved": did(moved), "explanation_moved": did(expl_moved.astype(float)),
            "toward_new_behaviour": did(toward)}
