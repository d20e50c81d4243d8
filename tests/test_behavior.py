from pathlib import Path

import numpy as np
import pytest
import torch

from introspect import behavior, tables
from introspect.errors import UserError
from introspect.models import Loaded, render_prompt
from introspect.tasks import get_task
from introspect import tokens


def _direct(model, ids, choice_ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    return torch.stack([torch.logsumexp(logp[g], 0) for g in choice_ids]).numpy()


@pytest.mark.parametrize("fmt", ["paren", "dot"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_choice_scores_equal_direct_logits(tiny: Loaded, data_dir: Path, fmt: str, share_prefix: bool) -> None:
    task = get_task("hint-mmlu", format=fmt)
    pairs = task.pairs(data_dir, "val", 7, seed=1)
    a, b = behavior.encode_pairs(tiny.tokenizer, task, pairs)
    cids = tokens.choice_token_ids(tiny.tokenizer, task.continuations)
    res = behavior.score_pairs(tiny.model, a, b, cids, pad_id=tiny.tokenizer.pad_token_id, batch_size=3,
                               precision="fp32", share_prefix=share_prefix)
    for i in range(len(pairs)):
        np.testing.assert_allclose(res["logp"][i], _direct(tiny.model, a[i], cids), atol=1e-4)
        np.testing.assert_allclose(res["logp_without"][i], _direct(tiny.model, b[i], cids), atol=1e-4)


def test_bf16_close_to_fp32(tiny: Loaded, data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "val", 5, seed=0)
    a, b = behavior.encode_pairs(tiny.tokenizer, task, pairs)
    cids = tokens.choice_token_ids(tiny.tokenizer, task.continuations)
    kw = dict(pad_id=tiny.tokenizer.pad_token_id, batch_size=4)
    f32 = behavior.score_pairs(tiny.model, a, b, cids, precision="fp32", **kw)
    b16 = behavior.score_pairs(tiny.model, a, b, cids, precision="bf16", **kw)
    np.testing.assert_allclose(b16["logp"], f32["logp"], atol=0.1)
    assert not np.allclose(b16["logp"], f32["logp"], atol=1e-7)  # bf16 really ran


def test_hint_is_the_only_difference_in_tokens(tiny: Loaded, data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    p = task.pairs(data_dir, "val", 1, seed=0)[0]
    x = render_prompt(tiny.tokenizer, p.messages, task.assistant_prefix)
    xc = render_prompt(tiny.tokenizer, p.messages_without, task.assistant_prefix)
    assert x.replace("\n" + p.feature, "", 1) == xc and x.endswith(task.assistant_prefix)


def test_sample_table_round_trip(tiny: Loaded, data_dir: Path, tmp_path: Path) -> None:
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "val", 6, seed=0)
    df, stats = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, pairs, precision="fp32", progress=False)
    assert stats.pairs == 6 and stats.tokens > 0
    assert (df["changed"] == (df["answer"] != df["answer_without"])).all()
    for col in ("probs", "probs_without"):
        probs = np.array(df[col].tolist())
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
        assert (np.array(task.choices)[probs.argmax(1)] == df["answer" if col == "probs" else "answer_without"]).all()
    meta = tables.table_meta(model_id="tiny-random", weights_hash=tiny.weights_hash, task=task, pairs=pairs,
                               seed=0, split="val", precision="fp32", verify_margin=0.0)
    tables.write_table(tmp_path / "b.parquet", df, meta)
    back, meta2 = tables.read_table(tmp_path / "b.parquet")
    assert meta2 == meta
    lists = ["probs", "probs_without"]
    assert back.drop(columns=lists).equals(df.drop(columns=lists))
    np.testing.assert_allclose(np.array(back["probs"].tolist()), np.array(df["probs"].tolist()))
    assert tables.task_of(meta2).spec() == task.spec()
    s = behavior.summarize(df, task.choices)
    assert s["n"] == 6 and abs(sum(s["answers_without"].values()) - 1) < 1e-6 and 0 <= s["follow_rate"] <= 1


def test_choice_groups_sum_alternatives(tiny: Loaded) -> None:
    groups = tokens.choice_token_ids(tiny.tokenizer, [(" Sure", " Yes"), " No"])
    assert len(groups) == 2 and len(groups[0]) == 2
    logits = torch.randn(3, len(tiny.tokenizer))
    scores = tokens.group_logits(torch.log_softmax(logits, -1), groups).exp()
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(scores[:, 0], p[:, groups[0]].sum(-1))
    with pytest.raises(UserError, match="same token"):
        tokens.choice_token_ids(tiny.tokenizer, [(" Yes", " No"), " No"])


def test_multi_token_choice_rejected(tiny: Loaded) -> None:
    with pytest.raises(UserError, match="must be one"):
        tokens.choice_token_ids(tiny.tokenizer, [" Absolutely not", " B"])


def test_bad_precision(tiny: Loaded) -> None:
    with pytest.raises(UserError, match="--precision"):
        behavior.score_groups(tiny.model, [[[1, 2, 3]]], [5, 6], pad_id=0, precision="fp8", share_root=False)


def test_read_missing_table(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="introspect sample"):
        tables.read_table(tmp_path / "nope.parquet")


def test_verify_margin_rescores_near_ties_in_fp32(tiny: Loaded, data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "val", 6, seed=0)
    a, b = behavior.encode_pairs(tiny.tokenizer, task, pairs)
    cids = tokens.choice_token_ids(tiny.tokenizer, task.continuations)
    kw = dict(pad_id=tiny.tokenizer.pad_token_id, batch_size=4)
    f32 = behavior.score_pairs(tiny.model, a, b, cids, precision="fp32", **kw)
    every = behavior.score_pairs(tiny.model, a, b, cids, precision="bf16", verify_margin=1e9, **kw)
    assert sorted(every["verified"]) == list(range(12))  # every prompt is "close" at a huge margin: all fp32
    np.testing.assert_allclose(every["logp"], f32["logp"], atol=1e-5)
    none = behavior.score_pairs(tiny.model, a, b, cids, precision="bf16", verify_margin=1e-12, **kw)
    assert len(none["verified"]) == 0


def test_shared_prefix_leaves_a_token_to_score() -> None:
    assert behavior.shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert behavior.shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts keep their last token
    assert behavior.shared_prefix([[7], [7, 8]]) == 0


@pytest.mark.parametrize("share_root", [True, False])
def test_groups_share_prefixes_exactly(tiny: Loaded, data_dir: Path, share_root: bool) -> None:
    """Prefix-tree rows of several pairs (with and without the system turn's cache) give each prompt's own scores."""
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "val", 5, seed=2)
    a, b = behavior.encode_pairs(tiny.tokenizer, task, pairs)
    cids = tokens.choice_token_ids(tiny.tokenizer, task.continuations)
    groups = [[a[0], b[0], a[1], b[1], a[2]], [b[2]], [a[3], b[3], a[4], b[4]]]
    lp, top = behavior.score_groups(tiny.model, groups, cids, pad_id=tiny.tokenizer.pad_token_id, rows_per_batch=2,
                                    precision="fp32", share_root=share_root)
    flat = [p for g in groups for p in g]
    assert lp.shape == (len(flat), len(cids)) and top.shape == (len(flat),)
    for i, ids in enumerate(flat):
        np.testing.assert_allclose(lp[i], _direct(tiny.model, ids, cids), atol=1e-4)
        with torch.no_grad():
            assert top[i] == int(tiny.model(torch.tensor([ids])).logits[0, -1].argmax())


def test_groups_on_a_sliding_window_model(tiny: Loaded) -> None:
    """Gemma 3 style layers: the shared root cache and packed rows keep each prompt's own scores."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], attn_implementation="sdpa")
    model = Gemma3ForCausalLM(config).eval()
    stem = [1, 2, 3, 4, 5, 6]  # longer than the window: the root cache is capped at window - 1 tokens
    groups = [[stem + [7, 8, 9, 10], stem + [11]], [stem + [7, 8, 12, 13, 14, 15, 16]], [stem + [17, 18]]]
    cids = [[20], [21], [22]]
    lp, _ = behavior.score_groups(model, groups, cids, pad_id=0, rows_per_batch=2, precision="fp32")
    for i, ids in enumerate(p for g in groups for p in g):
        np.testing.assert_allclose(lp[i], _direct(model, ids, cids), atol=1e-4)
