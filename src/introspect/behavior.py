"""Behaviour sampling: a model's answer and its distribution over the choices, on both sides of every pair.

The answer is read from the next-token logits at the answer position (one forward per prompt, lm-eval style
multiple choice over a fixed choice set), never from free generation. Speed comes from:
  * bf16 autocast on CPU (AVX-512 bf16),
  * batches bucketed by length (little padding),
  * prefix sharing: x and x∖C share everything up to the feature, and every prompt shares the system turn, so
    two pairs run as one prefix-tree row (`tree.py`): each shared prefix is computed once, the short suffixes
    branch off it (`share_prefix=True`),
  * the LM head applied at the answer positions only, in fp32.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import devices, tree
from .devices import autocast
from .progress import bar as progress_bar
from .defaults import VERIFY_MARGIN
from .models import render_prompt
from .tasks import Pair, Task
from .tokens import ChoiceIds, choice_token_ids, encode, group_logits

PAIRS_PER_ROW = 2  # pairs packed into one prefix-tree row when sampling; see docs/benchmarks.md


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head in fp32 on final hidden states [N, H] -> logits [N, V], whatever precision the body ran in.

    Used wherever choice distributions are compared across models or checkpoints (sampling, the training KL):
    bf16 logits (spacing 0.125 near 20) would tie close choices. Differentiable (training uses it).
    """
    weight = getattr(model, "module", model).get_output_embeddings().weight
    with torch.autocast(hidden.device.type, enabled=False):
        return hidden.float() @ weight.float().T


def choice_logprobs(model: Any, hidden: torch.Tensor, choice_ids: ChoiceIds) -> tuple[np.ndarray, np.ndarray]:
    """Choice log-probs over the full vocabulary [B, C] and vocab argmax [B] from final hidden states [B, H], by the
    fp32 head."""
    logits = head_logits(model, hidden)
    logp = torch.log_softmax(logits, dim=-1)
    return group_logits(logp, choice_ids).cpu().numpy(), logits.argmax(-1).cpu().numpy()


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every prompt shares, leaving at least one token of each to score."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


@torch.no_grad()
def score_groups(model: Any, groups: Sequence[Sequence[Sequence[int]]], choice_ids: ChoiceIds, *, pad_id: int,
                 rows_per_batch: int = 2, precision: str = "bf16", share_root: bool = True, progress: bool = False,
                 desc: str = "scoring prompts") -> tuple[np.ndarray, np.ndarray]:
    """Choice log-probs [N, C] and vocab argmax [N] after each prompt, N = all prompts of all groups in order.

    With `share_root`, the prefix every prompt shares (the system turn) runs once and its KV cache is reused by every
    row. Each group of prompts runs as one prefix-tree row (`tree.py`): the prefixes its prompts share are computed
    once. Rows are sorted by length and batched `rows_per_batch` at a time (little padding).
    """
    dev = devices.of(model)
    autocast(precision, dev.type)  # validates the name before any work
    offsets = np.cumsum([0, *map(len, groups)])
    out = np.zeros((offsets[-1], len(choice_ids)), dtype=np.float32)
    top = np.zeros(offsets[-1], dtype=np.int64)
    order = np.argsort([sum(map(len, g)) for g in groups], kind="stable")
    root = shared_prefix([p for g in groups for p in g]) if share_root and len(groups) > 1 else 0
    root = min(root, (tree.sliding_window(model) or root + 1) - 1)  # a sliding-window cache keeps window - 1 tokens
    with autocast(precision, dev.type), progress_bar(total=int(offsets[-1]), disable=not progress, desc=f"{desc} ({precision})",
                                   unit="prompt") as bar:
        shared = RootCache(model, groups[0][0][:root])
        for i in range(0, len(order), rows_per_batch):
            rows = order[i:i + rows_per_batch]
            batch = tree.pack([[p[root:] for p in groups[r]] for r in rows], pad_id).to(dev)
            hidden, _ = shared.forward(batch, keep=False)
            cols = batch.last_columns()
            at = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
            out[at], top[at] = choice_logprobs(model, torch.cat([hidden[b, c] for b, c in enumerate(cols)]), choice_ids)
            bar.update(int(sum(offsets[r + 1] - offsets[r] for r in rows)))
    return out, top


