"""The pre-registered reg vs no-reg experiment of docs/claims.md: run its arms and apply its decision rule.

    python scripts/claims.py lambda   # lambda selection on the validation split (configs/claims/lambda_val_*.yaml)
    python scripts/claims.py arms     # every arm (configs/claims/hint_expert_lam*_s*.yaml), then the table
    python scripts/claims.py table    # the table and verdict from the finished arms -> docs/claims_results.{md,json}
    python scripts/claims.py archive  # copy finished arms' eval results into docs/claims_runs/ (committed)
    python scripts/claims.py --experiment 2 arms|table|archive   # the second pre-registration (configs/claims_v2/)

Each finished arm's training log and evaluation (train/metrics.jsonl, eval/results.json and eval/step_*/items.parquet:
pair ids, generated explanations, labels and answers, no benchmark text) is archived in docs/claims_runs/ARM/
(experiment 2: docs/claims_v2_runs/ARM/), so the table can be re-made, and the remaining arms added, in a fresh
checkout without re-running the finished ones.

Arms are plain `introspect run` configs, so each re-runs only what changed and resumes after a kill. The decision
rule below is the one written in docs/claims.md before any arm ran; this script only applies it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from introspect import metrics
from introspect.config import atomic_path
from introspect.experiment import results_dir
from introspect.run_config import load_run_config
from introspect.tables import read_table
from introspect.tasks import get_task
from introspect.validity import Verdict, signed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "claims"  # the lambda-selection configs, and experiment 1's arms
EXPERIMENTS = {  # pre-registered experiments (docs/claims.md): arm configs, archive of finished arms, results file stem
    "1": (CONFIGS, ROOT / "docs" / "claims_runs", ROOT / "docs" / "claims_results"),
    "2": (ROOT / "configs" / "claims_v2", ROOT / "docs" / "claims_v2_runs", ROOT / "docs" / "claims_v2_results"),
}
EXPERIMENT = "1"
ARMS, ARCHIVE, RESULTS = EXPERIMENTS[EXPERIMENT]
LAMBDAS = ("0.3", "1", "3")
MIN_VAL_AGREEMENT = 0.80  # lambda* = the smallest lambda whose validation agreement is at least this
REFUTE_BELOW = 0.02  # refuted: the pooled Self − Orig CI excludes every effect of +0.02 or more
N_BOOT = 2000


SHARED = ("train/behavior.parquet", "train/labels.parquet", "eval/m0_behavior.parquet",
          "eval/step_000000/result.json", "eval/step_000000/items.parquet")  # M0 on the shared eval set


def reuse(config: Path) -> None:
    """Copy sampled tables from a sibling arm that has them: identical inputs make them current (the staleness rule
    checks every input), different ones are re-run by `introspect run` — so sampling runs once per seed."""
    import shutil

    run_dir = ROOT / load_run_config(config).run_dir
    for rel in SHARED:
        if (run_dir / rel).exists():
            continue
        owner = lambda p: p.parents[len(Path(rel).parts) - 1]  # noqa: E731  (the arm folder holding p)
        found = [*run_dir.parent.glob(f"*/{rel}"), *ARCHIVE.glob(f"*/{rel}")]  # M0's step 0 is also archived
        # a same-seed sibling first: its training tables have this arm's inputs (another seed's would be re-run)
        for other in sorted(found, key=lambda p: (owner(p).name[-2:] != config.stem[-2:], p)):
            if owner(other) != run_dir:
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(other, run_dir / rel)
                break


def run(config: Path) -> None:
    reuse(config)
    print(f"=== introspect run {config.relative_to(ROOT)}", flush=True)
    subprocess.run([sys.executable, "-m", "introspect.cli", "run", str(config)], check=True, cwd=ROOT)
    archive(config)


def eval_dir(config: Path) -> Path:
    """The arm's eval folder: the run directory's when it has results, else the committed archive's."""
    return results_dir(config, ARCHIVE, ROOT) or ARCHIVE / config.stem / "eval"


