"""Checkpoint evaluation cost, side by side in one run: explanations/s of the first path (the LoRA adapter applied
unmerged, weights cast by autocast on every call; explanations by HF `generate`, then behaviour re-sampled apart)
against merged evaluation weights (merged.py), and merged + the one-pass evaluation (joint.py: explanation prompt,
x and x∖C as one prefix-tree row, the explanation decoded from its cache), on the same items.

    python benchmarks/bench_eval.py --run runs/demo --n 52            # a run's last checkpoint, its eval pairs
    python benchmarks/bench_eval.py --run runs/demo --pairs P.parquet --n 192   # more pairs of the same task
    python benchmarks/bench_eval.py --run runs/demo --pairs P.parquet --n 96 --phases --out R.json   # the one pass's parts

Per method and chunk of pairs: greedy explanations and the re-sampling of B(M_t) on x and x∖C, exactly what
`evaluate_one` does for a checkpoint. The methods take turns chunk by chunk (order rotated) after a warm-up chunk,
so machine drift hits all alike. Reports explanations/s (items whose explanation was generated and behaviour
re-sampled, per second), each method's ratio to the first, and how many texts and answers are identical to the
first's. `--precision fp32` runs the same in fp32.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

from introspect import behavior, joint, merged
from introspect.checkpoints import applied, complete
from introspect.files import write_jsonl
from introspect.runtime import seed_everything, set_threads
from introspect.evaluate import explanation_prompts, generate
from introspect.models import load_model
from introspect.run_config import config_of_run
from introspect.tables import pairs_from_table, read_table, task_of


def evaluate_work(model: Any, tok: Any, task: Any, pairs: list, precision: str, batch_size: int,
                  max_new_tokens: int, verify_margin: float) -> tuple[list[str], list[tuple[str, str]], dict[str, float]]:
    t0 = time.perf_counter()
    texts = generate(model, tok, explanation_prompts(task, pairs), precision=precision, batch_size=batch_size,
                     max_new_tokens=max_new_tokens)
    t1 = time.perf_counter()
    beh, _ = behavior.sample_behavior(model, tok, task, pairs, precision=precision, verify_margin=verify_margin,
                                      progress=False)
    t2 = time.perf_counter()
    answers = list(zip(beh["answer"], beh["answer_without"]))
    return texts, answers, {"generate": t1 - t0, "resample": t2 - t1}


def one_pass_work(model: Any, tok: Any, task: Any, pairs: list, precision: str, batch_size: int,
                  max_new_tokens: int, verify_margin: float) -> tuple[list[str], list[tuple[str, str]], dict[str, float]]:
    t0 = time.perf_counter()
    texts, beh = joint.explain_and_sample(model, tok, task, pairs, precision=precision, verify_margin=verify_margin,
                                          batch_size=batch_size, max_new_tokens=max_new_tokens)
    answers = list(zip(beh["answer"], beh["answer_without"]))
    return texts, answers, {"generate": time.perf_counter() - t0, "resample": 0.0}  # one pass: both at once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="an evaluated run directory (its eval pairs and checkpoints)")
    ap.add_argument("--step", type=int, default=None, help="the checkpoint (default: the last)")
    ap.add_argument("--n", type=int, default=96, help="eval pairs (the first n of the pairs table)")
    ap.add_argument("--pairs", default=None, help="a BehaviorTable whose pairs to use (`introspect sample ... --split "
                    "test`; default: RUN/eval/m0_behavior.parquet)")
    ap.add_argument("--chunks", type=int, default=2, help="round-robin chunks after the warm-up")
    ap.add_argument("--warmup", type=int, default=8, help="pairs of the untimed warm-up chunk (each method)")
    ap.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: the run's")
    ap.add_argument("--batch-size", type=int, default=None, help="generation batch (default: the run's)")
    ap.add_argument("--phases", action="store_true", help="instead: where the one pass spends its time (prefill, decode, "
                    "near-tie re-check) on the pairs, and the prefill's GFLOP/s against this machine's bf16 matmul peak")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/bench_eval.json (bench_eval_phases.json "
                    "with --phases)")
    args = ap.parse_args()
    args.out = args.out or f"benchmarks/results/bench_eval{'_phases' if args.phases else ''}.json"
    threads = set_threads()
    cfg = config_of_run(args.run)
    precision = args.precision or cfg.precision
    batch = args.batch_size or cfg.evaluate.batch_size
    seed_everything(cfg.seed)
    base = load_model(cfg.model, seed=cfg.seed, device="cpu")
    m0_beh, meta = read_table(Path(args.pairs) if args.pairs else Path(args.run) / "eval" / "m0_behavior.parquet")
    task = task_of(meta)
    pairs = pairs_from_table(m0_beh, task)
    warm, pairs = pairs[: args.warmup], pairs[args.warmup: args.warmup + args.n]
    done = complete(cfg.path("train", "checkpoints"))
    step, path = next(((s, p) for s, p in done if s == args.step), done[-1]) if args.step else done[-1]
    print(f"[bench_eval] {args.run} step {step}, {len(pairs)} pairs in {args.chunks} chunks, {precision}, "
          f"generation batch {batch}, {threads} threads")
    work = dict(precision=precision, batch_size=batch, max_new_tokens=cfg.evaluate.max_new_tokens,
                verify_margin=cfg.verify_margin)
    if args.phases:
        with applied(base, path, cfg.train_config().finetune) as model:
            return phases(model, base.tokenizer, task, warm, pairs, work, args.out)
    with applied(base, path, cfg.train_config().finetune) as model:
        methods: dict[str, Callable[[list], Any]] = {
            "unmerged (today)": lambda ps: evaluate_work(model, base.tokenizer, task, ps, **work),
            "merged": lambda ps: with_merged(model, precision, lambda: evaluate_work(model, base.tokenizer, task, ps, **work)),
            "merged + one pass": lambda ps: with_merged(model, precision,
                                                        lambda: one_pass_work(model, base.tokenizer, task, ps, **work)),
        }
        for fn in methods.values():
            fn(warm)
        size = -(-len(pairs) // args.chunks)
        chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        got: dict[str, dict[str, Any]] = {m: {"texts": [], "answers": [], "generate": 0.0, "resample": 0.0} for m in methods}
        for c, chunk in enumerate(chunks):
            names = list(methods)
            for name in names[c % len(names):] + names[: c % len(names)]:
                texts, answers, secs = methods[name](chunk)
                got[name]["texts"] += texts
                got[name]["answers"] += answers
                got[name]["generate"] += secs["generate"]
                got[name]["resample"] += secs["resample"]
                print(f"  chunk {c + 1}/{len(chunks)} {name:<18} generate {secs['generate']:6.1f} s  "
                      f"re-sample {secs['resample']:5.1f} s")
    n = len(pairs)
    rows = []
    for name, g in got.items():
        total = g["generate"] + g["resample"]
        rows.append({"method": name, "pairs": n, "precision": precision, "batch": batch, "step": step,
                     "generate_s": round(g["generate"], 2), "resample_s": round(g["resample"], 2),
                     "explanations_per_s": round(n / total, 3)})
    ref = got["unmerged (today)"]
    summary = {}
    for r in rows[1:]:
        new = got[r["method"]]
        same_text = sum(a == b for a, b in zip(ref["texts"], new["texts"]))
        same_ans = sum(a[i] == b[i] for a, b in zip(ref["answers"], new["answers"]) for i in range(2))
        summary[r["method"]] = {"ratio_explanations_per_s": round(r["explanations_per_s"] / rows[0]["explanations_per_s"], 3),
                                "identical_texts": f"{same_text}/{n}", "identical_answers": f"{same_ans}/{2 * n}"}
    for r in rows:
        print(f"{r['method']:<18} {r['explanations_per_s']:6.3f} explanations/s (generate {r['generate_s']} s, "
              f"re-sample {r['resample_s']} s)")
    for name, d in summary.items():
        print(f"{name} / today: {d['ratio_explanations_per_s']}x explanations/s; identical texts {d['identical_texts']}, "
              f"answers {d['identical_answers']}")
    write_jsonl(args.out, [*rows, summary])
    print(f"wrote {args.out}")


def phases(model: Any, tok: Any, task: Any, warm: list, pairs: list, work: dict[str, Any], out: str) -> None:
    """Time the one pass's parts (wrappers around joint.prefill, joint.decode, behavior.verify_near_ties) and the
    prefill's matmul rate: 2 x non-embedding parameters x prefilled tree tokens / prefill seconds."""
    import sys

    from introspect import tree
    from introspect.behavior import shared_prefix

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_roofline import peak  # the same peak measurement as the training step's roofline

    spent = {"prefill": 0.0, "decode": 0.0, "verify_near_ties": 0.0}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    originals = joint.prefill, joint.decode, behavior.verify_near_ties
    with merged.merged(model, work["precision"]):
        one_pass_work(model, tok, task, warm, **work)
        joint.prefill, joint.decode = timed("prefill", originals[0]), timed("decode", originals[1])
        behavior.verify_near_ties = timed("verify_near_ties", originals[2])
        try:
            t0 = time.perf_counter()
            one_pass_work(model, tok, task, pairs, **work)
            total = time.perf_counter() - t0
        finally:
            joint.prefill, joint.decode, behavior.verify_near_ties = originals
    groups = joint.prompts_of(tok, task, pairs, True)
    root = shared_prefix([p for g in groups for p in g])
    tokens = sum(tree.width([p[root:] for p in g]) for g in groups)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lora_" not in n)  # merged
    gflops = 2 * params * tokens / spent["prefill"] / 1e9
    cfg = model.config
    best = max(v for k, v in peak(cfg.hidden_size, cfg.intermediate_size).items() if k.startswith(work["precision"]))
    row = {"pairs": len(pairs), "precision": work["precision"], "total_s": round(total, 2),
           **{f"{k}_s": round(v, 2) for k, v in spent.items()},
           "other_s": round(total - sum(spent.values()), 2), "prefill_tree_tokens_per_pair": round(tokens / len(pairs), 1),
           "prefill_gflop_per_s": round(gflops, 1), "peak_gflop_per_s": round(best, 1),
           "prefill_ratio_to_peak": round(gflops / best, 3)}
    for k, v in row.items():
        print(f"  {k}: {v}")
    write_jsonl(out, [row])
    print(f"wrote {out}")


def with_merged(model: Any, precision: str, fn: Callable[[], Any]) -> Any:
    with merged.merged(model, precision):
        return fn()


if __name__ == "__main__":
    main()
