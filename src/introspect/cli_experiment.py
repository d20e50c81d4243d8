"""`introspect experiment` (run, table, archive, controls) and `introspect intervene`: their flags and handlers. The
spec and the controls are experiment.py, the table and its rule experiment_table.py, the arms experiment_runs.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import UserError
from .intervention_spec import InterventionSpec, validate_intervention


def cmd_experiment(args: argparse.Namespace) -> None:
    from . import experiment

    spec, spec_hash = experiment.load_spec(args.spec)
    if args.action in ("run", "table", "archive"):
        from . import experiment_runs, experiment_table

        if args.action in ("table", "run") and not spec.results:
            raise UserError(f"{args.spec}: config key results (the table's path stem) is needed for `{args.action}`")
        if args.action == "run":
            experiment_runs.run(spec)
        if args.action == "archive":
            experiment_runs.archive(spec)
        else:
            experiment_table.table(spec)
            print(f"[experiment] wrote {spec.results}.md, .json and .png")
        return
    if args.n_perm is not None:
        spec.controls.n_perm = args.n_perm
    planned = list(spec.seeds)
    if args.partial:
        spec = experiment.partial(spec)
    report = experiment.controls_report(spec, spec_hash)
    if args.partial:
        report["partial"] = {"planned": planned}
    print(experiment.format_controls(report))
    if args.out:
        experiment.write_controls(report, Path(args.out))
        print(f"[experiment] wrote {Path(args.out).with_suffix('.md')} and .json")


def cmd_intervene(args: argparse.Namespace) -> None:
    from . import intervention
    from .run_config import config_of_run

    spec = validate_intervention(InterventionSpec(step=args.step, steps=args.steps, mu=args.mu, lam=args.lam,
                                                  treatment=args.treatment, lr=args.lr, seed=args.seed,
                                                  metric=args.metric, n_boot=args.n_boot),
                                 "flags --steps --n-boot --mu --lam --lr")
    print(intervention.format_result(intervention.run(config_of_run(args.run_dir), spec)))


def add_intervene_parser(sub: Any) -> None:
    p = sub.add_parser("intervene", help="causal intervention test: move behaviour on a seeded half of the eval items "
                       "(no explanation loss), regenerate explanations, difference-in-differences")
    p.add_argument("run_dir", help="an evaluated run (RUN/eval/m0_behavior.parquet and RUN/train/checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="the explainer checkpoint (default: the last)")
    d = InterventionSpec
    p.add_argument("--steps", type=int, default=d.steps, help="behaviour-only optimiser steps")
    p.add_argument("--mu", type=float, default=d.mu, help="the treatment's weight on the treated half")
    p.add_argument("--treatment", default=d.treatment, choices=["sycophancy", "gold"],
                   help="sycophancy: answer on x pulled to the checkpoint's answer on x∖C; gold: toward the gold answer")
    p.add_argument("--lam", type=float, default=d.lam, help="KL weight to the checkpoint's own behaviour, control half")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed, help="the treated/control split and the batch draw")
    p.add_argument("--metric", default=d.metric, choices=["verdict_match", "exact_match"])
    p.add_argument("--n-boot", type=int, default=d.n_boot)
    p.set_defaults(fn=cmd_intervene)


def add_experiment_parser(sub: Any) -> Any:
    """Add the `experiment` subcommand; returns its own subparsers (for per-action usage)."""
    p = sub.add_parser("experiment", help="declarative experiments (arms x seeds): the controls that tell coupling "
                       "from shared drift")
    act = p.add_subparsers(dest="action", required=True)
    a = act.add_parser("controls", help="other-model, chance, temporal and seed-level controls of a spec's finished "
                       "arms, and the coupling verdict (reads stored results: no model is loaded)")
    a.add_argument("spec", help="experiment spec YAML (configs/experiments/)")
    a.add_argument("--out", default=None, help="write OUT.md and OUT.json (e.g. docs/claims_v2_controls)")
    a.add_argument("--n-perm", type=int, default=None, help="override controls.n_perm (the within-strata shuffles)")
    a.add_argument("--partial", action="store_true", help="only the seeds whose arms have finished, while the others "
                   "run: exploratory, marked as not the pre-registered verdict")
    for action, text in (("run", "the λ selection (if the spec has one and its record is missing), every arm not "
                          "finished (each an `introspect run`, archived when done), then the table"),
                         ("table", "the table and the pre-registered rule's decision from the finished arms (run "
                          "directories, else the archive) -> RESULTS.md/.json/.png"),
                         ("archive", "copy finished arms' training logs and evaluation into the spec's archive")):
        a = act.add_parser(action, help=text)
        a.add_argument("spec", help="experiment spec YAML (configs/experiments/); run from the repository root")
    p.set_defaults(fn=cmd_experiment)
    return act
