"""Stage `evaluate`: Self vs Orig for M0 and each checkpoint of a run directory, then the baselines
(`introspect evaluate RUN`, and stage 4 of `introspect run`). One checkpoint's evaluation is evaluate.evaluate_one.

  RUN/eval/m0_behavior.parquet  B(M0) on the held-out eval pairs: the fixed labels E(M0) ("Orig")
  RUN/eval/behavior_{label_model}.parquet  with label_model set: its behaviour there, whose labels are then "Orig"
  RUN/eval/step_*/result.json + items.parquet   per checkpoint (inputs recorded: re-run only when they change)
  RUN/eval/baselines.json       majority, copy-Orig, nearest, zero-shot, few-shot
  RUN/eval/results.json         everything above, with the validity verdict of every checkpoint
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import baselines, devices, joint, metrics, provenance
from ..checkpoints import applied, checkpoint_hash, complete
from ..errors import UserError
from ..files import atomic_path
from ..hashing import stable_hash
from ..runtime import seed_everything
from ..evaluate import evaluate_one
from ..labels import label_frame
from ..merged import merged
from ..models import load_model
from ..run_config import RunConfig
from ..tables import pairs_from_table, read_table, task_of, write_table
from ..validity import verdict
from . import sample


@dataclass
class EvalSet:
    """The held-out pairs every checkpoint is scored on, with the behaviour their fixed labels come from."""

    task: Any
    pairs: list
    m0_beh: pd.DataFrame  # B(M0) on the pairs
    orig_beh: pd.DataFrame | None  # the label model's behaviour (cross-family), else None: Orig = E(M0)
    e_orig: pd.DataFrame  # the fixed labels, "Orig"
    set_hash: str  # pairs + Orig labels: what every checkpoint result records


def checkpoints_to_eval(cfg: RunConfig) -> list[tuple[int, Path | None]]:
    ckdir = cfg.path("train", "checkpoints")
    wanted = cfg.evaluate.checkpoints
    chosen: list[tuple[int, Path | None]] = [(0, None)]
    chosen += [(s, p) for s, p in complete(ckdir) if wanted is None or s in wanted]
    for p in sorted(ckdir.glob("step_*")):
        if (p / "meta.json").is_file() and p not in {q for _, q in chosen}:
            print(f"[evaluate] skipping {p}: a file it records is missing or truncated (re-run training to re-make it)")
    if wanted:
        missing = sorted(set(wanted) - {s for s, _ in chosen})
        if missing:
            raise UserError(f"config key evaluate.checkpoints names step(s) {missing} with no complete checkpoint in {ckdir}")
    return chosen


def eval_set(cfg: RunConfig, base: Any) -> EvalSet:
    """Sample (or find current) B(M0) on the eval pairs, and the label model's behaviour when labels come from it."""
    m0_path = sample.run(sample.from_run(cfg, part="eval"), cfg.path("eval", "m0_behavior.parquet"), loaded=base,
                         stage="evaluate: sample M0")
    m0_beh, m0_meta = read_table(m0_path)
    task = task_of(m0_meta)
    pairs = pairs_from_table(m0_beh, task)
    orig_beh = None
    if cfg.label_model:
        spec = sample.from_run(cfg, part="eval", model=cfg.label_model, selected=False)
        orig_path = sample.run(spec, cfg.path("eval", f"behavior_{cfg.label_model}.parquet"),
                               stage="evaluate: sample label model")
        orig_beh = read_table(orig_path)[0].set_index("pair_id").loc[m0_beh["pair_id"]].reset_index()
    e_orig = label_frame(m0_beh if orig_beh is None else orig_beh)
    set_hash = stable_hash([[p.to_dict() for p in pairs], e_orig.to_dict("list")])
    return EvalSet(task, pairs, m0_beh, orig_beh, e_orig, set_hash)


