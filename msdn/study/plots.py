"""PNG plots for a study's parent run: the calibration curve, the optimisation history, the settings
grid's heat map (alpha x gamma -> H) and the seen-unseen curve of the best trial's best epoch, the parameter
importances, and of the refits on the test split: the calibration curve, the seen-unseen curves of the tuned
and the authors' configuration on one axes, and the classes where the tuned one gains or loses most.

`study_plots`, `refit_plot`, `refit_seen_unseen_plot` and `class_difference_plot` choose what to draw from a
study's results; the `plot_*` functions draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from matplotlib.patches import Patch  # noqa: E402

from msdn.study.report import CONFIG_LABELS  # noqa: E402
from msdn.study.results import STOPPED_EARLY, TUNED, RefitResult, Refits, TrialSummary  # noqa: E402
from msdn.study.trainable import CURVE_KEYS, GRID_MAP_KEYS, SU_CURVE_KEYS  # noqa: E402

SHOWN_CLASSES = 10  # the per-class plot shows this many classes that gain most, and as many that lose most


@dataclass(frozen=True)
class SeenUnseenLine:
    """One seen-unseen curve to draw: its states' U and S (fractions), the (U, S) at the gamma its evaluation used,
    and its AUSUC."""

    label: str
    unseen: Sequence[float]
    seen: Sequence[float]
    point: tuple[float, float]
    ausuc: float
    color: str = "C0"
    style: str = "-"


def _finish(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str, handles: list | None = None) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)  # handles None: the labelled artists
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_calibration_curve(gammas: Sequence[float], seen: Sequence[float], unseen: Sequence[float],
                           harmonic: Sequence[float], path: Path, *, title: str, chosen_gamma: float | None = None) -> Path:
    """S, U and H (in %) against the calibrated-stacking offset gamma."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    g = np.asarray(gammas)
    for values, label, style in ((seen, "S (seen)", "-"), (unseen, "U (unseen)", "--"), (harmonic, "H", "-")):
        ax.plot(g, 100 * np.asarray(values), style, label=label, linewidth=2 if label == "H" else 1.2)
    best = int(np.argmax(harmonic))
    ax.axvline(g[best], color="grey", linestyle=":", label=f"best H at gamma={g[best]:.2f}")
    if chosen_gamma is not None:
        ax.axvline(chosen_gamma, color="black", linestyle="-.", linewidth=0.8,
                   label=f"configured gamma={chosen_gamma:.2f}")
    return _finish(fig, ax, path, xlabel="gamma (offset of unseen-class scores)", ylabel="accuracy (%)", title=title)


def plot_seen_unseen(lines: Sequence[SeenUnseenLine], path: Path, *, title: str) -> Path:
    """Seen-unseen curves on one axes (U on x, S on y, in %): each line with its AUSUC in the legend and its
    operating point (the (U, S) at the gamma its evaluation used) marked."""
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for line in lines:
        ax.plot(100 * np.asarray(line.unseen, float), 100 * np.asarray(line.seen, float), line.style,
                color=line.color, linewidth=1.2, alpha=0.85, label=f"{line.label}: AUSUC {100 * line.ausuc:.2f}%")
        ax.plot([100 * line.point[0]], [100 * line.point[1]], "o", color=line.color, markersize=6,
                markeredgecolor="black")
    ax.plot([], [], "o", color="white", markeredgecolor="black", label="operating point (at the gamma used)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, xlabel="U: unseen-class accuracy (%)", ylabel="S: seen-class accuracy (%)",
                   title=title)


