"""Task registry: name -> task class."""

from __future__ import annotations

from typing import Any

from ..config import UserError
from .base import Pair, Task
from .aita import AITA
from .hint_mmlu import HintMMLU
from .refusal import Refusal

TASKS: dict[str, type[Task]] = {HintMMLU.name: HintMMLU, AITA.name: AITA, Refusal.name: Refusal}


def get_task(name: str, **options: Any) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)} (flag --task / config key task)")
    try:
        return TASKS[name](**options)
    except TypeError as e:
        raise UserError(f"bad options for task {name!r}: {e} (config key task_options)") from None


__all__ = ["Pair", "Task", "TASKS", "get_task"]
