"""An experiment's table and its pre-registered decision rule (`introspect experiment table SPEC`): per arm and
checkpoint Self / Orig / Self − Orig with the validity verdict, Self − Orig pooled over seeds at the last
checkpoint, the primary − sibling contrast, and the decision the spec's rule gives (docs/claims.md).

The rule (experiments 1 and 2, written before their runs): *supported* when the primary arm's pooled Self − Orig CI
lies above 0 and so does its contrast with the sibling (λ = 0) arm; *refuted* when the pooled CI's upper bound is
below `decision.refute_below`; else *inconclusive*. It needs every arm of every seed, and the primary arm's last
checkpoints valid. The controls that decide whether an effect is coupling are `introspect experiment controls`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .files import atomic_path
from .experiment import ExperimentSpec, config_path, eval_dir, run_name
from .run_config import load_run_config
from .tables import read_table
from .tasks import get_task
from .validity import MIN_AGREEMENT, Verdict, signed

Arm = tuple[metrics.Items, metrics.Items, np.ndarray]  # Self items, Orig items, label differs


def arm_items(config: Path, folder: Path, step: int) -> Arm:
    cfg = load_run_config(config)
    items, _ = read_table(folder / f"step_{step:06d}" / "items.parquet")
    choices = list(get_task(cfg.task, **cfg.task_options).choices)  # the task's choice set, as evaluation scores it
    texts = items["text"].tolist()
    self_it = metrics.items(texts, items["self_changed"], items["self_letter"], choices)
    orig_it = metrics.items(texts, items["orig_changed"], items["orig_letter"], choices)
    return self_it, orig_it, items["label_differs"].to_numpy()


def pooled(arms: list[Arm], metric: str, *, n_boot: int, differing: bool = False, seed: int = 0) -> dict[str, Any]:
    """Mean over seeds of Self − Orig (metric), 95% CI from one item resample shared by all seeds (same eval set);
    on differing items, the per-seed differing items pooled and resampled."""
    rng = np.random.default_rng(seed)

    def value(idx_per_arm: list[np.ndarray]) -> float:
        return float(np.mean([metrics.point(s, i)[metric] - metrics.point(o, i)[metric]
                              for (s, o, _), i in zip(arms, idx_per_arm)]))

    if differing:
        sets = [np.flatnonzero(d) for _, _, d in arms]
        point = value(sets)
        boots = [value([rng.choice(s, len(s)) for s in sets]) for _ in range(n_boot)]
        n = int(sum(len(s) for s in sets))
    else:
        n = len(arms[0][2])
        point = value([np.arange(n)] * len(arms))
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            boots.append(value([idx] * len(arms)))
    kept = np.array([b for b in boots if not np.isnan(b)])
    return {"value": point, "ci": [float(np.percentile(kept, 2.5)), float(np.percentile(kept, 97.5))], "n": n}


def contrast(primary: list[Arm], sibling: list[Arm], metric: str, *, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """(pooled Self − Orig of the primary arm) − (the same of the sibling arm), one shared item resample."""
    rng = np.random.default_rng(seed)
    n = len(primary[0][2])

    def value(idx: np.ndarray) -> float:
        d = lambda arms: np.mean([metrics.point(s, idx)[metric] - metrics.point(o, idx)[metric] for s, o, _ in arms])  # noqa: E731
        return float(d(primary) - d(sibling))

    boots = np.array([value(rng.integers(0, n, n)) for _ in range(n_boot)])
    return {"value": value(np.arange(n)), "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def decide(valid: bool, missing: list[str], n_arms: int, effect: dict | None, contrast_: dict | None, *,
           refute_below: float) -> str:
    """The pre-registered decision rule. `effect`: the primary arm's pooled Self − Orig ({"value", "ci"});
    `contrast_`: its contrast with the sibling arm; `missing`: arms not run; `valid`: every primary arm valid."""
    if not valid:
        decision = ("not a valid test: a lambda > 0 arm's last checkpoint failed a validity condition (see the table); "
                    "no verdict on the claim")
        if missing:
            decision += f" (final under the rule whatever the arms not run yet give: {', '.join(missing)})"
        return decision
    if missing:
        return (f"none yet: {len(missing)} of {n_arms} pre-registered arms not run ({', '.join(missing)}); "
                f"the rule needs both seeds of both arms")
    if effect is None or contrast_ is None:
        raise ValueError("every arm ran but the pooled estimate or the contrast is missing")
    if effect["ci"][0] > 0 and contrast_["ci"][0] > 0:
        return "supported"
    if effect["ci"][1] < refute_below:
        return "refuted"
    return "inconclusive"


def figure(arms: dict[str, Any], path: Path, sibling_stem: str) -> None:
    """Self − Orig EM (95% CI) and label–behaviour agreement per evaluated checkpoint, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm in sorted({k.split("@")[0] for k in arms}):
        keys = sorted((k for k in arms if k.startswith(arm + "@")), key=lambda k: int(k.split("@")[1]))
        steps = [int(k.split("@")[1]) for k in keys]
        d = [arms[k]["self_minus_orig"]["exact_match"] for k in keys]
        style = dict(marker="o", linestyle="--" if arm.startswith(sibling_stem + "_s") else "-",
                     label=arm.replace("hint_expert_", ""))
        left.errorbar(steps, [x["value"] for x in d], yerr=[[x["value"] - x["ci"][0] for x in d],
                                                             [x["ci"][1] - x["value"] for x in d]], capsize=3, **style)
        right.plot(steps, [arms[k]["agreement"] for k in keys], **style)
    left.axhline(0, color="grey", lw=0.8)
    left.set(xlabel="training step", ylabel="Self − Orig Exact Match (95% CI)", title="coupling")
    right.axhline(MIN_AGREEMENT, color="grey", lw=0.8, linestyle=":")
    right.set(xlabel="training step", ylabel="label–behaviour agreement",
              title=f"validity: agreement ≥ {MIN_AGREEMENT:.2f} (λ > 0)", ylim=(0, 1.02))
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def arm_rows(stem: str, res: dict[str, Any], contrast_arm: bool) -> tuple[list[str], dict[str, Any]]:
    """One table line per evaluated checkpoint after M0, and what the JSON keeps of each."""
    ci = lambda m: f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"  # noqa: E731
    lines, kept = [], {}
    for key in sorted(res["checkpoints"], key=int)[1:]:
        r = res["checkpoints"][key]
        v = Verdict(**r["verdict"])
        d, dd = r["self_minus_orig"]["exact_match"], r.get("self_minus_orig_on_differing", {}).get("exact_match")
        hc = r["self_minus_orig"]["has_changed_f1"]
        lines.append(f"| {stem} | {key} | {ci(r['self']['exact_match'])} | {ci(r['orig']['exact_match'])} | "
                     f"{signed(d)} | " + (f"{signed(dd)} ({r['n_label_differs']})" if dd else "n/a (0)")
                     + f" | {signed(hc)} | {r['agreement']:.2f} | {v.line()}"
                     + (" (λ = 0 is the contrast arm: the rule requires validity of λ > 0 arms only)"
                        if contrast_arm and not v.valid else "") + " |")
        kept[f"{stem}@{key}"] = {"verdict": r["verdict"], "self_minus_orig": r["self_minus_orig"],
                                 "agreement": r["agreement"]}
    return lines, kept


