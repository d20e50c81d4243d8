"""Behaviour sampling: a model's answer and its distribution over the choices, on both sides of every pair.

The answer is read from the next-token logits at the answer position (one forward per prompt, lm-eval style
multiple choice over a fixed choice set), never from free generation. Speed comes from:
  * bf16 autocast on CPU (AVX-512 bf16),
  * batches bucketed by length (little padding),
  * prefix sharing: x and x∖C share everything up to the feature, so the shared prefix is run once and its KV
    cache is reused for both suffixes (`share_prefix=True`),
  * the LM head applied at the answer position only, in fp32 (all rows are left-padded, so it is the last one).
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .config import UserError, atomic_path, stable_hash
from .models import render_prompt
from .tasks import Pair, Task

META_KEY = b"introspect"
VERIFY_MARGIN = 0.02  # bf16 near-ties closer than this (nats) are re-scored in fp32; see docs/benchmarks.md


Groups = list[list[int]]


def choice_token_ids(tokenizer: Any, continuations: Sequence[str | Sequence[str]]) -> Groups:
    """Token ids of each choice's continuations: a choice is one string or a tuple of alternative strings (its
    probability is the sum over them). Every string must be exactly one token, and no token may serve two choices."""
    groups: Groups = []
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


def group_logits(logits: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Per-choice scores [B, C] = logsumexp of the choice's token logits (the plain logit for one-token choices)."""
    return torch.stack([torch.logsumexp(logits[..., g], dim=-1) for g in groups], dim=-1)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def autocast(precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext()
    raise UserError(f"precision must be 'bf16' or 'fp32', got {precision!r} (flag --precision)")


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def _head_logprobs(model: Any, hidden: torch.Tensor, choice_ids: Groups) -> tuple[np.ndarray, np.ndarray]:
    """LM head in fp32 at the answer position: choice log-probs over the full vocabulary [B, C], vocab argmax [B].

    The head runs outside autocast: bf16 logits (spacing 0.125 near 20) would tie close choices.
    """
    weight = model.get_output_embeddings().weight
    with torch.autocast("cpu", enabled=False):
        logits = hidden.float() @ weight.float().T
    logp = torch.log_softmax(logits, dim=-1)
    return group_logits(logp, choice_ids).numpy(), logits.argmax(-1).numpy()


def _extend(model: Any, segments: Sequence[Sequence[int]], pad_id: int, cache: Any = None,
            past_mask: torch.Tensor | None = None, keep_cache: bool = True) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """Run one left-padded segment per row after an optional KV cache; return last hidden state, cache, mask."""
    ids, mask = _left_pad(segments, pad_id)
    offset = past_mask.sum(-1, keepdim=True) if past_mask is not None else 0
    pos = offset + (mask.cumsum(-1) - 1).clamp(min=0)
    full = mask if past_mask is None else torch.cat([past_mask, mask], dim=1)
    out = model.get_decoder()(input_ids=ids, attention_mask=full, position_ids=pos, past_key_values=cache,
                              use_cache=keep_cache)
    return out.last_hidden_state[:, -1], out.past_key_values, full


def _batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


@torch.no_grad()
def score_prompts(model: Any, prompts: Sequence[Sequence[int]], choice_ids: Groups, *, pad_id: int,
                  batch_size: int = 4, precision: str = "bf16", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Choice log-probs [N, C] and vocab argmax [N] at the last position of each prompt (length-bucketed batches)."""
    out = np.zeros((len(prompts), len(choice_ids)), dtype=np.float32)
    top = np.zeros(len(prompts), dtype=np.int64)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    with autocast(precision), tqdm(total=len(prompts), disable=not progress, desc=f"score ({precision})", unit="prompt") as bar:
        for idx in _batches(order, batch_size):
            hidden, _, _ = _extend(model, [prompts[i] for i in idx], pad_id, keep_cache=False)
            out[idx], top[idx] = _head_logprobs(model, hidden, choice_ids)
            bar.update(len(idx))
    return out, top


def _margin(logp: np.ndarray) -> np.ndarray:
    top2 = np.sort(logp, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the shared token prefix, leaving at least one token of each side to score."""
    n = 0
    limit = min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    return n


@torch.no_grad()
def score_pairs(model: Any, with_c: Sequence[Sequence[int]], without_c: Sequence[Sequence[int]],
                choice_ids: Groups, *, pad_id: int, batch_size: int = 4, precision: str = "bf16",
                share_prefix: bool = True, verify_margin: float = 0.0, progress: bool = False) -> dict[str, np.ndarray]:
    """Choice log-probs on both sides of every pair.

    `verify_margin` > 0 (bf16 only): prompts whose top-two choice log-probs are closer than this are re-scored in
    fp32 (the whole pair when both sides are close), so near-ties are decided as an fp32 model decides them.
    `verified` lists the re-scored prompts (i for x, n + i for x∖C).

    With `share_prefix`, three nested segments run once each: the prefix common to every prompt (system turn),
    once for the whole set; each pair's common prefix (question and options), once per pair; then the two
    suffixes (feature + end of turn) on top of a copy of the pair's KV cache.
    """
    n = len(with_c)
    if verify_margin > 0 and precision == "bf16":
        res = score_pairs(model, with_c, without_c, choice_ids, pad_id=pad_id, batch_size=batch_size,
                          precision="bf16", share_prefix=share_prefix, progress=progress)
        res["verified"] = np.zeros(0, dtype=int)
        close_a, close_b = _margin(res["logp"]) < verify_margin, _margin(res["logp_without"]) < verify_margin
        both = np.flatnonzero(close_a & close_b)  # both sides: re-score the pair (shares its prefix)
        if len(both):
            exact = score_pairs(model, [with_c[i] for i in both], [without_c[i] for i in both], choice_ids,
                                pad_id=pad_id, batch_size=batch_size, precision="fp32", share_prefix=share_prefix,
                                progress=progress)
            for key in ("logp", "logp_without", "top", "top_without"):
                res[key][both] = exact[key]
        one_a, one_b = np.flatnonzero(close_a & ~close_b), np.flatnonzero(close_b & ~close_a)  # one side: that prompt
        if len(one_a) + len(one_b):
            lp, top = score_prompts(model, [with_c[i] for i in one_a] + [without_c[i] for i in one_b], choice_ids,
                                    pad_id=pad_id, batch_size=2 * batch_size, precision="fp32", progress=progress)
            k = len(one_a)
            res["logp"][one_a], res["top"][one_a] = lp[:k], top[:k]
            res["logp_without"][one_b], res["top_without"][one_b] = lp[k:], top[k:]
        res["verified"] = np.concatenate([both, both + n, one_a, one_b + n])  # prompt index: i (x) or n + i (x∖C)
        return res
    if not share_prefix:
        logp, top = score_prompts(model, [*with_c, *without_c], choice_ids, pad_id=pad_id,
                                  batch_size=2 * batch_size, precision=precision, progress=progress)
        return {"logp": logp[:n], "logp_without": logp[n:], "top": top[:n], "top_without": top[n:]}
    logp = np.zeros((2 * n, len(choice_ids)), dtype=np.float32)  # rows 2i (with C), 2i+1 (without C)
    top = np.zeros(2 * n, dtype=np.int64)
    split = [common_prefix(a, b) for a, b in zip(with_c, without_c)]
    shared = min(common_prefix(with_c[0], p) for p in [*with_c, *without_c]) if n > 1 else 0
    shared = min([shared, *split])
    order = np.argsort(split, kind="stable")
    with autocast(precision), tqdm(total=n, disable=not progress, desc=f"sample ({precision})", unit="pair") as bar:
        root = _extend(model, [with_c[0][:shared]], pad_id) if shared else None
        for idx in _batches(order, batch_size):
            cache, past = None, None
            if root is not None:
                cache = copy.deepcopy(root[1])
                cache.batch_repeat_interleave(len(idx))
                past = root[2].expand(len(idx), -1)
            _, cache, past = _extend(model, [with_c[i][shared:split[i]] for i in idx], pad_id, cache, past)
            cache.batch_repeat_interleave(2)
            suffixes = [s[split[i]:] for i in idx for s in (with_c[i], without_c[i])]
            hidden, _, _ = _extend(model, suffixes, pad_id, cache, past.repeat_interleave(2, dim=0), keep_cache=False)
            rows = np.stack([2 * idx, 2 * idx + 1], axis=1).reshape(-1)
            logp[rows], top[rows] = _head_logprobs(model, hidden, choice_ids)
            bar.update(len(idx))
    return {"logp": logp[0::2], "logp_without": logp[1::2], "top": top[0::2], "top_without": top[1::2]}


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
                    progress: bool = True) -> tuple[pd.DataFrame, SampleStats]:
    """B(M) on every pair: one row per pair with answers and choice distributions on both sides."""
    choice_ids = choice_token_ids(tokenizer, task.continuations)
    with_c, without_c = encode_pairs(tokenizer, task, pairs)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    res = score_pairs(model, with_c, without_c, choice_ids, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                      precision=precision, share_prefix=share_prefix, verify_margin=verify_margin, progress=progress)
    model.train(was_training)
    stats = SampleStats(len(pairs), sum(map(len, with_c)) + sum(map(len, without_c)), time.perf_counter() - t0)
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
    return pd.DataFrame(rows), stats


def _softmax(logp: np.ndarray) -> np.ndarray:
    e = np.exp(logp - logp.max())
    return e / e.sum()


def table_meta(*, model_id: str, weights_hash: str, task: Task, pairs: Sequence[Pair], seed: int, split: str,
               precision: str) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "weights_hash": weights_hash,
        "task": task.name,
        "task_options": task.init_options(),
        "task_spec": task.spec(),
        "task_spec_hash": stable_hash(task.spec()),
        "pairs_hash": stable_hash([p.to_dict() for p in pairs]),
        "seed": seed,
        "split": split,
        "n": len(pairs),
        "precision": precision,
        "choices": list(task.choices),
    }


def write_table(path: str | Path, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Write a table to Parquet with our provenance in the schema metadata (atomically)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def task_of(meta: dict[str, Any]) -> Task:
    """The task a table was made with, rebuilt from its metadata."""
    from .tasks import get_task

    return get_task(meta["task"], **meta.get("task_options", {}))


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (run `introspect sample` first, or check the path)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise UserError(f"{path} has no introspect metadata: it was not written by introspect")
    return table.to_pandas(), json.loads(raw)


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
        lines[-1] += (f"   {feature}-follow rate {s['follow_rate']:.1%} (without {feature}: {s['follow_rate_without']:.1%}); "
                      f"changes toward {feature}: {s['changed_toward_feature_rate'] or 0:.0%}")
    if "accuracy_with" in s:
        lines.append(f"accuracy with/without {feature}: {s['accuracy_with']:.1%} / {s['accuracy_without']:.1%}")
    return "\n".join(lines)
