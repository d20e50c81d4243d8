"""The coupling monitor: every K steps, on held-out pairs, measure whether the fixed labels still describe what the
model does, and decide what the trainer should do about it (docs/training.md#coupling-monitor).

`measure` generates explanations and re-samples behaviour on the monitor pairs (Self, Orig, Has-Changed F1,
predicted-changed rate, agreement, drift, the choice KL to M0). `decide` is a pure function of the policy, the
measurement, the run's explanation-loss history and its current λ: the trainer carries the decision out
(warn: a line; stop: end the run at the last checkpoint that met the condition; rollback: restore it and continue
with lr x lr_factor and λ x lambda_factor; adapt: raise λ when agreement is low, lower it when the explanation loss
stalls). Every check and decision is a row in metrics.jsonl and a mark on the report's loss plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import MonitorSpec


@dataclass
class Decision:
    action: str  # ok | warn | stop | rollback | raise_lambda | lower_lambda
    why: str
    lam: float  # λ after the decision
    lr_scale: float = 1.0  # multiply the learning rate by this (rollback)

    def record(self, step: int, spec: MonitorSpec) -> dict[str, Any]:
        """The decision's line in metrics.jsonl."""
        return {"step": step, "policy": spec.policy, "action": self.action, "why": self.why, "lambda": self.lam,
                "min_agreement": spec.min_agreement}


def measure(model: Any, tok: Any, task: Any, pairs: list, m0: Any, *, precision: str, verify_margin: float,
            max_new_tokens: int = MonitorSpec.max_new_tokens, labels: Any = None,
            explain: bool = True) -> dict[str, float]:
    """The one measurement of a model during training, as it is now: B(M_t) re-sampled on `pairs`, and with `explain`
    the explanations generated and scored (Self / Orig / HC-F1 / predicted-changed / agreement / drift / KL to M0: the
    monitor's check). Without `explain` (the trainer's probe): drift from M0, agreement of the fixed `labels` (M0's
    when None) with current behaviour, and the changed rate."""
    from .. import behavior
    from ..evaluate import compare, explanation_prompts, generate
    from ..labels import agreement, drift, label_frame

    was_training = model.training
    model.eval()
    texts = generate(model, tok, explanation_prompts(task, pairs), precision=precision,
                     max_new_tokens=max_new_tokens) if explain else None
    beh, _ = behavior.sample_behavior(model, tok, task, pairs, precision=precision, verify_margin=verify_margin,
                                      progress=False)
    if was_training:
        model.train()
    if texts is None:
        fixed = label_frame(m0) if labels is None else labels
        return {"drift": float(drift(beh, m0).mean()), "agreement": float(agreement(label_frame(beh), fixed).mean()),
                "changed_rate": float(beh["changed"].mean())}
    res, _ = compare(texts, beh, m0, task.choices, seed=0, n_boot=1, orig_labels=labels)
    p0 = np.array(m0["probs"].tolist() + m0["probs_without"].tolist())
    pt = np.array(beh["probs"].tolist() + beh["probs_without"].tolist())
    kl = float(np.mean(np.sum(p0 * (np.log(np.clip(p0, 1e-12, None)) - np.log(np.clip(pt, 1e-12, None))), axis=1)))
    return {"self_em": res["self"]["exact_match"]["value"], "orig_em": res["orig"]["exact_match"]["value"],
            "self_minus_orig": res["self_minus_orig"]["exact_match"]["value"],
            "has_changed_f1": res["self"]["has_changed_f1"]["value"],
            "pred_changed_rate": res["self"]["pred_changed_rate"]["value"], "agreement": res["agreement"],
            "drift": res["drift"], "kl_to_m0": kl}


