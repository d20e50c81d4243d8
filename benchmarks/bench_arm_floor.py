"""The least wall time one experiment arm can take on this machine: every FLOP the arm does (training steps, the
probes, the sampling of a seed's training pool, the evaluation of its checkpoints), counted by torch's
FlopCounterMode on a sample of the arm's own work, divided by the bf16 matmul peak measured in the same run.

    python benchmarks/bench_arm_floor.py runs/claims_v3/hint_expert_lamstar_s7 --steps 3 --pairs 32

Counted (matmuls and attention, forward and backward), each on the arm's own inputs:
  * training: --steps steps of the arm's own train config (compile off while counting: the same arithmetic), the mean
    per step times the config's steps;
  * the probes: B(M_t) on `probe_pairs` pairs, steps / probe_every times;
  * sampling the seed's training pool (`selection.pool` pairs; the pool is shared by the seed's arms, so it is the
    seed's first arm that pays it): B(M0) on --pairs of the arm's training pairs, per pair times the pool;
  * evaluation: the one pass (joint.py: explanation + B(M_t)) of the last checkpoint with its adapter merged, on --pairs
    eval pairs, per pair times `evaluate.n` times the evaluated checkpoints (M0's evaluation is shared by every arm of
    an experiment and not counted).
The floor is that many FLOPs at 100% of the measured peak: elementwise work, casts, the optimizer, data handling and
start-up come on top, so no arm can be faster than it. Writes benchmarks/results/bench_arm_floor.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch.utils.flop_counter import FlopCounterMode

from bench_roofline import peak
from introspect import behavior, joint, merged
from introspect.checkpoints import applied, complete
from introspect.files import write_jsonl
from introspect.models import load_model
from introspect.run_config import config_of_run
from introspect.runtime import seed_everything, set_threads
from introspect.tables import pairs_from_table, read_table, task_of
from introspect.train import load_config
from introspect.train import trainer as T


def counted(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished arm's run directory (its configs, training pairs, eval pairs, checkpoints)")
    ap.add_argument("--steps", type=int, default=3, help="training steps counted (their mean is used)")
    ap.add_argument("--pairs", type=int, default=32, help="pairs counted for sampling and for evaluation")
    ap.add_argument("--target-min", type=float, default=20.0, help="the wall-time target to compare with (minutes)")
    ap.add_argument("--out", default="benchmarks/results/bench_arm_floor.json")
    args = ap.parse_args()
    threads = set_threads()
    run = Path(args.run)
    cfg = config_of_run(run)
    seed_everything(cfg.seed)

    tcfg = load_config(run / "train" / "train_config.json",
                       ["compile=false", "out_dir=/tmp/introspect_bench_arm_floor", "probe_every=0", "monitor.every=0"])
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    loop, _ = T.prepare(tcfg, acc, False, lambda message: None)
    model_cfg = acc.unwrap_model(loop.model).config
    peaks = peak(model_cfg.hidden_size, model_cfg.intermediate_size)
    best = max(v for k, v in peaks.items() if k.startswith(cfg.precision))

    def train_step(step: int) -> None:
        rows = T.step_rows(tcfg, loop.data, step, 0, 1)
        T.optimiser_step(acc, loop.model, loop.params, loop.opt, loop.sched, tcfg, loop.weights, loop.data, rows,
                         loop.tok.pad_token_id)

    step_flops = sum(counted(lambda s=s: train_step(s)) for s in range(1, args.steps + 1)) / args.steps

    base = load_model(cfg.model, seed=cfg.seed, device="cpu")
    tok = base.tokenizer
    train_beh, meta = read_table(run / "train" / "behavior.parquet")
    task = task_of(meta)
    train_pairs = pairs_from_table(train_beh, task)[: args.pairs]
    eval_beh, _ = read_table(run / "eval" / "m0_behavior.parquet")
    eval_pairs = pairs_from_table(eval_beh, task)[: args.pairs]
    work = dict(precision=cfg.precision, verify_margin=cfg.verify_margin)

    sample_pair = counted(lambda: behavior.sample_behavior(base.model, tok, task, train_pairs, progress=False,
                                                            **work)) / len(train_pairs)
    step, path = complete(cfg.path("train", "checkpoints"))[-1]
    with applied(base, path, cfg.train_config().finetune) as model, merged.merged(model, cfg.precision):
        eval_pair = counted(lambda: joint.explain_and_sample(
            model, tok, task, eval_pairs, batch_size=cfg.evaluate.batch_size,
            max_new_tokens=cfg.evaluate.max_new_tokens, **work)) / len(eval_pairs)

    tc = cfg.train_config()
    probes = tc.steps // tc.probe_every if tc.probe_every else 0
    parts = {
        "training": step_flops * tc.steps,
        "probes": sample_pair * tc.probe_pairs * probes,
        "sampling the seed's training pool": sample_pair * cfg.selection.pool,
        "evaluation": eval_pair * cfg.evaluate.n * len(cfg.evaluate.checkpoints),
    }
    total = sum(parts.values())
    floor_min = total / 1e9 / best / 60
    row = {"run": str(run), "threads": threads, "precision": cfg.precision, "peak_gflop_per_s": best, "peaks": peaks,
           "train_step_gflop": round(step_flops / 1e9, 1), "train_steps": tc.steps,
           "sample_gflop_per_pair": round(sample_pair / 1e9, 2), "eval_gflop_per_pair": round(eval_pair / 1e9, 2),
           "eval_pairs": cfg.evaluate.n, "eval_checkpoints": len(cfg.evaluate.checkpoints), "pool": cfg.selection.pool,
           "probes": probes, "probe_pairs": tc.probe_pairs,
           "parts_gflop": {k: round(v / 1e9) for k, v in parts.items()},
           "parts_min_at_peak": {k: round(v / 1e9 / best / 60, 2) for k, v in parts.items()},
           "total_gflop": round(total / 1e9), "floor_min": round(floor_min, 2), "target_min": args.target_min,
           "floor_over_target": round(floor_min / args.target_min, 3)}
    print(f"{run} ({cfg.precision}, {threads} threads), measured {cfg.precision} matmul peak {best:.0f} GFLOP/s:")
    for k, v in parts.items():
        print(f"  {k:<34} {v / 1e9:10.0f} GFLOP = {v / 1e9 / best / 60:6.2f} min at the peak")
    print(f"  training step {step_flops / 1e9:.0f} GFLOP x {tc.steps}; sampling {sample_pair / 1e9:.2f} GFLOP/pair; "
          f"evaluation {eval_pair / 1e9:.2f} GFLOP/pair x {cfg.evaluate.n} x {len(cfg.evaluate.checkpoints)} checkpoints")
    print(f"floor: {total / 1e9:.0f} GFLOP = {floor_min:.1f} min at 100% of the peak "
          f"({floor_min / args.target_min:.2f}x the {args.target_min:g}-min target)")
    write_jsonl(args.out, [row])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
