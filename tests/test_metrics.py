"""GZSL metrics on a hand-worked example; the calibration curve and the settings grid against separate evaluations."""
import numpy as np
import pytest

from msdn.metrics import (
    GRID_KEYS, SUMMARY_KEYS, EvalGrid, calibrated_predictions, calibration_curve, fuse_scores, grid_evaluate,
    gzsl_evaluate, harmonic_mean, per_class_accuracy, zsl_accuracy,
)

UNSEEN = np.array([False, False, True, True])  # classes 0, 1 seen; 2, 3 unseen
SEEN_SCORES = np.array([[3, 1, 2, 0], [1, 2, 0, 0], [0, 5, 1, 1]], dtype=np.float32)
SEEN_LABELS = np.array([0, 0, 1])
UNSEEN_SCORES = np.array([[2, 0, 1, 0], [0, 0, 1, 3], [4, 0, 2, 1]], dtype=np.float32)
UNSEEN_LABELS = np.array([2, 3, 3])


def evaluate_fused(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen, gamma, gammas, grid=None):
    """gzsl_evaluate of already fused scores: both sub-nets given the same scores, alpha 1 (1 * x + 0 * x == x)."""
    return gzsl_evaluate(seen_scores, seen_scores, seen_labels, unseen_scores, unseen_scores, unseen_labels, unseen,
                         alpha=1.0, gamma=gamma, gammas=gammas, grid=grid)


def test_per_class_accuracy_is_mean_over_classes_not_images():
    # class 0: 1 of 1 right; class 1: 1 of 3 right -> (1 + 1/3) / 2, not 2/4
    assert per_class_accuracy(np.array([0, 1, 0, 0]), np.array([0, 1, 1, 1])) == pytest.approx(2 / 3)
    assert per_class_accuracy(np.array([], dtype=int), np.array([], dtype=int)) == 0.0


def test_harmonic_mean():
    assert harmonic_mean(0.75, 0.25) == pytest.approx(0.375)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_hand_worked_example_without_calibration():
    r = evaluate_fused(SEEN_SCORES, SEEN_LABELS, UNSEEN_SCORES, UNSEEN_LABELS, UNSEEN, 0.0, np.array([0.0, 2.0]))
    # seen: class 0 one of two right, class 1 right -> 0.75; unseen: class 2 never right, class 3 one of two
    assert (r.S, r.U) == (pytest.approx(0.75), pytest.approx(0.25))
    assert r.H == pytest.approx(0.375)
    # ZSL among classes 2, 3 only: class 2 right, class 3 one of two
    assert r.zsl_acc == pytest.approx(0.75)


def test_hand_worked_example_with_calibration_and_ties():
    # gamma = 2: image [1,2,0,0] ties 2 vs 2 -> lower class id (1); image [4,0,2,1] ties 4 vs 4 -> class 0
    r = evaluate_fused(SEEN_SCORES, SEEN_LABELS, UNSEEN_SCORES, UNSEEN_LABELS, UNSEEN, 2.0, np.array([0.0, 2.0]))
    assert (r.S, r.U, r.H) == (pytest.approx(0.5), pytest.approx(0.75), pytest.approx(0.6))
    np.testing.assert_array_equal(calibrated_predictions(UNSEEN_SCORES, UNSEEN, 2.0), [2, 3, 0])
    np.testing.assert_allclose(r.curve.seen, [0.75, 0.5])
    np.testing.assert_allclose(r.curve.unseen, [0.25, 0.75])
    np.testing.assert_allclose(r.curve.harmonic, [0.375, 0.6])
    # no study grid: the grid is the configured alpha x the gammas, its best the curve's best gamma
    summary = r.summary()
    assert (summary["grid_alpha"], summary["grid_gamma"], summary["H_grid"]) == (1.0, 2.0, pytest.approx(0.6))
    assert (summary["S_grid"], summary["U_grid"]) == (pytest.approx(0.5), pytest.approx(0.75))


