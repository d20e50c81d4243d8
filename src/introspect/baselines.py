"""Baselines scored like the trained model: explanation texts for the eval pairs that need no training.

  majority       the most common training label, for every item
  copy_orig      E(M0): the fixed label of each eval item (what a model that ignores its own change would say)
  nearest        the label of the most similar training question; similarity = Jaccard overlap of the lower-cased
                 word sets of the user prompts without the feature
  zero_shot      the untrained model M0 asked the explanation question (generated)
  few_shot       M0 with k = 4 solved training examples first (2 changed, 2 unchanged), then the question
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .evaluate import explanation_prompts, generate
from .labels import target_text
from .tasks import Pair, Task


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def majority(train_labels: pd.DataFrame, n: int, tag: str) -> list[str]:
    counts = train_labels.groupby(["changed", "letter"]).size().sort_values(ascending=False, kind="stable")
    changed, letter = counts.index[0]
    return [target_text(bool(changed), letter, tag)] * n


def copy_orig(e_m0: pd.DataFrame, tag: str) -> list[str]:
    return [target_text(bool(c), ltr, tag) for c, ltr in zip(e_m0["changed"], e_m0["letter"])]


def nearest(train_beh: pd.DataFrame, train_labels: pd.DataFrame, pairs: Sequence[Pair], tag: str) -> list[str]:
    train_words = [_words(json.loads(m)[-1]["content"]) for m in train_beh["messages_without"]]
    out = []
    for p in pairs:
        w = _words(p.messages_without[-1]["content"])
        sims = [len(w & t) / max(len(w | t), 1) for t in train_words]
        j = int(np.argmax(sims))
        out.append(target_text(bool(train_labels["changed"].iloc[j]), train_labels["letter"].iloc[j], tag))
    return out


def few_shot_prompts(task: Task, pairs: Sequence[Pair], train_labels: pd.DataFrame, k: int = 4, seed: int = 0) -> list[list[dict[str, str]]]:
    """k solved explanation examples from training (half changed, half unchanged, seeded) before each question."""
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for changed in (True, False):
        idx = np.flatnonzero(train_labels["changed"].to_numpy() == changed)
        picks += list(rng.choice(idx, min(k // 2, len(idx)), replace=False))
    rng.shuffle(picks)
    shots: list[dict[str, str]] = []
    for i in picks:
        msgs = json.loads(train_labels["prompt"].iloc[i])
        shots += [m for m in msgs if m["role"] != "system"] + [{"role": "assistant", "content": train_labels["target"].iloc[i]}]
    prompts = []
    for msgs in explanation_prompts(task, pairs):
        system = [m for m in msgs if m["role"] == "system"]
        prompts.append(system + shots + [m for m in msgs if m["role"] != "system"])
    return prompts


def all_baselines(model: Any, tok: Any, task: Task, pairs: Sequence[Pair], e_m0: pd.DataFrame,
                  train_beh: pd.DataFrame, train_labels: pd.DataFrame, zero_shot_texts: list[str] | None,
                  *, precision: str, seed: int = 0, batch_size: int = 8, max_new_tokens: int = 40) -> dict[str, list[str]]:
    out: dict[str, Any] = {
        "majority": majority(train_labels, len(pairs), task.tag),
        "copy_orig": copy_orig(e_m0, task.tag),
        "nearest": nearest(train_beh, train_labels, pairs, task.tag),
    }
    out["zero_shot"] = zero_shot_texts if zero_shot_texts is not None else generate(
        model, tok, explanation_prompts(task, pairs), precision=precision, batch_size=batch_size,
        max_new_tokens=max_new_tokens, progress=True, desc="generating explanations (baseline zero-shot)")
    out["few_shot"] = generate(model, tok, few_shot_prompts(task, pairs, train_labels, seed=seed), precision=precision,
                               batch_size=batch_size, max_new_tokens=max_new_tokens, progress=True,
                               desc="generating explanations (baseline few-shot k=4)")
    return out
