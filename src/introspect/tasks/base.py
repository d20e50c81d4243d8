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

from ..errors import UserError
from ..files import read_rows
from ..hashing import file_digest

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


def read_records(path: Path, columns: dict[str, str], option: str, may_be_empty: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a user's CSV or JSONL file as {our name: value} for `columns` = {our name: the file's column};
    a missing file, column or value is a UserError naming the file (and line) and the task option to change.
    Columns in `may_be_empty` may hold an empty value (read as ''): the task drops and counts such rows."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"{path}: user data must be .csv or .jsonl (task option {option})")
    raw = read_rows(path, what=f"task option {option}")
    out = []
    first_line: dict[str, int] = {}
    for line, rec in raw:
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{line}: expected an object with fields {', '.join(columns.values())}")
        row = {}
        for ours, theirs in columns.items():
            value = rec.get(theirs)
            if ours in may_be_empty and theirs in rec and (value is None or str(value).strip() == ""):
                value = ""
            elif value is None or str(value).strip() == "":
                raise UserError(f"{path}:{line}: missing value for column {theirs!r} (task option {option}_columns "
                                f"maps {ours} to a column of your file)")
            row[ours] = str(value).strip()
        if "id" in row:
            if row["id"] in first_line:
                raise UserError(f"{path}:{line}: id {row['id']!r} is used again (first on line {first_line[row['id']]}): "
                                f"ids must be unique (column {columns['id']!r}; task option {option}_columns maps id)")
            first_line[row["id"]] = line
        out.append(row)
    if not out:
        raise UserError(f"{path}: no rows (task option {option})")
    return out


def in_holdout_split(key: str, split: str) -> bool:
    """For data without its own train/test split: a fixed 80/20 partition by a hash of the row's id.

    `split` "train" keeps rows whose sha256(key) mod 5 is 1-4, "test" those where it is 0; anything else keeps all.
    The partition depends on the id only, never on n or the seed, so train and test pairs never share a row.
    """
    if split not in HOLDOUT_SPLITS:
        return True
    return (int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 == 0) == (split == "test")


def option_help(cls: type["Task"]) -> list[str]:
    """One line per task option of `cls` (its constructor's arguments): name, default, doc."""
    import inspect

    out = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        default = "none" if param.default is None else repr(param.default)
        out.append(f"  {name} (default {default}): {cls.option_docs.get(name, 'undocumented')}")
    return out


class Task(ABC):
    """One counterfactual task. Subclasses set the class fields and implement `pairs`."""

    name: ClassVar[str]
    feature_name: ClassVar[str]  # names C in the explanation question: "hint", "stated opinion", ...
    tag: ClassVar[str] = "Answer"  # explanation targets read <<<{tag}: X>>>
    choices: tuple[str, ...]
    assistant_prefix: str  # text the assistant turn starts with; the answer is the next token
    continuations: tuple[str, ...]  # what is scored after the prefix, one per choice (each must be one token)
    option_docs: ClassVar[dict[str, str]] = {}  # constructor argument -> one line (`introspect sample --task T --help`)

    @abstractmethod
    def pairs(self, data_root: Path, split: str, n: int, seed: int) -> list[Pair]:
        """Deterministic pairs for (split, n, seed)."""

    @abstractmethod
    def available(self, data_root: Path, split: str) -> int:
        """How many distinct pairs `pairs` can draw from this split (checked before any model work)."""

    def source_files(self, data_root: Path) -> list[Path]:
        """The data files `pairs` reads (their content hashes go into every table's provenance)."""
        return []

    def sources(self, data_root: Path) -> dict[str, str]:
        """{path: content hash} of the data files read."""
        return {str(Path(p).resolve()): file_digest(p, "sha256") for p in self.source_files(data_root)}

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
