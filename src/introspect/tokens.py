"""Tokens: encoding without special tokens, left padding, and the token ids of a task's choices (each choice one
token, or alternatives whose probabilities add up) with their per-choice scores."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import UserError


ChoiceIds = list[list[int]]  # per choice, the token ids of its one-token continuations


def choice_token_ids(tokenizer: Any, continuations: Sequence[str | Sequence[str]]) -> ChoiceIds:
    """Token ids of each choice's continuations: a choice is one string or a tuple of alternative strings (its
    probability is the sum over them). Every string must be exactly one token, and no token may serve two choices."""
    groups: ChoiceIds = []
    for c in continuations:
        ids = []
        for alt in ([c] if isinstance(c, str) else c):
            toks = tokenizer.encode(alt, add_special_tokens=False)
            if len(toks) != 1:
                raise UserError(f"choice continuation {alt!r} is {len(toks)} tokens for this tokenizer; it must be one "
                                f"(change the task's prompt format)")
            ids.append(toks[0])
        groups.append(ids)
    flat = [i for g in groups for i in g]
    if len(set(flat)) != len(flat):
        raise UserError(f"choice continuations {list(continuations)} map to the same token")
    return groups


def group_logits(logits: torch.Tensor, groups: ChoiceIds) -> torch.Tensor:
    """Per-choice scores [B, C] = logsumexp of the choice's token logits (the plain logit for one-token choices)."""
    return torch.stack([torch.logsumexp(logits[..., g], dim=-1) for g in groups], dim=-1)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask
