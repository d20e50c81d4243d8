"""Training configuration: YAML mapped onto typed dataclasses. The field comments are the reference docs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import UserError, read_yaml


@dataclass
class LossWeights:
    explanation: float = 1.0  # cross-entropy on the explanation target tokens
    behavior_kl: float = 1.0  # λ: KL(p_M0 ‖ p_θ) on x and x∖C; 0 = the no-regulariser ablation
    sycophancy_reduction: float = 0.0  # μ: pull p_θ(answer | x) toward M0's p(answer | x∖C)
    refusal_tuning: float = 0.0  # ρ: CE toward the pair's gold behaviour (refusal task: comply benign, refuse harmful)


@dataclass
class LoraSpec:
    rank: int = 96  # the paper found coupling only from rank 96 up
    alpha: int = 192
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainConfig:
    behavior: str  # M0's BehaviorTable on the training pairs (`introspect sample`): p_M0 for the regulariser
    labels: str  # explanation labels for the same pairs (`introspect label`), from any model or with noise
    out_dir: str  # checkpoints/, metrics.jsonl and train_config.yaml go here
    model: str = "smollm2-135m-instruct"  # the model to train (M0); must match the BehaviorTable's model
    seed: int = 0  # seeds Python, NumPy, torch and the per-step batch draw
    steps: int = 150  # optimiser steps
    lr: float = 2e-4
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    explanation_per_step: int = 4  # explanation examples in one optimiser step (across all processes)
    behavior_per_step: int = 4  # training pairs in one optimiser step for behaviour losses (x and x∖C each)
    grad_accum: int = 1  # micro-batches per optimiser step (each process)
    pack: bool = True  # run each pair's explanation, x and x∖C as one prefix tree (same losses, fewer tokens)
    rows_per_forward: int = 2  # examples per forward pass, length-sorted (padding costs more than batching saves on CPU)
    finetune: str = "lora"  # lora | full
    lora: LoraSpec = field(default_factory=LoraSpec)
    weights: LossWeights = field(default_factory=LossWeights)
    precision: str = "bf16"  # bf16 (CPU autocast) | fp32
    checkpoint_every: int = 50  # steps; the last step is always saved
    probe_every: int = 25  # steps between behaviour probes (0 = off)
    probe_pairs: int = 32  # the first N training pairs, re-sampled at every probe
    agreement_warn: float = 0.7  # warn when fixed labels agree with current behaviour less than this
    max_length: int = 1024  # explanation examples longer than this (tokens) are an error


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = {"lora": LoraSpec, "weights": LossWeights}.get(name) if cls is TrainConfig else None
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**kwargs)


def validate(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    checks = [
        (cfg.finetune in ("lora", "full"), "finetune must be 'lora' or 'full'"),
        (cfg.schedule in ("cosine", "linear", "constant"), "schedule must be cosine, linear or constant"),
        (cfg.precision in ("bf16", "fp32"), "precision must be bf16 or fp32"),
        (cfg.steps > 0 and cfg.lr > 0, "steps and lr must be positive"),
        (cfg.explanation_per_step >= 0 and cfg.behavior_per_step >= 0, "per-step counts must be >= 0"),
        (min(vars(cfg.weights).values()) >= 0, "loss weights must be >= 0"),
        (cfg.grad_accum >= 1, "grad_accum must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    data = read_yaml(path)
    data = dict(data.get("train", data))
    data.update(overrides or {})
    return validate(_build(TrainConfig, data, str(path)), str(path))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
