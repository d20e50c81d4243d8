"""`introspect run CONFIG`: sample -> label -> train -> evaluate -> report from one YAML, re-running exactly the
stages whose inputs changed (`provenance.is_current`), in this order:

  RUN/run_config.json           the resolved config
  RUN/train/behavior.parquet    B(M0) on the training pairs          stage_sample   (introspect sample)
  RUN/train/labels.parquet      E(label model) on the training pairs stage_label    (introspect label)
  RUN/train/checkpoints/step_*  LoRA adapters or full weights        stage_train    (introspect train)
  RUN/eval/...                  Self/Orig per checkpoint, baselines  evaluate.stage_evaluate (introspect evaluate)
  RUN/report.html, summary.md, figures/*.png                         report.write_report (introspect report)

The CLI's single-stage commands call these same functions. A run directory is locked while a process works in it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from . import behavior, devices, labels, provenance, selection
from .checkpoints import STATE, clean_tmp, complete, meta as checkpoint_meta
from .config import UserError, atomic_path, data_root, seed_everything
from .locking import locked
from .models import check_lora_targets, fingerprint, linear_module_names, load_model
from .run_config import RunConfig
from .tables import read_table, table_meta, task_of, write_table
from .tasks import get_task
from .typed import to_dict


def sample_inputs(model_name: str, task: Any, pairs: list, *, seed: int, split: str, n: int, precision: str,
                  verify_margin: float, select: Any = None, device: str = "cpu") -> dict[str, str]:
    where = {"device": device} if device != "cpu" else {}  # CPU tables keep the inputs they had before devices
    return provenance.inputs(model=fingerprint(model_name, seed=seed), task_spec=task.spec(),
                             pairs=[p.to_dict() for p in pairs], seed=seed, split=split, n=n, precision=precision,
                             verify_margin=verify_margin, selection=to_dict(select) if select else None, **where)


def stage_sample(*, model_name: str, task_name: str, task_options: dict[str, Any], root: Path, split: str, n: int,
                 seed: int, precision: str, verify_margin: float, out: Path, select: Any = None, pool: int = 0,
                 loaded: Any = None, device: str = "auto",
                 batch_size: int = 4, share_prefix: bool = True, stage: str = "sample") -> Path:
    """B(model) on `n` pairs of a split -> a BehaviorTable at `out` (skipped when current). With a selection
    (a margin, balance, or `pool` > n), `pool` pairs are sampled and `n` kept by margin and class balance."""
    task = get_task(task_name, **task_options)
    pool = max(pool, n)
    pairs = task.pairs(root, split, pool, seed)
    device = devices.resolve(device) if loaded is None else str(devices.of(loaded.model))
    wanted = sample_inputs(model_name, task, pairs, seed=seed, split=split, n=n, precision=precision, device=device,
                           verify_margin=verify_margin, select=select if select and (select.min_margin or select.balance or pool > n) else None)
    if provenance.is_current(out, wanted, stage):
        return out
    writable(out)
    loaded = loaded or load_model(model_name, seed=seed, device=device)
    shard = devices.shard(device)  # under `accelerate launch`: this process's (rank, processes), else None
    mine = pairs[shard[0]::shard[1]] if shard else pairs
    print(f"[{stage}] B({model_name}) on {len(mine)} {task.name} pairs ({split}, {precision}, {device}"
          + (f", process {shard[0] + 1} of {shard[1]}" if shard else "") + f") -> {out}")
    df, stats = behavior.sample_behavior(loaded.model, loaded.tokenizer, task, mine, precision=precision,
                                         verify_margin=verify_margin, batch_size=batch_size, share_prefix=share_prefix)
    print(f"[{stage}] {stats.line()}")
    if shard:
        df = devices.gather_rows(df, [p.id for p in pairs])
        if df is None:  # not the main process: the main one writes
            devices.barrier()
            return out
    if pool > n or (select and (select.min_margin > 0 or select.balance)):
        pool_df = df
        df = selection.select(df, n=n, min_margin=select.min_margin if select else 0.0,
                              balance=bool(select and select.balance), seed=seed, where=stage)
        print(f"[{stage}] " + selection.kept_line(pool_df, df, min_margin=select.min_margin if select else 0.0,
                                                  balance=bool(select and select.balance)))
        kept = set(df["pair_id"])
        pairs = [p for p in pairs if p.id in kept]
    meta = table_meta(model_id=model_name, weights_hash=loaded.weights_hash, task=task, pairs=pairs, seed=seed,
                      split=split, precision=precision, verify_margin=verify_margin, inputs=wanted,
                      sources=task.sources(root))
    write_table(out, df, meta)
    print(f"[{stage}] wrote {len(df)} pairs -> {out}")
    print(behavior.format_summary(behavior.summarize(df, task.choices), task.feature_name))
    if shard:
        devices.barrier()
    return out


def writable(out: Path) -> None:
    """Fail before any work when `out` cannot be written (not after an hour of sampling)."""
    if out.is_dir():
        raise UserError(f"{out} is a directory: name a file to write (flag --out / the config key naming it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a unique name: the processes of one `accelerate launch` probe the same folder at once
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe.tmp", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror}): choose another output path (flag --out / config key run_dir)") from None


def stage_label(*, source: Path, out: Path, noise: float, noise_seed: int) -> Path:
    """E(M) from a BehaviorTable, optionally with label noise -> labels table (skipped when current)."""
    wanted = provenance.inputs(source=provenance.stored_inputs(source) or read_table(source)[1], noise=noise,
                               noise_seed=noise_seed, format=[labels.UNCHANGED, labels.CHANGED])
    if provenance.is_current(out, wanted, "label"):
        return out
    df, meta = read_table(source)
    task = task_of(meta)
    lab = labels.make_labels(df, task)
    if noise:
        lab = labels.add_noise(lab, noise, noise_seed, task.choices, task.tag)
    write_table(out, lab, {**meta, "inputs": wanted, "labels_from": str(source), "label_noise": noise,
                           "noise_seed": noise_seed})
    print(f"[label] {len(lab)} labels from B({meta['model_id']}) ({lab['changed'].mean():.1%} changed, "
          f"{int(lab['noisy'].sum())} noisy) -> {out}")
    return out


def stage_train(cfg: RunConfig) -> None:
    """Train, resume or skip. Checkpoints made from other inputs are moved to RUN/kept/train/ (saying which input
    changed), and those of this setting are taken back from there when a setting is switched back."""
    from .train.trainer import train, train_inputs

    tc = cfg.train_config()
    ckdir = cfg.path("train", "checkpoints")
    outputs = [ckdir, cfg.path("train", "metrics.jsonl"), cfg.path("train", "monitor_stop.json")]
    wanted = train_inputs(tc)
    done = complete(ckdir)
    if done:
        made_from = checkpoint_meta(done[-1][1]).get("inputs")
        diff = provenance.changed_keys(made_from, wanted)
        if diff:
            kept = provenance.keep(outputs, made_from, cfg.path("kept", "train"))
            print(f"[train] checkpoints in {ckdir} are stale (changed: {', '.join(diff)}): moved to {kept}")
    if not complete(ckdir) and provenance.restore(outputs, wanted, cfg.path("kept", "train")):
        print(f"[train] took back the checkpoints of this setting from {cfg.path('kept', 'train')}")
    stopped = outputs[2]
    if stopped.is_file() and json.loads(stopped.read_text()).get("inputs") == wanted:
        print(f"[train] the coupling monitor stopped this run at step {json.loads(stopped.read_text())['step']}: skip")
        return
    done = complete(ckdir)
    if done and done[-1][0] == tc.steps:
        print(f"[train] {done[-1][1]} is the last step and current: skip")
        return
    if done and not (done[-1][1] / STATE).is_file():  # its newer successor was truncated; older ones keep no state
        print(f"[train] {done[-1][1]} keeps no optimiser state (only the newest checkpoint does, and a newer one is "
              f"missing or truncated): training from scratch (same seed, same numbers)")
        for _, path in done:
            shutil.rmtree(path)
        done = []
    if not done:
        print("[train] training from scratch")
    train(tc, resume=bool(done))


def run(cfg: RunConfig) -> Path:
    """Every stage in order, in a locked run directory; prints the headline with its validity verdict."""
    from .evaluate_run import stage_evaluate
    from .report import headline, write_report

    from .progress import RunProgress, run_units

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
            tmp.write_text(json.dumps(to_dict(cfg), indent=2))
        common = dict(task_name=cfg.task, task_options=cfg.task_options, root=root, split=cfg.train_split,
                      n=cfg.train_n, seed=cfg.seed, precision=cfg.precision, verify_margin=cfg.verify_margin,
                      select=cfg.selection, pool=cfg.selection.pool, device=cfg.device)
        progress.start("sample")
        source = stage_sample(model_name=cfg.model, out=cfg.path("train", "behavior.parquet"), **common)
        progress.done("sample", prompts=2 * max(cfg.train_n, cfg.selection.pool) if written_since(source, t0) else 0)
        if cfg.monitor_sampled():
            n_mon = cfg.train_config().monitor.n
            have = get_task(cfg.task, **cfg.task_options).available(root, cfg.monitor_split)
            stage_sample(model_name=cfg.model, out=cfg.path("train", "monitor_behavior.parquet"),
                         **{**common, "split": cfg.monitor_split, "n": n_mon, "pool": min(4 * n_mon, have)},
                         stage="sample monitor pairs")
        if cfg.label_model:
            progress.start("sample label model")
            source = stage_sample(model_name=cfg.label_model, out=cfg.path("train", f"behavior_{cfg.label_model}.parquet"),
                                  **{**common, "select": None, "pool": 0}, stage="sample label model")
            progress.done("sample label model", prompts=2 * cfg.train_n if written_since(source, t0) else 0)
        progress.start("label")
        stage_label(source=source, out=cfg.path("train", "labels.parquet"), noise=cfg.label_noise, noise_seed=cfg.seed)
        progress.done("label")
        progress.start("train")
        stage_train(cfg)
        progress.done("train")
        progress.start("evaluate")
        res = stage_evaluate(cfg)
        progress.done("evaluate")
        progress.start("report")
        report = write_report(Path(cfg.run_dir))
    print(f"\n[run] done in {_clock(time.time() - t0)} (peak memory {peak_rss_gb():.2f} GB resident). "
          f"Report: {report.resolve()}")
    print(headline(res))
    return report


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
