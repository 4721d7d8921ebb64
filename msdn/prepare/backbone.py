"""The frozen feature extractor: torchvision ResNet-101 minus avgpool and fc, its weights, its image transform."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import DataError
from ..fsutil import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ResNet-101 ImageNet files; V1 is what `pretrained=True` (the authors' code) loads.
HUB_WEIGHT_FILES = {
    "resnet101-63fe2227.pth": "torchvision ResNet101_Weights.IMAGENET1K_V1",
    "resnet101-cd907fc2.pth": "torchvision ResNet101_Weights.IMAGENET1K_V2",
}
HUB_V1_URL = "https://download.pytorch.org/models/resnet101-63fe2227.pth"
RANDOM_WEIGHTS = "random (NOT ImageNet: smoke tests only)"
RANDOM_SEED = 0
MSDN_PREFIX = "resnet101."  # the authors' image-level checkpoints hold the backbone under this prefix


@dataclass(frozen=True)
class Weights:
    """Where the backbone weights come from; `label` and `sha256` go into the HDF5 attributes."""

    path: Path | None  # None: random initialisation
    label: str
    sha256: str


def resolve_weights(spec: str | None) -> Weights:
    """`random`, a file, or (None) torchvision's ImageNet file from the local torch hub cache; never downloads."""
    if spec == "random":
        return Weights(None, RANDOM_WEIGHTS, f"random-seed-{RANDOM_SEED}")
    if spec is not None:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--weights {path}: no such file; expected a torchvision ResNet-101 state dict or an "
                            "MSDN checkpoint with resnet101.* keys (or 'random' for smoke tests)")
        return Weights(path, f"file {path.name}", sha256_file(path))
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    known = [folder / name for name in HUB_WEIGHT_FILES]
    others = sorted(p for p in folder.glob("resnet101-*.pth") if p not in known)
    for path in [*known, *others]:
        if path.is_file():
            label = HUB_WEIGHT_FILES.get(path.name, "torchvision ResNet-101 (unrecognised hub file)")
            return Weights(path, f"{label} ({path.name})", sha256_file(path))
    raise DataError(f"no ImageNet ResNet-101 weights in the torch hub cache {folder}. Nothing is downloaded during "
                    f"a run: download {HUB_V1_URL} (torchvision IMAGENET1K_V1, what the authors' pretrained=True "
                    f"loads) to {known[0]}, or pass --weights FILE (set TORCH_HOME to use another cache folder)")


def _state_dict(obj: object, path: Path) -> dict:
    """The tensor dict inside a checkpoint ({'state_dict': ...} / {'model': ...} wrappers, DataParallel prefix)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a state dict of ResNet-101 tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def build_backbone(weights: Weights):
    """torchvision ResNet-101 minus avgpool and fc, in eval mode, with the given weights."""
    import torch
    import torchvision

    if weights.path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            # zero_init_residual keeps random activations in float16 range (a plain init reaches ~1e5 by layer4)
            model = torchvision.models.resnet101(weights=None, zero_init_residual=True)
        return torch.nn.Sequential(*list(model.children())[:-2]).eval()
    model = torchvision.models.resnet101(weights=None)
    backbone = torch.nn.Sequential(*list(model.children())[:-2])
    try:
        raw = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{weights.path}: cannot load with torch.load(weights_only=True) ({type(exc).__name__}: "
                        f"{exc})") from None
    state = _state_dict(raw, weights.path)
    if any(k.startswith(MSDN_PREFIX) for k in state):
        # The authors' backbone is this same Sequential: keys 0.weight (conv1), 1.* (bn1), 4.0.conv1.weight ...
        target, state = backbone, {k[len(MSDN_PREFIX):]: v for k, v in state.items() if k.startswith(MSDN_PREFIX)}
        allowed_missing: set[str] = set()
    else:
        target, allowed_missing = model, {"fc.weight", "fc.bias"}
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in allowed_missing]
    if missing or result.unexpected_keys:
        raise DataError(f"{weights.path}: found {len(missing)} missing key(s) {missing[:5]} and "
                        f"{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:5]}; expected a "
                        "torchvision ResNet-101 state dict (conv1.weight, layer1.0.conv1.weight, ...) or an MSDN "
                        "checkpoint with resnet101.0.weight, resnet101.4.0.conv1.weight, ...")
    return backbone.eval()


def image_transform(size: int):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
