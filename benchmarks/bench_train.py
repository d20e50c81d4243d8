"""Training step cost, side by side in one run: SmolLM2-135M + LoRA (rank 96), bf16 autocast, Hint-MMLU pairs.

    python benchmarks/bench_train.py --steps 8

  explanation_only         explanation CE on E examples
  expl+kl_cached_packed    + KL(p_M0 ‖ p_θ) on the same E pairs (x, x∖C), p_M0 read from the BehaviorTable, the
                           pair's explanation/x/x∖C run as one prefix tree (our default)
  expl+kl_cached_plain     the same losses with separate forwards (pack: false)
  expl+kl_live_reference   the usual way: separate policy forwards + a reference forward (adapter disabled,
                           no grad) on the same prompts to get p_M0 live
Reports ms/step (median over --steps after one warm-up step), tokens/s, ratios to explanation-only, peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from introspect import behavior, labels
from introspect.config import data_root, seed_everything, set_threads, write_jsonl
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import LoraSpec, LossWeights, TrainConfig
from introspect.train import objectives
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
    lab = labels.make_labels(beh, task, {})
    with_c, without_c = behavior.encode_pairs(tok, task, pairs)
    expl = T.encode_explanations(tok, lab, 2048, "bench")
    p_m0, p_m0_without = np.array(beh["probs"].tolist()), np.array(beh["probs_without"].tolist())
    cids = behavior.choice_token_ids(tok, task.continuations)
    cfg = TrainConfig(behavior="-", labels="-", out_dir="-", lora=LoraSpec(rank=args.rank, alpha=2 * args.rank))
    model = T.wrap(loaded.model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    pad = tok.pad_token_id
    k = args.per_step
    print(f"{args.model} + LoRA r{args.rank} ({sum(p.numel() for p in params) / 1e6:.1f}M trainable), {k} examples/step, "
          f"{threads} threads, bf16 autocast")

    def live_reference(idx: np.ndarray) -> dict[str, torch.Tensor]:
        ce_sum, n = T.explanation_terms(model, [expl[i] for i in idx], pad)
        prompts = [p for i in idx for p in (with_c[i], without_c[i])]
        logp = T.choice_logprobs(model, prompts, cids, pad)
        with torch.no_grad(), model.disable_adapter():
            ref = T.choice_logprobs(model, prompts, cids, pad).exp()
        return {"explanation": ce_sum / n, "behavior_kl": objectives.behavior_kl(logp=logp, p_m0=ref)}

    def cached(packed: bool, kl: bool) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        c = TrainConfig(behavior="-", labels="-", out_dir="-", weights=LossWeights(explanation=1.0, behavior_kl=float(kl)))
        return lambda idx: T.step_losses(model, cfg=c, expl=[expl[i] for i in idx], with_c=[with_c[i] for i in idx],
                                         without_c=[without_c[i] for i in idx], p_m0=p_m0[idx],
                                         p_m0_without=p_m0_without[idx], choice_ids=cids, pad_id=pad,
                                         packed=len(idx) if packed else 0)

    variants: dict[str, tuple[Callable[[np.ndarray], dict[str, torch.Tensor]], bool]] = {
        "explanation_only": (cached(False, False), False),
        "expl+kl_cached_packed": (cached(True, True), True),
        "expl+kl_cached_plain": (cached(False, True), True),
        "expl+kl_live_reference": (live_reference, True),
    }
    results: dict[str, Any] = {}
    for name, (fn, uses_behaviour) in variants.items():
        times = []
        for step in range(args.steps + 1):
            idx = np.random.default_rng([1, step]).choice(len(pairs), k, replace=False)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses = fn(idx)
                sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:  # the first step is a warm-up
                times.append(time.perf_counter() - t0)
        tokens = k * (np.mean([len(e[0]) for e in expl]) + (np.mean([len(x) + len(y) for x, y in zip(with_c, without_c)]) if uses_behaviour else 0))
        ms = statistics.median(times) * 1000
        results[name] = {"ms_per_step": round(ms, 1), "tokens_per_s": round(tokens / (ms / 1000), 1),
                         "peak_rss_gb_so_far": round(peak_rss_gb(), 2)}
        print(f"{name:<24} {ms:8.0f} ms/step  {tokens / (ms / 1000):7.0f} tok/s  peak RSS {peak_rss_gb():.2f} GB", flush=True)
    base = results["explanation_only"]["ms_per_step"]
    for r in results.values():
        r["ratio_vs_explanation_only"] = round(r["ms_per_step"] / base, 3)
    print("ratios vs explanation_only: " + ", ".join(f"{n} {r['ratio_vs_explanation_only']}x" for n, r in results.items()))
    summary = {"model": args.model, "lora_rank": args.rank, "per_step": k, "steps_timed": args.steps, "threads": threads,
               "peak_rss_gb": round(peak_rss_gb(), 2), **results}
    write_jsonl(args.out, [summary])
    print(f"peak RSS {peak_rss_gb():.2f} GB; wrote {args.out}")


if __name__ == "__main__":
    main()
