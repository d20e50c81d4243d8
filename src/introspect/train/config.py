"""Training configuration: YAML mapped onto typed dataclasses. The field comments are the reference docs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal
from pathlib import Path


from ..defaults import DEFAULT_MODEL, VERIFY_MARGIN
from ..errors import UserError
from ..files import read_yaml
from ..validity import MIN_AGREEMENT
from ..typed import apply_overrides, build, to_dict

__all__ = ["LoraSpec", "LossWeights", "MonitorSpec", "TrainConfig", "load_config", "to_dict", "validate"]


@dataclass
class LossWeights:
    explanation: float = 1.0  # cross-entropy on the explanation target tokens
    behavior_kl: float = 1.0  # λ: KL(p_M0 ‖ p_θ) on x and x∖C; 0 = the no-regulariser ablation
    sycophancy_reduction: float = 0.0  # μ: pull p_θ(answer | x) toward M0's p(answer | x∖C)
    refusal_tuning: float = 0.0  # ρ: CE toward the pair's gold behaviour (refusal task: comply benign, refuse harmful)

    CONCURRENT = ("sycophancy_reduction", "refusal_tuning")  # the objectives that move behaviour on purpose

    def terms(self) -> tuple[str, ...]:
        """Every loss term, in the order the trainer logs them."""
        return tuple(f.name for f in fields(self))

    def concurrent(self) -> bool:
        """Whether a concurrent objective is on."""
        return any(getattr(self, k) > 0 for k in self.CONCURRENT)

    def behavioural(self) -> bool:
        """Whether any term reads the choice distributions (the KL or a concurrent objective)."""
        return self.behavior_kl > 0 or self.concurrent()


@dataclass
class LoraSpec:
    rank: int = 96  # the paper found coupling only from rank 96 up
    alpha: int = 192  # LoRA scaling numerator: the adapter's output is multiplied by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input during training (0 = none)
    # the attention and MLP projections of Llama, Qwen, Gemma and Mistral (same names); "all-linear" = peft's
    # every linear layer but the output head, for architectures with other names
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"])


@dataclass
class MonitorSpec:
    """The coupling monitor (docs/training.md#coupling-monitor): every `every` steps, on held-out pairs."""

    every: int = 0  # steps between checks (0 = off); the last step is always checked
    pairs: str = ""  # M0's BehaviorTable on held-out pairs, never training pairs (`introspect run`: monitor_split)
    n: int = 32  # the first n of those pairs
    policy: Literal["warn", "stop", "rollback", "adapt"] = "warn"  # what a failed check does (docs/training.md#coupling-monitor)
    min_agreement: float = MIN_AGREEMENT  # the coupling condition: fixed labels agree with current behaviour on this share
    lr_factor: float = 0.5  # rollback: lr x this
    lambda_factor: float = 2.0  # rollback: λ x this; adapt: λ x this when agreement < min_agreement
    lambda_floor: float = 0.1  # adapt/rollback from λ = 0 start here
    lambda_down: float = 0.8  # adapt: λ x this when the explanation loss stalls while agreement holds
    stall_checks: int = 2  # adapt: stalled = the explanation loss fell by less than stall_tol over this many checks
    stall_tol: float = 0.05  # relative
    max_rollbacks: int = 3  # rollback: after this many, stop instead
    max_new_tokens: int = 24  # explanation length at checks


@dataclass
class TrainConfig:
    behavior: str = ""  # M0's BehaviorTable on the training pairs (`introspect sample`): p_M0 for the regulariser
    labels: str = ""  # explanation labels for the same pairs (`introspect label`), from any model or with noise
    out_dir: str = ""  # checkpoints/, metrics.jsonl and train_config.yaml go here
    model: str = DEFAULT_MODEL  # the model to train (M0); must match the BehaviorTable's model
    seed: int = 0  # seeds Python, NumPy, torch and the per-step batch draw
    steps: int = 150  # optimiser steps
    lr: float = 2e-4  # AdamW peak learning rate (reached after warm-up)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # the learning-rate schedule after warm-up
    warmup_steps: int = 10  # linear warm-up from 0 to lr over this many steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradients clipped to this global L2 norm before each optimiser step
    explanation_per_step: int = 4  # explanation examples in one optimiser step (across all processes)
    behavior_per_step: int = 4  # training pairs in one optimiser step for behaviour losses (x and x∖C each)
    concurrent_pairs: Literal["split", "shared"] = "split"  # split: the concurrent objective (sycophancy_reduction, refusal_tuning) reads its
    #   own pairs, a fixed seeded share of the training pairs that the KL never reads; shared: both read the same rows
    concurrent_share: float = 0.5  # with split: the share of training pairs set aside for the concurrent objective
    concurrent_per_step: int = 4  # with split: concurrent-objective pairs in one optimiser step
    grad_accum: int = 1  # micro-batches per optimiser step (each process)
    pack: bool = True  # run each pair's explanation, x and x∖C as one prefix tree (same losses, fewer tokens)
    rows_per_forward: int = 2  # examples per forward pass, length-sorted (padding costs more than batching saves on CPU)
    trees_per_row: int = 1  # pairs' prefix trees merged into one row: their common start (system turn) runs once
    finetune: Literal["lora", "full"] = "lora"  # a LoRA adapter, or every weight
    activation_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    compile: bool = False  # torch.compile each decoder layer (regional; tens of seconds once): faster steps (train/fast.py)
    cache_bf16_weights: bool = False  # keep a bf16 copy of frozen weights for bf16 autocast: same numbers, no re-casts
    lora: LoraSpec = field(default_factory=LoraSpec)  # the adapter's shape (finetune: lora)
    weights: LossWeights = field(default_factory=LossWeights)  # each loss term's weight; 0 = not computed
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 (autocast) | fp32; the answer-position head is fp32 either way
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N; under `accelerate launch` each process its own
    verify_margin: float = VERIFY_MARGIN  # probe re-sampling: bf16 near-ties closer than this are re-scored in fp32
    balance_explanations: bool = False  # draw each step's explanation examples half changed, half unchanged
    checkpoint_every: int = 50  # steps; the last step is always saved
    keep_checkpoints: int = 0  # keep the newest N checkpoints' weights (0 = all); optimiser state only in the newest
    probe_every: int = 25  # steps between behaviour probes (0 = off)
    probe_pairs: int = 32  # the first N training pairs, re-sampled at every probe
    agreement_warn: float = MIN_AGREEMENT  # warn when fixed labels agree with current behaviour less than this
    monitor: MonitorSpec = field(default_factory=MonitorSpec)  # coupling monitor on held-out pairs (acts; off by default)
    max_length: int = 1024  # explanation examples longer than this (tokens) are an error
    init_from: str = ""  # a checkpoint folder (RUN/train/checkpoints/step_N) whose weights training starts from, same
    #   finetune and LoRA shape; "" = M0. The intervention test (`introspect intervene`) starts from a trained explainer


def validate(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    checks = [
        (all(getattr(cfg, k) for k in ("behavior", "labels", "out_dir")), "behavior, labels and out_dir are required"),
        (cfg.steps > 0 and cfg.lr > 0, "steps and lr must be positive"),
        (cfg.explanation_per_step >= 0 and cfg.behavior_per_step >= 0, "per-step counts must be >= 0"),
        (min(vars(cfg.weights).values()) >= 0, "loss weights must be >= 0"),
        (max(vars(cfg.weights).values()) > 0, "every loss weight is 0 (weights.*): nothing would be trained; set "
         "weights.explanation (or another weight) > 0"),
        (cfg.max_grad_norm > 0, "max_grad_norm must be > 0 (a negative norm flips every gradient)"),
        (cfg.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (cfg.weight_decay >= 0, "weight_decay must be >= 0"),
        (cfg.seed >= 0, "seed must be >= 0"),
        (cfg.max_length >= 16, "max_length must be >= 16 tokens"),
        (cfg.lora.alpha > 0, "lora.alpha must be > 0"),
        (cfg.probe_every >= 0 and cfg.probe_pairs >= 1, "probe_every must be >= 0 and probe_pairs >= 1"),
        (cfg.grad_accum >= 1, "grad_accum must be >= 1"),
        (0 < cfg.concurrent_share < 1 and cfg.concurrent_per_step >= 1,
         "concurrent_share must be in (0, 1) and concurrent_per_step >= 1"),
        (cfg.rows_per_forward >= 1 and cfg.checkpoint_every >= 1 and cfg.trees_per_row >= 1,
         "rows_per_forward, trees_per_row and checkpoint_every must be >= 1"),
        (not (cfg.compile and cfg.activation_checkpointing),
         "compile and activation_checkpointing do not combine: set one of them to false"),
        (not cfg.cache_bf16_weights or (cfg.precision == "bf16" and cfg.finetune == "lora"),
         "cache_bf16_weights needs precision: bf16 and finetune: lora (it caches frozen weights for bf16 autocast)"),
        (cfg.keep_checkpoints >= 0, "keep_checkpoints must be >= 0 (0 keeps all)"),
        (0 <= cfg.lora.dropout < 1 and cfg.lora.rank >= 1, "lora.rank must be >= 1 and lora.dropout in [0, 1)"),
        (cfg.monitor.every >= 0 and cfg.monitor.n >= 1 and cfg.monitor.max_rollbacks >= 0, "monitor.every must be >= 0, "
         "monitor.n >= 1 and monitor.max_rollbacks >= 0"),
        (not cfg.monitor.every or cfg.monitor.pairs, "monitor.every > 0 needs monitor.pairs (M0's BehaviorTable on held-out "
         "pairs; in a run config: monitor_split)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A train config from YAML (its `train:` section if it has one), `--set a.b=VALUE` overrides applied."""
    data = read_yaml(path)
    data = apply_overrides(dict(data.get("train", data)), overrides or [])
    return validate(build(TrainConfig, data, str(path)), str(path))
