"""`introspect evaluate RUN`: Self vs Orig for M0 and each checkpoint of a run directory, then the baselines.

  RUN/eval/m0_behavior.parquet  B(M0) on the held-out eval pairs: the fixed labels E(M0) ("Orig")
  RUN/eval/behavior_{label_model}.parquet  with label_model set: its behaviour there, whose labels are then "Orig"
  RUN/eval/step_*/result.json + items.parquet   per checkpoint (inputs recorded: re-run only when they change)
  RUN/eval/baselines.json       majority, copy-Orig, nearest, zero-shot, few-shot
  RUN/eval/results.json         everything above, with the validity verdict of every checkpoint
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import baselines, devices, metrics, provenance
from .checkpoints import applied, complete, weights_hash
from .config import UserError, atomic_path, data_root, seed_everything, stable_hash
from .evaluate import evaluate_one
from .labels import label_frame
from .models import load_model
from .pipeline import stage_sample
from .run_config import RunConfig
from .tables import pairs_from_table, read_table, task_of, write_table
from .validity import verdict


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


def _save(path: Path, result: dict[str, Any], per_item: Any) -> None:
    write_table(path.with_name("items.parquet"), per_item, {"inputs": result["inputs"]})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


def stage_evaluate(cfg: RunConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    ev = cfg.evaluate
    seed = cfg.seed if ev.seed is None else ev.seed  # eval pairs and bootstrap
    root = data_root(cfg.data_root)
    base = load_model(cfg.model, seed=cfg.seed, device=cfg.device)
    common = dict(task_name=cfg.task, task_options=cfg.task_options, root=root, split=ev.split, n=ev.n, seed=seed,
                  precision=cfg.precision, verify_margin=cfg.verify_margin)
    m0_path = stage_sample(model_name=cfg.model, out=cfg.path("eval", "m0_behavior.parquet"), loaded=base,
                           select=cfg.selection, pool=cfg.selection.eval_pool, stage="evaluate: sample M0", **common)
    m0_beh, m0_meta = read_table(m0_path)
    task = task_of(m0_meta)
    pairs = pairs_from_table(m0_beh, task)
    orig_beh = None  # the behaviour the fixed labels come from: M0's own, or the label model's (cross-family)
    if cfg.label_model:
        orig_path = stage_sample(model_name=cfg.label_model, out=cfg.path("eval", f"behavior_{cfg.label_model}.parquet"),
                                 stage="evaluate: sample label model", device=cfg.device, **common)
        orig_beh = read_table(orig_path)[0].set_index("pair_id").loc[m0_beh["pair_id"]].reset_index()
    e_orig = label_frame(m0_beh if orig_beh is None else orig_beh)  # "Orig"
    set_hash = stable_hash([[p.to_dict() for p in pairs], e_orig.to_dict("list")])
    finetune = cfg.train_config().finetune
    train_lab, _ = read_table(cfg.path("train", "labels.parquet"))
    majority_texts = baselines.majority(train_lab, len(pairs), task.tag)
    majority_em = metrics.point(metrics.items(majority_texts, e_orig["changed"], e_orig["letter"], task.choices))["exact_match"]
    results: dict[str, Any] = {"name": Path(cfg.run_dir).name, "eval_split": ev.split, "eval_set_hash": set_hash,
                               "majority_orig_exact_match": majority_em, "checkpoints": {}}
    zero_shot_texts = None
    for step, path in checkpoints_to_eval(cfg):
        out = cfg.path("eval", f"step_{step:06d}", "result.json")
        where = {"device": str(devices.of(base.model))} if devices.of(base.model).type != "cpu" else {}
        wanted = provenance.inputs(checkpoint=weights_hash(path, base.weights_hash), eval_set=set_hash,
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
            res = json.loads(out.read_text())
        else:
            print(f"[evaluate] step {step}: {path or 'M0'}")
            with applied(base, path, finetune) as model:
                res, items = evaluate_one(model, base.tokenizer, task, pairs, m0_beh, seed=seed, n_boot=ev.n_boot,
                                          precision=cfg.precision, verify_margin=cfg.verify_margin,
                                          batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                                          beh=None if path else m0_beh,  # M0's behaviour on these pairs is known
                                          orig_beh=orig_beh, label=f"step {step}" if path else "M0")
            if res is None:  # another process of a launch: the main one scores and writes
                continue
            res.update(step=step, checkpoint=str(path) if path else None, inputs=wanted)
            _save(out, res, items)
        res["verdict"] = vars(verdict(res, majority_em, res["label_changed_rate"]))
        results["checkpoints"][str(step)] = res
        if step == 0:
            zero_shot_texts = read_table(out.with_name("items.parquet"))[0]["text"].tolist()
        d = res["self_minus_orig"]["exact_match"]
        print(f"[evaluate] step {step}: Self EM {res['self']['exact_match']['value']:.3f}  Orig EM "
              f"{res['orig']['exact_match']['value']:.3f}  Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, "
              f"{d['ci'][1]:+.3f}]  label differs on {res['n_label_differs']}  agreement {res['agreement']:.2f}")
        if step == 0 and res["self"]["parse_rate"]["value"] < 0.5:
            print(f"[evaluate] step 0 is M0 before any training: it writes the explanation format on "
                  f"{res['self']['parse_rate']['value']:.0%} of items, so its scores near 0 are expected, not a failure")
    if devices.secondary():
        devices.barrier()  # the main process writes; wait for it
        return results
    if ev.baselines:
        results["baselines"] = stage_baselines(cfg, base, task, pairs, e_orig, zero_shot_texts, results, set_hash)
    with atomic_path(cfg.path("eval", "results.json")) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    if devices.shard(str(devices.of(base.model).type)):
        devices.barrier()
    return results


def stage_baselines(cfg: RunConfig, base: Any, task: Any, pairs: list, e_orig: Any, zero_shot: list[str] | None,
                    results: dict[str, Any], set_hash: str) -> dict[str, Any]:
    out = cfg.path("eval", "baselines.json")
    last = max(results["checkpoints"].values(), key=lambda r: r["step"])
    last_items, _ = read_table(cfg.path("eval", f"step_{last['step']:06d}", "items.parquet"))
    ev = cfg.evaluate
    wanted = provenance.inputs(eval_set=set_hash, train_labels=provenance.stored_inputs(cfg.path("train", "labels.parquet")),
                               last=last["inputs"], precision=cfg.precision, max_new_tokens=ev.max_new_tokens,
                               batch_size=ev.batch_size, n_boot=ev.n_boot, seed=cfg.seed)
    if provenance.is_current(out, wanted, "evaluate baselines"):
        return json.loads(out.read_text())["baselines"]
    texts = baseline_texts(cfg, base, task, pairs, e_orig, zero_shot, results, set_hash)
    scored = {}
    for name, t in texts.items():
        orig = metrics.items(t, e_orig["changed"], e_orig["letter"], task.choices)
        self_last = metrics.items(t, last_items["self_changed"], last_items["self_letter"], task.choices)
        scored[name] = {"orig": metrics.score(orig, seed=cfg.seed, n_boot=ev.n_boot),
                        "self_last": metrics.score(self_last, seed=cfg.seed, n_boot=ev.n_boot)}
        parse = scored[name]["orig"]["parse_rate"]["value"]
        print(f"[evaluate] baseline {name:<10} EM vs E(M0) {scored[name]['orig']['exact_match']['value']:.3f}  "
              f"parse {parse:.2f}" + ("  (untrained M0 rarely writes the <<<...>>> format)" if parse < 0.5 else ""))
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"inputs": wanted, "baselines": scored, "texts": texts}, indent=2))
    return scored


def baseline_texts(cfg: RunConfig, base: Any, task: Any, pairs: list, e_orig: Any, zero_shot: list[str] | None,
                   results: dict[str, Any], set_hash: str) -> dict[str, list[str]]:
    """The baselines' explanation texts, cached in eval/baseline_texts.json on what they depend on (the eval set,
    the training labels, M0's step-0 evaluation, generation settings) -- not on the checkpoints, so a retrained run
    re-scores them without generating them again."""
    out = cfg.path("eval", "baseline_texts.json")
    ev = cfg.evaluate
    wanted = provenance.inputs(eval_set=set_hash, train_labels=provenance.stored_inputs(cfg.path("train", "labels.parquet")),
                               m0=results["checkpoints"]["0"]["inputs"], precision=cfg.precision,
                               max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, seed=cfg.seed)
    if provenance.is_current(out, wanted, "evaluate baseline explanations"):
        return json.loads(out.read_text())["texts"]
    train_beh, _ = read_table(cfg.path("train", "behavior.parquet"))
    train_lab, _ = read_table(cfg.path("train", "labels.parquet"))
    texts = baselines.all_baselines(base.model, base.tokenizer, task, pairs, e_orig, train_beh, train_lab, zero_shot,
                                    seed=cfg.seed, precision=cfg.precision, max_new_tokens=ev.max_new_tokens)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"inputs": wanted, "texts": texts}, indent=2))
    return texts

