"""GPU check: the same sampling and training on CUDA and on CPU, compared; throughput on the GPU.

    python scripts/gpu_check.py [--model tiny-random --model smollm2-135m-instruct] [--pairs 64 --steps 5]
    make gpu-check

Per model: (1) B(M) on `--pairs` Hint-MMLU pairs (claims setting) on CPU and on CUDA, bf16 with the fp32 re-check:
answers must agree on >= 99% of prompts; (2) `--steps` LoRA steps from the same tables on each device: losses must
agree within bf16 tolerance (relative 5e-2 per step); (3) sampling pairs/s and training examples/s on CUDA, and the
training step's model FLOPs utilisation (6 x params x tokens / time / peak bf16 FLOP/s of the GPU). Exit 1 when a check
fails, 2 when there is no CUDA device. Results: benchmarks/results/gpu_check.json (docs/benchmarks.md#gpu).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from introspect import behavior, labels
from introspect import tables as tbl
from introspect.paths import data_root
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import LoraSpec, LossWeights, TrainConfig
from introspect.train import trainer as T

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sample(model_name: str, device: str, pairs: list, task) -> tuple:
    m = load_model(model_name, device=device)
    t0 = time.time()
    df, _ = behavior.sample_behavior(m.model, m.tokenizer, task, pairs, precision="bf16", progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return df, time.time() - t0, m


def train(tables: Path, out: Path, model_name: str, device: str, steps: int) -> tuple[list[dict], float]:
    cfg = TrainConfig(behavior=str(tables / "behavior.parquet"), labels=str(tables / "labels.parquet"), out_dir=str(out),
                      model=model_name, steps=steps, lr=2e-4, warmup_steps=0, schedule="constant", explanation_per_step=4,
                      behavior_per_step=8, checkpoint_every=steps, probe_every=0, device=device,
                      lora=LoraSpec(rank=96, alpha=192), weights=LossWeights(explanation=1.0, behavior_kl=0.3))
    t0 = time.time()
    T.train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device here; run it on a GPU machine", file=sys.stderr)
        sys.exit(2)
    models = args.model or ["tiny-random", "smollm2-135m-instruct"]
    task = get_task("hint-mmlu", format="dot", hint="expert")
    pairs = task.pairs(data_root(args.data_root), "val", args.pairs, seed=0)
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "models": {}}
    failed = []
    for name in models:
        cpu_df, cpu_s, m = sample(name, "cpu", pairs, task)
        gpu_df, gpu_s, _ = sample(name, "cuda", pairs, task)
        agree = float(np.mean(np.r_[cpu_df["answer"] == gpu_df["answer"], cpu_df["answer_without"] == gpu_df["answer_without"]]))
        dp = float(np.max(np.abs(np.array(cpu_df["probs"].tolist()) - np.array(gpu_df["probs"].tolist()))))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            meta = tbl.table_meta(model_id=name, weights_hash=m.weights_hash, task=task, pairs=pairs, seed=0,
                                  split="val", precision="bf16", verify_margin=0.015)
            tbl.write_table(tmp / "behavior.parquet", cpu_df, meta)
            tbl.write_table(tmp / "labels.parquet", labels.make_labels(cpu_df, task), meta)
            cpu_rows, _ = train(tmp, tmp / "cpu", name, "cpu", args.steps)
            gpu_rows, gpu_train_s = train(tmp, tmp / "cuda", name, "cuda", args.steps)
        rel = max(abs(a["total"] - b["total"]) / max(abs(a["total"]), 1e-6) for a, b in zip(cpu_rows, gpu_rows))
        params = sum(p.numel() for p in m.model.parameters())
        tokens_per_s = gpu_rows[-1]["tokens_per_s"]
        peak = peak_flops()
        mfu = 6 * params * tokens_per_s / peak if peak else None
        r = {"prompts_agree": agree, "max_abs_prob_diff": dp, "max_rel_loss_diff": rel,
             "sampling_pairs_per_s": {"cpu": len(pairs) / cpu_s, "cuda": len(pairs) / gpu_s},
             "training_examples_per_s_cuda": args.steps * 12 / gpu_train_s, "training_tokens_per_s_cuda": tokens_per_s,
             "mfu": mfu, "losses_cpu": [x["total"] for x in cpu_rows], "losses_cuda": [x["total"] for x in gpu_rows]}
        report["models"][name] = r
        print(f"[gpu_check] {name}: answers agree on {agree:.1%} of prompts (max |Δp| {dp:.2e}); losses within "
              f"{rel:.2e} relative; sampling {r['sampling_pairs_per_s']['cuda']:.1f} pairs/s on CUDA vs "
              f"{r['sampling_pairs_per_s']['cpu']:.1f} on CPU; training {r['training_examples_per_s_cuda']:.1f} examples/s"
              + (f", MFU {mfu:.1%}" if mfu is not None else ""))
        if agree < 0.99:
            failed.append(f"{name}: answers agree on {agree:.1%} < 99%")
        if rel > 5e-2:
            failed.append(f"{name}: losses differ by {rel:.2e} relative > 5e-2")
    out = ROOT / "benchmarks" / "results" / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"[gpu_check] wrote {out}")
    for f in failed:
        print(f"[gpu_check] FAILED {f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
