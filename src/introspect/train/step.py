"""One training step's loss terms: the explanation CE and the choice log-probs (fp32 head) of the behaviour prompts,
computed over prefix-tree rows (`tree.py`), weighted terms skipped when their weight is 0."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch

from .. import behavior, tree
from ..errors import UserError
from ..models import render_prompt
from . import objectives
from .config import TrainConfig
from .. import tokens


def encode_explanations(tok: Any, labels: Any, max_length: int, where: str) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: the explanation prompt, then target + end-of-turn; loss on the latter only."""
    out = []
    for r in labels.itertuples(index=False):
        prompt = tokens.encode(tok, render_prompt(tok, json.loads(r.prompt)))
        target = tokens.encode(tok, r.target + tok.eos_token)
        if len(prompt) + len(target) > max_length:
            raise UserError(f"{where}: explanation example {r.pair_id} is {len(prompt) + len(target)} tokens, over "
                            f"max_length={max_length} (config key max_length)")
        out.append((prompt + target, [objectives.IGNORE] * len(prompt) + target))
    return out


Item = tuple[Sequence[int], int]  # (token ids, n): an explanation example with its last n tokens as targets, or n=0: a behaviour prompt


def tree_terms(model: Any, groups: Sequence[Sequence[Item]], choice_ids: tokens.ChoiceIds,
               pad_id: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Explanation CE and behaviour log-probs for groups of items, one prefix-tree row per group (`tree.py`).

    A group is e.g. one pair's [explanation example, x, x∖C]: their shared start (system turn, question, options,
    and the hint for the explanation and x) runs once. The LM head runs only where a loss reads it: the positions
    predicting target tokens and each behaviour prompt's last position.
    Returns (CE summed over target tokens, target count, choice log-probs [behaviour prompts in order, C] or None).
    """
    batch = tree.pack([[seq for seq, _ in g] for g in groups], pad_id)
    wanted = [[c for (seq, n), path in zip(g, paths) if n for c in path[len(seq) - n - 1:len(seq) - 1]]
              for g, paths in zip(groups, batch.paths)]
    answer_cols = [[path[-1] for (seq, n), path in zip(g, paths) if not n] for g, paths in zip(groups, batch.paths)]
    rows, states = tree.forward(model, batch, wanted, hidden=answer_cols if any(answer_cols) else None)
    target_logits = [logits for logits in rows if len(logits)]
    targets = [t for g in groups for seq, n in g if n for t in seq[len(seq) - n:]]
    n_tok = len(targets)
    dev = target_logits[0].device if target_logits else None
    ce_sum = objectives.explanation(logits=torch.cat(target_logits), targets=torch.tensor(targets, device=dev)) * n_tok if n_tok else torch.zeros(())
    if not any(answer_cols):
        return ce_sum, n_tok, None
    # the answer positions get the fp32 head, as in sampling: M0's table and these log-probs are the same quantity
    logits = behavior.head_logits(model, torch.cat([h for h in states if len(h)]))
    return ce_sum, n_tok, torch.log_softmax(tokens.group_logits(logits, choice_ids), dim=-1)


def explanation_item(example: tuple[list[int], list[int]]) -> Item:
    ids, labels = example
    return ids, sum(1 for t in labels if t != objectives.IGNORE)


def step_losses(model: Any, *, cfg: TrainConfig, expl: Sequence[tuple[list[int], list[int]]],
                with_c: Sequence[Sequence[int]], without_c: Sequence[Sequence[int]], p_m0: np.ndarray,
                p_m0_without: np.ndarray, choice_ids: tokens.ChoiceIds, pad_id: int, packed: int = 0,
                gold: np.ndarray | None = None, kl_rows: np.ndarray | None = None,
                concurrent_rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The loss terms for one micro-batch; a term with weight 0 is not computed (no forward, no gradient).

    The first `packed` explanation examples are of the same pairs as the first `packed` behaviour pairs: each such
    pair's explanation example, x and x∖C run as one prefix tree (`tree_terms`); the remaining explanation examples
    run alone, the remaining pairs as an (x, x∖C) tree (or apart with `pack: false`). Rows go through the model
    `cfg.rows_per_forward` at a time, length-sorted: on CPU padding costs more than batching saves.
    `kl_rows` / `concurrent_rows` (bool per behaviour pair, default all) say which pairs the regulariser and the
    concurrent objective (sycophancy reduction, refusal tuning) read: disjoint when `concurrent_pairs: split`.
    """
    w = cfg.weights
    want_expl = w.explanation > 0 and len(expl) > 0
    want_beh = w.behavioural() and len(with_c) > 0
    groups = layout(cfg, expl, with_c, without_c, packed if want_expl and want_beh else 0, want_expl, want_beh)
    size = cfg.rows_per_forward
    order = sorted(range(len(groups)), key=lambda j: group_tokens(groups[j]))  # length-sorted rows
    ce_sum, n_tok = torch.zeros(()), 0
    rows: dict[tuple[int, int], torch.Tensor] = {}  # (pair index, side) -> choice log-probs
    for c in [order[i:i + size] for i in range(0, len(order), size)]:
        s, n, lp = tree_terms(model, [groups[j][0] for j in c], choice_ids, pad_id)
        ce_sum, n_tok = ce_sum + s, n_tok + n
        rows.update(zip((key for j in c for key in groups[j][1]), lp if lp is not None else []))
    losses: dict[str, torch.Tensor] = {}
    if want_expl:
        losses["explanation"] = ce_sum / n_tok
    if want_beh:
        logp = torch.stack([rows[i, side] for i in range(len(with_c)) for side in (0, 1)])  # rows 2i: x, 2i+1: x∖C
        losses.update(behaviour_terms(w, logp, p_m0, p_m0_without, gold, kl_rows, concurrent_rows))
    return losses


