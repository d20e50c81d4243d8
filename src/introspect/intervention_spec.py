"""The causal intervention test's settings (`introspect intervene`, an experiment spec's `intervention.settings`):
typed and range-checked here, light to import (the CLI's flags read their defaults from it)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .errors import UserError


@dataclasses.dataclass
class InterventionSpec:
    step: int | None = None  # the explainer checkpoint T; None = the run's last
    steps: int = 60  # behaviour-only optimiser steps
    mu: float = 1.0  # the treatment's weight on the treated half
    treatment: Literal["sycophancy", "gold"] = "sycophancy"  # sycophancy: answer on x pulled to M_T's own answer on
    #   x∖C (needs changed items); gold: cross-entropy toward the task's gold answer on x and x∖C (the refusal_tuning
    #   loss; any task with gold)
    lam: float = 1.0  # KL weight (to M_T) on the control half
    lr: float = 2e-4  # AdamW learning rate of the behaviour-only fine-tuning
    seed: int = 0  # the treated/control split and the batch draw
    metric: Literal["verdict_match", "exact_match"] = "verdict_match"  # how explanations are scored against behaviour
    n_boot: int = 2000  # bootstrap resamples for the DiD's CI


def validate_intervention(spec: InterventionSpec, where: str) -> InterventionSpec:
    """Range checks; a failure is a UserError naming `where` (a flag set or a spec key) and the rule."""
    if spec.steps < 1 or spec.n_boot < 1 or spec.mu <= 0 or spec.lam < 0 or spec.lr <= 0:
        raise UserError(f"{where}: steps and n_boot must be >= 1, mu > 0, lam >= 0 and lr > 0")
    return spec
