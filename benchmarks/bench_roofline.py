"""The training step against this machine's own roofline, in one run: the bf16 (and fp32) matmul peak measured here,
then the real training step (the trainer's own seams: `prepare`, `step_rows`, `optimiser_step`) with its FLOPs counted
by torch's FlopCounterMode (matmuls and attention, forward and backward) and its time measured -> GFLOP/s and the
ratio to the peak.

    python benchmarks/bench_roofline.py RUN/train/train_config.json --steps 6 [--set behavior_per_step=8 ...]

The peak is the best of `F.linear` on 2048³ and on the model's own projection shapes with 2048 rows (bf16 inputs, as
under autocast), 10 timed calls each. The step is timed over --steps steps after one warm-up step (median); its FLOPs
are counted on one further step. Writes benchmarks/results/bench_roofline.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

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
    secs = [one(s) for s in range(2, args.steps + 2)]
    with FlopCounterMode(display=False) as counter:
        one(args.steps + 2)
    flops = counter.get_total_flops()
    median = statistics.median(secs)
    gflops = flops / median / 1e9
    ref = best_bf16 if cfg.precision == "bf16" else best_fp32
    row = {"config": args.config, "set": args.set, "precision": cfg.precision, "threads": threads,
           "explanation_per_step": cfg.explanation_per_step, "behavior_per_step": cfg.behavior_per_step,
           "step_gflop": round(flops / 1e9, 1), "step_s_median": round(median, 3), "step_s": [round(s, 3) for s in secs],
           "step_gflop_per_s": round(gflops, 1), "peak_gflop_per_s": ref, "ratio_to_peak": round(gflops / ref, 3),
           "peaks": peaks}
    for k, v in peaks.items():
        print(f"  matmul {k:<24} {v:8.1f} GFLOP/s")
    print(f"step ({cfg.precision}, {cfg.explanation_per_step} explanation examples + {cfg.behavior_per_step} "
          f"behaviour pairs): {flops / 1e9:.0f} GFLOP in {median:.2f} s (median of {len(secs)}) = {gflops:.0f} GFLOP/s, "
          f"{gflops / ref:.0%} of the measured {cfg.precision} matmul peak ({ref:.0f} GFLOP/s)")
    write_jsonl(args.out, [row])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
