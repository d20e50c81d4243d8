"""Agreement of two models' behaviour and labels on the same pairs (e.g. Gemma-3-270M vs SmolLM2-135M).

    python scripts/cross_family.py A/behavior.parquet B/behavior.parquet [--out docs/cross_family.json]

Both tables must hold the same pairs (same task, split, n, seed). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from introspect.behavior import summarize
from introspect.tables import read_table
from introspect.config import UserError


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    (a, ma), (b, mb) = read_table(args.a), read_table(args.b)
    if ma["pairs_hash"] != mb["pairs_hash"]:
        raise UserError(f"{args.a} and {args.b} hold different pairs (pairs_hash {ma['pairs_hash']} vs {mb['pairs_hash']})")
    b = b.set_index("pair_id").loc[a["pair_id"]].reset_index()
    choices = ma["choices"]
    rows = {
        "answer with C": float(np.mean(a["answer"] == b["answer"])),
        "answer without C": float(np.mean(a["answer_without"] == b["answer_without"])),
        "changed (verdict)": float(np.mean(a["changed"] == b["changed"])),
        "label (changed, letter)": float(np.mean((a["changed"] == b["changed"]) & (a["answer_without"] == b["answer_without"]))),
    }
    sa, sb = summarize(a, choices), summarize(b, choices)
    out = {"a": ma["model_id"], "b": mb["model_id"], "n": len(a), "agreement": rows, "summary_a": sa, "summary_b": sb}
    print(f"| agreement on {len(a)} pairs | {ma['model_id']} vs {mb['model_id']} |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1%} |")
    for name, s in ((ma["model_id"], sa), (mb["model_id"], sb)):
        print(f"{name}: changed {s['changed_rate']:.1%}, without C {s['answers_without']}, with C {s['answers_with']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