def plot_class_differences(table: dict[str, list], path: Path, *, title: str, shown: int = SHOWN_CLASSES) -> Path:
    """Horizontal bars, tuned minus authors' per-class accuracy in points: the `shown` classes that gain most on
    top, the `shown` that lose most below (all classes when there are no more than 2 x `shown`); `table` is
    msdn.study.per_class.class_differences, largest gain first."""
    n = len(table["class"])
    rows = list(range(n)) if n <= 2 * shown else [*range(shown), *range(n - shown, n)]
    rows = rows[::-1]  # barh draws from the bottom: the largest gain ends on top
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.6), dpi=120)
    colors = {"seen": "C0", "unseen": "C1"}
    ax.barh(range(len(rows)), [100 * table["difference"][i] for i in rows],
            color=[colors[table["group"][i]] for i in rows])
    ax.set_yticks(range(len(rows)), [str(table["class"][i]) for i in rows], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    if len(rows) < n:
        ax.axhline(shown - 0.5, color="grey", linestyle=":", linewidth=0.8)  # the classes left out lie between
    handles = [Patch(color=colors["seen"], label="seen class"), Patch(color=colors["unseen"], label="unseen class")]
    return _finish(fig, ax, path, xlabel="tuned - authors' test top-1 of the class (points, mean over seeds)",
                   ylabel="", title=title, handles=handles)


def plot_optimisation_history(values: Sequence[float], path: Path, *, metric: str, mode: str, title: str,
                              stopped_early: Sequence[bool] | None = None) -> Path:
    """Each trial's best value in trial order, and the best so far."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    v = np.asarray(values, dtype=float)
    x = np.arange(1, v.size + 1)
    early = np.zeros(v.size, bool) if stopped_early is None else np.asarray(stopped_early, bool)
    ax.scatter(x[~early], v[~early], label="trial (ran to max_t)", zorder=3)
    if early.any():
        ax.scatter(x[early], v[early], marker="x", label="trial (stopped by ASHA)", zorder=3)
    running = np.fmax.accumulate(v) if mode == "max" else np.fmin.accumulate(v)
    ax.step(x, running, where="post", color="black", label="best so far")
    return _finish(fig, ax, path, xlabel="trial", ylabel=metric, title=title)


def plot_settings_grid(alphas: Sequence[float], gammas: Sequence[float], harmonic: Sequence[Sequence[float]],
                       path: Path, *, title: str, chosen: tuple[float, float] | None = None) -> Path:
    """Heat map of H (in %) over alpha (rows) x gamma (columns); the chosen setting marked."""
    a, g, h = np.asarray(alphas, float), np.asarray(gammas, float), 100 * np.asarray(harmonic, float)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    half_a = (a[1] - a[0]) / 2 if a.size > 1 else 0.025
    half_g = (g[1] - g[0]) / 2 if g.size > 1 else 0.05
    image = ax.imshow(h, origin="lower", aspect="auto", cmap="viridis",
                      extent=(g[0] - half_g, g[-1] + half_g, a[0] - half_a, a[-1] + half_a))
    fig.colorbar(image, ax=ax, label="H (%)")
    if chosen is not None:
        ax.scatter([chosen[1]], [chosen[0]], marker="x", color="red", s=60,
                   label=f"chosen: alpha={chosen[0]:.2f}, gamma={chosen[1]:.2f}, H={h.max():.2f}")
    return _finish(fig, ax, path, xlabel="gamma (offset of unseen-class scores)",
                   ylabel="alpha (weight of the a2v sub-net)", title=title)


def plot_importances(importances: dict[str, float], path: Path, *, title: str) -> Path:
    """Horizontal bars: each searched parameter's importance (they sum to 1), the largest on top."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.5), dpi=120)
    ax.barh(names, [importances[n] for n in names], label="fANOVA importance (COMPLETE trials)")
    return _finish(fig, ax, path, xlabel="importance (share of the variance of the study metric)", ylabel="",
                   title=title)


def importance_plot(folder: Path, importances: dict[str, float], experiment: str) -> Path:
    return plot_importances(importances, folder / "param_importances.png", title=f"{experiment}: parameter importances")


def study_plots(folder: Path, trials: Sequence[TrialSummary], best: TrialSummary, *, metric: str, mode: str,
                dataset: str, experiment: str, protocol: str) -> list[Path]:
    """The best trial's calibration curve and settings grid at its best epoch, and the optimisation history."""
    b = best.best
    paths = []
    split = "validation" if protocol == "val" else "test"
    if all(isinstance(b.get(k), (list, tuple)) for k in CURVE_KEYS):
        paths.append(plot_calibration_curve(
            *(b[k] for k in CURVE_KEYS), folder / "calibration_curve_best_trial.png",
            title=f"{dataset}: best trial, epoch {best.best_epoch} ({split} split, configured alpha)",
            chosen_gamma=float(b.get("gamma", 2.0)),
        ))
    grid = [b.get(k) for k in GRID_MAP_KEYS]
    if all(isinstance(v, (list, tuple)) for v in grid) and len(grid[0]) * len(grid[1]) > 1:
        paths.append(plot_settings_grid(
            *grid, folder / "settings_grid_best_trial.png",
            title=f"{dataset}: best trial, epoch {best.best_epoch}: {split} H over alpha x gamma",
            chosen=(float(b["grid_alpha"]), float(b["grid_gamma"])) if "grid_alpha" in b else None,
        ))
    if all(isinstance(b.get(k), (list, tuple)) for k in SU_CURVE_KEYS) and isinstance(b.get("AUSUC"), (int, float)):
        line = SeenUnseenLine(f"epoch {best.best_epoch}, configured alpha", *(b[k] for k in SU_CURVE_KEYS),
                              point=(float(b["U"]), float(b["S"])), ausuc=float(b["AUSUC"]))
        paths.append(plot_seen_unseen([line], folder / "seen_unseen_curve_best_trial.png",
                                      title=f"{dataset}: best trial, seen-unseen curve ({split} split)"))
    ordered = [t for t in trials if t.best is not None]
    if ordered:
        paths.append(plot_optimisation_history(
            [t.best[metric] for t in ordered], folder / "optimisation_history.png",
            metric=metric, mode=mode, title=f"{experiment}: {len(ordered)} trials",
            stopped_early=[t.state == STOPPED_EARLY for t in ordered],
        ))
    return paths


def refit_plot(folder: Path, refit: RefitResult, dataset: str) -> Path:
    """The refit's calibration curve on the test split (for reading; nothing is selected on it)."""
    return plot_calibration_curve(*(refit.curve[k] for k in CURVE_KEYS), folder / "calibration_curve_refit_test.png",
                                  title=f"{dataset}: refit on trainval, test split (for reading, not selection)",
                                  chosen_gamma=refit.metrics["gamma"])


def refit_seen_unseen_plot(folder: Path, refits: Refits, dataset: str) -> Path | None:
    """Every refit's seen-unseen curve on the test split, the tuned and the authors' configuration on one axes, each
    at its configured alpha and with its operating point at its configured gamma; None when no refit has a curve
    (results stored by an earlier version)."""
    styles = ("-", "--", ":", "-.")  # one colour per configuration, one line style per seed
    lines = [SeenUnseenLine(f"{CONFIG_LABELS[r.config]} seed={r.seed}", *(r.seen_unseen[k] for k in SU_CURVE_KEYS),
                            point=(float(r.metrics["U"]), float(r.metrics["S"])), ausuc=float(r.metrics["AUSUC"]),
                            color="C0" if r.config == TUNED else "C1", style=styles[i % len(styles)])
             for results in (refits.tuned, refits.baseline) for i, r in enumerate(results)
             if all(k in r.seen_unseen for k in SU_CURVE_KEYS)]
    if not lines:
        return None
    return plot_seen_unseen(lines, folder / "seen_unseen_curve_refits_test.png",
                            title=f"{dataset}: refits, test split (for reading, not selection)")


def class_difference_plot(folder: Path, table: dict[str, list], dataset: str, seeds: int) -> Path:
    """The classes where the tuned configuration gains and loses most against the authors' on the test split."""
    return plot_class_differences(table, folder / "per_class_difference.png",
                                  title=f"{dataset}: per-class test top-1, tuned - authors' (mean of {seeds} seeds)")
