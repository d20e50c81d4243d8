"""Running an experiment's arms (`introspect experiment run|archive SPEC`): the λ selection when the spec has one,
then every arm × seed as a plain `introspect run` (each resumes after a kill and re-runs only what changed), seed by
seed with the primary arm first, each finished arm archived; then the table (experiment_table.py).

The archive (`spec.archive/ARM/`) keeps each finished arm's train/metrics.jsonl, eval/results.json and
eval/step_*/{items.parquet,result.json} (pair ids, explanations, labels and answers; no benchmark text), in the run
directory's layout, so the table and the controls re-make in a fresh checkout without re-running the arms.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import UserError
from .files import atomic_path
from .experiment import (ExperimentSpec, config_path, eval_dir, intervention_dir, intervention_results,
                         intervention_settings, results_dir)
from .run_config import load_run_config

# M0 on the shared eval set, and the training tables: copied from a sibling arm that has them, so sampling runs once
SHARED = ("train/behavior.parquet", "train/labels.parquet", "eval/m0_behavior.parquet",
          "eval/step_000000/result.json", "eval/step_000000/items.parquet")


def reuse(config: Path, archive: Path) -> None:
    """Copy sampled tables from a sibling arm that has them: identical inputs make them current (the staleness rule
    checks every input), different ones are re-run by `introspect run` — so sampling runs once per seed."""
    run_dir = Path(load_run_config(config).run_dir)
    for rel in SHARED:
        if (run_dir / rel).exists():
            continue
        owner = lambda p: p.parents[len(Path(rel).parts) - 1]  # noqa: E731  (the arm folder holding p)
        found = [*run_dir.parent.glob(f"*/{rel}"), *archive.glob(f"*/{rel}")]  # M0's step 0 is also archived
        # a same-seed sibling first: its training tables have this arm's inputs (another seed's would be re-run)
        for other in sorted(found, key=lambda p: (owner(p).name[-2:] != config.stem[-2:], p)):
            if owner(other) != run_dir:
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(other, run_dir / rel)
                break


def run_arm(config: Path, archive: Path) -> None:
    reuse(config, archive)
    print(f"=== introspect run {config}", flush=True)
    subprocess.run([sys.executable, "-m", "introspect.cli", "run", str(config)], check=True)
    archive_arm(config, archive)


def archive_arm(config: Path, archive: Path) -> None:
    """A finished arm's training log and evaluation -> archive/ARM/ (the run directory's layout)."""
    run_dir = Path(load_run_config(config).run_dir)
    if not (run_dir / "eval" / "results.json").is_file():
        return
    dest = archive / config.stem
    for src in [run_dir / "train" / "metrics.jsonl", run_dir / "eval" / "results.json",
                *sorted(run_dir.glob("eval/step_*/items.parquet")), *sorted(run_dir.glob("eval/step_*/result.json"))]:
        target = dest / src.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    print(f"[experiment] archived {run_dir} -> {dest}")


def archive(spec: ExperimentSpec) -> None:
    for arm in spec.arms:
        for seed in spec.seeds:
            archive_arm(config_path(spec, arm, seed), Path(spec.archive))


def choose_lambda(spec: ExperimentSpec) -> str:
    """Run the λ-selection configs and record λ* (the smallest λ whose validation agreement reaches the bar)."""
    sel = spec.lambda_selection
    rows = {}
    for lam in sel.values:
        config = Path(sel.configs) / f"{sel.prefix}{lam}.yaml"
        run_arm(config, Path(spec.archive))
        folder = results_dir(config, Path(spec.archive)) or Path(spec.archive) / config.stem / "eval"
        last = max(json.loads((folder / "results.json").read_text())["checkpoints"].values(), key=lambda r: r["step"])
        rows[lam] = {"agreement": last["agreement"], "drift": last["drift"], "n": last["n"]}
    ok = [lam for lam in sel.values if rows[lam]["agreement"] >= sel.min_agreement]
    chosen = ok[0] if ok else sel.values[-1]
    out = {"rule": f"smallest lambda in {list(sel.values)} with dev agreement >= {sel.min_agreement}, else the largest",
           "runs": rows, "lambda_star": chosen}
    with atomic_path(sel.record) as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return chosen


def run(spec: ExperimentSpec) -> None:
    """λ selection (once: its record is kept), then every arm not finished (seed by seed, primary first), archived."""
    sel = spec.lambda_selection
    if sel:
        lam_star = (json.loads(Path(sel.record).read_text())["lambda_star"] if Path(sel.record).is_file()
                    else choose_lambda(spec))
        for seed in spec.seeds:
            config = config_path(spec, spec.primary, seed)
            if load_run_config(config).train.weights.behavior_kl != float(lam_star):
                raise UserError(f"{config}: train.weights.behavior_kl must be lambda* = {lam_star} ({sel.record}); "
                                f"set it in the config and commit before running the arms")
    order = sorted(((seed, arm != spec.primary, arm) for arm in spec.arms for seed in spec.seeds))
    for seed, _, arm in order:
        config = config_path(spec, arm, seed)
        if eval_dir(spec, arm, seed) is not None:  # its results are in the run directory or the committed archive
            print(f"=== {config.stem}: finished ({eval_dir(spec, arm, seed)}): skip", flush=True)
            continue
        run_arm(config, Path(spec.archive))
    if spec.intervention is not None:
        run_interventions(spec)


def run_interventions(spec: ExperimentSpec) -> None:
    """The planned intervention tests, on the primary arm's last checkpoint of each planned seed; archived."""
    from . import intervention
    from .run_config import config_of_run

    done = intervention_results(spec)["per_seed"]
    for seed in spec.intervention.seeds:
        if f"s{seed}" in done:
            print(f"=== intervention s{seed}: finished: skip", flush=True)
            continue
        run_dir = Path(load_run_config(config_path(spec, spec.primary, seed)).run_dir)
        print(f"=== introspect intervene {run_dir} ({spec.intervention.settings})", flush=True)
        print(intervention.format_result(intervention.run(config_of_run(run_dir), intervention_settings(spec))), flush=True)
        found = intervention_dir(spec, run_dir)
        dest = Path(spec.archive) / run_dir.name / "intervention" / found.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("result.json", "before.parquet", "after.parquet"):
            shutil.copy2(found / name, dest / name)
        print(f"[experiment] archived {found} -> {dest}")
