"""Evaluation weights: each LoRA adapter's delta merged into a *separate* copy of its layer's weight, kept in the
dtype its matmul runs in, for the duration of a block (`evaluate.merge_adapter`, docs/benchmarks.md#evaluation).

Generating an explanation is ~250 tokens of prefill and ~20 greedy decode steps. Unmerged, every Linear of a LoRA
checkpoint runs three matmuls (the base weight and the adapter's A and B: at rank 96 about 25% more FLOPs, in skinny
shapes), and under bf16 autocast every forward casts every fp32 weight to bf16 again (autocast caches casts only of
weights that require grad) — in a decode step of 16 rows that cast costs more than the matmuls. Here each Linear gets
one weight W + s·B·A (fp32 sum, then bf16 under bf16 precision) made once per checkpoint; the LM head and the frozen
Linears get their bf16 copy too. The model's own weights are never modified, so M0 is M0 again when the block ends,
exactly (no merge/unmerge round trip).

Where the fast path applies: a bf16 run under bf16 autocast, an fp32 run outside autocast. On CPU the fp32 re-check
of near-ties inside a bf16 run (fp32 inputs, autocast off) uses each LoRA layer's fp32 merged weight — the same fp32
sum before its bf16 rounding, kept in RAM (4 bytes per adapted weight; on an accelerator that memory is not spent) —
so it too runs one matmul per Linear instead of three. Anything else (`behavior.head_logits`, which reads the head's
fp32 weight directly; the re-check on an accelerator) runs the layer's own forward, unmerged. Merged and unmerged
differ by rounding only: in fp32 by fp32 rounding; in bf16 the sum W + s·B·A is rounded to bf16 once instead of the
two products separately. How often that changes a
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


PACK_ROWS = 64  # the row count oneDNN's weight layout is chosen for (any row count runs; bench: 1-2,352 rows alike)


def bf16_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """x -> linear(x, weight, bias) in bf16, as bf16 autocast computes it: on CPU with oneDNN, from the weight reordered
    once into oneDNN's blocked layout (torch's own `_reorder_linear_weight` / `_linear_pointwise`, what inductor
    uses for frozen CPU weights): the same products and sums, without re-laying out the weight on every call
    (docs/benchmarks.md#evaluation). Elsewhere `F.linear`."""
    weight = weight.to(torch.bfloat16)
    bias = None if bias is None else bias.detach().to(torch.bfloat16)
    if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
        except (AttributeError, RuntimeError):  # a torch build without the op: the plain path
            packed = None
        if packed is not None:
            return lambda x: torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), packed, bias, "none", [], "")
    return lambda x: F.linear(x.to(torch.bfloat16), weight, bias)


def _lora_layers(model: Any) -> list[Any]:
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft absent: no adapters to merge
        return []
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def evaluation_weights(model: Any, precision: str) -> list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]]:
    """(module, weight its fast forward uses, fp32 merged weight for fp32 calls inside a bf16 run on CPU or None):
    LoRA Linears with the active adapters' deltas merged (fp32 sum), and under bf16 every other Linear (the LM head
    included) with a bf16 copy."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    chosen: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = []
    covered: set[int] = set()
    for mod in _lora_layers(model):
        if mod.merged or mod.disable_adapters or mod.lora_variant:
            continue  # merged already, switched off, or a variant (DoRA, ...): its own forward
        with torch.no_grad():
            w = mod.base_layer.weight.detach().float()
            for name in mod.active_adapters:
                if name in mod.lora_A:
                    w = w + mod.get_delta_weight(name).float()
        exact = w if dtype is not None and w.dtype == torch.float32 and w.device.type == "cpu" else None
        chosen.append((mod, w.to(dtype or mod.base_layer.weight.dtype), exact))
        covered |= {id(m) for m in mod.modules()}
    if dtype is not None:
        for mod in model.modules():
            if type(mod) is torch.nn.Linear and id(mod) not in covered:
                chosen.append((mod, mod.weight.detach().to(dtype), None))
    return chosen


@contextmanager
def merged(model: Any, precision: str, *, on: bool = True) -> Iterator[int]:
    """Within the block, `model`'s Linears use their evaluation weights (see the module doc); yields their number.
    `on=False`: the model as it is (yields 0)."""
    chosen = evaluation_weights(model, precision) if on else []
    own = [mod.__dict__.get("forward") for mod, _, _ in chosen]  # an instance forward (a hook's) is put back after
    for mod, weight, exact in chosen:
        bias = mod.base_layer.bias if hasattr(mod, "base_layer") else mod.bias
        fast = bf16_linear(weight, bias) if precision == "bf16" else lambda x, _w=weight, _b=bias: F.linear(x, _w, _b)

        def forward(x: torch.Tensor, *args: Any, _fast_linear: Any = fast, _w32: torch.Tensor | None = exact,
                    _b: Any = bias, _own: Any = mod.forward, **kwargs: Any) -> torch.Tensor:
            if not args and not kwargs:
                if _fast(precision, x):
                    return _fast_linear(x)
                if _w32 is not None and x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
                    return F.linear(x, _w32, _b)  # an fp32 call inside a bf16 run: the near-tie re-check
            return _own(x, *args, **kwargs)

        mod.forward = forward
    try:
        yield len(chosen)
    finally:
        for (mod, _, _), before in zip(chosen, own):
            if before is None:
                del mod.forward  # the class's forward again
            else:
                mod.forward = before
