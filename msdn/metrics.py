"""GZSL metrics as pure functions: score matrices and labels in, numbers out.

Protocol (Xian et al.; as the MSDN authors evaluate):
  S    per-class mean top-1 accuracy on test-seen images, all classes as candidates
  U    the same on test-unseen images
  H    2 S U / (S + U)
  ZSL  per-class mean top-1 on test-unseen images, unseen classes as the only candidates
  AUSUC the area under the seen-unseen curve: S against U as gamma runs over all real values (Chao et
       al., ECCV 2016), exact (`seen_unseen_curve`)
Calibrated stacking adds `gamma` to every unseen-class score before the arg-max; the fused score
of a class is alpha * S_a2v + (1 - alpha) * S_v2a, from the two sub-nets' scores.

The calibration curve needs no second pass over the scores: with a constant offset on all unseen
classes, an image's prediction is either its best seen class or its best unseen class, so the
whole curve follows from those two per image. The settings grid (`grid_evaluate`) applies this to
every alpha of a grid: S/U/H over alpha x gamma from one forward pass of each sub-net, which is how
a study chooses these two evaluation-time settings on validation without training once per value.

Every evaluation (`gzsl_evaluate`) reports the figures at the configured (alpha, gamma) and the grid's
best (GRID_KEYS). Without a study's grid, the grid is the configured alpha x the configuration's gamma
sweep, so its best is the calibration curve's best gamma. The calibration curve drawn in the plots is
the grid's slice at the configured alpha. AUSUC, the seen-unseen curve and the per-class accuracies are
those of the fused scores at the configured alpha (and, for the per-class ones, the configured gamma): the
grid's chosen alpha may differ from it, so an evaluation that should report them there configures it
(the study's refits do: their configured alpha and gamma are those the settings grid chose).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of the fraction of their images predicted right."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    classes, inverse = np.unique(labels, return_inverse=True)
    hits = np.bincount(inverse, weights=(predictions == labels).astype(np.float64), minlength=classes.size)
    counts = np.bincount(inverse, minlength=classes.size)
    return float(np.mean(hits / counts))


def harmonic_mean(seen_acc: float, unseen_acc: float) -> float:
    total = seen_acc + unseen_acc
    return 0.0 if total == 0 else 2.0 * seen_acc * unseen_acc / total


def calibrated_predictions(scores: np.ndarray, unseen: np.ndarray, gamma: float) -> np.ndarray:
    """Arg-max class after adding `gamma` to the unseen classes' scores (calibrated stacking)."""
    scores = np.asarray(scores)
    return np.argmax(scores + gamma * np.asarray(unseen, dtype=scores.dtype), axis=1)


def zsl_accuracy(scores: np.ndarray, labels: np.ndarray, unseen: np.ndarray) -> float:
    """Conventional ZSL: unseen-class images, arg-max over the unseen classes only."""
    unseen_ids = np.flatnonzero(unseen)
    predictions = unseen_ids[np.argmax(np.asarray(scores)[:, unseen_ids], axis=1)]
    return per_class_accuracy(predictions, labels)


@dataclass(frozen=True)
class CalibrationCurve:
    gammas: np.ndarray
    seen: np.ndarray  # S at each gamma
    unseen: np.ndarray  # U at each gamma
    harmonic: np.ndarray  # H at each gamma


def _best_seen_and_unseen(scores: np.ndarray, unseen: np.ndarray):
    """Per image: best seen score and class, best unseen score and class."""
    seen_ids, unseen_ids = np.flatnonzero(~unseen), np.flatnonzero(unseen)
    seen_scores, unseen_scores = scores[:, seen_ids], scores[:, unseen_ids]
    seen_arg, unseen_arg = seen_scores.argmax(1), unseen_scores.argmax(1)
    rows = np.arange(scores.shape[0])
    return seen_scores[rows, seen_arg], seen_ids[seen_arg], unseen_scores[rows, unseen_arg], unseen_ids[unseen_arg]


