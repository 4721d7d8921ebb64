"""MSDN's training objective, one function per term.

    total = sum over both sub-nets of [ CE + lambda_cal * self-calibration ]
            + lambda_dis * semantic distillation(S_a2v, S_v2a)

Scores passed in include the seen/unseen margin, as the model returns them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import MSDNOutput


@dataclass
class LossTerms:
    total: Tensor
    ce: Tensor  # both sub-nets' cross-entropy, summed
    cal: Tensor  # both sub-nets' self-calibration loss, summed (unweighted)
    dis: Tensor  # distillation loss (unweighted)


def cross_entropy(scores: Tensor, labels: Tensor, class_margin: Tensor, seen: Tensor, over: str = "all") -> Tensor:
    """Cross-entropy on the margin-free scores, over all classes (authors' GZSL setting) or seen classes."""
    logits = scores - class_margin
    if over == "seen":
        seen_index = torch.cumsum(seen.long(), 0) - 1  # global class id -> position among seen classes
        return F.cross_entropy(logits[:, seen], seen_index[labels])
    if over != "all":
        raise ValueError(f"cross-entropy over {over!r}: expected 'all' or 'seen'")
    return F.cross_entropy(logits, labels)


def self_calibration(scores: Tensor, seen: Tensor) -> Tensor:
    """-log of the batch-mean softmax mass on unseen classes (margin included): keeps unseen classes alive."""
    unseen_mass = torch.softmax(scores, dim=1)[:, ~seen].sum(1)
    return -torch.log(unseen_mass.mean())


def weighted_l1(scores_a: Tensor, scores_b: Tensor) -> Tensor:
    """Batch mean of sum_k |d_k|^3 / ||d||_2 with d = a - b; zero where d = 0 (no 0/0 in the gradient)."""
    diff = scores_a - scores_b
    squared_norm = diff.pow(2).sum(1)
    nonzero = squared_norm > 0
    norm = torch.sqrt(torch.where(nonzero, squared_norm, torch.ones_like(squared_norm)))
    per_sample = diff.abs().pow(3).sum(1) / norm
    return torch.where(nonzero, per_sample, torch.zeros_like(per_sample)).mean()


def jensen_shannon(scores_a: Tensor, scores_b: Tensor) -> Tensor:
    """JS divergence of softmax(a) and softmax(b): KL summed over classes, averaged over the batch."""
    log_p = torch.log_softmax(scores_a, dim=1)
    log_q = torch.log_softmax(scores_b, dim=1)
    log_m = torch.log((log_p.exp() + log_q.exp()) / 2)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(1)
    return ((kl_p + kl_q) / 2).mean()


def distillation(scores_a: Tensor, scores_b: Tensor) -> Tensor:
    """Semantic distillation between the two sub-nets: weighted L1 plus Jensen-Shannon divergence."""
    return weighted_l1(scores_a, scores_b) + jensen_shannon(scores_a, scores_b)


def msdn_loss(
    output: MSDNOutput,
    labels: Tensor,
    class_margin: Tensor,
    seen: Tensor,
    *,
    lambda_cal: float,
    lambda_dis: float,
    ce_over: str = "all",
) -> LossTerms:
    """The full objective for one batch; `labels` are class indices into the model's classes."""
    ce = torch.zeros((), device=labels.device)
    cal = torch.zeros((), device=labels.device)
    for scores in (output.scores_a2v, output.scores_v2a):
        ce = ce + cross_entropy(scores, labels, class_margin, seen, ce_over)
        cal = cal + self_calibration(scores, seen)
    dis = distillation(output.scores_a2v, output.scores_v2a)
    return LossTerms(total=ce + lambda_cal * cal + lambda_dis * dis, ce=ce, cal=cal, dis=dis)
