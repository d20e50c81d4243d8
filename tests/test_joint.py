"""joint.py: the one-pass evaluation (explanation prompt, x and x∖C as one prefix-tree row; the explanation decoded
from that row's cache) gives, in fp32, the texts HF `generate` gives and the behaviour `sample_behavior` gives."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from introspect import behavior, joint
from introspect.evaluate import evaluate_one, explanation_prompts, generate
from introspect.tasks import get_task


@pytest.fixture(scope="module")
def pairs(data_dir):
    task = get_task("hint-mmlu")
    return task, task.pairs(data_dir, "val", 9, seed=3)


@pytest.fixture(scope="module")
def varied(tiny):
    """tiny-random with larger random weights: its greedy texts differ from prompt to prompt (tiny-random's own
    repeat one token), so text equality below can fail."""
    model = copy.deepcopy(tiny.model).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("batch_size", [8, 3])
def test_one_pass_equals_generate_and_sample_behavior_in_fp32(tiny, varied, pairs, batch_size) -> None:
    task, ps = pairs
    model, tok = varied, tiny.tokenizer
    ref_texts = generate(model, tok, explanation_prompts(task, ps), precision="fp32", batch_size=4, max_new_tokens=12)
    ref_beh, _ = behavior.sample_behavior(model, tok, task, ps, precision="fp32", verify_margin=0.0, progress=False)
    texts, beh = joint.explain_and_sample(model, tok, task, ps, precision="fp32", verify_margin=0.0,
                                          batch_size=batch_size, max_new_tokens=12)
    assert len(set(ref_texts)) > 1 and all(ref_texts)  # real, differing continuations: the comparison can fail
    assert texts == ref_texts
    assert beh["pair_id"].tolist() == ref_beh["pair_id"].tolist()
    assert beh["answer"].tolist() == ref_beh["answer"].tolist()
    assert beh["answer_without"].tolist() == ref_beh["answer_without"].tolist()
    for key in ("probs", "probs_without"):
        assert np.abs(np.stack(beh[key]) - np.stack(ref_beh[key])).max() < 1e-5


def test_explanations_alone_and_a_longer_generation(tiny, varied, pairs) -> None:
    task, ps = pairs
    model, tok = varied, tiny.tokenizer
    ref = generate(model, tok, explanation_prompts(task, ps), precision="fp32", batch_size=16, max_new_tokens=30)
    texts, beh = joint.explain_and_sample(model, tok, task, ps, precision="fp32", verify_margin=0.0, sample=False,
                                          max_new_tokens=30)
    assert beh is None and texts == ref


def test_the_decoder_stops_at_the_closing_marker(tiny, pairs, monkeypatch) -> None:
    """A row stops once its text holds `>>>.` and the text ends there (as `generate` cuts it)."""
    task, ps = pairs
    model, tok = copy.deepcopy(tiny.model).eval(), tiny.tokenizer
    marker = tok.encode(">>>.", add_special_tokens=False)
    head = model.get_output_embeddings()
    calls = {"n": 0}

    def forced(hidden: torch.Tensor) -> torch.Tensor:  # the marker's tokens, then something else: never reached
        out = torch.full((*hidden.shape[:-1], head.out_features), -1.0)
        out[..., marker[min(calls["n"], len(marker) - 1)] if calls["n"] < len(marker) else 0] = 1.0
        calls["n"] += 1
        return out

    monkeypatch.setattr(model, "get_output_embeddings", lambda: forced)
    texts, _ = joint.explain_and_sample(model, tok, task, ps[:2], precision="fp32", verify_margin=0.0, sample=False,
                                        max_new_tokens=20)
    assert texts == [">>>.", ">>>."]
    assert calls["n"] == len(marker)  # decoding ended when every row had stopped


def test_the_decode_cache_drops_rows_in_place_and_reuses_its_memory() -> None:
    g = torch.Generator().manual_seed(5)
    k, v = torch.randn(4, 2, 5, 3, generator=g).bfloat16(), torch.randn(4, 2, 5, 3, generator=g).bfloat16()
    storage = joint.Storage()
    layer = joint.Preallocated(k, v, room=4, storage=storage, index=0)
    new = torch.randn(4, 2, 1, 3, generator=g)
    layer.update(new, -new)
    layer.batch_select_indices(torch.tensor([1, 3]))
    assert torch.equal(layer.keys, torch.cat([k.float(), new], 2)[[1, 3]])
    assert torch.equal(layer.values, torch.cat([v.float(), -new], 2)[[1, 3]])
    with pytest.raises(ValueError, match="increase"):
        layer.batch_select_indices(torch.tensor([1, 0]))
    again = joint.Preallocated(k[:2], v[:2], room=4, storage=storage, index=0)  # the next, smaller batch
    assert again.buffers[0].data_ptr() == layer.buffers[0].data_ptr()
    assert torch.equal(again.keys, k[:2].float())


def test_evaluate_one_joint_and_apart_agree_in_fp32(tiny, varied, pairs) -> None:
    task, ps = pairs
    m0, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, ps, precision="fp32", progress=False)
    common = dict(seed=0, n_boot=50, precision="fp32", verify_margin=0.0, max_new_tokens=10, batch_size=4)
    a, items_a = evaluate_one(varied, tiny.tokenizer, task, ps, m0, joint=False, **common)
    b, items_b = evaluate_one(varied, tiny.tokenizer, task, ps, m0, joint=True, **common)
    assert items_a["text"].tolist() == items_b["text"].tolist()
    same = lambda k: json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True)  # noqa: E731 (NaN == NaN)
    assert same("self") and same("orig") and same("self_minus_orig")
