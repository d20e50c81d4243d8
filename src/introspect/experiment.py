"""Experiments as declarative specs: arms × seeds of `introspect run` configs, where their results live, their
decision rule, and the controls that decide whether a Self − Orig effect is coupling. Run from the repository root
(the spec's paths are relative to it):

    introspect experiment run configs/experiments/claims_v2.yaml        # λ selection if any, every arm, the table
    introspect experiment table configs/experiments/claims_v2.yaml      # the table and the rule's decision
    introspect experiment archive configs/experiments/claims_v2.yaml    # finished arms' results -> the archive
    introspect experiment controls configs/experiments/claims_v2.yaml [--out docs/claims_v2_controls]

A spec (YAML, typed by `ExperimentSpec`) names the folder of arm configs (`{arms[ARM]}_s{SEED}.yaml`, plain run
configs) and the archive of finished arms (`ARCHIVE/{arms[ARM]}_s{SEED}/eval/`); an arm's results are read from its
run directory when it has them, else from the archive, so the controls re-make in a fresh checkout. The spec's
content hash is written into every result. Committed before the runs, the spec is the pre-registration.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import controls as C
from .errors import UserError
from .files import atomic_path, read_yaml
from .hashing import stable_hash
from .intervention_spec import InterventionSpec, validate_intervention
from .run_config import load_run_config
from .tables import read_table
from .typed import build
from .validity import coupling, coupling_line, signed


@dataclass
class ControlsSpec:
    """Which controls and how they are scored (docs/claims.md#controls)."""

    metric: str = "verdict_match"  # the coupling verdict's metric: verdict_match (letter ignored) | exact_match
    step: int | None = None  # the checkpoint the verdict reads; null = each arm's last evaluated step
    strata: list[str] = field(default_factory=lambda: list(C.STRATA))  # the shuffle null holds these fixed
    n_boot: int = 2000  # bootstrap resamples of items
    n_perm: int = 1000  # within-strata shuffles
    seed: int = 0  # bootstrap and shuffle seed


@dataclass
class DecisionSpec:
    """The pre-registered decision rule of the experiment table (experiment_table.py; docs/claims.md)."""

    metric: str = "exact_match"  # the rule's statistic: pooled Self − Orig of this metric at each arm's last checkpoint
    refute_below: float = 0.02  # refuted when the pooled CI's upper bound is below this
    n_boot: int = 2000  # bootstrap resamples of items
    seed: int = 0  # bootstrap seed


@dataclass
class LambdaSelection:
    """How λ* was chosen before the arms ran (`introspect experiment run` runs it first when its record is missing)."""

    configs: str  # folder of the selection runs' configs, {prefix}{λ}.yaml
    values: list[str]  # the λ values tried, smallest first
    min_agreement: float = 0.80  # λ* = the smallest λ whose validation agreement is at least this, else the largest
    prefix: str = "lambda_val_"
    record: str = "docs/claims_lambda.json"  # where the choice is written; the arms' configs are set from it


@dataclass
class InterventionPlan:
    """Where the causal intervention test runs (`introspect intervene`, intervention.py) and with which settings."""

    seeds: list[int]  # the primary arm's seeds whose last checkpoint gets the test (a subset of the spec's seeds)
    settings: dict[str, Any] = field(default_factory=dict)  # InterventionSpec keys (steps, mu, treatment, lam, lr,
    # seed, metric, n_boot); the rest at their defaults


@dataclass
class ExperimentSpec:
    name: str  # one line: what is tested
    configs: str  # folder of the arms' run configs, one per arm and seed: {arms[ARM]}_s{SEED}.yaml
    archive: str  # folder of finished arms' eval results (committed): {arms[ARM]}_s{SEED}/eval/
    arms: dict[str, str]  # arm name -> config stem before _s{SEED}, e.g. lamstar: hint_expert_lamstar
    seeds: list[int]  # every arm runs on each seed
    primary: str  # the arm whose coupling is claimed
    sibling: str = ""  # the same-seed arm whose explainer is the other-model control (e.g. λ = 0); "" = none
    controls: ControlsSpec = field(default_factory=ControlsSpec)
    results: str = ""  # path stem of the table files (RESULTS.md, .json, .png) written by `introspect experiment table`
    title: str = ""  # the table's heading
    decision: DecisionSpec = field(default_factory=DecisionSpec)
    lambda_selection: LambdaSelection | None = None  # null = the arms' λ is fixed in their configs
    intervention: InterventionPlan | None = None  # null = no intervention test


def load_spec(path: str | Path) -> tuple[ExperimentSpec, str]:
    """The spec and its content hash; every key checked (exit 2 naming the key) before anything is read."""
    data = read_yaml(path, "introspect experiment SPEC")
    spec = build(ExperimentSpec, data, str(path))
    problems = []
    if spec.primary not in spec.arms:
        problems.append(f"primary {spec.primary!r} is not one of arms {sorted(spec.arms)}")
    if spec.sibling and spec.sibling not in spec.arms:
        problems.append(f"sibling {spec.sibling!r} is not one of arms {sorted(spec.arms)}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        problems.append("seeds must be a non-empty list without repeats")
    if spec.controls.metric not in C.CORRECTNESS:
        problems.append(f"controls.metric must be one of {list(C.CORRECTNESS)}")
    if set(spec.controls.strata) - set(C.STRATA):
        problems.append(f"controls.strata: choose from {list(C.STRATA)}")
    if spec.decision.metric not in C.CORRECTNESS or spec.decision.n_boot < 1:
        problems.append(f"decision.metric must be one of {list(C.CORRECTNESS)} and decision.n_boot >= 1")
    if spec.intervention is not None:
        if not spec.intervention.seeds or set(spec.intervention.seeds) - set(spec.seeds):
            problems.append("intervention.seeds must be a non-empty subset of seeds")
        unknown = set(spec.intervention.settings) - {f.name for f in dataclasses.fields(InterventionSpec)}
        if unknown:
            problems.append(f"intervention.settings: unknown keys {sorted(unknown)} (see introspect intervene --help)")
    if spec.controls.n_boot < 1 or spec.controls.n_perm < 1:
        problems.append("controls.n_boot and controls.n_perm must be >= 1")
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))
    return spec, stable_hash(data)


