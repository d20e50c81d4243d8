"""Two opt-in speed-ups of the training step that compute the same losses (docs/training.md#faster-steps-opt-in):
the bf16 weight copies give identical numbers; compiled layers agree to fp32 rounding in fp32 and, in bf16, order
and fuse the arithmetic differently (differences of bf16's own size).

`compile_layers`: regional `torch.compile` — each decoder layer's forward is compiled (all layers share one compiled
graph, so it compiles in tens of seconds, not the minutes a whole-model compile takes on 2 cores), and only where
gradients are recorded: probes, the monitor and generation (no grad, KV caches) run the eager layers.

`cache_bf16_weights`: under bf16 autocast every call of a frozen Linear casts its fp32 weight to bf16 again (autocast
caches casts only of weights that require grad). This keeps one bf16 copy per frozen Linear of the decoder layers and
uses it under bf16 autocast — the same rounding, so the same numbers — and the fp32 weight everywhere else.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError


def _base(model: Any) -> Any:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class the model lists in `_no_split_modules` (transformers' own
    name for them, e.g. LlamaDecoderLayer)."""
    base = _base(model)
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(f"{type(base).__name__} names no decoder layer class (_no_split_modules), which config keys "
                        "compile and cache_bf16_weights need: set them to false for this model")
    return layers


def compile_layers(model: Any) -> int:
    """Compile each decoder layer's forward for steps that record gradients; returns the number of layers."""
    layers = decoder_layers(model)
    for layer in layers:
        eager = layer.forward
        compiled = torch.compile(eager, dynamic=True)

        def forward(*args: Any, _eager: Any = eager, _compiled: Any = compiled, **kwargs: Any) -> Any:
            return (_compiled if torch.is_grad_enabled() else _eager)(*args, **kwargs)

        layer.forward = forward
    # every layer runs the same code: one compilation per (grad, autocast, requires_grad-of-input) state, and a few
    # more while dynamic shapes settle; the default limit (8) would send later layers back to eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return len(layers)


def cache_bf16_weights(model: Any) -> int:
    """Give every frozen Linear inside the decoder layers a bf16 copy of its weight, used under bf16 autocast;
    returns the number of Linear modules. The copy is a non-persistent buffer: checkpoints do not change."""
    n = 0
    for layer in decoder_layers(model):
        for mod in layer.modules():
            if type(mod) is not torch.nn.Linear or mod.weight.requires_grad:
                continue
            mod.register_buffer("weight_bf16", mod.weight.detach().to(torch.bfloat16), persistent=False)

            def forward(x: torch.Tensor, _mod: torch.nn.Linear = mod, _eager: Any = mod.forward) -> torch.Tensor:
                kind = x.device.type
                if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16:
                    return torch.nn.functional.linear(x, _mod.weight_bf16, _mod.bias)  # autocast casts x as it would
                return _eager(x)

            mod.forward = forward
            n += 1
    return n
