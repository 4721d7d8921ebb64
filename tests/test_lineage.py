"""Data lineage (msdn/study/tracking/lineage.py): each split as an MLflow dataset, digests from the data's content."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np

from msdn.data import benchmark_paths, load_benchmark, make_split
from msdn.study.tracking.lineage import TEST, TRAINING, VALIDATION, study_data


def named(splits) -> dict:
    return {split.name: split for split in splits}


def test_each_split_is_a_dataset_with_its_context_digest_and_files(synthetic_root):
    data = study_data("synthetic", str(synthetic_root), "val", 0.2, 0)
    trial, refit = named(data.trial), named(data.refit)
    assert {n: s.context for n, s in trial.items()} == {"synthetic/val/train": TRAINING,
                                                         "synthetic/val/validation": VALIDATION}
    assert {n: s.context for n, s in refit.items()} == {"synthetic/paper/trainval": TRAINING,
                                                         "synthetic/paper/test": TEST}
    bench = load_benchmark("synthetic", synthetic_root, progress=None)
    split = make_split(bench, "val", val_fraction=0.2, seed=0)
    paths = benchmark_paths("synthetic", synthetic_root)
    profile = trial["synthetic/val/train"].profile
    assert profile["images"] == len(split.train_idx) and profile["classes"] == len(split.class_ids)
    assert profile["features"] == str(paths.hdf5.resolve()) and profile["splits"] == str(paths.att_splits.resolve())
    assert refit["synthetic/paper/test"].profile["images"] == len(bench.test_seen_loc) + len(bench.test_unseen_loc)
    assert len({s.digest for s in [*data.trial, *data.refit]}) == 4 and all(len(s.digest) == 16 for s in data.trial)
    # the same data gives the same digests (a study computes them once; a resumed one again)
    assert study_data("synthetic", str(synthetic_root), "val", 0.2, 0) == data
    # another holdout is another validation split, on the same files
    other = named(study_data("synthetic", str(synthetic_root), "val", 0.3, 0).trial)
    assert other["synthetic/val/validation"].digest != trial["synthetic/val/validation"].digest
    assert other["synthetic/val/train"].profile["features_sha256"] == profile["features_sha256"]
    # as MLflow takes it: a DatasetInput with the context tag, the source and profile as JSON
    dataset_input = trial["synthetic/val/train"].dataset_input()
    assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "training")]
    assert json.loads(dataset_input.dataset.source) == {"uri": str(paths.hdf5.resolve())}
    assert json.loads(dataset_input.dataset.profile)["splits_sha256"] == profile["splits_sha256"]
    assert "mlflow_tensorspec" in json.loads(dataset_input.dataset.schema)
    # the input example of the refits' models: one test image's regions, float32
    assert data.example.shape == (1, *bench.feature_shape) and data.example.dtype == np.float32


def test_another_feature_file_or_split_file_is_told_apart(synthetic_root, tmp_path):
    before = named(study_data("synthetic", str(synthetic_root), "paper", 0.2, 0).refit)
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    paths = benchmark_paths("synthetic", root)
    assert named(study_data("synthetic", str(root), "paper", 0.2, 0).refit) != before  # other paths in the profile
    assert {n: s.digest for n, s in named(study_data("synthetic", str(root), "paper", 0.2, 0).refit).items()} == \
        {n: s.digest for n, s in before.items()}  # a copy of the same files: the same digests
    with h5py.File(paths.hdf5, "r+") as f:
        f["feature_map"][0, 0, 0, 0] += 1.0  # one feature value changed: the cache is rebuilt from it
    changed = named(study_data("synthetic", str(root), "paper", 0.2, 0).refit)
    assert all(changed[n].digest != before[n].digest for n in before)
    assert changed["synthetic/paper/test"].profile["features_sha256"] != before["synthetic/paper/test"].profile[
        "features_sha256"]
    paths.att_splits.write_bytes(paths.att_splits.read_bytes() + b"\0")  # the split file changes (its bytes)
    resplit = named(study_data("synthetic", str(root), "paper", 0.2, 0).refit)
    assert resplit["synthetic/paper/test"].profile["splits_sha256"] != changed["synthetic/paper/test"].profile[
        "splits_sha256"]
    assert resplit["synthetic/paper/test"].digest != changed["synthetic/paper/test"].digest
