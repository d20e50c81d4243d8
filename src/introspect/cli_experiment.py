"""`introspect experiment` (controls): its flags and its handler. The spec and the controls are experiment.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_experiment(args: argparse.Namespace) -> None:
    from . import experiment

    spec, spec_hash = experiment.load_spec(args.spec)
    if args.n_perm is not None:
        spec.controls.n_perm = args.n_perm
    report = experiment.controls_report(spec, spec_hash)
    print(experiment.format_controls(report))
    if args.out:
        experiment.write_controls(report, Path(args.out))
        print(f"[experiment] wrote {Path(args.out).with_suffix('.md')} and .json")


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
    p.set_defaults(fn=cmd_experiment)
    return act
