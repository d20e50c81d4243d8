"""merged.py: evaluation weights (LoRA delta merged into a separate copy) compute what the unmerged model computes,
and leave the model exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from introspect import merged
from introspect.hashing import weights_hash


@pytest.fixture()
def lora_model(tiny):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj",
                                                                                                        "up_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # B = 0 at init would make the adapter a no-op
    return model.eval()


def logits(model, ids, precision):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model(input_ids=ids).logits.float()


def test_merged_fp32_equals_unmerged_and_restores_the_model(lora_model) -> None:
    ids = torch.randint(0, 1000, (3, 17), generator=torch.Generator().manual_seed(0))
    before_hash = weights_hash(lora_model)
    plain = logits(lora_model, ids, "fp32")
    base = lora_model.get_base_model()
    with lora_model.disable_adapter():
        no_adapter = logits(lora_model, ids, "fp32")
    assert (plain - no_adapter).abs().max() > 1e-2  # the adapter matters: the comparison below can fail
    with merged.merged(lora_model, "fp32") as n:
        assert n == 3 * len([m for m in base.modules() if type(m).__name__.endswith("DecoderLayer")])
        fast = logits(lora_model, ids, "fp32")
        # inside the block, a bf16 autocast forward is not the fp32 fast path: the layers' own forward runs
        assert torch.allclose(logits(lora_model, ids, "bf16"), logits_outside_bf16(lora_model, ids), atol=0)
    assert (fast - plain).abs().max() < 1e-5
    assert weights_hash(lora_model) == before_hash
    assert torch.equal(logits(lora_model, ids, "fp32"), plain)
    assert not any("forward" in m.__dict__ for m in lora_model.modules())


def logits_outside_bf16(model, ids):
    """The unmerged bf16 forward, with the fast path switched off by another precision's block."""
    with merged.merged(model, "fp32"):
        return logits(model, ids, "bf16")


def test_merged_bf16_is_close_and_the_same_greedy_token(lora_model) -> None:
    ids = torch.randint(0, 1000, (4, 21), generator=torch.Generator().manual_seed(2))
    plain = logits(lora_model, ids, "bf16")
    with merged.merged(lora_model, "bf16"):
        fast = logits(lora_model, ids, "bf16")
    ref = logits(lora_model, ids, "fp32")
    # merged bf16 is as close to fp32 as unmerged bf16 is (rounding of bf16's size, not a different computation)
    assert (fast - ref).abs().max() < 3 * (plain - ref).abs().max() + 1e-3
    assert (fast.argmax(-1) == plain.argmax(-1)).float().mean() > 0.9


def test_a_model_without_adapters_gets_bf16_copies_only(tiny) -> None:
    model = copy.deepcopy(tiny.model).eval()
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(3))
    plain = logits(model, ids, "bf16")
    with merged.merged(model, "bf16") as n:
        assert n == len([m for m in model.modules() if type(m) is torch.nn.Linear])
        fast = logits(model, ids, "bf16")
    assert torch.equal(fast, plain)  # the same bf16 rounding of each weight, cast once instead of per call
    with merged.merged(model, "fp32") as n:
        assert n == 0


@pytest.mark.parametrize("shape", [(1, 64), (3, 7, 64), (130, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_is_what_bf16_autocast_computes(shape, bias) -> None:
    """The evaluation weights' bf16 matmul (oneDNN's prepacked weight on CPU) gives bf16 autocast's numbers, bit for bit."""
    g = torch.Generator().manual_seed(4)
    w, b, x = torch.randn(48, 64, generator=g), torch.randn(48, generator=g) if bias else None, torch.randn(*shape, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = F.linear(x, w, b), merged.bf16_linear(w, b)(x)
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    assert torch.equal(got, want)
    assert not torch.equal(got, F.linear(x, w, b).to(torch.bfloat16))  # fp32 then rounded differs: the check can fail


def test_an_fp32_forward_inside_a_bf16_block_runs_the_merged_fp32_weights(lora_model) -> None:
    """The near-tie re-check (fp32, inside a bf16 evaluation) runs one matmul per Linear with the fp32 merged weight,
    not the adapter's own A and B, and gets the unmerged fp32 numbers to fp32 rounding."""
    ids = torch.randint(0, 1000, (2, 13), generator=torch.Generator().manual_seed(6))
    plain = logits(lora_model, ids, "fp32")
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda *a, _n=name: calls.append(_n)) for name, m in lora_model.named_modules()
             if name.endswith("lora_A.default")]
    try:
        with merged.merged(lora_model, "bf16"):
            exact = logits(lora_model, ids, "fp32")
        assert calls == []
        logits(lora_model, ids, "fp32")
        assert calls  # outside the block the adapter runs: the check above can fail
    finally:
        for h in hooks:
            h.remove()
    assert (exact - plain).abs().max() < 1e-5


@pytest.mark.slow
def test_the_evaluate_stage_records_merged_evaluation_and_m0_is_unaffected(tmp_path) -> None:
    """evaluate.merge_adapter is an input of each checkpoint's result (not M0's); switching it re-evaluates the
    checkpoints only, and in fp32 both ways give the same explanations."""
    import json

    from conftest import write_tiny_run_config

    from introspect.pipeline import run
    from introspect.run_config import load_run_config
    from introspect.tables import read_table

    cfg_path = write_tiny_run_config(tmp_path, evaluate={"baselines": False})
    run(load_run_config(cfg_path))
    ev = tmp_path / "run" / "eval"
    merged_inputs = {s: json.loads((ev / f"step_00000{s}" / "result.json").read_text())["inputs"] for s in (0, 2)}
    texts_merged = read_table(ev / "step_000002" / "items.parquet")[0]["text"].tolist()
    assert "merged_adapter" in merged_inputs[2] and "merged_adapter" not in merged_inputs[0]
    run(load_run_config(cfg_path, ["evaluate.merge_adapter=false"]))
    plain_inputs = {s: json.loads((ev / f"step_00000{s}" / "result.json").read_text())["inputs"] for s in (0, 2)}
    assert plain_inputs[0] == merged_inputs[0] and "merged_adapter" not in plain_inputs[2]
    assert read_table(ev / "step_000002" / "items.parquet")[0]["text"].tolist() == texts_merged  # fp32 config
