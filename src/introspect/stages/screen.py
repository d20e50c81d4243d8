"""Stage `screen`: is a setting testable? fp32 margins, changed rate, class balance and a verdict
(`introspect screen`). The numbers and the figure are screen.py; this stage samples (or reads) the table and writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import screen
from ..errors import UserError
from ..files import atomic_path
from ..tables import read_table
from ..tasks import get_task
from . import sample


@dataclass
class ScreenSpec:
    sample: sample.SampleSpec  # the pairs to screen (sampled in fp32 with no near-tie re-check)
    behavior: Path | None = None  # an existing fp32 BehaviorTable instead of sampling
    min_margin: float = 0.0
    epsilon: float = 0.01  # KL budget: share of pairs whose argmax survives it
    balance: bool = False
    train_split: str = "val+dev"  # where the training pairs would come from (projection)
    eval_split: str = "test"  # where the eval pairs would come from (projection)
    name: str = ""  # the setting's name in the output


def run(spec: ScreenSpec, out: Path) -> Path:
    """OUT/screen.json and OUT/screen.png (and OUT/behavior.parquet when it samples); returns screen.json."""
    s = spec.sample
    task = get_task(s.task, **s.task_options)
    table = Path(spec.behavior) if spec.behavior else sample.run(s, out / "behavior.parquet", stage="screen")
    df, meta = read_table(table)
    if meta.get("precision") != "fp32":
        raise UserError(f"{table} was sampled in {meta.get('precision')}; screening reads fp32 margins (bf16 rounds "
                        f"near-ties): sample it with --precision fp32, or drop --behavior to let screen sample it")
    rep = screen.report(df, min_margin=spec.min_margin, epsilon=spec.epsilon, balance=spec.balance,
                        available_train=task.available(s.root, spec.train_split),
                        available_eval=task.available(s.root, spec.eval_split), setting=spec.name)
    with atomic_path(out / "screen.json") as tmp:
        tmp.write_text(json.dumps(rep, indent=2))
    screen.figure(df, rep, out / "screen.png")
    print(f"[screen] wrote {out / 'screen.json'} and {out / 'screen.png'}")
    print(rep["line"])
    return out / "screen.json"
