"""Extract ResNet-101 region features from the original images into the layout msdn.data reads.

    python -m msdn.prepare cub  --images ~/datasets/CUB  --xlsa17 ~/datasets/xlsa17 --out data
    python -m msdn.prepare sun  --images ~/datasets/SUN  --xlsa17 ~/datasets/xlsa17 --out data
    python -m msdn.prepare awa2 --images ~/datasets/AwA2 --xlsa17 ~/datasets/xlsa17 --out data \
        --word-vectors glove.6B.300d.txt --attribute-names predicates.txt
    python -m msdn.prepare cub ... --weights random --image-size 64 --device cpu     # smoke test only

The image list and labels come from xlsa17's res101.mat, the splits and class attributes from its
att_splits.mat. Every image is checked to exist before any extraction. Features come from torchvision's
ResNet-101 without its pooling and classifier (children[:-2]) after Resize(S) -> CenterCrop(S) -> ImageNet
mean/std (S = 448 as the authors: 14 x 14 regions). They are written to
OUT/<DS>/feature_map_ResNet_101_<DS>.hdf5.partial, flushed after every batch; an interrupted run started
again with the same arguments continues from the last complete batch, and the file is renamed to its final
name only when complete. Then att_splits.mat is copied to OUT/xlsa17/data/<DS>/ and msdn.data.load_benchmark
validates everything and builds the float16 cache. See docs/prepare.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import DATASET_DIRS, DataError, benchmark_paths, load_benchmark, load_numpy_pickle

DATASETS = ("cub", "sun", "awa2")
FORMAT_VERSION = 1
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
FLOAT16_MAX = 65504.0
PROGRESS_SECONDS = 10.0
MISSING_SHOWN = 10
# Test hook: SIGKILL the process after this many flushed batches (an honest crash, for the resume test).
STOP_ENV = "MSDN_PREPARE_STOP_AFTER_CHUNKS"
WORD_SPLIT = re.compile(r"[_:()\-/\s]+")
LEADING_INDEX = re.compile(r"^\s*\d+\s+")

Say = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- image paths


@dataclass(frozen=True)
class Layout:
    """Where a dataset's images sit: the anchor that ends the authors' prefix, and accepted --images roots."""

    anchor: re.Pattern  # matches up to the start of the dataset-relative tail
    roots: tuple[str, ...]  # folders under --images that may hold the tail, most complete first
    example: str


LAYOUTS = {
    "cub": Layout(re.compile(r"(?:^|/)images/(?=\d{3}\.[^/]+/[^/]+$)"), ("CUB_200_2011/images", "images", ""),
                  "CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg"),
    "sun": Layout(re.compile(r"(?:^|/)images/(?=[^/]/.+$)"), ("images", ""),
                  "images/a/abbey/sun_aakbdcgfpksytcwj.jpg"),
    "awa2": Layout(re.compile(r"(?:^|/)JPEGImages/(?=[^/]+/[^/]+$)"),
                   ("Animals_with_Attributes2/JPEGImages", "JPEGImages", ""),
                   "Animals_with_Attributes2/JPEGImages/antelope/antelope_10001.jpg"),
}


def image_tail(dataset: str, stored: str) -> str:
    """The dataset-relative part of a stored image path, e.g. '001.Black_footed_Albatross/x.jpg' for CUB."""
    norm = re.sub(r"/+", "/", stored.strip().replace("\\", "/"))
    m = LAYOUTS[dataset].anchor.search(norm)
    if m is None:
        raise DataError(f"image path {stored!r}: found no {dataset} image folder in it; expected a path ending "
                        f"like {LAYOUTS[dataset].example}")
    return norm[m.end():]


def map_image_paths(dataset: str, stored: Sequence[str], images: str | Path) -> list[Path]:
    """Map xlsa17's stored image paths onto the `images` folder; every file must exist (else DataError)."""
    images = Path(images)
    tails = [image_tail(dataset, s) for s in stored]
    if not tails:
        raise DataError(f"{dataset}: res101.mat lists no images")
    roots = [images / r if r else images for r in LAYOUTS[dataset].roots]
    probe = tails[:: max(1, len(tails) // 16)][:16]  # a few files spread over the list pick the layout
    hits = [sum((root / t).is_file() for t in probe) for root in roots]
    root = roots[int(np.argmax(hits))]
    paths = [root / t for t in tails]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {p}" for p in missing[:MISSING_SHOWN])
        more = f"\n  ... and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        tried = ", ".join(str(r / "<tail>") for r in roots)
        raise DataError(f"{len(missing)} of {len(paths)} {dataset} images are missing under {images} (layout used: "
                        f"{root}/<tail>; tried {tried}; tail example: {tails[0]}):\n{shown}{more}\n"
                        "Nothing was extracted. Point --images at the folder that holds "
                        f"{LAYOUTS[dataset].example.split('/')[0]}/ (or at that folder itself).")
    return paths


# ----------------------------------------------------------------------------- xlsa17 metadata


@dataclass(frozen=True)
class Xlsa17:
    """What the HDF5 needs from xlsa17, in the HDF5 conventions (0-based, K x I)."""

    image_files: tuple[str, ...]
    labels: np.ndarray  # (N,) int64, 0-based
    locs: dict[str, np.ndarray]  # trainval_loc / test_seen_loc / test_unseen_loc, 0-based int64
    att: np.ndarray  # (K, I) float64
    original_att: np.ndarray  # (K, I) float64
    att_splits: Path
    res101: Path


def _xlsa17_files(dataset: str, xlsa17: Path) -> tuple[Path, Path]:
    ds = DATASET_DIRS[dataset]
    for folder in (xlsa17 / "data" / ds, xlsa17 / ds, xlsa17):
        if (folder / "att_splits.mat").is_file() and (folder / "res101.mat").is_file():
            return folder / "att_splits.mat", folder / "res101.mat"
    raise DataError(f"--xlsa17 {xlsa17}: found no {xlsa17 / 'data' / ds / 'att_splits.mat'} and res101.mat next to "
                    "it; expected the root of the xlsa17 proposed splits (the folder holding data/<DS>/)")


def _loadmat(path: Path, keys: list[str]) -> dict:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=keys)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    for key in keys:
        if key not in mat:
            raise DataError(f"{path}: key '{key}': no such variable; expected the xlsa17 file's {key}")
    return mat


def _strings(cell: np.ndarray, path: Path, key: str) -> tuple[str, ...]:
    out = []
    for item in np.asarray(cell, dtype=object).reshape(-1):
        v = np.asarray(item).reshape(-1)
        if v.size != 1 or not isinstance(v[0], str):
            raise DataError(f"{path}: key '{key}': found an entry {item!r}; expected a cell array of strings")
        out.append(str(v[0]))
    return tuple(out)


def _index(arr: np.ndarray, path: Path, key: str, hi: int) -> np.ndarray:
    """1-based MATLAB vector in 1..hi -> 0-based int64."""
    v = np.asarray(arr).reshape(-1)
    if v.dtype.kind not in "iuf" or not np.all(np.isfinite(v)) or not np.array_equal(v, np.round(v)):
        raise DataError(f"{path}: key '{key}': found {v.dtype} values; expected 1-based integer indices")
    idx = v.astype(np.int64)
    if idx.size and (idx.min() < 1 or idx.max() > hi):
        raise DataError(f"{path}: key '{key}': found values in [{idx.min()}, {idx.max()}]; expected 1-based "
                        f"indices in [1, {hi}]")
    return idx - 1


def read_xlsa17(dataset: str, xlsa17: str | Path) -> Xlsa17:
    """Read res101.mat (images, labels) and att_splits.mat (splits, attributes) and check they fit together."""
    splits_path, res_path = _xlsa17_files(dataset, Path(xlsa17))
    res = _loadmat(res_path, ["image_files", "labels"])  # its `features` stay on disk
    files = _strings(res["image_files"], res_path, "image_files")
    mat = _loadmat(splits_path, ["att", "original_att", "trainval_loc", "test_seen_loc", "test_unseen_loc"])
    att, original = (np.asarray(mat[k], dtype=np.float64) for k in ("att", "original_att"))
    if att.ndim != 2 or att.shape != original.shape or not np.all(np.isfinite(att)):
        raise DataError(f"{splits_path}: keys 'att'/'original_att': found shapes {att.shape} / {original.shape}; "
                        "expected two finite attributes x classes matrices of one shape")
    k = att.shape[1]
    labels = _index(res["labels"], res_path, "labels", k)
    if labels.size != len(files):
        raise DataError(f"{res_path}: found {labels.size} labels and {len(files)} image_files; expected one label "
                        "per image")
    if labels.max() + 1 != k:
        raise DataError(f"{res_path}: key 'labels': found max label {labels.max() + 1}; expected {k}, the classes "
                        f"(columns of att) in {splits_path}")
    n = labels.size
    locs = {key: _index(mat[key], splits_path, key, n) for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc")}
    seen = np.unique(labels[locs["trainval_loc"]])
    for a, b in (("trainval_loc", "test_seen_loc"), ("trainval_loc", "test_unseen_loc"),
                 ("test_seen_loc", "test_unseen_loc")):
        if np.intersect1d(locs[a], locs[b]).size:
            raise DataError(f"{splits_path}: keys '{a}'/'{b}': found shared images; expected disjoint sets")
    if np.intersect1d(seen, labels[locs["test_unseen_loc"]]).size:
        raise DataError(f"{splits_path}: key 'test_unseen_loc': found images of trainval classes; expected unseen "
                        "classes only")
    # The HDF5 stores att transposed (K x I); xlsa17's columns are already unit-norm, so no renormalisation.
    return Xlsa17(image_files=files, labels=labels, locs=locs, att=att.T.copy(), original_att=original.T.copy(),
                  att_splits=splits_path, res101=res_path)


# ----------------------------------------------------------------------------- word vectors


def attribute_words(name: str) -> list[str]:
    """'1 has_bill_shape::curved_(up_or_down)' -> ['has', 'bill', 'shape', 'curved', 'up', 'or', 'down']."""
    return [w for w in WORD_SPLIT.split(LEADING_INDEX.sub("", name).lower()) if w]


def read_attribute_names(path: str | Path) -> list[str]:
    """One name per line (CUB attributes.txt, AwA2 predicates.txt), or SUN's attributes.mat cell array."""
    path = Path(path)
    if path.suffix == ".mat":
        import scipy.io

        mat = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
        key = "attributes" if "attributes" in mat else next(iter(mat), None)
        if key is None:
            raise DataError(f"{path}: no variables; expected a cell array of attribute names")
        return list(_strings(mat[key], path, key))
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


def glove_vectors(path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Average the vectors of each name's words from a GloVe/word2vec text file; also return missing words."""
    path = Path(path)
    words = [attribute_words(n) for n in names]
    needed = {w for ws in words for w in ws}
    found: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            token, _, rest = line.rstrip("\n").partition(" ")
            key = token.lower()
            if key not in needed or (key in found and token != key):  # an exact lowercase token wins
                continue
            vec = np.array(rest.split(), dtype=np.float64)
            if dim is None:
                dim = vec.size
            if vec.size != dim:
                raise DataError(f"{path}: line {line_no} ({token!r}): found {vec.size} values; expected {dim} like "
                                "the other vectors ('word v1 v2 ...' per line)")
            found[key] = vec
    if dim is None:
        raise DataError(f"{path}: none of the {len(needed)} attribute words was found; expected a GloVe-format text "
                        "file ('word v1 v2 ...' per line)")
    out = np.zeros((len(names), dim))
    for i, ws in enumerate(words):
        vecs = [found[w] for w in ws if w in found]
        if vecs:
            out[i] = np.mean(vecs, axis=0)
    missing = sorted(needed - set(found))
    return out, missing


def load_word_vectors(dataset: str, n_attributes: int, word_vectors: str | None, attribute_names: str | None,
                      xlsa17: str | Path, say: Say = _stderr) -> tuple[np.ndarray, str]:
    """The I x D attribute word vectors and a description of their source."""
    if word_vectors is None:
        w2v = Path(xlsa17).parent / "w2v"
        candidates = [w2v / f"{DATASET_DIRS[dataset]}_attribute.{ext}" for ext in ("pkl", "npy")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"no attribute word vectors: {candidates[0]} does not exist. Pass --word-vectors FILE "
                            "(the authors' <DS>_attribute.pkl, a .npy, or a GloVe text file with --attribute-names)")
    else:
        path = Path(word_vectors)
        if not path.is_file():
            raise DataError(f"--word-vectors {path}: no such file")
    if path.suffix in (".pkl", ".pickle"):
        vec, source = load_numpy_pickle(path), f"pickle {path}"
    elif path.suffix == ".npy":
        try:
            vec = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: cannot read as a plain .npy array ({exc})") from None
        source = f"npy {path}"
    else:
        if attribute_names is None:
            raise DataError(f"--word-vectors {path} is a text (GloVe) file: it needs --attribute-names FILE (one "
                            "attribute name per line, e.g. CUB attributes.txt or AwA2 predicates.txt)")
        names = read_attribute_names(attribute_names)
        if len(names) != n_attributes:
            raise DataError(f"--attribute-names {attribute_names}: found {len(names)} names; expected "
                            f"{n_attributes}, the attributes (rows of att) in att_splits.mat")
        vec, missing = glove_vectors(path, names)
        empty = [names[i] for i in np.flatnonzero(~vec.any(axis=1))]
        if missing:
            say(f"word vectors: {len(missing)} word(s) not in {path.name}: {', '.join(missing)}")
        if empty:
            say(f"word vectors: {len(empty)} attribute(s) with no known word get a zero vector: {', '.join(empty)}")
        source = f"GloVe text {path} averaged over the words of {attribute_names}"
    if attribute_names is not None and source.startswith(("pickle", "npy")):
        say(f"note: --attribute-names is only used with a GloVe text file; ignored for {path.name}")
    vec = np.asarray(vec)
    if vec.ndim != 2 or vec.dtype.kind not in "iuf" or not np.all(np.isfinite(vec)):
        raise DataError(f"{path}: found a {vec.dtype} array of shape {vec.shape}; expected a finite numeric "
                        "attributes x dims matrix (I x 300)")
    if vec.shape[0] != n_attributes:
        raise DataError(f"{path}: found {vec.shape[0]} rows (shape {vec.shape}); expected {n_attributes}, one per "
                        "attribute of att_splits.mat")
    return vec.astype(np.float64), source


# ----------------------------------------------------------------------------- the backbone


@dataclass(frozen=True)
class Weights:
    """Where the backbone weights come from; `label` and `sha256` go into the HDF5 attributes."""

    path: Path | None  # None: random initialisation
    label: str
    sha256: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def resolve_weights(spec: str | None) -> Weights:
    """`random`, a file, or (None) torchvision's ImageNet file from the local torch hub cache; never downloads."""
    if spec == "random":
        return Weights(None, RANDOM_WEIGHTS, f"random-seed-{RANDOM_SEED}")
    if spec is not None:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--weights {path}: no such file; expected a torchvision ResNet-101 state dict or an "
                            "MSDN checkpoint with resnet101.* keys (or 'random' for smoke tests)")
        return Weights(path, f"file {path.name}", _sha256(path))
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    known = [folder / name for name in HUB_WEIGHT_FILES]
    others = sorted(p for p in folder.glob("resnet101-*.pth") if p not in known)
    for path in [*known, *others]:
        if path.is_file():
            label = HUB_WEIGHT_FILES.get(path.name, "torchvision ResNet-101 (unrecognised hub file)")
            return Weights(path, f"{label} ({path.name})", _sha256(path))
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


class ImageFiles:
    """A map-style dataset of (index, normalised image tensor) for images[start:]."""

    def __init__(self, paths: Sequence[Path], start: int, size: int):
        self.paths, self.start, self.transform = list(paths), start, image_transform(size)

    def __len__(self) -> int:
        return len(self.paths) - self.start

    def __getitem__(self, i: int):
        from PIL import Image

        path = self.paths[self.start + i]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except Exception as exc:
            raise DataError(f"{path}: cannot read as an image ({type(exc).__name__}: {exc})") from None
        return self.start + i, self.transform(rgb)


# ----------------------------------------------------------------------------- the HDF5 file


def _signature(args: argparse.Namespace, x: Xlsa17, weights: Weights, shape: tuple[int, int, int]) -> dict:
    """Attributes a partial or finished file must share with this run to be continued or kept."""
    images = hashlib.sha256("\n".join(image_tail(args.dataset, f) for f in x.image_files).encode())
    images.update(x.labels.tobytes())
    return {
        "msdn_prepare_version": FORMAT_VERSION, "dataset": args.dataset, "num_images": len(x.image_files),
        "feature_shape": np.array(shape, dtype=np.int64), "image_size": args.image_size, "dtype": args.dtype,
        "backbone_weights": weights.label, "backbone_weights_sha256": weights.sha256,
        "image_list_sha256": images.hexdigest(),
    }


def _signature_differences(attrs, expected: dict) -> list[str]:
    diffs = []
    for key, want in expected.items():
        have = attrs.get(key)
        if have is None or not np.array_equal(np.asarray(have), np.asarray(want)):
            diffs.append(f"{key}: file has {have!r}, this run {want!r}")
    return diffs


def _write_metadata(f, x: Xlsa17, w2v: np.ndarray) -> None:
    """labels, locs, att, original_att, w2v_att: small datasets, (re)written whole."""
    arrays = {"labels": x.labels, **x.locs, "att": x.att, "original_att": x.original_att, "w2v_att": w2v}
    for key, value in arrays.items():
        if key in f:
            del f[key]
        f.create_dataset(key, data=value)


def _metadata_matches(f, x: Xlsa17, w2v: np.ndarray) -> bool:
    arrays = {"labels": x.labels, **x.locs, "att": x.att, "original_att": x.original_att, "w2v_att": w2v}
    return all(k in f and f[k].shape == v.shape and np.array_equal(f[k][()], v) for k, v in arrays.items())


def _create_partial(path: Path, signature: dict, n: int, shape: tuple[int, int, int], extra_attrs: dict):
    import h5py

    f = h5py.File(path, "w")
    # All chunks are allocated now (no fill written), so later writes only touch raw data: a kill between
    # flushes can leave a half-written batch, never a broken index.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    f.create_dataset("feature_map", shape=(n, *shape), dtype=signature["dtype"], chunks=(1, *shape),
                     dcpl=dcpl, fill_time="never")
    f.attrs.update({**signature, **extra_attrs, "images_done": 0})
    f.flush()
    return f


def _open_partial(path: Path, signature: dict, say: Say):
    """Reopen a partial file of an identical run (DataError if it was made differently), or None if unreadable."""
    import h5py

    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        say(f"{path}: cannot reopen the interrupted file ({exc}); starting over")
        return None
    diffs = _signature_differences(f.attrs, signature)
    if diffs:
        f.close()
        raise DataError(f"{path}: an interrupted run with other settings ({'; '.join(diffs)}); expected the same "
                        "arguments to continue it. Delete the file to start over with these.")
    return f


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def extract(args: argparse.Namespace, paths: Sequence[Path], partial: Path, signature: dict, backbone, device,
            extra_attrs: dict, say: Say = _stderr) -> None:
    """Fill partial's feature_map batch by batch from images_done on, flushing after each batch."""
    import torch

    n, shape = len(paths), tuple(int(s) for s in signature["feature_shape"])
    f = _open_partial(partial, signature, say) if partial.is_file() else None
    if f is None:
        f = _create_partial(partial, signature, n, shape, extra_attrs)
    with f:
        start = int(f.attrs["images_done"])
        if start:
            say(f"resuming {partial.name}: {start}/{n} images already extracted")
        fm = f["feature_map"]
        dtype = np.dtype(args.dtype)
        loader = torch.utils.data.DataLoader(
            ImageFiles(paths, start, args.image_size), batch_size=args.batch_size, shuffle=False,
            num_workers=args.workers, pin_memory=device.type == "cuda")
        stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
        t0 = last = time.perf_counter()
        done, chunks = start, 0
        with torch.inference_mode():
            for idx, batch in loader:
                out = backbone(batch.to(device, non_blocking=True)).float().cpu().numpy()
                s, e = int(idx[0]), int(idx[-1]) + 1
                if e - s != len(idx) or s != done or out.shape[1:] != shape:
                    raise RuntimeError(f"batch images {s}..{e} of shape {out.shape}; expected images {done}.. in "
                                       f"order, each {shape}")
                if not np.all(np.isfinite(out)):
                    bad = s + int(np.argwhere(~np.isfinite(out))[0][0])
                    raise DataError(f"{paths[bad]}: the backbone gave NaN/Inf features; expected finite values")
                if dtype == np.float16 and np.abs(out).max() > FLOAT16_MAX:
                    raise DataError(f"images {s}..{e - 1}: features up to {np.abs(out).max():.6g} exceed the float16 "
                                    "range; use --dtype float32")
                fm[s:e] = out.astype(dtype)
                f.flush()  # the features first, then the counter that declares them complete
                f.attrs["images_done"] = done = e
                f.flush()
                chunks += 1
                now = time.perf_counter()
                if now - last >= PROGRESS_SECONDS or done == n or chunks == 1:
                    last = now
                    rate = (done - start) / max(now - t0, 1e-9)
                    say(f"prepare {args.dataset}: {done}/{n} images ({100 * done / n:.1f}%) | {rate:.1f} images/s | "
                        f"elapsed {_clock(now - t0)} | ETA {_clock((n - done) / max(rate, 1e-9))}")
                if stop_after and chunks >= stop_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        if int(f.attrs["images_done"]) != n:
            raise DataError(f"{partial}: {int(f.attrs['images_done'])} of {n} images extracted; expected all")


def _copy_att_splits(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ----------------------------------------------------------------------------- main


def main(args: argparse.Namespace, say: Say = _stderr) -> Path:
    """Prepare one dataset under args.out; return the HDF5 path. Raises DataError for bad inputs."""
    import torch

    if args.image_size < 32 or args.batch_size < 1 or args.workers < 0:
        raise DataError(f"--image-size {args.image_size} / --batch-size {args.batch_size} / --workers "
                        f"{args.workers}: expected an image size >= 32, a batch size >= 1 and workers >= 0")
    x = read_xlsa17(args.dataset, args.xlsa17)
    paths = map_image_paths(args.dataset, x.image_files, args.images)
    w2v, w2v_source = load_word_vectors(args.dataset, x.att.shape[1], args.word_vectors, args.attribute_names,
                                        args.xlsa17, say)
    weights = resolve_weights(args.weights)
    device = _device(args.device)
    n, k, i = len(paths), x.att.shape[0], x.att.shape[1]
    say(f"{args.dataset}: {n} images, {k} classes, {i} attributes, trainval/test_seen/test_unseen "
        f"{'/'.join(str(v.size) for v in x.locs.values())}; word vectors {w2v.shape} from {w2v_source}; "
        f"backbone weights: {weights.label}; device {device}")
    if weights.path is None:
        say(f"WARNING: --weights random: {RANDOM_WEIGHTS}. These features are useless for real results.")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # full float32 convolutions, like the authors' features
        torch.backends.cuda.matmul.allow_tf32 = False
    backbone = build_backbone(weights).to(device)
    with torch.inference_mode():
        probe = backbone(torch.zeros(1, 3, args.image_size, args.image_size, device=device))
    shape = tuple(int(s) for s in probe.shape[1:])
    signature = _signature(args, x, weights, shape)

    bp = benchmark_paths(args.dataset, args.out)
    final, partial = bp.hdf5, bp.hdf5.with_name(bp.hdf5.name + ".partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_file():
        import h5py

        with h5py.File(final, "r") as f:  # "r": opening with "r+" alone changes the mtime, i.e. the cache key
            diffs = _signature_differences(f.attrs, signature)
            if diffs:
                raise DataError(f"{final} exists but was made differently ({'; '.join(diffs)}); expected the "
                                "settings of this run. Move or delete it to extract again.")
            current = _metadata_matches(f, x, w2v)
        if current:
            say(f"{final}: already complete (delete it to extract again)")
        else:
            with h5py.File(final, "r+") as f:
                _write_metadata(f, x, w2v)
            say(f"{final}: features already complete; labels/splits/attributes/word vectors updated")
    else:
        extra = {"word_vectors": w2v_source, "images_root": str(Path(args.images).resolve()),
                 "preprocessing": f"PIL RGB -> Resize({args.image_size}) -> CenterCrop({args.image_size}) -> "
                                  "ToTensor -> Normalize(ImageNet mean/std); torchvision resnet101 children[:-2]",
                 "torch_version": str(torch.__version__), "created_by": "msdn.prepare"}
        extract(args, paths, partial, signature, backbone, device, extra, say)
        import h5py

        with h5py.File(partial, "r+") as f:
            fm = f["feature_map"]
            if fm.shape != (n, *shape) or int(f.attrs["images_done"]) != n:
                raise DataError(f"{partial}: feature_map {fm.shape} with {int(f.attrs['images_done'])} images done; "
                                f"expected {(n, *shape)} complete")
            _write_metadata(f, x, w2v)
        os.replace(partial, final)
        say(f"wrote {final} ({final.stat().st_size / 2**30:.2f} GiB)")
    _copy_att_splits(x.att_splits, bp.att_splits)
    # The loaders validate every key against att_splits.mat and build the float16 cache (a full read, NaN check).
    bench = load_benchmark(args.dataset, args.out, progress=say)
    say(f"ready: --dataset {args.dataset} --data-root {args.out} ({bench.features.shape[0]} images, "
        f"{bench.feature_shape[0]} regions x {bench.feature_shape[1]} channels)")
    return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--images", required=True, help="folder holding the dataset's images (see docs/prepare.md)")
    p.add_argument("--xlsa17", required=True, help="xlsa17 root: holds data/<DS>/att_splits.mat and res101.mat")
    p.add_argument("--out", required=True, help="data root for msdn.train --data-root")
    p.add_argument("--weights", default=None, help="ResNet-101 state dict or MSDN checkpoint file, or 'random' "
                   "(smoke tests); default: torchvision's ImageNet file in the torch hub cache")
    p.add_argument("--word-vectors", default=None, help="<DS>_attribute.pkl, .npy, or GloVe text (+ "
                   "--attribute-names); default: XLSA17/../w2v/<DS>_attribute.pkl")
    p.add_argument("--attribute-names", default=None, help="one attribute name per line (for a GloVe file)")
    p.add_argument("--image-size", type=int, default=448, help="Resize + CenterCrop size (448: 14 x 14 regions)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image-loading processes")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cuda, cuda:1, cpu")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="feature_map dtype in the HDF5 (the authors': float32)")
    return p


if __name__ == "__main__":
    try:
        main(build_parser().parse_args())
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
