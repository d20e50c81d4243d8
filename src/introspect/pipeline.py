"""`introspect run CONFIG`: sample -> label -> train -> evaluate -> report from one YAML, skipping current stages.

Run directory layout (every stage can also be run alone with its own subcommand):
  RUN/run_config.json           the resolved config
  RUN/train/behavior.parquet    B(M0) on the training pairs          (introspect sample)
  RUN/train/labels.parquet      E(label model) on the training pairs (introspect label)
  RUN/train/checkpoints/step_*  LoRA adapters or full weights + sidecar meta.json (introspect train)
  RUN/eval/m0_behavior.parquet  B(M0) on the held-out eval pairs: the fixed labels E(M0) ("Orig")
  RUN/eval/behavior_{label_model}.parquet  with label_model set: its behaviour there, whose labels are then "Orig"
  RUN/eval/step_*/result.json   Self/Orig per checkpoint, cached by (checkpoint hash, eval-set hash)
  RUN/eval/results.json         everything evaluate produced      (introspect evaluate)
  RUN/report.html, RUN/summary.md, RUN/figures/*.png             (introspect report)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import baselines, behavior, labels, metrics
from .config import UserError, atomic_path, data_root, read_yaml, seed_everything, stable_hash
from .evaluate import (cached_result, checkpoint_hash, eval_set_hash, evaluate_one, label_frame,
                       load_checkpoint_model, save_result)
from .models import load_model
from .report import write_report
from .tasks import get_task
from .train.config import TrainConfig, _build, to_dict, validate
from .train.trainer import last_checkpoint, pairs_from_table, train


@dataclass
class EvalConfig:
    split: str = "test"  # held-out split (MMLU test subjects for Hint-MMLU: never used in training)
    n: int = 200  # eval pairs
    checkpoints: list[int] | None = None  # steps to evaluate; null = every checkpoint (M0 = step 0 always)
    n_boot: int = 1000  # bootstrap resamples for CIs
    batch_size: int = 16  # explanation generation batch
    max_new_tokens: int = 40
    baselines: bool = True  # majority, copy-Orig, nearest neighbour, zero-shot, few-shot (k=4)


@dataclass
class RunConfig:
    run_dir: str  # where every stage writes
    model: str = "smollm2-135m-instruct"  # M0, the model trained and evaluated
    task: str = "hint-mmlu"
    task_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    data_root: str | None = None  # default: $INTROSPECT_DATA or ../shared/data
    train_split: str = "val+dev"
    train_n: int = 500
    label_model: str | None = None  # take labels from this model's behaviour (cross-family); null = M0's own
    label_noise: float = 0.0  # fraction of labels corrupted (labels.add_noise)
    precision: str = "bf16"  # behaviour sampling precision
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys; paths, model and seed are filled in
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def path(self, *parts: str) -> Path:
        return Path(self.run_dir).joinpath(*parts)

    def train_config(self) -> TrainConfig:
        fixed = {"behavior": str(self.path("train", "behavior.parquet")), "labels": str(self.path("train", "labels.parquet")),
                 "out_dir": str(self.path("train")), "model": self.model, "seed": self.seed}
        clash = sorted(set(fixed) & set(self.train))
        if clash:
            raise UserError(f"config key train.{clash[0]} is set by the run (remove it from the train section)")
        return validate(_build(TrainConfig, {**self.train, **fixed}, "train"), "train")


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    data = read_yaml(path, "introspect run CONFIG")
    data.update(overrides or {})
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}")
    if "run_dir" not in data:
        raise UserError(f"{path}: missing required key run_dir")
    ev = data.pop("evaluate", {}) or {}
    ev_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    if set(ev) - ev_fields:
        raise UserError(f"{path}: unknown key(s) evaluate.{', evaluate.'.join(sorted(set(ev) - ev_fields))}")
    cfg = RunConfig(**data, evaluate=EvalConfig(**ev))
    cfg.train_config()  # validate the train section now, not after sampling
    return cfg


def _current(path: Path, **expect: Any) -> bool:
    """Does the table at `path` exist with provenance matching `expect`?"""
    if not path.is_file():
        return False
    _, meta = behavior.read_table(path)
    return all(meta.get(k) == v for k, v in expect.items())


def stage_sample(cfg: RunConfig, model_name: str, split: str, n: int, out: Path, loaded: Any = None) -> Path:
    task = get_task(cfg.task, **cfg.task_options)
    pairs = task.pairs(data_root(cfg.data_root), split, n, cfg.seed)
    pairs_hash = stable_hash([p.to_dict() for p in pairs])
    if _current(out, model_id=model_name, pairs_hash=pairs_hash, task_spec_hash=stable_hash(task.spec()), precision=cfg.precision):
        print(f"[run] {out} is current: skip sampling")
        return out
    loaded = loaded or load_model(model_name, seed=cfg.seed)
    print(f"[run] sampling B({model_name}) on {n} {task.name} pairs ({split}) -> {out}")
    df, stats = behavior.sample_behavior(loaded.model, loaded.tokenizer, task, pairs, precision=cfg.precision)
    meta = behavior.table_meta(model_id=model_name, weights_hash=loaded.weights_hash, task=task, pairs=pairs,
                               seed=cfg.seed, split=split, precision=cfg.precision)
    behavior.write_table(out, df, meta)
    print(f"[run] {stats.line()}")
    print(behavior.format_summary(behavior.summarize(df, task.choices), task.feature_name))
    return out


def stage_label(cfg: RunConfig, source: Path, out: Path) -> Path:
    df, meta = behavior.read_table(source)
    key = {"labels_from_hash": stable_hash(meta), "label_noise": cfg.label_noise, "noise_seed": cfg.seed}
    if _current(out, **key):
        print(f"[run] {out} is current: skip labelling")
        return out
    task = behavior.task_of(meta)
    lab = labels.make_labels(df, task, meta)
    if cfg.label_noise:
        lab = labels.add_noise(lab, cfg.label_noise, cfg.seed, task.choices, task.tag)
    behavior.write_table(out, lab, {**meta, **key})
    print(f"[run] wrote {len(lab)} labels from B({meta['model_id']}) ({lab['changed'].mean():.0%} changed, "
          f"{int(lab['noisy'].sum())} noisy) -> {out}")
    return out


def stage_train(cfg: RunConfig) -> None:
    tc = cfg.train_config()
    ck = last_checkpoint(cfg.path("train", "checkpoints"))
    if ck is not None:
        old = json.loads((ck / "meta.json").read_text())["config"]
        if old != to_dict(tc):
            diff = sorted(k for k in to_dict(tc) if old.get(k) != to_dict(tc)[k])
            raise UserError(f"{ck} was trained with a different config (keys {', '.join(diff)}): use a new run_dir "
                            f"or delete {cfg.path('train')}")
        if ck.name == f"step_{tc.steps:06d}":
            print(f"[run] {ck} is the last step: skip training")
            return
    train(tc, resume=True)


def checkpoints_to_eval(cfg: RunConfig) -> list[tuple[int, Path | None]]:
    ckdir = cfg.path("train", "checkpoints")
    found = sorted((int(p.name.split("_")[1]), p) for p in ckdir.glob("step_*") if (p / "meta.json").is_file())
    wanted = cfg.evaluate.checkpoints
    chosen: list[tuple[int, Path | None]] = [(0, None)]
    chosen += [(s, p) for s, p in found if wanted is None or s in wanted]
    if wanted:
        missing = sorted(set(wanted) - {s for s, _ in chosen})
        if missing:
            raise UserError(f"config key evaluate.checkpoints names step(s) {missing} with no complete checkpoint in {ckdir}")
    return chosen


def stage_evaluate(cfg: RunConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    ev = cfg.evaluate
    base = load_model(cfg.model, seed=cfg.seed)
    m0_path = stage_sample(cfg, cfg.model, ev.split, ev.n, cfg.path("eval", "m0_behavior.parquet"), loaded=base)
    m0_beh, m0_meta = behavior.read_table(m0_path)
    task = behavior.task_of(m0_meta)
    pairs = pairs_from_table(m0_beh, task)
    orig_beh = None  # the behaviour the fixed labels come from: M0's own, or the label model's (cross-family)
    if cfg.label_model:
        orig_path = stage_sample(cfg, cfg.label_model, ev.split, ev.n, cfg.path("eval", f"behavior_{cfg.label_model}.parquet"))
        orig_beh = behavior.read_table(orig_path)[0].set_index("pair_id").loc[m0_beh["pair_id"]].reset_index()
    e_orig = label_frame(m0_beh if orig_beh is None else orig_beh)  # "Orig"
    set_hash = eval_set_hash(pairs, e_orig)
    finetune = cfg.train_config().finetune
    results: dict[str, Any] = {"name": Path(cfg.run_dir).name, "eval_split": ev.split, "eval_set_hash": set_hash,
                               "checkpoints": {}}
    zero_shot_texts = None
    for step, path in checkpoints_to_eval(cfg):
        out = cfg.path("eval", f"step_{step:06d}", "result.json")
        key = {"checkpoint": checkpoint_hash(path, base.weights_hash), "eval_set": set_hash, "n_boot": str(ev.n_boot)}
        res = cached_result(out, key)
        if res is None:
            print(f"[evaluate] step {step}: {path or 'M0'}")
            model = load_checkpoint_model(base, path, finetune) if path else base.model
            res, items = evaluate_one(model, base.tokenizer, task, pairs, m0_beh, seed=cfg.seed, n_boot=ev.n_boot,
                                      batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                                      beh=None if path else m0_beh,  # M0's behaviour on these pairs is known
                                      orig_beh=orig_beh)
            res.update(step=step, checkpoint=str(path) if path else None, key=key)
            save_result(out, res, items)
            if path and finetune == "lora":
                base.model = model.unload()
        else:
            print(f"[evaluate] step {step}: cached ({out})")
        results["checkpoints"][str(step)] = res
        if step == 0:
            items_m0, _ = behavior.read_table(out.with_name("items.parquet"))
            zero_shot_texts = items_m0["text"].tolist()
        s, o, d = res["self"]["exact_match"], res["orig"]["exact_match"], res["self_minus_orig"]["exact_match"]
        print(f"[evaluate] step {step}: Self EM {s['value']:.3f}  Orig EM {o['value']:.3f}  Self−Orig {d['value']:+.3f} "
              f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]  label differs on {res['n_label_differs']}  drift {res['drift']:.2f}")
    if ev.baselines:
        results["baselines"] = stage_baselines(cfg, base, task, pairs, e_orig, zero_shot_texts, results, set_hash)
    with atomic_path(cfg.path("eval", "results.json")) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    return results


def stage_baselines(cfg: RunConfig, base: Any, task: Any, pairs: list, e_orig: Any, zero_shot: list[str] | None,
                    results: dict[str, Any], set_hash: str) -> dict[str, Any]:
    out = cfg.path("eval", "baselines.json")
    last = max(results["checkpoints"].values(), key=lambda r: r["step"])
    last_items, _ = behavior.read_table(cfg.path("eval", f"step_{last['step']:06d}", "items.parquet"))
    key = {"eval_set": set_hash, "train_labels": stable_hash(behavior.read_table(cfg.path("train", "labels.parquet"))[1]),
           "last": last["key"]["checkpoint"]}
    cached = cached_result(out, key)
    if cached is not None:
        return cached["baselines"]
    train_beh, _ = behavior.read_table(cfg.path("train", "behavior.parquet"))
    train_lab, _ = behavior.read_table(cfg.path("train", "labels.parquet"))
    texts = baselines.all_baselines(base.model, base.tokenizer, task, pairs, e_orig, train_beh, train_lab, zero_shot,
                                    seed=cfg.seed, max_new_tokens=cfg.evaluate.max_new_tokens)
    scored = {}
    for name, t in texts.items():
        orig = metrics.items(t, e_orig["changed"], e_orig["letter"], task.choices)
        self_last = metrics.items(t, last_items["self_changed"], last_items["self_letter"], task.choices)
        scored[name] = {"orig": metrics.score(orig, seed=cfg.seed, n_boot=cfg.evaluate.n_boot),
                        "self_last": metrics.score(self_last, seed=cfg.seed, n_boot=cfg.evaluate.n_boot)}
        print(f"[evaluate] baseline {name:<10} EM vs E(M0) {scored[name]['orig']['exact_match']['value']:.3f}  "
              f"parse {scored[name]['orig']['parse_rate']['value']:.2f}")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"key": key, "baselines": scored, "texts": texts}, indent=2))
    return scored


def run(cfg: RunConfig) -> Path:
    t0 = time.time()
    seed_everything(cfg.seed)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(cfg.path("run_config.json")) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    beh = stage_sample(cfg, cfg.model, cfg.train_split, cfg.train_n, cfg.path("train", "behavior.parquet"))
    source = beh
    if cfg.label_model:
        source = stage_sample(cfg, cfg.label_model, cfg.train_split, cfg.train_n, cfg.path("train", f"behavior_{cfg.label_model}.parquet"))
    stage_label(cfg, source, cfg.path("train", "labels.parquet"))
    stage_train(cfg)
    res = stage_evaluate(cfg)
    report = write_report(Path(cfg.run_dir))
    last = max(res["checkpoints"].values(), key=lambda r: r["step"])
    d = last["self_minus_orig"]["exact_match"]
    print(f"\n[run] done in {time.time() - t0:.0f}s. Report: {report.resolve()}")
    print(f"[run] step {last['step']}: Self EM {last['self']['exact_match']['value']:.3f}, Orig EM "
          f"{last['orig']['exact_match']['value']:.3f}, Self−Orig {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
          f"(label differs on {last['n_label_differs']} of {last['n']} items), drift {last['drift']:.2f}")
    return report


def config_of_run(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "run_config.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: RUN_DIR must come from `introspect run CONFIG`")
    data = json.loads(path.read_text())
    ev = data.pop("evaluate")
    return RunConfig(**data, evaluate=EvalConfig(**ev))
