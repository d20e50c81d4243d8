"""Training examples/s, old vs new side by side in one run: SmolLM2-135M + LoRA (rank 96), bf16 autocast, the
default step (each pair's explanation, x and x∖C as one prefix tree; explanation CE + KL to the cached p_M0).

    python benchmarks/bench_train.py --steps 8

  old_fp32_frozen   the frozen base in fp32: autocast casts every decoder weight to bf16 at every call (and again
                    in backward); it caches casts only of weights that require grad
  new_bf16_frozen   `frozen_bf16: true` (the default): the frozen decoder Linear weights stored in bf16 once
Both get the same batches (the variants take turns step by step after one warm-up round, so machine drift hits
them alike). Reports ms/step (median), examples/s, the ratio new/old, and the largest loss difference on the
same batch (must be within 1e-3; it is 0 when autocast's rounding is exactly what was stored).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any

import numpy as np
import torch

from introspect import behavior, labels
from introspect.config import data_root, seed_everything, set_threads, write_jsonl
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import LoraSpec, TrainConfig
from introspect.train import trainer as T


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--per-step", type=int, default=4, help="explanation examples (and behaviour pairs) per step")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rank", type=int, default=96)
    ap.add_argument("--out", default="benchmarks/results/bench_train.json")
    args = ap.parse_args()
    seed_everything(0)
    threads = set_threads()
    loaded = load_model(args.model, hash_weights=False)
    tok = loaded.tokenizer
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_root(), "val", args.pairs, 0)
    beh, _ = behavior.sample_behavior(loaded.model, tok, task, pairs, progress=False)
    lab = labels.make_labels(beh, task)
    with_c, without_c = behavior.encode_pairs(tok, task, pairs)
    expl = T.encode_explanations(tok, lab, 2048, "bench")
    p_m0, p_m0_without = np.array(beh["probs"].tolist()), np.array(beh["probs_without"].tolist())
    cids = behavior.choice_token_ids(tok, task.continuations)
    import copy

    def make(frozen_bf16: bool) -> Any:
        cfg = TrainConfig(behavior="-", labels="-", out_dir="-", lora=LoraSpec(rank=args.rank, alpha=2 * args.rank),
                          frozen_bf16=frozen_bf16)
        torch.manual_seed(0)
        model = T.wrap(copy.deepcopy(loaded.model), cfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(params, lr=1e-5), cfg

    variants = {"old_fp32_frozen": make(False), "new_bf16_frozen": make(True)}
    pad = tok.pad_token_id
    k = args.per_step
    n_params = sum(p.numel() for p in variants["new_bf16_frozen"][0].parameters() if p.requires_grad)
    print(f"{args.model} + LoRA r{args.rank} ({n_params / 1e6:.1f}M trainable), {k} examples/step, {threads} threads, "
          f"bf16 autocast")

    def one_step(name: str, step: int) -> tuple[float, dict[str, float]]:
        model, opt, cfg = variants[name]
        idx = np.random.default_rng([1, step]).choice(len(pairs), k, replace=False)
        t0 = time.perf_counter()
        with behavior.autocast("bf16"):
            losses = T.step_losses(model, cfg=cfg, expl=[expl[i] for i in idx], with_c=[with_c[i] for i in idx],
                                   without_c=[without_c[i] for i in idx], p_m0=p_m0[idx], p_m0_without=p_m0_without[idx],
                                   choice_ids=cids, pad_id=pad, packed=len(idx))
            sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, {n: float(v) for n, v in losses.items()}

    for name in variants:  # warm-up round
        one_step(name, 0)
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for step in range(1, args.steps + 1):
        for name in variants:
            t, lo = one_step(name, step)
            times[name].append(t)
            losses[name].append(lo)
    results: dict[str, Any] = {}
    for name in variants:
        ms = statistics.median(times[name]) * 1000
        results[name] = {"ms_per_step": round(ms, 1), "ms_all_steps": [round(t * 1000) for t in times[name]],
                         "examples_per_s": round(k / (ms / 1000), 3)}
        print(f"{name:<18} {ms:8.0f} ms/step  {k / (ms / 1000):6.3f} examples/s", flush=True)
    ratio = results["new_bf16_frozen"]["examples_per_s"] / results["old_fp32_frozen"]["examples_per_s"]
    diff = max(abs(a[n] - b[n]) for a, b in zip(losses["old_fp32_frozen"], losses["new_bf16_frozen"]) for n in a)
    print(f"examples/s new / old: {ratio:.2f}x; largest loss difference on the same batch: {diff:.2e}")
    summary = {"model": args.model, "lora_rank": args.rank, "per_step": k, "steps_timed": args.steps, "threads": threads,
               "ratio_new_over_old": round(ratio, 3), "max_loss_diff": diff, "peak_rss_gb": round(peak_rss_gb(), 2),
               **results}
    write_jsonl(args.out, [summary])
    print(f"peak RSS {peak_rss_gb():.2f} GB; wrote {args.out}")


if __name__ == "__main__":
    main()
