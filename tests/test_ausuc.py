"""The seen-unseen curve and AUSUC: a hand-worked example with a tie, and an independent brute force.

The brute force knows nothing of the sweep: it evaluates S and U with the ordinary calibrated arg-max at
the midpoint of every pair of neighbouring margins (and beyond both ends), then integrates with the
trapezoid rule.
"""
import numpy as np
import pytest

from msdn.metrics import (calibrated_predictions, class_accuracies, gzsl_evaluate, per_class_accuracy,
                          seen_unseen_curve, zsl_accuracy)

UNSEEN = np.array([False, False, True, True])  # classes 0, 1 seen; 2, 3 unseen
SEEN_SCORES = np.array([[3, 1, 2, 0], [1, 2, 0, 0], [0, 5, 1, 1]], dtype=np.float32)
SEEN_LABELS = np.array([0, 0, 1])
UNSEEN_SCORES = np.array([[2, 0, 1, 0], [0, 0, 1, 3], [4, 0, 2, 1]], dtype=np.float32)
UNSEEN_LABELS = np.array([2, 3, 3])


def brute_force_ausuc(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen):
    margins = []
    for scores in (seen_scores, unseen_scores):
        margins.extend(scores[:, ~unseen].max(1).astype(np.float64) - scores[:, unseen].max(1).astype(np.float64))
    cuts = np.unique(margins)
    gammas = np.concatenate([[cuts[0] - 1.0], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1.0]])
    s = [per_class_accuracy(calibrated_predictions(seen_scores, unseen, g), seen_labels) for g in gammas]
    u = [per_class_accuracy(calibrated_predictions(unseen_scores, unseen, g), unseen_labels) for g in gammas]
    area = sum((u[k + 1] - u[k]) * (s[k] + s[k + 1]) / 2 for k in range(len(gammas) - 1))
    return area, np.array(u), np.array(s), gammas


