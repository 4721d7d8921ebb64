"""Record the small real studies that tests/test_conclude.py ends in-process; run it again to re-record.

    python tests/data/study/record.py     # about 2 minutes on 2 CPUs; rewrites the files next to it

Re-record after a change to what a trial reports (its result keys), to the search-space format or to
`results.TrialRecord`: the tests read these files, not a live study. The script runs two studies with
tune/run.py, as a user does (a local Ray, Optuna, ASHA, a SQLite MLflow store), in a temporary folder on
the synthetic benchmark, then reads Tune's results back as the study does (`results.trial_records` of
the experiment's ResultGrid) and keeps:

- completed.json: the TrialRecords of a 10-trial study (space.yaml: at most 4 epochs, a settings grid of
  3 x 5 points so the results stay small), and the results of its refits (2 seeds, the tuned and the
  authors' configuration), without their TrainConfig (the tests derive it, as the study does);
- optuna_study.journal: that study's Optuna journal (the parameter importances are computed from it);
- failed.json: the TrialRecords of a 2-trial study whose every trial diverges (diverge.yaml).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SEED = "5"  # the study seed: one whose recording has MIN_COMPLETE trials completed
# One trial at a time: ASHA then decides from the trials' results alone (not from which finished first), so a
# re-recording gives the same states; the tests need at least MIN_COMPLETE trials run to the end (importances).
COMPLETED = ["--num-samples", "10", "--max-epochs", "4", "--seed", SEED, "--refit-seeds", "2", "--max-concurrent", "1",
             "--search-space", str(HERE / "space.yaml"), "--experiment", "msdn-synthetic-val"]
FAILED = ["--num-samples", "2", "--max-failures", "0", "--search-space", str(HERE / "diverge.yaml"),
          "--experiment", "msdn-synthetic-failed"]
MIN_COMPLETE = 4  # msdn.study.searcher.MIN_TRIALS_FOR_IMPORTANCE
DIGITS = 6  # significant digits kept of every recorded float (the tests compare renderings of the same data)


def rounded(value):
    """`value` with its floats to DIGITS significant digits (NaN and infinities as they are)."""
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def study(workdir: Path, data_root: Path, args: list[str], expect: int) -> Path:
    """Run tune/run.py with `args`; returns the experiment's folder."""
    out = subprocess.run([sys.executable, str(REPO / "tune" / "run.py"), "--dataset", "synthetic", "--data-root",
                          str(data_root), "--storage-path", str(workdir / "results"), "--mlflow-uri",
                          f"sqlite:///{workdir / 'mlflow.db'}", *args], cwd=workdir, capture_output=True, text=True)
    if out.returncode != expect:
        sys.exit(f"the study exited {out.returncode}, expected {expect}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return workdir / "results" / args[args.index("--experiment") + 1]


def records(experiment: Path) -> list[dict]:
    """The study's TrialRecords, read from Tune's files as the study reads its ResultGrid."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from msdn.study.results import trial_records

    return [rounded(r.to_json()) for r in trial_records(ResultGrid(ExperimentAnalysis(str(experiment))))]


def main() -> None:
    from msdn.synthetic import ensure_synthetic

    with tempfile.TemporaryDirectory(prefix="msdn-record-") as folder:
        workdir = Path(folder)
        ensure_synthetic(workdir / "data", progress=None)
        completed = study(workdir, workdir / "data", COMPLETED, expect=0)
        refits = []
        for path in sorted((completed / "refits").glob("*/result.json")):
            refit = json.loads(path.read_text())
            refits.append(rounded({k: v for k, v in refit.items() if k not in ("train_config", "checkpoint")}))
        (HERE / "completed.json").write_text(json.dumps({"args": COMPLETED[:-4], "records": records(completed),
                                                         "refits": refits}, indent=1) + "\n")
        shutil.copyfile(completed / "optuna_study.journal", HERE / "optuna_study.journal")
        complete = sum(not r["error"] and max((x["training_iteration"] for x in r["results"]), default=0) >= 4
                       for r in records(completed))
        errored = sum(bool(r["error"]) for r in records(completed))
        if complete < MIN_COMPLETE or errored:
            sys.exit(f"{complete} trials completed, {errored} errored; the tests need {MIN_COMPLETE} and none: change "
                     "SEED")
        failed = study(workdir, workdir / "data", FAILED, expect=1)
        (HERE / "failed.json").write_text(json.dumps({"args": FAILED[:-4], "records": records(failed)}, indent=1)
                                          + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
