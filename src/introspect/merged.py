"""Evaluation weights: each LoRA adapter's delta merged into a *separate* copy of its layer's weight, kept in the
dtype its matmul runs in, for the duration of a block (`evaluate.merge_adapter`, docs/benchmarks.md#evaluation).

Generating an explanation is ~250 tokens of prefill and ~20 greedy decode steps. Unmerged, every Linear of a LoRA
checkpoint runs three matmuls (the base weight and the adapter's A and B: at rank 96 about 25% more FLOPs, in skinny
shapes), and under bf16 autocast every forward casts every fp32 weight to bf16 again (autocast caches casts only of
weights that require grad) — in a decode step of 16 rows that cast costs more than the matmuls. Here each Linear gets
one weight W + s·B·A (fp32 sum, then bf16 under bf16 precision) made once per checkpoint; the LM head and the frozen
Linears get their bf16 copy too. The model's own weights are never modified, so M0 is M0 again when the block ends,
exactly (no merge/unmerge round trip).

Where the fast path applies: a bf16 run under bf16 autocast, an fp32 run outside autocast. Anything else (the fp32
re-check of near-ties inside a bf16 run; `behavior.head_logits`, which reads the head's fp32 weight directly) runs
the layer's own forward, unmerged, as before. Merged and unmerged differ by rounding only: in fp32 by fp32 rounding;
in bf16 the sum W + s·B·A is rounded to bf16 once instead of the two products separately. How often that changes a
greedy explanation or an answer is measured by benchmarks/bench_eval.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F


def _fast(precision: str, x: torch.Tensor) -> bool:
    on = torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.bfloat16
    return on if precision == "bf16" else not torch.is_autocast_enabled(x.device.type)


def _lora_layers(model: Any) -> list[Any]:
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft absent: no adapters to merge
        return []
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def evaluation_weights(model: Any, precision: str) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(module, weight its fast forward uses): LoRA Linears with the active adapters' deltas merged (fp32 sum), and
    under bf16 every other Linear (the LM head included) with a bf16 copy."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    chosen: list[tuple[torch.nn.Module, torch.Tensor]] = []
    covered: set[int] = set()
    for mod in _lora_layers(model):
        if mod.merged or mod.disable_adapters or mod.lora_variant:
            continue  # merged already, switched off, or a variant (DoRA, ...): its own forward
        with torch.no_grad():
            w = mod.base_layer.weight.detach().float()
            for name in mod.active_adapters:
                if name in mod.lora_A:
                    w = w + mod.get_delta_weight(name).float()
        chosen.append((mod, w.to(dtype or mod.base_layer.weight.dtype)))
        covered |= {id(m) for m in mod.modules()}
    if dtype is not None:
        for mod in model.modules():
            if type(mod) is torch.nn.Linear and id(mod) not in covered:
                chosen.append((mod, mod.weight.detach().to(dtype)))
    return chosen


@contextmanager
def merged(model: Any, precision: str, *, on: bool = True) -> Iterator[int]:
    """Within the block, `model`'s Linears use their evaluation weights (see the module doc); yields their number.
    `on=False`: the model as it is (yields 0)."""
    chosen = evaluation_weights(model, precision) if on else []
    own = [mod.__dict__.get("forward") for mod, _ in chosen]  # an instance forward (a hook's) is put back after
    for mod, weight in chosen:
        bias = mod.base_layer.bias if hasattr(mod, "base_layer") else mod.bias

        def forward(x: torch.Tensor, *args: Any, _w: torch.Tensor = weight, _b: Any = bias,
                    _own: Any = mod.forward, **kwargs: Any) -> torch.Tensor:
            if _fast(precision, x) and not args and not kwargs:
                return F.linear(x, _w, _b)
            return _own(x, *args, **kwargs)

        mod.forward = forward
    try:
        yield len(chosen)
    finally:
        for (mod, _), before in zip(chosen, own):
            if before is None:
                del mod.forward  # the class's forward again
            else:
                mod.forward = before
