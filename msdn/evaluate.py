"""Evaluate MSDN with the GZSL protocol; load our checkpoints or the authors' state dicts.

    python -m msdn.evaluate --dataset cub --data-root DIR --checkpoint FILE [--json]
    python -m msdn.evaluate --dataset cub --data-root DIR --model models:/msdn-cub@best [--mlflow-uri URI]

FILE is a checkpoint written by `msdn.train` or a state dict saved by the authors' code
(`V, W_1, W_2, W_3, W_1_1, W_2_1, W_3_1, att, mask_bias, bias, ...`; a `resnet101.*` backbone
in it is ignored because features are given). The authors' checkpoints are for the paper split.
A file that cannot be used (damaged, foreign, of another dataset or protocol) is a CheckpointError
naming it; the command then exits with 2 (msdn.cli). `--model` takes an MLflow model a study registered
(msdn.mlflow_model) and evaluates its checkpoint exactly as `--checkpoint` evaluates the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .checkpoint import (check_shapes, checkpoint_config, describe, model_from_checkpoint, read_checkpoint,
                         required_tensors)
from .cli import CheckpointError, UsageError, cli_entry, command_parser, device_flag
from .config import DATASET_DEFAULTS, DATASETS, PROTOCOLS, TrainConfig, default_config
from .data import Benchmark, ZSLSplit, check_data_present, load_benchmark, make_split, read_rows
from .metrics import EvalGrid, GZSLResult, fuse_scores, gzsl_evaluate
from .model import MSDN
from .progress import to_stderr

AUTHORS_KEYS = ("V", "W_1", "W_2", "W_1_1", "W_2_1", "att", "mask_bias", "bias")


@torch.no_grad()
def subnet_scores(
    model: MSDN,
    features: np.ndarray,
    indices: np.ndarray,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    feature_cache: Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Both sub-nets' margin-free class scores (S_a2v, S_v2a) for images `indices`, each of shape (n, K).

    `feature_cache`, when given, is the whole feature array already on `device` (no host copies).
    """
    model.eval()
    margin = model.class_margin
    a2v, v2a = [], []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        if feature_cache is not None:
            batch = feature_cache[torch.as_tensor(idx, device=feature_cache.device)]
        else:
            batch = torch.from_numpy(read_rows(features, idx)).to(device, non_blocking=True)
        out = model(batch)
        a2v.append((out.scores_a2v - margin).float().cpu().numpy())
        v2a.append((out.scores_v2a - margin).float().cpu().numpy())
    if not a2v:
        empty = np.zeros((0, model.n_classes), dtype=np.float32)
        return empty, empty.copy()
    return np.concatenate(a2v), np.concatenate(v2a)


def fused_scores(
    model: MSDN,
    features: np.ndarray,
    indices: np.ndarray,
    alpha: float,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    feature_cache: Tensor | None = None,
) -> np.ndarray:
    """Margin-free fused scores alpha * S_a2v + (1 - alpha) * S_v2a for images `indices`, shape (n, K)."""
    a2v, v2a = subnet_scores(model, features, indices, batch_size=batch_size, device=device,
                             feature_cache=feature_cache)
    return fuse_scores(a2v, v2a, alpha)


def evaluate_model(
    model: MSDN,
    features: np.ndarray,
    labels: np.ndarray,
    seen_idx: np.ndarray,
    unseen_idx: np.ndarray,
    *,
    alpha: float,
    gamma: float,
    gammas: np.ndarray,
    grid: EvalGrid | None = None,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    feature_cache: Tensor | None = None,
) -> GZSLResult:
    """S/U/H at (`alpha`, `gamma`), ZSL accuracy, AUSUC at `alpha`, the settings `grid`, the calibration and
    seen-unseen curves and the per-class accuracies, from one forward pass.

    Both sub-nets' scores are kept, so the settings grid (alpha x gamma; None: `alpha` x `gammas`) costs no
    further forward pass (`msdn.metrics.gzsl_evaluate`).
    `labels` are per-image class indices into the model's classes (the split's remapped labels).
    """
    kwargs = dict(batch_size=batch_size, device=device, feature_cache=feature_cache)
    seen_a2v, seen_v2a = subnet_scores(model, features, seen_idx, **kwargs)
    unseen_a2v, unseen_v2a = subnet_scores(model, features, unseen_idx, **kwargs)
    return gzsl_evaluate(seen_a2v, seen_v2a, labels[seen_idx], unseen_a2v, unseen_v2a, labels[unseen_idx],
                         (~model.seen).cpu().numpy(), alpha=alpha, gamma=gamma, gammas=gammas, grid=grid)


def is_authors_state_dict(state: Mapping[str, Tensor]) -> bool:
    """Whether `state` looks like the authors' MSDN state dict (two or more of its keys, none of ours)."""
    return "model" not in state and sum(key in state for key in AUTHORS_KEYS) >= 2


