"""Hyperparameter study of MSDN: Optuna search + ASHA early stopping on Ray Tune, tracked in MLflow.

    python tune/run.py --dataset synthetic                      # the demo: no download needed
    python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --gpus-per-trial 0.5
    python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --resume  # continue it
    mlflow ui --backend-store-uri sqlite:///mlflow.db           # compare the trials side by side

Only flags are parsed here; the study itself lives in `msdn.study.runner` (options in `msdn.study.options`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Load torch before Ray, MLflow and h5py: its bundled oneMKL needs static TLS space that is gone once
# many other native libraries are loaded ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so",
# seen in `ray job submit` drivers).
import torch  # noqa: F401,E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout (also under `ray job submit --working-dir .`) without installing

from msdn.cli import command_parser  # noqa: E402
from msdn.config import DATASETS, PROTOCOLS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "python tune/run.py", __doc__.split("\n\n")[0],
        "python tune/run.py --dataset synthetic        # the demo: data generated, no download",
        "python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --gpus-per-trial 0.5",
        "python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --resume   # after a stop",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=DATASETS, help="benchmark to tune on")
    data.add_argument("--data-root", default="data", metavar="DIR", help="folder holding the benchmarks")

    study = p.add_argument_group("study")
    study.add_argument("--search-space", type=Path, default=None, metavar="FILE",
                       help="YAML search space (default: search_spaces/<dataset>.yaml in this repository)")
    study.add_argument("--num-samples", type=int, default=12, metavar="N", help="number of trials")
    study.add_argument("--max-epochs", type=int, default=None, metavar="N",
                       help="epochs per trial (default: the search space's asha.max_t)")
    study.add_argument("--protocol", choices=PROTOCOLS, default="val",
                       help="val: tune on a validation split, refit and test once; paper: the authors' "
                            "test-every-epoch procedure")
    study.add_argument("--seed", type=int, default=0, metavar="N", help="study seed (per-trial seeds derive from it)")
    study.add_argument("--resume", action="store_true",
                       help="continue the study with this --experiment and --storage-path")
    study.add_argument("--experiment", default=None, metavar="NAME",
                       help="study name = MLflow experiment (default: msdn-<dataset>-<protocol>)")
    study.add_argument("--no-refit", action="store_true", help="skip retraining the best configuration on trainval")
    study.add_argument("--refit-seeds", type=_positive_int, default=3, metavar="N",
                       help="seeds of the refit on trainval, each tested once: mean, sd and 95%% interval of the "
                            "test figures (1: a single refit, no interval)")
    study.add_argument("--no-baseline", action="store_true",
                       help="do not refit the authors' configuration with the same seeds (the paired comparison)")
    study.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="N",
                       help="epochs between a trial's checkpoints (its last epoch is always checkpointed); "
                            "an interrupted trial redoes at most N - 1 epochs")

    cluster = p.add_argument_group("cluster")
    cluster.add_argument("--address", default=None,
                         help="Ray cluster to join ('auto' inside a cluster, or ray://HOST:10001); "
                              "default: start a local one")
    cluster.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="CPUS", help="CPU cores per trial")
    cluster.add_argument("--gpus-per-trial", type=float, default=None, metavar="GPUS",
                         help="GPU share per trial, fractions allowed (default: 1 when the cluster has GPUs, else 0)")
    cluster.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                         help="trials running at once (default: as many as the cluster's resources hold)")
    cluster.add_argument("--max-failures", type=int, default=1, metavar="N",
                         help="retries of a trial whose worker or node died")
    cluster.add_argument("--no-reuse-workers", action="store_true",
                         help="start a fresh worker process for every trial instead of reusing them")
    cluster.add_argument("--storage-path", default="results", metavar="PATH",
                         help="where Tune keeps results and checkpoints (path or s3://, gs://)")
    cluster.add_argument("--device", default="auto",
                         help="device inside each trial (auto: its GPU share if any, else CPU)")

    tracking = p.add_argument_group("tracking")
    tracking.add_argument("--mlflow-uri", default=None, metavar="URI",
                          help="MLflow tracking URI (default: sqlite:///<working dir>/mlflow.db; http://HOST:PORT "
                               "for a server)")
    tracking.add_argument("--tracking-timeout", type=float, default=300.0, metavar="SECONDS",
                          help="seconds to wait at the end for an unreachable MLflow store before giving up (exit 3)")

    output = p.add_argument_group("output")
    output.add_argument("-v", "--verbose", action="store_true",
                        help="also show Ray, Tune, MLflow and Optuna log lines and Tune's status table (always in "
                             "the log file)")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """The study under the project's error policy (msdn/cli.py, docs/errors.md)."""
    from msdn.cli import run_cli
    from msdn.study.options import StudyError
    from msdn.study.search_space import SearchSpaceError
    from msdn.study.tracking import TrackingError

    return run_cli(study, argv, expected=(SearchSpaceError, TrackingError, StudyError))


def study(argv: list[str] | None = None) -> int:
    """Parse the flags, run the study; exit 0, 1 (no result), 3 (tracking incomplete) or 130 (interrupted)."""
    args = build_parser().parse_args(argv)
    from msdn.cli import EXIT_INTERRUPTED, EXIT_TRACKING
    from msdn.study.options import StudyFailed, StudyOptions
    from msdn.study.runner import run_study

    options = StudyOptions(
        dataset=args.dataset,
        search_space=args.search_space or REPO / "search_spaces" / f"{args.dataset}.yaml",
        num_samples=args.num_samples, max_epochs=args.max_epochs, max_concurrent=args.max_concurrent,
        address=args.address, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        storage_path=args.storage_path, mlflow_uri=args.mlflow_uri, experiment=args.experiment,
        protocol=args.protocol, resume=args.resume, seed=args.seed, data_root=args.data_root,
        refit=not args.no_refit, refit_seeds=args.refit_seeds, baseline=not args.no_baseline,
        device=args.device, max_failures=args.max_failures,
        tracking_timeout=args.tracking_timeout, checkpoint_every=args.checkpoint_every,
        reuse_workers=not args.no_reuse_workers, verbose=args.verbose,
    )
    try:
        result = run_study(options)
    except StudyFailed as exc:  # it ran, but produced no result: not bad input
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted before the study started; nothing was stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_TRACKING if result.unlogged else 0


if __name__ == "__main__":
    sys.exit(main())
