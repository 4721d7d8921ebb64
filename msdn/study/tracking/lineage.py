"""Data lineage: what each trial and refit trained and was evaluated on, as MLflow dataset inputs.

Every run of a study records one dataset per split it read (`MlflowClient.log_inputs`), so the runs list's
Datasets column and the run page say what it saw. A dataset is named `<dataset>/<protocol>/<split>`
(`synthetic/val/train`), carries the input tag `mlflow.data.context` (training, validation or test), and:

    digest   16 hex digits of SHA-256 over the features' digest, the split file's and the split's images and
             classes: equal for runs on the same data, different when a feature file, the split file or the
             split differs
    source   the HDF5 feature file (source type "local")
    schema   the features as the model reads them: float16 (-1, R, C) region features, int64 labels
    profile  images, classes, the feature file with its digest (`features_sha256`), the split file with its
             (`splits_sha256`), and the indices' digest

The features' digest is that of the float16 feature cache, which the trials read: SHA-256 over the per-block
digests its build recorded in its sidecar (msdn.data.cache), so no run reads gigabytes to name its data; the
split file (xlsa17's att_splits.mat, kilobytes) is hashed whole. Trials record training and validation
(the val protocol's splits) or training and test (the paper protocol's), refits training (trainval) and test.
`study_data` computes it all once per study, on the driver, before the trials (`ParentRun.open`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for the role of a dataset in a run
TRAINING, VALIDATION, TEST = "training", "validation", "test"  # the contexts MLflow's UI knows
DIGEST_CHARS = 16  # MLflow stores up to 36


@dataclass(frozen=True)
class DataSplit:
    """One split of a benchmark as a run's dataset input."""

    name: str  # <dataset>/<protocol>/<split>
    context: str  # TRAINING, VALIDATION or TEST
    digest: str
    source: str  # the HDF5 feature file
    profile: dict[str, Any]
    schema: str  # MLflow's tensor dataset schema, as JSON

    def dataset_input(self):
        """The MLflow `DatasetInput` of this split, with its context tag."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=self.name, digest=self.digest, source_type="local",
                          source=json.dumps({"uri": self.source}), schema=self.schema,
                          profile=json.dumps(self.profile))
        return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, self.context)])


@dataclass(frozen=True)
class StudyData:
    """The datasets of a study's trials and refits, and an input example for the refits' models."""

    trial: tuple[DataSplit, ...]
    refit: tuple[DataSplit, ...]
    example: np.ndarray | None = field(default=None, compare=False)  # one test image's first regions (mlflow_model)

    def inputs(self, splits: tuple[DataSplit, ...]) -> list:
        return [split.dataset_input() for split in splits]

    @property
    def test(self) -> DataSplit | None:
        """The refits' test split (their test figures are linked to it on their logged models)."""
        return next((split for split in self.refit if split.context == TEST), None)


def sha256_file(path: Path, block: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def features_digest(sidecar: Path) -> str:
    """SHA-256 of the feature cache's content, from the block digests its sidecar records (no data read)."""
    record = json.loads(sidecar.read_text())
    content = {key: record[key] for key in ("shape", "dtype", "block_bytes", "sha256")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def indices_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def split_data(name: str, context: str, features: dict[str, Any], splits: dict[str, Any], images: np.ndarray,
               classes: np.ndarray, seen: np.ndarray, shape: tuple[int, int]) -> DataSplit:
    """The DataSplit of the images `images`, among the candidate classes `classes` (`seen`: which are seen)."""
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec

    indices = indices_digest(np.sort(images), classes, seen.astype(np.int64))
    digest = hashlib.sha256(f"{features['sha256']}:{splits['sha256']}:{indices}".encode()).hexdigest()[:DIGEST_CHARS]
    profile = {"images": int(len(images)), "classes": int(len(classes)), "seen_classes": int(seen.sum()),
               "unseen_classes": int((~seen).sum()), "features": features["path"],
               "features_sha256": features["sha256"], "features_cache": features["cache"],
               "splits": splits["path"], "splits_sha256": splits["sha256"], "indices_sha256": indices}
    schema = TensorDatasetSchema(features=Schema([TensorSpec(np.dtype(np.float16), (-1, *shape), "region_features")]),
                                 targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]))
    return DataSplit(name, context, digest, features["path"], profile, json.dumps(schema.to_dict()))


def study_data(dataset: str, data_root: str, protocol: str, val_fraction: float, val_seed: int) -> StudyData:
    """The datasets of a study's trials (`protocol`, with the val protocol's holdout settings) and refits (the
    paper protocol: trainval, test), from the benchmark's files; read on the driver, once."""
    from msdn.data import benchmark_paths, cache_path, load_benchmark, make_split
    from msdn.data.cache import sidecar_path
    from msdn.mlflow_model import input_example

    bench = load_benchmark(dataset, data_root, progress=None)
    paths = benchmark_paths(dataset, data_root)
    cache = cache_path(paths.hdf5, paths.cache_dir)
    features = {"path": str(paths.hdf5.resolve()), "cache": str(cache.resolve()),
                "sha256": features_digest(sidecar_path(cache))}
    has_splits = paths.att_splits.is_file()
    splits = {"path": str(paths.att_splits.resolve()) if has_splits else None,
              "sha256": sha256_file(paths.att_splits) if has_splits else None}

    def pair(protocol: str, fraction: float, seed: int, evaluation: str) -> tuple[DataSplit, DataSplit]:
        split = make_split(bench, protocol, val_fraction=fraction, seed=seed)
        train = "train" if protocol == "val" else "trainval"
        held = "validation" if protocol == "val" else "test"
        prefix = f"{dataset}/{protocol}/"
        return (split_data(prefix + train, TRAINING, features, splits, split.train_idx, split.class_ids,
                           split.seen, bench.feature_shape),
                split_data(prefix + held, evaluation, features, splits,
                           np.concatenate([split.eval_seen_idx, split.eval_unseen_idx]), split.class_ids,
                           split.seen, bench.feature_shape))

    trial = pair(protocol, val_fraction, val_seed, VALIDATION if protocol == "val" else TEST)
    refit = pair("paper", val_fraction, val_seed, TEST)
    return StudyData(trial=trial, refit=refit, example=input_example(bench.features[bench.test_seen_loc[:1]]))


def study_data_of(opts, space, progress=None) -> StudyData | None:
    """The datasets of the study of `opts` (StudyOptions) and `space` (SearchSpace): `study_data` with the holdout
    settings its trials use (the recipe's, with the space's fixed settings); None, said in one line through
    `progress`, when they cannot be read (the runs then have no dataset inputs; the study goes on)."""
    from msdn.config import default_config

    recipe = default_config(opts.dataset, **space.fixed)
    try:
        return study_data(opts.dataset, opts.data_root, opts.protocol, recipe.val_fraction, recipe.val_seed)
    except Exception as exc:  # noqa: BLE001 - lineage describes the runs; its failure must not stop the study
        if progress:
            progress(f"MLflow: the runs get no dataset inputs ({type(exc).__name__}: {exc})")
        return None
