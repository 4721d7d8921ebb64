"""How much the paper protocol flatters: test H chosen on the test split vs. chosen on validation, same seeds.

    python benchmarks/bench_protocol_gap.py                               # synthetic, 5 seeds, the recipe's epochs
    python benchmarks/bench_protocol_gap.py --dataset cub --data-root /data/zsl --seeds 5 --workers 4 --device cuda
    python benchmarks/bench_protocol_gap.py --quick                       # the whole path in seconds (tests)

For each seed the authors' configuration for the dataset (`msdn.config.DATASET_DEFAULTS`) is trained
for E epochs (default: the recipe's) and read two ways:

(a)  the paper protocol: train on trainval, evaluate on the test split after every epoch, and report
     the best epoch's H at the best gamma: epoch and gamma chosen by test H (what published figures do);
(b)  this project's leak-free procedure: train on the train classes (validation protocol), choose the
     epoch and gamma by validation H, retrain on trainval for that many epochs with the same seed and
     evaluate once on the test split at that gamma.

Also shown: (a') the authors' scripts exactly (epoch chosen on test, the recipe's gamma) and (c) no
selection at all (the last epoch, the recipe's gamma). The gap is (a) - (b), paired by seed, with its
95% t interval (`msdn.study.stats`).

(b)'s retraining is read off run (a): training does not depend on gamma, and a Trainer with the same
configuration and seed repeats the same steps bit for bit (tests/test_train.py), so run (a) after e
epochs *is* the retrained model; its test curve at the gamma chosen on validation is the single test
evaluation, and nothing about it was chosen on test. Each seed costs two training runs instead of three.
Runs go to `--workers` processes with `--threads` torch threads each. Figures: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msdn.config import DATASETS, default_config  # noqa: E402
from msdn.study.stats import paired_difference, t_interval  # noqa: E402

HEADER = "== protocol gap =="
# The procedures compared, in the table's order: key -> label.
PROCEDURES = {
    "paper": "(a)  paper: epoch and gamma chosen on test",
    "paper_epoch": "(a') paper, the authors' scripts: epoch chosen on test, recipe gamma",
    "leak_free": "(b)  leak-free: epoch and gamma chosen on validation, tested once",
    "no_selection": "(c)  no selection: last epoch, recipe gamma",
}


@dataclass(frozen=True)
class Run:
    """One training run to do: the recipe on `protocol` ("paper": trainval -> test, "val": train -> validation)."""

    dataset: str
    data_root: str
    protocol: str
    seed: int
    epochs: int
    device: str
    threads: int


def train_and_evaluate(run: Run) -> list[dict[str, Any]]:
    """Train `run` and evaluate after every epoch; per epoch: H, H at the best gamma, that gamma, the H curve.

    The Trainer has no study grid, so its grid is the recipe's alpha x the gamma sweep: H_grid and grid_gamma are
    the calibration curve's best H and the gamma reaching it (msdn.metrics).
    """
    import torch

    from msdn.train import Trainer

    torch.set_num_threads(run.threads)
    cfg = default_config(run.dataset, data_root=run.data_root, protocol=run.protocol, seed=run.seed,
                         epochs=run.epochs, device=run.device)
    trainer = Trainer(cfg, progress=None)
    epochs = []
    for metrics in trainer.run():
        curve = trainer.last_result.curve
        epochs.append({"H": metrics["H"], "H_grid": metrics["H_grid"], "grid_gamma": metrics["grid_gamma"],
                       "gamma": metrics["gamma"], "curve_gamma": curve.gammas.tolist(),
                       "curve_H": curve.harmonic.tolist()})
    return epochs


@dataclass(frozen=True)
class SeedOutcome:
    """One seed's test H under each procedure (PROCEDURES), and what each selection chose."""

    seed: int
    paper: float
    paper_epoch: float
    leak_free: float
    no_selection: float
    test_epoch: int  # chosen on test by (a)
    test_gamma: float
    val_epoch: int  # chosen on validation by (b)
    val_gamma: float


