"""Are two run directories the same run? Training losses, probe, and every checkpoint's Self/Orig, CIs, explanation
texts and behaviour, side by side (used for the refactor check in docs/experiments.md).

    python scripts/compare_runs.py RUN_A RUN_B       # exit 0 when identical, 1 otherwise
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def main(a: Path, b: Path) -> int:
    same = True
    la = [json.loads(x) for x in (a / "train" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "train" / "metrics.jsonl").read_text().splitlines()]
    d = max(abs(x.get(k, 0) - y.get(k, 0)) for x, y in zip(la, lb) for k in ("explanation", "behavior_kl", "agreement"))
    print(f"training: {len(la)} vs {len(lb)} steps, max |Δ| of explanation/behavior_kl/probe agreement {d:.3g}")
    same &= len(la) == len(lb) and d == 0
    ra, rb = (json.loads((r / "eval" / "results.json").read_text()) for r in (a, b))
    for step in sorted(ra["checkpoints"], key=int):
        x, y = ra["checkpoints"][step], rb["checkpoints"].get(step)
        if y is None:
            print(f"step {step}: missing in {b}")
            same = False
            continue
        ia, ib = (pq.read_table(r / "eval" / f"step_{int(step):06d}" / "items.parquet").to_pandas() for r in (a, b))
        eq = {"Self/Orig/CIs": all(x[k] == y[k] for k in ("self", "orig", "self_minus_orig")),
              "texts": list(ia["text"]) == list(ib["text"]),
              "behaviour": list(ia["answer"]) == list(ib["answer"]) and list(ia["answer_without"]) == list(ib["answer_without"])}
        d = x["self_minus_orig"]["exact_match"]
        print(f"step {step}: Self EM {x['self']['exact_match']['value']:.3f} Orig EM {x['orig']['exact_match']['value']:.3f} "
              f"Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]; identical: "
              + ", ".join(f"{k} {v}" for k, v in eq.items()))
        same &= all(eq.values())
    print("identical" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