def fixed_lambda(spec: ExperimentSpec) -> str:
    """The primary arm's behaviour-KL weight, read from its first seed's config (experiments whose λ is fixed in
    their configs, not selected by `lambda_selection`)."""
    cfg = load_run_config(config_path(spec, spec.primary, spec.seeds[0]))
    return f"{cfg.train_config().weights.behavior_kl:g}"


def table(spec: ExperimentSpec) -> dict[str, Any]:
    """The table, the pooled estimates and the decision of `spec`'s rule -> RESULTS.md/.json/.png (`spec.results`)."""
    rule = spec.decision
    record = Path(spec.lambda_selection.record) if spec.lambda_selection else None
    lam_star = (json.loads(record.read_text())["lambda_star"] if record and record.is_file()
                else fixed_lambda(spec))
    lines = ["| arm | step | Self EM [95% CI] | Orig EM [95% CI] | Self − Orig EM [95% CI] | on differing items (n) | HC-F1 Self − Orig | agreement | validity |",
             "|---|---|---|---|---|---|---|---|---|"]
    out: dict[str, Any] = {"lambda_star": lam_star, "arms": {}}
    groups: dict[str, list[Arm]] = {"reg": [], "noreg": []}  # the primary arm, the sibling (contrast) arm
    valid = True
    arms = sorted(((run_name(spec, a, s), a, s) for a in spec.arms for s in spec.seeds))
    folders = {stem: eval_dir(spec, a, s) for stem, a, s in arms}
    missing = [stem for stem, _, _ in arms if folders[stem] is None]
    for stem, arm, seed in arms:
        if stem in missing:
            lines.append(f"| {stem} | — | not run yet | | | | | | |")
            continue
        res = json.loads((folders[stem] / "results.json").read_text())
        rows, kept = arm_rows(stem, res, arm == spec.sibling)
        lines += rows
        out["arms"].update(kept)
        last = max(int(k) for k in res["checkpoints"])
        if arm in (spec.primary, spec.sibling):
            groups["noreg" if arm == spec.sibling else "reg"].append(
                arm_items(config_path(spec, arm, seed), folders[stem], last))
        if arm == spec.primary and not res["checkpoints"][str(last)]["verdict"]["valid"]:
            valid = False
    summary: dict[str, Any] = {}
    for name, group in groups.items():
        if group:
            summary[name] = {m: pooled(group, m, n_boot=rule.n_boot, seed=rule.seed) for m in (rule.metric, "has_changed_f1")}
            summary[name][f"{rule.metric}_on_differing"] = pooled(group, rule.metric, n_boot=rule.n_boot,
                                                                  differing=True, seed=rule.seed)
    if groups["reg"] and groups["noreg"]:
        summary["contrast_reg_minus_noreg"] = contrast(groups["reg"], groups["noreg"], rule.metric,
                                                       n_boot=rule.n_boot, seed=rule.seed)
    decision = decide(valid, missing, len(arms), summary.get("reg", {}).get(rule.metric),
                      summary.get("contrast_reg_minus_noreg"), refute_below=rule.refute_below)
    out.update(pooled=summary, decision=decision, arms_not_run=missing)
    write_table(spec, out, lines, groups, summary, decision, lam_star)
    return out


