import math

import torch

from introspect.train import objectives


def test_explanation_ce_hand_value() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    hand = -(torch.log_softmax(logits[0], -1)[0] + torch.log_softmax(logits[1], -1)[2]) / 2
    assert torch.isclose(objectives.explanation(logits=logits, targets=targets), hand)


def test_kl_zero_at_reference_and_hand_value() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    assert objectives.behavior_kl(logp=p.log(), p_m0=p).abs() < 1e-7
    q = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    hand = (0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)) / 2
    assert math.isclose(float(objectives.behavior_kl(logp=q.log(), p_m0=p)), hand, rel_tol=1e-5)


def test_sycophancy_moves_hinted_toward_no_hint() -> None:
    p_no_hint = torch.tensor([[0.1, 0.1, 0.7, 0.1]])
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]], requires_grad=True)  # hinted: prefers A
    opt = torch.optim.SGD([logits], lr=0.5)
    before = float(objectives.sycophancy_reduction(logp_hinted=torch.log_softmax(logits, -1), p_no_hint=p_no_hint).detach())
    for _ in range(20):
        loss = objectives.sycophancy_reduction(logp_hinted=torch.log_softmax(logits, -1), p_no_hint=p_no_hint)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(objectives.sycophancy_reduction(logp_hinted=torch.log_softmax(logits, -1), p_no_hint=p_no_hint).detach())
    probs = torch.softmax(logits, -1)[0]
    assert after < before / 4 and probs.argmax() == 2


def test_reference_gets_no_gradient() -> None:
    p_ref = torch.tensor([[0.6, 0.4]], requires_grad=True)
    logp = torch.log_softmax(torch.tensor([[0.0, 1.0]], requires_grad=True), -1)
    objectives.behavior_kl(logp=logp, p_m0=p_ref).backward()
    assert p_ref.grad is None
