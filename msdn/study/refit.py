"""The refits: the chosen configuration and the authors' one, retrained on trainval with N seeds, tested once.

Under the validation protocol trials never see the test split; the refits are the study's single look
at it. The chosen configuration trains for the best trial's best epoch count; the authors' one (the
dataset's recipe in `msdn.config.DATASET_DEFAULTS`, with the search space's fixed settings) for its
own epoch count. Both use the same seeds, the first being the best trial's own seed, so each seed
gives a pair and `Refits.delta` compares them pair by pair (`msdn.study.stats`).

Every refit is one Ray task with a trial's resources (`refit_and_test`), all submitted at once. A
finished refit leaves its result and checkpoint in the study's storage,

    <storage>/<experiment>/refits/<config>-seed<N>/result.json, checkpoint.pt

so a study interrupted during the refits and resumed runs only the missing ones (`RefitStore`).
The checkpoint is a `msdn.train` checkpoint (`python -m msdn.evaluate --checkpoint`), and
`best_config.yaml` (`best_config_text`) retrains the first tuned refit with `python -m msdn.train`.
"""
from __future__ import annotations

import json
import shlex
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from msdn.checkpoint import CHECKPOINT_FILE
from msdn.progress import Progress
from msdn.study.options import StudyFailed, StudyOptions, experiment_path
from msdn.study.results import BASELINE, TUNED, RefitResult, Refits, TrialSummary, chosen_settings, refit_name
from msdn.study.per_class import class_table
from msdn.study.system_metrics import sampler
from msdn.study.trainable import DataSpec, curve_lists, on_this_worker, seen_unseen_lists, trial_config

RESULT_FILE = "result.json"
BEST_CONFIG_FILE = "best_config.yaml"
# Fields that say where a refit ran, not what it computed: a stored result with other values is still valid.
PLACE_FIELDS = ("data_root", "device")


@dataclass(frozen=True)
class RefitSpec:
    """One refit to run: which configuration, its seed, and the complete TrainConfig it trains with."""

    config: str  # TUNED or BASELINE
    seed: int
    train_config: dict[str, Any]  # TrainConfig.to_dict(): protocol "paper", the epochs to train

    @property
    def name(self) -> str:
        return refit_name(self.config, self.seed)

    @property
    def epochs(self) -> int:
        return int(self.train_config["epochs"])


def refit_seeds(first: int, study_seed: int, count: int) -> list[int]:
    """`count` distinct seeds: `first` (the best trial's own seed), then seeds drawn from the study seed.

    A function of (first, study seed) only, so --resume derives the same list and finds the stored refits;
    a longer list extends a shorter one.
    """
    seeds = [int(first)]
    state = np.random.SeedSequence([study_seed, 0x5EED]).generate_state(4 * count)
    for value in state:
        if len(seeds) == count:
            break
        seed = int(value % (2**31 - 1))
        if seed not in seeds:
            seeds.append(seed)
    return seeds


def tuned_config(base: dict[str, Any], best: TrialSummary, seed: int) -> dict[str, Any]:
    """The chosen configuration as trained by its refit: trainval ("paper" split), the best epoch count, `seed`,
    and the evaluation-time settings the best trial chose at its best epoch (its settings grid), when it has them."""
    cfg = trial_config(base, {**best.params, **chosen_settings(best.best)}, seed).replace(protocol="paper", epochs=int(best.best_epoch))
    return cfg.validate().to_dict()


def baseline_config(base: dict[str, Any], fixed: dict[str, Any], seed: int) -> dict[str, Any]:
    """The authors' configuration for the dataset (with the search space's fixed settings) on trainval, `seed`.

    It trains for the recipe's own epoch count, not the study's --max-epochs: the question is whether the
    tuned configuration beats the recipe as published.
    """
    from msdn.config import default_config

    recipe = default_config(base["dataset"], **fixed)
    return recipe.replace(protocol="paper", seed=seed, data_root=base["data_root"],
                          device=base["device"]).validate().to_dict()


