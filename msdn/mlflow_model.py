"""A trained MSDN as an MLflow model (pyfunc): region features in, calibrated class scores out.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/msdn-synthetic@best")   # run where the study ran (./mlflow.db)
    scores = model.predict(features)   # (N, R, C) float32 region features -> (N, K) float32 class scores

Column k of the scores is class k of the benchmark (its label k); row i's arg-max is the class the model
predicts for image i: the fused score alpha * S_a2v + (1 - alpha) * S_v2a of each class, with the calibration
offset gamma added to the unseen classes, at the (alpha, gamma) the refit was tested with (its checkpoint's
configuration). The features go through the model as the benchmark's float16 cache holds them (rounded to
float16 first), so the arg-max is exactly the prediction the refit's test figures count. `params={"alpha": a,
"gamma": g}` scores at other settings. Feature maps as the HDF5 stores them, (N, C, H, W), are
`maps.reshape(N, C, -1).transpose(0, 2, 1)`; `model.unwrap_python_model().predict(None, maps)` takes either.
`mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})` runs it on a GPU (default: the CPU).

The model's one artifact is the refit's checkpoint (`msdn.checkpoint`, read with `weights_only=True`); its
python_model.pkl holds only a reference to `MsdnPyfunc` in this module, no weights and no torch object, so
loading needs msdn-tune installed (`pip install -e .` in a clone). The study logs one per refit
(`msdn.study.tracking.registry`); `python -m msdn.evaluate --model URI` evaluates one's checkpoint.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from .checkpoint import checkpoint_config, model_from_checkpoint, read_checkpoint
from .config import TrainConfig
from .evaluate import subnet_scores
from .metrics import fuse_scores
from .model import MSDN

CHECKPOINT_ARTIFACT = "checkpoint"  # the model's artifact: the refit's checkpoint file
EXAMPLE_VALUES = 16384  # at most this many numbers in the logged input example (a whole CUB image has 401,408)
REQUIREMENTS = ("msdn-tune", "mlflow", "torch", "numpy")  # what loading the model imports


def region_features(features: Any) -> np.ndarray:
    """(N, R, C) or (N, C, H, W) features -> (N, R, C) float16: the benchmark cache's layout and precision."""
    array = np.asarray(features)
    if array.ndim == 4:
        array = array.reshape(array.shape[0], array.shape[1], -1).transpose(0, 2, 1)
    elif array.ndim != 3:
        raise ValueError(f"region features must be (N, R, C) or (N, C, H, W); got an array of shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float16)


def calibrated_scores(model: MSDN, features: Any, alpha: float, gamma: float, *, batch_size: int = 500,
                      device: Any = "cpu") -> np.ndarray:
    """(N, K) float32: the fused margin-free scores at `alpha` plus `gamma` on the unseen classes. Their arg-max is
    `msdn.metrics.calibrated_predictions` of the fused scores (the same sum), the prediction evaluation counts."""
    regions = region_features(features)
    a2v, v2a = subnet_scores(model, regions, np.arange(len(regions)), batch_size=batch_size, device=device)
    scores = fuse_scores(a2v, v2a, alpha)
    return scores + gamma * (~model.seen).cpu().numpy().astype(scores.dtype)


class MsdnPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc: `load_context` reads the checkpoint artifact, `predict` returns `calibrated_scores`.

    Saved as a reference to this class (it holds nothing until `load_context`), so MLflow pickles no torch object.
    """

    def load_context(self, context) -> None:
        from .device import resolve_device

        path = context.artifacts[CHECKPOINT_ARTIFACT]
        self.checkpoint = path  # what `python -m msdn.evaluate --model` evaluates
        state = read_checkpoint(path)
        self.config: TrainConfig = checkpoint_config(state, path)
        self.device = resolve_device(str((context.model_config or {}).get("device", "cpu")))
        self.model = model_from_checkpoint(state, path).to(self.device).eval()

    # np.ndarray: a type hint MLflow derives no second signature from (the logged signature stands)
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """`model_input`: (N, R, C) or (N, C, H, W) features; `params`: "alpha" and "gamma", by default the
        checkpoint's. Returns the (N, K) calibrated class scores."""
        params = params or {}
        return calibrated_scores(self.model, model_input, float(params.get("alpha", self.config.alpha)),
                                 float(params.get("gamma", self.config.gamma)),
                                 batch_size=self.config.eval_batch_size, device=self.device)


def model_signature(model: MSDN, config: TrainConfig):
    """Float32 (-1, -1, C) region features (any number of images and regions) in, float32 (-1, K) class scores
    out; the parameters alpha and gamma, by default the checkpoint's."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    channels, classes = int(model.W_1.shape[1]), int(model.n_classes)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, channels))]),  # unnamed: a plain array goes in
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "class_scores")]),
        params=ParamSchema([ParamSpec("alpha", "double", float(config.alpha)),
                            ParamSpec("gamma", "double", float(config.gamma))]))


def input_example(features: np.ndarray) -> np.ndarray:
    """The first image of `features` ((N, R, C) or (N, C, H, W)) as a (1, R', C) float32 input: its first regions,
    at most EXAMPLE_VALUES numbers (the model takes any number of regions; a whole image of a real benchmark would
    make a JSON file of megabytes)."""
    regions = region_features(np.asarray(features)[:1])
    keep = max(1, EXAMPLE_VALUES // regions.shape[2])
    return regions[:1, :keep].astype(np.float32)


def requirements() -> list[str]:
    """pip requirements of the model: the installed versions of REQUIREMENTS."""
    found = []
    for name in REQUIREMENTS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:  # msdn-tune run from a source tree without installing it
            found.append(name)
    return found


def save_pyfunc(path: Path, checkpoint: Path, example: np.ndarray | None = None, *, mlflow_model=None,
                metadata_: dict[str, Any] | None = None) -> Path:
    """Write the MLflow model of `checkpoint` (a msdn.train checkpoint) into the new folder `path`: the pyfunc,
    its signature (`model_signature`), `example` (region features) as its input example, and its requirements.
    `mlflow_model`: the `mlflow.models.Model` it belongs to (a logged model's ids), None for a plain folder."""
    state = read_checkpoint(checkpoint)
    config = checkpoint_config(state, checkpoint)
    signature = model_signature(model_from_checkpoint(state, checkpoint), config)
    mlflow.pyfunc.save_model(str(path), python_model=MsdnPyfunc(), artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                             signature=signature, input_example=example, pip_requirements=requirements(),
                             mlflow_model=mlflow_model, metadata=metadata_)
    return path

