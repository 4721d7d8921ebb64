"""Study throughput: how much of a study's slot time trains and evaluates, and where the rest goes.

    python benchmarks/bench_study.py                  # the default synthetic study: 12 trials, 8 epochs, 2 slots
    python benchmarks/bench_study.py --small          # ~0.1 s epochs, the CUB study's shape (40 trials, <= 30 epochs)
    python benchmarks/bench_study.py --cub-shaped     # report + checkpoint at CUB's model size vs a CUB epoch
    python benchmarks/bench_study.py --dataset cub --data-root /data/zsl --num-samples 12 --max-epochs 8
    python benchmarks/bench_study.py --smoke          # the whole path, about a minute (tests/test_bench_study.py)

It runs the real study (`msdn.study.runner.run_study`: Ray Tune, Optuna, ASHA, MLflow in a SQLite store,
no refit) in a temporary folder, on a local Ray of exactly slots x cpus-per-trial CPUs, and reads the
study's own timings back from Tune's result files (the keys of `msdn.study.timing`):

- utilisation = sum over every trial-epoch of its training + evaluation time / (tuning-loop wall x slots),
  the tuning loop being Tune's own (from its experiment start to its last experiment-state write);
- the per-trial overhead in parts (worker start, opening the data, building the trainer, the first
  epoch's extra cost, the hand-over of a reused worker) and the per-epoch reporting and checkpointing;
- the baseline: the same trial-epochs (configurations, seeds, epoch counts) run back to back with
  `msdn.train.Trainer` in this process, no Ray, each with one trial's CPU threads; and the ratio of the
  study's tuning loop to it (a perfect study with S slots reaches 1/S).

`--small` and `--cub-shaped` generate their benchmark under the temporary folder: the real CUB
metadata from ../shared/realdata/CUB (labels, splits, attributes, word vectors) on 5% of each class's
images, with random region features. `--small`: 128 x 5 x 5 features, so that an epoch takes about
0.1 s (what a GPU makes of a CUB epoch), in the CUB study's shape (search_spaces/cub.yaml, 40 trials).
`--cub-shaped`: the real 2048 x 14 x 14, so the model and its checkpoint are CUB's exact size; its
epoch time is scaled to the full CUB split by image counts. Figures: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import torch  # noqa: E402,F401  (before Ray and h5py: see tune/run.py)

from msdn.checkpoint import CHECKPOINT_FILE  # noqa: E402
from msdn.study import timing  # noqa: E402

REALDATA = REPO.parent / "shared" / "realdata"
SUBSET_FRACTION = 0.05  # of each CUB class's images, in --small and --cub-shaped
HEADER = "== study throughput =="


# ----------------------------------------------------------------------------- generated benchmarks
def write_cub_subset(root: Path, fraction: float, channels: int, grid: int, seed: int = 0) -> None:
    """A `cub` data root: CUB's labels, splits, attributes and word vectors on a per-class subset of the
    images, with random non-negative float16 region features of channels x grid x grid.

    att_splits.mat is left out (its locations would disagree with the subset), so the validation
    protocol draws its validation classes by seed in xlsa17's proportions.
    """
    import h5py
    import scipy.io

    from msdn.data import benchmark_paths, load_numpy_pickle

    src = REALDATA / "CUB"
    if not src.is_dir():
        raise SystemExit(f"error: {src} not found; --small and --cub-shaped need the real CUB metadata there "
                         "(att_splits.mat, labels.npy, CUB_attribute.pkl)")
    mat = scipy.io.loadmat(src / "att_splits.mat")
    labels = np.load(src / "labels.npy").reshape(-1).astype(np.int64)
    rng = np.random.default_rng(seed)
    keep: dict[str, np.ndarray] = {}
    for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"):
        loc = mat[key].reshape(-1).astype(np.int64) - 1
        parts = []
        for c in np.unique(labels[loc]):
            imgs = loc[labels[loc] == c]
            n = max(2 if key == "trainval_loc" else 1, int(round(fraction * imgs.size)))
            parts.append(rng.choice(imgs, min(n, imgs.size), replace=False))
        keep[key] = np.sort(np.concatenate(parts))
    images = np.unique(np.concatenate(list(keep.values())))
    new_index = {int(old): new for new, old in enumerate(images)}
    paths = benchmark_paths("cub", root)
    paths.hdf5.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(paths.hdf5, "w") as f:
        fm = f.create_dataset("feature_map", (images.size, channels, grid, grid), dtype=np.float16)
        for s in range(0, images.size, 256):
            e = min(images.size, s + 256)
            fm[s:e] = rng.random((e - s, channels, grid, grid), dtype=np.float32).astype(np.float16)
        f["labels"] = labels[images]
        for key, loc in keep.items():
            f[key] = np.array([new_index[int(i)] for i in loc], dtype=np.int64)
        f["att"] = mat["att"].T
        f["original_att"] = mat["original_att"].T
        f["w2v_att"] = load_numpy_pickle(src / "CUB_attribute.pkl").astype(np.float32)


def subset_search_space(folder: Path, max_t: int) -> Path:
    """search_spaces/cub.yaml with ASHA sized for a short benchmark study: max_t, grace min(2, max_t), factor 2."""
    import yaml

    raw = yaml.safe_load((REPO / "search_spaces" / "cub.yaml").read_text())
    raw["asha"] = {"max_t": max_t, "grace_period": min(2, max_t), "reduction_factor": 2}
    path = folder / "cub_bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- the study and its records
@dataclass
class StudyRun:
    """A finished benchmark study: its options, its timings, and every trial's result rows."""

    opts: Any  # the resolved StudyOptions
    space: Any
    wall_s: float  # run_study from call to return (Ray start, MLflow, the loop, the report)
    driver_cpu_s: float  # CPU seconds of this (the driver's) process meanwhile, all its threads
    loop_s: float  # Tune's tuning loop
    trials: list[list[dict]]  # per trial, its results in epoch order