def test_hand_worked_example_with_a_seen_and_an_unseen_image_on_one_breakpoint():
    curve = seen_unseen_curve(SEEN_SCORES, SEEN_LABELS, UNSEEN_SCORES, UNSEEN_LABELS, UNSEEN)
    # margins that change a prediction: unseen image 2 at -3 (U +1/4); at 1 seen image 1 (S -1/4) and
    # unseen image 1 (U +1/2) together; seen image 3 at 4 (S -1/2)
    np.testing.assert_allclose(curve.breakpoints, [-3, 1, 4])
    np.testing.assert_allclose(curve.unseen_acc, [0, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(curve.seen_acc, [0.75, 0.75, 0.5, 0])
    # 1/4 * 3/4 + the trapezoid 1/2 * (3/4 + 1/2) / 2 at the tie
    assert curve.ausuc == pytest.approx(0.5)
    assert curve.at(0.0) == pytest.approx((0.25, 0.75))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_ausuc_equals_the_brute_force_on_random_scores(seed, ties):
    rng = np.random.default_rng(seed)
    n_classes = 9
    unseen = np.zeros(n_classes, bool)
    unseen[rng.choice(n_classes, 4, replace=False)] = True
    seen_ids, unseen_ids = np.flatnonzero(~unseen), np.flatnonzero(unseen)

    def scores(n):  # integer scores in a small range: many equal margins, seen and unseen ones among them
        return (rng.integers(0, 6, (n, n_classes)) if ties else rng.normal(size=(n, n_classes))).astype(np.float32)

    seen_scores, unseen_scores = scores(70), scores(50)
    seen_labels, unseen_labels = rng.choice(seen_ids, 70), rng.choice(unseen_ids, 50)
    curve = seen_unseen_curve(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen)
    area, u, s, gammas = brute_force_ausuc(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen)
    assert curve.ausuc == pytest.approx(area, abs=1e-12)
    assert 0.0 < curve.ausuc < 1.0
    # the ends: (0, S at -inf) and (ZSL accuracy, 0)
    assert curve.unseen_acc[0] == 0.0 and curve.seen_acc[-1] == pytest.approx(0.0, abs=1e-12)
    assert curve.unseen_acc[-1] == pytest.approx(zsl_accuracy(unseen_scores, unseen_labels, unseen))
    # every state the brute force visits is a state of the curve, at the same gamma
    for g, ui, si in zip(gammas, u, s):
        assert curve.at(g) == pytest.approx((ui, si))
    if ties:
        assert len(curve.breakpoints) < 120  # the case the trapezoid rule is for
    r = gzsl_evaluate(seen_scores, seen_scores, seen_labels, unseen_scores, unseen_scores, unseen_labels, unseen,
                      alpha=0.5, gamma=0.37, gammas=np.array([0.37]))
    assert curve.at(0.37) == pytest.approx((r.U, r.S))


def test_a_perfect_classifier_has_area_one_and_a_blind_one_zero():
    unseen = np.array([False, True])
    right = np.array([[1.0, 0.0]]), np.array([0]), np.array([[0.0, 1.0]]), np.array([1])
    assert seen_unseen_curve(*right, unseen).ausuc == pytest.approx(1.0)
    wrong = np.array([[0.0, 1.0]]), np.array([0]), np.array([[1.0, 0.0]]), np.array([1])
    assert seen_unseen_curve(*wrong, unseen).ausuc == 0.0


def test_class_accuracies_are_what_the_per_class_mean_averages():
    predictions, labels = np.array([0, 1, 0, 0, 2]), np.array([0, 1, 1, 1, 2])
    acc = class_accuracies(predictions, labels)
    np.testing.assert_array_equal(acc.classes, [0, 1, 2])
    np.testing.assert_array_equal(acc.images, [1, 3, 1])
    np.testing.assert_allclose(acc.accuracy, [1, 1 / 3, 1])
    assert acc.accuracy.mean() == pytest.approx(per_class_accuracy(predictions, labels))


def test_every_evaluation_reports_the_ausuc_of_its_fused_scores_at_its_configured_alpha():
    """gzsl_evaluate: AUSUC (and the curve) from alpha * a2v + (1 - alpha) * v2a at the configured alpha, whatever the
    settings grid; the per-class accuracies are those S and U average."""
    from msdn.metrics import EvalGrid, fuse_scores

    rng = np.random.default_rng(11)
    unseen = np.zeros(8, bool)
    unseen[[1, 4, 6]] = True
    seen_labels, unseen_labels = rng.choice(np.flatnonzero(~unseen), 60), rng.choice(np.flatnonzero(unseen), 40)
    seen_a2v, seen_v2a, unseen_a2v, unseen_v2a = (rng.normal(size=(n, 8)).astype(np.float32) for n in (60, 60, 40, 40))
    r = gzsl_evaluate(seen_a2v, seen_v2a, seen_labels, unseen_a2v, unseen_v2a, unseen_labels, unseen, alpha=0.3,
                      gamma=0.5, gammas=np.array([0.0, 0.5]), grid=EvalGrid(alphas=(0.0, 0.5, 1.0), gammas=(0.0, 1.0)))
    seen, unseen_scores = fuse_scores(seen_a2v, seen_v2a, 0.3), fuse_scores(unseen_a2v, unseen_v2a, 0.3)
    area = brute_force_ausuc(seen, seen_labels, unseen_scores, unseen_labels, unseen)[0]
    assert r.AUSUC == r.summary()["AUSUC"] == r.seen_unseen.ausuc == pytest.approx(area, abs=1e-12)
    other = fuse_scores(seen_a2v, seen_v2a, 1.0), seen_labels, fuse_scores(unseen_a2v, unseen_v2a, 1.0), unseen_labels
    assert abs(brute_force_ausuc(*other, unseen)[0] - r.AUSUC) > 1e-3  # the alpha matters: this is the right one
    assert r.seen_unseen.at(0.5) == pytest.approx((r.U, r.S))  # the operating point lies on the curve
    seen_classes = ~unseen[r.classes.classes]
    assert r.classes.accuracy[seen_classes].mean() == pytest.approx(r.S)
    assert r.classes.accuracy[~seen_classes].mean() == pytest.approx(r.U)
    assert r.classes.images.sum() == 100


def test_a_thinned_curve_keeps_its_ends_and_at_most_the_points_asked_for():
    rng = np.random.default_rng(2)
    unseen = np.array([False] * 5 + [True] * 5)
    curve = seen_unseen_curve(rng.normal(size=(400, 10)), rng.integers(0, 5, 400), rng.normal(size=(300, 10)),
                              rng.integers(5, 10, 300), unseen)
    assert curve.unseen_acc.size > 100
    u, s = curve.thinned(50)
    assert len(u) == len(s) <= 50 and (u[0], s[0], u[-1], s[-1]) == (curve.unseen_acc[0], curve.seen_acc[0],
                                                                      curve.unseen_acc[-1], curve.seen_acc[-1])
    assert np.all(np.diff(u) >= 0) and np.all(np.diff(s) <= 0)  # still the curve, in order
    u, s = curve.thinned(10_000)  # fewer states than asked: all of them
    np.testing.assert_array_equal(u, curve.unseen_acc)