class RootCache:
    """The KV cache of the prefix every prompt shares (the system turn), computed once; `forward` runs a prefix-tree
    batch (`tree.pack` of the prompts' remainders) on top of a copy of it."""

    def __init__(self, model: Any, root: Sequence[int]):
        self.model, self.decoder, self.root = model, model.get_decoder(), len(root)
        self.dev = devices.of(model)
        self.kv = cache_kwarg(self.decoder)
        self.cache = getattr(self.decoder(input_ids=torch.tensor([list(root)], device=self.dev), use_cache=True),
                             self.kv) if root else None

    def forward(self, batch: tree.TreeBatch, *, keep: bool) -> tuple[torch.Tensor, Any]:
        """Final hidden states [B, L, H] of the batch's columns, and (`keep`) the KV cache of root + batch, whose
        first `self.root` columns are the root's."""
        rows = batch.input_ids.shape[0]
        cache, mask, pos = None, batch.attention_mask, batch.position_ids + self.root
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(rows)
            mask = torch.cat([mask.new_ones(*mask.shape[:3], self.root), mask], dim=-1)
        k_pos = torch.cat([torch.arange(self.root, device=self.dev).expand(rows, -1), pos], dim=1)
        out = self.decoder(input_ids=batch.input_ids, position_ids=pos, **{self.kv: cache},
                           use_cache=keep or cache is not None, attention_mask=tree.model_mask(self.model, mask, pos, k_pos))
        return out.last_hidden_state, getattr(out, self.kv) if keep else None


