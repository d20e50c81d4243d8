"""Prefix-tree packing: several token sequences that share prefixes run as ONE row of one forward pass.

The sequences of a group (e.g. a pair's explanation prompt, x and x∖C) are merged into a radix tree of token
segments; the row holds every segment once, in depth-first order, and a 4-D boolean attention mask lets each token
see only its own segment (causally) and the segments on its path to the root. Position ids are each token's index
in its own sequence, so every sequence gets exactly the logits it would get alone (up to float rounding), while
shared prefixes are computed once and nothing is padded inside a row. Rows (one group each) are right-padded to
the batch's longest; a pad token sees only itself.

    batch = pack([[x, x_without], ...], pad_id)
    logits = forward(model, batch, batch.last_columns())   # per row: [sequences, V], the next-token logits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class TreeBatch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, 1, L, L] bool, True = may attend
    paths: list[list[list[int]]]  # [row][sequence] -> the row column of each of the sequence's tokens

    def to(self, device: Any) -> "TreeBatch":
        return TreeBatch(self.input_ids.to(device), self.position_ids.to(device), self.attention_mask.to(device), self.paths)

    def last_columns(self) -> list[list[int]]:
        """[row][sequence] -> column whose logits predict the token after the sequence."""
        return [[p[-1] for p in row] for row in self.paths]


def _radix(seqs: Sequence[Sequence[int]], members: list[int], start: int, parent: int,
           segs: list[tuple[int, int, int, int]], ends: dict[int, int]) -> None:
    """Append (sequence, start, end, parent) segments for `members`, which agree on tokens [0, start)."""
    end = start
    while all(len(seqs[m]) > end for m in members) and len({seqs[m][end] for m in members}) == 1:
        end += 1
    me = len(segs)
    segs.append((members[0], start, end, parent))
    groups: dict[int, list[int]] = {}
    for m in members:
        if len(seqs[m]) == end:
            ends[m] = me
        else:
            groups.setdefault(seqs[m][end], []).append(m)
    for g in groups.values():
        _radix(seqs, g, end, me, segs, ends)


def width(seqs: Sequence[Sequence[int]]) -> int:
    """Columns of the row `pack` makes of one group: every distinct prefix-tree segment once."""
    segs: list[tuple[int, int, int, int]] = []
    _radix(seqs, list(range(len(seqs))), 0, -1, segs, {})
    return sum(b - a for _, a, b, _ in segs)


def _row(seqs: Sequence[Sequence[int]]) -> tuple[list[int], list[int], torch.Tensor, list[list[int]]]:
    """One group's tokens, positions, [n, n] mask and per-sequence column paths."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("prefix-tree packing needs non-empty sequences")
    segs: list[tuple[int, int, int, int]] = []
    ends: dict[int, int] = {}
    _radix(seqs, list(range(len(seqs))), 0, -1, segs, ends)
    ids, pos, seg_of, first_col = [], [], [], []
    for k, (m, a, b, _) in enumerate(segs):  # depth-first order: a parent precedes its children
        first_col.append(len(ids))
        ids += list(seqs[m][a:b])
        pos += list(range(a, b))
        seg_of += [k] * (b - a)
    visible = torch.eye(len(segs), dtype=torch.bool)  # visible[s, t]: segment s may see segment t
    for k, (_, _, _, parent) in enumerate(segs):
        if parent >= 0:
            visible[k] |= visible[parent]
    s = torch.tensor(seg_of)
    mask = visible[s][:, s] & torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    paths = []
    for m in range(len(seqs)):
        chain, k = [], ends[m]
        while k >= 0:
            chain.append(k)
            k = segs[k][3]
        paths.append([first_col[k] + i for k in reversed(chain) for i in range(segs[k][2] - segs[k][1])])
    return ids, pos, mask, paths


def pack(groups: Sequence[Sequence[Sequence[int]]], pad_id: int) -> TreeBatch:
    """One row per group of sequences (each group is packed as a prefix tree), right-padded to the longest row."""
    rows = [_row(g) for g in groups]
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1, 1)  # pads see themselves only
    for b, (i, p, m, _) in enumerate(rows):
        ids[b, :len(i)], pos[b, :len(p)], mask[b, 0, :len(i), :len(i)] = torch.tensor(i), torch.tensor(p), m
    return TreeBatch(ids, pos, mask, [r[3] for r in rows])


def sliding_window(model: Any) -> int | None:
    """The attention window of the model's sliding-window layers (Gemma 3), or None when it has none."""
    config = getattr(model, "module", model).config  # DistributedDataParallel keeps the model in .module
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    return window if window and "sliding_attention" in (getattr(config, "layer_types", None) or []) else None


def model_mask(model: Any, mask: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention mask to pass to `model` for query positions [B, Lq] and key positions [B, Lk]. Models with
    sliding-window layers get one mask per layer type; the sliding one also hides keys `sliding_window` or more
    positions back, as the model's own masks would."""
    window = sliding_window(model)
    if window is None:
        return mask
    near = (q_pos[:, None, :, None] - k_pos[:, None, None, :]) < window
    return {"full_attention": mask, "sliding_attention": mask & near}


def forward(model: Any, batch: TreeBatch, wanted: Sequence[Sequence[int]],
            hidden: Sequence[Sequence[int]] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logits at the `wanted` columns of each row ([row] -> [len(wanted[row]), V]; the LM head runs on those only)
    and, for the `hidden` columns, the final (post-norm) hidden states ([row] -> [len(hidden[row]), H]), so the
    caller can apply an fp32 head there (`behavior.head_logits`)."""
    keep = sorted({c for cols in wanted for c in cols})
    at = {c: j for j, c in enumerate(keep)}
    batch = batch.to(next(getattr(model, "module", model).parameters()).device)
    mask = model_mask(model, batch.attention_mask, batch.position_ids, batch.position_ids)
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=batch.input_ids.device) if keep else 1,
                output_hidden_states=bool(hidden), use_cache=False)  # no KV cache: nothing reads it
    logits = [out.logits[b, [at[c] for c in cols]] for b, cols in enumerate(wanted)] if keep else []
    states = [out.hidden_states[-1][b, list(cols)] for b, cols in enumerate(hidden)] if hidden else []
    return logits, states
