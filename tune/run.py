"""Hyperparameter study of MSDN: Optuna search + ASHA early stopping on Ray Tune, tracked in MLflow.

    python tune/run.py --dataset synthetic                      # the demo: no download needed
    python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --gpus-per-trial 0.5
    python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --resume  # continue it
    mlflow ui --backend-store-uri sqlite:///mlflow.db           # compare the trials side by side

Only flags are parsed here; the study itself lives in `msdn.study.runner` (options in `msdn.study.options`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Load torch before Ray, MLflow and h5py: its bundled oneMKL needs static TLS space that is gone once
# many other native libraries are loaded ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so",
# seen in `ray job submit` drivers).
import torch  # noqa: F401,E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout (also under `ray job submit --working-dir .`) without installing

from msdn.cli import command_parser  # noqa: E402
from msdn.study.options import add_flags  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The flags: one per field of msdn.study.options.StudyRequest, which holds their help, groups and defaults."""
    p = command_parser(
        "python tune/run.py", __doc__.split("\n\n")[0],
        "python tune/run.py --dataset synthetic        # the demo: data generated, no download",
        "python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --gpus-per-trial 0.5",
        "python tune/run.py --dataset cub --data-root /data/zsl --num-samples 40 --resume   # after a stop",
    )
    return add_flags(p)


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
    # MLflow draws a tqdm bar ("Downloading artifacts") each time a refit's model is saved; the study's console
    # has its own progress lines. A user who wants the bars back exports the variable as true.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from msdn.cli import EXIT_INTERRUPTED, EXIT_TRACKING
    from msdn.study.options import StudyFailed, requests_from_flags
    from msdn.study.runner import run_study

    requests = requests_from_flags(vars(args))  # one per --dataset value; StudyError on a bad value
    try:
        if len(requests) == 1:
            result = run_study(requests[0])
        else:
            from msdn.study.multirun import run_benchmarks

            result = run_benchmarks(requests)
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