def test_zsl_accuracy_ignores_seen_classes():
    scores = np.array([[9.0, 0.0, 1.0, 2.0]])
    assert zsl_accuracy(scores, np.array([3]), UNSEEN) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_equals_separate_evaluations(seed):
    rng = np.random.default_rng(seed)
    n_classes = 12
    unseen = np.zeros(n_classes, bool)
    unseen[rng.choice(n_classes, 5, replace=False)] = True
    seen_ids, unseen_ids = np.flatnonzero(~unseen), np.flatnonzero(unseen)
    seen_labels = rng.choice(seen_ids, 300)
    unseen_labels = rng.choice(unseen_ids, 200)
    # informative but noisy scores, biased towards seen classes as a trained model's are
    def scores_for(labels):
        s = rng.normal(size=(labels.size, n_classes)).astype(np.float32)
        s[np.arange(labels.size), labels] += 1.5
        s[:, ~unseen] += 1.0
        return s
    seen_scores, unseen_scores = scores_for(seen_labels), scores_for(unseen_labels)
    gammas = np.linspace(-3, 5, 33)
    curve = calibration_curve(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen, gammas)
    for i, g in enumerate(gammas):
        s = per_class_accuracy(calibrated_predictions(seen_scores, unseen, g), seen_labels)
        u = per_class_accuracy(calibrated_predictions(unseen_scores, unseen, g), unseen_labels)
        assert curve.seen[i] == pytest.approx(s, abs=1e-12)
        assert curve.unseen[i] == pytest.approx(u, abs=1e-12)
        assert curve.harmonic[i] == pytest.approx(harmonic_mean(s, u), abs=1e-12)
    # calibration must matter on such scores: S falls and U rises with gamma
    assert curve.seen[0] > curve.seen[-1] and curve.unseen[0] < curve.unseen[-1]


def _subnet_scores(rng, labels, unseen):
    """Two informative sub-nets that disagree: a2v knows some classes better, v2a others; seen-biased."""
    n, k = labels.size, unseen.size
    strong = rng.random(k) < 0.5
    out = []
    for boost in (np.where(strong, 2.0, 0.3), np.where(strong, 0.3, 2.0)):
        s = rng.normal(size=(n, k)).astype(np.float32)
        s[np.arange(n), labels] += boost[labels].astype(np.float32)
        s[:, ~unseen] += 1.0
        out.append(s)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_settings_grid_equals_separate_evaluations(seed):
    rng = np.random.default_rng(seed)
    unseen = np.zeros(10, bool)
    unseen[rng.choice(10, 4, replace=False)] = True
    seen_labels = rng.choice(np.flatnonzero(~unseen), 200)
    unseen_labels = rng.choice(np.flatnonzero(unseen), 150)
    seen_a2v, seen_v2a = _subnet_scores(rng, seen_labels, unseen)
    unseen_a2v, unseen_v2a = _subnet_scores(rng, unseen_labels, unseen)
    alphas, gammas = np.round(np.linspace(0, 1, 11), 10), np.round(np.linspace(-2, 4, 25), 10)
    grid = grid_evaluate(seen_a2v, seen_v2a, seen_labels, unseen_a2v, unseen_v2a, unseen_labels, unseen, alphas, gammas)
    assert grid.harmonic.shape == (11, 25)
    for i, a in enumerate(alphas):
        seen_fused, unseen_fused = fuse_scores(seen_a2v, seen_v2a, a), fuse_scores(unseen_a2v, unseen_v2a, a)
        for j, g in enumerate(gammas):
            single = evaluate_fused(seen_fused, seen_labels, unseen_fused, unseen_labels, unseen, g, np.array([g]))
            assert (grid.seen[i, j], grid.unseen[i, j]) == (pytest.approx(single.S, abs=1e-12),
                                                           pytest.approx(single.U, abs=1e-12))
            assert grid.harmonic[i, j] == pytest.approx(single.H, abs=1e-12)
    # both settings matter on such scores, so the grid's best beats every single row and column
    i, j = grid.best_index
    assert grid.harmonic[i, j] == grid.harmonic.max() > max(grid.harmonic[:, 0].max(), grid.harmonic[0].max())
    assert 0 < i < 10, "fusing both sub-nets should beat either alone here"
    best = grid.at_best()
    assert list(best) == list(GRID_KEYS)
    assert (best["grid_alpha"], best["grid_gamma"], best["H_grid"]) == (alphas[i], gammas[j], grid.harmonic[i, j])


