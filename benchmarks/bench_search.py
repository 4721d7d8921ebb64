"""Search efficiency: does the study's search earn its budget? Searches compared under the same budget of trial-epochs.

    python benchmarks/bench_search.py                          # synthetic: 4 methods x 5 seeds, 160 trial-epochs each
    python benchmarks/bench_search.py --seeds 3 --budget 96    # a reduced run
    python benchmarks/bench_search.py --methods random+asha,tpe+asha:startup=4:seed=100 --seeds 10   # TPE settings
    python benchmarks/bench_search.py --methods tpe+asha,tpe+asha-warm    # warm start from a second benchmark
    python benchmarks/bench_search.py --dataset cub --data-root /data/zsl --budget 600 --parallel 4 --slots 2
    python benchmarks/bench_search.py --smoke                  # the whole path in a minute or two (tests)

Methods, each through the study's own parts (`StudySearcher`, Tune's ASHA, the `train_msdn` trainable, the
search space file of the dataset; validation protocol):

  random         random search (Optuna's RandomSampler), no early stopping: every trial runs max_t epochs
  random+asha    random search, ASHA stops trials
  tpe+asha       the study's default: its TPE (msdn.study.searcher.TPE, start-up scaled to --num-samples) +
                 ASHA, stopped trials PRUNED, alpha and gamma chosen per epoch on the settings grid (H_grid)
  tpe+asha-old   as tpe+asha with alpha and gamma searched per trial, over the ranges the search space files
                 gave them before the settings grid (OLD_RANGES), metric H
  with --methods:
  tpe+asha:KEY=VALUE[:...]  tpe+asha with TPE settings changed (VARIANT_KEYS: startup=N random start-up
                 trials, share=F of the trials, ei=N candidates, mv=0/1, liar=0/1), and seed=K: the
                 sampler's seed is K + the study seed (unpaired: other start-up configurations than random's)
  tpe10+asha     TPE with Optuna's defaults (10 random start-up trials), the study's default until issue 21
  tpe+asha-warm  tpe+asha warm-started (--warm-start) from a tpe+asha study of the same budget on a second
                 benchmark (--source-data-root; default: the synthetic generator's seed --source-seed 1)
  tpe+asha-ray   Ray's own OptunaSearch, which tells stopped trials COMPLETE with their last value

Every study searches until it has spent `--budget` trial-epochs (a Tune stopper ends it there; trials in
flight are cut off). The score of a study after x trial-epochs is the best validation H (at the trial's
best (alpha, gamma): H_grid; for tpe+asha-old, the trial's own) among the first x epoch results it
received. No method starts from the authors' configuration (`--start-from-defaults` gives it to all), so
the searches themselves are compared. The same study seed gives random search and TPE the same first
configurations (the random start-up), a paired comparison; `seed=K` unpairs them, since a TPE whose
start-up holds random search's best reaches it for free.

Reported per method, over the study seeds: the median (and interquartile range) of that best H against
trial-epochs; the share of each reference's budget (random search; random search with ASHA) the method
needs to reach the reference's final best (on the median curves, per seed against the same seed's
reference, and over every pair of seeds); tpe+asha-warm's share of the cold start's budget; and the test H
of each study's best configuration refit on trainval for its best epoch count (its own seed, the chosen
alpha and gamma), tested once. Figures and the plot: benchmarks/README.md.

Every finished study is appended to `<--json>.runs.jsonl` at once; `--continue` skips the studies found
there, so a long run that was stopped goes on where it was (with every study done, it only reports).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import torch  # noqa: E402,F401  (before Ray and h5py: see tune/run.py)

METHODS = ("random", "random+asha", "tpe+asha", "tpe+asha-old")
EXTRA_METHODS = ("tpe10+asha", "tpe+asha-warm", "tpe+asha-ray")
DEFAULT_METHOD = "tpe+asha"
WARM_METHOD = "tpe+asha-warm"  # the default, warm-started from a study on a second benchmark (--source-data-root)
SOURCE_SEED_OFFSET = 1000  # the study seed of tpe+asha-warm's source study: SOURCE_SEED_OFFSET + the study's seed
# The references, each with the share of its budget within which the default method should reach its final best,
# and the figure judged: on the median curves (the first round's target), or per seed, the median over seeds.
TARGETS = {"random": (0.40, "median_curves"), "random+asha": (0.60, "per_seed_median")}
REFERENCE_NAMES = {"random": "random search", "random+asha": "random+asha"}
# tpe+asha:KEY=VALUE[:KEY=VALUE...]: the study's TPE with settings changed (msdn.study.searcher.TpeSettings), and
# seed=K: the sampler's seed is K + the study seed, so that its random start-up differs from random search's
# (unpaired: with the same seed, the first configurations are the same).
VARIANT_KEYS = {"startup": ("min_startup", int), "share": ("startup_share", float), "ei": ("n_ei_candidates", int),
                "mv": ("multivariate", lambda v: bool(int(v))), "liar": ("constant_liar", lambda v: bool(int(v))),
                "seed": ("seed_offset", int)}
# alpha and gamma as the search space files searched them before the settings grid (uniform, per dataset).
OLD_RANGES = {"synthetic": {"alpha": (0.6, 1.0), "gamma": (0.0, 3.0)},
              "cub": {"alpha": (0.5, 1.0), "gamma": (0.0, 4.0)},
              "sun": {"alpha": (0.4, 1.0), "gamma": (0.0, 4.0)},
              "awa2": {"alpha": (0.5, 1.0), "gamma": (0.0, 4.0)}}
HEADER = "== search efficiency =="


# ----------------------------------------------------------------------------- one study
@dataclasses.dataclass(frozen=True)
class Setup:
    """What every study of a benchmark run shares."""

    dataset: str
    data_root: str
    space_path: str
    budget: int  # trial-epochs per study
    max_t: int
    slots: int  # trials at once in a study
    start_from_defaults: bool
    num_samples: int  # the trials a study of the budget runs (ASHA's share), which TPE's start-up scales with
    source_root: str | None = None  # the second benchmark (the same dataset's files) that tpe+asha-warm starts from


def asha_trials(budget: int, max_t: int, grace_period: int, reduction_factor: float) -> int:
    """How many trials `budget` trial-epochs hold under ASHA in the long run: a trial runs grace_period epochs,
    1/rf of the trials go on to the next rung (grace_period * rf epochs), and so on up to max_t."""
    rungs, epochs = [], grace_period
    while epochs < max_t:
        rungs.append(epochs)
        epochs = round(epochs * reduction_factor)
    rungs.append(max_t)
    per_trial = rungs[0] + sum((b - a) / reduction_factor ** i for i, (a, b) in enumerate(zip(rungs, rungs[1:]), 1))
    return max(1, round(budget / per_trial))


def method_parts(method: str) -> tuple[str, dict[str, Any]]:
    """A method's name and TpeSettings changes: "tpe+asha:startup=6:ei=48" -> ("tpe+asha", {min_startup: 6,
    startup_share: 0, n_ei_candidates: 48}); SystemExit naming --methods for a name or setting it does not know."""
    base, *settings = method.split(":")
    if base not in METHODS + EXTRA_METHODS or (settings and base != DEFAULT_METHOD):
        raise SystemExit(f"error: --methods {method}: expected one of {', '.join(METHODS + EXTRA_METHODS)}, or "
                         f"{DEFAULT_METHOD}:KEY=VALUE[:KEY=VALUE] with KEY of {', '.join(VARIANT_KEYS)}")
    changes: dict[str, Any] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        if key not in VARIANT_KEYS or not value:
            raise SystemExit(f"error: --methods {method}: {setting!r} is not KEY=VALUE with KEY of "
                             f"{', '.join(VARIANT_KEYS)}")
        name, kind = VARIANT_KEYS[key]
        changes[name] = kind(value)
        if key == "startup":  # a fixed start-up count, not a share of the trials
            changes.setdefault("startup_share", 0.0)
    return base, changes


def method_sampler(method: str, seed: int, num_samples: int):
    """The Optuna sampler of `method`: random search; Optuna's default TPE (10 random start-up trials) for
    tpe10+asha and Ray's own OptunaSearch; otherwise the study's TPE (msdn.study.searcher.TPE), changed as named."""
    import optuna

    from msdn.study.searcher import TPE

    base, changes = method_parts(method)
    seed += changes.pop("seed_offset", 0)
    if base.startswith("random"):
        return optuna.samplers.RandomSampler(seed=seed)
    if base in ("tpe10+asha", "tpe+asha-ray"):
        return optuna.samplers.TPESampler(seed=seed)
    return dataclasses.replace(TPE, **changes).sampler(seed, num_samples)


def method_space(setup: Setup, method: str):
    """The search space of `method`: the dataset's file, without starting points; old way: alpha and gamma
    under params (OLD_RANGES), no grid, metric H."""
    from msdn.study.search_space import ParamSpec, load_search_space

    space = load_search_space(setup.space_path, setup.dataset)
    space = dataclasses.replace(space, start_from_defaults=setup.start_from_defaults, points_to_evaluate=(),
                                asha=dataclasses.replace(space.asha, max_t=setup.max_t,
                                                         grace_period=min(space.asha.grace_period, setup.max_t)))
    if method_parts(method)[0] == "tpe+asha-old":
        searched = tuple(ParamSpec(name, "uniform", low, high)
                         for name, (low, high) in OLD_RANGES[setup.dataset].items())
        space = dataclasses.replace(space, params=space.params + searched, grid=(), metric="H")
    return space


class Recorder:
    """A Tune callback (driver side) that keeps every result in arrival order, and a stopper at the budget."""

    def __init__(self, metric: str, budget: int) -> None:
        from ray.tune import Callback
        from ray.tune.stopper import Stopper

        self.metric, self.budget = metric, budget
        self.results: list[dict[str, Any]] = []
        self.configs: dict[str, dict[str, Any]] = {}
        recorder = self

        class Record(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                recorder.configs[trial.trial_id] = dict(trial.config)
                recorder.results.append({"trial_id": trial.trial_id, **{k: result.get(k) for k in (
                    "training_iteration", metric, "H", "grid_alpha", "grid_gamma", "trial_seed")}})

        class AtBudget(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                return len(recorder.results) >= recorder.budget

        self.callback, self.stopper = Record(), AtBudget()


def best_so_far(values: list[float], budget: int) -> list[float]:
    """The running maximum of the first `budget` values (NaN counts as nothing), padded with the last value."""
    out, best = [], -math.inf
    for value in values[:budget]:
        if value is not None and math.isfinite(value):
            best = max(best, value)
        out.append(best if best > -math.inf else 0.0)
    return out + [out[-1] if out else 0.0] * (budget - len(out))


def fit(setup: Setup, method: str, seed: int, storage: str, name: str, *, journal: bool = False,
        warm_start: Path | None = None):
    """Tune's part of one study (a connected Ray): its space, its recorded results, its base config and wall time.
    `journal`: keep the Optuna study in the study's folder (<storage>/<name>), as a study does; `warm_start`: an
    earlier study's folder (--warm-start)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from msdn.config import default_config
    from msdn.study.options import JOURNAL_FILE
    from msdn.study.searcher import StudySearcher
    from msdn.study.trainable import DataSpec, train_msdn
    from msdn.study.warm_start import study_facts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = method_space(setup, method)
    sampler = method_sampler(method, seed, setup.num_samples)
    points = space.initial_points(setup.dataset) if setup.start_from_defaults else []
    if method == "tpe+asha-ray":
        searcher = OptunaSearch(sampler=sampler, points_to_evaluate=points or None)
    else:
        searcher = StudySearcher(starting_points=points, max_epochs=setup.max_t, sampler=sampler, study_name=name,
                                 journal=Path(storage) / name / JOURNAL_FILE if journal else None,
                                 facts=study_facts(setup.dataset, setup.data_root, space, setup.max_t),
                                 warm_start=warm_start)
    scheduler = (FIFOScheduler() if method == "random" else
                 ASHAScheduler(time_attr="training_iteration", max_t=setup.max_t, grace_period=space.asha.grace_period,
                               reduction_factor=space.asha.reduction_factor))
    base = default_config(setup.dataset, **space.fixed).replace(protocol="val", data_root=setup.data_root,
                                                                epochs=setup.max_t, device="cpu").to_dict()
    recorder = Recorder(space.metric, setup.budget)
    trainable = tune.with_resources(tune.with_parameters(
        train_msdn, data=DataSpec(setup.dataset, setup.data_root), base=base, study_seed=seed,
        checkpoint_every=setup.max_t, eval_grid=space.eval_grid(), metric=space.metric, mode=space.mode),
        {"cpu": 1})
    start = time.perf_counter()
    tune.Tuner(
        trainable, param_space=space.tune_param_space(),
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=setup.budget,
                                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=setup.slots),
                                    scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage, stop=recorder.stopper,
                                  callbacks=[recorder.callback], verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    ).fit()
    return space, recorder, base, time.perf_counter() - start


