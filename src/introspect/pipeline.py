"""`introspect run CONFIG`: the orchestrator. It checks the whole config, then runs the stages (stages/, one module
each) in order in a locked run directory; each stage re-runs only when its inputs changed (`provenance.is_current`):

  RUN/run_config.json           the resolved config
  RUN/train/behavior.parquet    B(M0) on the training pairs          stages.sample   (introspect sample)
  RUN/train/labels.parquet      E(label model) on the training pairs stages.label    (introspect label)
  RUN/train/checkpoints/step_*  LoRA adapters or full weights        stages.train    (introspect train)
  RUN/eval/...                  Self/Orig per checkpoint, baselines  stages.evaluate (introspect evaluate)
  RUN/report.html, summary.md, figures/*.png                         stages.report   (introspect report)

The CLI's single-stage commands call the same stage functions. Stages never import this module.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .checkpoints import clean_tmp
from .errors import UserError
from .files import atomic_path, writable
from .paths import data_root
from .runtime import seed_everything
from .locking import locked
from .models import check_lora_targets, linear_module_names
from .progress import RunProgress, run_units
from .report import headline
from .run_config import RunConfig, stored
from .stages import evaluate, label, report, sample, train
from .tasks import get_task


def run(cfg: RunConfig) -> Path:
    """Every stage in order, in a locked run directory; prints the headline with its validity verdict."""
    t0 = time.time()
    seed_everything(cfg.seed)
    progress = RunProgress(run_units(cfg))
    root = data_root(cfg.data_root)  # everything checked before the first byte goes into the run directory
    tc = cfg.train_config()
    check_sizes(cfg, root)
    lora_targets_match(tc)
    writable(cfg.path("run_config.json"))
    with locked(Path(cfg.run_dir)):
        for p in clean_tmp(Path(cfg.run_dir)):
            print(f"[run] removed {p} (left by a killed write)")
        with atomic_path(cfg.path("run_config.json")) as tmp:
            tmp.write_text(json.dumps(stored(cfg), indent=2))
        progress.start("sample")
        source = sample.run(sample.from_run(cfg), cfg.path("train", "behavior.parquet"))
        progress.done("sample", prompts=2 * max(cfg.train_n, cfg.selection.pool) if written_since(source, t0) else 0)
        if cfg.monitor_sampled():
            sample.run(sample.from_run(cfg, part="monitor"), cfg.path("train", "monitor_behavior.parquet"),
                       stage="sample monitor pairs")
        if cfg.label_model:
            progress.start("sample label model")
            source = sample.run(sample.from_run(cfg, model=cfg.label_model, selected=False),
                                cfg.path("train", f"behavior_{cfg.label_model}.parquet"), stage="sample label model")
            progress.done("sample label model", prompts=2 * cfg.train_n if written_since(source, t0) else 0)
        progress.start("label")
        label.run(label.LabelSpec(source, cfg.label_noise, cfg.seed), cfg.path("train", "labels.parquet"))
        progress.done("label")
        progress.start("train")
        train.run(cfg)
        progress.done("train")
        progress.start("evaluate")
        results = json.loads(evaluate.run(cfg).read_text())
        progress.done("evaluate")
        progress.start("report")
        page = report.run(cfg)
    print(f"\n[run] done in {_clock(time.time() - t0)} (peak memory {peak_rss_gb():.2f} GB resident). "
          f"Report: {page.resolve()}")
    print(headline(results))
    return page


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (the figure README's "Memory" states for the demo)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def written_since(path: Path, t0: float) -> bool:
    """Whether a stage wrote `path` after `t0` (it ran) rather than finding it current."""
    return path.is_file() and path.stat().st_mtime >= t0


def lora_targets_match(tc: Any) -> None:
    """LoRA targets checked against the model's layout (meta device, no weights) before any sampling; the default
    list is skipped (it is the one every shipped model has)."""
    from .train.config import LoraSpec

    if tc.finetune == "lora" and list(tc.lora.target_modules) != LoraSpec().target_modules:
        check_lora_targets(tc.lora.target_modules, linear_module_names(tc.model), tc.model)


def check_sizes(cfg: RunConfig, root: Path) -> None:
    """Pair counts checked before any model work: an oversized train_n or evaluate.n fails in seconds."""
    task = get_task(cfg.task, **cfg.task_options)
    sizes = [(cfg.train_split, max(cfg.train_n, cfg.selection.pool), "train_n"),
             (cfg.evaluate.split, max(cfg.evaluate.n, cfg.selection.eval_pool), "evaluate.n")]
    if cfg.monitor_sampled():
        sizes.append((cfg.monitor_split, cfg.train_config().monitor.n, "train.monitor.n"))
    for split, n, key in sizes:
        have = task.available(root, split)
        if n > have:
            raise UserError(f"config key {key} (or selection.pool) asks for {n} {task.name} pairs but split {split!r} "
                            f"has {have}")