def test_settings_grid_picks_the_first_maximum_and_fuses_as_documented():
    a2v = np.array([[1.0, 0.0, 0.0]], np.float32)
    v2a = np.array([[0.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(fuse_scores(a2v, v2a, 0.25), [[0.25, 0.75, 0.0]])
    unseen = np.array([False, False, True])
    # every setting scores H = 0 here (no unseen image): the first maximum is the smallest alpha and gamma
    grid = grid_evaluate(a2v, v2a, np.array([0]), a2v[:0], v2a[:0], np.array([], int), unseen,
                         np.array([0.0, 0.5, 1.0]), np.array([-1.0, 0.0, 1.0]))
    assert grid.best_index == (0, 0) and grid.at_best()["grid_alpha"] == 0.0


def test_eval_grid_axes_keep_the_configured_value_of_an_unswept_setting():
    alphas, gammas = EvalGrid(alphas=None, gammas=(0.0, 1.0)).axes(0.7, 2.0)
    assert alphas.tolist() == [0.7] and gammas.tolist() == [0.0, 1.0]
    assert [a.tolist() for a in EvalGrid(None, None).axes(0.7, 2.0)] == [[0.7], [2.0]]


def test_summary_always_has_the_grid_keys_and_no_other_best():
    r = evaluate_fused(SEEN_SCORES, SEEN_LABELS, UNSEEN_SCORES, UNSEEN_LABELS, UNSEEN, 2.0, np.array([0.0, 2.0]),
                       grid=EvalGrid(None, None))
    assert list(r.summary()) == list(SUMMARY_KEYS) and set(GRID_KEYS) <= set(SUMMARY_KEYS)
    # a grid of the configured point only: its best is the configured figures
    assert (r.summary()["H_grid"], r.summary()["grid_gamma"]) == (r.H, 2.0)


@pytest.mark.parametrize("grid, from_the_grid", [
    (None, True),  # no study grid: the configured alpha x the gammas; the curve is its row
    (EvalGrid(alphas=(0.0, 0.3, 0.6, 1.0), gammas=(-1.0, 0.0, 0.5, 1.5, 3.0)), True),  # a study's grid: its row at 0.3
    (EvalGrid(alphas=(0.0, 0.5), gammas=(-1.0, 0.0, 1.0)), False),  # 0.3 is not on it: one curve over the gammas
    (EvalGrid(alphas=(0.0, 0.3), gammas=None), False),  # gamma searched per trial: one curve over the gammas
])
def test_the_calibration_curve_is_the_grids_row_at_the_configured_alpha(grid, from_the_grid):
    """The curve the plots draw equals calibration_curve computed on its own at the configured alpha."""
    rng = np.random.default_rng(5)
    unseen = np.zeros(10, bool)
    unseen[rng.choice(10, 4, replace=False)] = True
    seen_labels = rng.choice(np.flatnonzero(~unseen), 120)
    unseen_labels = rng.choice(np.flatnonzero(unseen), 90)
    seen_a2v, seen_v2a = _subnet_scores(rng, seen_labels, unseen)
    unseen_a2v, unseen_v2a = _subnet_scores(rng, unseen_labels, unseen)
    alpha, gammas = 0.3, np.linspace(-2, 4, 13)
    r = gzsl_evaluate(seen_a2v, seen_v2a, seen_labels, unseen_a2v, unseen_v2a, unseen_labels, unseen, alpha=alpha,
                      gamma=2.0, gammas=gammas, grid=grid)
    curve_gammas = (gammas if grid is None else np.asarray(grid.gammas)) if from_the_grid else gammas
    alone = calibration_curve(fuse_scores(seen_a2v, seen_v2a, alpha), seen_labels,
                              fuse_scores(unseen_a2v, unseen_v2a, alpha), unseen_labels, unseen, curve_gammas)
    for name in ("gammas", "seen", "unseen", "harmonic"):
        np.testing.assert_array_equal(getattr(r.curve, name), getattr(alone, name))
    assert np.shares_memory(r.curve.harmonic, r.grid.harmonic) == from_the_grid  # the grid's row: computed once
    assert (r.grid.curve_at(alpha) is not None) == (grid is None or alpha in (grid.alphas or (alpha,)))
    if grid is None:  # what the gamma-only sweep reported: its best H and the first gamma reaching it
        best = int(np.argmax(alone.harmonic))
        assert (r.summary()["H_grid"], r.summary()["grid_gamma"], r.summary()["grid_alpha"]) == (
            alone.harmonic[best], gammas[best], alpha)