def run_one(setup: Setup, method: str, seed: int, storage: str) -> dict[str, Any]:
    """One study of `method` with study seed `seed` (a connected Ray); its curve, best trial and refit.

    tpe+asha-warm: first a tpe+asha study with the same budget on the source benchmark (another generator seed),
    kept in its folder with its journal; then the study, warm-started from that folder. The source study's seed is
    SOURCE_SEED_OFFSET + seed: with the same seed, its best would be among the random start-up configurations the
    cold start samples first anyway."""
    import ray

    from msdn.study.trainable import trial_seed

    warm_start, source = None, {}
    if method == WARM_METHOD:
        name = f"source-{DEFAULT_METHOD}-seed{seed}"
        _, recorded, _, wall = fit(dataclasses.replace(setup, data_root=setup.source_root), DEFAULT_METHOD,
                                   SOURCE_SEED_OFFSET + seed, storage, name, journal=True)
        warm_start = Path(storage) / name
        scored = [r[recorded.metric] for r in recorded.results[:setup.budget] if r[recorded.metric] is not None]
        source = {"source_best": max(scored, default=None), "source_wall_s": wall}
    space, recorder, base, wall = fit(setup, method, seed, storage, f"{method}-seed{seed}", warm_start=warm_start)
    within = recorder.results[:setup.budget]
    curve = best_so_far([r[space.metric] for r in within], setup.budget)
    scored = [r for r in within if r[space.metric] is not None and math.isfinite(r[space.metric])]
    best = max(scored, key=lambda r: r[space.metric])
    sampled = recorder.configs[best["trial_id"]]
    params = {**sampled, "alpha": best["grid_alpha"], "gamma": best["grid_gamma"]}
    refit = ray.get(ray.remote(num_cpus=1)(refit_and_test).remote(
        base, params, int(best["training_iteration"]), trial_seed(seed, sampled), setup.dataset, setup.data_root))
    return {"method": method, "seed": seed, "curve": curve, "best": best[space.metric], "best_params": params,
            "best_epoch": int(best["training_iteration"]), "trials": len({r["trial_id"] for r in within}),
            "results": len(recorder.results), "wall_s": wall, "test": refit, **source}


