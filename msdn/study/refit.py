"""The refit: the best configuration retrained on trainval and evaluated once on the test split.

Under the validation protocol trials never see the test split; the refit is the study's single look
at it. It trains for the best trial's best epoch count with the best trial's own seed, as one Ray
task with a trial's resources (`refit_best` on the driver, `refit_and_test` on a worker).
"""
from __future__ import annotations

import time
from typing import Any

from msdn.progress import Progress
from msdn.study.options import StudyFailed, StudyOptions
from msdn.study.results import RefitResult, TrialSummary
from msdn.study.trainable import DataSpec, curve_lists, on_this_worker, trial_config


def refit_and_test(base: dict[str, Any], best_params: dict[str, Any], epochs: int, seed: int,
                   data: DataSpec) -> RefitResult:
    """Retrain the chosen configuration on trainval for `epochs` epochs; evaluate ONCE on the test split."""
    from msdn.data import load_benchmark, make_split
    from msdn.train import Trainer

    cfg = on_this_worker(trial_config(base, best_params, seed).replace(protocol="paper", epochs=epochs))
    bench = load_benchmark(data.dataset, data.data_root, progress=None)
    split = make_split(bench, "paper")
    trainer = Trainer(cfg, bench, split, progress=None)
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch()
    result = trainer.evaluate()
    return RefitResult(metrics=result.summary(), epochs=epochs, seed=seed, train_time=time.perf_counter() - start,
                       curve=curve_lists(result.curve))


def refit_best(opts: StudyOptions, base: dict[str, Any], best: TrialSummary, resources: dict[str, float],
               progress: Progress = print) -> RefitResult:
    """Run `refit_and_test` for the best trial as a Ray task; StudyFailed if it fails."""
    import ray

    epochs = int(best.best_epoch)
    seed = int(best.best.get("trial_seed", opts.seed))  # the best trial's own seed
    if progress:
        progress(f"\nrefit: training the best configuration on trainval for {epochs} epochs (its best epoch on "
                 f"validation), then evaluating once on the test split ...")
    task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_retries=opts.max_failures)(refit_and_test)
    ref = task.remote(base, best.params, epochs, seed, DataSpec(opts.dataset, opts.data_root))
    try:
        return ray.get(ref)
    except KeyboardInterrupt:  # the study was stopped: the refit must not go on, nor be tested
        ray.cancel(ref, force=True)
        raise
    except Exception as exc:  # the refit is the study's result: its failure fails the study
        raise StudyFailed(f"the refit of the best configuration failed: {exc}") from exc
