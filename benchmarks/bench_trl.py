"""introspect's own training step against TRL's, on the same examples, in one process: the cost of coupling for a TRL
user, and introspect's step against a TRL SFTTrainer doing the same work.

    python benchmarks/bench_trl.py runs/demo/train --steps 6 [--behavior-per-step 8] [--lam 0.3] [--fast]
    python benchmarks/bench_trl.py runs/demo/train --dpo --steps 4    # TRL DPO with vs without the coupling terms

Variants (LoRA r96 on the 7 projections, bf16 autocast, AdamW, lr 2e-4; 4 explanation examples per step):
  native explanation-only   introspect's step (trainer.optimiser_step), weights {explanation: 1, behavior_kl: 0}
  native coupling           the same + λ·KL(p_M0 ‖ p_θ) on --behavior-per-step pairs (packed prefix trees)
  TRL SFT                   trl.SFTTrainer on the same labels as prompt/completion pairs (completion-only loss),
                            per_device_train_batch_size 4
  TRL SFT + coupling        the same with introspect.integrations.trl's KL term on --behavior-per-step pairs
  TRL SFT + hand-written KL the same with the KL as a user would write it: a compute_loss override with its own
                            forward over the pairs (left-padded, no prefix sharing, LM head on the last position)
Each variant runs --warmup + --steps optimiser steps, twice (rounds in the order A B C D E, then E D C B A, so drift hits
all alike); the step times (median over both rounds) give examples/s and the ratios. Writes
benchmarks/results/bench_trl.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from introspect.files import write_jsonl
from introspect.runtime import seed_everything, set_threads
from introspect.models import load_model
from introspect.tables import read_meta, read_table
from introspect.train import load_config
from introspect.train import trainer as T
from introspect import tokens

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def StepClock() -> Any:
    """A TrainerCallback that records each optimiser step's wall time in `.times`."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    return Clock()


FAST_KEYS = ["compile=true", "cache_bf16_weights=true", "trees_per_row=2"]  # experiment 3's faster-step keys


def native(train_dir: Path, lam: float, per_step: int, steps: int, fast: bool = False) -> list[float]:
    from accelerate import Accelerator

    cfg = load_config(train_dir / "train_config.json", [f"weights.behavior_kl={lam}", f"behavior_per_step={per_step}",
                                                         "explanation_per_step=4", "out_dir=/tmp/introspect_bench_trl",
                                                         "probe_every=0", "monitor.every=0", "lr=2.0e-4",
                                                         *(FAST_KEYS if fast else [])])
    acc = Accelerator(cpu=True)
    loop, _ = T.prepare(cfg, acc, False, lambda message: None)
    times = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        T.optimiser_step(acc, loop.model, loop.params, loop.opt, loop.sched, cfg, loop.weights, loop.data,
                         T.step_rows(cfg, loop.data, step, 0, 1), loop.tok.pad_token_id)
        times.append(time.perf_counter() - t0)
    return times


def trl_run(train_dir: Path, lam: float, per_step: int, steps: int) -> list[float]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from introspect.integrations.trl import CouplingTerms, with_coupling

    seed_everything(0)
    loaded = load_model("smollm2-135m-instruct", seed=0, hash_weights=False)
    tok = loaded.tokenizer
    lab, _ = read_table(train_dir / "labels.parquet")  # the explanation examples: the labels' own prompts and targets
    rows = [{"prompt": json.loads(r.prompt), "completion": [{"role": "assistant", "content": r.target}]}
            for r in lab.itertuples()]
    clock = StepClock()

    args = SFTConfig(output_dir="/tmp/introspect_bench_trl_sft", max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=2e-4, report_to="none", use_cpu=True, bf16=True, save_strategy="no",
                     logging_steps=1000, max_length=1024, seed=0, dataloader_num_workers=0,
                     gradient_checkpointing=False)  # TRL turns it on by default; introspect's step does not use it
    cls = SFTTrainer
    if lam > 0:
        terms = CouplingTerms.from_tables(train_dir / "behavior.parquet", train_dir / "labels.parquet", tok,
                                          weights={"explanation": 0.0, "behavior_kl": lam}, explanation_per_step=4,
                                          behavior_per_step=per_step, precision="bf16")
        cls = with_coupling(SFTTrainer, terms)
    trainer = cls(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                  peft_config=LoraConfig(r=96, lora_alpha=192, target_modules=TARGETS), callbacks=[clock])
    trainer.train()
    return clock.times