def run(cfg: RunConfig) -> Path:
    """RUN/eval/results.json: every checkpoint's Self/Orig with its verdict, and the baselines."""
    seed_everything(cfg.seed)
    ev = cfg.evaluate
    base = load_model(cfg.model, seed=cfg.seed, device=cfg.device)
    es = eval_set(cfg, base)
    train_lab, _ = read_table(cfg.path("train", "labels.parquet"))
    majority_texts = baselines.majority(train_lab, len(es.pairs), es.task.tag)
    majority_em = metrics.point(metrics.items(majority_texts, es.e_orig["changed"], es.e_orig["letter"],
                                              es.task.choices))["exact_match"]
    results: dict[str, Any] = {"name": Path(cfg.run_dir).name, "eval_split": ev.split, "eval_set_hash": es.set_hash,
                               "majority_orig_exact_match": majority_em, "checkpoints": {}}
    for step, path in checkpoints_to_eval(cfg):
        res = checkpoint_result(cfg, base, es, step, path)
        if res is None:  # another process of a launch: the main one scores and writes
            continue
        res["verdict"] = vars(verdict(res, majority_em, res["label_changed_rate"]))
        results["checkpoints"][str(step)] = res
        print_line(res, step)
    out = cfg.path("eval", "results.json")
    if devices.secondary():
        devices.barrier()  # the main process writes; wait for it
        return out
    if ev.baselines:
        zero_shot = read_table(cfg.path("eval", "step_000000", "items.parquet"))[0]["text"].tolist()
        results["baselines"] = stage_baselines(cfg, base, es, zero_shot, results)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    if devices.shard(str(devices.of(base.model).type)):
        devices.barrier()
    return out


def checkpoint_result(cfg: RunConfig, base: Any, es: EvalSet, step: int, path: Path | None) -> dict[str, Any] | None:
    """One checkpoint's result: current -> read; a stale one is kept aside (and taken back when its setting
    returns); otherwise evaluated and written. None on a secondary process of a launch."""
    ev = cfg.evaluate
    seed = cfg.seed if ev.seed is None else ev.seed  # eval pairs and bootstrap
    out = cfg.path("eval", f"step_{step:06d}", "result.json")
    merge = ev.merge_adapter and path is not None  # M0 has no adapter: its numbers are the same either way
    one_pass = ev.joint and joint.fits(base.model)
    device = devices.of(base.model)
    where = provenance.added_later("evaluation", {"device": "cpu" if device.type == "cpu" else str(device),
                                                  "merged_adapter": merge, "joint": one_pass},
                                   {"device": "cpu", "merged_adapter": False, "joint": False})
    wanted = provenance.inputs(checkpoint=checkpoint_hash(path, base.weights_hash), eval_set=es.set_hash,
                               precision=cfg.precision, verify_margin=cfg.verify_margin, seed=seed,
                               max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, n_boot=ev.n_boot, **where)
    store = cfg.path("kept", "eval", out.parent.name)  # results of other settings' checkpoints (kept, not lost)
    made_from = provenance.stored_inputs(out)
    diff = provenance.changed_keys(made_from, wanted)
    if diff and made_from is not None:
        kept = provenance.keep([out.parent], made_from, store)
        print(f"[evaluate step {step}] {out} is stale (changed: {', '.join(diff)}): moved to {kept}")
    if diff and provenance.restore([out.parent], wanted, store):
        print(f"[evaluate step {step}] took back this checkpoint's results from {store}")
    if provenance.is_current(out, wanted, f"evaluate step {step}"):
        return json.loads(out.read_text())
    print(f"[evaluate] step {step}: {path or 'M0'}")
    with applied(base, path, cfg.train_config().finetune) as model, merged(model, cfg.precision, on=merge):
        res, items = evaluate_one(model, base.tokenizer, es.task, es.pairs, es.m0_beh, seed=seed, n_boot=ev.n_boot,
                                  precision=cfg.precision, verify_margin=cfg.verify_margin,
                                  batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                                  beh=None if path else es.m0_beh,  # M0's behaviour on these pairs is known
                                  orig_beh=es.orig_beh, label=f"step {step}" if path else "M0", joint=one_pass)
    if res is None:
        return None
    res.update(step=step, checkpoint=str(path) if path else None, inputs=wanted)
    write_table(out.with_name("items.parquet"), items, {"inputs": res["inputs"]})
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(res, indent=2))
    return res