def cache_kwarg(module: Any) -> str:
    """The KV cache's argument and output name: `cache` in transformers >= 5.2x (`past_key_values` is deprecated
    there and warns), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def margin(logp: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 log-prob per row (nats): the confidence of the argmax."""
    top2 = np.sort(logp, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@torch.no_grad()
def score_pairs(model: Any, with_c: Sequence[Sequence[int]], without_c: Sequence[Sequence[int]],
                choice_ids: ChoiceIds, *, pad_id: int, batch_size: int = 4, precision: str = "bf16",
                share_prefix: bool = True, verify_margin: float = VERIFY_MARGIN, progress: bool = False,
                desc: str = "sampling behaviour on x and x∖C") -> dict[str, np.ndarray]:
    """Choice log-probs on both sides of every pair.

    With `share_prefix`, PAIRS_PER_ROW pairs form one prefix-tree row: the system turn's KV cache (computed once)
    is reused by every row, each pair's question and options run once, and the two short suffixes (feature + end of
    turn) branch off them; `batch_size` pairs run per forward. Without it, every prompt is its own row.

    `verify_margin` > 0 (bf16 only): pairs where either side's top-two choice log-probs are closer than this are
    re-scored in fp32, so near-ties are decided as an fp32 model decides them. `verified` lists the re-scored
    prompts (i for x, n + i for x∖C).
    """
    n = len(with_c)
    if share_prefix:
        per_row = min(PAIRS_PER_ROW, batch_size)
        groups = [[p for i in range(k, min(k + per_row, n)) for p in (with_c[i], without_c[i])]
                  for k in range(0, n, per_row)]
        lp, top = score_groups(model, groups, choice_ids, pad_id=pad_id, rows_per_batch=max(1, batch_size // per_row),
                               precision=precision, progress=progress, desc=desc)
        lp, top = lp.reshape(n, 2, -1), top.reshape(n, 2)
        res = {"logp": lp[:, 0], "logp_without": lp[:, 1], "top": top[:, 0], "top_without": top[:, 1]}
    else:
        lp, top = score_groups(model, [[p] for p in [*with_c, *without_c]], choice_ids, pad_id=pad_id,
                               rows_per_batch=2 * batch_size, precision=precision, share_root=False, progress=progress,
                               desc=desc)
        res = {"logp": lp[:n], "logp_without": lp[n:], "top": top[:n], "top_without": top[n:]}
    if verify_margin > 0 and precision == "bf16":
        verify_near_ties(model, with_c, without_c, res, choice_ids, pad_id=pad_id, batch_size=batch_size,
                         share_prefix=share_prefix, verify_margin=verify_margin, progress=progress)
    return res


def verify_near_ties(model: Any, with_c: Sequence[Sequence[int]], without_c: Sequence[Sequence[int]],
                     res: dict[str, np.ndarray], choice_ids: ChoiceIds, *, pad_id: int, batch_size: int = 4,
                     share_prefix: bool = True, verify_margin: float = VERIFY_MARGIN, progress: bool = False) -> None:
    """Re-score in fp32 the pairs where either side's top-two choice log-probs (bf16) are closer than
    `verify_margin`, in place in `res`, so near-ties are decided as an fp32 model decides them; `res["verified"]`
    lists the re-scored prompts (i for x, n + i for x∖C)."""
    n = len(with_c)
    close = np.flatnonzero((margin(res["logp"]) < verify_margin) | (margin(res["logp_without"]) < verify_margin))
    if len(close):
        exact = score_pairs(model, [with_c[i] for i in close], [without_c[i] for i in close], choice_ids,
                            pad_id=pad_id, batch_size=batch_size, precision="fp32", share_prefix=share_prefix,
                            verify_margin=0.0, progress=progress, desc="re-scoring near-ties")
        for key in ("logp", "logp_without", "top", "top_without"):
            res[key][close] = exact[key]
    res["verified"] = np.concatenate([close, close + n])  # prompt index: i (x) or n + i (x∖C)


@dataclass
class SampleStats:
    pairs: int
    tokens: int  # prompt tokens on both sides (what a plain forward would process)
    seconds: float

    def line(self) -> str:
        return (f"{self.pairs} pairs, {self.tokens} prompt tokens in {self.seconds:.1f}s: "
                f"{self.pairs / self.seconds:.1f} pairs/s, {self.tokens / self.seconds:.0f} tokens/s")


def encode_pairs(tokenizer: Any, task: Task, pairs: Sequence[Pair]) -> tuple[list[list[int]], list[list[int]]]:
    a = [encode(tokenizer, render_prompt(tokenizer, p.messages, task.assistant_prefix)) for p in pairs]
    b = [encode(tokenizer, render_prompt(tokenizer, p.messages_without, task.assistant_prefix)) for p in pairs]
    return a, b


def sample_behavior(model: Any, tokenizer: Any, task: Task, pairs: Sequence[Pair], *, batch_size: int = 4,
                    precision: str = "bf16", share_prefix: bool = True, verify_margin: float = VERIFY_MARGIN,
                    progress: bool = True, desc: str = "sampling behaviour on x and x∖C") -> tuple[pd.DataFrame, SampleStats]:
    """B(M) on every pair: one row per pair with answers and choice distributions on both sides."""
    choice_ids = choice_token_ids(tokenizer, task.continuations)
    with_c, without_c = encode_pairs(tokenizer, task, pairs)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    res = score_pairs(model, with_c, without_c, choice_ids, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                      precision=precision, share_prefix=share_prefix, verify_margin=verify_margin, progress=progress,
                      desc=desc)
    model.train(was_training)
    stats = SampleStats(len(pairs), sum(map(len, with_c)) + sum(map(len, without_c)), time.perf_counter() - t0)
    return behavior_frame(task, pairs, res), stats


def behavior_frame(task: Task, pairs: Sequence[Pair], res: dict[str, np.ndarray]) -> pd.DataFrame:
    """B(M) as a table, one row per pair, from the choice log-probs on both sides (`score_pairs`' result)."""
    choices = np.array(task.choices)
    rows = []
    for i, p in enumerate(pairs):
        lp, lq = res["logp"][i], res["logp_without"][i]
        a, b = choices[lp.argmax()], choices[lq.argmax()]
        rows.append({
            "pair_id": p.id,
            "messages": json.dumps(p.messages, ensure_ascii=False),
            "messages_without": json.dumps(p.messages_without, ensure_ascii=False),
            "feature": p.feature,
            "gold": p.gold,
            "meta": json.dumps(p.meta, ensure_ascii=False),
            "answer": str(a),
            "answer_without": str(b),
            "changed": bool(a != b),
            "probs": _softmax(lp).tolist(),
            "probs_without": _softmax(lq).tolist(),
            "choice_mass": float(np.exp(lp).sum()),
            "choice_mass_without": float(np.exp(lq).sum()),
        })
    return pd.DataFrame(rows)


def _softmax(logp: np.ndarray) -> np.ndarray:
    e = np.exp(logp - logp.max())
    return e / e.sum()


def summarize(df: pd.DataFrame, choices: Sequence[str]) -> dict[str, Any]:
    """Answer distribution on both sides, changed rate, and how often the answer follows the feature."""
    n = len(df)
    dist = {c: round(float((df["answer"] == c).mean()), 3) for c in choices}
    dist_without = {c: round(float((df["answer_without"] == c).mean()), 3) for c in choices}
    out: dict[str, Any] = {"n": n, "answers_with": dist, "answers_without": dist_without,
                           "changed_rate": round(float(df["changed"].mean()), 3)}
    metas = [json.loads(m) for m in df["meta"]]
    if metas and all("feature_answer" in m for m in metas):  # the answer C argues for (hint letter, stance)
        pushed = np.array([m["feature_answer"] for m in metas])
        changed = df["changed"].to_numpy()
        out["follow_rate"] = round(float((df["answer"].to_numpy() == pushed).mean()), 3)
        out["follow_rate_without"] = round(float((df["answer_without"].to_numpy() == pushed).mean()), 3)
        out["changed_toward_feature_rate"] = round(float((df["answer"].to_numpy()[changed] == pushed[changed]).mean()), 3) if changed.any() else None
    if df["gold"].notna().all():
        out["accuracy_with"] = round(float((df["answer"] == df["gold"]).mean()), 3)
        out["accuracy_without"] = round(float((df["answer_without"] == df["gold"]).mean()), 3)
    return out


def format_summary(s: dict[str, Any], feature: str = "C") -> str:
    """Human-readable lines for `summarize` output."""
    pct = lambda d: "  ".join(f"{k} {v:.0%}" for k, v in d.items())  # noqa: E731
    lines = [f"answer distribution with {feature}:    {pct(s['answers_with'])}",
             f"answer distribution without {feature}: {pct(s['answers_without'])}",
             f"changed rate {s['changed_rate']:.1%}"]
    if "follow_rate" in s:
        toward = s["changed_toward_feature_rate"]
        lines[-1] += (f"   {feature}-follow rate {s['follow_rate']:.1%} (without {feature}: {s['follow_rate_without']:.1%}); "
                      f"changes toward {feature}: " + ("n/a (no pair changed)" if toward is None else f"{toward:.0%}"))
        lines.append(f"  ({feature}-follow rate: share of pairs whose answer is the one the {feature} argues for; changes "
                     f"toward {feature}: of the pairs whose answer changed, the share that changed to that answer)")
    if "accuracy_with" in s:
        lines.append(f"accuracy with/without {feature}: {s['accuracy_with']:.1%} / {s['accuracy_without']:.1%}")
    return "\n".join(lines)