def trl_hand_kl_run(train_dir: Path, lam: float, per_step: int, steps: int) -> list[float]:
    """TRL SFTTrainer with the KL written as a TRL user would without introspect: a `compute_loss` override that
    runs its own forward over --behavior-per-step pairs (x and x∖C left-padded in one batch, the LM head on the last position
    only (`logits_to_keep=1`; the full head over every position ran out of memory here), no prefix sharing) and
    adds λ·KL(p_M0 ‖ p_θ) over the choices, p_M0 from the behaviour table."""
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from introspect import behavior
    from introspect.tables import pairs_from_table, task_of

    seed_everything(0)
    loaded = load_model("smollm2-135m-instruct", seed=0, hash_weights=False)
    tok = loaded.tokenizer
    lab, _ = read_table(train_dir / "labels.parquet")
    rows = [{"prompt": json.loads(r.prompt), "completion": [{"role": "assistant", "content": r.target}]}
            for r in lab.itertuples()]
    beh, meta = read_table(train_dir / "behavior.parquet")
    task = task_of(meta)
    with_c, without_c = behavior.encode_pairs(tok, task, pairs_from_table(beh, task))
    groups = tokens.choice_token_ids(tok, task.continuations)
    p0 = torch.tensor(np.concatenate([np.stack(beh["probs"]), np.stack(beh["probs_without"])]), dtype=torch.float32)
    rng = np.random.default_rng(0)

    class HandKL(SFTTrainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kw: Any) -> Any:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            loss = out[0] if return_outputs else out
            idx = rng.choice(len(with_c), per_step, replace=False)
            ids, mask = tokens.left_pad([with_c[i] for i in idx] + [without_c[i] for i in idx], tok.pad_token_id)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1].float()
            logq = torch.log_softmax(tokens.group_logits(torch.log_softmax(logits, -1), groups), -1)
            target = p0[np.concatenate([idx, idx + len(with_c)])]
            kl = (target * (target.clamp_min(1e-12).log() - logq)).sum(-1).mean()
            loss = loss + lam * kl
            return (loss, out[1]) if return_outputs else loss

    clock = StepClock()
    args = SFTConfig(output_dir="/tmp/introspect_bench_trl_sft_kl", max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=2e-4, report_to="none", use_cpu=True, bf16=True, save_strategy="no",
                     logging_steps=1000, max_length=1024, seed=0, dataloader_num_workers=0, gradient_checkpointing=False)
    trainer = HandKL(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                     peft_config=LoraConfig(r=96, lora_alpha=192, target_modules=TARGETS), callbacks=[clock])
    trainer.train()
    return clock.times