def decide(spec: MonitorSpec, values: dict[str, float], expl_losses: list[float], lam: float,
           rollbacks: int) -> Decision:
    """What to do after a check. `expl_losses`: the explanation loss at each check so far (this one last)."""
    low = values["agreement"] < spec.min_agreement
    why = (f"agreement {values['agreement']:.2f} < min_agreement {spec.min_agreement:.2f} on the held-out monitor pairs"
           if low else f"agreement {values['agreement']:.2f} >= {spec.min_agreement:.2f}")
    if spec.policy == "warn":
        return Decision("warn" if low else "ok", why, lam)
    if spec.policy == "stop":
        return Decision("stop" if low else "ok", why, lam)
    if spec.policy == "rollback":
        if not low:
            return Decision("ok", why, lam)
        if rollbacks >= spec.max_rollbacks:
            return Decision("stop", f"{why}; {rollbacks} rollback(s) already (max_rollbacks)", lam)
        return Decision("rollback", why, max(lam, spec.lambda_floor) * spec.lambda_factor, spec.lr_factor)
    # adapt
    if low:
        return Decision("raise_lambda", why, max(lam, spec.lambda_floor) * spec.lambda_factor)
    k = spec.stall_checks
    if len(expl_losses) > k and expl_losses[-1] > expl_losses[-1 - k] * (1 - spec.stall_tol):
        return Decision("lower_lambda", f"{why}; explanation loss {expl_losses[-1 - k]:.4f} -> {expl_losses[-1]:.4f} "
                        f"over {k} checks (stalled: < {spec.stall_tol:.0%} better)", lam * spec.lambda_down)
    return Decision("ok", why, lam)


class CouplingMonitor:
    """The monitor's state across a run: the monitor pairs, λ and lr scale now, rollbacks so far, and the last state
    that met the condition (in memory, to stop at or roll back to)."""

    def __init__(self, cfg: Any, tok: Any, task: Any, train_ids: set[str], say: Any) -> None:
        from ..errors import UserError
        from ..tables import pairs_from_table, read_table

        self.spec, self.tok, self.task, self.say = cfg.monitor, tok, task, say
        self.precision, self.verify_margin, self.finetune = cfg.precision, cfg.verify_margin, cfg.finetune
        df, meta = read_table(cfg.monitor.pairs)
        if meta.get("task") != task.name or meta.get("model_id") != cfg.model:
            raise UserError(f"config key monitor.pairs: {cfg.monitor.pairs} holds B({meta.get('model_id')}) on "
                            f"{meta.get('task')} pairs; the monitor needs B({cfg.model}) on {task.name} pairs")
        df = df.iloc[:cfg.monitor.n].reset_index(drop=True)
        shared = sorted(set(df["pair_id"]) & train_ids)
        if shared:
            raise UserError(f"config key monitor.pairs: {len(shared)} monitor pair(s) are training pairs (e.g. "
                            f"{shared[0]}): the monitor needs held-out pairs")
        self.pairs, self.m0 = pairs_from_table(df, task), df
        self.lam, self.rollbacks, self.losses, self.lr_scale = cfg.weights.behavior_kl, 0, [], 1.0
        self.good: tuple[int, dict[str, Any]] | None = None

    def due(self, step: int, last: int) -> bool:
        return bool(self.spec.every) and (step % self.spec.every == 0 or step == last)

    def state(self) -> dict[str, Any]:
        return {"lambda": self.lam, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                "good_step": self.good[0] if self.good else None}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state:
            self.lam, self.rollbacks, self.lr_scale = state["lambda"], state["rollbacks"], state.get("lr_scale", 1.0)

    def remember(self, step: int, model: Any, opt: Any, sched: Any) -> None:
        from ..checkpoints import snapshot

        self.good = (step, {**snapshot(model, opt, sched, self.finetune), "lr_scale": self.lr_scale})

    def check(self, step: int, model: Any, expl_loss: float | None) -> tuple[dict[str, float], Decision]:
        values = measure(model, self.tok, self.task, self.pairs, self.m0, precision=self.precision,
                         verify_margin=self.verify_margin, max_new_tokens=self.spec.max_new_tokens)
        if expl_loss is not None:
            self.losses.append(expl_loss)
        dec = decide(self.spec, values, self.losses, self.lam, self.rollbacks)
        self.lam = dec.lam
        if dec.action != "ok":
            self.say(f"[monitor] step {step}: {dec.action} ({dec.why}); λ now {dec.lam:g}")
        return values, dec

    def roll_back(self, model: Any, opt: Any, sched: Any, lr_scale: float) -> int:
        """Restore the last good state, scale the learning rate; returns the step to continue from."""
        from ..checkpoints import restore

        step, snap = self.good
        restore(model, opt, sched, snap, self.finetune)
        self.lr_scale *= lr_scale
        factor = self.lr_scale / snap["lr_scale"]  # the snapshot's learning rates carry the scale it was taken at
        sched.base_lrs = [b * factor for b in sched.base_lrs]
        for g in opt.param_groups:
            g["lr"] *= factor
        self.rollbacks += 1
        self.losses = self.losses[:0]
        return step