def refit_plan(opts: StudyOptions, base: dict[str, Any], fixed: dict[str, Any], best: TrialSummary) -> list[RefitSpec]:
    """The refits of a study: the tuned configuration with each seed, then the authors' with the same seeds."""
    first = int(best.best.get("trial_seed", opts.seed))  # the best trial's own seed
    seeds = refit_seeds(first, opts.seed, opts.refit_seeds)
    specs = [RefitSpec(TUNED, s, tuned_config(base, best, s)) for s in seeds]
    if opts.baseline:
        specs += [RefitSpec(BASELINE, s, baseline_config(base, fixed, s)) for s in seeds]
    return specs


def _filesystem(uri: str):
    """(pyarrow filesystem, path in it) for a local absolute path or a URI (s3://, gs://), as Tune's storage."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def write_file(uri: str, data: bytes) -> str:
    """Write `data` at `uri` (a path or URI), atomically: under a temporary name, then moved; returns `uri`."""
    filesystem, path = _filesystem(uri)
    folder, name = path.rsplit("/", 1)
    filesystem.create_dir(folder, recursive=True)
    tmp = f"{folder}/.tmp-{name}"
    with filesystem.open_output_stream(tmp) as out:
        out.write(data)
    filesystem.move(tmp, path)
    return uri


def read_file(uri: str) -> bytes | None:
    """The bytes at `uri` (a path or URI), or None when there is no such file."""
    from pyarrow import fs

    filesystem, path = _filesystem(uri)
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as src:
        return src.read()


class RefitStore:
    """The refits' results and checkpoints under <experiment>/refits/, on a local path or a URI (s3://, gs://).

    Written by the workers, read by the driver; files appear complete or not at all (`write_file`), and
    the result is written after the checkpoint, so a refit cancelled mid-way leaves no result.
    """

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    @classmethod
    def of(cls, opts: StudyOptions) -> "RefitStore":
        return cls(f"{experiment_path(opts)}/refits")

    def uri(self, name: str, file: str) -> str:
        return f"{self.root}/{name}/{file}"

    def save(self, result: RefitResult, checkpoint: Path) -> RefitResult:
        """Store the checkpoint, then the result (last: a result file means the refit is complete)."""
        stored = replace(result, checkpoint=write_file(self.uri(result.name, CHECKPOINT_FILE), checkpoint.read_bytes()))
        write_file(self.uri(result.name, RESULT_FILE), json.dumps(stored.to_json(), indent=1).encode())
        return stored

    def load(self, spec: RefitSpec) -> RefitResult | None:
        """The stored result of `spec`, when a finished refit of exactly this configuration is there."""
        data = read_file(self.uri(spec.name, RESULT_FILE))
        if data is None:
            return None
        try:
            result = RefitResult.from_json(json.loads(data))
        except (ValueError, TypeError):  # unreadable: treated as missing, the refit runs again
            return None
        same = {k: v for k, v in result.train_config.items() if k not in PLACE_FIELDS} == \
            {k: v for k, v in spec.train_config.items() if k not in PLACE_FIELDS}
        return result if same and result.config == spec.config and result.seed == spec.seed else None

    def local_checkpoint(self, result: RefitResult, folder: Path) -> Path:
        """A local file holding the refit's checkpoint (copied from object storage into `folder` when needed)."""
        if result.checkpoint and "://" not in result.checkpoint and Path(result.checkpoint).is_file():
            return Path(result.checkpoint)
        path = folder / result.name / CHECKPOINT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read_file(self.uri(result.name, CHECKPOINT_FILE)) or b"")
        return path


