"""Prefix-tree packing gives every sequence the logits it gets alone, computes shared prefixes once."""

import torch

from introspect import tree
from introspect.models import Loaded


def _alone(model, seq: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([seq])).logits[0]


def test_tree_rows_match_separate_forwards(tiny: Loaded) -> None:
    g = torch.Generator().manual_seed(0)
    r = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    trunk, hint = r(20), r(6)
    groups = [
        [trunk + hint + r(4), trunk + r(3), trunk + hint + r(9)],  # explanation-like, x-like, x∖C-like
        [r(7), r(5)],  # nothing shared (empty root)
        [trunk[:10], trunk[:10] + r(3), trunk[:10]],  # a sequence that is a prefix of another, and a duplicate
    ]
    batch = tree.pack(groups, pad_id=0)
    assert batch.input_ids.shape == (3, 20 + 6 + 4 + 3 + 9)  # the first row is the longest; the others are padded
    assert [len({c for p in paths for c in p}) for paths in batch.paths] == [42, 12, 13]  # shared prefixes once
    every = [[c for p in paths for c in p] for paths in batch.paths]
    with torch.no_grad():
        got, _ = tree.forward(tiny.model, batch, every)
        for g_, paths, logits in zip(groups, batch.paths, got):
            at = 0
            for seq, p in zip(g_, paths):
                torch.testing.assert_close(logits[at:at + len(p)], _alone(tiny.model, seq), atol=1e-4, rtol=1e-4)
                assert batch.input_ids[groups.index(g_), p].tolist() == seq
                at += len(p)


def test_mask_hides_sibling_branches() -> None:
    batch = tree.pack([[[1, 2, 3], [1, 2, 4, 5]]], pad_id=0)
    assert batch.input_ids[0].tolist() == [1, 2, 3, 4, 5] and batch.position_ids[0].tolist() == [0, 1, 2, 2, 3]
    m = batch.attention_mask[0, 0]
    assert m[3, :3].tolist() == [True, True, False]  # token 4 sees 1, 2 but not its sibling 3
    assert m[4].tolist() == [True, True, False, True, True]
    assert batch.last_columns() == [[2, 4]]


def test_sliding_window_layers_see_what_the_model_would() -> None:
    """Gemma 3 style models (sliding-window layers): packed rows still give each sequence its own logits."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], attn_implementation="sdpa")
    model = Gemma3ForCausalLM(config).eval()
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 10, 11, 12, 13], [1, 2, 3, 14]]
    batch = tree.pack([seqs], pad_id=0)
    with torch.no_grad():
        packed = tree.forward(model, batch, [[c for path in batch.paths[0] for c in path]])[0][0]
        k = 0
        for s in seqs:
            alone = model(torch.tensor([s])).logits[0]
            torch.testing.assert_close(packed[k:k + len(s)], alone, atol=1e-4, rtol=1e-4)
            k += len(s)
