"""Training losses as small typed keyword-only functions; the trainer adds them with the config's weights:

    loss = w_explanation * explanation + λ * behavior_kl + μ * sycophancy_reduction + ρ * refusal_tuning

Choice distributions are softmaxes over the choice tokens' logits at the answer position (the same renormalised
distribution a BehaviorTable records), as log-probs [B, C].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def explanation(*, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the target tokens, mean over target tokens.

    `logits` [N, V] are the predictions *for* the N target tokens `targets` [N] (prompt positions are never passed
    in: `step.tree_terms` runs the LM head on target positions only).
    """
    return F.cross_entropy(logits.float(), targets)


def kl_to_reference(*, logp: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) over the choices, mean over rows. p_ref is a fixed distribution (no gradient)."""
    p_ref = p_ref.detach().float()
    return (p_ref * (torch.log(p_ref.clamp_min(1e-12)) - logp.float())).sum(-1).mean()


def behavior_kl(*, logp: torch.Tensor, p_m0: torch.Tensor) -> torch.Tensor:
    """The regulariser: KL(p_M0 ‖ p_θ) on x and x∖C rows; p_M0 comes from M0's BehaviorTable (no second model)."""
    return kl_to_reference(logp=logp, p_ref=p_m0)


def sycophancy_reduction(*, logp_hinted: torch.Tensor, p_no_hint: torch.Tensor) -> torch.Tensor:
    """Consistency training: pull the answer distribution on x (with the feature) toward the no-feature one.

    Target: M0's recorded no-feature distribution (fixed, from the BehaviorTable), so the objective has one
    stationary point that does not move as the model trains.
    """
    return kl_to_reference(logp=logp_hinted, p_ref=p_no_hint)


def refusal_tuning(*, logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy toward the wanted behaviour (comply on benign, refuse on harmful), on x and x∖C alike, so the
    context claim stops mattering. `target` [B] indexes the choices."""
    return F.nll_loss(logp.float(), target)
