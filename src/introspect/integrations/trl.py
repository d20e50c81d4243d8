"""Coupling terms inside a Hugging Face / TRL trainer (SFTTrainer, DPOTrainer, or a plain transformers Trainer).

    from trl import SFTTrainer
    from introspect.integrations.trl import CouplingTerms, with_coupling

    terms = CouplingTerms.from_tables("RUN/train/behavior.parquet", "RUN/train/labels.parquet", tokenizer,
                                      weights={"explanation": 1.0, "behavior_kl": 0.3})
    trainer = with_coupling(SFTTrainer, terms)(model=model, args=sft_config, train_dataset=ds, ...)

Each optimiser step, the host trainer's own loss gets `w_explanation · CE(frozen explanation labels) + λ · KL(p_M0 ‖ p_θ)`
(+ μ, ρ for the concurrent objectives when their weights are set) — the same functions as introspect's own trainer
(`train.trainer.load_data`, `step_rows`, `train.step.step_losses`: one implementation of each loss, fp32 head at the
answer positions), on the rows introspect's trainer would draw at that step ((seed, step) only). p_M0 comes from the
BehaviorTable, so no reference model and no extra forward are needed for the KL. Each term is logged beside the
host's metrics (`coupling/explanation`, `coupling/behavior_kl`).

`CouplingCallback` runs the coupling monitor (train.monitor: warn / stop / rollback / adapt, on held-out pairs) every
`monitor.every` steps and writes checkpoints in introspect's layout (`checkpoints.save`: weights, optimiser state,
meta.json with the inputs) every `checkpoint_every` steps. Not covered yet (issue 25): the DPO example and its
benchmark.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .. import devices
from ..train.config import LossWeights, TrainConfig, to_dict, validate
from ..train.trainer import TrainData, load_data, rows_losses, step_rows
from ..typed import build


class CouplingTerms:
    """The coupling loss terms for step t of another trainer, drawn from frozen tables."""

    def __init__(self, cfg: TrainConfig, data: TrainData, pad_id: int) -> None:
        self.cfg, self.data, self.pad_id = cfg, data, pad_id

    @classmethod
    def from_tables(cls, behavior: str, labels: str, tokenizer: Any, *, model: str | None = None,
                    **keys: Any) -> CouplingTerms:
        """From M0's BehaviorTable and the labels table; `keys` are any TrainConfig keys (weights, explanation_per_step,
        behavior_per_step, precision, seed, ...), checked as a train config's are."""
        from ..tables import read_meta

        data = {"behavior": str(behavior), "labels": str(labels), "out_dir": "-",
                "model": model or read_meta(behavior)["model_id"], **keys}
        cfg = validate(build(TrainConfig, data, "CouplingTerms"), "CouplingTerms")
        return cls(cfg, load_data(cfg, tokenizer, lambda message: None), tokenizer.pad_token_id)

    @property
    def weights(self) -> LossWeights:
        return self.cfg.weights

    def losses(self, model: Any, step: int, *, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        """The unweighted terms at `step` (1-based), this process's share of the step's rows."""
        rows = step_rows(self.cfg, self.data, step, rank, world)
        with devices.autocast(self.cfg.precision, devices.of(model).type):
            return rows_losses(model, self.cfg, self.data, rows, self.pad_id)

    def weighted(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(getattr(self.weights, k) * v for k, v in losses.items())


def with_coupling(trainer_cls: type, terms: CouplingTerms) -> type:
    """A subclass of `trainer_cls` (any transformers Trainer, e.g. trl.SFTTrainer or trl.DPOTrainer) whose training
    loss is its own plus the weighted coupling terms at the current step."""

    class Coupled(trainer_cls):  # type: ignore[misc, valid-type]
        coupling = terms

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if not model.training:
                return out
            loss, outputs = out if return_outputs else (out, None)
            acc = getattr(self, "accelerator", None)
            rank, world = (acc.process_index, acc.num_processes) if acc else (0, 1)
            terms_now = self.coupling.losses(model, self.state.global_step + 1, rank=rank, world=world)
            loss = loss + self.coupling.weighted(terms_now).to(loss.device)
            record = {f"coupling/{k}": float(v.detach()) for k, v in terms_now.items()}
            metrics = getattr(self, "_metrics", None)
            if isinstance(metrics, dict) and "train" in metrics:  # TRL trainers average these into their log lines
                for k, v in record.items():
                    metrics["train"][k].append(v)
            else:
                self.coupling_log = [*getattr(self, "coupling_log", []), {"step": self.state.global_step + 1, **record}]
            return (loss, outputs) if return_outputs else loss

    Coupled.__name__ = f"Coupled{trainer_cls.__name__}"
    return Coupled


def coupling_callback(terms: CouplingTerms, tokenizer: Any, *, out_dir: str | None = None, say: Any = print) -> Any:
    """A transformers TrainerCallback that runs the coupling monitor of `terms.cfg.monitor` (policies as in the native
    trainer; λ of the terms follows adapt/rollback) and, with `out_dir`, writes OUT_DIR/checkpoints/step_N every
    `checkpoint_every` steps. Under TRL a rollback restores the weights, optimiser and schedule of the last good state
    but the trainer's step counter goes on (TRL's loop cannot step back)."""
    from transformers import TrainerCallback

    from .. import checkpoints
    from ..train.monitor import CouplingMonitor
    from ..train.trainer import train_inputs

    cfg = terms.cfg
    mon = CouplingMonitor(cfg, tokenizer, terms.data.task, {p.id for p in terms.data.pairs}, say) if cfg.monitor.every else None

    class CouplingCallback(TrainerCallback):
        monitor, decisions = mon, []

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                           lr_scheduler: Any = None, **kw: Any) -> None:
            if mon:
                mon.remember(state.global_step, model, optimizer, lr_scheduler)  # M0 meets the condition

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                        lr_scheduler: Any = None, **kw: Any) -> None:
            step = state.global_step
            if mon and mon.due(step, state.max_steps):
                values, decision = mon.check(step, model, None)
                model.train()
                terms.cfg = dataclasses.replace(terms.cfg, weights=dataclasses.replace(terms.weights, behavior_kl=decision.lam))
                self.decisions.append({**decision.record(step, cfg.monitor), "monitor": values})
                if decision.action in ("ok", "lower_lambda"):
                    mon.remember(step, model, optimizer, lr_scheduler)
                elif decision.action == "stop":
                    mon.roll_back(model, optimizer, lr_scheduler, 1.0)
                    control.should_training_stop = True
                    return
                elif decision.action == "rollback":
                    mon.roll_back(model, optimizer, lr_scheduler, decision.lr_scale)
            if out_dir and (step % cfg.checkpoint_every == 0 or step == state.max_steps):
                info = {"step": step, "config": to_dict(cfg), "model_id": cfg.model,
                        "inputs": {**train_inputs(cfg), "trainer": "trl"},  # never current for introspect's own trainer
                        "task": terms.data.beh_meta["task"], "task_options": terms.data.beh_meta["task_options"],
                        "monitor_state": mon.state() if mon else None, "trainer": "trl"}
                path = checkpoints.save(model, optimizer, lr_scheduler, Path(out_dir) / "checkpoints", step, info)
                say(f"[coupling] saved {path}")

    return CouplingCallback()


__all__ = ["CouplingTerms", "coupling_callback", "with_coupling"]