Group = tuple[list[Item], list[tuple[int, int]]]  # a row's trees, and the (pair index, side) of its behaviour items


def group_tokens(group: Group) -> int:
    return sum(len(seq) for seq, _ in group[0])


def layout(cfg: TrainConfig, expl: Sequence[tuple[list[int], list[int]]], with_c: Sequence[Sequence[int]],
           without_c: Sequence[Sequence[int]], packed: int, want_expl: bool, want_beh: bool) -> list[Group]:
    """The micro-batch's rows: one prefix tree per packed pair (explanation, x, x∖C), then the other explanation
    examples alone and the other pairs as (x, x∖C) trees (apart with `pack: false`); with `trees_per_row` > 1 the
    longest tree shares a row with the shortest ones. Side 0 = x, 1 = x∖C."""
    groups: list[Group] = []
    for i in range(packed):  # a pair's explanation example, x and x∖C in one tree
        groups.append(([explanation_item(expl[i]), (with_c[i], 0), (without_c[i], 0)], [(i, 0), (i, 1)]))
    if want_expl:
        groups += [([explanation_item(expl[i])], []) for i in range(packed, len(expl))]
    if want_beh:
        for i in range(packed, len(with_c)):  # x and x∖C share their start; `pack: false` runs them apart
            if cfg.pack:
                groups.append(([(with_c[i], 0), (without_c[i], 0)], [(i, 0), (i, 1)]))
            else:
                groups += [([(with_c[i], 0)], [(i, 0)]), ([(without_c[i], 0)], [(i, 1)])]
    if cfg.trees_per_row > 1:  # the longest tree with the shortest ones: one row, one shared start, even row lengths
        order = sorted(groups, key=group_tokens)
        merged = []
        while order:
            row = [order.pop()] + [order.pop(0) for _ in range(min(cfg.trees_per_row - 1, len(order)))]
            merged.append(([item for g in row for item in g[0]], [key for g in row for key in g[1]]))
        groups = merged
    return groups


def behaviour_terms(w: Any, logp: torch.Tensor, p_m0: np.ndarray, p_m0_without: np.ndarray, gold: np.ndarray | None,
                    kl_rows: np.ndarray | None, concurrent_rows: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The behaviour loss terms with weight > 0 from the choice log-probs `logp` (rows 2i: x, 2i+1: x∖C)."""
    n = len(logp) // 2
    losses: dict[str, torch.Tensor] = {}
    ref = torch.tensor(np.stack([p_m0, p_m0_without], axis=1).reshape(len(logp), -1), dtype=torch.float32, device=logp.device)
    every = np.ones(n, dtype=bool)
    kl = torch.as_tensor(np.repeat(every if kl_rows is None else kl_rows, 2), device=logp.device)  # x and x∖C alike
    conc = every if concurrent_rows is None else np.asarray(concurrent_rows, dtype=bool)
    if w.behavior_kl > 0:
        losses["behavior_kl"] = objectives.behavior_kl(logp=logp[kl], p_m0=ref[kl]) if kl.any() else logp.sum() * 0
    if w.sycophancy_reduction > 0:
        c = torch.as_tensor(conc, device=logp.device)
        losses["sycophancy_reduction"] = (objectives.sycophancy_reduction(logp_hinted=logp[0::2][c], p_no_hint=ref[1::2][c])
                                          if conc.any() else logp.sum() * 0)
    if w.refusal_tuning > 0:
        if gold is None or (gold[conc] < 0).any():
            raise UserError("refusal_tuning needs a gold behaviour for every training pair (the refusal task has one)")
        c2 = torch.as_tensor(np.repeat(conc, 2), device=logp.device)
        target = torch.tensor(np.repeat(gold[conc], 2), dtype=torch.long, device=logp.device)  # x and x∖C alike
        losses["refusal_tuning"] = (objectives.refusal_tuning(logp=logp[c2], target=target)
                                    if conc.any() else logp.sum() * 0)
    return losses
