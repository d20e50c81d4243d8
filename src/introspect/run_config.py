"""The run config (`introspect run CONFIG`, `introspect demo`): one YAML, typed, the field comments are the docs.

Settings that several stages share have one key and one default here: `precision` and `verify_margin` are used by
every behaviour sampling (training pairs, eval pairs, re-sampling of checkpoints), by explanation generation and
by training; `evaluate.max_new_tokens` / `evaluate.batch_size` by every generation.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .defaults import DEFAULT_MODEL, VERIFY_MARGIN
from .errors import UserError
from .files import read_yaml
from .typed import apply_overrides, build, to_dict
from .train.config import TrainConfig, validate


@dataclass
class EvalConfig:
    split: str = "test"  # held-out split (MMLU test subjects for Hint-MMLU: never used in training)
    n: int = 200  # eval pairs
    checkpoints: list[int] | None = None  # steps to evaluate; null = every checkpoint (M0 = step 0 always)
    n_boot: int = 1000  # bootstrap resamples for CIs
    batch_size: int = 16  # explanation generation batch
    max_new_tokens: int = 40  # explanation generation length (greedy, stops at `>>>.`)
    baselines: bool = True  # majority, copy-Orig, nearest neighbour, zero-shot, few-shot (k=4)
    seed: int | None = None  # eval pairs and bootstrap; null = the run's seed (fix it to share one eval set across arms)
    merge_adapter: bool = True  # generate and re-sample with the checkpoint's LoRA delta merged into evaluation weights
    #   (merged.py: faster; rounding differs from the unmerged adapter, measured in docs/benchmarks.md#evaluation);
    #   false = the adapter applied as trained. M0 (step 0) is the same either way.
    joint: bool = True  # explanation prompt, x and x∖C as one prefix-tree row per pair, the explanation decoded from
    #   its KV cache (joint.py: faster; rounding differs, measured in docs/benchmarks.md#evaluation); false = generated
    #   and re-sampled apart. Models with sliding-window layers are evaluated apart either way.


@dataclass
class Selection:
    """Which sampled pairs are kept (`introspect screen` reports what each choice leaves)."""

    min_margin: float = 0.0  # keep pairs whose top-1 minus top-2 choice log-prob is >= this on both sides (nats)
    balance: bool = False  # equal numbers of changed and unchanged pairs (the larger class is subsampled)
    pool: int = 0  # training pairs sampled before selection (0 = train_n)
    eval_pool: int = 0  # eval pairs sampled before selection (0 = evaluate.n)


@dataclass
class RunConfig:
    run_dir: str  # where every stage writes (a relative path is relative to the current directory)
    model: str = DEFAULT_MODEL  # M0, the model trained and evaluated
    task: str = "hint-mmlu"  # hint-mmlu | aita | refusal (`introspect sample --help` lists each task's options)
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's options, e.g. {format: dot, hint: expert}
    seed: int = 0  # one seed for every stage: pair draw, hint letters, selection, training, bootstrap
    data_root: str | None = None  # default: $INTROSPECT_DATA or ../shared/data
    train_split: str = "val+dev"  # the split(s) training pairs come from (`+` joins splits)
    train_n: int = 500  # training pairs kept (after selection)
    label_model: str | None = None  # take labels from this model's behaviour (cross-family); null = M0's own
    label_noise: float = 0.0  # fraction of labels corrupted (labels.add_noise)
    precision: Literal["bf16", "fp32"] = "bf16"  # sampling, re-sampling, generation and training
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N: every stage
    verify_margin: float = VERIFY_MARGIN  # bf16 near-ties closer than this (nats) are re-scored in fp32; 0 = off
    selection: Selection = field(default_factory=Selection)  # applied to the training pairs and the eval pairs
    train: TrainConfig = field(default_factory=TrainConfig)  # the trainer's keys (section train.); the run sets
    #   behavior, labels, out_dir, model, seed, precision, verify_margin and device itself (setting them here is an error)
    monitor_split: str = ""  # with train.monitor.every > 0: the held-out split the monitor's pairs are sampled from
    evaluate: EvalConfig = field(default_factory=EvalConfig)  # held-out evaluation of every checkpoint

    def path(self, *parts: str) -> Path:
        return Path(self.run_dir).joinpath(*parts)

    def train_config(self, where: str = "config") -> TrainConfig:
        """The trainer's config: the train section with the keys the run owns (RUN_SETS) filled in."""
        fixed = {"behavior": str(self.path("train", "behavior.parquet")), "labels": str(self.path("train", "labels.parquet")),
                 "out_dir": str(self.path("train")), "model": self.model, "seed": self.seed, "precision": self.precision,
                 "verify_margin": self.verify_margin, "device": self.device}
        assert set(fixed) == set(RUN_SETS), "RUN_SETS must name exactly the keys filled in here"
        monitor = self.train.monitor
        if self.monitor_sampled():  # sampled by the run from monitor_split
            monitor = dataclasses.replace(monitor, pairs=str(self.path("train", "monitor_behavior.parquet")))
        return validate(dataclasses.replace(self.train, **fixed, monitor=monitor), f"{where}: config key train")

    def monitor_sampled(self) -> bool:
        """Whether the run samples the coupling monitor's pairs itself (monitor on, no monitor.pairs given)."""
        return bool(self.train.monitor.every) and not self.train.monitor.pairs


