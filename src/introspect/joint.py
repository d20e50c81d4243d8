"""Checkpoint evaluation in one pass per pair: the explanation prompt, x and x∖C run as ONE prefix-tree row, the
behaviour is read at x's and x∖C's answer positions, and the explanation is decoded greedily from the same row's KV
cache (`evaluate.joint`, docs/benchmarks.md#evaluation).

The explanation prompt is x's conversation with the explanation question appended to the last user turn, so it
shares x's system turn and question (≈ 120 of ≈ 140 tokens on Hint-MMLU); x∖C shares the same prefix up to the
feature. Evaluated apart (`evaluate.generate`, then `behavior.sample_behavior`) that prefix runs twice per pair and
every decode step of a batch of 16 pays HF `generate`'s per-step overhead. Here:

  * the system turn every prompt shares runs once (`behavior.RootCache`);
  * per pair one tree row [explanation prompt, x, x∖C] (`tree.pack`): each shared prefix is computed once;
  * B(M_t): the fp32 head at x's and x∖C's last columns (`behavior.choice_logprobs`), near-ties re-scored in fp32
    (`behavior.verify_near_ties`), exactly as `sample_behavior` decides them;
  * the explanation: greedy from the row's cache. Each new token attends to the root, the explanation's own path
    in the tree and the tokens generated so far (x's and x∖C's branches are masked out), at the position it would have
    in the explanation prompt alone; a row stops at `>>>.` or end of turn, the batch when every row has.

The logits are those of each prompt alone up to float rounding (as for `tree.py`); how often rounding changes a
greedy explanation or an answer is measured by benchmarks/bench_eval.py. Models with sliding-window layers (Gemma 3)
are evaluated the separate way (`fits`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from . import behavior, devices, tree
from .behavior import RootCache, shared_prefix
from .devices import autocast
from .labels import target_text
from .models import render_prompt
from .progress import bar as progress_bar
from .tasks import Pair, Task
from .tokens import choice_token_ids, encode

STOP = ">>>."
PREFILL_ROWS = 4  # rows per prefill forward: as fast per token as wider ones here and less padding (bench_eval)
DRAFT = 6  # drafted tokens per decode step (see `decode`)


def tree_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A decode step's attention (a few queries per row) under a boolean [B, 1, Lq, Lk] mask (True = may attend),
    in fp32 on the fp32 cache (`Preallocated`), grouped-query heads without repeating keys and values: what `sdpa`
    computes, at ~1/6 of the time of torch's CPU kernel for one query (docs/benchmarks.md#evaluation). Prefills (more
    than DRAFT + 1 queries) go to `sdpa`. Used inside `tree_attention_on` only."""
    b, heads, lq, d = query.shape
    if lq > DRAFT + 1:  # a prefill: torch's kernel is the faster there
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if attention_mask is None:  # no mask given (the root's forward): causal, the queries last among the keys
        lk = key.shape[2]
        attention_mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril(lk - lq)[None, None]
    if attention_mask.dtype != torch.bool or kwargs.get("softcap") is not None:
        raise ValueError("tree_attention takes a boolean 4-D attention mask (or none: causal) and no softcap")
    groups = heads // key.shape[1]
    q = query.float().reshape(b, key.shape[1], groups * lq, d)  # head h reads key/value head h // groups
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    scores = scores.view(b, key.shape[1], groups, lq, -1).masked_fill(~attention_mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(b, key.shape[1], groups * lq, -1)
    out = torch.matmul(probs, value.float()).view(b, heads, lq, d)
    return out.transpose(1, 2).contiguous().to(query.dtype), None


AttentionInterface.register("introspect_tree", tree_attention)


@contextmanager
def tree_attention_on(model: Any) -> Iterator[None]:
    """Within the block the model attends with `tree_attention`; its own implementation again after."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = inner.config._attn_implementation
    inner.set_attn_implementation("introspect_tree")
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


def fits(model: Any) -> bool:
    """True when the model has no sliding-window layers: this path keeps every row's whole cache."""
    return tree.sliding_window(model) is None


def prompts_of(tok: Any, task: Task, pairs: Sequence[Pair], sample: bool) -> list[list[list[int]]]:
    """Per pair: [explanation prompt] or [explanation prompt, x, x∖C] as token ids."""
    expl = [encode(tok, render_prompt(tok, task.explanation_messages(p))) for p in pairs]
    if not sample:
        return [[e] for e in expl]
    with_c, without_c = behavior.encode_pairs(tok, task, pairs)
    return [[e, a, b] for e, a, b in zip(expl, with_c, without_c)]


def cut(text: str) -> str:
    return text[: text.index(STOP) + len(STOP)] if STOP in text else text


@dataclass
class Prefilled:
    """Rows after their prefix-tree forward, ready to decode: the KV cache's tensors per layer ([rows, heads,
    root + width, dim]), which columns each row's explanation may see, their positions, and the final hidden state
    at the explanation prompt's last token."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    visible: torch.Tensor  # [rows, root + width] bool
    k_pos: torch.Tensor  # [rows, root + width]
    last: torch.Tensor  # [rows, H]

    @staticmethod
    def join(parts: Sequence["Prefilled"]) -> "Prefilled":
        """One batch of rows from several prefills: caches right-padded to the widest (padding never visible)."""
        width = max(p.visible.shape[1] for p in parts)
        pad = lambda t, d: F.pad(t, (0, 0) * d + (0, width - t.shape[-1 - d]))  # noqa: E731
        kv = [(torch.cat([pad(p.kv[i][0], 1) for p in parts]), torch.cat([pad(p.kv[i][1], 1) for p in parts]))
              for i in range(len(parts[0].kv))]
        return Prefilled(kv, torch.cat([pad(p.visible, 0) for p in parts]), torch.cat([pad(p.k_pos, 0) for p in parts]),
                         torch.cat([p.last for p in parts]))


def prefill(shared: RootCache, batch: tree.TreeBatch) -> tuple[Prefilled, torch.Tensor]:
    """Run a packed batch on the root cache; (the rows ready to decode, the final hidden states [rows, L, H])."""
    hidden, cache = shared.forward(batch, keep=True)
    rows, dev = batch.input_ids.shape[0], hidden.device
    visible = torch.zeros(rows, shared.root + batch.input_ids.shape[1], dtype=torch.bool, device=dev)
    visible[:, :shared.root] = True
    for b, row in enumerate(batch.paths):
        visible[b, [shared.root + c for c in row[0]]] = True
    k_pos = torch.cat([torch.arange(shared.root, device=dev).expand(rows, -1), batch.position_ids.to(dev) + shared.root], 1)
    last = torch.stack([hidden[b, row[0][-1]] for b, row in enumerate(batch.paths)])
    return Prefilled([(layer.keys, layer.values) for layer in cache.layers], visible, k_pos, last), hidden


@torch.no_grad()
def explain_and_sample(model: Any, tok: Any, task: Task, pairs: Sequence[Pair], *, precision: str,
                       verify_margin: float, sample: bool = True, batch_size: int = 16, max_new_tokens: int = 40,
                       progress: bool = False, desc: str = "explaining and re-sampling") -> tuple[list[str], pd.DataFrame | None]:
    """Greedy explanations of every pair and (`sample`) B(M) on x and x∖C, in one pass: `batch_size` pairs decode
    together, prefilled PREFILL_ROWS at a time. Returns (texts, behaviour table or None)."""
    groups = prompts_of(tok, task, pairs, sample)
    choice_ids = choice_token_ids(tok, task.continuations) if sample else []
    texts = [""] * len(pairs)
    logp = np.zeros((len(pairs), 2, len(choice_ids)), dtype=np.float32)
    top = np.zeros((len(pairs), 2), dtype=np.int64)
    root = shared_prefix([p for g in groups for p in g]) if len(groups) > 1 else 0
    # rows of similar width together (little padding), widest first: the decode `Storage` is allocated once
    order = np.argsort([-tree.width([p[root:] for p in g]) for g in groups], kind="stable")
    dev = devices.of(model)
    # the drafts' source: the label texts the explainer was trained on, then every explanation decoded so far
    library = [encode(tok, target_text(c, letter, task.tag)) for c in (True, False) for letter in task.choices]
    was_training = model.training
    model.eval()
    with tree_attention_on(model), autocast(precision, dev.type), progress_bar(total=len(pairs), disable=not progress, desc=f"{desc} ({precision})",
                                                     unit="pair") as bar:
        shared, storage = RootCache(model, groups[0][0][:root]), Storage()
        for i in range(0, len(order), batch_size):
            parts, answer_states = [], []
            for k in range(i, min(i + batch_size, len(order)), PREFILL_ROWS):
                rows = order[k:min(k + PREFILL_ROWS, i + batch_size)]
                batch = tree.pack([[p[root:] for p in groups[r]] for r in rows], tok.pad_token_id).to(dev)
                part, hidden = prefill(shared, batch)
                parts.append(part)
                if sample:  # x's and x∖C's last columns: the fp32 head reads them once per batch (one weight pass)
                    answer_states += [hidden[b, c] for b, row in enumerate(batch.last_columns()) for c in row[1:]]
            rows = order[i:i + batch_size]
            if sample:
                lp, tp = behavior.choice_logprobs(model, torch.stack(answer_states), choice_ids)
                logp[rows], top[rows] = lp.reshape(len(rows), 2, -1), tp.reshape(len(rows), 2)
            decoded = decode(model, tok, shared, Prefilled.join(parts), [len(groups[r][0]) for r in rows], max_new_tokens,
                             library, storage)
            for r, text in zip(rows, decoded):
                texts[r] = text
            bar.update(len(rows))
    model.train(was_training)
    if not sample:
        return texts, None
    res = {"logp": logp[:, 0], "logp_without": logp[:, 1], "top": top[:, 0], "top_without": top[:, 1]}
    if verify_margin > 0 and precision == "bf16":
        behavior.verify_near_ties(model, [g[1] for g in groups], [g[2] for g in groups], res, choice_ids,
                                  pad_id=tok.pad_token_id, verify_margin=verify_margin, progress=progress)
    return texts, behavior.behavior_frame(task, pairs, res)


class Storage:
    """fp32 memory for the decode caches, kept across the batches of one `explain_and_sample` call and grown on
    demand. A cache of 16 rows is 5-11 MB per layer; allocated afresh for every batch, the allocator maps new pages
    that fault on their first write, which made filling the cache of a long batch cost more than its whole decode
    (docs/benchmarks.md#evaluation)."""

    def __init__(self) -> None:
        self.flat: dict[tuple[int, int], torch.Tensor] = {}

    def take(self, key: tuple[int, int], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = int(np.prod(shape))
        buf = self.flat.get(key)
        if buf is None or buf.numel() < n:
            buf = self.flat[key] = like.new_empty(n, dtype=torch.float32)
        return buf[:n].view(shape)


class Preallocated(DynamicLayer):
    """A KV cache layer with room for `room` more tokens, kept in fp32: each decode step writes its keys and values
    in place (a DynamicLayer concatenates, copying the whole cache every step: most of the decode time here), and
    `tree_attention` reads them without a cast. Its memory comes from `storage` (slot `index`); rows leaving the
    batch are compacted in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, *, room: int, storage: Storage, index: int):
        super().__init__()
        shape = (*keys.shape[:2], keys.shape[2] + room, keys.shape[3])  # fp32: what `tree_attention` reads
        self.buffers = storage.take((index, 0), shape, keys), storage.take((index, 1), shape, values)
        self.length = 0
        self.lazy_initialization(keys, values)
        self.update(keys, values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.buffers[0].shape[-2]:
            raise ValueError(f"KV cache full: {end} > {self.buffers[0].shape[-2]} columns")
        self.buffers[0][:, :, self.length:end] = key_states
        self.buffers[1][:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.buffers[0][:, :, :end], self.buffers[1][:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` (increasing), moved to the front of the same memory."""
        keep = indices.tolist()
        if keep != sorted(keep):
            raise ValueError("Preallocated keeps rows in their order: indices must increase")
        for buf in self.buffers:
            for j, src in enumerate(keep):  # j <= src: a row is read before anything is written over it
                if j != src:
                    buf[j, :, :self.length] = buf[src, :, :self.length]
        self.buffers = self.buffers[0][:len(keep)], self.buffers[1][:len(keep)]
        self.keys, self.values = self.buffers[0][:, :, :self.length], self.buffers[1][:, :, :self.length]


def draft(library: Sequence[list[int]], have: list[int], k: int) -> list[int]:
    """Up to `k` tokens that followed `have` in the latest earlier explanation that began with `have` (none: [])."""
    for o in reversed(library):
        if len(o) > len(have) and o[:len(have)] == have:
            return o[len(have):len(have) + k]
    return []


def decode(model: Any, tok: Any, shared: RootCache, rows: Prefilled, lengths: list[int], max_new_tokens: int,
           library: list[list[int]], storage: Storage | None = None) -> list[str]:
    """Greedy continuation of each row's explanation prompt (`lengths` tokens) from its prefilled cache.

    Explanations repeat a template, so each step also feeds a draft of the next DRAFT tokens (what followed the same
    tokens in a label text or an earlier explanation, `library`) and keeps the drafted tokens the model's own argmax agrees with, plus
    its argmax after them: the tokens greedy decoding would give, in fewer steps. A rejected draft's cache columns are
    never visible again; finished rows leave the batch. Finished explanations are added to `library`."""
    n, dev = len(lengths), rows.last.device
    storage = storage or Storage()
    head = model.get_output_embeddings()
    cache = Cache(layers=[Preallocated(k, v, room=max_new_tokens * (DRAFT + 1), storage=storage, index=i)
                          for i, (k, v) in enumerate(rows.kv)])
    visible, k_pos = rows.visible, rows.k_pos
    out = [[int(t)] for t in head(rows.last).argmax(-1)]  # the last token of each is not in the cache yet
    live = [b for b in range(n) if not finished(tok, out[b], max_new_tokens)]  # rows still decoding, cache order
    while live:
        drafts = [draft(library, out[b], min(DRAFT, max_new_tokens - len(out[b]))) for b in live]
        width = 1 + max(map(len, drafts))
        ids = torch.full((len(live), width), tok.pad_token_id, dtype=torch.long)
        for i, b in enumerate(live):
            ids[i, :1 + len(drafts[i])] = torch.tensor(out[b][-1:] + drafts[i])
        start = torch.tensor([lengths[b] + len(out[b]) - 1 for b in live], device=dev)
        q_pos = start[:, None] + torch.arange(width, device=dev)
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril().expand(len(live), 1, width, width)
        mask = torch.cat([visible[:, None, None, :].expand(len(live), 1, width, visible.shape[1]), causal], dim=-1)
        k_pos = torch.cat([k_pos, q_pos], dim=1)
        step = shared.decoder(input_ids=ids.to(dev), position_ids=q_pos, **{shared.kv: cache}, use_cache=True,
                              attention_mask=tree.model_mask(model, mask, q_pos, k_pos))
        cache = getattr(step, shared.kv)
        fed = [1 + len(d) for d in drafts]  # columns holding a token; the rest are padding the head need not read
        states = torch.cat([step.last_hidden_state[i, :f] for i, f in enumerate(fed)])
        flat = head(states).argmax(-1).tolist()
        best = [flat[a:a + f] for a, f in zip(np.cumsum([0, *fed]), fed)]  # [live][fed]
        seen = torch.zeros(len(live), width, dtype=torch.bool, device=dev)
        still = []
        for i, b in enumerate(live):
            ok = 0
            while ok < len(drafts[i]) and drafts[i][ok] == best[i][ok]:
                ok += 1
            seen[i, :ok + 1] = True  # the fed token and the accepted drafts: their keys and values are right
            for t in drafts[i][:ok] + [best[i][ok]]:
                out[b].append(t)
                if finished(tok, out[b], max_new_tokens):
                    break
            else:
                still.append(i)
        visible = torch.cat([visible, seen], dim=1)
        if len(still) < len(live):  # finished rows leave the batch
            keep = torch.tensor(still, dtype=torch.long, device=dev)
            cache.batch_select_indices(keep)
            visible, k_pos = visible[keep], k_pos[keep]
            live = [live[i] for i in still]
    library.extend(out)
    return [cut(tok.decode(o, skip_special_tokens=True)) for o in out]


def finished(tok: Any, out: list[int], max_new_tokens: int) -> bool:
    """A row stops at end of turn, at `>>>.`, or after max_new_tokens tokens (as HF `generate` with stop strings)."""
    return out[-1] == tok.eos_token_id or len(out) >= max_new_tokens or STOP in tok.decode(out, skip_special_tokens=True)
