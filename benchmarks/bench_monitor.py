"""Cost of the coupling monitor, side by side in one run: training with the monitor (policy warn) vs without it.

    python benchmarks/bench_monitor.py [--steps 20 --every 10 --pairs 32]

SmolLM2-135M, the claims setting (Hint-MMLU `dot`, "expert" hint), LoRA rank 96, 4 explanation + 8 behaviour pairs
per step. Both arms train the same steps from the same tables; the monitor arm also generates explanations and
re-samples behaviour on `--pairs` held-out dev pairs every `--every` steps (and at the last step). Reports wall time
of each arm, seconds per check, and the ratio monitor / no monitor. Results: benchmarks/results/bench_monitor.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from introspect import behavior, labels
from introspect import tables as tbl
from introspect.paths import data_root
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import LoraSpec, LossWeights, MonitorSpec, TrainConfig
from introspect.train import trainer as T

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    root = data_root(args.data_root)
    task = get_task("hint-mmlu", format="dot", hint="expert")
    m = load_model("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for split, name, n in (("val", "behavior", 48), ("dev", "monitor", args.pairs)):
            pairs = task.pairs(root, split, n, seed=0)
            df, _ = behavior.sample_behavior(m.model, m.tokenizer, task, pairs, precision="bf16", progress=False)
            meta = tbl.table_meta(model_id="smollm2-135m-instruct", weights_hash=m.weights_hash, task=task, pairs=pairs,
                                  seed=0, split=split, precision="bf16", verify_margin=0.015)
            tbl.write_table(out / f"{name}.parquet", df, meta)
            if name == "behavior":
                tbl.write_table(out / "labels.parquet", labels.make_labels(df, task), meta)
        del m
        times = {}
        for arm, every in (("no_monitor", 0), ("monitor", args.every)):
            cfg = TrainConfig(behavior=str(out / "behavior.parquet"), labels=str(out / "labels.parquet"),
                              out_dir=str(out / arm), steps=args.steps, lr=2e-4, warmup_steps=2, explanation_per_step=4,
                              behavior_per_step=8, checkpoint_every=args.steps, probe_every=0, lora=LoraSpec(rank=96, alpha=192),
                              weights=LossWeights(explanation=1.0, behavior_kl=0.3),
                              monitor=MonitorSpec(every=every, pairs=str(out / "monitor.parquet") if every else "",
                                                  n=args.pairs, policy="warn"))
            t0 = time.time()
            T.train(cfg)
            times[arm] = time.time() - t0
    checks = len({*range(args.every, args.steps + 1, args.every), args.steps})
    res = {"steps": args.steps, "every": args.every, "monitor_pairs": args.pairs, "checks": checks,
           "seconds": {k: round(v, 1) for k, v in times.items()},
           "seconds_per_check": round((times["monitor"] - times["no_monitor"]) / checks, 1),
           "ratio_monitor_over_none": round(times["monitor"] / times["no_monitor"], 3)}
    print(json.dumps(res, indent=2))
    (ROOT / "benchmarks" / "results" / "bench_monitor.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
