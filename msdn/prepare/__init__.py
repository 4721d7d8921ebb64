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

One module per job: `images` (stored image paths -> files), `xlsa17` (split files), `word_vectors`,
`backbone` (weights, ResNet-101, image transform), `extract` (the resumable partial file), `cli`
(`main`, `build_parser`; `__main__` runs it).
"""
from __future__ import annotations

from ..data import DATASET_DIRS
from .backbone import (HUB_V1_URL, HUB_WEIGHT_FILES, IMAGENET_MEAN, IMAGENET_STD, MSDN_PREFIX, RANDOM_SEED,
                       RANDOM_WEIGHTS, Weights, build_backbone, image_transform, resolve_weights)
from .cli import build_parser, main, run
from .extract import FORMAT_VERSION, PROGRESS_SECONDS, STOP_ENV, ImageFiles, extract
from .images import LAYOUTS, MISSING_SHOWN, Layout, image_tail, map_image_paths
from .word_vectors import attribute_words, glove_vectors, load_word_vectors, read_attribute_names
from .xlsa17 import Xlsa17, read_xlsa17

__all__ = [
    "DATASET_DIRS", "FORMAT_VERSION", "HUB_V1_URL", "HUB_WEIGHT_FILES", "IMAGENET_MEAN", "IMAGENET_STD", "LAYOUTS",
    "MISSING_SHOWN", "MSDN_PREFIX", "PROGRESS_SECONDS", "RANDOM_SEED", "RANDOM_WEIGHTS", "STOP_ENV", "ImageFiles",
    "Layout", "Weights", "Xlsa17", "attribute_words", "build_backbone", "build_parser", "extract", "glove_vectors",
    "image_tail", "image_transform", "load_word_vectors", "main", "map_image_paths", "read_attribute_names",
    "read_xlsa17", "resolve_weights", "run",
]
