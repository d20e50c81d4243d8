"""Coupling training: explanation SFT on fixed labels + behavioural KL to M0 + optional concurrent objective.

Read top to bottom: `train` is the loop; its seams, in the order they run: `prepare` (resume point, `load_data`,
`build_model` = wrap (LoRA or full) + fast keys, optimiser, schedule, accelerate.prepare, resume, monitor) -> for each
step: `step_rows` (this step's examples from (seed, step)), `optimiser_step` (the weighted losses of `step.step_losses`,
backward, clip, step), then `Loop.row` (metrics, probe), `Loop.monitor`, `Loop.log`, and `Loop.stop` /
`Loop.roll_back` / `Loop.save`. Another trainer (TRL) can reuse `load_data`, `build_model` and `step_losses`.

Data parallel: `accelerate launch --multi_gpu --num_processes 2 -m introspect.cli train --config C` runs two CPU
processes over gloo (accelerate's MULTI_CPU); each takes every other example of the step's draw.
A step's draw depends only on (seed, step), so a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from transformers import get_scheduler

from .. import checkpoints, devices, progress, provenance
from ..behavior import encode_pairs
from ..tokens import choice_token_ids
from ..errors import UserError
from ..runtime import seed_everything
from ..models import check_lora_targets, linear_names, load_model, peft_deprecation_silenced
from ..tables import pairs_from_table, read_table, task_of
from ..tasks import Pair
from . import fast
from .config import MonitorSpec, TrainConfig, to_dict
from .monitor import CouplingMonitor, decide, measure
from .step import encode_explanations, step_losses

KILL_ENV = "INTROSPECT_KILL_AFTER_STEP"  # tests: SIGKILL this process right after the given optimiser step


def draw(seed: int, step: int, n: int, k_expl: int, k_pairs: int,
         strata: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """This step's explanation and behaviour pair indices, a function of (seed, step) only.

    Behaviour pairs start with the explanation pairs (so they can share one forward) and add fresh ones if more
    are asked for. With `strata` (index arrays, e.g. changed / unchanged labels), the explanation examples are drawn
    evenly from each stratum (class-balanced batches).
    """
    rng = np.random.default_rng([seed, step])
    if strata:
        parts = [rng.choice(s, k, replace=k > len(s)) for s, k in
                 zip(strata, np.diff(np.linspace(0, k_expl, len(strata) + 1).round().astype(int))) if k]
        e_idx = rng.permutation(np.concatenate(parts)) if parts else np.zeros(0, dtype=int)
    else:
        e_idx = rng.choice(n, k_expl, replace=k_expl > n)
    extra = rng.choice(n, max(k_pairs - k_expl, 0), replace=k_pairs - k_expl > n)
    return e_idx, np.concatenate([e_idx[:k_pairs], extra]).astype(int)


def concurrent_split(cfg: TrainConfig, n: int) -> np.ndarray | None:
    """With a concurrent objective and `concurrent_pairs: split`: the training pairs set aside for it (a fixed
    seeded share, never read by the KL); None when both objectives read the same rows."""
    if cfg.concurrent_pairs != "split" or not cfg.weights.concurrent():
        return None
    k = round(n * cfg.concurrent_share)
    if not 0 < k < n:
        raise UserError(f"config key concurrent_share={cfg.concurrent_share} leaves {k} of {n} training pairs for the "
                        f"concurrent objective: it needs at least one, and the KL at least one")
    return np.sort(np.random.default_rng([cfg.seed, 1]).permutation(n)[:k])


def train_inputs(cfg: TrainConfig) -> dict[str, str]:
    """What a training run is made from: its config (paths aside) and the inputs of its two tables."""
    later = provenance.ADDED_LATER["training"]
    conf = {k: v for k, v in to_dict(cfg).items() if k not in ("behavior", "labels", "out_dir", "keep_checkpoints", *later)}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in later}
    conf |= provenance.added_later("training", {**{k: getattr(cfg, k) for k in later}, "device": devices.resolve(cfg.device)},
                                   {**defaults, "device": "cpu"})  # where it ran matters to the numbers
    conf["monitor"] = {k: v for k, v in conf["monitor"].items() if k != "pairs"}  # a path: its table's inputs below
    if conf.get("init_from"):  # a path: the starting weights' content hash instead
        conf["init_from"] = checkpoints.checkpoint_hash(Path(cfg.init_from), "")
    tables = {"behavior": cfg.behavior, "labels": cfg.labels, **({"monitor_pairs": cfg.monitor.pairs} if cfg.monitor.every else {})}
    return provenance.inputs(config=conf, **{k: provenance.stored_inputs(Path(p)) or read_table(p)[1] for k, p in tables.items()})


def wrap(model: Any, cfg: TrainConfig) -> Any:
    if cfg.finetune == "full":
        return model
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora.target_modules
    lc = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                    target_modules=targets if isinstance(targets, str) else list(targets), task_type="CAUSAL_LM")
    linear = linear_names(model)
    check_lora_targets(targets, linear, cfg.model)
    with peft_deprecation_silenced():
        try:
            return get_peft_model(model, lc)
        except ValueError as e:  # a regex target (a string) that matches nothing
            raise UserError(f"config key train.lora.target_modules {targets!r}: {e} (Linear modules: "
                            f"{', '.join(linear)})") from None


@dataclasses.dataclass
class TrainData:
    """The training tables, checked, aligned (pair i is label i) and encoded once."""

    task: Any
    beh: Any  # BehaviorTable rows of the labelled pairs: B(M0), p_M0 of the KL
    lab: Any  # the labels table
    beh_meta: dict[str, Any]
    pairs: list[Pair]
    with_c: list  # token ids of x
    without_c: list  # token ids of x∖C
    expl: list  # (prompt + target ids, target start) per explanation example
    p_m0: np.ndarray  # M0's choice distributions on x
    p_m0_without: np.ndarray  # ... and on x∖C
    gold: np.ndarray  # gold choice index per pair (-1: none)
    choice_ids: Any
    strata: list[np.ndarray] | None  # changed / unchanged label rows when explanations are class-balanced
    conc_pool: np.ndarray | None  # rows set aside for the concurrent objective (concurrent_pairs: split)
    in_kl: np.ndarray  # rows the KL reads


def load_data(cfg: TrainConfig, tok: Any, say: Any) -> TrainData:
    """Read the behaviour and labels tables, check they belong together, and encode every sequence once."""
    beh, beh_meta = read_table(cfg.behavior)
    lab, _ = read_table(cfg.labels)
    task = task_of(beh_meta)
    missing = sorted(set(lab["pair_id"]) - set(beh["pair_id"]))
    if missing:
        raise UserError(f"{cfg.labels}: {len(missing)} labelled pair(s) are not in {cfg.behavior} (config keys labels/behavior), e.g. {missing[0]}")
    beh = beh.set_index("pair_id").loc[lab["pair_id"]].reset_index()  # align rows: pair i is label i
    if beh_meta["model_id"] != cfg.model:
        raise UserError(f"config key model is {cfg.model!r} but {cfg.behavior} holds B({beh_meta['model_id']}): "
                        f"the regulariser needs M0's own behaviour")
    pairs = pairs_from_table(beh, task)
    with_c, without_c = encode_pairs(tok, task, pairs)
    changed = lab["changed"].to_numpy()
    strata = [np.flatnonzero(changed), np.flatnonzero(~changed)] if cfg.balance_explanations else None
    if strata and not all(len(s) for s in strata):
        raise UserError(f"config key balance_explanations: {cfg.labels} has no {'changed' if not len(strata[0]) else 'unchanged'} labels")
    conc_pool = concurrent_split(cfg, len(pairs))
    in_kl = np.ones(len(pairs), dtype=bool)
    if conc_pool is not None:
        in_kl[conc_pool] = False
        say(f"[train] concurrent objective on {len(conc_pool)} pairs set aside, the KL on the other {int(in_kl.sum())} "
            f"(concurrent_pairs: split)")
    return TrainData(task=task, beh=beh, lab=lab, beh_meta=beh_meta, pairs=pairs, with_c=with_c, without_c=without_c,
                     expl=encode_explanations(tok, lab, cfg.max_length, cfg.labels),
                     p_m0=np.array(beh["probs"].tolist()), p_m0_without=np.array(beh["probs_without"].tolist()),
                     gold=np.array([task.choices.index(g) if g in task.choices else -1 for g in beh["gold"]]),
                     choice_ids=choice_token_ids(tok, task.continuations), strata=strata, conc_pool=conc_pool,
                     in_kl=in_kl)


def build_model(cfg: TrainConfig, loaded: Any, start_from: Path | None, say: Any) -> Any:
    """M0 made trainable: activation checkpointing, the LoRA wrap (or full weights), init_from, the fast keys."""
    if cfg.activation_checkpointing:
        enable = getattr(loaded.model, "activation_checkpointing_enable", None) or loaded.model.gradient_checkpointing_enable
        enable()
        loaded.model.enable_input_require_grads()  # LoRA: the frozen embeddings must still pass gradients on
    model = wrap(loaded.model, cfg)
    if cfg.init_from and start_from is None:
        checkpoints.load_weights(model, Path(cfg.init_from), cfg.finetune)
        say(f"[train] starting from the weights of {cfg.init_from} (init_from)")
    if cfg.cache_bf16_weights:
        say(f"[train] bf16 copies of {fast.cache_bf16_weights(model)} frozen Linear weights (cache_bf16_weights)")
    if cfg.compile:
        say(f"[train] {fast.compile_layers(model)} decoder layers compiled (compile: true); the first steps compile them")
    model.train()
    return model


def step_rows(cfg: TrainConfig, data: TrainData, step: int, rank: int, world: int) -> tuple[np.ndarray, ...]:
    """This process's explanation, behaviour and concurrent-objective rows of a step: a function of (seed, step)."""
    e_idx, p_idx = draw(cfg.seed, step, len(data.pairs), cfg.explanation_per_step, cfg.behavior_per_step, data.strata)
    c_idx = (np.random.default_rng([cfg.seed, step, 1]).choice(data.conc_pool, cfg.concurrent_per_step)
             if data.conc_pool is not None else np.zeros(0, dtype=int))
    return e_idx[rank::world], p_idx[rank::world], c_idx[rank::world]


