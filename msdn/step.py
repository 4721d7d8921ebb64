"""One MSDN training step and the optimiser it steps: the single definition of both.

`msdn.train.Trainer` and `benchmarks/bench_step.py` call these two functions, so a change to the
loss or the optimiser reaches the benchmark too instead of leaving it timing a stale copy.

    optimizer = build_optimizer(model, config)
    terms = train_step(model, optimizer, features, labels, config)  # one batch, one RMSprop step
"""
from __future__ import annotations

import torch

from .config import TrainConfig
from .losses import LossTerms, msdn_loss
from .model import MSDN


def build_optimizer(model: MSDN, config: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop as the authors use it; the attribute vectors V get their own learning rate (lr * lr_v_factor)."""
    return torch.optim.RMSprop(
        [
            {"params": [model.V], "lr": config.lr * config.lr_v_factor},
            {"params": [model.W_1, model.W_2, model.W_1_1, model.W_2_1], "lr": config.lr},
        ],
        lr=config.lr, alpha=config.rms_alpha, eps=config.rms_eps,
        weight_decay=config.weight_decay, momentum=config.momentum,
    )


def train_step(
    model: MSDN,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
) -> LossTerms:
    """Forward one batch (bf16 autocast when `config.amp`), the full MSDN loss, backward, one optimiser step.

    `features` (B, R, C) and `labels` (B,) class indices must already be on the model's device.
    Returns the loss terms, still on the device (no host sync here).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=config.amp):
        output = model(features)
    terms = msdn_loss(
        output, labels, model.class_margin, model.seen,
        lambda_cal=config.lambda_cal, lambda_dis=config.lambda_dis, ce_over=config.ce_over,
    )
    terms.total.backward()
    optimizer.step()
    return terms