def dpo_run(train_dir: Path, lam: float, per_step: int, steps: int) -> list[float]:
    """TRL DPOTrainer on the preference pairs of `introspect dpo` (4 per step), with or without the coupling terms
    (explanation + KL: the whole coupling objective, since DPO's loss has no explanation term)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from introspect.integrations.dpo import preference_rows
    from introspect.integrations.trl import CouplingTerms, with_coupling
    from introspect.tables import task_of

    seed_everything(0)
    loaded = load_model("smollm2-135m-instruct", seed=0, hash_weights=False)
    beh = train_dir / "behavior.parquet"
    rows = preference_rows(beh, task_of(read_meta(beh)))
    clock = StepClock()

    args = DPOConfig(output_dir="/tmp/introspect_bench_trl_dpo", max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=2e-4, report_to="none", use_cpu=True, bf16=True, save_strategy="no",
                     logging_steps=1000, seed=0, gradient_checkpointing=False)
    cls = DPOTrainer
    if lam > 0:
        terms = CouplingTerms.from_tables(beh, train_dir / "labels.parquet", loaded.tokenizer,
                                          weights={"explanation": 1.0, "behavior_kl": lam}, explanation_per_step=4,
                                          behavior_per_step=per_step, precision="bf16")
        cls = with_coupling(DPOTrainer, terms)
    trainer = cls(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer,
                  peft_config=LoraConfig(r=96, lora_alpha=192, target_modules=TARGETS), callbacks=[clock])
    trainer.train()
    return clock.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_dir", help="a run's train/ folder (behavior.parquet, labels.parquet, train_config.json)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--behavior-per-step", type=int, default=8)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--fast", action="store_true", help="introspect's steps with the faster-step keys experiment 3 "
                    "uses (compile, cache_bf16_weights, trees_per_row 2; the first step, which compiles, is warm-up)")
    ap.add_argument("--dpo", action="store_true", help="time TRL DPO with and without the coupling terms instead")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/bench_trl.json (bench_trl_dpo.json with --dpo)")
    args = ap.parse_args()
    threads = set_threads()
    d, n = Path(args.train_dir), args.warmup + args.steps
    out = args.out or f"benchmarks/results/bench_trl{'_dpo' if args.dpo else ''}.json"
    if args.dpo:
        return dpo_main(args, d, n, out, threads)
    variants = {"native explanation-only": lambda: native(d, 0.0, args.behavior_per_step, n, args.fast),
                "native coupling": lambda: native(d, args.lam, args.behavior_per_step, n, args.fast),
                "TRL SFT": lambda: trl_run(d, 0.0, args.behavior_per_step, n),
                "TRL SFT + coupling": lambda: trl_run(d, args.lam, args.behavior_per_step, n),
                "TRL SFT + hand-written KL": lambda: trl_hand_kl_run(d, args.lam, args.behavior_per_step, n)}
    got: dict[str, list[float]] = {k: [] for k in variants}
    for order in (list(variants), list(reversed(variants))):
        for name in order:
            got[name] += variants[name]()[args.warmup:]
            print(f"  {name}: {statistics.median(got[name]):.2f} s/step so far", flush=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    rows = [{"variant": k, "s_per_step_median": round(v, 3), "explanation_examples_per_s": round(4 / v, 3),
             "steps": got[k], "behavior_per_step": args.behavior_per_step if "coupling" in k or "KL" in k else 0,
             "lam": args.lam, "threads": threads, "fast_keys": args.fast and k.startswith("native")} for k, v in med.items()]
    ratios = {"native/TRL, explanation only (examples/s)": med["TRL SFT"] / med["native explanation-only"],
              "native/TRL, coupling step (examples/s)": med["TRL SFT + coupling"] / med["native coupling"],
              "native/TRL + hand-written KL forward, coupling step (examples/s)":
                  med["TRL SFT + hand-written KL"] / med["native coupling"],
              "TRL + coupling / TRL (time per step: the cost of coupling in TRL)": med["TRL SFT + coupling"] / med["TRL SFT"],
              "native coupling / native explanation-only (time per step)": med["native coupling"] / med["native explanation-only"]}
    for r in rows:
        print(f"{r['variant']:<26} {r['s_per_step_median']:6.2f} s/step  {r['explanation_examples_per_s']:.2f} examples/s")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    write_jsonl(out, [*rows, {k: round(v, 3) for k, v in ratios.items()}])
    print(f"wrote {out}")


def dpo_main(args: argparse.Namespace, d: Path, n: int, out: str, threads: int) -> None:
    got: dict[str, list[float]] = {"TRL DPO": [], "TRL DPO + coupling": []}
    for order in (["TRL DPO", "TRL DPO + coupling"], ["TRL DPO + coupling", "TRL DPO"]):
        for name in order:
            got[name] += dpo_run(d, args.lam if "coupling" in name else 0.0, args.behavior_per_step, n)[args.warmup:]
            print(f"  {name}: {statistics.median(got[name]):.2f} s/step so far", flush=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    ratio = med["TRL DPO + coupling"] / med["TRL DPO"]
    for k, v in med.items():
        print(f"{k:<22} {v:6.2f} s/step (4 preference pairs)")
    print(f"TRL DPO + coupling / TRL DPO (time per step: the cost of coupling in DPO): {ratio:.2f}x")
    write_jsonl(out, [*({"variant": k, "s_per_step_median": round(v, 3), "steps": got[k], "lam": args.lam,
                         "behavior_per_step": args.behavior_per_step, "threads": threads} for k, v in med.items()),
                      {"TRL DPO + coupling / TRL DPO": round(ratio, 3)}])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