def rows_losses(model: Any, cfg: TrainConfig, data: TrainData, rows: tuple[np.ndarray, ...],
                pad_id: int) -> dict[str, torch.Tensor]:
    """The loss terms of explanation rows e, behaviour rows p and concurrent-objective rows c (`step.step_losses`):
    the native step's and the TRL integration's one way to turn a step's rows into losses."""
    e, p, c = rows
    b = np.concatenate([p, c]).astype(int)  # the KL's pairs, then the concurrent objective's own
    split = data.conc_pool is not None
    return step_losses(model, cfg=cfg, expl=[data.expl[i] for i in e], with_c=[data.with_c[i] for i in b],
                       without_c=[data.without_c[i] for i in b], p_m0=data.p_m0[b], p_m0_without=data.p_m0_without[b],
                       choice_ids=data.choice_ids, pad_id=pad_id,
                       packed=min(len(e), len(p)) if cfg.pack else 0,  # draw() aligns them
                       gold=data.gold[b],
                       kl_rows=np.r_[data.in_kl[p], np.zeros(len(c), bool)] if split else None,
                       concurrent_rows=np.r_[np.zeros(len(p), bool), np.ones(len(c), bool)] if split else None)


def optimiser_step(acc: Any, model: Any, params: list, opt: Any, sched: Any, cfg: TrainConfig, weights: Any,
                   data: TrainData, rows: tuple[np.ndarray, ...], pad_id: int) -> tuple[dict[str, float], int, float]:
    """Forward/backward over `grad_accum` micro-batches of `rows`, clip, step: (mean loss terms, tokens, grad norm)."""
    e_idx, p_idx, c_idx = rows
    step_cfg = dataclasses.replace(cfg, weights=weights)  # λ may move under the monitor's adapt/rollback policies
    totals: dict[str, float] = {}
    tokens = 0
    for micro in range(cfg.grad_accum):
        e_mb, p_mb = e_idx[micro::cfg.grad_accum], p_idx[micro::cfg.grad_accum]
        c_mb = c_idx[micro::cfg.grad_accum]
        b_mb = np.concatenate([p_mb, c_mb]).astype(int)
        sync = acc.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext()
        with sync, devices.autocast(cfg.precision, acc.device.type):
            losses = rows_losses(model, step_cfg, data, (e_mb, p_mb, c_mb), pad_id)
            loss = sum(getattr(weights, k) * v for k, v in losses.items()) / cfg.grad_accum
            acc.backward(loss)
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        tokens += sum(len(data.expl[i][0]) for i in e_mb) + sum(len(data.with_c[i]) + len(data.without_c[i]) for i in b_mb)
    grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return totals, tokens, grad_norm