def refit_and_test(spec: RefitSpec, data: DataSpec, store_root: str) -> RefitResult:
    """Train `spec` on trainval for its epochs, evaluate ONCE on the test split, store result and checkpoint.

    That one evaluation gives every test figure of the result: the metrics (AUSUC at the configured alpha, which
    for the tuned configuration is the one its settings grid chose), the curves and the per-class table.
    """
    import torch

    from msdn.config import TrainConfig
    from msdn.data import load_benchmark, make_split
    from msdn.train import Trainer

    cfg = on_this_worker(TrainConfig(**spec.train_config).validate())
    bench = load_benchmark(data.dataset, data.data_root, progress=None)
    split = make_split(bench, "paper")
    trainer = Trainer(cfg, bench, split, progress=None)
    system, samples = sampler(), []  # this node's figures over each epoch, with their time (system_metrics)
    system.reset()
    start = time.perf_counter()
    for _ in range(cfg.epochs):  # no evaluation between epochs: the test split is looked at once
        trainer.train_epoch()
        trainer.epoch += 1  # what Trainer.run_epoch counts, so the checkpoint can be continued by msdn.train
        samples.append({**system.take(), "timestamp": time.time()})
    train_time = time.perf_counter() - start
    evaluation = trainer.evaluate()
    result = RefitResult(metrics=evaluation.summary(), epochs=cfg.epochs, seed=cfg.seed, train_time=train_time,
                         curve=curve_lists(evaluation.curve), config=spec.config, train_config=spec.train_config,
                         device=str(trainer.device), threads=torch.get_num_threads(), system=samples,
                         seen_unseen=seen_unseen_lists(evaluation.seen_unseen),
                         classes=class_table(evaluation.classes, split.class_ids, split.seen, bench.class_names))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        trainer.save(path, refit=spec.name)
        return RefitStore(store_root).save(result, path)


def result_line(result: RefitResult) -> str:
    m = result.metrics
    return (f"refit {result.name} ({result.epochs} epochs, {result.train_time:.0f} s): test S={m['S']:.4f} "
            f"U={m['U']:.4f} H={m['H']:.4f} ZSL={m['zsl_acc']:.4f}"
            + (f" AUSUC={m['AUSUC']:.4f}" if "AUSUC" in m else ""))  # none in a result stored by an earlier version


def run_refits(opts: StudyOptions, specs: list[RefitSpec], resources: dict[str, float], store: RefitStore,
               on_result: Callable[[RefitResult], None] = lambda _r: None, progress: Progress = print,
               stop=None) -> Refits:
    """Run the refits not already in `store` as parallel Ray tasks; `on_result` sees every result, stored or new.

    A stop request (KeyboardInterrupt; or `stop.requested`, seen within a second, when this runs in another
    thread than the signals: msdn.study.multirun) cancels the refits still running and propagates: the finished
    ones stay stored, and --resume runs only the others. A failed refit fails the study (StudyFailed).
    """
    import ray

    show = progress or (lambda _message: None)
    tuned = sum(s.config == TUNED for s in specs)
    also = " and the authors' configuration with the same seeds" if len(specs) > tuned else ""
    show(f"\nrefit: training the chosen configuration with {tuned} seed(s){also} on trainval,\n"
         f"  then evaluating each once on the test split ({len(specs)} Ray tasks; results in {store.root})")
    results: dict[str, RefitResult] = {}
    for spec in specs:
        stored = store.load(spec)
        if stored is not None:
            results[spec.name] = stored
            show(f"{result_line(stored)} [found in the study's storage: not run again]")
            on_result(stored)
    task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"],
                      max_retries=opts.max_failures)(refit_and_test)
    data = DataSpec(opts.dataset, opts.data_root)
    pending = {task.remote(spec, data, store.root): spec for spec in specs if spec.name not in results}
    try:
        while pending:
            if stop is not None and stop.requested:
                raise KeyboardInterrupt(stop.signal_name)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # returns often: Ctrl+C is seen at once
            for ref in ready:
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the refits are the study's result: a failed one fails the study
                    raise StudyFailed(f"the refit {spec.name} (the {spec.config} configuration, seed {spec.seed}) "
                                      f"failed: {exc}") from exc
                results[spec.name] = result
                show(f"{result_line(result)} [{len(results)}/{len(specs)}]")
                on_result(result)
    except BaseException as exc:
        # A stopped or failed study must not go on training, nor testing. Only tasks still running are cancelled:
        # force-cancelling one that has just finished can abort the driver inside Ray 2.60 ("Tried to complete
        # task that was not pending", task_manager.cc), seen once in a Ctrl+C during the refits.
        _, running = ray.wait(list(pending), num_returns=len(pending), timeout=0) if pending else ([], [])
        for ref in running:
            ray.cancel(ref, force=True)
        if isinstance(exc, KeyboardInterrupt) and pending:
            show(f"refits interrupted: {len(results)} of {len(specs)} seen finished; every finished one is kept in\n"
                 f"  {store.root}, and --resume runs only the others")
        raise
    ordered = [results[s.name] for s in specs]
    return Refits(tuned=[r for r in ordered if r.config == TUNED],
                  baseline=[r for r in ordered if r.config == BASELINE])


