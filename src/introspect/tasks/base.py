"""Counterfactual task spec: raw rows -> deterministic `Pair`s (x with feature C, x without C).

A task is declarative data (choices, feature name, prompt pieces) plus one Python method, `pairs`, that reads its
data. Nothing outside `tasks/` knows task-specific text: behaviour sampling, labels and scoring only use the
fields below.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Pair:
    id: str
    messages: Messages  # x: the prompt with feature C
    messages_without: Messages  # x∖C: the same prompt without C
    feature: str  # the text of C
    choices: tuple[str, ...]  # answer labels, e.g. ("A", "B", "C", "D")
    gold: str | None = None  # ground-truth answer, if the data has one
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


HOLDOUT_SPLITS = ("train", "test")


def in_holdout_split(key: str, split: str) -> bool:
    """For data without its own train/test split: a fixed 80/20 partition by a hash of the row's id.

    `split` "train" keeps rows whose sha256(key) mod 5 is 1-4, "test" those where it is 0; anything else keeps all.
    The partition depends on the id only, never on n or the seed, so train and test pairs never share a row.
    """
    if split not in HOLDOUT_SPLITS:
        return True
    return (int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 == 0) == (split == "test")


class Task(ABC):
    """One counterfactual task. Subclasses set the class fields and implement `pairs`."""

    name: ClassVar[str]
    feature_name: ClassVar[str]  # names C in the explanation question: "hint", "stated opinion", ...
    tag: ClassVar[str] = "Answer"  # explanation targets read <<<{tag}: X>>>
    choices: tuple[str, ...]
    assistant_prefix: str  # text the assistant turn starts with; the answer is the next token
    continuations: tuple[str, ...]  # what is scored after the prefix, one per choice (each must be one token)

    @abstractmethod
    def pairs(self, data_root: Path, split: str, n: int, seed: int) -> list[Pair]:
        """Deterministic pairs for (split, n, seed)."""

    def init_options(self) -> dict[str, Any]:
        """The constructor arguments: `get_task(name, **init_options())` rebuilds this task."""
        return {}

    def options(self) -> dict[str, Any]:
        """Everything (besides the data) that shapes the prompts; part of the spec hash."""
        return self.init_options()

    def explanation_question(self) -> str:
        return f"If the {self.feature_name} were removed how would the assistant answer change?"

    def explanation_messages(self, pair: Pair) -> Messages:
        """The explanation prompt: the x conversation with the question appended to the last user turn."""
        msgs = [dict(m) for m in pair.messages]
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[last_user]["content"] = f"{msgs[last_user]['content']}\n\n{self.explanation_question()}"
        return msgs

    def spec(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "feature_name": self.feature_name,
            "tag": self.tag,
            "choices": list(self.choices),
            "assistant_prefix": self.assistant_prefix,
            "continuations": list(self.continuations),
            **self.options(),
        }
