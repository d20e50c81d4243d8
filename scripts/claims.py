"""The pre-registered experiments of docs/claims.md, by their old commands: a thin wrapper over
`introspect experiment run|table|archive SPEC` (src/introspect/experiment_runs.py, experiment_table.py).

    python scripts/claims.py [--experiment 1|2] lambda|arms|table|archive
      lambda: the λ selection alone (skipped when docs/claims_lambda.json records it)
      arms|table|archive = introspect experiment run|table|archive configs/experiments/claims_v1.yaml (experiment 1)
                                                                    configs/experiments/claims_v2.yaml (experiment 2)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from introspect import cli

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"1": "configs/experiments/claims_v1.yaml", "2": "configs/experiments/claims_v2.yaml"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["lambda", "arms", "table", "archive"])
    ap.add_argument("--experiment", choices=sorted(SPECS), default="1")
    args = ap.parse_args()
    os.chdir(ROOT)  # the specs' paths are relative to the repository root
    if args.what == "lambda":  # the λ selection alone, as before: once, its record kept
        from introspect.experiment import load_spec
        from introspect.experiment_runs import choose_lambda

        spec, _ = load_spec(SPECS[args.experiment])
        record = Path(spec.lambda_selection.record)
        if record.is_file():
            print(f"lambda* is recorded in {record} (the arms were set from it): skip")
        else:
            choose_lambda(spec)
        return 0
    action = {"arms": "run"}.get(args.what, args.what)  # run: every arm not finished, then the table
    return cli.main(["experiment", action, SPECS[args.experiment]])


if __name__ == "__main__":
    raise SystemExit(main())
