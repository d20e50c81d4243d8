"""Stage `sample`: B(M) on both sides of every pair -> a BehaviorTable (`introspect sample`, and the first stage of
`introspect run`). With a selection (a margin, class balance, or a pool larger than n), `pool` pairs are sampled and
`n` kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import behavior, devices, provenance, selection
from ..defaults import VERIFY_MARGIN
from ..files import writable
from ..paths import data_root
from ..models import fingerprint, load_model
from ..tables import table_meta, write_table
from ..tasks import get_task
from ..typed import to_dict


@dataclass
class SampleSpec:
    """What to sample. `from_run` builds it from a run config; `introspect sample` from its flags."""

    model: str  # registry name, local dir or hub id
    task: str  # task name (tasks.TASKS)
    root: Path  # the benchmark data folder (paths.data_root resolves it)
    split: str  # data split, e.g. val+dev, test
    n: int  # pairs kept
    seed: int  # pair draw, hint letters, selection
    task_options: dict[str, Any] = field(default_factory=dict)
    precision: str = "bf16"  # bf16 | fp32
    verify_margin: float = VERIFY_MARGIN  # bf16 near-ties closer than this (nats) are re-scored in fp32
    select: Any = None  # a run_config.Selection, or None (keep the first n)
    pool: int = 0  # pairs sampled before selection (0 = n)
    device: str = "auto"
    batch_size: int = 4  # pairs per forward
    share_prefix: bool = True  # x and x∖C in one prefix-tree row


def from_run(cfg: Any, *, part: str = "train", model: str | None = None, selected: bool = True) -> SampleSpec:
    """The SampleSpec of a run's training pairs (`part="train"`), eval pairs ("eval") or monitor pairs ("monitor")."""
    root = data_root(cfg.data_root)
    if part == "train":
        split, n, seed, pool = cfg.train_split, cfg.train_n, cfg.seed, cfg.selection.pool
    elif part == "eval":
        ev = cfg.evaluate
        split, n, seed, pool = ev.split, ev.n, cfg.seed if ev.seed is None else ev.seed, cfg.selection.eval_pool
    elif part == "monitor":
        n = cfg.train_config().monitor.n
        split, seed, pool = cfg.monitor_split, cfg.seed, min(4 * n, get_task(cfg.task, **cfg.task_options).available(root, cfg.monitor_split))
    else:
        raise ValueError(f"part must be train, eval or monitor, got {part!r}")
    return SampleSpec(model=model or cfg.model, task=cfg.task, task_options=cfg.task_options, root=root, split=split,
                      n=n, seed=seed, precision=cfg.precision, verify_margin=cfg.verify_margin,
                      select=cfg.selection if selected else None, pool=pool if selected else 0, device=cfg.device)


def inputs(spec: SampleSpec, task: Any, pairs: list, device: str) -> dict[str, str]:
    """What a BehaviorTable depends on (recorded in its metadata; a change re-samples)."""
    select = spec.select
    chosen = select if select and (select.min_margin or select.balance or spec.pool > spec.n) else None
    where = provenance.added_later("sampling", {"device": device}, {"device": "cpu"})
    return provenance.inputs(model=fingerprint(spec.model, seed=spec.seed), task_spec=task.spec(),
                             pairs=[p.to_dict() for p in pairs], seed=spec.seed, split=spec.split, n=spec.n,
                             precision=spec.precision, verify_margin=spec.verify_margin,
                             selection=to_dict(chosen) if chosen else None, **where)


def run(spec: SampleSpec, out: Path, *, loaded: Any = None, stage: str = "sample") -> Path:
    """B(spec.model) on the spec's pairs -> a BehaviorTable at `out` (skipped when current). `loaded` re-uses a
    model already in memory; `stage` names the lines this prints."""
    task = get_task(spec.task, **spec.task_options)
    pool = max(spec.pool, spec.n)
    pairs = task.pairs(spec.root, spec.split, pool, spec.seed)
    device = devices.resolve(spec.device) if loaded is None else str(devices.of(loaded.model))
    wanted = inputs(spec, task, pairs, device)
    if provenance.is_current(out, wanted, stage):
        return out
    writable(out)
    loaded = loaded or load_model(spec.model, seed=spec.seed, device=device)
    shard = devices.shard(device)  # under `accelerate launch`: this process's (rank, processes), else None
    mine = pairs[shard[0]::shard[1]] if shard else pairs
    print(f"[{stage}] B({spec.model}) on {len(mine)} {task.name} pairs ({spec.split}, {spec.precision}, {device}"
          + (f", process {shard[0] + 1} of {shard[1]}" if shard else "") + f") -> {out}")
    df, stats = behavior.sample_behavior(loaded.model, loaded.tokenizer, task, mine, precision=spec.precision,
                                         verify_margin=spec.verify_margin, batch_size=spec.batch_size,
                                         share_prefix=spec.share_prefix)
    print(f"[{stage}] {stats.line()}")
    if shard:
        df = devices.gather_rows(df, [p.id for p in pairs])
        if df is None:  # not the main process: the main one writes
            devices.barrier()
            return out
    sel = spec.select
    min_margin, balance = (sel.min_margin, bool(sel.balance)) if sel else (0.0, False)
    if pool > spec.n or min_margin > 0 or balance:
        pool_df = df
        df = selection.select(df, n=spec.n, min_margin=min_margin, balance=balance, seed=spec.seed, where=stage)
        print(f"[{stage}] " + selection.kept_line(pool_df, df, min_margin=min_margin, balance=balance))
        kept = set(df["pair_id"])
        pairs = [p for p in pairs if p.id in kept]
    meta = table_meta(model_id=spec.model, weights_hash=loaded.weights_hash, task=task, pairs=pairs, seed=spec.seed,
                      split=spec.split, precision=spec.precision, verify_margin=spec.verify_margin, inputs=wanted,
                      sources=task.sources(spec.root))
    write_table(out, df, meta)
    print(f"[{stage}] wrote {len(df)} pairs -> {out}")
    print(behavior.format_summary(behavior.summarize(df, task.choices), task.feature_name))
    if shard:
        devices.barrier()
    return out
