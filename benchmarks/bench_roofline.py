"""The training step against this machine's own roofline, in one run: the bf16 (and fp32) matmul peak measured here,
then the real training step (the trainer's own seams: `prepare`, `step_rows`, `optimiser_step`) with its FLOPs counted
by torch's FlopCounterMode (matmuls and attention, forward and backward) and its time measured -> GFLOP/s and the
ratio to the peak.

    python benchmarks/bench_roofline.py RUN/train/train_config.json --steps 6 [--set behavior_per_step=8 ...]
    python benchmarks/bench_roofline.py RUN/train/train_config.json --steps 6 --profile 3   # + where a step's time goes

The peak is the best of `F.linear` on 2048³ and on the model's own projection shapes with 2048 rows (bf16 inputs, as
under autocast), 10 timed calls each. The step is timed over --steps steps after one warm-up step; then the same
steps (the same rows: `step_rows` is a function of the step index) run again with their FLOPs counted, so the rate is
the timed steps' FLOPs over their time (steps differ in length: a batch of long questions costs more). `--profile N`
then runs N more steps under torch's profiler and reports each op's share of their CPU time (matmuls, attention
forward and backward, the rest). Writes benchmarks/results/bench_roofline.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from introspect.files import write_jsonl
from introspect.runtime import set_threads
from introspect.train import load_config
from introspect.train import trainer as T


def linear_gflops(m: int, k: int, n: int, dtype: torch.dtype, calls: int = 10) -> float:
    a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    F.linear(a, w)
    t0 = time.perf_counter()
    for _ in range(calls):
        F.linear(a, w)
    return 2 * m * k * n * calls / (time.perf_counter() - t0) / 1e9


def peak(hidden: int, inter: int) -> dict[str, float]:
    shapes = {"2048^3": (2048, 2048, 2048), f"2048x{hidden}x{inter}": (2048, hidden, inter),
              f"2048x{inter}x{hidden}": (2048, inter, hidden), f"2048x{hidden}x{hidden}": (2048, hidden, hidden)}
    out = {}
    for name, (m, k, n) in shapes.items():
        out[f"bf16 {name}"] = round(linear_gflops(m, k, n, torch.bfloat16), 1)
        out[f"fp32 {name}"] = round(linear_gflops(m, k, n, torch.float32), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a train config (e.g. RUN/train/train_config.json of a finished run)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="then profile N steps: each op's share")
    ap.add_argument("--out", default="benchmarks/results/bench_roofline.json")
    args = ap.parse_args()
    threads = set_threads()
    cfg = load_config(args.config, [*args.set, "out_dir=/tmp/introspect_bench_roofline", "probe_every=0",
                                    "monitor.every=0"])
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    loop, _ = T.prepare(cfg, acc, False, lambda message: None)
    model_cfg = acc.unwrap_model(loop.model).config
    peaks = peak(model_cfg.hidden_size, model_cfg.intermediate_size)
    best_bf16 = max(v for k, v in peaks.items() if k.startswith("bf16"))
    best_fp32 = max(v for k, v in peaks.items() if k.startswith("fp32"))

    def one(step: int) -> float:
        rows = T.step_rows(cfg, loop.data, step, 0, 1)
        t0 = time.perf_counter()
        T.optimiser_step(acc, loop.model, loop.params, loop.opt, loop.sched, cfg, loop.weights, loop.data, rows,
                         loop.tok.pad_token_id)
        return time.perf_counter() - t0

    one(1)  # warm-up
    timed = range(2, args.steps + 2)
    secs = [one(s) for s in timed]
    counts = []
    for s in timed:  # the same steps again, counted (weights move on, shapes and FLOPs do not)
        with FlopCounterMode(display=False) as counter:
            one(s)
        counts.append(counter.get_total_flops())
    flops, median = sum(counts) / len(counts), statistics.median(secs)
    gflops = sum(counts) / sum(secs) / 1e9
    ref = best_bf16 if cfg.precision == "bf16" else best_fp32
    row = {"config": args.config, "set": args.set, "precision": cfg.precision, "threads": threads,
           "explanation_per_step": cfg.explanation_per_step, "behavior_per_step": cfg.behavior_per_step,
           "step_gflop": round(flops / 1e9, 1), "step_gflop_each": [round(c / 1e9, 1) for c in counts],
           "step_s_median": round(median, 3), "step_s": [round(s, 3) for s in secs],
           "step_gflop_per_s": round(gflops, 1), "peak_gflop_per_s": ref, "ratio_to_peak": round(gflops / ref, 3),
           "peaks": peaks}
    if args.profile:
        row["profile"] = profile_shares(lambda: [one(args.steps + 2 + i) for i in range(args.profile)])
    for k, v in peaks.items():
        print(f"  matmul {k:<24} {v:8.1f} GFLOP/s")
    for op, share in row.get("profile", {}).items():
        print(f"  profile: {op:<48} {share:6.1%} of the profiled steps' CPU time")
    print(f"step ({cfg.precision}, {cfg.explanation_per_step} explanation examples + {cfg.behavior_per_step} "
          f"behaviour pairs): {sum(counts) / 1e9:.0f} GFLOP in {sum(secs):.2f} s over {len(secs)} steps (mean "
          f"{flops / 1e9:.0f} GFLOP, median {median:.2f} s) = {gflops:.0f} GFLOP/s, {gflops / ref:.0%} of the measured "
          f"{cfg.precision} matmul peak ({ref:.0f} GFLOP/s)")
    write_jsonl(args.out, [row])
    print(f"wrote {args.out}")


def profile_shares(work: Any, top: int = 8) -> dict[str, float]:
    """Self CPU time share of the `top` ops while `work()` runs (torch profiler), the rest summed."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        work()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in events[:top]}
    shares["(everything else)"] = round(1 - sum(shares.values()), 4)
    return shares


if __name__ == "__main__":
    main()
