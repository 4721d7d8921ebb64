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
        return torch.cat(
            [(v @ self.W_1).T, (v @ self.W_2).T, self.W_1_1 @ v.T, (v @ self.W_2_1).T], dim=1
        )

    def forward(self, features: Tensor, return_attention: bool = False) -> MSDNOutput:
        regions = regions_last_channel(features)
        batch, n_regions, n_channels = regions.shape
        if n_channels != self.W_1.shape[1]:
            raise ValueError(f"expected {self.W_1.shape[1]} channels per region, got {n_channels}")
        projection = self.projection()
        # Normalise in float32 (features may be stored in float16); autocast may lower the product.
        regions = F.normalize(regions.float(), dim=-1)
        n_att = self.n_attributes
        # The one large product: (B*R, C) @ (C, 4I).
        fused = (regions.reshape(-1, n_channels) @ projection).view(batch, n_regions, 4, n_att)
        fused = fused.float()  # softmax and sums in float32 even under autocast
        score_a2v, logit_a2v, score_v2a, logit_v2a = fused.unbind(2)
        attn_a2v = torch.softmax(logit_a2v, dim=1)  # over regions
        attn_v2a = torch.softmax(logit_v2a, dim=2)  # over attributes
        p_a2v = (attn_a2v * score_a2v).sum(1)
        p_v2a = (attn_v2a * score_v2a).sum(1)
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