def run_name(spec: ExperimentSpec, arm: str, seed: int) -> str:
    return f"{spec.arms[arm]}_s{seed}"


def config_path(spec: ExperimentSpec, arm: str, seed: int) -> Path:
    """The run config of `arm` on `seed`: {configs}/{arms[arm]}_s{seed}.yaml."""
    return Path(spec.configs) / f"{run_name(spec, arm, seed)}.yaml"


def results_dir(config: Path, archive: Path, run_dir_root: Path | None = None) -> Path | None:
    """An arm's eval folder: its run directory's (`run_dir` of `config`, under `run_dir_root` if relative) when that
    has results, else the archive's (`archive/CONFIG_STEM/eval`); None if neither has results.json."""
    if config.is_file():
        live = Path(load_run_config(config).run_dir) / "eval"
        live = live if run_dir_root is None or live.is_absolute() else run_dir_root / live
        if (live / "results.json").is_file():
            return live
    archived = archive / config.stem / "eval"
    return archived if (archived / "results.json").is_file() else None


def eval_dir(spec: ExperimentSpec, arm: str, seed: int) -> Path | None:
    return results_dir(config_path(spec, arm, seed), Path(spec.archive))


def evaluated_steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*") if (p / "items.parquet").is_file())


def load_step(folder: Path, step: int) -> C.Step:
    items, _ = read_table(folder / f"step_{step:06d}" / "items.parquet")
    return C.Step(items.reset_index(drop=True))


