"""msdn/study/started.py and msdn/study/lock.py: what --resume may change, and one process per study.

In-process against real files (a real study_request.json, real search space files, real flock locks held by
another process); one subprocess runs tune/run.py as a user would and checks the refusal comes before Ray.
The real second start of a running study is tests/test_study.py's slow test.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msdn.fsutil import LockHeld, held_lock, lock_holder
from msdn.study.lock import study_lock
from msdn.study.options import FIELDS, StudyError, StudyRequest, check_storage, flag_names, lock_path, resolve_options
from msdn.study.started import RECORD_FILE, check_resume, read_record, write_record

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
EXPERIMENT = "msdn-synthetic-val"


def kept_flags() -> set[str]:
    return {flag_names(f)[-1] for f in FIELDS if f.metadata["flag"].kept}


@pytest.fixture
def study(tmp_path, synthetic_root):
    """A new study's options and its recorded start, with a search space file of its own (tuner.pkl faked)."""
    space = tmp_path / "space.yaml"
    shutil.copyfile(REPO / "search_spaces" / "synthetic.yaml", space)
    args = dict(dataset="synthetic", data_root=str(synthetic_root), storage_path=str(tmp_path / "results"),
                search_space=space, num_samples=6, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    opts, _ = resolve_options(StudyRequest(**args))
    record = write_record(opts, concurrency=2)
    (tmp_path / "results" / EXPERIMENT / "tuner.pkl").write_bytes(b"")  # what --resume looks for
    return args, opts, record


def resumed(args: dict, **changes):
    return resolve_options(StudyRequest(**{**args, **changes, "resume": True}))[0]


def test_the_record_holds_every_option_the_space_and_the_concurrency(study):
    args, opts, record = study
    stored = json.loads((Path(opts.storage_path) / EXPERIMENT / RECORD_FILE).read_text())
    assert set(stored["options"]) == {f.name for f in FIELDS}
    assert stored["options"]["num_samples"] == 6 and stored["options"]["search_space"] == str(args["search_space"])
    assert stored["search_space"]["asha"]["max_t"] == opts.max_epochs and stored["concurrency"] == 2
    assert re.fullmatch(r"pid \d+ on host \S+ at [\d-]+ [\d:]+", stored["started"])
    assert read_record(opts) == record


def test_resume_with_the_same_options_or_those_that_may_change(study, tmp_path):
    args, _, record = study
    assert check_resume(resumed(args)) == record
    moved = tmp_path / "elsewhere" / "same content.yaml"
    moved.parent.mkdir()
    moved.write_text("# a comment and another layout change nothing\n" + args["search_space"].read_text())
    free = dict(search_space=moved, verbose=True, tracking_timeout=5.0, device="cpu", checkpoint_every=2,
                max_failures=3, cpus_per_trial=2.0, gpus_per_trial=0.0, refit=False, reuse_workers=True)
    assert check_resume(resumed(args, **free)) == record


@pytest.mark.parametrize("change, says", [
    ({"num_samples": 20}, "--num-samples: started with 6, now 20 (Tune keeps the number of trials"),
    ({"seed": 1}, "--seed: started with 0, now 1"),
    ({"max_epochs": 4}, "--max-epochs: started with 8, now 4 (ASHA keeps its max_t"),
    ({"refit_seeds": 5}, "--refit-seeds: started with 3, now 5"),
    ({"baseline": False}, "--no-baseline: started with not given, now given"),
    ({"max_concurrent": 4},
     "--max-concurrent: started with not given (as many as the cluster's resources hold), now 4"),
    ({"reuse_workers": False}, "--no-reuse-workers: started with not given, now given"),
    ({"protocol": "paper"}, "--protocol: started with val, now paper"),
])
def test_resume_refuses_a_kept_option_naming_flag_old_and_new_value(study, change, says):
    args, opts, _ = study
    with pytest.raises(StudyError) as err:
        check_resume(resumed(args, **change, experiment=opts.experiment))
    message = str(err.value)
    assert message.startswith(f"--resume: the study {EXPERIMENT!r} was started with other values")
    assert says in message and str(Path(opts.storage_path) / EXPERIMENT / RECORD_FILE) in message
    assert "another --experiment" in message and "\n" not in message


def test_resume_refuses_another_store_and_names_every_difference_at_once(study, tmp_path):
    args, _, _ = study
    with pytest.raises(StudyError) as err:
        check_resume(resumed(args, mlflow_uri=f"sqlite:///{tmp_path / 'other.db'}", num_samples=7))
    message = str(err.value)
    assert f"--mlflow-uri: started with sqlite:///{tmp_path / 'mlflow.db'}, now sqlite:///{tmp_path / 'other.db'}" \
        in message and "--num-samples: started with 6, now 7" in message


def test_resume_refuses_a_search_space_whose_content_changed_naming_the_keys(study):
    args, _, _ = study
    space = args["search_space"]
    text = space.read_text()
    assert "asha:" in text
    changed = space.with_name("changed.yaml")
    changed.write_text(text.replace("seed: 0", "seed: 5") + "\nextra: 1\n")
    with pytest.raises(StudyError) as err:
        check_resume(dataclasses.replace(resumed(args), search_space=changed))
    message = str(err.value)
    assert f"--search-space {changed} differs from the file the study was started with ({space})" in message
    assert "searcher.seed 0, now 5" in message and "extra (absent), now 1" in message


def test_a_damaged_record_is_refused_by_name_and_a_missing_one_resumes_unchecked(study):
    args, opts, _ = study
    path = Path(opts.storage_path) / EXPERIMENT / RECORD_FILE
    path.write_text("{not json")
    with pytest.raises(StudyError, match=re.escape(f"--resume: {path} cannot be read")):
        check_resume(resumed(args))
    path.unlink()
    assert check_resume(resumed(args, num_samples=99)) is None  # a study from before the record: unchecked


def test_docs_resume_table_lists_every_option_and_exactly_the_kept_ones():
    text = (REPO / "docs" / "resume.md").read_text()
    section = text.split("## What --resume may change", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(--[\w-]+)`[^|]*\| ([^|]+)\|", section, re.M))
    assert {flag for flag, status in rows.items() if status.strip().startswith("kept")} == kept_flags()
    assert set(rows) == {flag_names(f)[-1] for f in FIELDS} - {"--resume"}


# -- the lock ------------------------------------------------------------------------------------------------
HOLD = """
import sys, time
from msdn.fsutil import held_lock
with held_lock(sys.argv[1], "pid 4242 on host elsewhere: python tune/run.py --dataset synthetic"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(study):
    """Another process holding the study's lock, as a running study does."""
    _, opts, _ = study
    path = lock_path(opts)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    yield path
    proc.kill()
    proc.wait()


def test_a_held_lock_refuses_at_once_naming_its_holder_and_goes_with_its_process(study, holder):
    args, opts, _ = study
    before = holder.read_text()
    assert lock_holder(holder) == "pid 4242 on host elsewhere: python tune/run.py --dataset synthetic"
    for request in (StudyRequest(**args), StudyRequest(**args, resume=True)):  # the same command, and --resume
        start = time.monotonic()
        with pytest.raises(StudyError) as err:
            resolve_options(request)
        assert time.monotonic() - start < 10
        assert str(err.value).startswith(
            f"the study {EXPERIMENT!r} ({opts.storage_path}/{EXPERIMENT}) is running now "
            "(pid 4242 on host elsewhere: python tune/run.py --dataset synthetic; lock file")
    with pytest.raises(StudyError, match="is running now"):  # two starts that passed the checks together
        with study_lock(opts):
            pass
    assert holder.read_text() == before  # asking changed nothing


def test_the_lock_is_released_with_its_block_and_by_a_killed_process(study, tmp_path):
    _, opts, _ = study
    with study_lock(opts):
        assert lock_holder(lock_path(opts)).startswith(f"pid {os.getpid()} on host ")
        with pytest.raises(LockHeld):
            with held_lock(lock_path(opts), "second"):
                pass
    assert lock_holder(lock_path(opts)) is None
    check_storage(dataclasses.replace(opts, resume=True))  # free again: resumable
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path(opts))], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "held" and lock_holder(lock_path(opts)) is not None
    proc.kill()  # SIGKILL: no clean-up runs, the kernel releases the lock
    proc.wait()
    assert lock_holder(lock_path(opts)) is None
    assert lock_holder(tmp_path / "no such.lock") is None and not (tmp_path / "no such.lock").exists()


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_changed_resume_is_refused_by_tune_run_before_ray_and_changes_nothing(study, tmp_path):
    args, opts, _ = study
    folder = Path(opts.storage_path) / EXPERIMENT
    before = {p: p.read_bytes() for p in folder.iterdir()}
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    command = RUN + ["--dataset", "synthetic", "--data-root", args["data_root"], "--storage-path", args["storage_path"],
                     "--search-space", str(args["search_space"]), "--mlflow-uri", args["mlflow_uri"],
                     "--num-samples", "9", "--resume"]
    start = time.monotonic()
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert time.monotonic() - start < 60 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--num-samples: started with 6, now 9" in errors[0]
    assert not list(ray_tmp.iterdir()) and not (tmp_path / "mlflow.db").exists()  # no Ray, no MLflow store
    assert {p: p.read_bytes() for p in folder.iterdir()} == before  # nothing written, not even a lock file
