"""`introspect compare A B`: two runs, or two models' behaviour on the same pairs, side by side.

  introspect compare RUN_A RUN_B             are two run directories the same run? training losses and probe, every
                                             checkpoint's Self/Orig and CIs, explanation texts and behaviour
                                             (exit 0 when identical, 1 otherwise; timings and paths are ignored)
  introspect compare A.parquet B.parquet     agreement of two BehaviorTables on the same pairs (answers, verdicts,
                                             labels), e.g. Gemma-3-270M vs SmolLM2-135M [--out FILE.json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .files import atomic_path
from .tables import read_table


def runs(a: Path, b: Path) -> bool:
    """Print the comparison of two run directories; True when they are the same run."""
    for r in (a, b):
        if not (r / "eval" / "results.json").is_file() or not (r / "train" / "metrics.jsonl").is_file():
            raise UserError(f"{r} is not an evaluated run directory (no train/metrics.jsonl or eval/results.json)")
    same = True
    la = [json.loads(x) for x in (a / "train" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "train" / "metrics.jsonl").read_text().splitlines()]
    d = max((abs(x.get(k, 0) - y.get(k, 0)) for x, y in zip(la, lb) for k in ("explanation", "behavior_kl", "agreement")),
            default=0.0)
    print(f"training: {len(la)} vs {len(lb)} steps, max |Δ| of explanation/behavior_kl/probe agreement {d:.3g}")
    same &= len(la) == len(lb) and d == 0
    ra, rb = (json.loads((r / "eval" / "results.json").read_text()) for r in (a, b))
    for step in sorted(ra["checkpoints"], key=int):
        x, y = ra["checkpoints"][step], rb["checkpoints"].get(step)
        if y is None:
            print(f"step {step}: missing in {b}")
            same = False
            continue
        ia, ib = (read_table(r / "eval" / f"step_{int(step):06d}" / "items.parquet")[0] for r in (a, b))
        eq = {"Self/Orig/CIs": all(x[k] == y[k] for k in ("self", "orig", "self_minus_orig")),
              "texts": list(ia["text"]) == list(ib["text"]),
              "behaviour": list(ia["answer"]) == list(ib["answer"]) and list(ia["answer_without"]) == list(ib["answer_without"])}
        d = x["self_minus_orig"]["exact_match"]
        print(f"step {step}: Self EM {x['self']['exact_match']['value']:.3f} Orig EM {x['orig']['exact_match']['value']:.3f} "
              f"Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]; identical: "
              + ", ".join(f"{k} {v}" for k, v in eq.items()))
        same &= all(eq.values())
    print("identical" if same else "DIFFERENT")
    return same


def behaviour(a_path: Path, b_path: Path, out: Path | None = None) -> dict[str, Any]:
    """Agreement of two BehaviorTables on the same pairs; prints one Markdown table."""
    from .behavior import summarize

    (a, ma), (b, mb) = read_table(a_path), read_table(b_path)
    if ma["pairs_hash"] != mb["pairs_hash"]:
        raise UserError(f"{a_path} and {b_path} hold different pairs (pairs_hash {ma['pairs_hash']} vs {mb['pairs_hash']}): "
                        f"sample both with the same task, split, n and seed")
    b = b.set_index("pair_id").loc[a["pair_id"]].reset_index()
    rows = {
        "answer with C": float(np.mean(a["answer"] == b["answer"])),
        "answer without C": float(np.mean(a["answer_without"] == b["answer_without"])),
        "changed (verdict)": float(np.mean(a["changed"] == b["changed"])),
        "label (changed, letter)": float(np.mean((a["changed"] == b["changed"]) & (a["answer_without"] == b["answer_without"]))),
    }
    sa, sb = summarize(a, ma["choices"]), summarize(b, ma["choices"])
    result = {"a": ma["model_id"], "b": mb["model_id"], "n": len(a), "agreement": rows, "summary_a": sa, "summary_b": sb}
    print(f"| agreement on {len(a)} pairs | {ma['model_id']} vs {mb['model_id']} |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1%} |")
    for name, s in ((ma["model_id"], sa), (mb["model_id"], sb)):
        print(f"{name}: changed {s['changed_rate']:.1%}, without C {s['answers_without']}, with C {s['answers_with']}")
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return result
