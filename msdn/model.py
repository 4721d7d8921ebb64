"""MSDN: two mutual attention sub-nets over region features (Chen et al., CVPR 2022).

    attribute -> visual (A2V):  for attribute i and region r
        score  s[r, i] = v_i^T W_1 f_r          attention logit  v_i^T W_2 f_r, softmax over regions
        p_i = sum_r a[r, i] s[r, i]
    visual -> attribute (V2A):
        score  s'[r, i] = f_r^T W_1_1 v_i        attention logit  v_i^T W_2_1 f_r, softmax over attributes
        p'_i = sum_r a'[r, i] s'[r, i]
    class scores = att @ p + margin,  margin = +m for unseen classes, -m for seen ones

`f_r` are region features L2-normalised over channels, `v_i` the attribute vectors (initialised
from L2-normalised word vectors, trainable), `att` the L2-normalised class-attribute rows (frozen).

All four products share the region features, so they are computed as ONE matrix product
(B*R, C) @ (C, 4I): the projection matrix is formed from the small weights first (I*D*C work per
step, not per image). This is where the time goes; everything after it is element-wise.

The authors' forward also computes an ablation score, attention over attributes (W_3, W_3_1) and
attribute features that feed neither a loss nor a test-time output; they are left out here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


@dataclass
class MSDNOutput:
    """Class scores of both sub-nets (margin included, as the authors) and optional attention maps."""

    scores_a2v: Tensor  # (B, K)
    scores_v2a: Tensor  # (B, K)
    attention_a2v: Tensor | None = None  # (B, I, R): softmax over regions per attribute
    attention_v2a: Tensor | None = None  # (B, I, R): softmax over attributes per region


def regions_last_channel(features: Tensor) -> Tensor:
    """Accept (B, C, H, W) feature maps or (B, R, C) region features; return (B, R, C)."""
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    raise ValueError(
        f"region features must be (B, C, H, W) or (B, R, C); got a tensor of shape {tuple(features.shape)}"
    )


class _AttentionPooling(torch.autograd.Function):
    """(B, R, 4, I) fused product -> p_a2v, p_v2a (B, I) and both attention maps (B, R, I).

    The same softmax / multiply / sum chain autograd would differentiate, with a hand-written backward
    that writes the product's gradient straight into one (B, R, 4, I) buffer: autograd's own backward
    makes a tensor per op and then stacks the four slices, several passes over the largest activation.
    """

    @staticmethod
    def forward(ctx, fused: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        score_a2v, logit_a2v, score_v2a, logit_v2a = fused.unbind(2)
        attn_a2v = torch.softmax(logit_a2v, dim=1)  # over regions
        attn_v2a = torch.softmax(logit_v2a, dim=2)  # over attributes
        p_a2v = (attn_a2v * score_a2v).sum(1)
        p_v2a = (attn_v2a * score_v2a).sum(1)
        ctx.save_for_backward(fused, attn_a2v, attn_v2a)
        ctx.set_materialize_grads(False)  # unused outputs (the attention maps, usually) cost nothing
        return p_a2v, p_v2a, attn_a2v, attn_v2a

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_p_a2v, grad_p_v2a, grad_attn_a2v, grad_attn_v2a):
        fused, attn_a2v, attn_v2a = ctx.saved_tensors
        score_a2v, _, score_v2a, _ = fused.unbind(2)
        grad = torch.empty_like(fused, memory_format=torch.contiguous_format)
        g_score_a2v, g_logit_a2v, g_score_v2a, g_logit_v2a = grad.unbind(2)
        _pool_backward(score_a2v, attn_a2v, grad_p_a2v, grad_attn_a2v, 1, g_score_a2v, g_logit_a2v)
        _pool_backward(score_v2a, attn_v2a, grad_p_v2a, grad_attn_v2a, 2, g_score_v2a, g_logit_v2a)
        return grad


def _pool_backward(
    score: Tensor, attn: Tensor, grad_p: Tensor | None, grad_attn: Tensor | None, dim: int,
    grad_score: Tensor, grad_logit: Tensor,
) -> None:
    """Gradients of p = sum_r attn * score with attn = softmax(logit, dim), written into the two slots."""
    if grad_p is None:
        grad_p = score.new_zeros(score.shape[0], score.shape[2])
    gp = grad_p.unsqueeze(1)  # p sums over regions (dim 1)
    torch.mul(attn, gp, out=grad_score)
    torch.mul(score, gp, out=grad_logit)  # d/d attn for now
    if grad_attn is not None:
        grad_logit.add_(grad_attn)
    # softmax backward along `dim`: attn * (g - sum_dim attn * g)
    grad_logit.sub_((grad_logit * attn).sum(dim, keepdim=True)).mul_(attn)


class MSDN(nn.Module):
    """Mutually Semantic Distillation Network over pre-extracted region features."""

    def __init__(
        self,
        w2v_att: Tensor,
        class_att: Tensor,
        seen: Tensor,
        n_channels: int,
        *,
        normalize_v: bool = False,
        margin: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        """
        w2v_att: (I, D) attribute word vectors; class_att: (K, I) class attributes;
        seen: (K,) bool, True for seen (training) classes; n_channels: C of the region features.
        """
        super().__init__()
        w2v_att = torch.as_tensor(w2v_att, dtype=torch.float32)
        class_att = torch.as_tensor(class_att, dtype=torch.float32)
        seen = torch.as_tensor(seen, dtype=torch.bool)
        n_att, dim_v = w2v_att.shape
        if class_att.shape[1] != n_att:
            raise ValueError(f"class_att has {class_att.shape[1]} attributes but w2v_att has {n_att} rows")
        if seen.shape != (class_att.shape[0],):
            raise ValueError(f"seen must have one entry per class ({class_att.shape[0]}); got {tuple(seen.shape)}")
        self.normalize_v = normalize_v
        # Initialisation as in the authors' code: V from normalised word vectors, W_1 ~ N(0, 1), the rest zero.
        self.V = nn.Parameter(F.normalize(w2v_att, dim=1))
        self.W_1 = nn.Parameter(torch.randn(dim_v, n_channels, generator=generator))
        self.W_2 = nn.Parameter(torch.zeros(dim_v, n_channels))
        self.W_1_1 = nn.Parameter(torch.zeros(n_channels, dim_v))
        self.W_2_1 = nn.Parameter(torch.zeros(dim_v, n_channels))
        self.register_buffer("att", F.normalize(class_att, dim=1))
        self.register_buffer("seen", seen.clone())
        self.register_buffer("class_margin", torch.where(seen, -margin, margin).float())

    @property
    def n_attributes(self) -> int:
        return self.V.shape[0]

    @property
    def n_classes(self) -> int:
        return self.att.shape[0]

    def attribute_vectors(self) -> Tensor:
        return F.normalize(self.V, dim=1) if self.normalize_v else self.V

    def projection(self) -> Tensor:
        """(C, 4I): columns for A2V score, A2V attention, V2A score, V2A attention."""
        v = self.attribute_vectors()
        # Built as (4I, C) rows (a cheap contiguous cat), used through its transpose.
        return torch.cat([v @ self.W_1, v @ self.W_2, v @ self.W_1_1.T, v @ self.W_2_1], dim=0).T

    def forward(self, features: Tensor, return_attention: bool = False) -> MSDNOutput:
        regions = regions_last_channel(features)
        batch, n_regions, n_channels = regions.shape
        if n_channels != self.W_1.shape[1]:
            raise ValueError(f"expected {self.W_1.shape[1]} channels per region, got {n_channels}")
        projection = self.projection()
        n_att = self.n_attributes
        # Normalise in float32 (features may be stored in float16), in place on our own float32 copy:
        # one converted copy of the (B, R, C) features, not one per step of the normalisation.
        normalised = regions.float()
        inv_norm = 1.0 / torch.linalg.vector_norm(normalised, dim=-1, keepdim=True).clamp_min(1e-12)
        if normalised is regions or (regions.requires_grad and torch.is_grad_enabled()):
            normalised = normalised * inv_norm  # the caller's tensor, or one autograd must see unchanged
        else:
            normalised.mul_(inv_norm)
        # The one large product: (B*R, C) @ (C, 4I); autocast may lower it.
        fused = (normalised.reshape(-1, n_channels) @ projection).view(batch, n_regions, 4, n_att)
        fused = fused.float()  # softmax and sums in float32 even under autocast
        p_a2v, p_v2a, attn_a2v, attn_v2a = _AttentionPooling.apply(fused)
        att = self.att.float()
        out = MSDNOutput(
            scores_a2v=p_a2v @ att.T + self.class_margin,
            scores_v2a=p_v2a @ att.T + self.class_margin,
        )
        if return_attention:
            out.attention_a2v = attn_a2v.transpose(1, 2)
            out.attention_v2a = attn_v2a.transpose(1, 2)
        return out


def training_flops(batch: int, n_regions: int, n_channels: int, n_att: int, dim_v: int, n_classes: int) -> int:
    """Multiply-add FLOPs (x2) of one training step: forward products plus weight gradients.

    Region features need no gradient, so the backward pass of the big product costs one more
    product of the same size (the gradient of the projection), not two.
    """
    big = 2 * batch * n_regions * n_channels * 4 * n_att
    projection = 2 * 4 * n_att * dim_v * n_channels  # V @ W for the four weight matrices
    heads = 2 * 2 * batch * n_att * n_classes  # p @ att^T for both sub-nets
    # backward: grad of the projection (big), grads of V and W from it (2x projection), grad of p (heads)
    return 2 * big + 3 * projection + 2 * heads
