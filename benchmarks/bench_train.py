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
  expl+kl_cached_packed_fast  the default's losses on a copy of the model with `compile: true`,
                           `cache_bf16_weights: true` (train/fast.py), `trees_per_row: --fast-trees` and
                           `rows_per_forward: --fast-rows`; its own optimiser, 5 warm-up steps (they compile the layers
                           for the shapes that come; the first step's time is reported)
  expl+kl_cached_packed_fast_fp32  the fast copy in fp32 (the bf16 weight copies are then unused): against
                           expl+kl_cached_packed_fp32, the speed-up where the losses agree to fp32 rounding
Reports ms/step (median over --steps; the variants take turns step by step after the warm-up round), training
examples/s, tokens/s (tokens of the sequences as if run alone), ratios to explanation-only and to the default, and the
peak RSS after each warm-up. Before any update, the default and the fast copy compute the same batch's losses in bf16
and in fp32 (adapter B set to small random values so LoRA takes part): "same loss on the same batch". In bf16 a
different kernel order alone moves the loss by ~1e-2, so the bf16 line also prints that floor (the default step with
the SDPA math kernel instead of CPU flash); fp32 is where equality is checked.

The claims arms' step (docs/claims.md, experiment 2): --behavior-per-step 8 --task-option format=dot --task-option hint=expert
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from introspect import behavior, devices, labels
from introspect.files import write_jsonl
from introspect.paths import data_root
from introspect.runtime import seed_everything, set_threads
from introspect.models import load_model
from introspect.tasks import get_task
from introspect.train import LoraSpec, LossWeights, TrainConfig
from introspect.train import fast
from introspect.train import step as S
from introspect.train import trainer as T
from introspect.tokens import choice_token_ids


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--per-step", type=int, default=4, help="explanation examples (and behaviour pairs) per step")
    ap.add_argument("--behavior-per-step", type=int, default=0, help="behaviour pairs per step (default: --per-step); "
                    "the first --per-step of them are the explanation examples' pairs")
    ap.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE", help="hint-mmlu task option")
    ap.add_argument("--fast-rows", type=int, default=2, help="rows_per_forward of the fast variant")
    ap.add_argument("--fast-trees", type=int, default=2, help="trees_per_row of the fast variant")
    ap.add_argument("--variants", default="", help="comma-separated subset to time (default: all); explanation_only, "
                    "expl+kl_cached_packed and expl+kl_cached_packed_fast are always kept (the ratios need them)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rank", type=int, default=96)
    ap.add_argument("--out", default="benchmarks/results/bench_train.json")
    args = ap.parse_args()
    seed_everything(0)
    threads = set_threads()
    loaded = load_model(args.model, hash_weights=False)
    tok = loaded.tokenizer
    task = get_task("hint-mmlu", **dict(o.split("=", 1) for o in args.task_option))
    pairs = task.pairs(data_root(), "val", args.pairs, 0)
    beh, _ = behavior.sample_behavior(loaded.model, tok, task, pairs, progress=False)
    lab = labels.make_labels(beh, task)
    with_c, without_c = behavior.encode_pairs(tok, task, pairs)
    expl = S.encode_explanations(tok, lab, 2048, "bench")
    p_m0, p_m0_without = np.array(beh["probs"].tolist()), np.array(beh["probs_without"].tolist())
    cids = choice_token_ids(tok, task.continuations)
    cfg = TrainConfig(behavior="-", labels="-", out_dir="-", lora=LoraSpec(rank=args.rank, alpha=2 * args.rank))
    model = T.wrap(loaded.model, cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter (B = 0 at a real step 0), so the loss check below exercises LoRA
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    fast_model = copy.deepcopy(model)
    n_cached, n_compiled = fast.cache_bf16_weights(fast_model), fast.compile_layers(fast_model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    fast_opt = torch.optim.AdamW([p for p in fast_model.parameters() if p.requires_grad], lr=1e-5)
    pad = tok.pad_token_id
    k = args.per_step
    kb = args.behavior_per_step or k
    if kb < k:
        ap.error("--behavior-per-step must be >= --per-step (the explanation examples' pairs come first)")
    print(f"{args.model} + LoRA r{args.rank} ({sum(p.numel() for p in params) / 1e6:.1f}M trainable), {k} explanation "
          f"examples and {kb} behaviour pairs per step, {threads} threads, bf16 autocast unless the variant says fp32; "
          f"fast copy: {n_compiled} layers compiled, {n_cached} frozen Linear weights cached in bf16")

    def reference_probs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p_M0 computed live: the base model (adapter disabled), no gradient, on x and x∖C of the step's pairs."""
        with torch.no_grad(), model.disable_adapter():
            _, _, logp = S.tree_terms(model, [[(with_c[i], 0), (without_c[i], 0)] for i in idx], cids, pad)
        p = logp.exp().float().numpy()
        return p[0::2], p[1::2]

    def live_reference(idx: np.ndarray) -> dict[str, torch.Tensor]:
        p, q = reference_probs(idx)
        c = TrainConfig(behavior="-", labels="-", out_dir="-", weights=LossWeights(explanation=1.0, behavior_kl=1.0))
        return S.step_losses(model, cfg=c, expl=[expl[i] for i in idx[:k]], with_c=[with_c[i] for i in idx],
                             without_c=[without_c[i] for i in idx], p_m0=p, p_m0_without=q, choice_ids=cids,
                             pad_id=pad, packed=k)

    def cached(packed: bool, kl: bool, net: Any = model, rows: int = 2, trees: int = 1) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        c = TrainConfig(behavior="-", labels="-", out_dir="-", weights=LossWeights(explanation=1.0, behavior_kl=float(kl)),
                        pack=packed, rows_per_forward=rows, trees_per_row=trees)
        return lambda idx: S.step_losses(net, cfg=c, expl=[expl[i] for i in idx[:k]], with_c=[with_c[i] for i in idx],
                                         without_c=[without_c[i] for i in idx], p_m0=p_m0[idx],
                                         p_m0_without=p_m0_without[idx], choice_ids=cids, pad_id=pad,
                                         packed=k if packed else 0)

    default_step, fast_step = cached(True, True), cached(True, True, fast_model, args.fast_rows, args.fast_trees)
    # name -> (losses of a step's pairs, whether behaviour is scored, the body's precision, optimiser)
    Variant = tuple[Callable[[np.ndarray], dict[str, torch.Tensor]], bool, str, Any]
    variants: dict[str, Variant] = {
        "explanation_only": (cached(False, False), False, "bf16", opt),
        "expl+kl_cached_packed": (default_step, True, "bf16", opt),
        "expl+kl_cached_packed_fp32": (default_step, True, "fp32", opt),
        "expl+kl_live_reference": (live_reference, True, "bf16", opt),
        "expl+kl_cached_plain": (cached(False, True), True, "bf16", opt),
        "expl+kl_cached_packed_fast": (fast_step, True, "bf16", fast_opt),
        "expl+kl_cached_packed_fast_fp32": (fast_step, True, "fp32", fast_opt),
    }

    keep = {"explanation_only", "expl+kl_cached_packed", "expl+kl_cached_packed_fast"}
    wanted = set(args.variants.split(",")) - {""} if args.variants else set(variants)
    if wanted - set(variants):
        ap.error(f"--variants: unknown {sorted(wanted - set(variants))}; known: {', '.join(variants)}")
    variants = {n: v for n, v in variants.items() if n in wanted | keep}

    def batch(step: int) -> np.ndarray:
        return np.random.default_rng([1, step]).choice(len(pairs), kb, replace=False)

    def one_step(v: Variant, step: int, update: bool = True) -> tuple[float, dict[str, float]]:
        fn, _, precision, optimiser = v
        t0 = time.perf_counter()
        with devices.autocast(precision):
            losses = fn(batch(step))
            sum(losses.values()).backward()
        if update:
            optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, {n: float(x.detach()) for n, x in losses.items()}

    # Same loss on the same batch: the default and the fast copy, same weights (no update yet), both precisions.
    # The fast copy's first calls compile its layers, once per precision.
    check: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        plain = one_step((default_step, True, precision, opt), 0, update=False)[1]
        t_first, quick = one_step((fast_step, True, precision, fast_opt), 0, update=False)
        diff = max(abs(plain[n] - quick[n]) for n in plain)
        check[precision] = {"default": plain, "fast": quick, "max_abs_diff": diff, "first_step_s": round(t_first, 1)}
        print(f"same batch, {precision}: default {plain}, fast {quick}: max |Δ loss| {diff:.2e} "
              f"(the fast copy's first {precision} step, compiling: {t_first:.1f} s)", flush=True)
    # bf16's own noise on this batch: the default step with another attention kernel (SDPA math instead of CPU flash)
    with sdpa_kernel(SDPBackend.MATH):
        other = one_step((default_step, True, "bf16", opt), 0, update=False)[1]
    check["bf16"]["noise_floor_math_sdpa"] = floor = max(abs(check["bf16"]["default"][n] - other[n]) for n in other)
    print(f"bf16 noise floor: the default step with the SDPA math kernel moves the losses by {floor:.2e}", flush=True)
    # Warm-up round, one step per variant in this order (the fast copy: 5, while its compiled shapes settle); the peak
    # RSS after each is that of the variants so far (the process peak only grows), so "explanation_only" and
    # "expl+kl_cached_packed" give the default's peak.
    rss: dict[str, float] = {}
    for name, v in variants.items():
        for w in range(5 if name == "expl+kl_cached_packed_fast" else 1):
            one_step(v, 1000 + w)  # warm-up batches: not the timed ones
        rss[name] = round(peak_rss_gb(), 2)
    # Timed rounds interleave the variants step by step, so machine drift hits them alike.
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(1, args.steps + 1):
        for name, v in variants.items():
            times[name].append(one_step(v, step)[0])
    results: dict[str, Any] = {}
    expl_tokens = k * np.mean([len(e[0]) for e in expl])
    beh_tokens = kb * np.mean([len(x) + len(y) for x, y in zip(with_c, without_c)])
    for name, (_, uses_behaviour, _, _) in variants.items():
        tokens = expl_tokens + (beh_tokens if uses_behaviour else 0)
        ms = statistics.median(times[name]) * 1000
        results[name] = {"ms_per_step": round(ms, 1), "ms_all_steps": [round(t * 1000) for t in times[name]],
                         "examples_per_s": round(k / (ms / 1000), 3), "tokens_per_s": round(tokens / (ms / 1000), 1),
                         "peak_rss_gb_after_warmup": rss[name]}
        print(f"{name:<28} {ms:8.0f} ms/step  {k / (ms / 1000):5.2f} examples/s  {tokens / (ms / 1000):7.0f} tok/s  "
              f"peak RSS so far {rss[name]:.2f} GB", flush=True)
    base, default = results["explanation_only"]["ms_per_step"], results["expl+kl_cached_packed"]
    for name, r in results.items():
        r["ratio_vs_explanation_only"] = round(r["ms_per_step"] / base, 3)
        r["examples_per_s_vs_default"] = round(r["examples_per_s"] / default["examples_per_s"], 3)
        r["per_step_speedup_vs_default"] = [round(d / t, 3) for d, t in zip(default["ms_all_steps"], r["ms_all_steps"])]
    print("ratios vs explanation_only: " + ", ".join(f"{n} {r['ratio_vs_explanation_only']}x" for n, r in results.items()))
    f = results["expl+kl_cached_packed_fast"]
    if "expl+kl_cached_packed_fast_fp32" in results and "expl+kl_cached_packed_fp32" in results:
        a, b = results["expl+kl_cached_packed_fp32"], results["expl+kl_cached_packed_fast_fp32"]
        b["examples_per_s_vs_default_fp32"] = round(b["examples_per_s"] / a["examples_per_s"], 3)
        b["per_step_speedup_vs_default_fp32"] = [round(x / y, 3) for x, y in zip(a["ms_all_steps"], b["ms_all_steps"])]
        print(f"fast vs default, both fp32: {b['examples_per_s_vs_default_fp32']}x training examples/s (per step: "
              f"{', '.join(map(str, b['per_step_speedup_vs_default_fp32']))})")
    print(f"fast vs default: {f['examples_per_s_vs_default']}x training examples/s (per step: "
          f"{', '.join(map(str, f['per_step_speedup_vs_default']))}); same batch max |Δ loss| fp32 "
          f"{check['fp32']['max_abs_diff']:.2e}, bf16 {check['bf16']['max_abs_diff']:.2e} (bf16 noise floor {floor:.2e})")
    summary = {"model": args.model, "lora_rank": args.rank, "per_step": k, "behavior_per_step": kb,
               "task_options": args.task_option, "fast_rows_per_forward": args.fast_rows, "fast_trees_per_row": args.fast_trees, "steps_timed": args.steps,
               "threads": threads, "same_batch_loss_check": check, "peak_rss_gb": round(peak_rss_gb(), 2), **results}
    write_jsonl(args.out, [summary])
    print(f"peak RSS {peak_rss_gb():.2f} GB; wrote {args.out}")


if __name__ == "__main__":
    main()
