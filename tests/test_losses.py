"""Each loss term against values computed by hand."""
import math

import pytest
import torch

from msdn.losses import cross_entropy, distillation, jensen_shannon, msdn_loss, self_calibration, weighted_l1
from msdn.model import MSDNOutput

SEEN = torch.tensor([True, True, False])
MARGIN = torch.tensor([-1.0, -1.0, 1.0])


def test_cross_entropy_removes_margin_and_uses_all_classes():
    scores = torch.tensor([[1.0, 2.0, 0.0]])  # margin-free logits: [2, 3, -1]
    expected = -math.log(math.exp(3) / (math.exp(2) + math.exp(3) + math.exp(-1)))
    assert cross_entropy(scores, torch.tensor([1]), MARGIN, SEEN).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_over_seen_classes_only():
    scores = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    expected = (-math.log(math.exp(3) / (math.exp(2) + math.exp(3))) - math.log(0.5)) / 2
    got = cross_entropy(scores, torch.tensor([1, 0]), MARGIN, SEEN, over="seen")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="'all' or 'seen'"):
        cross_entropy(scores, torch.tensor([1, 0]), MARGIN, SEEN, over="unseen")


def test_self_calibration_is_minus_log_mean_unseen_mass():
    scores = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]])  # unseen mass 1/2 and 1/3
    expected = -math.log((0.5 + 1 / 3) / 2)
    assert self_calibration(scores, SEEN).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_l1_by_hand_and_zero_difference():
    a = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    loss = weighted_l1(a, b)  # (27 + 64) / 5 = 18.2, and 0 for the identical row
    assert loss.item() == pytest.approx(9.1, rel=1e-6)
    loss.backward()
    assert torch.isfinite(a.grad).all()
    assert torch.count_nonzero(a.grad[1]) == 0


def test_jensen_shannon_by_hand():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[math.log(3.0), 0.0]])  # softmax: [0.75, 0.25]
    p, q, m = [0.5, 0.5], [0.75, 0.25], [0.625, 0.375]
    kl = lambda x: sum(xi * math.log(xi / mi) for xi, mi in zip(x, m))
    assert jensen_shannon(a, b).item() == pytest.approx((kl(p) + kl(q)) / 2, rel=1e-5)
    assert jensen_shannon(a, a).item() == pytest.approx(0.0, abs=1e-7)
    # symmetric, bounded by log 2
    assert jensen_shannon(b, a).item() == pytest.approx(jensen_shannon(a, b).item(), rel=1e-6)
    assert jensen_shannon(torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])).item() <= math.log(2) + 1e-6


def test_distillation_is_weighted_l1_plus_js():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert distillation(a, b).item() == pytest.approx((weighted_l1(a, b) + jensen_shannon(a, b)).item(), rel=1e-6)


def test_total_loss_combines_terms_with_weights():
    s1 = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    s2 = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    terms = msdn_loss(MSDNOutput(s1, s2), labels, MARGIN, SEEN, lambda_cal=0.3, lambda_dis=0.07)
    ce = cross_entropy(s1, labels, MARGIN, SEEN) + cross_entropy(s2, labels, MARGIN, SEEN)
    cal = self_calibration(s1, SEEN) + self_calibration(s2, SEEN)
    dis = distillation(s1, s2)
    assert terms.ce.item() == pytest.approx(ce.item(), rel=1e-6)
    assert terms.cal.item() == pytest.approx(cal.item(), rel=1e-6)
    assert terms.dis.item() == pytest.approx(dis.item(), rel=1e-6)
    assert terms.total.item() == pytest.approx((ce + 0.3 * cal + 0.07 * dis).item(), rel=1e-6)
