"""Checkpoint evaluation: do the explanations follow what the model does now (Self) or the fixed labels (Orig)?

For M0 and each checkpoint M_t, on held-out eval pairs:
  1. generate explanations greedily (batched, KV cache, stop at the closing `>>>.`) and parse them;
  2. re-sample B(M_t) on x and x∖C and build E(M_t);
  3. score the explanations against E(M_t) ("Self") and against E(M0) ("Orig") with the same scorer;
  4. Self − Orig with a paired-bootstrap CI, overall and on the items whose label differs between M0 and M_t;
  5. drift from M0 and label–behaviour agreement.
`stages.evaluate.run` runs this for a run directory; each checkpoint's result records its inputs (checkpoint weights,
eval set, precision, verify margin, generation settings, bootstrap), so a re-run skips exactly the current ones.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import behavior, metrics
from . import devices
from .tokens import encode, left_pad
from .devices import autocast
from .progress import bar as progress_bar
from .joint import STOP, cut, explain_and_sample, fits
from .labels import agreement, drift, label_frame
from .models import render_prompt
from .tasks import Pair, Task


@torch.no_grad()
def generate(model: Any, tok: Any, prompts: Sequence[list[dict[str, str]]], *, precision: str, batch_size: int = 16,
             max_new_tokens: int = 40, progress: bool = False, desc: str = "generating explanations") -> list[str]:
    """Greedy continuations of chat prompts, batched by length, stopping at `>>>.` or end of turn."""
    ids = [encode(tok, render_prompt(tok, list(m))) for m in prompts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list[str] = [""] * len(ids)
    dev = devices.of(model)
    with autocast(precision, dev.type), progress_bar(total=len(ids), disable=not progress, desc=desc, unit="explanation") as bar:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, mask = (t.to(dev) for t in left_pad([ids[j] for j in idx], tok.pad_token_id))
            gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, stop_strings=[STOP],
                                 tokenizer=tok)
            for j, row in zip(idx, gen[:, x.shape[1]:]):
                text = tok.decode(row.tolist(), skip_special_tokens=True)
                out[j] = cut(text)
            bar.update(len(idx))
    return out


def explanation_prompts(task: Task, pairs: Sequence[Pair]) -> list[list[dict[str, str]]]:
    return [task.explanation_messages(p) for p in pairs]


def compare(texts: Sequence[str], beh: pd.DataFrame, m0_beh: pd.DataFrame, choices: Sequence[str], *,
            seed: int, n_boot: int, orig_beh: pd.DataFrame | None = None,
            orig_labels: pd.DataFrame | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score explanations against E(M_t) (Self, from `beh`) and the fixed labels (Orig), same items, same resamples.

    Orig is E(M0) from `m0_beh`, or E(label model) from `orig_beh` when the training labels came from another
    model (cross-family), or `orig_labels` (pair_id, changed, letter) as given (the audit ledger's frozen labels).
    Drift is always measured against M0's own behaviour.
    """
    e_self = label_frame(beh)
    e_orig = orig_labels[["pair_id", "changed", "letter"]].reset_index(drop=True) if orig_labels is not None else \
        label_frame(m0_beh if orig_beh is None else orig_beh)
    self_items = metrics.items(texts, e_self["changed"], e_self["letter"], choices)
    orig_items = metrics.items(texts, e_orig["changed"], e_orig["letter"], choices)
    differs = ~agreement(e_self, e_orig)
    drifted = drift(beh, m0_beh)
    result: dict[str, Any] = {
        "n": len(texts),
        "self": metrics.score(self_items, seed=seed, n_boot=n_boot),
        "orig": metrics.score(orig_items, seed=seed, n_boot=n_boot),
        "self_minus_orig": metrics.paired_difference(self_items, orig_items, seed=seed, n_boot=n_boot),
        "n_label_differs": int(differs.sum()),
        "drift": float(drifted.mean()),
        "label_changed_rate": float(e_orig["changed"].mean()),
        "agreement": float(1 - differs.mean()),  # fixed labels (Orig) vs the labels current behaviour gives E(M_t)
        "behavior_changed_rate": float(beh["changed"].mean()),
        "strata": {
            f"{name}_{'changed' if cls else 'unchanged'}": {
                "n": int((it.gold_changed == cls).sum()),
                "exact_match": metrics.point(it, np.flatnonzero(it.gold_changed == cls))["exact_match"],
            }
            for name, it in (("self", self_items), ("orig", orig_items)) for cls in (True, False)
        },
    }
    if differs.any():
        idx = np.flatnonzero(differs)
        result["self_minus_orig_on_differing"] = metrics.paired_difference(self_items.subset(idx), orig_items.subset(idx),
                                                                           seed=seed, n_boot=n_boot)
    per_item = pd.DataFrame({"pair_id": beh["pair_id"].tolist(), "text": list(texts),
                             "parsed_ok": self_items.ok, "pred_changed": self_items.pred_changed,
                             "pred_letter": self_items.pred_letter.astype(str), "self_changed": e_self["changed"].to_numpy(),
                             "self_letter": e_self["letter"].to_numpy(), "orig_changed": e_orig["changed"].to_numpy(),
                             "orig_letter": e_orig["letter"].to_numpy(), "label_differs": differs,
                             "answer": beh["answer"].to_numpy(), "answer_without": beh["answer_without"].to_numpy()})
    return result, per_item


def evaluate_one(model: Any, tok: Any, task: Task, pairs: Sequence[Pair], m0_beh: pd.DataFrame, *, seed: int,
                 n_boot: int, precision: str, verify_margin: float, batch_size: int = 16, max_new_tokens: int = 40,
                 beh: pd.DataFrame | None = None, orig_beh: pd.DataFrame | None = None,
                 orig_labels: pd.DataFrame | None = None, label: str = "M0",
                 joint: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Generate explanations, re-sample B(M_t) (unless `beh` is given: M0's is already known), and compare.
    `joint`: both in one prefix-tree pass per pair (joint.py) where the model allows it (`joint.fits`).

    Under `accelerate launch` each process takes every P-th pair and the main process gathers and scores them; the
    other processes get (None, None)."""
    t0 = time.time()
    shard = devices.shard(devices.of(model).type)
    mine = pairs[shard[0]::shard[1]] if shard else list(pairs)
    mine_beh = None
    if joint and fits(model):  # one prefix-tree pass per pair (joint.py)
        texts, mine_beh = explain_and_sample(model, tok, task, mine, precision=precision, verify_margin=verify_margin,
                                             sample=beh is None, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                             progress=True, desc=f"explaining{'' if beh is not None else ' and re-sampling'} ({label})")
    else:
        texts = generate(model, tok, explanation_prompts(task, mine), precision=precision, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, progress=True, desc=f"generating explanations ({label})")
    if beh is None and mine_beh is None:
        mine_beh, _ = behavior.sample_behavior(model, tok, task, mine, precision=precision, verify_margin=verify_margin,
                                               progress=True, desc=f"re-sampling behaviour on x and x∖C ({label})")
    if shard:
        order = [p.id for p in pairs]
        texts = devices.gather_texts([p.id for p in mine], texts, order)
        mine_beh = devices.gather_rows(mine_beh, order) if beh is None else None
        if texts is None:
            return None, None
    beh = beh if beh is not None else mine_beh
    result, per_item = compare(texts, beh, m0_beh, task.choices, seed=seed, n_boot=n_boot, orig_beh=orig_beh,
                               orig_labels=orig_labels)
    result["seconds"] = round(time.time() - t0, 1)
    return result, per_item