def _per_metric(spec: ExperimentSpec, own: list[C.Step], m0: list[C.Step], sib: list[C.Step] | None,
                metric: str) -> dict[str, Any]:
    kw = dict(metric=metric, seed=spec.controls.seed, n_boot=spec.controls.n_boot)
    d_own = [C.self_minus_orig(o, o, metric) for o in own]
    out: dict[str, Any] = {"self_minus_orig": C.estimate(d_own, seed=kw["seed"], n_boot=kw["n_boot"]),
                           "over_seeds": C.over_seeds([d.mean() for d in d_own])}
    if sib:
        out["sibling"] = C.other_model(own, sib, **kw)
    if len(own) >= 2:
        rotated = own[1:] + own[:1]
        out["cross_seed"] = C.other_model(own, rotated, **kw)
        out["cross_seed_pairs"] = {f"s{a}<-s{b}": C.other_model([own[i]], [own[(i + 1) % len(own)]], **kw)
                                   for i, (a, b) in enumerate(zip(spec.seeds, spec.seeds[1:] + spec.seeds[:1]))}
    consts = C.constants(own, **kw)
    changed, letter = consts["best"].split(" ", 1)
    best_d = [C.self_minus_orig(C.constant_step(o, changed == "changed", letter), o, metric) for o in own]
    out["constants"] = consts
    out["over_best_constant"] = C.estimate([a - b for a, b in zip(d_own, best_d)], seed=kw["seed"], n_boot=kw["n_boot"])
    out["shuffle_null"] = C.shuffle_null(own, m0, strata=spec.controls.strata, metric=metric,
                                         n_perm=spec.controls.n_perm, seed=spec.controls.seed)
    return out


def partial(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec cut to the seeds whose primary (and sibling) arms have results: for reporting an experiment while its
    arms run. What it gives is exploratory, never the pre-registered verdict (the report says so)."""
    done = [s for s in spec.seeds if all(eval_dir(spec, a, s) is not None for a in {spec.primary, spec.sibling} - {""})]
    if not done:
        raise UserError(f"no seed of {spec.seeds} has finished arms yet: nothing to report")
    plan = spec.intervention
    if plan is not None:
        plan = dataclasses.replace(plan, seeds=[s for s in plan.seeds if s in done])
    return dataclasses.replace(spec, seeds=done, intervention=plan if plan and plan.seeds else None)


def controls_report(spec: ExperimentSpec, spec_hash: str) -> dict[str, Any]:
    """Every control of the spec on the primary arm's seeds (and the sibling's), at the verdict's step."""
    folders = {(arm, s): eval_dir(spec, arm, s) for arm in spec.arms for s in spec.seeds}
    missing = [run_name(spec, a, s) for (a, s), f in folders.items() if f is None and a in (spec.primary, spec.sibling)]
    if missing:
        raise UserError(f"no evaluated results for {', '.join(missing)} (neither its run directory nor "
                        f"{spec.archive}/): run the arm first (`introspect run {spec.configs}/{missing[0]}.yaml`)")
    prim = [folders[spec.primary, s] for s in spec.seeds]
    step = spec.controls.step if spec.controls.step is not None else min(evaluated_steps(f)[-1] for f in prim)
    for f in prim + ([folders[spec.sibling, s] for s in spec.seeds] if spec.sibling else []):
        if step not in evaluated_steps(f):
            raise UserError(f"{f}: no evaluated step {step} (config key controls.step; evaluated: {evaluated_steps(f)})")
    own = [load_step(f, step) for f in prim]
    m0 = [load_step(f, 0) for f in prim]
    sib = [load_step(folders[spec.sibling, s], step) for s in spec.seeds] if spec.sibling else None
    results = [json.loads((f / "results.json").read_text()) for f in prim]
    verdicts = [r["checkpoints"][str(step)].get("verdict", {}) for r in results]
    out: dict[str, Any] = {"spec": spec.name, "spec_hash": spec_hash, "step": step, "primary": spec.primary,
                           "sibling": spec.sibling, "seeds": spec.seeds, "verdict_metric": spec.controls.metric,
                           "valid_per_seed": [bool(v.get("valid")) for v in verdicts],
                           "metrics": {m: _per_metric(spec, own, m0, sib, m) for m in C.CORRECTNESS}}
    kw = dict(metric=spec.controls.metric, seed=spec.controls.seed, n_boot=spec.controls.n_boot)
    out["temporal"] = {f"s{s}": {f"{step}_vs_{t}": C.temporal(o, load_step(f, t), **kw)
                                 for t in evaluated_steps(f) if t not in (0, step)}
                       for s, f, o in zip(spec.seeds, prim, own)}
    out["earlier_steps"] = {str(t): C.estimate([C.self_minus_orig(x, x, spec.controls.metric) for x in
                                                (load_step(f, t) for f in prim)], seed=spec.controls.seed,
                                               n_boot=spec.controls.n_boot)
                            for t in sorted(set.intersection(*(set(evaluated_steps(f)) for f in prim))) if t not in (0, step)}
    m = out["metrics"][spec.controls.metric]
    others, others_over_seeds = {}, {}
    for key, name in (("sibling", "sibling"), ("cross_seed", "other seed")):
        if key in m:
            others[name] = m[key]["own_minus_other"]
            others_over_seeds[name] = m[key]["own_minus_other_over_seeds"]
    did = None
    if spec.intervention is not None:
        out["intervention"] = intervention_results(spec)
        per_seed = [r["toward_new_behaviour"] for r in out["intervention"]["per_seed"].values()]
        did = (C.over_seeds([x["value"] for x in per_seed]) if len(per_seed) >= 2 else per_seed[0]) if per_seed else \
            {"value": float("nan"), "ci": [float("nan")] * 2}  # planned and not run: the condition fails
        out["intervention"]["did"] = did
    v = coupling(valid=all(out["valid_per_seed"]), self_minus_orig=m["self_minus_orig"], own_minus_other=others,
                 over_constant=m["over_best_constant"], shuffle_p=m["shuffle_null"]["p_value"],
                 over_seeds=m["over_seeds"], intervention_did=did, own_minus_other_over_seeds=others_over_seeds,
                 intervention_missing=out.get("intervention", {}).get("missing", []))
    out["coupling_verdict"] = vars(v)
    out["coupling_line"] = coupling_line(v)
    return out


