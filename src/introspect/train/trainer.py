"""Coupling training: explanation SFT on fixed labels + behavioural KL to M0 + optional concurrent objective.

Read top to bottom: load data and model -> wrap (LoRA or full) -> accelerate.prepare -> (resume) -> for each step:
draw this step's examples from (seed, step), compute the weighted losses, step the optimiser, log, probe, save.

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

from .. import behavior, checkpoints, devices, progress, provenance
from ..behavior import choice_token_ids, encode_pairs
from ..config import UserError, seed_everything
from ..labels import agreement, drift, label_frame
from ..models import check_lora_targets, linear_names, load_model, peft_deprecation_silenced
from ..tables import pairs_from_table, read_table, task_of
from ..tasks import Pair
from . import fast
from .config import TrainConfig, to_dict
from .monitor import CouplingMonitor
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
    if cfg.concurrent_pairs != "split" or not (cfg.weights.sycophancy_reduction or cfg.weights.refusal_tuning):
        return None
    k = round(n * cfg.concurrent_share)
    if not 0 < k < n:
        raise UserError(f"config key concurrent_share={cfg.concurrent_share} leaves {k} of {n} training pairs for the "
                        f"concurrent objective: it needs at least one, and the KL at least one")
    return np.sort(np.random.default_rng([cfg.seed, 1]).permutation(n)[:k])


def probe(model: Any, tok: Any, task: Any, pairs: list[Pair], m0: Any, labels: Any, precision: str,
          verify_margin: float) -> dict[str, float]:
    """Re-sample B(M_t) on the probe pairs: drift from M0 and agreement of the fixed labels with current behaviour."""
    df, _ = behavior.sample_behavior(model, tok, task, pairs, precision=precision, verify_margin=verify_margin,
                                     progress=False)
    return {"drift": float(drift(df, m0).mean()), "agreement": float(agreement(label_frame(df), labels).mean()),
            "changed_rate": float(df["changed"].mean())}


# config keys added after runs were made with this code: they enter a run's inputs only when set away from the default
ADDED_LATER = ("trees_per_row", "compile", "cache_bf16_weights", "init_from")


def train_inputs(cfg: TrainConfig) -> dict[str, str]:
    """What a training run is made from: its config (paths aside) and the inputs of its two tables."""
    conf = {k: v for k, v in to_dict(cfg).items() if k not in ("behavior", "labels", "out_dir", "keep_checkpoints", "device")}
    if devices.resolve(cfg.device) != "cpu":  # where it ran matters to the numbers; CPU runs keep their earlier inputs
        conf["device"] = devices.resolve(cfg.device)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ADDED_LATER and conf[f.name] == f.default:  # at their defaults, earlier runs keep their inputs
            del conf[f.name]
    conf["monitor"] = {k: v for k, v in conf["monitor"].items() if k != "pairs"}  # a path: its table's inputs below
    if conf.get("init_from"):  # a path: the starting weights' content hash instead
        conf["init_from"] = checkpoints.weights_hash(Path(cfg.init_from), "")
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


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or resume) training; returns the output directory."""
    # precision is our own autocast (devices.autocast), not accelerate's process-wide mixed_precision setting
    device = devices.resolve(cfg.device)
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device[5:]))
    acc = Accelerator(cpu=device == "cpu")
    seed_everything(cfg.seed)
    out = Path(cfg.out_dir)
    ckdir = out / "checkpoints"
    say = progress.say if acc.is_main_process else (lambda message: None)

    beh, beh_meta = read_table(cfg.behavior)
    lab, lab_meta = read_table(cfg.labels)
    task = task_of(beh_meta)
    missing = sorted(set(lab["pair_id"]) - set(beh["pair_id"]))
    if missing:
        raise UserError(f"{cfg.labels}: {len(missing)} labelled pair(s) are not in {cfg.behavior} (config keys labels/behavior), e.g. {missing[0]}")
    beh = beh.set_index("pair_id").loc[lab["pair_id"]].reset_index()  # align rows: pair i is label i
    if beh_meta["model_id"] != cfg.model:
        raise UserError(f"config key model is {cfg.model!r} but {cfg.behavior} holds B({beh_meta['model_id']}): "
                        f"the regulariser needs M0's own behaviour")
    world, rank = acc.num_processes, acc.process_index
    for key in ("explanation_per_step", "behavior_per_step", "concurrent_per_step"):
        if getattr(cfg, key) % (world * cfg.grad_accum):
            raise UserError(f"config key {key}={getattr(cfg, key)} must divide by processes x grad_accum = {world * cfg.grad_accum}")
    wanted = train_inputs(cfg)
    start_from = checkpoints.resume_point(ckdir, wanted, resume, say, config=to_dict(cfg))
    loaded = load_model(cfg.model, seed=cfg.seed, hash_weights=False)
    tok = loaded.tokenizer
    pairs = pairs_from_table(beh, task)
    with_c, without_c = encode_pairs(tok, task, pairs)
    expl = encode_explanations(tok, lab, cfg.max_length, cfg.labels)
    p_m0, p_m0_without = np.array(beh["probs"].tolist()), np.array(beh["probs_without"].tolist())
    gold = np.array([task.choices.index(g) if g in task.choices else -1 for g in beh["gold"]])
    choice_ids = choice_token_ids(tok, task.continuations)
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
    params = [p for p in model.parameters() if p.requires_grad]
    estimate = devices.memory_estimate(model, params, max_length=cfg.max_length, rows=cfg.rows_per_forward,
                                       activation_checkpointing=cfg.activation_checkpointing)
    say(f"[train] memory estimate: {estimate}")
    say(f"[train] {len(expl)} explanation examples, {len(pairs)} behaviour pairs ({task.name}); "
        f"{cfg.finetune} with {sum(p.numel() for p in params) / 1e6:.2f}M trainable params; {world} process(es) on {acc.device}")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    model, opt = acc.prepare(model, opt)

    start = 0
    metrics_path = out / "metrics.jsonl"
    stop_path = out / "monitor_stop.json"
    mon = CouplingMonitor(cfg, tok, task, {p.id for p in pairs}, say) if cfg.monitor.every else None
    if start_from is not None:
        start = checkpoints.load_into(acc.unwrap_model(model), opt, sched, start_from, cfg.finetune)
        say(f"[train] resumed from {start_from} (step {start})")
        if mon:
            mon.load_state(checkpoints.meta(start_from).get("monitor_state"))
        if stop_path.is_file() and json.loads(stop_path.read_text()).get("inputs") == wanted:
            say(f"[train] the coupling monitor stopped this run: {json.loads(stop_path.read_text())['why']}; nothing to do")
            return
    stop_path.unlink(missing_ok=True)
    weights = dataclasses.replace(cfg.weights, behavior_kl=mon.lam if mon else cfg.weights.behavior_kl)
    if mon:
        mon.remember(start, acc.unwrap_model(model), opt, sched)  # M0 (or the resumed state) meets the condition
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        kept = [ln for ln in (metrics_path.read_text().splitlines() if metrics_path.exists() and start else [])
                if ln.strip().startswith("{") and ln.rstrip().endswith("}") and json.loads(ln)["step"] <= start]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))

    n_probe = min(cfg.probe_pairs, len(pairs))
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    t_start, tokens_seen = time.time(), 0
    bar = progress.bar(initial=start, total=cfg.steps, desc="training", unit="step", disable=not acc.is_main_process)
    step = start
    while step < cfg.steps:
        step += 1
        bar.update(1)
        t0 = time.time()
        step_cfg = dataclasses.replace(cfg, weights=weights)  # λ may move under the monitor's adapt/rollback policies
        e_idx, p_idx = draw(cfg.seed, step, len(pairs), cfg.explanation_per_step, cfg.behavior_per_step, strata)
        c_idx = (np.random.default_rng([cfg.seed, step, 1]).choice(conc_pool, cfg.concurrent_per_step)
                 if conc_pool is not None else np.zeros(0, dtype=int))
        e_idx, p_idx, c_idx = e_idx[rank::world], p_idx[rank::world], c_idx[rank::world]
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            e_mb, p_mb = e_idx[micro::cfg.grad_accum], p_idx[micro::cfg.grad_accum]
            c_mb = c_idx[micro::cfg.grad_accum]
            b_mb = np.concatenate([p_mb, c_mb]).astype(int)  # the KL's pairs, then the concurrent objective's own
            split_rows = conc_pool is not None
            sync = acc.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext()
            with sync, devices.autocast(cfg.precision, acc.device.type):
                losses = step_losses(model, cfg=step_cfg, expl=[expl[i] for i in e_mb], with_c=[with_c[i] for i in b_mb],
                                     without_c=[without_c[i] for i in b_mb], p_m0=p_m0[b_mb],
                                     p_m0_without=p_m0_without[b_mb], choice_ids=choice_ids, pad_id=tok.pad_token_id,
                                     packed=min(len(e_mb), len(p_mb)) if cfg.pack else 0,  # draw() aligns them
                                     gold=gold[b_mb],
                                     kl_rows=np.r_[in_kl[p_mb], np.zeros(len(c_mb), bool)] if split_rows else None,
                                     concurrent_rows=np.r_[np.zeros(len(p_mb), bool), np.ones(len(c_mb), bool)] if split_rows else None)
                loss = sum(getattr(weights, k) * v for k, v in losses.items()) / cfg.grad_accum
                acc.backward(loss)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            tokens_seen += sum(len(expl[i][0]) for i in e_mb) + sum(len(with_c[i]) + len(without_c[i]) for i in b_mb)
        grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

        logged = {k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean")) for k, v in sorted(totals.items())}
        row: dict[str, Any] = {"step": step, **logged, "total": sum(getattr(weights, k) * v for k, v in logged.items()),
                               "grad_norm": round(grad_norm, 4), "lr": sched.get_last_lr()[0],
                               "sec_per_step": round(time.time() - t0, 3),
                               "tokens_per_s": round(tokens_seen * world / (time.time() - t_start), 1)}
        if cfg.probe_every and (step % cfg.probe_every == 0 or step == cfg.steps):
            if acc.is_main_process:
                row.update(probe(acc.unwrap_model(model), tok, task, pairs[:n_probe], beh.iloc[:n_probe],
                                 lab.iloc[:n_probe], cfg.precision, cfg.verify_margin))
                if row["agreement"] < cfg.agreement_warn:
                    say(f"[train] warning: step {step}: fixed labels agree with current behaviour on {row['agreement']:.0%} "
                        f"of probe pairs, below agreement_warn={cfg.agreement_warn:.0%}: coupling may not hold")
            acc.wait_for_everyone()
            model.train()
        decision = None
        if mon and mon.due(step, cfg.steps):
            row["monitor"], decision = mon.check(step, acc.unwrap_model(model), logged.get("explanation"))
            row["monitor_decision"] = decision.record(step, cfg.monitor)
            weights = dataclasses.replace(weights, behavior_kl=decision.lam)
            if decision.action in ("ok", "lower_lambda"):  # the condition holds here: the state to stop at / roll back to
                mon.remember(step, acc.unwrap_model(model), opt, sched)
        if step == cfg.steps:
            bar.close()  # the last step's lines below print after the bar's final line, not into it
        if acc.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix({k: round(v, 4) for k, v in logged.items()})
            if step % 10 == 0 or "agreement" in row:
                say(f"[train] step {step}/{cfg.steps} " + " ".join(f"{k} {v:.4f}" for k, v in logged.items())
                    + f" | {row['sec_per_step']:.2f}s/step {row['tokens_per_s']:.0f} tok/s"
                    + (f" | drift {row['drift']:.2f} agreement {row['agreement']:.2f}" if "agreement" in row else ""))
        info = {"step": step, "config": to_dict(cfg), "losses": logged, "inputs": wanted, "model_id": cfg.model,
                "task": beh_meta["task"], "task_options": beh_meta["task_options"],
                "monitor_state": mon.state() if mon else None}
        if decision and decision.action in ("stop", "rollback"):
            good = mon.good[0]
            if decision.action == "stop":
                mon.roll_back(acc.unwrap_model(model), opt, sched, 1.0)  # the weights of the last state that met it
                if acc.is_main_process:
                    gone = checkpoints.remove_after(ckdir, good)
                    if good and not (ckdir / f"step_{good:06d}" / "meta.json").is_file():
                        checkpoints.save(acc.unwrap_model(model), opt, sched, ckdir, good, {**info, "step": good})
                    kept = f"step {good}" if good else "M0 (no checkpoint met the condition)"
                    stop_path.write_text(json.dumps({"step": step, "kept": good, "why": decision.why, "inputs": wanted}))
                    say(f"[monitor] stopped at step {step}: {decision.why}; kept {kept}"
                        + (f", removed checkpoints {gone}" if gone else ""))
                break
            step = mon.roll_back(acc.unwrap_model(model), opt, sched, decision.lr_scale)
            if acc.is_main_process:
                gone = checkpoints.remove_after(ckdir, step)
                say(f"[monitor] rolled back to step {step} (rollback {mon.rollbacks}): lr x{mon.lr_scale:g}, λ {mon.lam:g}"
                    + (f"; removed checkpoints {gone}" if gone else ""))
            bar.n = step
            bar.refresh()
            continue
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if acc.is_main_process:
                path = checkpoints.save(acc.unwrap_model(model), opt, sched, ckdir, step, info)
                size = checkpoints.prune(ckdir, cfg.keep_checkpoints)
                say(f"[train] saved {path} (checkpoints now {size / 1e6:.0f} MB)")
            acc.wait_for_everyone()
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    say(f"[train] done: {step} steps in {time.time() - t_start:.0f}s; checkpoints in {ckdir}, metrics in {metrics_path}")
    return out