def assess(seed: int, test: list[dict[str, Any]], val: list[dict[str, Any]]) -> SeedOutcome:
    """The procedures' test H from one run on trainval evaluated on test (`test`) and one on the validation
    protocol (`val`), both per epoch. Ties go to the earliest epoch, as a study's best epoch does."""
    i = int(np.argmax([e["H_grid"] for e in test]))
    j = int(np.argmax([e["H_grid"] for e in val]))
    gamma = val[j]["grid_gamma"]
    at = test[j]  # the retrained model: run (a) after j + 1 epochs, the same steps
    k = int(np.argmin(np.abs(np.asarray(at["curve_gamma"]) - gamma)))
    return SeedOutcome(seed=seed, paper=test[i]["H_grid"], paper_epoch=max(e["H"] for e in test),
                       leak_free=at["curve_H"][k], no_selection=test[-1]["H"], test_epoch=i + 1,
                       test_gamma=test[i]["grid_gamma"], val_epoch=j + 1, val_gamma=gamma)


def report(outcomes: list[SeedOutcome], dataset: str, epochs: int, recipe_gamma: float) -> list[str]:
    """The table: each procedure's mean ± sd [95% t interval] over seeds, the paired gap, the per-seed rows."""
    seeds = [o.seed for o in outcomes]
    lines = [HEADER, f"{dataset}: the authors' configuration, {epochs} epochs, recipe gamma {recipe_gamma}, seeds "
                     f"{', '.join(map(str, seeds))}; test H in %, mean ± sd [95% t interval over seeds]"]
    width = max(len(label) for label in PROCEDURES.values())
    for key, label in PROCEDURES.items():
        iv = t_interval([100 * getattr(o, key) for o in outcomes])
        lines.append(f"  {label.ljust(width)}  {iv.mean:6.2f} ± {iv.sd:5.2f} [{iv.low:6.2f}, {iv.high:6.2f}]")
    for key in ("leak_free", "no_selection"):
        gap = paired_difference([100 * o.paper for o in outcomes], [100 * getattr(o, key) for o in outcomes])
        lines.append(f"gap (a) - {PROCEDURES[key][:4].strip()}, paired by seed: {gap.mean:+.2f} points of H, 95% "
                     f"interval [{gap.low:+.2f}, {gap.high:+.2f}] (t interval of {gap.n} per-seed differences)")
    lines.append("per seed: seed | (a) (a') (b) (c) | epoch, gamma chosen on test | on validation")
    for o in outcomes:
        lines.append(f"  {o.seed:4d} | {100 * o.paper:6.2f} {100 * o.paper_epoch:6.2f} {100 * o.leak_free:6.2f} "
                     f"{100 * o.no_selection:6.2f} | {o.test_epoch:3d}, {o.test_gamma:5.2f} | "
                     f"{o.val_epoch:3d}, {o.val_gamma:5.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="synthetic")
    p.add_argument("--data-root", default="data")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds: first-seed, first-seed + 1, ...")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the recipe's)")
    p.add_argument("--workers", type=int, default=2, help="training runs at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the per-seed outcomes here")
    p.add_argument("--quick", action="store_true", help="2 seeds x 2 epochs: the whole path in seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 2, 2
    recipe = default_config(args.dataset)
    epochs = args.epochs or recipe.epochs
    if args.dataset == "synthetic":
        from msdn.synthetic import ensure_synthetic

        ensure_synthetic(args.data_root, progress=None)
    from msdn.data import load_benchmark

    load_benchmark(args.dataset, args.data_root, progress=print)  # checks the data; builds the cache once, here
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    runs = [Run(args.dataset, str(Path(args.data_root).resolve()), protocol, seed, epochs, args.device, args.threads)
            for seed in seeds for protocol in ("paper", "val")]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        histories = dict(zip(((r.protocol, r.seed) for r in runs), pool.map(train_and_evaluate, runs)))
    outcomes = [assess(seed, histories["paper", seed], histories["val", seed]) for seed in seeds]
    for line in report(outcomes, args.dataset, epochs, recipe.gamma):
        print(line)
    print(f"{len(runs)} runs of {epochs} epochs in {time.perf_counter() - start:.0f} s "
          f"({args.workers} workers x {args.threads} threads, {args.device})")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