class Loop:
    """The state one training run carries from step to step, and what happens after each optimiser step (probe,
    monitor, log, checkpoint). `train` builds it and runs the steps; each method is one seam."""

    def __init__(self, cfg: TrainConfig, acc: Any, model: Any, params: list, opt: Any, sched: Any, data: TrainData,
                 tok: Any, mon: CouplingMonitor | None, wanted: dict[str, str], say: Any) -> None:
        self.cfg, self.acc, self.model, self.params, self.opt, self.sched = cfg, acc, model, params, opt, sched
        self.data, self.tok, self.mon, self.wanted, self.say = data, tok, mon, wanted, say
        out = Path(cfg.out_dir)
        self.ckdir, self.metrics_path, self.stop_path = out / "checkpoints", out / "metrics.jsonl", out / "monitor_stop.json"
        self.weights = dataclasses.replace(cfg.weights, behavior_kl=mon.lam if mon else cfg.weights.behavior_kl)
        self.t_start, self.tokens_seen = time.time(), 0

    def row(self, step: int, logged: dict[str, float], grad_norm: float, t0: float) -> dict[str, Any]:
        """The metrics.jsonl line of a step (probe numbers added when a probe is due)."""
        cfg, acc, world = self.cfg, self.acc, self.acc.num_processes
        row: dict[str, Any] = {"step": step, **logged, "total": sum(getattr(self.weights, k) * v for k, v in logged.items()),
                               "grad_norm": round(grad_norm, 4), "lr": self.sched.get_last_lr()[0],
                               "sec_per_step": round(time.time() - t0, 3),
                               "tokens_per_s": round(self.tokens_seen * world / (time.time() - self.t_start), 1)}
        if cfg.probe_every and (step % cfg.probe_every == 0 or step == cfg.steps):
            if acc.is_main_process:
                n = min(cfg.probe_pairs, len(self.data.pairs))
                row.update(measure(acc.unwrap_model(self.model), self.tok, self.data.task, self.data.pairs[:n],
                                   self.data.beh.iloc[:n], labels=self.data.lab.iloc[:n], explain=False,
                                   precision=cfg.precision, verify_margin=cfg.verify_margin))
                # the probe is the monitor's warn policy on training pairs, behaviour only
                warn = MonitorSpec(policy="warn", min_agreement=cfg.agreement_warn)
                if decide(warn, row, [], self.weights.behavior_kl, 0).action == "warn":
                    self.say(f"[train] warning: step {step}: fixed labels agree with current behaviour on "
                             f"{row['agreement']:.0%} of probe pairs, below agreement_warn={cfg.agreement_warn:.0%}: "
                             f"coupling may not hold")
            acc.wait_for_everyone()
            self.model.train()
        return row

    def monitor(self, step: int, row: dict[str, Any], logged: dict[str, float]) -> Any:
        """The coupling monitor's decision at this step (None when not due); λ follows it."""
        if not (self.mon and self.mon.due(step, self.cfg.steps)):
            return None
        row["monitor"], decision = self.mon.check(step, self.acc.unwrap_model(self.model), logged.get("explanation"))
        row["monitor_decision"] = decision.record(step, self.cfg.monitor)
        self.weights = dataclasses.replace(self.weights, behavior_kl=decision.lam)
        if decision.action in ("ok", "lower_lambda"):  # the condition holds here: the state to stop at / roll back to
            self.mon.remember(step, self.acc.unwrap_model(self.model), self.opt, self.sched)
        return decision

    def log(self, step: int, row: dict[str, Any], logged: dict[str, float], bar: Any) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix({k: round(v, 4) for k, v in logged.items()})
        if step % 10 == 0 or "agreement" in row:
            self.say(f"[train] step {step}/{self.cfg.steps} " + " ".join(f"{k} {v:.4f}" for k, v in logged.items())
                     + f" | {row['sec_per_step']:.2f}s/step {row['tokens_per_s']:.0f} tok/s"
                     + (f" | drift {row['drift']:.2f} agreement {row['agreement']:.2f}" if "agreement" in row else ""))

    def info(self, step: int, logged: dict[str, float]) -> dict[str, Any]:
        """What a checkpoint's meta.json records besides its files."""
        meta = self.data.beh_meta
        return {"step": step, "config": to_dict(self.cfg), "losses": logged, "inputs": self.wanted,
                "model_id": self.cfg.model, "task": meta["task"], "task_options": meta["task_options"],
                "monitor_state": self.mon.state() if self.mon else None}

    def stop(self, step: int, decision: Any, info: dict[str, Any]) -> None:
        """The monitor's stop: back to the last state that met the condition, later checkpoints removed."""
        mon, acc, good = self.mon, self.acc, self.mon.good[0]
        mon.roll_back(acc.unwrap_model(self.model), self.opt, self.sched, 1.0)  # the weights of the last good state
        if not acc.is_main_process:
            return
        gone = checkpoints.remove_after(self.ckdir, good)
        if good and not (self.ckdir / f"step_{good:06d}" / "meta.json").is_file():
            checkpoints.save(acc.unwrap_model(self.model), self.opt, self.sched, self.ckdir, good, {**info, "step": good})
        kept = f"step {good}" if good else "M0 (no checkpoint met the condition)"
        self.stop_path.write_text(json.dumps({"step": step, "kept": good, "why": decision.why, "inputs": self.wanted}))
        self.say(f"[monitor] stopped at step {step}: {decision.why}; kept {kept}" + (f", removed checkpoints {gone}" if gone else ""))

    def roll_back(self, decision: Any) -> int:
        """The monitor's rollback: the step training continues from (later checkpoints removed)."""
        step = self.mon.roll_back(self.acc.unwrap_model(self.model), self.opt, self.sched, decision.lr_scale)
        if self.acc.is_main_process:
            gone = checkpoints.remove_after(self.ckdir, step)
            self.say(f"[monitor] rolled back to step {step} (rollback {self.mon.rollbacks}): lr x{self.mon.lr_scale:g}, "
                     f"λ {self.mon.lam:g}" + (f"; removed checkpoints {gone}" if gone else ""))
        return step

    def save(self, step: int, info: dict[str, Any]) -> None:
        if step % self.cfg.checkpoint_every == 0 or step == self.cfg.steps:
            if self.acc.is_main_process:
                path = checkpoints.save(self.acc.unwrap_model(self.model), self.opt, self.sched, self.ckdir, step, info)
                size = checkpoints.prune(self.ckdir, self.cfg.keep_checkpoints)
                self.say(f"[train] saved {path} (checkpoints now {size / 1e6:.0f} MB)")
            self.acc.wait_for_everyone()


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or resume) training; returns the output directory."""
    # precision is our own autocast (devices.autocast), not accelerate's process-wide mixed_precision setting
    device = devices.resolve(cfg.device)
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device[5:]))
    acc = Accelerator(cpu=device == "cpu")
    seed_everything(cfg.seed)
    out = Path(cfg.out_dir)
    say = progress.say if acc.is_main_process else (lambda message: None)
    world = acc.num_processes
    for key in ("explanation_per_step", "behavior_per_step", "concurrent_per_step"):
        if getattr(cfg, key) % (world * cfg.grad_accum):
            raise UserError(f"config key {key}={getattr(cfg, key)} must divide by processes x grad_accum = {world * cfg.grad_accum}")
    loop, start = prepare(cfg, acc, resume, say)
    if loop is None:
        return out
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    bar = progress.bar(initial=start, total=cfg.steps, desc="training", unit="step", disable=not acc.is_main_process)
    step = start
    while step < cfg.steps:
        step += 1
        bar.update(1)
        t0 = time.time()
        rows = step_rows(cfg, loop.data, step, acc.process_index, world)
        totals, tokens, grad_norm = optimiser_step(acc, loop.model, loop.params, loop.opt, loop.sched, cfg,
                                                   loop.weights, loop.data, rows, loop.tok.pad_token_id)
        loop.tokens_seen += tokens
        logged = {k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean")) for k, v in sorted(totals.items())}
        row = loop.row(step, logged, grad_norm, t0)
        decision = loop.monitor(step, row, logged)
        if step == cfg.steps:
            bar.close()  # the last step's lines below print after the bar's final line, not into it
        loop.log(step, row, logged, bar)
        info = loop.info(step, logged)
        if decision and decision.action == "stop":
            loop.stop(step, decision, info)
            break
        if decision and decision.action == "rollback":
            step = loop.roll_back(decision)  # the loop goes on from the rolled-back step
            bar.n = step
            bar.refresh()
            continue
        loop.save(step, info)
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    say(f"[train] done: {step} steps in {time.time() - loop.t_start:.0f}s; checkpoints in {loop.ckdir}, metrics in "
        f"{loop.metrics_path}")
    return out


def prepare(cfg: TrainConfig, acc: Any, resume: bool, say: Any) -> tuple[Loop | None, int]:
    """Data, model, optimiser, schedule and monitor, resumed from the last checkpoint when asked; (None, step) when a
    stop by the coupling monitor already ended this run."""
    out = Path(cfg.out_dir)
    wanted = train_inputs(cfg)
    start_from = checkpoints.resume_point(out / "checkpoints", wanted, resume, say, config=to_dict(cfg))
    loaded = load_model(cfg.model, seed=cfg.seed, hash_weights=False)
    tok = loaded.tokenizer
    data = load_data(cfg, tok, say)
    model = build_model(cfg, loaded, start_from, say)
    params = [p for p in model.parameters() if p.requires_grad]
    estimate = devices.memory_estimate(model, params, max_length=cfg.max_length, rows=cfg.rows_per_forward,
                                       activation_checkpointing=cfg.activation_checkpointing)
    say(f"[train] memory estimate: {estimate}")
    say(f"[train] {len(data.expl)} explanation examples, {len(data.pairs)} behaviour pairs ({data.task.name}); "
        f"{cfg.finetune} with {sum(p.numel() for p in params) / 1e6:.2f}M trainable params; {acc.num_processes} "
        f"process(es) on {acc.device}")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    model, opt = acc.prepare(model, opt)
    start = 0
    mon = CouplingMonitor(cfg, tok, data.task, {p.id for p in data.pairs}, say) if cfg.monitor.every else None
    stop_path = out / "monitor_stop.json"
    if start_from is not None:
        start = checkpoints.load_into(acc.unwrap_model(model), opt, sched, start_from, cfg.finetune)
        say(f"[train] resumed from {start_from} (step {start})")
        if mon:
            mon.load_state(checkpoints.meta(start_from).get("monitor_state"))
        if stop_path.is_file() and json.loads(stop_path.read_text()).get("inputs") == wanted:
            say(f"[train] the coupling monitor stopped this run: {json.loads(stop_path.read_text())['why']}; nothing to do")
            return None, start
    stop_path.unlink(missing_ok=True)
    loop = Loop(cfg, acc, model, params, opt, sched, data, tok, mon, wanted, say)
    if mon:
        mon.remember(start, acc.unwrap_model(model), opt, sched)  # M0 (or the resumed state) meets the condition
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        metrics = out / "metrics.jsonl"
        kept = [ln for ln in (metrics.read_text().splitlines() if metrics.exists() and start else [])
                if ln.strip().startswith("{") and ln.rstrip().endswith("}") and json.loads(ln)["step"] <= start]
        metrics.write_text("".join(ln + "\n" for ln in kept))
    return loop, start
