"""Explanation labels E(M) from a BehaviorTable, the tolerant parser, and label noise.

Targets (DESIGN.md §3), with X = the answer without the feature C:
  unchanged: "The output would remain unchanged from <<<Answer: X>>>."
  changed:   "The most likely output would change to <<<Answer: X>>>."
so the structured label is (changed, letter) with letter = answer without C in both cases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import UserError
from .tables import pairs_from_table
from .tasks import Task

UNCHANGED = "The output would remain unchanged from <<<{tag}: {letter}>>>."
CHANGED = "The most likely output would change to <<<{tag}: {letter}>>>."

_TAG = re.compile(r"<<<\s*([A-Za-z][\w ]*?)\s*:\s*([A-Za-z0-9_\-]+)\s*>>>")
_UNCHANGED = re.compile(r"\b(remains?|stays?|would\s+(?:remain|stay|be)|is)\s+unchanged\b|\bunchanged\b|\bwould\s+not\s+change\b|\bno\s+change\b")
_CHANGED = re.compile(r"\bchanges?\s+to\b|\bwould\s+change\b|\bchanged\s+to\b")


@dataclass(frozen=True)
class Parsed:
    changed: bool
    letter: str


def target_text(changed: bool, letter: str, tag: str = "Answer") -> str:
    return (CHANGED if changed else UNCHANGED).format(tag=tag, letter=letter)


def parse_letter(text: str, choices: Sequence[str]) -> str | None:
    """The choice named in the first <<<Tag: X>>> of `text`, whatever the verdict phrase (None if absent)."""
    m = _TAG.search(" ".join(text.split()))
    return {c.upper(): c for c in choices}.get(m.group(2).upper()) if m else None


def parse_explanation(text: str, choices: Sequence[str]) -> Parsed | None:
    """Map a generated explanation to (changed, letter), or None if it is unparseable.

    Accepts both "change to" phrasings and "remain unchanged", in any case and whitespace, with the answer in
    <<<Tag: X>>>. Text after the first closing >>> is ignored. Ambiguous verdicts (both or neither phrase) and
    letters outside `choices` are unparseable.
    """
    flat = " ".join(text.split())
    m = _TAG.search(flat)
    if m is None:
        return None
    by_upper = {c.upper(): c for c in choices}
    letter = by_upper.get(m.group(2).upper())
    if letter is None:
        return None
    head = flat[: m.start()].lower()
    unchanged, changed = bool(_UNCHANGED.search(head)), bool(_CHANGED.search(head))
    if unchanged == changed:
        return None
    return Parsed(changed=changed, letter=letter)


def label_frame(beh: pd.DataFrame) -> pd.DataFrame:
    """The structured labels E(M) of a BehaviorTable: (changed, letter = answer without C)."""
    return pd.DataFrame({"pair_id": beh["pair_id"], "changed": beh["changed"], "letter": beh["answer_without"]})


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Per item: do two structured label frames (changed, letter) agree? (label–behaviour agreement, item-wise)"""
    return ((a["changed"].to_numpy() == b["changed"].to_numpy())
            & (a["letter"].to_numpy() == b["letter"].to_numpy()))


def drift(beh: pd.DataFrame, m0: pd.DataFrame) -> np.ndarray:
    """Per item: does the behaviour differ from M0's on either side?"""
    return ((beh["answer"].to_numpy() != m0["answer"].to_numpy())
            | (beh["answer_without"].to_numpy() != m0["answer_without"].to_numpy()))


def make_labels(behavior: pd.DataFrame, task: Task) -> pd.DataFrame:
    """One row per pair: explanation prompt (chat messages, JSON), target text, and structured (changed, letter)."""
    rows = []
    for r, pair in zip(behavior.itertuples(index=False), pairs_from_table(behavior, task)):
        rows.append({
            "pair_id": r.pair_id,
            "prompt": json.dumps(task.explanation_messages(pair), ensure_ascii=False),
            "target": target_text(bool(r.changed), r.answer_without, task.tag),
            "changed": bool(r.changed),
            "letter": r.answer_without,
            "answer_with": r.answer,
            "noisy": False,
        })
    return pd.DataFrame(rows)


def add_noise(labels: pd.DataFrame, rate: float, seed: int, choices: Sequence[str], tag: str = "Answer") -> pd.DataFrame:
    """Corrupt exactly round(rate * n) labels, chosen by a seeded permutation.

    A corrupted label gets a letter drawn uniformly from the *other* choices; `changed` is then recomputed as
    (new letter != answer with C), so every noisy label is still a consistent explanation of *some* behaviour,
    just not this model's. Rows are marked `noisy=True`.
    """
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"label noise rate must be in [0, 1], got {rate} (flag --noise / config key label_noise)")
    out = labels.copy()
    rng = np.random.default_rng(seed)
    k = int(round(rate * len(out)))
    for i in rng.permutation(len(out))[:k]:
        old = out.at[i, "letter"]
        new = str(rng.choice([c for c in choices if c != old]))
        changed = new != out.at[i, "answer_with"]
        out.at[i, "letter"], out.at[i, "changed"], out.at[i, "noisy"] = new, changed, True
        out.at[i, "target"] = target_text(changed, new, tag)
    return out
