"""Does an early training signal predict whether the final checkpoint is coupled? (issue: coupling monitor, item 2)

    python scripts/early_warning.py [RUN ...]      # default: every finished run under runs/claims/ and runs/demo,
                                                   # and the archived claims arms (docs/claims_runs/, docs/claims_v2_runs/) not among them

Per finished run (train/metrics.jsonl + eval/results.json): early signals from the first 10-20% of training — the
mean training KL to M0 (`behavior_kl`), the slope of log explanation loss per 1% of training, and the probe's
label–behaviour agreement at the first probe within the first 20% (when the run probed) — and the outcome at the
last checkpoint: Self − Orig Exact Match, "coupled" (its 95% CI lower bound > 0), and its validity verdict. Reports
Spearman's rank correlation of each signal with Self − Orig and, for each signal, how often a median split of the
signal agrees with the coupled / not coupled outcome, with the number of runs. Writes docs/early_warning.{md,json}.
With a handful of runs this can only show a strong relation or none; it says which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from introspect.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation, tied values sharing their average rank (argsort ranks would order ties by
    position, i.e. arbitrarily)."""
    import pandas as pd

    rx, ry = pd.Series(x, dtype=float).rank().to_numpy(), pd.Series(y, dtype=float).rank().to_numpy()
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def early(run: Path) -> dict[str, float] | None:
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        return None
    steps = max(r["step"] for r in rows)
    lo, hi = 0.10 * steps, 0.20 * steps
    window = [r for r in rows if lo <= r["step"] <= hi]
    out: dict[str, float] = {"steps": steps}
    if window and all("behavior_kl" in r for r in window):
        out["kl_10_20"] = float(np.mean([r["behavior_kl"] for r in window]))
    if len(window) >= 2:
        x = np.array([100 * r["step"] / steps for r in window])
        y = np.log(np.array([max(r["explanation"], 1e-9) for r in window]))
        out["log_expl_slope_10_20"] = float(np.polyfit(x, y, 1)[0])
    probes = [r for r in rows if "agreement" in r and r["step"] <= hi]
    if probes:
        out["probe_agreement_le_20"] = float(probes[0]["agreement"])
    return out


def outcome(run: Path) -> dict[str, float]:
    res = json.loads((run / "eval" / "results.json").read_text())
    last = max(res["checkpoints"].values(), key=lambda r: r["step"])
    d = last["self_minus_orig"]["exact_match"]
    return {"self_minus_orig": d["value"], "ci_low": d["ci"][0], "coupled": bool(d["ci"][0] > 0), "n_eval": last["n"],
            "valid": bool(last["verdict"]["valid"]), "agreement": last["agreement"]}


def finished(run: Path) -> bool:
    return (run / "eval" / "results.json").is_file() and (run / "train" / "metrics.jsonl").is_file()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--carry", action="store_true", help="keep the rows of docs/early_warning.json whose run directory "
                    "is gone (runs/ is not committed), marked as carried, so the analysis grows across sessions")
    args = ap.parse_args()
    live = [r for r in sorted([*ROOT.glob("runs/claims/*"), ROOT / "runs" / "demo"]) if finished(r)]
    # archived claims arms (committed) stand in for run directories that are not here or not finished
    archived = [*ROOT.glob("docs/claims_runs/*"), *ROOT.glob("docs/claims_v2_runs/*")]  # experiments 1 and 2
    runs = args.runs or live + sorted(a for a in archived if a.name not in {r.name for r in live})
    table = []
    for run in runs:
        if not finished(run):
            continue
        e = early(run)
        if e:
            table.append({"run": run.name, **e, **outcome(run)})
    old = ROOT / "docs" / "early_warning.json"
    if args.carry and old.is_file():
        seen = {r["run"] for r in table}
        table += [{**r, "carried": True} for r in json.loads(old.read_text())["runs"] if r["run"] not in seen]
    signals = ["kl_10_20", "log_expl_slope_10_20", "probe_agreement_le_20"]
    summary = {}
    for s in signals:
        have = [r for r in table if s in r]
        if len(have) < 3:
            summary[s] = {"n": len(have), "note": "fewer than 3 runs have this signal"}
            continue
        x, y = [r[s] for r in have], [r["self_minus_orig"] for r in have]
        med = float(np.median(x))
        # high KL / steep loss fall / high agreement read as "coupled": count how often that matches the outcome
        high_means_coupled = s != "kl_10_20"
        pred = [(v > med) == high_means_coupled for v in x]
        acc = float(np.mean([p == r["coupled"] for p, r in zip(pred, have)]))
        summary[s] = {"n": len(have), "spearman_with_self_minus_orig": spearman(x, y), "median_split_accuracy": acc,
                      "coupled_runs": int(sum(r["coupled"] for r in have))}
    cols = ["run", "steps", "kl_10_20", "log_expl_slope_10_20", "probe_agreement_le_20", "self_minus_orig", "ci_low",
            "coupled", "valid", "n_eval"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["# Early warning: do early signals predict a coupled final checkpoint?", "",
          "Written by `python scripts/early_warning.py --carry` (the command, the runs it read and every number below;",
          "rows marked * were carried from an earlier run of the script whose run directory is no longer here).", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r.get(c, "—")) + ("*" if c == "run" and r.get("carried") else "") for c in cols) + " |"
           for r in table]
    md += ["", "| signal | runs | Spearman ρ with final Self − Orig | median-split accuracy for coupled | coupled runs |",
           "|---|---|---|---|---|"]
    for s, v in summary.items():
        md.append(f"| {s} | {v['n']} | " + (f"{v['spearman_with_self_minus_orig']:+.2f} | {v['median_split_accuracy']:.2f} | "
                                           f"{v['coupled_runs']} |" if "note" not in v else f"{v['note']} | | |"))
    n_valid = sum(bool(r.get("valid")) for r in table)
    md += ["", f"{len(table)} runs, {n_valid} of them a valid test of coupling (validity column, src/introspect/validity.py). "
           "\"coupled\" means only that the last checkpoint's Self − Orig 95% CI lies above 0"
           + (", so it is not evidence of coupling here" if n_valid == 0 else "")
           + f". With {len(table)} runs a rank correlation can show a strong relation or none, not a usable predictor; "
           "treat these numbers as a description of these runs."]
    for name, text in (("early_warning.md", "\n".join(md) + "\n"),
                       ("early_warning.json", json.dumps({"runs": table, "signals": summary}, indent=2))):
        with atomic_path(ROOT / "docs" / name) as tmp:
            tmp.write_text(text)
    print("\n".join(md))


if __name__ == "__main__":
    main()
