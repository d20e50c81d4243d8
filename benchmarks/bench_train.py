"""Training step cost, side by side in one run: SmolLM2-135M + LoRA (rank 96), bf16 autocast, Hint-MMLU pairs.

    python benchmarks/bench_train.py --steps 8

  explanation_only         explanation CE on E examples (one row each, no padding inside a row)
  expl+kl_cached_packed    + KL(p_M0 ‖ p_θ) on the same E pairs (x, x∖C), p_M0 read from the BehaviorTable, each
                           pair's explanation/x/x∖C run as one prefix-tree row (tree.py; our default)
  expl+kl_cached_plain     the same losses, every sequence in its own row (pack: false)
  expl+kl_cached_packed_fp32  the default's losses with the body in fp32 (a run's `precision: fp32`; no autocast):
                           what an exact step-0 regulariser costs (docs/training.md)
  expl+kl_live_reference   p_M0 computed live instead of read: a reference forward (adapter disabled, no grad) on
                           the step's x and x∖C, then the same packed policy step
Reports ms/step (median over --steps; the variants take turns step by step after one warm-up round), tokens/s
(tokens of the sequences as if run alone), ratios to explanation-only, and the peak RSS after each warm-up.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from introspect import behavior, devices, labels
from introspect.config import data_root, seed_everything, set_threads, write_jsonl
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import LoraSpec, LossWeights, TrainConfig
from introspect.train import step as S
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
    expl = S.encode_explanations(tok, lab, 2048, "bench")
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
          f"{threads} threads, bf16 autocast unless the variant says fp32")

    def reference_probs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p_M0 computed live: the base model (adapter disabled), no gradient, on x and x∖C of the step's pairs."""
        with torch.no_grad(), model.disable_adapter():
            _, _, logp = S.tree_terms(model, [[(with_c[i], 0), (without_c[i], 0)] for i in idx], cids, pad)
        p = logp.exp().float().numpy()
        return p[0::2], p[1::2]

    def live_reference(idx: np.ndarray) -> dict[str, torch.Tensor]:
        p, q = reference_probs(idx)
        c = TrainConfig(behavior="-", labels="-", out_dir="-", weights=LossWeights(explanation=1.0, behavior_kl=1.0))
        return S.step_losses(model, cfg=c, expl=[expl[i] for i in idx], with_c=[with_c[i] for i in idx],
                             without_c=[without_c[i] for i in idx], p_m0=p, p_m0_without=q, choice_ids=cids,
                             pad_id=pad, packed=len(idx))

    def cached(packed: bool, kl: bool) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        c = TrainConfig(behavior="-", labels="-", out_dir="-", weights=LossWeights(explanation=1.0, behavior_kl=float(kl)),
                        pack=packed)
        return lambda idx: S.step_losses(model, cfg=c, expl=[expl[i] for i in idx], with_c=[with_c[i] for i in idx],
                                         without_c=[without_c[i] for i in idx], p_m0=p_m0[idx],
                                         p_m0_without=p_m0_without[idx], choice_ids=cids, pad_id=pad,
                                         packed=len(idx) if packed else 0)

    # name -> (losses of a step's pairs, whether behaviour is scored, the body's precision)
    variants: dict[str, tuple[Callable[[np.ndarray], dict[str, torch.Tensor]], bool, str]] = {
        "explanation_only": (cached(False, False), False, "bf16"),
        "expl+kl_cached_packed": (cached(True, True), True, "bf16"),
        "expl+kl_cached_packed_fp32": (cached(True, True), True, "fp32"),
        "expl+kl_live_reference": (live_reference, True, "bf16"),
        "expl+kl_cached_plain": (cached(False, True), True, "bf16"),
    }

    def one_step(fn: Callable[[np.ndarray], dict[str, torch.Tensor]], step: int, precision: str) -> float:
        idx = np.random.default_rng([1, step]).choice(len(pairs), k, replace=False)
        t0 = time.perf_counter()
        with devices.autocast(precision):
            losses = fn(idx)
            sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    # Warm-up round, one step per variant in this order; the peak RSS after each is that of the variants so far
    # (the process peak only grows), so "explanation_only" and "expl+kl_cached_packed" give the default's peak.
    rss: dict[str, float] = {}
    for name, (fn, _, precision) in variants.items():
        one_step(fn, 0, precision)
        rss[name] = round(peak_rss_gb(), 2)
    # Timed rounds interleave the variants step by step, so machine drift hits them alike.
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(1, args.steps + 1):
        for name, (fn, _, precision) in variants.items():
            times[name].append(one_step(fn, step, precision))
    results: dict[str, Any] = {}
    for name, (_, uses_behaviour, _) in variants.items():
        tokens = k * (np.mean([len(e[0]) for e in expl]) + (np.mean([len(x) + len(y) for x, y in zip(with_c, without_c)]) if uses_behaviour else 0))
        ms = statistics.median(times[name]) * 1000
        results[name] = {"ms_per_step": round(ms, 1), "ms_all_steps": [round(t * 1000) for t in times[name]],
                         "tokens_per_s": round(tokens / (ms / 1000), 1), "peak_rss_gb_after_warmup": rss[name]}
        print(f"{name:<28} {ms:8.0f} ms/step  {tokens / (ms / 1000):7.0f} tok/s  peak RSS so far {rss[name]:.2f} GB", flush=True)
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