def intervention_settings(spec: ExperimentSpec) -> Any:
    return validate_intervention(build(InterventionSpec, dict(spec.intervention.settings), "intervention.settings"),
                                 "intervention.settings")


def intervention_dir(spec: ExperimentSpec, root: Path) -> Path | None:
    """The spec's intervention folder under a run directory (or its archived copy), None if there is none."""
    from .intervention import result_dir

    return result_dir(root, intervention_settings(spec), step=None)


def intervention_results(spec: ExperimentSpec) -> dict[str, Any]:
    """Each planned seed's intervention result (run directory first, then the archive); missing ones listed."""
    per_seed, missing = {}, []
    for seed in spec.intervention.seeds:
        name, config = run_name(spec, spec.primary, seed), config_path(spec, spec.primary, seed)
        roots = ([Path(load_run_config(config).run_dir)] if config.is_file() else []) + [Path(spec.archive) / name]
        found = [p for p in (intervention_dir(spec, r) for r in roots) if p is not None and (p / "result.json").is_file()]
        if found:
            per_seed[f"s{seed}"] = json.loads((found[0] / "result.json").read_text())
        else:
            missing.append(f"s{seed}")
    return {"per_seed": per_seed, "missing": missing}


def format_controls(r: dict[str, Any]) -> str:
    """The controls as Markdown: one block per metric, then the temporal control and the coupling verdict."""
    s = signed
    lines = [f"# Controls: {r['spec']}", "", f"Written by `introspect experiment controls` (spec hash {r['spec_hash']}); "
             f"arm {r['primary']} at step {r['step']}, seeds {r['seeds']}; validity per seed: {r['valid_per_seed']}.", ""]
    if r.get("partial"):
        lines += [f"**PARTIAL: seeds {r['seeds']} of the planned {r['partial']['planned']} (`--partial`): exploratory, "
                  "not the pre-registered verdict.**", ""]
    for metric, m in r["metrics"].items():
        lines += [f"## {metric}" + (" (the verdict's metric)" if metric == r["verdict_metric"] else ""), "",
                  f"- Self − Orig, pooled over seeds: {s(m['self_minus_orig'], 4)} (n {m['self_minus_orig']['n']})",
                  f"- over seeds (t-interval): {s(m['over_seeds'], 4)}; per seed "
                  + ", ".join(f"{x:+.4f}" for x in m["over_seeds"].get("per_seed", []))]
        if "sibling" in m:
            x = m["sibling"]
            lines += [f"- sibling ({r['sibling']}) explainer on {r['primary']}'s behaviour: Self − Orig {s(x['other'], 4)}; "
                      f"own − sibling **{s(x['own_minus_other'], 4)}**, per seed over seeds (t-interval) "
                      f"{s(x['own_minus_other_over_seeds'], 4)}; where the two behaviours differ "
                      f"{s(x['own_minus_other_where_behaviour_differs'], 4)} (n {x['n_behaviour_differs']}); identical "
                      "explanations " + ", ".join(f"{v:.0%}" for v in x["identical_explanations"]),
                      f"- {r['primary']}'s explainer on the sibling's behaviour (a behaviour contrast): "
                      f"{s(x['own_explainer_on_other_behaviour'], 4)}; own − that {s(x['own_minus_other_behaviour'], 4)}"]
        if "cross_seed" in m:
            x = m["cross_seed"]
            lines.append(f"- cross-seed, pooled: own − other seed's explainer {s(x['own_minus_other'], 4)}; own explainer "
                         f"on own − on other seed's behaviour {s(x['own_minus_other_behaviour'], 4)}")
            for k, y in m["cross_seed_pairs"].items():
                own_seed, other_seed = k.split("<-")
                lines.append(f"  - {own_seed}'s behaviour: its own explainer − {other_seed}'s explainer "
                             f"{s(y['own_minus_other'], 4)}; {own_seed}'s explainer on its own behaviour − on "
                             f"{other_seed}'s {s(y['own_minus_other_behaviour'], 4)}")
        c = m["constants"]
        lines += [f"- best constant explanation ({c['best']}): Self − Orig {s(c['best_value'], 4)}; the explainer minus "
                  f"it {s(m['over_best_constant'], 4)}",
                  f"- within-strata shuffle ({' × '.join(m['shuffle_null']['strata'])}, {m['shuffle_null']['n_perm']} "
                  f"shuffles): null mean {m['shuffle_null']['null_mean']:+.4f}, 95% of null "
                  f"[{m['shuffle_null']['null_ci'][0]:+.4f}, {m['shuffle_null']['null_ci'][1]:+.4f}], observed "
                  f"{m['shuffle_null']['observed']:+.4f}, p = {m['shuffle_null']['p_value']:.4f}", ""]
    lines += [f"## temporal ({r['verdict_metric']}): step {r['step']} explanations against their own step's behaviour "
              "minus another step's", ""]
    for seed, rows in r["temporal"].items():
        for k, t in rows.items():
            lines.append(f"- {seed} {k}: all items {s(t['all'], 4)}; items whose label moved {s(t['label_moved'], 4)} "
                         f"(n {t['label_moved']['n']})")
    for t, e in r["earlier_steps"].items():
        lines.append(f"- pooled Self − Orig ({r['verdict_metric']}) at step {t}: {s(e, 4)}")
    if "intervention" in r:
        iv = r["intervention"]
        lines += ["", "## intervention (behaviour moved on a seeded half of the items, explanations regenerated)", ""]
        for seed, x in iv["per_seed"].items():
            lines.append(f"- {seed}: behaviour moved treated − control {s(x['behaviour_moved'], 3)}; explanation moved "
                         f"toward the new behaviour, DiD {s(x['toward_new_behaviour'], 3)}")
        lines.append(f"- DiD {'over seeds (t-interval)' if len(iv['per_seed']) >= 2 else ''}: {s(iv['did'], 3)}"
                     + (f"; not run: {', '.join(iv['missing'])}" if iv["missing"] else ""))
    lines += ["", ("partial, not the verdict: " if r.get("partial") else "") + f"**{r['coupling_line']}**", ""]
    return "\n".join(lines)


def write_controls(r: dict[str, Any], out: Path) -> None:
    """OUT.md and OUT.json, atomically."""
    for suffix, text in ((".md", format_controls(r)), (".json", json.dumps(r, indent=2, default=_json_default))):
        with atomic_path(out.with_suffix(suffix)) as tmp:
            tmp.write_text(text)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    raise TypeError(type(x))
