"""The opt-in step speed-ups keep the step's numbers: bf16 weight caching exactly, regional compile (train/fast.py) and
several pairs' trees per row (`trees_per_row`) to fp32 rounding; through the real trainer too (probes run the eager
layers under no_grad)."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from introspect import behavior, devices, labels
from introspect import tables as tbl
from introspect.errors import UserError
from introspect.models import Loaded
from introspect.tasks import get_task
from introspect.train import LoraSpec, LossWeights, TrainConfig, fast
from introspect.train import step as S
from introspect.train import trainer as T
from introspect import tokens


@pytest.fixture(scope="module")
def setup(tiny: Loaded, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "val", 8, seed=0)
    df, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, pairs, precision="fp32", progress=False)
    lab = labels.make_labels(df, task)
    out = tmp_path_factory.mktemp("fast")
    meta = tbl.table_meta(model_id="tiny-random", weights_hash=tiny.weights_hash, task=task, pairs=pairs,
                          seed=0, split="val", precision="fp32", verify_margin=0.0)
    tbl.write_table(out / "behavior.parquet", df, meta)
    tbl.write_table(out / "labels.parquet", lab, meta)
    a, b = behavior.encode_pairs(tiny.tokenizer, task, pairs)
    return dict(df=df, a=a, b=b, out=out, expl=S.encode_explanations(tiny.tokenizer, lab, 768, "labels"),
                cids=tokens.choice_token_ids(tiny.tokenizer, task.continuations))


def _lora(tiny: Loaded) -> torch.nn.Module:
    cfg = TrainConfig(behavior="-", labels="-", out_dir="-", lora=LoraSpec(rank=8, alpha=16))
    torch.manual_seed(3)  # LoRA A's initialisation and B below: the same adapter for every model made here
    model = T.wrap(copy.deepcopy(tiny.model), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a non-zero adapter: at step 0 (B = 0) LoRA would not be tested at all
    return model


def _losses_and_grads(model: torch.nn.Module, s: dict, tok_pad: int, precision: str, **kw) -> tuple[dict, dict]:
    cfg = TrainConfig(behavior="-", labels="-", out_dir="-", weights=LossWeights(explanation=1.0, behavior_kl=1.0), **kw)
    p0, p1 = np.array(s["df"]["probs"].tolist()), np.array(s["df"]["probs_without"].tolist())
    with devices.autocast(precision):
        losses = S.step_losses(model, cfg=cfg, expl=s["expl"][:4], with_c=s["a"], without_c=s["b"], p_m0=p0,
                               p_m0_without=p1, choice_ids=s["cids"], pad_id=tok_pad, packed=4)
        sum(losses.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def test_cached_bf16_weights_give_identical_losses_and_gradients(tiny: Loaded, setup: dict) -> None:
    plain, cached = _lora(tiny), _lora(tiny)
    assert fast.cache_bf16_weights(cached) == 7 * len(fast.decoder_layers(cached))  # q k v o gate up down
    pad = tiny.tokenizer.pad_token_id
    for precision in ("bf16", "fp32"):  # fp32: the cache is not used, the fp32 weights are
        (la, ga), (lb, gb) = _losses_and_grads(plain, setup, pad, precision), _losses_and_grads(cached, setup, pad, precision)
        assert la == lb, precision
        assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga), precision
    assert not any("weight_bf16" in k for k in cached.state_dict())  # checkpoints are unchanged


@pytest.mark.slow
def test_compiled_layers_match_eager_in_fp32_and_leave_no_grad_calls_eager(tiny: Loaded, setup: dict) -> None:
    eager, compiled = _lora(tiny), _lora(tiny)
    assert fast.compile_layers(compiled) == len(fast.decoder_layers(eager))
    pad = tiny.tokenizer.pad_token_id
    (la, ga), (lb, gb) = _losses_and_grads(eager, setup, pad, "fp32"), _losses_and_grads(compiled, setup, pad, "fp32")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-5 for k in la), (la, lb)
    assert ga.keys() == gb.keys() and max(float((ga[k] - gb[k]).abs().max()) for k in ga) <= 1e-4
    ids = torch.tensor([setup["a"][0]])
    with torch.no_grad():  # probes, the monitor and generation run the eager layers: bit-identical
        assert torch.equal(eager(input_ids=ids).logits, compiled(input_ids=ids).logits)


@pytest.mark.slow
def test_trainer_with_both_speedups_matches_the_plain_run(setup: dict) -> None:
    """bf16, 3 steps with a probe: cache_bf16_weights alone gives the plain run's metrics exactly; with compile too,
    the losses agree to bf16 rounding (kernels fuse differently)."""
    out = setup["out"]

    def run(name: str, **kw) -> list[dict]:
        cfg = TrainConfig(behavior=str(out / "behavior.parquet"), labels=str(out / "labels.parquet"), out_dir=str(out / name),
                          model="tiny-random", steps=3, lr=5e-3, warmup_steps=0, schedule="constant",
                          explanation_per_step=4, behavior_per_step=4, checkpoint_every=3, probe_every=3, probe_pairs=4,
                          precision="bf16", lora=LoraSpec(rank=8, alpha=16), **kw)
        T.train(cfg)
        return [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]

    plain, cached, both = run("plain"), run("cached", cache_bf16_weights=True), run("both", cache_bf16_weights=True, compile=True)
    keys = ("explanation", "behavior_kl", "grad_norm")
    assert [[r[k] for k in keys] for r in plain] == [[r[k] for k in keys] for r in cached]
    assert "agreement" in both[-1] and both[-1]["agreement"] == cached[-1]["agreement"]  # the probe ran (eager, no grad)
    for p, b in zip(plain, both):
        assert abs(p["explanation"] - b["explanation"]) <= 0.05 * abs(p["explanation"]), (p, b)


@pytest.mark.parametrize("trees, rows", [(2, 2), (3, 1), (8, 1)])
def test_trees_per_row_gives_the_same_losses_and_gradients(tiny: Loaded, setup: dict, trees: int, rows: int) -> None:
    """8 behaviour pairs, the first 4 with their explanation examples: 8 trees merged `trees` to a row."""
    model = _lora(tiny)
    pad = tiny.tokenizer.pad_token_id
    (la, ga), (lb, gb) = (_losses_and_grads(model, setup, pad, "fp32"),
                          _losses_and_grads(model, setup, pad, "fp32", trees_per_row=trees, rows_per_forward=rows))
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) <= 1e-5 for k in la), (la, lb)
    assert max(float((ga[k] - gb[k]).abs().max()) for k in ga) <= 1e-4


@pytest.mark.parametrize("kw, says", [
    (dict(compile=True, activation_checkpointing=True), "compile and activation_checkpointing"),
    (dict(cache_bf16_weights=True, precision="fp32"), "cache_bf16_weights needs precision: bf16"),
    (dict(cache_bf16_weights=True, finetune="full"), "cache_bf16_weights needs"),
    (dict(trees_per_row=0), "trees_per_row"),
])
def test_speedup_options_reject_what_they_cannot_do(kw: dict, says: str) -> None:
    from introspect.train.config import validate

    with pytest.raises(UserError, match=says):
        validate(TrainConfig(behavior="b", labels="l", out_dir="o", **kw))


def test_speedup_keys_enter_the_run_inputs_only_when_set() -> None:
    """At their defaults the new keys leave a run's inputs what they were before the keys existed (existing runs stay
    current); set, they count (in bf16 they change the numbers)."""
    from unittest import mock

    new = T.provenance.ADDED_LATER["training"]  # device, compile, cache_bf16_weights, trees_per_row, init_from
    base = TrainConfig(behavior="-", labels="-", out_dir="-")
    with mock.patch.object(T, "read_table", return_value=(None, {"x": 1})), \
         mock.patch.object(T.provenance, "stored_inputs", return_value=None):
        before = {k: v for k, v in T.to_dict(base).items()
                  if k not in ("behavior", "labels", "out_dir", "keep_checkpoints", "device", *new)}
        before["monitor"] = {k: v for k, v in before["monitor"].items() if k != "pairs"}
        assert T.train_inputs(base) == T.provenance.inputs(config=before, behavior={"x": 1}, labels={"x": 1})
        assert T.train_inputs(TrainConfig(behavior="-", labels="-", out_dir="-", compile=True)) != T.train_inputs(base)
        assert T.train_inputs(TrainConfig(behavior="-", labels="-", out_dir="-", trees_per_row=2)) != T.train_inputs(base)


def test_a_model_without_named_decoder_layers_is_a_config_error() -> None:
    with pytest.raises(UserError, match="compile and cache_bf16_weights"):
        fast.compile_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)))