# train keys the run sets from its own keys and folders: a run config may not set them in its train section
RUN_SETS = ("behavior", "labels", "out_dir", "model", "seed", "precision", "verify_margin", "device")


def _own_train_keys(data: dict[str, Any], where: str, *, stored: bool = False) -> dict[str, Any]:
    """`data` with its train section checked for keys the run sets (an error), or, for a stored run_config.json,
    with them dropped (they were written as their defaults and the run fills them in)."""
    section = data.get("train")
    if not isinstance(section, dict):
        return data
    clash = sorted(set(RUN_SETS) & set(section))
    if clash and not stored:
        raise UserError(f"{where}: config key train.{clash[0]} is set by the run (remove it from the train section)")
    return {**data, "train": {k: v for k, v in section.items() if k not in RUN_SETS}}


def stored(cfg: RunConfig) -> dict[str, Any]:
    """What run_config.json holds: every key, the train section without the keys the run sets."""
    data = to_dict(cfg)
    data["train"] = {k: v for k, v in data["train"].items() if k not in RUN_SETS}
    return data


def validate_run(cfg: RunConfig, where: str) -> RunConfig:
    checks = [
        (cfg.verify_margin >= 0, "config key verify_margin must be >= 0"),
        (cfg.train_n > 0, "config key train_n must be > 0"),
        (cfg.evaluate.n > 0, "config key evaluate.n must be > 0"),
        (0 <= cfg.label_noise <= 1, "config key label_noise must be in [0, 1]"),
        (cfg.evaluate.n_boot > 0 and cfg.evaluate.batch_size > 0 and cfg.evaluate.max_new_tokens > 0,
         "config keys evaluate.n_boot, evaluate.batch_size and evaluate.max_new_tokens must be > 0"),
        (cfg.selection.min_margin >= 0 and cfg.selection.pool >= 0 and cfg.selection.eval_pool >= 0,
         "config keys selection.min_margin, selection.pool and selection.eval_pool must be >= 0"),
        (not (cfg.label_model and (cfg.selection.min_margin or cfg.selection.balance or cfg.selection.pool)),
         "config key selection cannot be combined with label_model yet (the two models would keep different pairs)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")
    if cfg.monitor_sampled() and not cfg.monitor_split:
        raise UserError(f"{where}: config key train.monitor.every > 0 needs monitor_split (a held-out split, e.g. dev, "
                        f"to sample the monitor's pairs from) or train.monitor.pairs")
    cfg.train_config(where)  # the train section is checked now, not after sampling
    return cfg


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A run config from YAML with `--set a.b.c=VALUE` overrides; every key and type checked before any work."""
    data = _own_train_keys(apply_overrides(read_yaml(path, "introspect run CONFIG"), overrides or []), str(path))
    return validate_run(build(RunConfig, data, str(path)), str(path))


def config_of_run(run_dir: str | Path) -> RunConfig:
    """The config a run directory was made with, pointed at `run_dir` itself (so a copied run works in the copy)."""
    path = Path(run_dir) / "run_config.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: RUN_DIR must come from `introspect run CONFIG`")
    data = _own_train_keys(json.loads(path.read_text()), str(path), stored=True)
    data["run_dir"] = str(run_dir)
    return validate_run(build(RunConfig, data, str(path)), str(path))