def archive(config: Path) -> None:
    """Copy a finished arm's train/metrics.jsonl, eval/results.json and eval/step_*/{items.parquet,result.json} into
    the experiment's archive, ARCHIVE/ARM/ (the run directory's layout, so scripts/early_warning.py reads it as a run)."""
    import shutil

    run_dir = ROOT / load_run_config(config).run_dir
    if not (run_dir / "eval" / "results.json").is_file():
        return
    dest = ARCHIVE / config.stem
    for src in [run_dir / "train" / "metrics.jsonl", run_dir / "eval" / "results.json",
                *sorted(run_dir.glob("eval/step_*/items.parquet")), *sorted(run_dir.glob("eval/step_*/result.json"))]:
        target = dest / src.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    print(f"[claims] archived {run_dir} -> {dest.relative_to(ROOT)}")


def finished(config: Path) -> bool:
    return (eval_dir(config) / "results.json").is_file()


def results(config: Path) -> dict:
    return json.loads((eval_dir(config) / "results.json").read_text())


def choose_lambda() -> None:
    rows = {}
    for lam in LAMBDAS:
        config = CONFIGS / f"lambda_val_{lam}.yaml"
        run(config)
        last = max(results(config)["checkpoints"].values(), key=lambda r: r["step"])
        rows[lam] = {"agreement": last["agreement"], "drift": last["drift"], "n": last["n"]}
    ok = [lam for lam in LAMBDAS if rows[lam]["agreement"] >= MIN_VAL_AGREEMENT]
    chosen = ok[0] if ok else LAMBDAS[-1]
    out = {"rule": f"smallest lambda in {list(LAMBDAS)} with dev agreement >= {MIN_VAL_AGREEMENT}, else the largest",
           "runs": rows, "lambda_star": chosen}
    with atomic_path(ROOT / "docs" / "claims_lambda.json") as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def arm_items(config: Path, step: int) -> tuple[metrics.Items, metrics.Items, np.ndarray]:
    cfg = load_run_config(config)
    items, _ = read_table(eval_dir(config) / f"step_{step:06d}" / "items.parquet")
    choices = list(get_task(cfg.task, **cfg.task_options).choices)  # the task's choice set, as evaluation scores it
    texts = items["text"].tolist()
    self_it = metrics.items(texts, items["self_changed"], items["self_letter"], choices)
    orig_it = metrics.items(texts, items["orig_changed"], items["orig_letter"], choices)
    return self_it, orig_it, items["label_differs"].to_numpy()


