"""Does docs/experiments.md state the demo headline a fresh `make demo` gives? (issue 11: reproducible docs)

    make demo && python tools/check_demo_docs.py        # or: make check-demo

Formats the last checkpoint of runs/demo/eval/results.json as the line the docs carry (`demo headline: ...`) and
exits 1, printing both, when the docs say something else. The demo is deterministic on CPU (same seed, same numbers),
so any difference means the code, the model conversion or the data changed since the docs were written: the docs'
`demo inputs:` line (the converted model's weights hash and the train / eval pairs hashes) says which — a different
weights hash is the model conversion, a different pairs hash the data, both equal the code or the libraries.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def headline(res: dict) -> str:
    last = max(res["checkpoints"].values(), key=lambda r: r["step"])
    d = last["self_minus_orig"]["exact_match"]
    return (f"demo headline: step {last['step']} Self EM {last['self']['exact_match']['value']:.3f}, Orig EM "
            f"{last['orig']['exact_match']['value']:.3f}, Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], "
            f"label differs on {last['n_label_differs']} of {last['n']}, valid test: {last['verdict']['valid']}")


def inputs_line(run: Path) -> str:
    """The converted model's weights hash and the hashes of the train and eval pairs, from the tables' provenance."""
    from introspect.tables import read_meta

    train, ev = read_meta(run / "train" / "behavior.parquet"), read_meta(run / "eval" / "m0_behavior.parquet")
    return f"demo inputs: weights {train['weights_hash']}, train pairs {train['pairs_hash']}, eval pairs {ev['pairs_hash']}"


def main() -> int:
    res_path = ROOT / "runs" / "demo" / "eval" / "results.json"
    if not res_path.is_file():
        print(f"{res_path} does not exist: run `make demo` first", file=sys.stderr)
        return 2
    fresh = headline(json.loads(res_path.read_text()))
    docs = (ROOT / "docs" / "experiments.md").read_text()
    documented = re.findall(r"demo headline: [^\n`]*", docs)
    fresh_inputs = inputs_line(res_path.parents[1])
    documented_inputs = re.findall(r"demo inputs: [^\n`]*", docs)
    # each documented headline goes with the inputs line that follows it (the data in ../shared/data has changed
    # between machines: docs/experiments.md keeps one pair per input set that was measured)
    if (fresh, fresh_inputs) in list(zip(documented, documented_inputs)):
        print(f"docs/experiments.md matches the fresh run: {fresh}; {fresh_inputs}")
        return 0
    print(f"docs/experiments.md says: {documented or 'no demo headline line'}\nthe fresh run gives:    {fresh}", file=sys.stderr)
    print(f"docs/experiments.md says: {documented_inputs or 'no demo inputs line'}\nthe fresh run has:      {fresh_inputs}"
          + ("" if fresh_inputs in documented_inputs else "  (the model conversion or the data differ: see which hash)"),
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
