"""`introspect audit` (init, add, show, diff, verify): its flags and its handler. The ledger itself is audit.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .run_config import EvalConfig, RunConfig


def cmd_audit(args: argparse.Namespace) -> None:
    from . import audit

    if args.action == "init":
        audit.init(Path(args.ledger), Path(args.pairs), Path(args.labels), n=args.n)
    elif args.action == "add":
        audit.add(Path(args.ledger), args.model, tag=args.tag, note=args.note or "", precision=args.precision,
                  verify_margin=args.verify_margin, seed=args.seed, n_boot=args.n_boot, batch_size=args.batch_size,
                  max_new_tokens=args.max_new_tokens, device=args.device,
                  witness=Path(args.witness) if args.witness else None)
    elif args.action == "show":
        audit.show(Path(args.ledger), Path(args.png) if args.png else None)
    elif args.action == "diff":
        audit.diff(Path(args.ledger), args.a, args.b, Path(args.csv) if args.csv else None)
    else:
        audit.verify(Path(args.ledger), head=args.head, witness=Path(args.witness) if args.witness else None)


def add_audit_parser(sub: Any) -> Any:
    """Add the `audit` subcommand to the CLI's subparsers; returns its own subparsers (for per-action usage)."""
    p = sub.add_parser("audit", help="audit ledger: a frozen explanation set checked across model versions (SQLite)")
    act = p.add_subparsers(dest="action", required=True)
    a = act.add_parser("init", help="freeze pairs + fixed labels into a new ledger")
    a.add_argument("ledger")
    a.add_argument("--pairs", required=True, help="BehaviorTable Parquet: the pairs and M0's behaviour on them")
    a.add_argument("--labels", required=True, help="labels Parquet (`introspect label`): the fixed explanations' labels")
    a.add_argument("--n", type=int, default=0, help="freeze only the first N pairs (0 = all)")
    a = act.add_parser("add", help="behaviour + explanations of one model version, scored and appended")
    a.add_argument("ledger")
    a.add_argument("model", help="a model (registry name, local dir) or a training checkpoint dir (RUN/train/checkpoints/step_N)")
    a.add_argument("--tag", required=True, help="a unique name for this version, e.g. v2")
    a.add_argument("--note", default=None)
    a.add_argument("--precision", default=RunConfig.precision, choices=["bf16", "fp32"])
    a.add_argument("--verify-margin", type=float, default=RunConfig.verify_margin)
    a.add_argument("--device", default=RunConfig.device, help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    a.add_argument("--n-boot", type=int, default=EvalConfig.n_boot)
    a.add_argument("--batch-size", type=int, default=EvalConfig.batch_size, help="explanations generated per batch")
    a.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens)
    a.add_argument("--witness", default=None, help="append the new head to this JSONL file (keep it outside the "
                   "ledger's reach; `audit verify --witness` checks every head in it)")
    a = act.add_parser("show", help="history of every version, a figure, and flagged versions")
    a.add_argument("ledger")
    a.add_argument("--png", default=None, help="figure path (default: LEDGER with .png)")
    a = act.add_parser("diff", help="per item: did behaviour and explanation change together between two versions?")
    a.add_argument("ledger")
    a.add_argument("a", metavar="V1")
    a.add_argument("b", metavar="V2")
    a.add_argument("--csv", default=None, help="write the per-item comparison here")
    a = act.add_parser("verify", help="recompute the hash chain; fails on any modified row; prints the head")
    a.add_argument("ledger")
    a.add_argument("--head", default=None, metavar="N:HASH", help="a head printed earlier: row N must still hash to it")
    a.add_argument("--witness", default=None, help="a witness file of heads (`audit add --witness`): each must be in "
                   "the chain")
    p.set_defaults(fn=cmd_audit)
    return act
