"""Evaluate MSDN with the GZSL protocol; load our checkpoints or the authors' state dicts.

    python -m msdn.evaluate --dataset cub --data-root DIR --checkpoint FILE [--json]

FILE is a checkpoint written by `msdn.train` or a state dict saved by the authors' code
(`V, W_1, W_2, W_3, W_1_1, W_2_1, W_3_1, att, mask_bias, bias, ...`; a `resnet101.*` backbone
in it is ignored because features are given). The authors' checkpoints are for the paper split.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .config import DATASETS, TrainConfig, default_config
from .data import DataError, check_data_present, load_benchmark, make_split, read_rows
from .device import resolve_device
from .metrics import GZSLResult, gzsl_evaluate
from .model import MSDN

AUTHORS_KEYS = ("V", "W_1", "W_2", "W_1_1", "W_2_1", "att", "mask_bias", "bias")


@torch.no_grad()
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
    """Margin-free fused scores alpha * S_a2v + (1 - alpha) * S_v2a for images `indices`, shape (n, K).

    `feature_cache`, when given, is the whole feature array already on `device` (no host copies).
    """
    model.eval()
    margin = model.class_margin
    chunks = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        if feature_cache is not None:
            batch = feature_cache[torch.as_tensor(idx, device=feature_cache.device)]
        else:
            batch = torch.from_numpy(read_rows(features, idx)).to(device, non_blocking=True)
        out = model(batch)
        fused = alpha * out.scores_a2v + (1.0 - alpha) * out.scores_v2a - margin
        chunks.append(fused.float().cpu().numpy())
    if not chunks:
        return np.zeros((0, model.n_classes), dtype=np.float32)
    return np.concatenate(chunks)


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
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    feature_cache: Tensor | None = None,
) -> GZSLResult:
    """S/U/H at `gamma`, ZSL accuracy and the calibration curve over `gammas`, from one forward pass.

    `labels` are per-image class indices into the model's classes (the split's remapped labels).
    """
    kwargs = dict(batch_size=batch_size, device=device, feature_cache=feature_cache)
    seen_scores = fused_scores(model, features, seen_idx, alpha, **kwargs)
    unseen_scores = fused_scores(model, features, unseen_idx, alpha, **kwargs)
    unseen = (~model.seen).cpu().numpy()
    return gzsl_evaluate(seen_scores, labels[seen_idx], unseen_scores, labels[unseen_idx], unseen, gamma, gammas)


def is_authors_state_dict(state: Mapping[str, Tensor]) -> bool:
    return all(key in state for key in ("V", "W_1", "W_1_1", "mask_bias"))


def model_from_authors_state_dict(state: Mapping[str, Tensor], *, normalize_v: bool = False) -> MSDN:
    """Build our MSDN carrying the weights of a state dict saved by the authors' MSDN.

    Their `att` is already row-normalised; their margin is `mask_bias * bias` (-1 seen, +1 unseen).
    Keys that feed nothing at test time (W_3, W_3_1, weight_ce, prob_prune, resnet101.*) are ignored.
    """
    missing = [k for k in AUTHORS_KEYS if k not in state]
    if missing:
        raise KeyError(f"the authors' MSDN state dict lacks {missing}; expected keys {list(AUTHORS_KEYS)}")
    margin_vec = (state["mask_bias"].reshape(-1) * state["bias"]).float()
    seen = margin_vec < 0
    n_channels = state["W_1"].shape[1]
    model = MSDN(state["V"].float(), state["att"].float(), seen, n_channels, normalize_v=normalize_v)
    with torch.no_grad():
        for name in ("V", "W_1", "W_2", "W_1_1", "W_2_1"):
            getattr(model, name).copy_(state[name].float())
        model.att.copy_(state["att"].float())  # keep theirs verbatim (already normalised)
        model.class_margin.copy_(margin_vec)
    return model


def load_checkpoint_model(path: str | Path, config: TrainConfig | None = None) -> tuple[MSDN, dict]:
    """Load `path` (ours or the authors'); returns the model and our checkpoint dict (empty for theirs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and "config" in state:
        cfg = TrainConfig(**state["config"])
        weights = state["model"]
        model = MSDN(
            torch.zeros(weights["V"].shape), weights["att"], weights["seen"], weights["W_1"].shape[1],
            normalize_v=cfg.normalize_v,
        )
        model.load_state_dict(weights)
        return model, dict(state)
    if isinstance(state, Mapping) and is_authors_state_dict(state):
        normalize_v = config.normalize_v if config is not None else False
        return model_from_authors_state_dict(state, normalize_v=normalize_v), {}
    raise ValueError(
        f"--checkpoint {path}: not an msdn-tune checkpoint (keys 'model', 'config', ...) nor an authors' MSDN "
        f"state dict (keys {list(AUTHORS_KEYS)}); found keys {sorted(state)[:12] if isinstance(state, Mapping) else type(state).__name__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--protocol", choices=("paper", "val"), default=None,
                        help="split to evaluate on (default: the checkpoint's own; 'paper' for the authors')")
    parser.add_argument("--alpha", type=float, default=None, help="sub-net fusion weight (default: dataset's)")
    parser.add_argument("--gamma", type=float, default=None, help="calibrated-stacking offset (default 2.0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
        check_data_present(args.dataset, args.data_root)
        model, ckpt = load_checkpoint_model(args.checkpoint, default_config(args.dataset))
    except (DataError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = TrainConfig(**ckpt["config"]) if ckpt else default_config(args.dataset, data_root=args.data_root)
    config = config.replace(
        data_root=args.data_root,
        protocol=args.protocol or config.protocol,
        alpha=config.alpha if args.alpha is None else args.alpha,
        gamma=config.gamma if args.gamma is None else args.gamma,
    )
    bench = load_benchmark(args.dataset, args.data_root, progress=None if args.json else print)
    split = make_split(bench, config.protocol, val_fraction=config.val_fraction, seed=config.val_seed)
    if model.n_classes != len(split.class_ids) or model.n_attributes != bench.att.shape[1]:
        print(f"error: --checkpoint {args.checkpoint} has {model.n_classes} classes and {model.n_attributes} "
              f"attributes; the {config.protocol} split of {args.dataset} has {len(split.class_ids)} classes and "
              f"{bench.att.shape[1]} attributes", file=sys.stderr)
        return 2
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
              f"S={summary['S']:.4f} U={summary['U']:.4f} H={summary['H']:.4f} ZSL={summary['zsl_acc']:.4f} | "
              f"best gamma {summary['best_gamma']:.2f}: H={summary['H_best_gamma']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