def model_from_authors_state_dict(state: Mapping[str, Tensor], *, normalize_v: bool = False,
                                  path: str | Path | None = None) -> MSDN:
    """Build our MSDN carrying the weights of a state dict saved by the authors' MSDN.

    Their `att` is already row-normalised; their margin is `mask_bias * bias` (-1 seen, +1 unseen).
    Keys that feed nothing at test time (W_3, W_3_1, weight_ce, prob_prune, resnet101.*) are ignored.
    A missing key or a shape that does not fit the others is a CheckpointError naming it.
    """
    where = f"--checkpoint {path}" if path is not None else "the state dict"
    w = required_tensors(state, AUTHORS_KEYS, where, "the authors' MSDN state dict")
    if w["V"].dim() != 2 or w["att"].dim() != 2 or w["W_1"].dim() != 2:
        raise CheckpointError(f"{where}: V, att and W_1 have shapes {tuple(w['V'].shape)}, "
                              f"{tuple(w['att'].shape)} and {tuple(w['W_1'].shape)}; expected matrices")
    (n_att, dim_v), n_classes, n_channels = w["V"].shape, w["att"].shape[0], w["W_1"].shape[1]
    check_shapes({
        "W_1": (w["W_1"].shape, (dim_v, n_channels)), "W_2": (w["W_2"].shape, (dim_v, n_channels)),
        "W_1_1": (w["W_1_1"].shape, (n_channels, dim_v)), "W_2_1": (w["W_2_1"].shape, (dim_v, n_channels)),
        "att": (w["att"].shape, (n_classes, n_att)), "mask_bias": ((w["mask_bias"].numel(),), (n_classes,)),
        "bias": ((w["bias"].numel(),), (1,)),
    }, where, "the authors' MSDN state dict")
    margin_vec = (w["mask_bias"].reshape(-1) * w["bias"].reshape(())).float()
    seen = margin_vec < 0
    model = MSDN(w["V"].float(), w["att"].float(), seen, n_channels, normalize_v=normalize_v)
    with torch.no_grad():
        for name in ("V", "W_1", "W_2", "W_1_1", "W_2_1"):
            getattr(model, name).copy_(w[name].float())
        model.att.copy_(w["att"].float())  # keep theirs verbatim (already normalised)
        model.class_margin.copy_(margin_vec)
    return model


def load_checkpoint_model(path: str | Path, config: TrainConfig | None = None) -> tuple[MSDN, dict]:
    """Load `path` (ours or the authors'); returns the model and our checkpoint dict (empty for theirs).

    Every way a file can be unusable (not a checkpoint, damaged, refused globals, missing keys, shapes that
    do not fit) is a CheckpointError naming the file; a missing file is a FileNotFoundError.
    """
    path = Path(path)
    state = read_checkpoint(path)
    if isinstance(state, Mapping) and ("model" in state or "config" in state):
        return model_from_checkpoint(state, path), dict(state)
    if isinstance(state, Mapping) and is_authors_state_dict(state):
        normalize_v = config.normalize_v if config is not None else False
        return model_from_authors_state_dict(state, normalize_v=normalize_v, path=path), {}
    found = sorted(map(str, state))[:12] if isinstance(state, Mapping) else describe(state)
    raise CheckpointError(
        f"--checkpoint {path}: not an msdn-tune checkpoint (keys 'model', 'config', ...) nor an authors' MSDN "
        f"state dict (keys {list(AUTHORS_KEYS)}); found {found}"
    )


def check_model_fits(model: MSDN, bench: Benchmark, split: ZSLSplit, path: str | Path) -> None:
    """CheckpointError when the model's classes, seen classes, attributes or feature channels differ from the split."""
    n_channels = model.W_1.shape[1]
    mine = (model.n_classes, int(model.seen.sum()), model.n_attributes, n_channels)
    theirs = (len(split.class_ids), int(split.seen.sum()), bench.att.shape[1], bench.feature_shape[1])
    same_seen = mine == theirs and bool((model.seen.cpu().numpy() == split.seen).all())
    if not same_seen:
        raise CheckpointError(
            f"--checkpoint {path} does not fit the {split.protocol} split of {bench.name}: the checkpoint has "
            f"{mine[0]} classes ({mine[1]} seen), {mine[2]} attributes and {mine[3]} feature channels; the split has "
            f"{theirs[0]} classes ({theirs[1]} seen), {theirs[2]} attributes and {theirs[3]} channels"
            f"{' (the same counts, but other seen classes)' if mine == theirs else ''}. Expected a checkpoint trained "
            "on this dataset and protocol (--protocol chooses the split)."
        )


