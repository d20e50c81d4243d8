"""Task registry: name -> task class."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .base import Pair, Task
from .aita import AITA
from .hint_mmlu import HintMMLU
from .refusal import Refusal

TASKS: dict[str, type[Task]] = {HintMMLU.name: HintMMLU, AITA.name: AITA, Refusal.name: Refusal}


def _same_kind(default: Any, value: Any) -> bool:
    """Whether `value` fits an option whose default is `default` (bool, int, float, str; anything else unchecked)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float) if isinstance(default, float) else int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def get_task(name: str, **options: Any) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)} (flag --task / config key task)")
    import inspect

    params = inspect.signature(TASKS[name].__init__).parameters
    for key, value in options.items():
        default = params[key].default if key in params else None
        if not _same_kind(default, value):
            raise UserError(f"task option {key} of {name!r} takes a {type(default).__name__} (default {default!r}), "
                            f"got {value!r} (config key task_options.{key} / --task-option)")
    try:
        return TASKS[name](**options)
    except TypeError as e:
        raise UserError(f"bad options for task {name!r}: {e} (config key task_options)") from None


__all__ = ["Pair", "Task", "TASKS", "get_task"]