def refit_and_test(base: dict[str, Any], params: dict[str, Any], epochs: int, seed: int, dataset: str,
                   data_root: str) -> dict[str, float]:
    """Retrain `params` on trainval for `epochs` epochs (seed `seed`), evaluate once on the test split."""
    from msdn.study.trainable import on_this_worker, trial_config
    from msdn.train import Trainer

    cfg = on_this_worker(trial_config(base, params, seed).replace(protocol="paper", epochs=epochs))
    trainer = Trainer(cfg, progress=None)
    for _ in range(epochs):
        trainer.train_epoch()
    return trainer.evaluate().summary()


# ----------------------------------------------------------------------------- the figures
def share_to_reach(curve: list[float], target: float) -> float:
    """The share of the budget (len(curve) trial-epochs) after which `curve` first reaches `target`; inf if never."""
    for x, value in enumerate(curve, 1):
        if value >= target - 1e-12:
            return x / len(curve)
    return math.inf


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(np.asarray(values, float), [25, 50, 75])
    return float(q1), float(q2), float(q3)


def method_order(method: str) -> tuple[int, str]:
    known = METHODS + EXTRA_METHODS
    return (known.index(method) if method in known else len(known), method)


def shares(runs: list[dict[str, Any]], mine: list[dict[str, Any]], median: np.ndarray,
           reference: str) -> dict[str, Any]:
    """The share of `reference`'s budget after which `mine` reach its final best: on the median curves (against
    the reference's median final best), and per seed (against the same seed's final best), with their median."""
    curves = np.array([r["curve"] for r in runs if r["method"] == reference])
    final = {r["seed"]: r["curve"][-1] for r in runs if r["method"] == reference}
    per_seed = [share_to_reach(r["curve"], final[r["seed"]]) for r in mine if r["seed"] in final]
    # Every study of `mine` against every other study of the reference: no pairing by seed (for the reference
    # itself: how a search exactly as good as it fares against its other seeds).
    pairs = [share_to_reach(r["curve"], final[seed]) for r in mine for seed in final
             if not (r["method"] == reference and r["seed"] == seed)]
    return {"median_curves": share_to_reach(median.tolist(), float(np.median(curves, axis=0)[-1])) if final else None,
            "per_seed_median": float(np.median(per_seed)) if per_seed else None, "per_seed": per_seed,
            "all_pairs_median": float(np.median(pairs)) if pairs else None,
            "all_pairs_reached": float(np.mean([x <= 1 for x in pairs])) if pairs else None}


