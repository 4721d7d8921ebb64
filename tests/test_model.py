"""MSDN forward: shapes, layouts, initialisation, and agreement with a literal reading of the method."""
import pytest
import torch
import torch.nn.functional as F

from msdn.model import MSDN, regions_last_channel, training_flops


def make_model(n_att=6, dim_v=5, n_classes=4, n_channels=8, seed=0, randomize=True):
    g = torch.Generator().manual_seed(seed)
    w2v = torch.randn(n_att, dim_v, generator=g)
    att = torch.rand(n_classes, n_att, generator=g)
    seen = torch.tensor([True, False] * (n_classes // 2))
    model = MSDN(w2v, att, seen, n_channels, generator=g)
    if randomize:  # the authors' init zeroes three matrices; random weights exercise every path
        with torch.no_grad():
            for p in (model.W_2, model.W_1_1, model.W_2_1):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def literal_forward(model, fmap):
    """Per-region loops written from the method's equations, on (B, C, H, W) maps."""
    B, C = fmap.shape[:2]
    f = F.normalize(fmap.reshape(B, C, -1), dim=1)  # (B, C, R)
    V, W1, W2, W11, W21 = model.V, model.W_1, model.W_2, model.W_1_1, model.W_2_1
    I, R = V.shape[0], f.shape[2]
    s1 = torch.zeros(B, 2, model.n_classes, dtype=torch.float64)
    for b in range(B):
        s = torch.empty(I, R); a = torch.empty(I, R); s2 = torch.empty(R, I); a2 = torch.empty(I, R)
        for i in range(I):
            for r in range(R):
                fr = f[b, :, r]
                s[i, r] = V[i] @ W1 @ fr
                a[i, r] = V[i] @ W2 @ fr
                s2[r, i] = fr @ W11 @ V[i]
                a2[i, r] = V[i] @ W21 @ fr
        a = torch.softmax(a, dim=1)    # over regions
        a2 = torch.softmax(a2, dim=0)  # over attributes
        p1 = (a * s).sum(1)
        p2 = torch.stack([(a2[i] * s2[:, i]).sum() for i in range(I)])
        s1[b, 0] = (model.att @ p1 + model.class_margin).double()
        s1[b, 1] = (model.att @ p2 + model.class_margin).double()
    return s1


@pytest.mark.parametrize("n_channels,h,w", [(8, 2, 3), (16, 1, 1), (5, 4, 4)])
def test_forward_matches_literal_equations(n_channels, h, w):
    model = make_model(n_channels=n_channels)
    fmap = torch.rand(3, n_channels, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(fmap)
        ref = literal_forward(model, fmap)
    assert out.scores_a2v.shape == (3, 4) and out.scores_v2a.shape == (3, 4)
    torch.testing.assert_close(out.scores_a2v.double(), ref[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.scores_v2a.double(), ref[:, 1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_regions,n_channels", [(1, 3), (7, 32), (49, 64), (196, 20)])
def test_shapes_and_layouts(n_regions, n_channels):
    model = make_model(n_channels=n_channels, n_att=5, n_classes=6)
    x = torch.rand(4, n_regions, n_channels)
    out = model(x, return_attention=True)
    assert out.scores_a2v.shape == (4, 6) and out.scores_v2a.shape == (4, 6)
    assert out.attention_a2v.shape == (4, 5, n_regions) and out.attention_v2a.shape == (4, 5, n_regions)
    # A2V attention is a distribution over regions, V2A over attributes
    torch.testing.assert_close(out.attention_a2v.sum(2), torch.ones(4, 5))
    torch.testing.assert_close(out.attention_v2a.sum(1), torch.ones(4, n_regions))
    # (B, C, H, W) with H*W = R gives the same scores as the (B, R, C) layout
    fmap = x.transpose(1, 2).reshape(4, n_channels, n_regions, 1)
    torch.testing.assert_close(model(fmap).scores_a2v, out.scores_a2v)
    # float16 input (the feature cache) is normalised in float32
    half = model(x.half())
    torch.testing.assert_close(half.scores_v2a, out.scores_v2a, atol=2e-2, rtol=1e-2)


def test_attention_maps_not_computed_unless_asked():
    out = make_model()(torch.rand(2, 3, 8))
    assert out.attention_a2v is None and out.attention_v2a is None


def test_initialisation_as_authors():
    w2v = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    att = torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 1.0]])
    model = MSDN(w2v, att, torch.tensor([True, False]), 7)
    torch.testing.assert_close(model.V.data, torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(model.att, torch.tensor([[1.0, 0.0, 0.0], [2 / 3, 2 / 3, 1 / 3]]))
    torch.testing.assert_close(model.class_margin, torch.tensor([-1.0, 1.0]))
    for name in ("W_2", "W_1_1", "W_2_1"):
        assert torch.count_nonzero(getattr(model, name)) == 0, name
    assert model.W_1.shape == (2, 7) and model.W_1.std() > 0.3
    assert model.W_1_1.shape == (7, 2) and model.W_2_1.shape == (2, 7)
    # zero attention weights => uniform attention over regions at the start
    out = model(torch.rand(1, 5, 7), return_attention=True)
    torch.testing.assert_close(out.attention_a2v, torch.full((1, 3, 5), 0.2))


def test_normalize_v_only_changes_forward_when_asked():
    model = make_model()
    with torch.no_grad():
        model.V.mul_(3.0)
    x = torch.rand(2, 4, 8)
    plain = model(x).scores_a2v
    model.normalize_v = True
    normed = model(x).scores_a2v
    assert not torch.allclose(plain, normed)
    torch.testing.assert_close(model.attribute_vectors().norm(dim=1), torch.ones(6))


def test_bad_shapes_are_reported():
    model = make_model(n_channels=8)
    with pytest.raises(ValueError, match="expected 8 channels"):
        model(torch.rand(2, 4, 9))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, R, C\)"):
        regions_last_channel(torch.rand(3, 8))
    with pytest.raises(ValueError, match="one entry per class"):
        MSDN(torch.rand(3, 2), torch.rand(4, 3), torch.tensor([True, False]), 5)


def test_gradients_reach_every_parameter():
    model = make_model()
    out = model(torch.rand(3, 4, 8))
    (out.scores_a2v.sum() + out.scores_v2a.pow(2).sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_training_flops_hand_count():
    # B=1, R=1, C=1, I=1, D=1, K=1: big product 2*4 = 8 (x2), projection 2*4 = 8 (x3), heads 2*2 = 4 (x2)
    assert training_flops(1, 1, 1, 1, 1, 1) == 2 * 8 + 3 * 8 + 2 * 4
    cub = training_flops(50, 196, 2048, 312, 300, 200)
    assert cub == 2 * (2 * 50 * 196 * 2048 * 4 * 312) + 3 * (2 * 4 * 312 * 300 * 2048) + 2 * (2 * 2 * 50 * 312 * 200)


def test_gradients_match_the_literal_equations():
    """The hand-written backward of the attention pooling gives autograd's gradients of the plain equations."""
    model = make_model(n_channels=6, n_att=4, n_classes=4, dim_v=3)
    fmap = torch.rand(2, 6, 2, 2, generator=torch.Generator().manual_seed(5))
    weights = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(6))
    out = model(fmap)
    (out.scores_a2v * weights[:, 0] + out.scores_v2a * weights[:, 1]).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = literal_forward(model, fmap)
    (ref * weights.double()).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-4, rtol=1e-3, msg=name)
