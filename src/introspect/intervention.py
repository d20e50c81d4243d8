"""`introspect intervene RUN`: the causal intervention test of coupling (docs/claims.md#controls).

After explanation training, move the model's *behaviour* on a random, seeded half of the eval items — no explanation
loss — and see whether its explanations follow there and not on the rest:

  1. from checkpoint T of RUN: B(M_T) on the eval pairs (its choice distributions) and its explanations;
  2. behaviour-only fine-tuning from M_T's weights (`train.init_from`): on the treated half, sycophancy reduction
     (pull the answer on x toward M_T's own answer on x∖C, so the hint stops mattering there; or `--treatment gold`:
     toward the gold answer on both sides, for settings with few changed items); on the control half,
     the KL to M_T's own distributions (hold behaviour); explanation weight 0. The halves are the trainer's
     `concurrent_pairs: split` share (seeded by --seed), so the split is one implementation;
  3. B(M_after) and its explanations; `controls.intervention`: behaviour change and explanation change on treated vs
     control items, and the difference-in-differences with a bootstrap CI. Over seeds: `controls.over_seeds`.

Writes RUN/intervention/step_T_seed_S/: behavior_before.parquet, labels_before.parquet, train/ (checkpoints,
metrics.jsonl), before.parquet and after.parquet (per item, the evaluation's layout), result.json.
The explainer is a seam (`explain=`): tests pass one that reads the model's behaviour and one that ignores it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import behavior, controls, labels
from .checkpoints import applied, complete, weights_hash
from .config import UserError, atomic_path, seed_everything
from .evaluate import compare, explanation_prompts, generate
from .locking import locked
from .models import load_model
from .run_config import RunConfig
from .tables import pairs_from_table, read_table, table_meta, task_of, write_table
from .tasks import Pair, Task
from .train.config import LossWeights, MonitorSpec

Explainer = Callable[[Any, Any, Task, Sequence[Pair]], list[str]]


@dataclasses.dataclass
class InterventionSpec:
    step: int | None = None  # the explainer checkpoint T; None = the run's last
    steps: int = 60  # behaviour-only optimiser steps
    mu: float = 1.0  # the treatment's weight on the treated half
    treatment: str = "sycophancy"  # sycophancy: answer on x pulled to M_T's own answer on x∖C (needs changed items);
    #   gold: cross-entropy toward the task's gold answer on x and x∖C (the refusal_tuning loss; any task with gold)
    lam: float = 1.0  # KL weight (to M_T) on the control half
    lr: float = 2e-4
    seed: int = 0  # the treated/control split and the batch draw
    metric: str = "verdict_match"
    n_boot: int = 2000


def default_explainer(precision: str, batch_size: int, max_new_tokens: int) -> Explainer:
    def explain(model: Any, tok: Any, task: Task, pairs: Sequence[Pair]) -> list[str]:
        return generate(model, tok, explanation_prompts(task, pairs), precision=precision, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, progress=True, desc="generating explanations (intervention)")
    return explain


def _observe(model: Any, tok: Any, task: Task, pairs: list[Pair], m0_beh: Any, cfg: RunConfig, explain: Explainer,
             n_boot: int) -> tuple[Any, Any]:
    """B(model) with choice distributions, and the per-item scoring table of its explanations."""
    beh, _ = behavior.sample_behavior(model, tok, task, pairs, precision=cfg.precision,
                                      verify_margin=cfg.verify_margin, progress=True)
    texts = explain(model, tok, task, pairs)
    _, items = compare(texts, beh, m0_beh, task.choices, seed=0, n_boot=max(1, min(n_boot, 10)))
    return beh, items


def run(cfg: RunConfig, spec: InterventionSpec, explain: Explainer | None = None) -> dict[str, Any]:
    """The intervention test on one seed; returns (and writes) its result."""
    ckpts = complete(cfg.path("train", "checkpoints"))
    if not ckpts:
        raise UserError(f"{cfg.path('train', 'checkpoints')} has no complete checkpoint: train the run first")
    by_step = dict(ckpts)
    step = spec.step if spec.step is not None else ckpts[-1][0]
    if spec.treatment not in ("sycophancy", "gold"):
        raise UserError(f"--treatment {spec.treatment!r}: choose sycophancy or gold")
    if step not in by_step:
        raise UserError(f"--step {step}: no complete checkpoint (have {sorted(by_step)})")
    m0_path = cfg.path("eval", "m0_behavior.parquet")
    if not m0_path.is_file():
        raise UserError(f"{m0_path} does not exist: evaluate the run first (`introspect evaluate {cfg.run_dir}`)")
    out = cfg.path("intervention", f"step_{step:06d}_seed_{spec.seed}")
    with locked(Path(cfg.run_dir)):
        return _run(cfg, spec, step, by_step[step], m0_path, out, explain)


def _run(cfg: RunConfig, spec: InterventionSpec, step: int, ck: Path, m0_path: Path, out: Path,
         explain: Explainer | None) -> dict[str, Any]:
    from .train.trainer import concurrent_split, train

    seed_everything(spec.seed)
    explain = explain or default_explainer(cfg.precision, cfg.evaluate.batch_size, cfg.evaluate.max_new_tokens)
    m0_beh, meta = read_table(m0_path)
    task = task_of(meta)
    pairs = pairs_from_table(m0_beh, task)
    base = load_model(cfg.model, seed=cfg.seed, device=cfg.device)
    tc = cfg.train_config()
    with applied(base, ck, tc.finetune) as model:
        beh_before, before = _observe(model, base.tokenizer, task, pairs, m0_beh, cfg, explain, spec.n_boot)
    write_table(out / "before.parquet", before, {"checkpoint": str(ck)})
    tmeta = table_meta(model_id=cfg.model, weights_hash=weights_hash(ck, base.weights_hash), task=task, pairs=pairs,
                       seed=spec.seed, split=cfg.evaluate.split, precision=cfg.precision,
                       verify_margin=cfg.verify_margin, inputs={"checkpoint": weights_hash(ck, "")})
    write_table(out / "behavior_before.parquet", beh_before, tmeta)
    write_table(out / "labels_before.parquet", labels.make_labels(beh_before, task), tmeta)
    itc = dataclasses.replace(
        tc, behavior=str(out / "behavior_before.parquet"), labels=str(out / "labels_before.parquet"),
        out_dir=str(out / "train"), steps=spec.steps, lr=spec.lr, seed=spec.seed, init_from=str(ck),
        weights=LossWeights(explanation=0.0, behavior_kl=spec.lam,
                            sycophancy_reduction=spec.mu if spec.treatment == "sycophancy" else 0.0,
                            refusal_tuning=spec.mu if spec.treatment == "gold" else 0.0),
        explanation_per_step=0, concurrent_pairs="split", concurrent_share=0.5, probe_every=0,
        monitor=MonitorSpec(), checkpoint_every=spec.steps, warmup_steps=min(tc.warmup_steps, spec.steps // 2),
        balance_explanations=False)
    train(itc, resume=True)
    treated = np.zeros(len(pairs), bool)
    treated[concurrent_split(itc, len(pairs))] = True
    after_ck = out / "train" / "checkpoints" / f"step_{spec.steps:06d}"
    with applied(base, after_ck, tc.finetune) as model:
        _, after = _observe(model, base.tokenizer, task, pairs, m0_beh, cfg, explain, spec.n_boot)
    after["treated"] = treated
    write_table(out / "after.parquet", after, {"checkpoint": str(after_ck)})
    result = {"run": str(cfg.run_dir), "step": step, "spec": dataclasses.asdict(spec),
              **controls.intervention(controls.Step(before), controls.Step(after), treated, metric=spec.metric,
                                      seed=spec.seed, n_boot=spec.n_boot)}
    with atomic_path(out / "result.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def format_result(r: dict[str, Any]) -> str:
    s = controls.signed
    lines = [f"[intervene] {r['run']} step {r['step']}, seed {r['spec']['seed']}: {r['n_treated']} treated, "
             f"{r['n_control']} control items ({r['metric']})"]
    for key, what in (("behaviour_moved", "behaviour label moved"), ("explanation_moved", "explanation changed"),
                      ("toward_new_behaviour", "explanation moved toward the new behaviour")):
        x = r[key]
        lines.append(f"  {what:<44} treated {x['treated']:+.3f}  control {x['control']:+.3f}  difference {s(x)}")
    return "\n".join(lines)