def analyse(runs: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    """Per method: the median curve and its quartiles, shares of the references' budgets (random search, random
    search with ASHA) to reach their final best, refit test H."""
    methods = sorted({r["method"] for r in runs}, key=method_order)
    curves = {m: np.array([r["curve"] for r in runs if r["method"] == m]) for m in methods}
    median = {m: np.median(c, axis=0) for m, c in curves.items()}
    out: dict[str, Any] = {"budget": budget, "methods": {}, "final_best_median": {
        ref: float(median[ref][-1]) for ref in TARGETS if ref in median}}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        tests = [r["test"]["H"] for r in mine]
        against = {ref: shares(runs, mine, median[m], ref) for ref in TARGETS}
        out["methods"][m] = {
            "seeds": len(mine),
            "median_curve": median[m].tolist(),
            "q1_curve": np.percentile(curves[m], 25, axis=0).tolist(),
            "q3_curve": np.percentile(curves[m], 75, axis=0).tolist(),
            "best_at": {f"{int(100 * f)}%": quartiles([r["curve"][max(0, round(f * budget) - 1)] for r in mine])
                        for f in (0.25, 0.5, 1.0)},
            "share_of_random_budget": against["random"]["median_curves"],
            "share_per_seed_median": against["random"]["per_seed_median"],
            "share_per_seed": against["random"]["per_seed"],
            "shares": against,
            "test_H": quartiles(tests),
            "test_H_values": tests,
            "trials_median": float(np.median([r["trials"] for r in mine])),
            "wall_s_median": float(np.median([r["wall_s"] for r in mine])),
        }
    if WARM_METHOD in out["methods"] and DEFAULT_METHOD in median:  # warm against cold, seed by seed
        out["methods"][WARM_METHOD]["shares"][DEFAULT_METHOD] = shares(
            runs, [r for r in runs if r["method"] == WARM_METHOD], median[WARM_METHOD], DEFAULT_METHOD)
    out["random_final_best_median"] = out["final_best_median"].get("random")
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _share(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "not reached" if math.isinf(x) else f"{100 * x:.0f}%"


def report_lines(figures: dict[str, Any], command: str) -> list[str]:
    """The table (markdown) and the verdicts against the target shares."""
    lines = [HEADER, f"command: {command}", f"budget: {figures['budget']} trial-epochs per study; H in %, "
             "median [interquartile range] over study seeds", "",
             "| method | seeds | best val H @25% | @50% | @100% of budget | share of random's budget to reach its "
             "final best (median curves / per-seed median) | share of random+asha's budget to reach its final "
             "best (median curves / per-seed median) | refit test H | trials |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, f in figures["methods"].items():
        cells = [f"{_pct(f['best_at'][k][1])} [{_pct(f['best_at'][k][0])}, {_pct(f['best_at'][k][2])}]"
                 for k in ("25%", "50%", "100%")]
        test = f"{_pct(f['test_H'][1])} [{_pct(f['test_H'][0])}, {_pct(f['test_H'][2])}]"
        share = [f"{_share(f['shares'][ref]['median_curves'])} / {_share(f['shares'][ref]['per_seed_median'])}"
                 for ref in TARGETS]
        lines.append(f"| {m} | {f['seeds']} | {' | '.join(cells)} | {' | '.join(share)} | {test} | "
                     f"{f['trials_median']:.0f} |")
    default = figures["methods"].get(DEFAULT_METHOD)
    for ref, (target, judged) in TARGETS.items():
        if default is None or ref not in figures["final_best_median"]:
            continue
        share = default["shares"][ref]
        shown = {"median_curves": f"{_share(share['median_curves'])} on the median curves",
                 "per_seed_median": f"{_share(share['per_seed_median'])} per seed against the same seed's {ref}, "
                                    f"median over seeds"}
        lines += ["", f"{DEFAULT_METHOD} reaches {REFERENCE_NAMES[ref]}'s final best validation H "
                  f"({_pct(figures['final_best_median'][ref])}, median over seeds) after {shown[judged]} "
                  f"({shown[next(k for k in shown if k != judged)]}; every seed against every seed of {ref}: "
                  f"median {_share(share['all_pairs_median'])}, reached in {_pct(share['all_pairs_reached'])}% of "
                  f"the pairs): {'meets' if share[judged] <= target else 'misses'} the target of <= {target:.0%}"]
    warm = figures["methods"].get(WARM_METHOD)
    if warm and default and DEFAULT_METHOD in warm["shares"]:
        against = warm["shares"][DEFAULT_METHOD]
        at = {m: f"{_pct(f['best_at']['25%'][1])}" for m, f in ((WARM_METHOD, warm), (DEFAULT_METHOD, default))}
        lines += ["", f"{WARM_METHOD} (warm-started from a {DEFAULT_METHOD} study on a second benchmark) reaches the "
                  f"cold start's final best after {_share(against['per_seed_median'])} of its budget (per seed, median; "
                  f"median curves {_share(against['median_curves'])}); best val H after 25% of the budget "
                  f"{at[WARM_METHOD]} warm, {at[DEFAULT_METHOD]} cold"]
    return lines


def plot(figures: dict[str, Any], path: Path, title: str) -> Path:
    """Best validation H against trial-epochs: one line per method (median over seeds), its quartiles shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = np.arange(1, figures["budget"] + 1)
    for m, f in figures["methods"].items():
        (line,) = ax.plot(x, 100 * np.asarray(f["median_curve"]), label=f"{m} ({f['seeds']} seeds)",
                          linewidth=2.2 if m == DEFAULT_METHOD else 1.4)
        ax.fill_between(x, 100 * np.asarray(f["q1_curve"]), 100 * np.asarray(f["q3_curve"]), alpha=0.15,
                        color=line.get_color())
    for ref, style in zip(TARGETS, (":", "--")):
        if ref in figures["final_best_median"]:
            ax.axhline(100 * figures["final_best_median"][ref], color="grey", linestyle=style, linewidth=1,
                       label=f"{ref}'s final best (median)")
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best validation H so far (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- running
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root", default=None, help="data root (default: a synthetic benchmark in a temporary folder)")
    p.add_argument("--source-data-root", default=None,
                   help=f"{WARM_METHOD}'s first benchmark, the same dataset's files (default: the synthetic benchmark "
                        f"of generator seed --source-seed, in a temporary folder)")
    p.add_argument("--source-seed", type=int, default=1, help="generator seed of the default --source-data-root")
    p.add_argument("--search-space", default=None, help="default: search_spaces/<dataset>.yaml")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, of {', '.join(METHODS + EXTRA_METHODS)}, and {DEFAULT_METHOD}:KEY=VALUE"
                        f"[:KEY=VALUE...] (the study's TPE with a setting changed; KEY of {', '.join(VARIANT_KEYS)})")
    p.add_argument("--num-samples", type=int, default=None,
                   help="the study's trials, which TPE's start-up count scales with (default: what the budget holds "
                        "under ASHA)")
    p.add_argument("--seeds", type=int, default=5, help="study seeds per method (0, 1, ...)")
    p.add_argument("--budget", type=int, default=160, help="trial-epochs per study")
    p.add_argument("--max-t", type=int, default=None, help="epochs of a full trial (default: the space's asha.max_t)")
    p.add_argument("--slots", type=int, default=2, help="trials at once in a study (1 CPU each)")
    p.add_argument("--parallel", type=int, default=1, help="studies at once (a Ray of slots x parallel CPUs)")
    p.add_argument("--start-from-defaults", action="store_true", help="every method evaluates the authors' point first")
    p.add_argument("--json", default=None, help="write the figures (and every study) here")
    p.add_argument("--plot", default=None, help="write the plot here (default: next to --json, or none)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="skip the studies already in <--json>.runs.jsonl (a stopped run goes on)")
    p.add_argument("--smoke", action="store_true", help="the whole path, tiny: 1 seed, budget 6, max_t 2")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)  # a --parallel worker
    p.add_argument("--setup", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    return p


def prepare_data(given: str | None, workdir: Path, dataset: str, generator_seed: int) -> str:
    """A data root: `given`, or the synthetic benchmark of `generator_seed` written under `workdir`; its cache built."""
    from msdn.data import load_benchmark
    from msdn.synthetic import ensure_synthetic

    if given:
        root = Path(given).resolve()
    elif dataset != "synthetic":
        raise SystemExit(f"error: --dataset {dataset}: expected --data-root (and for {WARM_METHOD} --source-data-root)"
                         f"; only the synthetic benchmark is generated")
    else:
        root = workdir / f"data-seed{generator_seed}"
        ensure_synthetic(root, seed=generator_seed, progress=print)
    load_benchmark(dataset, root, progress=None)  # the float16 cache, once, before the trials
    return str(root)


def _done(run: dict[str, Any], log: Path | None) -> dict[str, Any]:
    print(f"  {run['method']} seed {run['seed']}: best val H {100 * run['best']:.2f}, test H "
          f"{100 * run['test']['H']:.2f}, {run['trials']} trials, {run['wall_s']:.0f} s", flush=True)
    if log is not None:
        with open(log, "a") as fh:
            fh.write(json.dumps(run) + "\n")
    return run


def run_all(setup: Setup, jobs: list[tuple[str, int]], parallel: int, workdir: Path,
            log: Path | None) -> list[dict[str, Any]]:
    """Every (method, seed) study: in this process one after another, or `parallel` at once as drivers of
    this process's Ray (each its own process, as Tune runs one experiment per driver)."""
    import ray

    ray.init(num_cpus=setup.slots * parallel, include_dashboard=False, log_to_driver=False)
    try:
        if parallel == 1:
            return [_done(run_one(setup, method, seed, str(workdir / "tune")), log) for method, seed in jobs]
        address = ray.get_runtime_context().gcs_address
        setup_file = workdir / "setup.json"
        setup_file.write_text(json.dumps(dataclasses.asdict(setup)))
        pending, running, runs = list(jobs), [], []
        while pending or running:
            while pending and len(running) < parallel:
                method, seed = pending.pop(0)
                out = workdir / f"{method}-{seed}.json"
                proc = subprocess.Popen([sys.executable, __file__, "--one", method, str(seed), "--setup",
                                         str(setup_file), "--address", address, "--json", str(out)],
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
                running.append((proc, out, method, seed))
            time.sleep(1)
            for item in [r for r in running if r[0].poll() is not None]:
                running.remove(item)
                proc, out, method, seed = item
                if proc.returncode != 0:
                    raise SystemExit(f"error: the study {method} seed {seed} failed (exit {proc.returncode})")
                runs.append(_done(json.loads(out.read_text()), log))
        return runs
    finally:
        ray.shutdown()


def quiet() -> None:
    """Tune's compact output, no per-result files (the recorder keeps every result), no warnings about them."""
    import logging

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    for name in ("ray.tune", "ray.tune.analysis.experiment_analysis", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def worker(args: argparse.Namespace) -> int:
    """--parallel: one study as a driver of the benchmark's Ray."""
    import ray

    quiet()
    setup = Setup(**json.loads(Path(args.setup).read_text()))
    ray.init(address=args.address, log_to_driver=False)
    method, seed = args.one[0], int(args.one[1])
    run = run_one(setup, method, seed, str(Path(args.setup).parent / "tune"))
    Path(args.json).write_text(json.dumps(run))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.one:
        return worker(args)
    quiet()
    if args.smoke:
        args.seeds, args.budget, args.max_t = 1, 6, 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        method_parts(method)  # SystemExit naming --methods for an unknown one
    space_path = args.search_space or str(REPO / "search_spaces" / f"{args.dataset}.yaml")
    command = "python benchmarks/bench_search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="msdn-bench-search-") as tmp:
        workdir = Path(tmp)
        data_root = prepare_data(args.data_root, workdir, args.dataset, 0)
        source_root = (prepare_data(args.source_data_root, workdir, args.dataset, args.source_seed)
                       if WARM_METHOD in methods else None)
        from msdn.study.search_space import load_search_space

        asha = load_search_space(space_path, args.dataset).asha
        max_t = args.max_t or asha.max_t
        num_samples = args.num_samples or asha_trials(args.budget, max_t, min(asha.grace_period, max_t),
                                                      asha.reduction_factor)
        setup = Setup(args.dataset, data_root, space_path, args.budget, max_t, args.slots, args.start_from_defaults,
                      num_samples, source_root)
        log = Path(args.json).with_suffix(".runs.jsonl") if args.json else None
        earlier = [json.loads(line) for line in log.read_text().splitlines()] if args.resume and log.is_file() else []
        if log is not None and not args.resume:
            log.unlink(missing_ok=True)
        done = {(r["method"], r["seed"]) for r in earlier}
        jobs = [(m, s) for s in range(args.seeds) for m in methods if (m, s) not in done]
        print(f"{len(jobs)} studies ({', '.join(methods)} x {args.seeds} seeds; {len(earlier)} done before) of "
              f"{args.budget} trial-epochs (about {num_samples} trials under ASHA), max_t {max_t}, {args.slots} slots, "
              f"{args.parallel} at once, on {args.dataset}", flush=True)
        start = time.perf_counter()
        runs = earlier + run_all(setup, jobs, args.parallel, workdir, log)
    runs = [r for r in runs if r["method"] in methods and r["seed"] < args.seeds]
    figures = analyse(runs, args.budget)
    figures.update(command=command, wall_s=time.perf_counter() - start, dataset=args.dataset, max_t=max_t,
                   slots=args.slots, num_samples=num_samples)
    print("\n".join(report_lines(figures, command)))
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "runs": runs}, indent=1))
    plot_path = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot_path:
        plot(figures, Path(plot_path), f"{args.dataset}: best validation H vs trial-epochs ({args.seeds} seeds)")
        print(f"plot: {plot_path}")
    print(f"wall: {figures['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