def read_results(experiment: Path) -> tuple[float, list[list[dict]]]:
    """(tuning-loop seconds, every trial's results) from Tune's files under the experiment folder.

    The loop runs from the experiment state's `start_time` to the state's last write, at the loop's end.
    """
    states = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    state = states[-1]
    started = json.loads(state.read_text())["stats"]["start_time"]
    loop_s = state.stat().st_mtime - started
    trials = []
    for path in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials.append(sorted(rows, key=lambda r: r["training_iteration"]))
    return loop_s, trials


def run_the_study(args: argparse.Namespace, workdir: Path) -> StudyRun:
    import ray

    from msdn.study.options import StudyRequest, experiment_path, resolve_options
    from msdn.study.runner import run_study

    opts = StudyRequest(
        dataset=args.dataset, search_space=args.search_space, num_samples=args.num_samples,
        max_epochs=args.max_epochs, max_concurrent=args.slots, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=0.0, storage_path=str(workdir / "results"), mlflow_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        experiment="bench", seed=args.seed, data_root=args.data_root, refit=False, device=args.device,
        checkpoint_every=args.checkpoint_every, reuse_workers=not args.no_reuse_workers,
    )
    resolved, space = resolve_options(opts)
    # Exactly the slots asked for, whatever the machine has (run_study joins this Ray).
    ray.init(num_cpus=int(args.slots * args.cpus_per_trial), include_dashboard=False, log_to_driver=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = run_study(opts, progress=lambda _line: None)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ray.shutdown()
    if result.interrupted:
        raise SystemExit("error: the study was interrupted; no figures")
    loop_s, trials = read_results(Path(experiment_path(resolved)))
    return StudyRun(resolved, space, wall, cpu, loop_s, trials)


# ----------------------------------------------------------------------------- the figures
def epoch_seconds(row: dict) -> float:
    return float(row["train_time"]) + float(row["eval_time"])


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def analyse(run: StudyRun, slots: int) -> dict[str, Any]:
    """The study's figures from its own result rows (see the module docstring)."""
    rows = [r for trial in run.trials for r in trial]
    starts = [r for r in rows if timing.TIME_DATA_OPEN in r]  # the first result after each (re)start
    steady = [epoch_seconds(r) for r in rows if timing.TIME_DATA_OPEN not in r]
    steady_epoch = statistics.median(steady) if steady else None
    fresh = [r for r in starts if r.get(timing.WORKER_TRIAL) == 1]
    reused = [r for r in starts if r.get(timing.WORKER_TRIAL, 1) > 1]

    def part(group: list[dict], key: str) -> float | None:
        return _mean([float(r[key]) for r in group if key in r])

    later_of = {id(trial[0]): [epoch_seconds(r) for r in trial[1:] if timing.TIME_DATA_OPEN not in r]
                for trial in run.trials}

    def first_extra(group: list[dict]) -> float | None:
        """A start's epoch minus its trial's median later epoch (the study's, for a trial of one epoch)."""
        if steady_epoch is None:
            return None
        return _mean([epoch_seconds(r) - statistics.median(later_of.get(id(r)) or [steady_epoch]) for r in group])

    def overhead(group: list[dict], first_key: str) -> float | None:
        parts = [part(group, first_key), part(group, timing.TIME_DATA_OPEN), part(group, timing.TIME_TRAINER_BUILD),
                 first_extra(group)]
        return None if not group or any(p is None for p in parts) else sum(parts)

    later = [r for r in rows if timing.TIME_DATA_OPEN not in r]  # these carry the previous epoch's costs
    checkpoint = part(later, timing.TIME_CHECKPOINT)
    report = part(later, timing.TIME_REPORT)
    busy = sum(epoch_seconds(r) for r in rows)
    in_trials = sum(float(trial[-1]["time_total_s"]) for trial in run.trials)
    fresh_total = sum(overhead([r], timing.TIME_WORKER_START) or 0.0 for r in fresh)
    return {
        "trials": len(run.trials), "trial_epochs": len(rows), "slots": slots,
        "loop_s": run.loop_s, "study_wall_s": run.wall_s, "driver_cpu_s": run.driver_cpu_s, "train_eval_s": busy,
        "utilisation": busy / (run.loop_s * slots),
        # the same, leaving out each slot's one-time worker start (a bound no reuse can lift)
        "utilisation_after_start": busy / (run.loop_s * slots - fresh_total),
        "slot_s_in_trials": in_trials, "slot_s_outside_trials": run.loop_s * slots - in_trials,
        "steady_epoch_s": steady_epoch,
        "fresh_workers": len(fresh), "reused_worker_trials": len(reused),
        "worker_start_s": part(fresh, timing.TIME_WORKER_START),
        "worker_handover_s": part(reused, timing.TIME_WORKER_IDLE),
        "data_open_fresh_s": part(fresh, timing.TIME_DATA_OPEN),
        "data_open_reused_s": part(reused, timing.TIME_DATA_OPEN),
        "trainer_build_fresh_s": part(fresh, timing.TIME_TRAINER_BUILD),
        "trainer_build_reused_s": part(reused, timing.TIME_TRAINER_BUILD),
        "first_epoch_extra_fresh_s": first_extra(fresh),
        "first_epoch_extra_reused_s": first_extra(reused),
        "overhead_fresh_trial_s": overhead(fresh, timing.TIME_WORKER_START),
        "overhead_reused_trial_s": overhead(reused, timing.TIME_WORKER_IDLE),
        "checkpoint_per_epoch_s": checkpoint,
        "report_per_epoch_s": report,
        "to_driver_s": part(rows, timing.TIME_TO_DRIVER),
        "report_checkpoint_share": ((checkpoint or 0.0) + (report or 0.0)) / steady_epoch if steady_epoch else None,
    }


def run_baseline(run: StudyRun, cpus_per_trial: float) -> dict[str, Any]:
    """The study's trial-epochs back to back in this process with msdn.train.Trainer: no Ray, no reporting."""
    from msdn.config import default_config
    from msdn.data import load_benchmark, make_split
    from msdn.study.trainable import trial_config
    from msdn.train import Trainer

    opts, space = run.opts, run.space
    torch.set_num_threads(max(1, int(cpus_per_trial)))
    base = default_config(opts.dataset, **space.fixed).replace(
        protocol=opts.protocol, data_root=opts.data_root, epochs=opts.max_epochs,
        device="cpu" if opts.device == "auto" and not torch.cuda.is_available() else opts.device,
    ).to_dict()
    start = time.perf_counter()
    bench = load_benchmark(opts.dataset, opts.data_root, progress=None)
    splits: dict[tuple, Any] = {}
    busy, epochs = 0.0, 0
    for trial in run.trials:
        config = {k: v for k, v in trial[0]["config"].items()}
        cfg = trial_config(base, config, seed=int(trial[0]["trial_seed"]))
        key = (cfg.protocol, cfg.val_fraction, cfg.val_seed)
        if key not in splits:
            splits[key] = make_split(bench, cfg.protocol, val_fraction=cfg.val_fraction, seed=cfg.val_seed)
        trainer = Trainer(cfg, bench, splits[key], progress=None)
        for _ in range(int(trial[-1]["training_iteration"])):
            busy += epoch_seconds(trainer.run_epoch())
            epochs += 1
    return {"baseline_s": time.perf_counter() - start, "baseline_train_eval_s": busy, "baseline_epochs": epochs,
            "baseline_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- printing
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report_lines(args: argparse.Namespace, f: dict[str, Any]) -> list[str]:
    share = f.get("report_checkpoint_share")
    lines = [
        HEADER,
        f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}",
        f"study: {args.dataset}{' (' + args.setting + ')' if args.setting else ''}, {f['trials']} trials, "
        f"{f['trial_epochs']} trial-epochs, {f['slots']} slots x {args.cpus_per_trial:g} CPU, "
        f"reuse workers: {'no' if args.no_reuse_workers else 'yes'}, checkpoint every {args.checkpoint_every} epochs",
        f"tuning loop wall (s):                 {_fmt(f['loop_s'], 2)}",
        f"whole study wall (s):                 {_fmt(f['study_wall_s'], 2)}",
        f"driver CPU, whole study (s):          {_fmt(f['driver_cpu_s'], 2)}",
        f"sum of train + eval (s):              {_fmt(f['train_eval_s'], 2)}",
        f"steady epoch, median (s):             {_fmt(f['steady_epoch_s'])}",
        f"utilisation:                          {_fmt(f['utilisation'])}",
        f"  without the workers' one-time start: {_fmt(f['utilisation_after_start'])}",
        f"slot time in trials / outside (s):    {_fmt(f['slot_s_in_trials'], 2)} / "
        f"{_fmt(f['slot_s_outside_trials'], 2)}   (outside: actor start, hand-overs, idle slots)",
        "per-trial overhead (s), fresh worker / reused worker:",
        f"  trials:                             {f['fresh_workers']} / {f['reused_worker_trials']}",
        f"  worker start / hand-over:           {_fmt(f['worker_start_s'])} / {_fmt(f['worker_handover_s'])}",
        f"  data open + validate:               {_fmt(f['data_open_fresh_s'])} / {_fmt(f['data_open_reused_s'])}",
        f"  trainer build:                      {_fmt(f['trainer_build_fresh_s'])} / "
        f"{_fmt(f['trainer_build_reused_s'])}",
        f"  first epoch's extra cost:           {_fmt(f['first_epoch_extra_fresh_s'])} / "
        f"{_fmt(f['first_epoch_extra_reused_s'])}",
        f"  total per trial:                    {_fmt(f['overhead_fresh_trial_s'])} / "
        f"{_fmt(f['overhead_reused_trial_s'])}",
        "per-epoch (s):",
        f"  checkpoint write:                   {_fmt(f['checkpoint_per_epoch_s'], 4)}",
        f"  report (blocked in tune.report):    {_fmt(f['report_per_epoch_s'], 4)}",
        f"  result -> driver:                   {_fmt(f['to_driver_s'], 4)}",
        f"  report + checkpoint / epoch:        {_fmt(share)}",
    ]
    if "baseline_s" in f:
        lines += [
            f"baseline, one process, no Ray ({f['baseline_threads']} thread(s)): {f['baseline_epochs']} trial-epochs "
            f"in {_fmt(f['baseline_s'], 2)} s (train + eval {_fmt(f['baseline_train_eval_s'], 2)} s)",
            f"tuning loop / baseline:               {_fmt(f['loop_s'] / f['baseline_s'])}   "
            f"(ideal with {f['slots']} slots: {_fmt(1 / f['slots'])})",
            f"whole study / baseline:               {_fmt(f['study_wall_s'] / f['baseline_s'])}",
        ]
    if "cub_epoch_s" in f:
        lines += [
            f"CUB-shaped: subset epoch {_fmt(f['subset_epoch_s'])} s -> full CUB epoch (val protocol, "
            f"{f['cub_train_images']} train + {f['cub_eval_images']} eval images) {_fmt(f['cub_epoch_s'], 1)} s",
            f"CUB-shaped: checkpoint file {_fmt(f['checkpoint_mib'], 1)} MiB; report + checkpoint / full CUB epoch: "
            f"{_fmt(f['cub_report_share'], 4)}",
        ]
    return lines


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root", default=None, help="default: a fresh folder under the temporary one")
    p.add_argument("--search-space", type=Path, default=None, help="default: search_spaces/<dataset>.yaml")
    p.add_argument("--num-samples", type=int, default=None,
                   help="default: 12 (--small 40, --cub-shaped 4, --smoke 2)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="default: the search space's asha.max_t (--cub-shaped 3, --smoke 2)")
    p.add_argument("--slots", type=int, default=2, help="trials at once (a local Ray of slots x cpus-per-trial CPUs)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--no-reuse-workers", action="store_true", help="a fresh worker process per trial (the old way)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--small", action="store_true", help="~0.1 s epochs: generated 128x5x5 features on 5%% of CUB")
    p.add_argument("--cub-shaped", action="store_true", help="generated 2048x14x14 features on 5%% of CUB")
    p.add_argument("--smoke", action="store_true", help="2 trials of 2 epochs: the whole path, for the tests")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.setting = "small" if args.small else "CUB-shaped" if args.cub_shaped else "smoke" if args.smoke else ""
    samples, epochs = {"small": (40, None), "CUB-shaped": (4, 3), "smoke": (2, 2)}.get(args.setting, (12, None))
    args.num_samples, args.max_epochs = args.num_samples or samples, args.max_epochs or epochs
    workdir = Path(tempfile.mkdtemp(prefix="bench-study-"))
    if args.small or args.cub_shaped:
        args.dataset = "cub"
        args.data_root = str(workdir / "data")
        channels, grid = (128, 5) if args.small else (2048, 14)
        write_cub_subset(Path(args.data_root), SUBSET_FRACTION, channels, grid)
        if args.cub_shaped:
            args.search_space = args.search_space or subset_search_space(workdir, args.max_epochs)
    args.data_root = args.data_root or str(workdir / "data")
    args.search_space = args.search_space or REPO / "search_spaces" / f"{args.dataset}.yaml"

    run = run_the_study(args, workdir)
    figures = analyse(run, args.slots)
    if not args.no_baseline:
        figures.update(run_baseline(run, args.cpus_per_trial))
    if args.cub_shaped:
        figures.update(cub_scaling(run, figures, workdir))
    print("\n".join(report_lines(args, figures)))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.keep:
        print(f"kept: {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def val_split_sizes(data_root: str | Path) -> tuple[int, int]:
    """(training images, evaluation images) of the validation protocol on the `cub` data under data_root."""
    from msdn.data import load_benchmark, make_split

    split = make_split(load_benchmark("cub", data_root, progress=None), "val")
    return len(split.train_idx), len(split.eval_seen_idx) + len(split.eval_unseen_idx)


def cub_scaling(run: StudyRun, figures: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Scale the subset's steady epoch to full CUB by image counts; the checkpoint is CUB's size already.

    Full CUB's counts come from the same metadata on every image (1 x 1 x 1 features: only the counts
    are used), so both splits draw the same validation classes.
    """
    full_root = workdir / "full_counts"
    write_cub_subset(full_root, 1.0, 1, 1)
    full_train, full_eval = val_split_sizes(full_root)
    sub_train, sub_eval = val_split_sizes(run.opts.data_root)
    rows = [r for trial in run.trials for r in trial if timing.TIME_DATA_OPEN not in r]
    train = statistics.median(float(r["train_time"]) for r in rows)
    evaluate = statistics.median(float(r["eval_time"]) for r in rows)
    cub_epoch = train * full_train / sub_train + evaluate * full_eval / sub_eval
    checkpoints = sorted(Path(run.opts.storage_path).rglob(f"checkpoint_*/{CHECKPOINT_FILE}"))  # the trials' ones
    cost = (figures["checkpoint_per_epoch_s"] or 0.0) + (figures["report_per_epoch_s"] or 0.0)
    return {"subset_epoch_s": train + evaluate, "cub_epoch_s": cub_epoch, "cub_train_images": full_train,
            "cub_eval_images": full_eval,
            "checkpoint_mib": checkpoints[0].stat().st_size / 2**20 if checkpoints else None,
            "cub_report_share": cost / cub_epoch}


if __name__ == "__main__":
    sys.exit(main())