def build_parser() -> argparse.ArgumentParser:
    alphas = ", ".join(f"{ds} {recipe['alpha']}" for ds, recipe in DATASET_DEFAULTS.items())
    parser = command_parser(
        "python -m msdn.evaluate", __doc__.split("\n\n")[0],
        "python -m msdn.evaluate --dataset synthetic --checkpoint run.pt   # from msdn.train --checkpoint",
        "python -m msdn.evaluate --dataset synthetic --checkpoint run.pt --gamma 1.0 --json",
        "python -m msdn.evaluate --dataset cub --data-root /data/zsl --checkpoint CUB_GZSL.pth",
        "python -m msdn.evaluate --dataset cub --data-root /data/zsl --model models:/msdn-cub@best",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=DATASETS, help="benchmark the checkpoint was trained on")
    data.add_argument("--data-root", default="data", metavar="DIR", help="folder holding the benchmarks")
    data.add_argument("--protocol", choices=PROTOCOLS, default=None,
                      help="split to evaluate on (default: the checkpoint's own; 'paper' for an authors' state dict)")
    evaluation = parser.add_argument_group("evaluation")
    model = evaluation.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="FILE",
                       help="a checkpoint written by msdn.train, or an authors' MSDN state dict")
    model.add_argument("--model", metavar="URI",
                       help="an MLflow model a study logged: models:/msdn-cub@best (the winner), models:/NAME/VERSION, "
                            "models:/MODEL_ID, runs:/RUN_ID/MODEL_NAME, or a model folder")
    evaluation.add_argument("--mlflow-uri", metavar="URI", default=None,
                            help="the tracking store holding --model (default: MLFLOW_TRACKING_URI, else the study's "
                                 "store, sqlite:///<working dir>/mlflow.db)")
    evaluation.add_argument("--alpha", type=float, default=None,
                            help="sub-net fusion weight (default: the checkpoint's own; for an authors' state dict "
                                 f"the dataset's: {alphas})")
    evaluation.add_argument("--gamma", type=float, default=None,
                            help="calibrated-stacking offset (default: the checkpoint's own; "
                                 f"{TrainConfig.gamma} for an authors' state dict)")
    evaluation.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument_group("output").add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def registered_checkpoint(model_uri: str, tracking_uri: str | None) -> str:
    """The checkpoint file of the MLflow model `model_uri` (a study's refit: msdn.mlflow_model), loaded from
    `tracking_uri` (default: MLFLOW_TRACKING_URI, else the study's default sqlite:///<working dir>/mlflow.db).
    A model that cannot be loaded, or is not one of ours, is a UsageError naming --model and the store."""
    import os

    import mlflow
    from mlflow.exceptions import MlflowException

    from .study.tracking.store import default_tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    store = tracking_uri or before or default_tracking_uri()
    # MLflow 3.17 resolves models:/ URIs through the process's tracking URI only (whatever a download is given)
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"--model {model_uri}: cannot be loaded from the tracking store {store} ({reason}); "
                         "expected a model a study logged, e.g. models:/msdn-cub@best, in the store given by "
                         "--mlflow-uri (or MLFLOW_TRACKING_URI)") from None
    finally:
        mlflow.set_tracking_uri(before)  # as it was: MLFLOW_TRACKING_URI's value, or none
    checkpoint = getattr(model.unwrap_python_model(), "checkpoint", None)
    if checkpoint is None:
        raise UsageError(f"--model {model_uri}: not an msdn-tune model (an MLflow model of another kind); expected "
                         "one a study logged for a refit, e.g. models:/msdn-cub@best")
    return str(checkpoint)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m msdn.evaluate`: every flag, the data and the checkpoint are checked before any evaluation."""
    args = build_parser().parse_args(argv)
    if args.model is not None:  # the registered model's checkpoint, evaluated as --checkpoint would
        args.checkpoint = registered_checkpoint(args.model, args.mlflow_uri)
    flags = {k: v for k, v in (("alpha", args.alpha), ("gamma", args.gamma), ("protocol", args.protocol))
             if v is not None}
    default_config(args.dataset, data_root=args.data_root, **flags)  # --alpha 5 or --gamma nan: stop here
    device = device_flag(args.device)
    check_data_present(args.dataset, args.data_root)
    model, ckpt = load_checkpoint_model(args.checkpoint, default_config(args.dataset))
    if ckpt:
        config = checkpoint_config(ckpt, args.checkpoint)
        if config.dataset != args.dataset:
            raise CheckpointError(f"--checkpoint {args.checkpoint} was trained on dataset '{config.dataset}' (its "
                                  f"config); --dataset is '{args.dataset}'. Expected a checkpoint of {args.dataset}.")
    else:
        config = default_config(args.dataset)
    config = config.replace(data_root=args.data_root, **flags).validate()
    bench = load_benchmark(args.dataset, args.data_root, progress=to_stderr if args.json else print)
    split = make_split(bench, config.protocol, val_fraction=config.val_fraction, seed=config.val_seed)
    check_model_fits(model, bench, split, args.checkpoint)
    model.to(device)
    result = evaluate_model(
        model, bench.features, split.labels, split.eval_seen_idx, split.eval_unseen_idx,
        alpha=config.alpha, gamma=config.gamma, gammas=config.gamma_grid(), device=device,
        batch_size=config.eval_batch_size,
    )
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.dataset} ({config.protocol} split, alpha={config.alpha}, gamma={config.gamma}): "
              f"S={summary['S']:.4f} U={summary['U']:.4f} H={summary['H']:.4f} ZSL={summary['zsl_acc']:.4f} "
              f"AUSUC={summary['AUSUC']:.4f} | "
              f"grid alpha {summary['grid_alpha']:.2f} gamma {summary['grid_gamma']:.2f}: H={summary['H_grid']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