def pooled(arms: list[tuple[metrics.Items, metrics.Items, np.ndarray]], metric: str, differing: bool = False,
           seed: int = 0) -> dict:
    """Mean over seeds of Self − Orig (metric), 95% CI from one item resample shared by all seeds (same eval set);
    on differing items, the per-seed differing items pooled and resampled."""
    rng = np.random.default_rng(seed)

    def value(idx_per_arm: list[np.ndarray]) -> float:
        return float(np.mean([metrics.point(s, i)[metric] - metrics.point(o, i)[metric]
                              for (s, o, _), i in zip(arms, idx_per_arm)]))

    if differing:
        sets = [np.flatnonzero(d) for _, _, d in arms]
        point = value(sets)
        boots = [value([rng.choice(s, len(s)) for s in sets]) for _ in range(N_BOOT)]
        n = int(sum(len(s) for s in sets))
    else:
        n = len(arms[0][2])
        point = value([np.arange(n)] * len(arms))
        boots = []
        for _ in range(N_BOOT):
            idx = rng.integers(0, n, n)
            boots.append(value([idx] * len(arms)))
    boots = np.array([b for b in boots if not np.isnan(b)])
    return {"value": point, "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))], "n": n}


def contrast(reg, noreg, seed: int = 0) -> dict:
    """(pooled Self − Orig EM at lambda > 0) − (the same at lambda = 0), one shared item resample."""
    rng = np.random.default_rng(seed)
    n = len(reg[0][2])

    def value(idx: np.ndarray) -> float:
        d = lambda arms: np.mean([metrics.point(s, idx)["exact_match"] - metrics.point(o, idx)["exact_match"] for s, o, _ in arms])  # noqa: E731
        return float(d(reg) - d(noreg))

    boots = np.array([value(rng.integers(0, n, n)) for _ in range(N_BOOT)])
    return {"value": value(np.arange(n)), "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def decide(valid_reg: bool, missing: list[str], n_arms: int, reg: dict | None, contrast_: dict | None) -> str:
    """The pre-registered decision rule (docs/claims.md), as written before any arm ran. `reg`: pooled Self − Orig EM
    at lambda* ({"value", "ci"}); `contrast_`: the lambda* − lambda=0 contrast of it; `missing`: arms not run."""
    if not valid_reg:
        decision = ("not a valid test: a lambda > 0 arm's last checkpoint failed a validity condition (see the table); "
                    "no verdict on the claim")
        if missing:
            decision += f" (final under the rule whatever the arms not run yet give: {', '.join(missing)})"
        return decision
    if missing:
        return (f"none yet: {len(missing)} of {n_arms} pre-registered arms not run ({', '.join(missing)}); "
                f"the rule needs both seeds of both arms")
    if reg is None or contrast_ is None:
        raise ValueError("every arm ran but the pooled estimate or the contrast is missing")
    if reg["ci"][0] > 0 and contrast_["ci"][0] > 0:
        return "supported"
    if reg["ci"][1] < REFUTE_BELOW:
        return "refuted"
    return "inconclusive"


def figure(arms: dict, path: Path) -> None:
    """Self − Orig EM (95% CI) and label–behaviour agreement per evaluated checkpoint, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm in sorted({k.split("@")[0] for k in arms}):
        keys = sorted((k for k in arms if k.startswith(arm + "@")), key=lambda k: int(k.split("@")[1]))
        steps = [int(k.split("@")[1]) for k in keys]
        d = [arms[k]["self_minus_orig"]["exact_match"] for k in keys]
        style = dict(marker="o", linestyle="--" if "_lam0_" in arm else "-", label=arm.replace("hint_expert_", ""))
        left.errorbar(steps, [x["value"] for x in d], yerr=[[x["value"] - x["ci"][0] for x in d],
                                                             [x["ci"][1] - x["value"] for x in d]], capsize=3, **style)
        right.plot(steps, [arms[k]["agreement"] for k in keys], **style)
    left.axhline(0, color="grey", lw=0.8)
    left.set(xlabel="training step", ylabel="Self − Orig Exact Match (95% CI)", title="coupling")
    right.axhline(0.70, color="grey", lw=0.8, linestyle=":")
    right.set(xlabel="training step", ylabel="label–behaviour agreement", title="validity: agreement ≥ 0.70 (λ > 0)",
              ylim=(0, 1.02))
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def table() -> None:
    lam_star = json.loads((ROOT / "docs" / "claims_lambda.json").read_text())["lambda_star"] if (ROOT / "docs" / "claims_lambda.json").is_file() else "1"
    ci = lambda m: f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"  # noqa: E731
    lines = ["| arm | step | Self EM [95% CI] | Orig EM [95% CI] | Self − Orig EM [95% CI] | on differing items (n) | HC-F1 Self − Orig | agreement | validity |",
             "|---|---|---|---|---|---|---|---|---|"]
    out: dict = {"lambda_star": lam_star, "arms": {}}
    groups: dict[str, list] = {"reg": [], "noreg": []}
    valid_reg = True
    configs = sorted(ARMS.glob("hint_expert_lam*_s*.yaml"))
    missing = [c.stem for c in configs if not finished(c)]
    for config in configs:
        if config.stem in missing:
            lines.append(f"| {config.stem} | — | not run yet | | | | | | |")
            continue
        res = results(config)
        for key in sorted(res["checkpoints"], key=int)[1:]:
            r = res["checkpoints"][key]
            v = Verdict(**r["verdict"])
            d, dd = r["self_minus_orig"]["exact_match"], r.get("self_minus_orig_on_differing", {}).get("exact_match")
            hc = r["self_minus_orig"]["has_changed_f1"]
            lines.append(f"| {config.stem} | {key} | {ci(r['self']['exact_match'])} | {ci(r['orig']['exact_match'])} | "
                         f"{signed(d)} | " + (f"{signed(dd)} ({r['n_label_differs']})" if dd else "n/a (0)")
                         + f" | {signed(hc)} | {r['agreement']:.2f} | {v.line()}"
                         + (" (λ = 0 is the contrast arm: the rule requires validity of λ > 0 arms only)"
                            if "_lam0_" in config.stem and not v.valid else "") + " |")
            out["arms"][f"{config.stem}@{key}"] = {"verdict": r["verdict"], "self_minus_orig": r["self_minus_orig"],
                                                    "agreement": r["agreement"]}
        last = max(int(k) for k in res["checkpoints"])
        lam_zero = "_lam0_" in config.stem
        groups["noreg" if lam_zero else "reg"].append(arm_items(config, last))
        if not lam_zero and not res["checkpoints"][str(last)]["verdict"]["valid"]:
            valid_reg = False
    summary = {}
    for name, arms in groups.items():
        if arms:
            summary[name] = {m: pooled(arms, m) for m in ("exact_match", "has_changed_f1")}
            summary[name]["exact_match_on_differing"] = pooled(arms, "exact_match", differing=True)
    if groups["reg"] and groups["noreg"]:
        summary["contrast_reg_minus_noreg"] = contrast(groups["reg"], groups["noreg"])
    decision = decide(valid_reg, missing, len(configs), summary.get("reg", {}).get("exact_match"),
                      summary.get("contrast_reg_minus_noreg"))
    out.update(pooled=summary, decision=decision, arms_not_run=missing)
    md = [f"# Claims experiment {EXPERIMENT}: results (written by `python scripts/claims.py --experiment {EXPERIMENT} table`)", "", *lines, "",
          "Pooled over seeds (last checkpoint; mean of per-seed Self − Orig, 95% paired-bootstrap CI over items):", ""]
    names = {"reg": f"λ* = {lam_star}", "noreg": "λ = 0"}
    for name, arms in groups.items():
        if arms:
            s = summary[name]
            md.append(f"- {names[name]} ({len(arms)} seed(s)): Self − Orig EM {signed(s['exact_match'])} (n {s['exact_match']['n']}); "
                      f"on differing items {signed(s['exact_match_on_differing'])} (n {s['exact_match_on_differing']['n']}); "
                      f"HC-F1 Self − Orig {signed(s['has_changed_f1'])}")
    if "contrast_reg_minus_noreg" in summary:
        md.append(f"- contrast (λ* − λ = 0) of pooled Self − Orig EM: {signed(summary['contrast_reg_minus_noreg'])}")
    md += ["", f"**Decision by the pre-registered rule: {decision}**", ""]
    if out["arms"]:
        md += [f"![Self − Orig and agreement per checkpoint]({RESULTS.name}.png)", ""]
        figure(out["arms"], RESULTS.with_suffix(".png"))
    for suffix, text in ((".md", "\n".join(md)), (".json", json.dumps(out, indent=2))):
        with atomic_path(RESULTS.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["lambda", "arms", "table", "archive"])
    ap.add_argument("--experiment", choices=sorted(EXPERIMENTS), default="1",
                    help="which pre-registered experiment's arms (docs/claims.md): 1 (configs/claims/) or 2 "
                         "(configs/claims_v2/)")
    ap.add_argument("--force", action="store_true", help="lambda: re-run the selection even though "
                    "docs/claims_lambda.json records it (the arms were set from that file)")
    args = ap.parse_args()
    global EXPERIMENT, ARMS, ARCHIVE, RESULTS
    EXPERIMENT = args.experiment
    ARMS, ARCHIVE, RESULTS = EXPERIMENTS[EXPERIMENT]
    if args.what == "lambda":
        if (ROOT / "docs" / "claims_lambda.json").is_file() and not args.force:
            print("lambda* is recorded in docs/claims_lambda.json (the arms were set from it): skip; --force re-runs it")
        else:
            choose_lambda()
    elif args.what == "arms":
        chosen = ROOT / "docs" / "claims_lambda.json"
        if not chosen.is_file():
            sys.exit("run `python scripts/claims.py lambda` first: the lambda > 0 arms use lambda* from the validation split")
        lam_star = float(json.loads(chosen.read_text())["lambda_star"])
        for config in sorted(ARMS.glob("hint_expert_lamstar_s*.yaml")):
            if load_run_config(config).train["weights"]["behavior_kl"] != lam_star:
                sys.exit(f"{config}: train.weights.behavior_kl must be lambda* = {lam_star} (docs/claims_lambda.json); "
                         f"set it in the config and commit before running the arms")
        # seed by seed, the regulariser arm first: a partial run still pairs each lambda* arm with its lambda = 0 arm
        for config in sorted(ARMS.glob("hint_expert_lam*_s*.yaml"), key=lambda c: (c.stem[-2:], "_lam0_" in c.stem)):
            if finished(config):  # its results are in the run directory or the committed archive
                print(f"=== {config.stem}: finished ({eval_dir(config).relative_to(ROOT)}): skip", flush=True)
                continue
            run(config)
        table()
    elif args.what == "archive":
        for config in sorted(ARMS.glob("hint_expert_lam*_s*.yaml")):
            archive(config)
    else:
        table()


if __name__ == "__main__":
    main()