def repeat_command(path: str, dataset: str, refit: RefitResult | None = None) -> str:
    """The command that trains `path` (a best_config.yaml); given the refit it repeats, on its device and threads.

    The path comes last, so that a printed command too long for a line breaks before it (report.command_lines),
    and quoted for the shell (a path with a space or a quote pastes as one argument)."""
    if refit is None:
        return f"python -m msdn.train --dataset {dataset} --config {shlex.quote(path)}"
    device = "cpu" if refit.device == "cpu" else "cuda"
    return (f"OMP_NUM_THREADS={refit.threads} python -m msdn.train --dataset {dataset} --device {device} "
            f"--config {shlex.quote(path)}")


def best_config_text(train_config: dict[str, Any], experiment: str, refit: RefitResult | None) -> str:
    """best_config.yaml: every TrainConfig field of the chosen configuration, for `python -m msdn.train --config`.

    Training from it repeats the first tuned refit (trainval, its epochs and seed): its last epoch's test
    figures are `refit`'s, bit for bit on the refit's device and number of CPU threads (float sums depend on
    both, and a few epochs of training amplify the last bits into different figures).
    """
    import yaml

    dataset = train_config["dataset"]
    lines = [f"# The configuration study {experiment!r} chose: trains on trainval (protocol paper) for "
             f"{train_config['epochs']} epochs (its best", f"# epoch count) with seed {train_config['seed']}. "
             f"Run it with (flags override the file, e.g. --data-root, --seed)",
             f"#   {repeat_command(BEST_CONFIG_FILE, dataset)}",
             "# msdn.train prints test figures every epoch: do not choose an epoch or a setting by them."]
    if refit is not None:
        m = refit.metrics
        lines += [f"# The study's refit with this seed ({refit.checkpoint}) reached test S={m['S']:.4f} U={m['U']:.4f} "
                  f"H={m['H']:.4f} ZSL={m['zsl_acc']:.4f}",
                  "# at the last epoch; the same figures, bit for bit, on its device and CPU threads:",
                  f"#   {repeat_command(BEST_CONFIG_FILE, dataset, refit)}"]
    return "\n".join(lines) + "\n" + yaml.safe_dump(train_config, sort_keys=False)


def write_best_config(opts: StudyOptions, train_config: dict[str, Any], folder: Path,
                      refit: RefitResult | None = None) -> tuple[str, Path]:
    """Write best_config.yaml next to the study's results and into `folder` (for MLflow); returns (where, local copy).

    `refit`: the refit the file repeats, when the study ran one (the file then gives its figures).
    """
    text = best_config_text(train_config, opts.experiment, refit)
    local = folder / BEST_CONFIG_FILE
    local.write_text(text)
    return write_file(f"{experiment_path(opts)}/{BEST_CONFIG_FILE}", text.encode()), local