def write_table(spec: ExperimentSpec, out: dict[str, Any], lines: list[str], groups: dict[str, list[Arm]],
                summary: dict[str, Any], decision: str, lam_star: str) -> None:
    results = Path(spec.results)
    m = spec.decision.metric
    md = [f"# {spec.title}", "", *lines, "",
          "Pooled over seeds (last checkpoint; mean of per-seed Self − Orig, 95% paired-bootstrap CI over items):", ""]
    names = {"reg": f"λ* = {lam_star}", "noreg": "λ = 0"}
    for name, group in groups.items():
        if group:
            s = summary[name]
            md.append(f"- {names[name]} ({len(group)} seed(s)): Self − Orig EM {signed(s[m])} (n {s[m]['n']}); "
                      f"on differing items {signed(s[f'{m}_on_differing'])} (n {s[f'{m}_on_differing']['n']}); "
                      f"HC-F1 Self − Orig {signed(s['has_changed_f1'])}")
    if "contrast_reg_minus_noreg" in summary:
        md.append(f"- contrast (λ* − λ = 0) of pooled Self − Orig EM: {signed(summary['contrast_reg_minus_noreg'])}")
    md += ["", f"**Decision by the pre-registered rule: {decision}**", ""]
    if out["arms"]:
        md += [f"![Self − Orig and agreement per checkpoint]({results.name}.png)", ""]
        figure(out["arms"], results.with_suffix(".png"), spec.arms.get(spec.sibling, "\0"))
    for suffix, text in ((".md", "\n".join(md)), (".json", json.dumps(out, indent=2))):
        with atomic_path(results.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    print("\n".join(md))
