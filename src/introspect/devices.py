"""Where models run: one `device` setting (`auto`: CUDA when present, else CPU; or `cpu`, `cuda`, `cuda:N`), the
device a model sits on, and bf16 autocast for that device type.

Weights stay fp32 on every device and bf16 runs under autocast: the fp32 re-check of near-ties (`verify_margin`) and
the fp32 answer-position head (`behavior.head_logits`) then need no second copy of the model.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from .errors import UserError

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve(spec: str = "auto") -> str:
    """The device a setting names, checked against what this machine has."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} asked for, but torch sees no CUDA GPU here (flag --device / config key "
                            f"device: use auto or cpu)")
        if ":" in spec and int(spec[5:]) >= torch.cuda.device_count():
            raise UserError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s) (flag --device)")
        return spec
    raise UserError(f"unknown device {spec!r}: use {CHOICES} (flag --device / config key device)")


def of(model: Any) -> Any:
    """The device a (possibly wrapped) model's parameters are on."""
    return next(getattr(model, "module", model).parameters()).device


def autocast(precision: str, device_type: str = "cpu") -> Any:
    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext()
    raise UserError(f"precision must be 'bf16' or 'fp32', got {precision!r} (flag --precision)")


def secondary() -> bool:
    """A process of a multi-process launch other than the main one (it neither locks nor writes run outputs)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def shard(device: str) -> tuple[int, int] | None:
    """(this process's rank, number of processes) when launched by `accelerate launch` / torchrun with more than one
    process, else None. Work split by rank (`items[rank::processes]`) is put back in order by `gather_rows`."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")  # CPU processes talk over gloo (the trainer's Accelerator agrees)
    return state.process_index, state.num_processes


def gather_texts(ids: list[str], texts: list[str], order: list[str]) -> list[str] | None:
    """Every process's (id, text) pairs, on the main process in `order`; None elsewhere."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    parts = gather_object(list(zip(ids, texts)))
    if not PartialState().is_main_process:
        return None
    got = dict(parts)
    return [got[i] for i in order]


def gather_rows(df: Any, order: list[str]) -> Any:
    """Every process's rows of a table (one row per pair), on the main process in `order` of pair ids; None elsewhere."""
    import pandas as pd
    from accelerate import PartialState
    from accelerate.utils import gather_object

    parts = gather_object([df])
    if not PartialState().is_main_process:
        return None
    return pd.concat(parts).set_index("pair_id").loc[order].reset_index()


def barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def memory_estimate(model: Any, params: list, *, max_length: int, rows: int, activation_checkpointing: bool) -> str:
    """A rough per-process training memory estimate: fp32 weights, gradients and AdamW's two moments of the trainable
    parameters, and the activations of one forward of `rows` rows of `max_length` tokens
    (docs/training.md#devices-and-gpus says how rough)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params)
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    act = max_length * rows * hidden * layers * (2 if activation_checkpointing else 34) * 2  # bf16; ~34 values/token/layer
    weights, train_state = total * 4, trainable * 4 * 3
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    return (f"weights {gb(weights)} + gradients and AdamW state {gb(train_state)} + activations up to "
            f"{gb(act)} (rows of {max_length} tokens) = about {gb(weights + train_state + act)}")