def _accuracy_per_gamma(scores: np.ndarray, labels: np.ndarray, unseen: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """Per-class mean accuracy at every gamma, from one pass over `scores` (G x N work after it)."""
    if labels.size == 0:
        return np.zeros(gammas.size)
    best_seen, seen_cls, best_unseen, unseen_cls = _best_seen_and_unseen(scores, unseen)
    shifted = best_unseen[None, :] + gammas.astype(scores.dtype)[:, None]  # (G, N), same float type as a direct sum
    # np.argmax keeps the first of equal maxima, i.e. the lower class id on a tie.
    pick_unseen = (shifted > best_seen) | ((shifted == best_seen) & (unseen_cls < seen_cls))
    predictions = np.where(pick_unseen, unseen_cls, seen_cls)
    classes, inverse = np.unique(labels, return_inverse=True)
    correct = (predictions == labels).astype(np.float64)  # (G, N)
    onehot = np.zeros((labels.size, classes.size))
    onehot[np.arange(labels.size), inverse] = 1.0
    return (correct @ onehot / onehot.sum(0)).mean(1)


def calibration_curve(
    seen_scores: np.ndarray,
    seen_labels: np.ndarray,
    unseen_scores: np.ndarray,
    unseen_labels: np.ndarray,
    unseen: np.ndarray,
    gammas: np.ndarray,
) -> CalibrationCurve:
    """S, U and H for every gamma in `gammas`: test-seen and test-unseen scores, all classes as candidates."""
    gammas = np.asarray(gammas, dtype=np.float64)
    unseen = np.asarray(unseen, dtype=bool)
    s = _accuracy_per_gamma(np.asarray(seen_scores), np.asarray(seen_labels), unseen, gammas)
    u = _accuracy_per_gamma(np.asarray(unseen_scores), np.asarray(unseen_labels), unseen, gammas)
    total = s + u
    h = np.divide(2 * s * u, total, out=np.zeros_like(total), where=total > 0)
    return CalibrationCurve(gammas=gammas, seen=s, unseen=u, harmonic=h)


def fuse_scores(scores_a2v: np.ndarray, scores_v2a: np.ndarray, alpha: float) -> np.ndarray:
    """The fused class scores alpha * S_a2v + (1 - alpha) * S_v2a (the sub-nets' margin-free scores)."""
    return alpha * np.asarray(scores_a2v) + (1.0 - alpha) * np.asarray(scores_v2a)


@dataclass(frozen=True)
class EvalGrid:
    """The evaluation-time settings swept after every evaluation: fusion weights x calibration offsets.

    An axis of None holds the run's own configured value only (a setting a study searches per trial).
    """

    alphas: tuple[float, ...] | None
    gammas: tuple[float, ...] | None

    def axes(self, alpha: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """The grid's alpha and gamma values for a run configured with `alpha` and `gamma`."""
        return (np.asarray(self.alphas if self.alphas is not None else (alpha,), dtype=np.float64),
                np.asarray(self.gammas if self.gammas is not None else (gamma,), dtype=np.float64))


@dataclass(frozen=True)
class GridResult:
    """S, U and H at every (alpha, gamma) of a settings grid; arrays of shape (alphas, gammas)."""

    alphas: np.ndarray
    gammas: np.ndarray
    seen: np.ndarray
    unseen: np.ndarray
    harmonic: np.ndarray

    @property
    def best_index(self) -> tuple[int, int]:
        """(alpha index, gamma index) of the best H; the first maximum: smallest alpha, then smallest gamma."""
        i, j = np.unravel_index(int(np.argmax(self.harmonic)), self.harmonic.shape)
        return int(i), int(j)

    def curve_at(self, alpha: float) -> CalibrationCurve | None:
        """The grid's row at `alpha` as a calibration curve; None when `alpha` is not one of the grid's alphas."""
        rows = np.flatnonzero(self.alphas == alpha)
        if rows.size == 0:
            return None
        i = int(rows[0])
        return CalibrationCurve(gammas=self.gammas, seen=self.seen[i], unseen=self.unseen[i],
                                harmonic=self.harmonic[i])

    def at_best(self) -> dict[str, float]:
        """The grid's best H with its S, U and the (alpha, gamma) that reach it, keyed as in GRID_KEYS."""
        i, j = self.best_index
        return {"H_grid": float(self.harmonic[i, j]), "S_grid": float(self.seen[i, j]),
                "U_grid": float(self.unseen[i, j]), "grid_alpha": float(self.alphas[i]),
                "grid_gamma": float(self.gammas[j])}


def grid_evaluate(
    seen_a2v: np.ndarray,
    seen_v2a: np.ndarray,
    seen_labels: np.ndarray,
    unseen_a2v: np.ndarray,
    unseen_v2a: np.ndarray,
    unseen_labels: np.ndarray,
    unseen: np.ndarray,
    alphas: np.ndarray,
    gammas: np.ndarray,
) -> GridResult:
    """S/U/H over alphas x gammas from both sub-nets' margin-free scores: per alpha, the fused scores
    (`fuse_scores`, as a single evaluation at that alpha computes them) and their calibration curve."""
    alphas = np.asarray(alphas, dtype=np.float64)
    curves = [calibration_curve(fuse_scores(seen_a2v, seen_v2a, a), seen_labels,
                                fuse_scores(unseen_a2v, unseen_v2a, a), unseen_labels, unseen, gammas)
              for a in alphas.tolist()]
    return GridResult(alphas=alphas, gammas=np.asarray(gammas, dtype=np.float64),
                      seen=np.stack([c.seen for c in curves]), unseen=np.stack([c.unseen for c in curves]),
                      harmonic=np.stack([c.harmonic for c in curves]))


@dataclass(frozen=True)
class GZSLResult:
    """Metrics at the configured (alpha, gamma), conventional ZSL, AUSUC at the configured alpha, the settings grid
    over alpha x gamma, the calibration curve over gamma and the seen-unseen curve at the configured alpha (for
    plots), and each class's top-1 at the configured (alpha, gamma)."""

    S: float
    U: float
    H: float
    zsl_acc: float
    AUSUC: float
    gamma: float
    grid: GridResult = field(repr=False)
    curve: CalibrationCurve = field(repr=False)
    seen_unseen: SeenUnseenCurve = field(repr=False)
    classes: ClassAccuracies = field(repr=False)  # seen classes on seen images, unseen ones on unseen images

    def summary(self) -> dict[str, float]:
        """The result as plain numbers, keyed (and ordered) by SUMMARY_KEYS."""
        out = {name: float(getattr(self, name)) for name in SUMMARY_KEYS if name not in GRID_KEYS}
        out.update(self.grid.at_best())
        return out


# The settings grid's best: its H, S and U, and the (alpha, gamma) chosen (GridResult.at_best). Without a
# study's grid these are the calibration curve's best gamma at the configured alpha, its H, S and U.
GRID_KEYS = ("H_grid", "S_grid", "U_grid", "grid_alpha", "grid_gamma")
# The names of GZSLResult.summary(), written once here: the trainer reports them every epoch, and the
# study derives its lists of metrics from these constants.
SUMMARY_KEYS = ("S", "U", "H", "zsl_acc", "AUSUC", "gamma") + GRID_KEYS
# The summary's scores: all of it but the settings (the configured gamma, the grid's chosen alpha and gamma).
SCORE_KEYS = tuple(name for name in SUMMARY_KEYS if name not in ("gamma", "grid_alpha", "grid_gamma"))
# What a study reports for its best trial and for the refit on the test split: the scores at the
# configured settings, then the grid's best H and the gamma that reaches it.
HEADLINE_KEYS = ("S", "U", "H", "zsl_acc", "AUSUC", "H_grid", "grid_gamma")


def gzsl_evaluate(
    seen_a2v: np.ndarray,
    seen_v2a: np.ndarray,
    seen_labels: np.ndarray,
    unseen_a2v: np.ndarray,
    unseen_v2a: np.ndarray,
    unseen_labels: np.ndarray,
    unseen: np.ndarray,
    *,
    alpha: float,
    gamma: float,
    gammas: np.ndarray,
    grid: EvalGrid | None = None,
) -> GZSLResult:
    """The whole protocol from both sub-nets' margin-free scores (rows: images, columns: candidate classes).

    S/U/H and ZSL accuracy at the configured (`alpha`, `gamma`); the settings `grid` (None: `alpha` x `gammas`);
    the calibration curve is the grid's row at `alpha`, or, when the grid has no such row or a single gamma,
    the curve over `gammas` at `alpha`: computed once either way. The seen-unseen curve and AUSUC come from the
    same fused scores at `alpha`, the per-class accuracies from the same predictions as S and U.
    """
    unseen = np.asarray(unseen, dtype=bool)
    seen_scores, unseen_scores = fuse_scores(seen_a2v, seen_v2a, alpha), fuse_scores(unseen_a2v, unseen_v2a, alpha)
    seen_pred = calibrated_predictions(seen_scores, unseen, gamma)
    unseen_pred = calibrated_predictions(unseen_scores, unseen, gamma)
    s, u = per_class_accuracy(seen_pred, seen_labels), per_class_accuracy(unseen_pred, unseen_labels)
    grid = grid if grid is not None else EvalGrid(alphas=None, gammas=tuple(float(g) for g in np.asarray(gammas)))
    alphas, grid_gammas = grid.axes(alpha, gamma)
    result = grid_evaluate(seen_a2v, seen_v2a, seen_labels, unseen_a2v, unseen_v2a, unseen_labels, unseen, alphas,
                           grid_gammas)
    curve = result.curve_at(alpha)
    if curve is None or curve.gammas.size < 2:
        curve = calibration_curve(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen, gammas)
    seen_unseen = seen_unseen_curve(seen_scores, seen_labels, unseen_scores, unseen_labels, unseen)
    classes = class_accuracies(np.concatenate([seen_pred, unseen_pred]),
                               np.concatenate([np.asarray(seen_labels), np.asarray(unseen_labels)]))
    return GZSLResult(S=s, U=u, H=harmonic_mean(s, u), zsl_acc=zsl_accuracy(unseen_scores, unseen_labels, unseen),
                      AUSUC=seen_unseen.ausuc, gamma=float(gamma), grid=result, curve=curve, seen_unseen=seen_unseen,
                      classes=classes)


# ---------------------------------------------------------------------------------------------------
# The seen-unseen accuracy curve and its area (AUSUC; Chao, Changpinyo, Gong and Sha, ECCV 2016)


@dataclass(frozen=True)
class SeenUnseenCurve:
    """S against U as the calibration offset gamma runs over all real values, with its exact area.

    `unseen_acc[k]`, `seen_acc[k]` is the k-th state of the curve: k = 0 before the first breakpoint
    (gamma -> -inf: U = 0, S = its maximum), then one state after each distinct breakpoint; the last is
    gamma -> +inf (U = conventional ZSL accuracy, S = 0). `breakpoints[k - 1]` is the gamma at which
    state k begins. Straight lines between consecutive states draw the curve (horizontal, vertical, or
    diagonal where a seen and an unseen image change at the same gamma).
    """

    breakpoints: np.ndarray  # (K,) distinct gammas at which some image's prediction changes, ascending
    unseen_acc: np.ndarray  # (K + 1,) U in each state
    seen_acc: np.ndarray  # (K + 1,) S in each state
    ausuc: float  # area under S(U), trapezoids between states

    def at(self, gamma: float) -> tuple[float, float]:
        """(U, S) at offset `gamma` away from breakpoints (at one, the state that begins there)."""
        k = int(np.searchsorted(self.breakpoints, gamma, side="right"))
        return float(self.unseen_acc[k]), float(self.seen_acc[k])

    def thinned(self, points: int) -> tuple[np.ndarray, np.ndarray]:
        """(U, S) at no more than `points` of the states, evenly spaced in order, both ends kept: the curve to draw
        (a staircase of thousands of states looks the same); the area stays `ausuc`, computed over all of them."""
        n = self.unseen_acc.size
        keep = np.unique(np.round(np.linspace(0, n - 1, min(n, max(points, 2)))).astype(int))
        return self.unseen_acc[keep], self.seen_acc[keep]


def _margin_events(scores: np.ndarray, labels: np.ndarray, unseen: np.ndarray, pick: str):
    """Per image that the curve can count: (margin, weight). `pick` "seen": right while its best seen class wins
    (gamma < margin); "unseen": right once its best unseen class wins (gamma > margin). Weights make the
    per-class mean: 1 / (classes present x that class's images)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0), np.zeros(0)
    best_seen, seen_cls, best_unseen, unseen_cls = _best_seen_and_unseen(np.asarray(scores), unseen)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weight = 1.0 / (classes.size * counts[inverse])
    right = (seen_cls if pick == "seen" else unseen_cls) == labels
    margin = best_seen.astype(np.float64) - best_unseen.astype(np.float64)
    return margin[right], weight[right]


def seen_unseen_curve(seen_scores: np.ndarray, seen_labels: np.ndarray, unseen_scores: np.ndarray,
                      unseen_labels: np.ndarray, unseen: np.ndarray) -> SeenUnseenCurve:
    """The exact seen-unseen curve and AUSUC from margin-free (fused) scores, in O(N log N).

    Adding gamma to every unseen-class score predicts an image's best unseen class once gamma passes its
    margin (best seen score - best unseen score) and its best seen class before: so S falls and U rises
    only at margins. Sorting the margins gives every state of the curve; where several images share a
    margin (a tie between a seen and an unseen image's) the area takes the trapezoid between the states
    before and after it. S and U are per-class mean top-1 accuracies, as everywhere in this module.
    """
    unseen = np.asarray(unseen, dtype=bool)
    s_margin, s_weight = _margin_events(seen_scores, seen_labels, unseen, "seen")
    u_margin, u_weight = _margin_events(unseen_scores, unseen_labels, unseen, "unseen")
    breakpoints, inverse = np.unique(np.concatenate([s_margin, u_margin]), return_inverse=True)
    n_seen = s_margin.size
    drop = np.bincount(inverse[:n_seen], weights=s_weight, minlength=breakpoints.size)  # S lost at each breakpoint
    rise = np.bincount(inverse[n_seen:], weights=u_weight, minlength=breakpoints.size)  # U gained
    seen_acc = np.concatenate([[s_weight.sum()], s_weight.sum() - np.cumsum(drop)])
    unseen_acc = np.concatenate([[0.0], np.cumsum(rise)])
    seen_acc = np.clip(seen_acc, 0.0, None)  # the last state is 0 up to rounding
    area = float(np.sum(rise * (seen_acc[:-1] + seen_acc[1:]) / 2.0))
    return SeenUnseenCurve(breakpoints=breakpoints, unseen_acc=unseen_acc, seen_acc=seen_acc, ausuc=area)


@dataclass(frozen=True)
class ClassAccuracies:
    """Top-1 accuracy of each class present in a set of labels."""

    classes: np.ndarray  # class ids, ascending
    images: np.ndarray  # images of each class
    accuracy: np.ndarray  # fraction of them predicted right


def class_accuracies(predictions: np.ndarray, labels: np.ndarray) -> ClassAccuracies:
    """Per-class top-1: what `per_class_accuracy` averages."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse, weights=(predictions == labels).astype(np.float64), minlength=classes.size)
    return ClassAccuracies(classes=classes, images=counts, accuracy=hits / np.maximum(counts, 1))