def print_line(res: dict[str, Any], step: int) -> None:
    d = res["self_minus_orig"]["exact_match"]
    print(f"[evaluate] step {step}: Self EM {res['self']['exact_match']['value']:.3f}  Orig EM "
          f"{res['orig']['exact_match']['value']:.3f}  Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, "
          f"{d['ci'][1]:+.3f}]  label differs on {res['n_label_differs']}  agreement {res['agreement']:.2f}")
    if step == 0 and res["self"]["parse_rate"]["value"] < 0.5:
        print(f"[evaluate] step 0 is M0 before any training: it writes the explanation format on "
              f"{res['self']['parse_rate']['value']:.0%} of items, so its scores near 0 are expected, not a failure")


def stage_baselines(cfg: RunConfig, base: Any, es: EvalSet, zero_shot: list[str] | None,
                    results: dict[str, Any]) -> dict[str, Any]:
    out = cfg.path("eval", "baselines.json")
    last = max(results["checkpoints"].values(), key=lambda r: r["step"])
    last_items, _ = read_table(cfg.path("eval", f"step_{last['step']:06d}", "items.parquet"))
    ev = cfg.evaluate
    wanted = provenance.inputs(eval_set=es.set_hash, train_labels=provenance.stored_inputs(cfg.path("train", "labels.parquet")),
                               last=last["inputs"], precision=cfg.precision, max_new_tokens=ev.max_new_tokens,
                               batch_size=ev.batch_size, n_boot=ev.n_boot, seed=cfg.seed)
    if provenance.is_current(out, wanted, "evaluate baselines"):
        return json.loads(out.read_text())["baselines"]
    texts = baseline_texts(cfg, base, es, zero_shot, results)
    scored = {}
    choices = es.task.choices
    for name, t in texts.items():
        orig = metrics.items(t, es.e_orig["changed"], es.e_orig["letter"], choices)
        self_last = metrics.items(t, last_items["self_changed"], last_items["self_letter"], choices)
        scored[name] = {"orig": metrics.score(orig, seed=cfg.seed, n_boot=ev.n_boot),
                        "self_last": metrics.score(self_last, seed=cfg.seed, n_boot=ev.n_boot)}
        parse = scored[name]["orig"]["parse_rate"]["value"]
        print(f"[evaluate] baseline {name:<10} EM vs E(M0) {scored[name]['orig']['exact_match']['value']:.3f}  "
              f"parse {parse:.2f}" + ("  (untrained M0 rarely writes the <<<...>>> format)" if parse < 0.5 else ""))
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"inputs": wanted, "baselines": scored, "texts": texts}, indent=2))
    return scored


def baseline_texts(cfg: RunConfig, base: Any, es: EvalSet, zero_shot: list[str] | None,
                   results: dict[str, Any]) -> dict[str, list[str]]:
    """The baselines' explanation texts, cached in eval/baseline_texts.json on what they depend on (the eval set,
    the training labels, M0's step-0 evaluation, generation settings) -- not on the checkpoints, so a retrained run
    re-scores them without generating them again."""
    out = cfg.path("eval", "baseline_texts.json")
    ev = cfg.evaluate
    wanted = provenance.inputs(eval_set=es.set_hash, train_labels=provenance.stored_inputs(cfg.path("train", "labels.parquet")),
                               m0=results["checkpoints"]["0"]["inputs"], precision=cfg.precision,
                               max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, seed=cfg.seed)
    if provenance.is_current(out, wanted, "evaluate baseline explanations"):
        return json.loads(out.read_text())["texts"]
    train_beh, _ = read_table(cfg.path("train", "behavior.parquet"))
    train_lab, _ = read_table(cfg.path("train", "labels.parquet"))
    texts = baselines.all_baselines(base.model, base.tokenizer, es.task, es.pairs, es.e_orig, train_beh, train_lab,
                                    zero_shot, seed=cfg.seed, precision=cfg.precision, max_new_tokens=ev.max_new_tokens)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"inputs": wanted, "texts": texts}, indent=2))
    return texts
