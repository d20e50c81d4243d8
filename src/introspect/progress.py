"""Progress output: the bars every stage shows (`bar`, `say`) and, for `introspect run`, `[stage 3/6 train]` lines
and a whole-run time estimate.

The estimate prices every stage in *sampled-prompt equivalents* (the cost of scoring one prompt when sampling
behaviour) and converts them to seconds with this machine's speed, measured on the first stage that does model work
(the sampling stage) or, when that stage was cached, the default below. The per-unit prices were measured on 2 CPU
cores with SmolLM2-135M (the claims runs, docs/benchmarks.md#run-estimate); they are ratios, so they carry over to
faster machines roughly, not exactly. A stage found current is skipped in seconds, so the estimate is an upper bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

SECONDS_PER_PROMPT = 0.036  # sampling one prompt, 2 cores, SmolLM2, bf16 with the shared prefix (used until measured)
PRICE = {  # cost in sampled-prompt equivalents, per unit
    "train_example": 12.0,  # one explanation example or one behaviour pair in a training step (forward + backward)
    "explanation": 11.0,  # one generated explanation (greedy, up to 40 new tokens, batch 16)
    "resampled_prompt": 2.5,  # one prompt re-scored under a LoRA checkpoint (unmerged adapter, fp32 re-check)
}


class Bar(tqdm):
    """A tqdm bar whose 100% line prints once: tqdm draws the last update and then, on close, the same line again
    with the overall rate (two 100% lines in a log). Here the last update only counts; close draws it."""

    def update(self, n: float | None = 1) -> bool | None:
        if self.total is not None and self.n + (n or 0) >= self.total and not self.disable:
            self.n += n or 0
            return None
        return super().update(n)


def bar(**kwargs: Any) -> Bar:
    """The progress bar of every stage (`desc` and `unit` say what it counts)."""
    return Bar(**kwargs)


def say(message: str) -> None:
    """Print a line without running into an open progress bar (the bar is redrawn under it)."""
    Bar.write(message)


def run_units(cfg: Any) -> dict[str, float]:
    """Each stage of a run config, in sampled-prompt equivalents (if every stage runs)."""
    t, ev = cfg.train_config(), cfg.evaluate
    n_ck = len(ev.checkpoints) if ev.checkpoints else max(1, t.steps // max(1, t.checkpoint_every))
    units = {"sample": 2.0 * max(cfg.train_n, cfg.selection.pool)}
    if cfg.label_model:
        units["sample label model"] = 2.0 * cfg.train_n
    units["label"] = 0.0
    units["train"] = t.steps * (t.explanation_per_step + t.behavior_per_step) * PRICE["train_example"]
    units["evaluate"] = (2.0 * max(ev.n, cfg.selection.eval_pool)  # B(M0) on the eval pool
                         + (n_ck + 1) * ev.n * PRICE["explanation"]  # explanations of M0 and every checkpoint
                         + n_ck * 2 * ev.n * PRICE["resampled_prompt"]  # B(M_t) per checkpoint
                         + (2 * ev.n * PRICE["explanation"] if ev.baselines else 0.0))  # zero- and few-shot baselines
    units["report"] = 0.0
    return units


@dataclass
class RunProgress:
    """Prints `[stage k/N name]` before each stage and, after the first stage that took measurable time, the whole
    run's estimate; `done(name, prompts)` tells it how many prompts a sampling stage scored (its speed)."""

    units: dict[str, float]
    say: Any = print
    seconds_per_unit: float = SECONDS_PER_PROMPT
    _t0: float = field(default_factory=lambda: time.time())
    _started: float = 0.0
    _estimated: bool = False

    def start(self, name: str) -> None:
        k = list(self.units).index(name) + 1
        self.say(f"[stage {k}/{len(self.units)} {name}]")
        self._started = time.time()

    def done(self, name: str, prompts: int = 0) -> None:
        if self._estimated:
            return
        took = time.time() - self._started
        if prompts and took > 1.0:
            self.seconds_per_unit = took / prompts
            how = f"this machine sampled {prompts / took:.1f} prompts/s"
        elif took > 5.0:
            how = f"default speed {1 / SECONDS_PER_PROMPT:.0f} prompts/s"
        else:
            return  # a cached stage: wait for one that does work
        later = list(self.units)[list(self.units).index(name) + 1:]
        left = sum(self.units[s] for s in later) * self.seconds_per_unit
        self.say(f"[run] estimate: ~{_minutes(time.time() - self._t0 + left)} for the whole run, ~{_minutes(left)} "
                 f"left if every later stage runs ({how}; stages priced as in src/introspect/progress.py)")
        self._estimated = True


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
