"""Loading the authors' state dicts and our checkpoints; fused scores."""
import numpy as np
import pytest
import torch

from msdn.cli import CheckpointError
from msdn.evaluate import fused_scores, load_checkpoint_model, model_from_authors_state_dict

I, D, C, K = 7, 6, 10, 5


def authors_state_dict(seed=0, with_backbone=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    mask_bias = torch.ones(1, K)
    mask_bias[0, [0, 2, 3]] = -1  # classes 0, 2, 3 seen
    sd = {
        "V": rnd(I, D), "att": torch.nn.functional.normalize(torch.rand(K, I, generator=g), dim=1),
        "W_1": rnd(D, C), "W_2": rnd(D, C), "W_3": rnd(D, C),
        "W_1_1": rnd(C, D), "W_2_1": rnd(D, C), "W_3_1": rnd(C, D),
        "weight_ce": torch.eye(K), "bias": torch.tensor(1), "mask_bias": mask_bias, "prob_prune": torch.tensor(0),
    }
    if with_backbone:
        sd["resnet101.0.weight"] = rnd(4, 3, 7, 7)
    return sd


def reference_scores(sd, fmap, normalize_v=False):
    """The authors' forward pass as we read it, in einsum notation (margin = mask_bias * bias)."""
    B, Cc, H, W = fmap.shape
    Fs = torch.nn.functional.normalize(fmap.reshape(B, Cc, H * W), dim=1)
    V = torch.nn.functional.normalize(sd["V"], dim=1) if normalize_v else sd["V"]
    margin = sd["mask_bias"] * sd["bias"]
    S = torch.einsum("iv,vf,bfr->bir", V, sd["W_1"], Fs)
    A = torch.softmax(torch.einsum("iv,vf,bfr->bir", V, sd["W_2"], Fs), dim=-1)
    s1 = torch.einsum("ki,bi->bk", sd["att"], torch.einsum("bir,bir->bi", A, S)) + margin
    S2 = torch.einsum("bfr,fv,iv->bri", Fs, sd["W_1_1"], V)
    A2 = torch.softmax(torch.einsum("iv,vf,bfr->bir", V, sd["W_2_1"], Fs), dim=1)
    s2 = torch.einsum("ki,bi->bk", sd["att"], torch.einsum("bir,bri->bi", A2, S2)) + margin
    return s1, s2


@pytest.mark.parametrize("normalize_v", [False, True])
def test_authors_state_dict_gives_their_scores(tmp_path, normalize_v):
    sd = authors_state_dict()
    path = tmp_path / "msdn_cub.pth"
    torch.save(sd, path)
    from msdn.config import default_config
    model, ckpt = load_checkpoint_model(path, default_config("awa2" if normalize_v else "cub"))
    assert ckpt == {}
    fmap = torch.rand(4, C, 3, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(fmap)
    ref1, ref2 = reference_scores(sd, fmap, normalize_v)
    torch.testing.assert_close(out.scores_a2v, ref1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.scores_v2a, ref2, atol=1e-4, rtol=1e-4)
    assert model.seen.tolist() == [True, False, True, True, False]


def test_fused_scores_remove_margin_and_keep_order():
    sd = authors_state_dict(with_backbone=False)
    model = model_from_authors_state_dict(sd)
    features = np.random.default_rng(0).random((9, 4, C)).astype(np.float16)
    idx = np.array([5, 1, 7, 2])
    fused = fused_scores(model, features, idx, alpha=0.7, batch_size=3)
    with torch.no_grad():
        out = model(torch.from_numpy(features[idx]))
    expected = 0.7 * out.scores_a2v + 0.3 * out.scores_v2a - model.class_margin
    np.testing.assert_allclose(fused, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_missing_authors_keys_and_foreign_files_are_reported(tmp_path):
    sd = authors_state_dict()
    del sd["W_2_1"]
    with pytest.raises(CheckpointError, match=r"the state dict: the authors' MSDN state dict lacks \['W_2_1'\]"):
        model_from_authors_state_dict(sd)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="other.pt.*not an msdn-tune checkpoint"):
        load_checkpoint_model(other)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint_model(tmp_path / "nope.pt")


def test_evaluation_grid_equals_separate_evaluations_of_the_model(synthetic_root):
    """One forward pass with the settings grid gives, at each (alpha, gamma), what evaluating there gives."""
    from msdn.config import default_config
    from msdn.evaluate import evaluate_model
    from msdn.metrics import EvalGrid
    from msdn.train import Trainer

    trainer = Trainer(default_config("synthetic", data_root=str(synthetic_root), protocol="val", epochs=1,
                                     device="cpu"), progress=None)
    trainer.train_epoch()
    split = trainer.split
    args = (trainer.model, trainer.bench.features, split.labels, split.eval_seen_idx, split.eval_unseen_idx)
    grid = EvalGrid(alphas=(0.0, 0.9, 1.0), gammas=(1.0, 2.0, 3.0))
    result = evaluate_model(*args, alpha=0.9, gamma=2.0, gammas=np.array([2.0]), grid=grid)
    assert (result.grid.alphas.tolist(), result.grid.gammas.tolist()) == (list(grid.alphas), list(grid.gammas))
    assert np.ptp(result.grid.harmonic) > 0.05, "the settings must matter for this test to mean anything"
    for i, a in enumerate(grid.alphas):
        for j, g in enumerate(grid.gammas):
            single = evaluate_model(*args, alpha=a, gamma=g, gammas=np.array([g]))
            assert (result.grid.seen[i, j], result.grid.unseen[i, j], result.grid.harmonic[i, j]) == (
                single.S, single.U, single.H), (a, g)
    assert (result.S, result.U, result.H) == (result.grid.seen[1, 1], result.grid.unseen[1, 1],
                                              result.grid.harmonic[1, 1])
    assert result.summary()["H_grid"] == result.grid.harmonic.max()
    assert single.grid.harmonic.shape == (1, 1)  # no grid given: the configured alpha x the gammas given
    alone = evaluate_model(*args, alpha=0.5, gamma=1.0, gammas=np.array([1.0]), grid=EvalGrid(None, None))
    assert alone.grid.harmonic.shape == (1, 1) and alone.summary()["H_grid"] == alone.H


def test_evaluate_json_reports_the_ausuc_of_the_checkpoints_scores(tmp_path, synthetic_root, capsys):
    """`msdn.evaluate --json` on a checkpoint: AUSUC equals the brute force (tests/test_ausuc.py) of the same
    model's fused scores at the checkpoint's alpha, on the split it evaluates."""
    import json

    from test_ausuc import brute_force_ausuc

    from msdn.config import default_config
    from msdn.evaluate import main, subnet_scores
    from msdn.metrics import fuse_scores
    from msdn.train import Trainer

    config = default_config("synthetic", data_root=str(synthetic_root), epochs=1, device="cpu", alpha=0.7)
    trainer = Trainer(config, progress=None)
    trainer.train_epoch()
    trainer.epoch += 1
    trainer.save(tmp_path / "run.pt")
    assert main(["--dataset", "synthetic", "--data-root", str(synthetic_root), "--checkpoint",
                 str(tmp_path / "run.pt"), "--device", "cpu", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    split = trainer.split
    scores = [fuse_scores(*subnet_scores(trainer.model, trainer.bench.features, idx,
                                         batch_size=config.eval_batch_size), 0.7)
              for idx in (split.eval_seen_idx, split.eval_unseen_idx)]
    area, u, s, _ = brute_force_ausuc(scores[0], split.labels[split.eval_seen_idx], scores[1],
                                      split.labels[split.eval_unseen_idx], ~split.seen)
    assert 0.0 < reported["AUSUC"] < 1.0 and reported["AUSUC"] == pytest.approx(area, abs=1e-9)
    assert u[-1] > 0.0 and s[0] > 0.0  # a model that learnt something: the curve spans both axes
